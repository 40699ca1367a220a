//! Authentication: the request's credential → a verified token's [`Principal`].
//!
//! A token in this worker's verified-token cache is judged from its entry (time, audience,
//! binding) and never meets the failed-authentication budget. Any other token: the memory of
//! failed tokens (refused again without verification), then the source's failed-auth budget
//! ([`budget`]), then provider → key → signature → claims.
//!
//! Two phases, like the pipeline: [`authenticate`] reads the budget and the memories and writes
//! neither; what it owes them ([`Owed`]: a trickle credit, a failure charge, a token remembered
//! as failed or deferred) is paid by [`settle`], once, for the request's final decision.
//! Inserting a verified token in the cache stays in the first phase: it memoises a pure function
//! of the token and the key set's generation, so a second `decide` finds what the first would
//! have computed, and no decision depends on whether it ran once or twice.

use std::rc::Rc;

use super::inputs::{Events, Inputs};
use super::Engine;
use crate::config::{Provider, TokenSource};
use crate::decision::{Caller, Forward, LocalReply, RateLimited, Reason};
use crate::jwt::cache::{token_hash, whole_token_hash, Cached, Failed};
use crate::jwt::extract::extract;
use crate::jwt::principal::{claim_header_value, istio_principal, Principal};
use crate::jwt::verify::{check_binding, check_claims, verify, Rejected, VerifiedToken};
use crate::jwt::TokenError;
use crate::ratelimit::apply::Gate;
use crate::ratelimit::budget::{self, Admission, Assessment};
use crate::ratelimit::store::Seen;
use crate::request::RequestView;

