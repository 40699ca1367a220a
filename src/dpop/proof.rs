//! A DPoP proof (the `DPoP` request header, RFC 9449 §4) checked against the request it came
//! with, at an explicit `now`.
//!
//! The checks of RFC 9449 §4.3, cheapest first so that a forged proof costs no signature check:
//! exactly one header; bounded size; a compact JWS with JSON header and payload (no duplicate
//! members, no `crit`); `typ` `dpop+jwt`; `alg` in the provider's asymmetric allow-list; a
//! public `jwk` (private members refused) whose key type permits `alg` (the key decides, as for
//! tokens); `jti` (bounded), `htm`, `htu`, `iat` present; `htm` is the method; `htu` is one of
//! the expected URIs ([`super::htu`]); `iat` within the window; `ath` matches the presented
//! access token; then the signature, with that key, through the host's crypto when it has the
//! algorithm. Replay (`jti`) and `nonce` are judged by the caller with [`super::replay`] and
//! [`super::nonce`]: this returns their inputs.
//!
//! Errors are an enum whose messages are safe to log: client-supplied text is shortened, and
//! neither the proof nor the access token is ever shown.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::htu::{self, HtuMismatch};
use super::{ath, thumbprint, Config};
use crate::jwt::crypto::HostCrypto;
use crate::jwt::jwks::{Key, SignatureCheck};
use crate::jwt::{jws, Algorithm};

/// Longest `jti` accepted, in bytes.
pub const MAX_JTI_BYTES: usize = 256;
/// Longest `nonce` claim accepted, in bytes (meshguard's own are 32).
pub const MAX_NONCE_BYTES: usize = 256;
/// Longest client-supplied text shown in an error.
const SHOWN_MAX: usize = 32;

/// JWK members that only a private (or symmetric) key has: RFC 7518 §6.2.2, §6.3.2 and §6.4.1,
/// RFC 8037 §2.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The request facts a proof is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `:method`.
    pub method: &'a str,
    /// The normalised URIs the client may have signed ([`htu::expected`]).
    pub htu: &'a [String],
    /// The access token presented with the proof (`Authorization: DPoP <token>`), if any.
    pub access_token: Option<&'a str>,
    /// The thumbprint the access token is bound to (`cnf.jkt`), if known: a proof by another
    /// key is refused before its claims are read or its signature checked, so a stolen token
    /// with a key of the thief's cannot buy signature work.
    pub bound_to: Option<&'a str>,
}

/// A proof that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key (base64url): compared with the token's
    /// `cnf.jkt`, and the rate-limit identity `jkt`.
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
    pub nonce: Option<String>,
    pub alg: Algorithm,
}

impl Proof {
    /// The last second this proof is acceptable, and so how long its `jti` must be remembered.
    pub fn replay_until(&self, cfg: &Config) -> u64 {
        self.iat
            .saturating_add(cfg.proof_max_age_seconds)
            .saturating_add(cfg.clock_skew_seconds)
    }
}

