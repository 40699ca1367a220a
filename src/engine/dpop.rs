//! DPoP (RFC 9449) in the pipeline. Once the access token is verified, a provider with DPoP on
//! judges how it was presented: a `cnf.jkt`-bound token only with the DPoP scheme and a proof
//! that matches the request, the token (`ath`) and the token's key (`cnf.jkt`), and, when
//! required, carries a nonce from this proxy. This phase only reads; the proof's `jti` is
//! recorded in the replay cache shared by the workers when the plan is settled ([`settle`]),
//! so a request decided twice records its proof once.

use super::inputs::{Events, Inputs};
use super::Engine;
use crate::decision::{DpopProof, Forward, LocalReply, Reason};
use crate::dpop::htu::{self, RequestUri};
use crate::dpop::{nonce, proof, replay, Mode};
use crate::jwt::jws::Claims;
use crate::jwt::TokenError;
use crate::request::RequestView;

/// The request header that carries the proof.
const DPOP_HEADER: &str = "dpop";

/// What a request with a valid proof owes the replay cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    provider: usize,
    /// The proof's record id ([`replay::proof_hash`]) and the last second it is acceptable.
    hash: u64,
    until: u64,
}

/// Judges the DPoP side of a verified token of `provider`: `Ok(None)` when DPoP plays no part
/// (DPoP off, or a bearer token where bearer tokens are allowed).
#[allow(clippy::too_many_arguments)]
pub fn check(
    engine: &Engine,
    req: &RequestView<'_>,
    inputs: &Inputs<'_>,
    provider: usize,
    token: &str,
    claims: &Claims,
    via_dpop: bool,
    fwd: &mut Forward,
) -> Result<Option<Owed>, LocalReply> {
    let Some(cfg) = engine.config.dpop(provider) else {
        return Ok(None);
    };
    let answers = &engine.answers;
    let refuse = |reason| answers.refuse_via(reason, via_dpop);
    let jkt = claims
        .all
        .get("cnf")
        .and_then(|c| c.get("jkt"))
        .and_then(|j| j.as_str());
    if !via_dpop {
        return match (jkt, cfg.mode) {
            (Some(_), _) => Err(refuse(Reason::InvalidToken(TokenError::DpopBoundAsBearer))),
            (None, Mode::Required) => Err(refuse(Reason::InvalidToken(TokenError::DpopRequired))),
            // A bearer token where bearer tokens are allowed: a `DPoP` header beside it was
            // not judged, so it does not go upstream either (unless `forwardProof`).
            (None, Mode::Allowed | Mode::Off) => {
                drop_proof(cfg, fwd);
                Ok(None)
            }
        };
    }
    let Some(jkt) = jkt else {
        return Err(refuse(Reason::InvalidToken(TokenError::NotDpopBound)));
    };
    let invalid = |detail: String| {
        let mut reply = refuse(Reason::InvalidDpopProof(DpopProof::Invalid));
        reply.detail = Some(detail);
        reply
    };
    // Non-UTF-8 values are refused by the proof check as a malformed proof.
    let values: Vec<&str> = req
        .header_lines(DPOP_HEADER)
        .map(|(_, v)| std::str::from_utf8(v).unwrap_or("\u{fffd}"))
        .collect();
    let uri = RequestUri {
        scheme: req.header(":scheme").unwrap_or("http"),
        authority: req.header(":authority").unwrap_or(""),
        path: req.path,
        forwarded_proto: req.header("x-forwarded-proto"),
        forwarded_host: req.header("x-forwarded-host"),
    };
    let expected = htu::expected(&cfg.public_origins, cfg.trust_forwarded_headers, &uri);
    let request = proof::Request {
        method: req.header(":method").unwrap_or(""),
        htu: &expected,
        access_token: Some(token),
        bound_to: Some(jkt),
    };
    let now_s = inputs.now_ns / 1_000_000_000;
    let proof =
        proof::check(&values, &request, cfg, now_s, inputs.crypto).map_err(|e| match e {
            proof::ProofError::KeyMismatch => {
                refuse(Reason::InvalidToken(TokenError::DpopKeyMismatch))
            }
            e => invalid(e.to_string()),
        })?;
    let secret = engine.slots.secret();
    if cfg.require_nonce {
        if let Err(e) = nonce::check(
            secret,
            cfg.nonce_step_seconds,
            proof.nonce.as_deref(),
            now_s,
        ) {
            let mut reply = refuse(Reason::UseDpopNonce);
            reply.detail = Some(e.to_string());
            reply.headers.push((
                "dpop-nonce",
                nonce::issue(secret, cfg.nonce_step_seconds, now_s),
            ));
            return Err(reply);
        }
        fwd.response_headers.push((
            "dpop-nonce",
            nonce::issue(secret, cfg.nonce_step_seconds, now_s),
        ));
    }
    drop_proof(cfg, fwd);
    Ok(Some(Owed {
        provider,
        hash: replay::proof_hash(secret, &proof.jkt, &proof.jti),
        until: proof.replay_until(cfg),
    }))
}

/// The `DPoP` header is removed from what goes upstream, unless `forwardProof`.
fn drop_proof(cfg: &crate::dpop::Config, fwd: &mut Forward) {
    if !cfg.forward_proof && !fwd.remove_headers.iter().any(|h| h == DPOP_HEADER) {
        fwd.remove_headers.push(DPOP_HEADER.to_string());
    }
}

/// A `DPoP` header on a request without an access token, when a provider takes DPoP: refused
/// (a proof alone proves nothing the route could rely on).
pub fn proof_without_token(engine: &Engine, req: &RequestView<'_>) -> Option<LocalReply> {
    let on = engine.config.dpop_source.is_some();
    (on && req.header_lines(DPOP_HEADER).next().is_some()).then(|| {
        engine
            .answers
            .refuse_via(Reason::InvalidDpopProof(DpopProof::WithoutToken), true)
    })
}

/// Records the proof's `jti` in its provider's replay cache: a proof seen before is refused,
/// and one that cannot be recorded (shard full, contended, missing) too — fail closed.
pub fn settle(
    engine: &Engine,
    owed: &Owed,
    inputs: &Inputs<'_>,
    events: &mut Events,
) -> Option<LocalReply> {
    // The caches are built from the same configuration as the plan; were one missing, the
    // proof could not be recorded: refused like a cache that cannot record it.
    let Some(cache) = engine.replay.get(owed.provider).and_then(Option::as_ref) else {
        return Some(engine.answers.refuse(Reason::DpopUnavailable));
    };
    let now_s = inputs.now_ns / 1_000_000_000;
    let reason = match cache.record(inputs.buckets, owed.hash, owed.until, now_s) {
        Ok(()) => return None,
        Err(replay::ReplayError::Replayed) => Reason::InvalidDpopProof(DpopProof::Replayed),
        Err(e) => {
            if e == replay::ReplayError::Contended {
                events.cas_contention += 1;
            }
            let mut reply = engine.answers.refuse(Reason::DpopUnavailable);
            reply.detail = Some(e.to_string());
            return Some(reply);
        }
    };
    Some(engine.answers.refuse_via(reason, true))
}

/// Every provider's replay cache (`None`: DPoP off), named after the plugin and provider.
pub fn replay_caches(
    engine_plugin: &str,
    config: &crate::config::Config,
) -> Vec<Option<replay::ReplayCache>> {
    config
        .providers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            config.dpop(i).map(|d| {
                replay::ReplayCache::new(
                    &format!("meshguard/{engine_plugin}/dpop/{}", p.name),
                    d.replay_shards,
                    d.replay_shard_entries,
                )
            })
        })
        .collect()
}