/// What a request's authentication owes the failed-auth budget and the token memories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    /// The token's id in this worker's memories; `None` without a cache.
    memo: Option<u64>,
    /// The source's failed-auth slot, with a `failedAuth` policy.
    gate: Option<Gate>,
    debt: Debt,
    /// `Forward::remove_headers`' length before the token was consumed (to undo it when the
    /// trickle credit turns out to be gone).
    consumed_from: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Debt {
    /// Deferred by a spent budget: the token is remembered as deferred.
    Defer,
    /// Verified on a trickle credit (as read), taken when settling; it may be gone by then,
    /// and the request gets the 429 it would have got. `failure`: how verification failed.
    Trickle {
        seen: Seen,
        retried: bool,
        failure: Option<Failure>,
    },
    /// Failed verification within the budget.
    Failure(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    /// Remembered, so the same token is refused again without verification ([`lasting`]).
    remember: Option<Failed>,
    /// Charged to the source's budget (every failure but missing keys).
    charge: bool,
}

/// Verifies the request's token, if any, and adds the identity headers. `Ok(None)`: no
/// credentials. What the request owes the budget and memories goes to `owed`, what it owes
/// the DPoP replay cache to `dpop`.
pub fn authenticate(
    engine: &Engine,
    req: &RequestView<'_>,
    inputs: &Inputs<'_>,
    fwd: &mut Forward,
    owed: &mut Option<Owed>,
    dpop: &mut Option<super::dpop::Owed>,
    events: &mut Events,
) -> Result<Option<Rc<Principal>>, LocalReply> {
    let cfg = &engine.config;
    let Some(credential) = extract(req, &cfg.token_sources)
        .map_err(|e| engine.answers.refuse(Reason::InvalidRequest(e)))?
    else {
        return match super::dpop::proof_without_token(engine, req) {
            Some(reply) => Err(reply),
            None => Ok(None),
        };
    };
    let token = credential.token.as_str();
    let sources = credential.sources.as_slice();
    // Presented as `Authorization: DPoP …` (RFC 9449 §7.1).
    let via_dpop = cfg.dpop_source.is_some_and(|s| sources.contains(&s));
    let invalid = |e| engine.answers.refuse_via(Reason::InvalidToken(e), via_dpop);
    // A cheap bound before any decoding; each provider applies its own after.
    if token.len() > cfg.max_token_bytes {
        return Err(invalid(TokenError::TooLarge));
    }
    let (provider, principal) = match cached(engine, inputs, token, sources) {
        Some((provider, index, principal)) => {
            events.cache_hits += 1;
            events.provider = Some(index);
            // Time and audience are judged again with the current clock.
            check_claims(&principal.claims, provider, inputs.now_ns / 1_000_000_000)
                .map_err(invalid)?;
            (index, principal)
        }
        None => {
            let verified = verify_fresh(engine, req, inputs, token, sources, owed, events)?;
            let principal = Rc::new(derive_principal(engine, &verified));
            if let Some(cache) = inputs.cache {
                let entry = Cached {
                    provider: verified.provider,
                    generation: inputs.keys.generation(verified.provider),
                    principal: principal.clone(),
                };
                cache.borrow_mut().insert(token, token_hash(token), entry);
            }
            (verified.provider, principal)
        }
    };
    events.provider = Some(provider);
    let required = cfg
        .providers
        .get(provider)
        .is_some_and(|p| p.require_certificate_binding);
    let dpop_on = cfg.dpop(provider).is_some();
    check_binding(&principal.claims, required, dpop_on, || {
        req.peer.certificate_sha256()
    })
    .map_err(invalid)?;
    *dpop = super::dpop::check(
        engine,
        req,
        inputs,
        provider,
        token,
        &principal.claims,
        via_dpop,
        fwd,
    )?;
    if let Some(owed) = owed {
        owed.consumed_from = fwd.remove_headers.len();
    }
    consume_token(engine, req, provider, sources, fwd);
    fwd.principal = Some(principal.clone());
    Ok(Some(principal))
}

/// Pays what authentication owes: takes the trickle credit (a 429 when it is gone), charges a
/// failure, remembers the token. `Some(reply)`: the request is refused after all.
pub fn settle(
    engine: &Engine,
    owed: Owed,
    inputs: &Inputs<'_>,
    fwd: Option<&mut Forward>,
    events: &mut Events,
) -> Option<LocalReply> {
    let memo = |write: &dyn Fn(&mut crate::jwt::cache::TokenCache, u64)| {
        if let (Some(cache), Some(id)) = (inputs.cache, owed.memo) {
            write(&mut cache.borrow_mut(), id);
        }
    };
    let rl = engine.config.rate_limits.as_ref();
    let gate = owed
        .gate
        .as_ref()
        .and_then(|g| Some((g, rl?.limits.get(g.policy)?)));
    let failure = match owed.debt {
        Debt::Defer => {
            memo(&|c, id| c.defer(id));
            None
        }
        Debt::Failure(f) => Some(f),
        Debt::Trickle {
            seen,
            retried,
            failure,
        } => {
            let (g, limit) = gate?;
            let admitted = budget::admit_seen(
                inputs.buckets,
                &g.slot,
                limit,
                g.fingerprint,
                retried,
                inputs.now_ns,
                Some(seen),
            );
            let verdict = match admitted {
                Admission::Budget => None,
                Admission::Trickle => {
                    events.budget_trickle += 1;
                    memo(&|c, id| c.undefer(id));
                    None
                }
                Admission::Deferred { verdict } => Some(verdict),
                Admission::Contended { verdict } => {
                    events.cas_contention += 1;
                    Some(verdict)
                }
            };
            if let Some(verdict) = verdict {
                memo(&|c, id| c.defer(id));
                if let Some(fwd) = fwd {
                    // As if the token had not been read (for a dry-run answer).
                    fwd.remove_headers.truncate(owed.consumed_from);
                    fwd.set_path = None;
                    fwd.principal = None;
                }
                return Some(
                    engine
                        .answers
                        .rate_limited(RateLimited::FailedAuth, limit, &verdict),
                );
            }
            failure
        }
    };
    if let Some(f) = failure {
        if let Some(failed) = f.remember {
            memo(&|c, id| c.remember_failed(id, failed));
        }
        if let (true, Some((g, limit))) = (f.charge, gate) {
            if !budget::record_failure(inputs.buckets, &g.slot, limit, g.fingerprint, inputs.now_ns)
            {
                events.cas_contention += 1;
            }
        }
    }
    None
}

/// What a verified token means here, derived once: its rate-limit identity, its scopes as bits
/// and its upstream headers (kept with it in the verified-token cache).
fn derive_principal(engine: &Engine, verified: &VerifiedToken) -> Principal {
    let cfg = &engine.config;
    let claims = &verified.claims;
    let rate_identity = cfg
        .rate_limits
        .as_ref()
        .and_then(|rl| engine.slots.token_identity(rl, claims));
    let mut upstream_headers = Vec::new();
    if let Some(provider) = cfg.providers.get(verified.provider) {
        for ch in &provider.claim_headers {
            if let Some(v) = claims.get_path(&ch.claim).and_then(claim_header_value) {
                upstream_headers.push((ch.header.clone(), v));
            }
        }
    }
    let name = istio_principal(claims);
    if let Some(p) = &name {
        upstream_headers.push((cfg.principal_header.clone(), p.clone()));
    }
    Principal {
        claims: claims.clone(),
        rate_identity,
        scopes: cfg.policy.scopes.granted_mask(claims),
        upstream_headers,
        name,
        client_id: Caller::from_claims(claims).client_id,
    }
}

/// The token's entry in this worker's verified-token cache, if it is still usable here.
fn cached<'e>(
    engine: &'e Engine,
    inputs: &Inputs<'_>,
    token: &str,
    sources: &[usize],
) -> Option<(&'e Provider, usize, Rc<Principal>)> {
    let cache = inputs.cache?.borrow();
    let hit = cache.get(token, token_hash(token))?;
    let provider = engine.config.providers.get(hit.provider)?;
    let usable = provider.sources.iter().any(|s| sources.contains(s))
        && inputs.keys.generation(hit.provider) == hit.generation;
    usable.then(|| (provider, hit.provider, hit.principal.clone()))
}

