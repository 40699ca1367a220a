//! The request pipeline: one call per request, from plain inputs to one [`Decision`].
//!
//! normalise path → route (first match wins) → authenticate (credential → verified-token cache,
//! else: negative cache → failed-auth budget → provider → key → signature → claims; then
//! certificate binding) → rate limit by identity →
//! authorize (peer, issuer, scopes, roles, claims) → upstream headers. In dry-run mode a refusal
//! is recorded in the decision and the request goes on.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;

use crate::config::{Config, Provider, TokenSource};
use crate::decision::{
    limit_headers, Answers, Caller, Decision, Forbidden, Forward, LocalReply, RateLimited, Reason,
};
use crate::identity::Peer;
use crate::jwt::cache::{token_hash, whole_token_hash, Cached, Failed, TokenCache};
use crate::jwt::crypto::HostCrypto;
use crate::jwt::extract::{extract, RequestError};
use crate::jwt::jws::Claims;
use crate::jwt::principal::Principal;
use crate::jwt::verify::{check_binding, check_claims, verify, KeyLookup, Rejected, VerifiedToken};
use crate::jwt::TokenError;
use crate::policy::path::normalized;
use crate::policy::{Mode, Route, TokenUse, Unmatched};
use crate::ratelimit::budget::{self, Admission};
use crate::ratelimit::store::{charge, BucketStore, Charge};
use crate::ratelimit::{
    identity_hash, slot_name, slot_of, slot_prefix, IdentitySource, Limit, LimitBy, LimitChoice,
    RateLimits, SlotKind, SlotSecret, Verdict,
};
use crate::request::RequestView;

/// Validated configuration plus the pipeline over it. Built once per configuration.
#[derive(Debug, Clone)]
pub struct Engine {
    pub config: Config,
    /// The plugin's name: the prefix of its shared-data keys.
    pub plugin: String,
    /// The proxy's secret for slot choice and token memories (see [`identity_hash`]).
    secret: SlotSecret,
    /// Per rate-limit policy: the prefixes of its bucket and failed-auth slot names.
    slot_prefixes: Vec<(String, String)>,
    /// Every refusal's answer, built with the configured realm.
    answers: Answers,
}

/// What the host needs besides the request: keys, the bucket store, the clock, and optionally
/// host crypto and this worker's verified-token cache.
pub struct Inputs<'a> {
    pub keys: &'a dyn KeyLookup,
    pub buckets: &'a dyn BucketStore,
    pub crypto: Option<&'a dyn HostCrypto>,
    pub cache: Option<&'a RefCell<TokenCache>>,
    /// Wall clock, ns since the Unix epoch.
    pub now_ns: u64,
}

/// Things that happened while deciding, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Bucket updates that ran out of CAS attempts.
    pub cas_contention: u32,
    /// Charges that landed on a slot another identity was using.
    pub shared_slots: u32,
    /// The provider whose key set lacked a token's `kid` (a refetch may be due).
    pub key_miss: Option<usize>,
    /// The provider that had no keys for a token (a request may wait for its first keys).
    pub keys_unavailable: Option<usize>,
    /// Tokens found in the verified-token cache.
    pub cache_hits: u32,
    /// Tokens verified from scratch (parse, key, signature), whatever the outcome.
    pub cache_misses: u32,
    /// Tokens refused from the worker's memory of failed tokens, without verification.
    pub failed_replays: u32,
    /// Tokens verified on a trickle credit although their source's failed-auth budget was spent.
    pub budget_trickle: u32,
}

impl Engine {
    /// `secret`: 128 random bits, the same in every worker of the proxy (it keys slot choice and
    /// the per-worker token memories; see [`identity_hash`]).
    pub fn new(config: Config, plugin: &str, secret: SlotSecret) -> Engine {
        let slot_prefixes = config.rate_limits.as_ref().map_or_else(Vec::new, |rl| {
            rl.limits
                .iter()
                .map(|l| {
                    (
                        slot_prefix(plugin, SlotKind::Bucket, l),
                        slot_prefix(plugin, SlotKind::FailedAuth, l),
                    )
                })
                .collect()
        });
        Engine {
            answers: Answers::new(&config.realm),
            config,
            plugin: plugin.to_string(),
            secret,
            slot_prefixes,
        }
    }