/// Why a proof was refused. Each becomes `invalid_dpop_proof` for the client; the message is
/// for the log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("no DPoP header")]
    Missing,
    #[error("{0} DPoP header values; exactly one is allowed")]
    Multiple(usize),
    #[error("DPoP proof is larger than {0} bytes")]
    TooLarge(usize),
    #[error("DPoP proof is not a well-formed compact JWS")]
    Malformed,
    #[error("DPoP proof typ is not dpop+jwt")]
    Type,
    #[error("DPoP proof alg {0:?} is not an accepted algorithm")]
    Algorithm(String),
    #[error("DPoP proof header has no jwk object")]
    MissingKey,
    #[error("DPoP proof jwk has private key member {0:?}")]
    PrivateKey(&'static str),
    #[error("DPoP proof jwk is unusable: {0}")]
    BadKey(&'static str),
    #[error("DPoP proof alg {0} is not permitted by its jwk's key type")]
    KeyAlgorithm(&'static str),
    #[error("DPoP proof has no {0} claim")]
    MissingClaim(&'static str),
    #[error("DPoP proof claim {0} is not a string")]
    ClaimType(&'static str),
    #[error("DPoP proof jti is longer than {MAX_JTI_BYTES} bytes")]
    JtiTooLong,
    #[error("DPoP proof nonce is longer than {MAX_NONCE_BYTES} bytes")]
    NonceTooLong,
    #[error("DPoP proof htm {got:?} is not the request method {expected:?}")]
    Method { expected: String, got: String },
    #[error("DPoP proof {0}")]
    Uri(HtuMismatch),
    #[error("DPoP proof iat is {0} s in the future")]
    IssuedInFuture(u64),
    #[error("DPoP proof iat is {0} s old")]
    TooOld(u64),
    #[error("DPoP proof ath does not match the access token")]
    TokenHash,
    #[error("DPoP proof signature is invalid")]
    BadSignature,
    #[error("DPoP proof key is not the one the access token is bound to (cnf.jkt)")]
    KeyMismatch,
}

fn shown(text: &str) -> String {
    text.chars().take(SHOWN_MAX).collect()
}

/// Checks the proof in `values` (every `DPoP` header value of the request) for `req` at `now`
/// (seconds since the epoch).
pub fn check(
    values: &[&str],
    req: &Request<'_>,
    cfg: &Config,
    now: u64,
    host: Option<&dyn HostCrypto>,
) -> Result<Proof, ProofError> {
    let proof = match values {
        [] => return Err(ProofError::Missing),
        [one] => *one,
        many => return Err(ProofError::Multiple(many.len())),
    };
    // A repeated header can reach the filter joined with `,` (never part of a compact JWS).
    if proof.contains(',') {
        return Err(ProofError::Multiple(proof.split(',').count()));
    }
    if proof.len() > cfg.max_proof_bytes {
        return Err(ProofError::TooLarge(cfg.max_proof_bytes));
    }
    let (header, token) = jws::parse_with_header(proof).map_err(|_| ProofError::Malformed)?;

    match header.get("typ") {
        Some(Value::String(t))
            if t.eq_ignore_ascii_case("dpop+jwt")
                || t.eq_ignore_ascii_case("application/dpop+jwt") => {}
        _ => return Err(ProofError::Type),
    }
    let alg = Algorithm::parse(&token.alg)
        .filter(|a| cfg.algorithms.contains(a))
        .ok_or_else(|| ProofError::Algorithm(shown(&token.alg)))?;
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(ProofError::MissingKey);
    };
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(ProofError::PrivateKey(m));
    }
    let jwk_value = Value::Object(jwk.clone());
    let key = Key::from_jwk(&jwk_value, &cfg.algorithms).map_err(ProofError::BadKey)?;
    if !key.algorithms.contains(&alg) {
        return Err(ProofError::KeyAlgorithm(alg.name()));
    }
    let jkt = thumbprint::jkt(jwk).map_err(|_| ProofError::BadKey("no thumbprint"))?;
    if req.bound_to.is_some_and(|b| b != jkt) {
        return Err(ProofError::KeyMismatch);
    }

    let claims = &token.claims.all;
    let jti = required_string(claims, "jti")?;
    if jti.is_empty() {
        return Err(ProofError::MissingClaim("jti"));
    }
    if jti.len() > MAX_JTI_BYTES {
        return Err(ProofError::JtiTooLong);
    }
    let htm = required_string(claims, "htm")?;
    let htu_claim = required_string(claims, "htu")?;
    let iat = token.claims.iat.ok_or(ProofError::MissingClaim("iat"))?;
    let nonce = optional_string(claims, "nonce")?;
    if nonce.is_some_and(|n| n.len() > MAX_NONCE_BYTES) {
        return Err(ProofError::NonceTooLong);
    }
    let proof_ath = optional_string(claims, "ath")?;

    if htm != req.method {
        return Err(ProofError::Method {
            expected: shown(req.method),
            got: shown(htm),
        });
    }
    htu::check(htu_claim, req.htu).map_err(ProofError::Uri)?;
    if iat > now.saturating_add(cfg.clock_skew_seconds) {
        return Err(ProofError::IssuedInFuture(iat - now));
    }
    let oldest = now
        .saturating_sub(cfg.proof_max_age_seconds)
        .saturating_sub(cfg.clock_skew_seconds);
    if iat < oldest {
        return Err(ProofError::TooOld(now - iat));
    }
    if let Some(token) = req.access_token {
        match proof_ath {
            None => return Err(ProofError::MissingClaim("ath")),
            Some(a) if a != ath(token) => return Err(ProofError::TokenHash),
            Some(_) => {}
        }
    }

    // Last, the one expensive step.
    let (signing_input, sig_b64) = proof.rsplit_once('.').ok_or(ProofError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64.as_bytes())
        .map_err(|_| ProofError::Malformed)?;
    if key.verify_parts(signing_input.as_bytes(), &sig, alg, host) != SignatureCheck::Valid {
        return Err(ProofError::BadSignature);
    }
    Ok(Proof {
        jkt,
        jti: jti.to_string(),
        iat,
        nonce: nonce.map(str::to_string),
        alg,
    })
}

fn required_string<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, ProofError> {
    optional_string(claims, name)?.ok_or(ProofError::MissingClaim(name))
}

fn optional_string<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ProofError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ProofError::ClaimType(name)),
    }
}

#[cfg(test)]
mod tests;