/// Verifies a token that is not in the verified-token cache. A token this worker saw fail (for
/// a reason time cannot undo, against the same key set) is refused again without verification.
/// With a `failedAuth` policy the source's budget is read first ([`budget::assess`]); what the
/// request owes it (a trickle credit, a failure) goes to `owed`.
fn verify_fresh(
    engine: &Engine,
    req: &RequestView<'_>,
    inputs: &Inputs<'_>,
    token: &str,
    sources: &[usize],
    owed: &mut Option<Owed>,
    events: &mut Events,
) -> Result<VerifiedToken, LocalReply> {
    let cfg = &engine.config;
    let now_ns = inputs.now_ns;
    let invalid = |e| engine.answers.refuse(Reason::InvalidToken(e));
    let memory = inputs
        .cache
        .map(|c| (c, whole_token_hash(engine.slots.secret(), token)));
    if let Some((cache, id)) = memory {
        let failed = cache.borrow().failed(id).copied().filter(|f| {
            inputs.keys.generation(f.provider) == f.generation
                && cfg
                    .providers
                    .get(f.provider)
                    .is_some_and(|p| p.sources.iter().any(|s| sources.contains(s)))
        });
        if let Some(f) = failed {
            events.failed_replays += 1;
            if signature_held(f.error) {
                events.provider = Some(f.provider);
            }
            return Err(invalid(f.error));
        }
    }
    let rl = cfg.rate_limits.as_ref();
    let gate = rl.and_then(|rl| engine.slots.failed_auth_gate(rl, req.peer));
    let owing = |debt| Owed {
        memo: memory.map(|(_, id)| id),
        gate: gate.clone(),
        debt,
        consumed_from: 0,
    };
    let mut trickle = None;
    if let Some((g, limit)) = gate
        .as_ref()
        .and_then(|g| Some((g, rl?.limits.get(g.policy)?)))
    {
        let retried = memory.is_none_or(|(c, id)| c.borrow().was_deferred(id));
        match budget::assess(
            inputs.buckets,
            &g.slot,
            limit,
            g.fingerprint,
            retried,
            now_ns,
        ) {
            Assessment::Budget => {}
            Assessment::Trickle { seen } => trickle = Some((seen, retried)),
            Assessment::Deferred { verdict } => {
                *owed = Some(owing(Debt::Defer));
                return Err(engine
                    .answers
                    .rate_limited(RateLimited::FailedAuth, limit, &verdict));
            }
        }
    }
    if memory.is_some() {
        events.cache_misses += 1;
    }
    let result = verify(
        token,
        sources,
        &cfg.providers,
        inputs.keys,
        inputs.crypto,
        now_ns / 1_000_000_000,
    );
    let failure = match &result {
        Ok(_) => None,
        Err(Rejected { error, provider }) => {
            let error = *error;
            // As on a cache hit: a token refused for its claims was verified by this provider.
            if signature_held(error) {
                events.provider = *provider;
            }
            if error == TokenError::UnknownKey {
                events.key_miss = *provider;
            }
            if error == TokenError::KeysUnavailable {
                events.keys_unavailable = *provider;
            }
            let remember =
                provider
                    .filter(|_| memory.is_some() && lasting(error))
                    .map(|provider| Failed {
                        provider,
                        generation: inputs.keys.generation(provider),
                        error,
                    });
            Some(Failure {
                remember,
                charge: error != TokenError::KeysUnavailable,
            })
        }
    };
    *owed = match (trickle, failure) {
        (Some((seen, retried)), failure) => Some(owing(Debt::Trickle {
            seen,
            retried,
            failure,
        })),
        (None, Some(failure)) => Some(owing(Debt::Failure(failure))),
        (None, None) => None,
    };
    result.map_err(|r| invalid(r.error))
}