    /// The shared-data name of every rate-limit slot (the host creates them once: Envoy can only
    /// compare-and-swap entries that exist). The `failedAuth` policy's slots have their own names
    /// (`…/fa/<policy>/<slot>`, another layout); its `rl/` slots exist only when a route or
    /// `global` charges it too.
    pub fn slot_names(&self) -> Vec<String> {
        let Some(rl) = &self.config.rate_limits else {
            return Vec::new();
        };
        let charged = |i: usize| {
            rl.global.contains(&i)
                || self.config.policy.routes.iter().any(|r| {
                    r.rate_limits.iter().any(|l| match &l.choice {
                        LimitChoice::Fixed(f) => *f == i,
                        LimitChoice::Tier {
                            by_value, default, ..
                        } => *default == i || by_value.iter().any(|(_, t)| *t == i),
                    })
                })
        };
        let mut names = Vec::new();
        for (i, (l, (bucket, failed_auth))) in rl.limits.iter().zip(&self.slot_prefixes).enumerate()
        {
            let slots = 0..u64::from(l.slots);
            if rl.failed_auth == Some(i) {
                names.extend(slots.clone().map(|s| slot_name(failed_auth, s)));
                if !charged(i) {
                    continue;
                }
            }
            names.extend(slots.map(|s| slot_name(bucket, s)));
        }
        names
    }

    /// Decides one request.
    pub fn decide(
        &self,
        req: &RequestView<'_>,
        inputs: &Inputs<'_>,
        events: &mut Events,
    ) -> Decision {
        let cfg = &self.config;
        let policy = &cfg.policy;
        // Client copies of the headers meshguard sets: removed (only those present, to spare host
        // calls on the hot path).
        let present = |h: &&String| req.headers.iter().any(|(n, _)| *n == h.as_str());
        let mut fwd = Forward {
            remove_headers: cfg.owned_headers.iter().filter(present).cloned().collect(),
            ..Forward::default()
        };
        for ph in &cfg.peer_headers {
            if let Some(v) = req.peer.field(ph.field).filter(|v| header_safe(v)) {
                fwd.set_headers.push((ph.header.clone(), v));
            }
        }

        let Ok(path) = normalized(req.path, policy.case_sensitive_paths) else {
            let refusal = self.refuse(Reason::InvalidRequest(RequestError::InvalidPath));
            return self.finish(fwd, Err(refusal), None, policy.mode);
        };
        let (Ok(host), Ok(method)) = (req.text_header(":authority"), req.text_header(":method"))
        else {
            let refusal = self.refuse(Reason::InvalidRequest(RequestError::InvalidPath));
            return self.finish(fwd, Err(refusal), None, policy.mode);
        };
        let Some(route) = policy.route_for(host, &path, method) else {
            let result = match policy.unmatched {
                Unmatched::Allow => Ok(()),
                Unmatched::Deny { status: 404 } => {
                    Err(self.refuse(Reason::Forbidden(Forbidden::NotFound)))
                }
                Unmatched::Deny { .. } => Err(self.refuse(Reason::Forbidden(Forbidden::NoRoute))),
            };
            return self.finish(fwd, result, None, policy.mode);
        };
        let result = self.authorize(req, inputs, route, &mut fwd, events);
        self.finish(fwd, result, Some(route), route.mode.unwrap_or(policy.mode))
    }

    /// The prebuilt answer for `reason`.
    fn refuse(&self, reason: Reason) -> LocalReply {
        self.answers.refuse(reason)
    }

    fn finish(
        &self,
        mut fwd: Forward,
        result: Result<(), LocalReply>,
        route: Option<&Route>,
        mode: Mode,
    ) -> Decision {
        let Err(mut reply) = result else {
            return Decision::Allow(fwd);
        };
        reply.route = route.map(|r| r.name.clone());
        match mode {
            Mode::Enforce => Decision::Deny(reply),
            Mode::DryRun => {
                fwd.dry_run = Some(reply);
                Decision::Allow(fwd)
            }
        }
    }