/// Failures that time cannot undo for the same token and key set: remembered, so the token is
/// refused again without verification. (`nbf`/`iat` in the future heal; a missing key set or
/// an unknown `kid` may be fetched.)
fn lasting(error: TokenError) -> bool {
    matches!(
        error,
        TokenError::BadSignature
            | TokenError::Expired
            | TokenError::MissingExpiration
            | TokenError::LifetimeTooLong
            | TokenError::Audience
    )
}

/// Removes the consumed token from what goes upstream (its header, or its query parameter from
/// `:path`), unless the provider forwards the original token.
fn consume_token(
    engine: &Engine,
    req: &RequestView<'_>,
    provider: usize,
    sources: &[usize],
    fwd: &mut Forward,
) {
    let cfg = &engine.config;
    let Some(provider) = cfg.providers.get(provider) else {
        return;
    };
    if !provider.forward_original_token {
        let mut params = Vec::new();
        for s in sources {
            match cfg.token_sources.get(*s) {
                Some(TokenSource::Header { name, .. }) if !fwd.remove_headers.contains(name) => {
                    fwd.remove_headers.push(name.clone());
                }
                Some(TokenSource::Param { name }) => params.push(name.as_str()),
                _ => {}
            }
        }
        if !params.is_empty() {
            fwd.set_path = req.path_without_params(&params);
        }
    }
}

/// A refusal [`check_claims`] gives: the token's signature held, so its provider is known (the
/// `provider` label of the request's metrics, whether the token came from the cache or not).
fn signature_held(error: TokenError) -> bool {
    matches!(
        error,
        TokenError::MissingExpiration
            | TokenError::Expired
            | TokenError::NotYetValid
            | TokenError::IssuedInFuture
            | TokenError::LifetimeTooLong
            | TokenError::Audience
    )
}