    /// Authentication as the route asks, rate limits, then the route's requirements.
    fn authorize(
        &self,
        req: &RequestView<'_>,
        inputs: &Inputs<'_>,
        route: &Route,
        fwd: &mut Forward,
        events: &mut Events,
    ) -> Result<(), LocalReply> {
        let principal = match route.token {
            TokenUse::None => None,
            TokenUse::Required | TokenUse::Optional => {
                match self.authenticate(req, inputs, fwd, events)? {
                    Some(principal) => Some(principal),
                    None if route.token == TokenUse::Required => {
                        return Err(self.refuse(Reason::MissingToken))
                    }
                    None => None,
                }
            }
        };
        let principal = principal.as_deref();
        let claims = principal.map(|p| &*p.claims);
        // The caller's identity keys are copied only when a refusal is logged.
        let with_caller = |mut r: LocalReply| {
            r.caller = claims.map(|c| Box::new(Caller::from_claims(c)));
            r
        };
        if let Some(rl) = &self.config.rate_limits {
            self.rate_limit(rl, req.peer, principal, route, inputs, fwd, events)
                .map_err(with_caller)?;
        }
        route
            .require
            .check(claims, req.peer)
            .map_err(|d| with_caller(self.answers.denied(&d)))
    }

    /// Verifies the request's token, if any, and adds the identity headers. `Ok(None)`: no
    /// credentials. A token in the verified-token cache is judged from it (time, audience,
    /// binding) and never meets the failed-authentication budget; any other token goes through
    /// [`Engine::verify_fresh`].
    fn authenticate(
        &self,
        req: &RequestView<'_>,
        inputs: &Inputs<'_>,
        fwd: &mut Forward,
        events: &mut Events,
    ) -> Result<Option<Rc<Principal>>, LocalReply> {
        let cfg = &self.config;
        let Some(credential) =
            extract(req, &cfg.token_sources).map_err(|e| self.refuse(Reason::InvalidRequest(e)))?
        else {
            return Ok(None);
        };
        let token = credential.token.as_str();
        let sources = credential.sources.as_slice();
        let invalid = |e| self.refuse(Reason::InvalidToken(e));
        // A cheap bound before any decoding; each provider applies its own after.
        if token.len() > cfg.max_token_bytes {
            return Err(invalid(TokenError::TooLarge));
        }
        let (provider, principal) = match self.cached(inputs, token, sources) {
            Some((provider, index, principal)) => {
                events.cache_hits += 1;
                // Time and audience are judged again with the current clock.
                check_claims(&principal.claims, provider, inputs.now_ns / 1_000_000_000)
                    .map_err(invalid)?;
                (index, principal)
            }
            None => {
                let verified = self.verify_fresh(req, inputs, token, sources, events)?;
                let principal = Rc::new(self.derive_principal(&verified));
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
        let required = cfg
            .providers
            .get(provider)
            .is_some_and(|p| p.require_certificate_binding);
        check_binding(&principal.claims, required, || {
            req.peer.certificate_sha256()
        })
        .map_err(invalid)?;
        self.consume_token(req, provider, sources, fwd);
        fwd.principal = Some(principal.clone());
        Ok(Some(principal))
    }

    /// What a verified token means here, derived once: its rate-limit identity and its upstream
    /// headers (kept with it in the verified-token cache).
    fn derive_principal(&self, verified: &VerifiedToken) -> Principal {
        let cfg = &self.config;
        let claims = &verified.claims;
        let rate_identity = cfg.rate_limits.as_ref().and_then(|rl| {
            rl.identity.iter().enumerate().find_map(|(pos, source)| {
                claim_identity(source, claims).map(|id| (pos, identity_hash(&self.secret, &id)))
            })
        });
        let mut upstream_headers = Vec::new();
        if let Some(provider) = cfg.providers.get(verified.provider) {
            for ch in &provider.claim_headers {
                if let Some(v) = claims.get_path(&ch.claim).and_then(claim_header_value) {
                    upstream_headers.push((ch.header.clone(), v));
                }
            }
        }
        if let Some(p) = principal(claims) {
            upstream_headers.push((cfg.principal_header.clone(), p));
        }
        Principal {
            claims: claims.clone(),
            rate_identity,
            upstream_headers,
        }
    }

    /// The token's entry in this worker's verified-token cache, if it is still usable here.
    fn cached(
        &self,
        inputs: &Inputs<'_>,
        token: &str,
        sources: &[usize],
    ) -> Option<(&Provider, usize, Rc<Principal>)> {
        let cache = inputs.cache?.borrow();
        let hit = cache.get(token, token_hash(token))?;
        let provider = self.config.providers.get(hit.provider)?;
        let usable = provider.sources.iter().any(|s| sources.contains(s))
            && inputs.keys.generation(hit.provider) == hit.generation;
        usable.then(|| (provider, hit.provider, hit.principal.clone()))
    }

    /// Verifies a token that is not in the verified-token cache. A token this worker saw fail
    /// (for a reason time cannot undo, against the same key set) is refused again without
    /// verification. With a `failedAuth` policy the source's budget decides first
    /// ([`budget::admit`]) and each failure charges it.
    fn verify_fresh(
        &self,
        req: &RequestView<'_>,
        inputs: &Inputs<'_>,
        token: &str,
        sources: &[usize],
        events: &mut Events,
    ) -> Result<VerifiedToken, LocalReply> {
        let cfg = &self.config;
        let now_ns = inputs.now_ns;
        let invalid = |e| self.refuse(Reason::InvalidToken(e));
        let memory = inputs
            .cache
            .map(|c| (c, whole_token_hash(&self.secret, token)));
        if let Some((cache, key)) = memory {
            let failed = cache.borrow().failed(key).copied().filter(|f| {
                inputs.keys.generation(f.provider) == f.generation
                    && cfg
                        .providers
                        .get(f.provider)
                        .is_some_and(|p| p.sources.iter().any(|s| sources.contains(s)))
            });
            if let Some(f) = failed {
                events.failed_replays += 1;
                return Err(invalid(f.error));
            }
        }
        let gate = self.failed_auth_gate(req.peer);
        if let Some(g) = &gate {
            let retried = memory.is_none_or(|(c, key)| c.borrow().was_deferred(key));
            let refused = |verdict: &Verdict| {
                self.answers
                    .rate_limited(RateLimited::FailedAuth, g.limit, verdict)
            };
            match budget::admit(
                inputs.buckets,
                &g.slot,
                g.limit,
                g.fingerprint,
                retried,
                now_ns,
            ) {
                Admission::Budget => {}
                Admission::Trickle => {
                    events.budget_trickle += 1;
                    if let Some((cache, key)) = memory {
                        cache.borrow_mut().undefer(key);
                    }
                }
                Admission::Deferred { verdict } => {
                    if let Some((cache, key)) = memory {
                        cache.borrow_mut().defer(key);
                    }
                    return Err(refused(&verdict));
                }
                Admission::Contended { verdict } => {
                    events.cas_contention += 1;
                    if let Some((cache, key)) = memory {
                        cache.borrow_mut().defer(key);
                    }
                    return Err(refused(&verdict));
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
        match result {
            Ok(verified) => Ok(verified),
            Err(Rejected { error, provider }) => {
                if error == TokenError::UnknownKey {
                    events.key_miss = provider;
                }
                if error == TokenError::KeysUnavailable {
                    events.keys_unavailable = provider;
                }
                if let (Some((cache, key)), Some(provider), true) =
                    (memory, provider, lasting(error))
                {
                    let generation = inputs.keys.generation(provider);
                    cache.borrow_mut().remember_failed(
                        key,
                        Failed {
                            provider,
                            generation,
                            error,
                        },
                    );
                }
                if let Some(g) = &gate {
                    if error != TokenError::KeysUnavailable
                        && !budget::record_failure(
                            inputs.buckets,
                            &g.slot,
                            g.limit,
                            g.fingerprint,
                            now_ns,
                        )
                    {
                        events.cas_contention += 1;
                    }
                }
                Err(invalid(error))
            }
        }
    }

    /// The request source's failed-auth slot, when a `failedAuth` policy is configured.
    fn failed_auth_gate(&self, peer: &Peer) -> Option<Gate<'_>> {
        let rl = self.config.rate_limits.as_ref()?;
        let index = rl.failed_auth?;
        let limit = rl.limits.get(index)?;
        let (_, prefix) = self.slot_prefixes.get(index)?;
        let hash = identity_hash(&self.secret, &source_ip_identity(peer));
        Some(Gate {
            limit,
            slot: slot_name(prefix, slot_of(limit, hash)),
            fingerprint: budget::fingerprint(hash),
        })
    }

    /// Charges the global limits and the route's limits, in order, stopping at the first that
    /// refuses. Exempt callers are not charged.
    #[allow(clippy::too_many_arguments)]
    fn rate_limit(
        &self,
        rl: &RateLimits,
        peer: &Peer,
        principal: Option<&Principal>,
        route: &Route,
        inputs: &Inputs<'_>,
        fwd: &mut Forward,
        events: &mut Events,
    ) -> Result<(), LocalReply> {
        let claims = principal.map(|p| &*p.claims);
        if is_exempt(rl, peer, claims) {
            return Ok(());
        }
        let global = rl.global.iter().map(|i| (*i, 1));
        let routed = route.rate_limits.iter().map(|r| {
            let index = match &r.choice {
                LimitChoice::Fixed(i) => *i,
                LimitChoice::Tier {
                    claim,
                    by_value,
                    default,
                } => {
                    let value = claims
                        .and_then(|c| c.get_path(claim))
                        .and_then(Value::as_str);
                    by_value
                        .iter()
                        .find(|(v, _)| Some(v.as_str()) == value)
                        .map_or(*default, |(_, i)| *i)
                }
            };
            (index, r.cost)
        });
        let mut tightest: Option<(&Limit, Verdict)> = None;
        for (index, cost) in global.chain(routed) {
            let Some(limit) = rl.limits.get(index) else {
                continue;
            };
            let hash = match limit.by {
                LimitBy::Global => identity_hash(&self.secret, "global"),
                LimitBy::SourceIp => identity_hash(&self.secret, &source_ip_identity(peer)),
                LimitBy::Identity => self.identity(rl, peer, principal),
            };
            let prefix = self
                .slot_prefixes
                .get(index)
                .map_or("", |(b, _)| b.as_str());
            let slot = slot_name(prefix, slot_of(limit, hash));
            match charge(inputs.buckets, &slot, limit, cost, inputs.now_ns, hash) {
                Charge::Done { verdict, shared } => {
                    if shared {
                        events.shared_slots += 1;
                    }
                    if !verdict.allowed {
                        return Err(self
                            .answers
                            .rate_limited(RateLimited::Limit, limit, &verdict));
                    }
                    if tightest.is_none_or(|(_, t)| verdict.remaining < t.remaining) {
                        tightest = Some((limit, verdict));
                    }
                }
                Charge::Contended => {
                    events.cas_contention += 1;
                    if rl.deny_on_contention {
                        return Err(self.refuse(Reason::RateLimited(RateLimited::Contention)));
                    }
                }
            }
        }
        if rl.response_headers {
            if let Some((limit, verdict)) = tightest {
                fwd.response_headers = limit_headers(limit, &verdict, false);
            }
        }
        Ok(())
    }

    /// Removes the consumed token from what goes upstream (its header, or its query parameter
    /// from `:path`), unless the provider forwards the original token.
    fn consume_token(
        &self,
        req: &RequestView<'_>,
        provider: usize,
        sources: &[usize],
        fwd: &mut Forward,
    ) {
        let cfg = &self.config;
        let Some(provider) = cfg.providers.get(provider) else {
            return;
        };
        if !provider.forward_original_token {
            let mut params = Vec::new();
            for s in sources {
                match cfg.token_sources.get(*s) {
                    Some(TokenSource::Header { name, .. })
                        if !fwd.remove_headers.contains(name) =>
                    {
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
}

/// A source's failed-authentication slot.
struct Gate<'a> {
    limit: &'a Limit,
    slot: String,
    fingerprint: u32,
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

impl Engine {
    /// The slot hash of the caller's rate-limit identity: the first configured source that is
    /// available, else the source IP. A token's claim-based identity was hashed once, when it
    /// was verified ([`Principal::rate_identity`]); peer facts are read per request.
    fn identity(&self, rl: &RateLimits, peer: &Peer, principal: Option<&Principal>) -> u64 {
        let from_token = principal.and_then(|p| p.rate_identity);
        for (pos, source) in rl.identity.iter().enumerate() {
            let found = match source {
                IdentitySource::ClientId | IdentitySource::Subject | IdentitySource::Claim(_) => {
                    match from_token {
                        Some((at, hash)) if at == pos => return hash,
                        _ => None,
                    }
                }
                IdentitySource::SpiffeId => peer.spiffe().map(|id| format!("spiffe:{}", id.uri)),
                IdentitySource::CertificateSha256 => {
                    peer.certificate_sha256().map(|d| format!("cert:{d}"))
                }
                IdentitySource::SourceIp => Some(source_ip_identity(peer)),
            };
            if let Some(id) = found {
                return identity_hash(&self.secret, &id);
            }
        }
        identity_hash(&self.secret, &source_ip_identity(peer))
    }
}

/// A token's rate-limit identity from one claim-based source, if it has that claim. Prefixed by
/// kind so that different kinds never share a bucket by accident.
fn claim_identity(source: &IdentitySource, claims: &Claims) -> Option<String> {
    let iss = claims.iss.as_deref().unwrap_or_default();
    let claim_str = |name: &str| claims.all.get(name).and_then(Value::as_str);
    match source {
        IdentitySource::ClientId => claim_str("client_id")
            .or_else(|| claim_str("azp"))
            .map(|v| format!("client:{iss}|{v}")),
        IdentitySource::Subject => claim_str("sub").map(|v| format!("sub:{iss}|{v}")),
        IdentitySource::Claim(path) => claims
            .get_path(path)
            .and_then(claim_header_value)
            .map(|v| format!("claim:{}:{iss}|{v}", path.join("."))),
        IdentitySource::SpiffeId | IdentitySource::CertificateSha256 | IdentitySource::SourceIp => {
            None
        }
    }
}

/// `ip:<address without port>`.
fn source_ip_identity(peer: &Peer) -> String {
    let addr = peer.source_address().unwrap_or("unknown");
    let ip = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => addr,
    };
    format!("ip:{ip}")
}

fn is_exempt(rl: &RateLimits, peer: &Peer, claims: Option<&Claims>) -> bool {
    if !rl.exempt_roles.is_empty() {
        let roles = claims.and_then(|c| c.get_path(&rl.exempt_roles_claim));
        let has = |r: &String| match roles {
            Some(Value::String(s)) => s == r,
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(r.as_str())),
            _ => false,
        };
        if rl.exempt_roles.iter().any(has) {
            return true;
        }
    }
    !rl.exempt_principals.is_empty()
        && peer
            .spiffe()
            .is_some_and(|id| rl.exempt_principals.iter().any(|p| p.matches(&id.uri)))
}

/// Istio's `request.auth.principal`: `<iss>/<sub>`.
fn principal(claims: &Claims) -> Option<String> {
    let v = format!("{}/{}", claims.iss.as_deref()?, claims.sub.as_deref()?);
    header_safe(&v).then_some(v)
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON text, arrays of
/// those joined with commas. Objects, nulls and values with control characters are not copied.
pub fn claim_header_value(v: &Value) -> Option<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match v {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        other => scalar(other)?,
    };
    header_safe(&text).then_some(text)
}

/// No control characters (so no header splitting) and a bounded length.
fn header_safe(v: &str) -> bool {
    v.len() <= 4096 && !v.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;
