//! Token verification against the configured providers, with `now` passed in.
//!
//! Order: size → syntax → provider by `iss` → algorithm allowed → key (by `kid`) → signature →
//! `exp` / `nbf` / `iat` / lifetime → audience. Time and audience are judged only for tokens
//! whose signature holds, so "token expired" is never said of a forgery.

use std::rc::Rc;

use super::crypto::HostCrypto;
use super::jwks::{KeySelectError, KeySet, SignatureCheck};
use super::jws::{self, Claims};
use super::provider::Provider;
use super::{Algorithm, TokenError};

/// Where the verification keys of each provider are (the host keeps them per worker).
pub trait KeyLookup {
    /// The current key set of provider `index`, or `None` while it has none.
    fn keys(&self, index: usize) -> Option<&KeySet>;

    /// Changes whenever provider `index`'s key set changes (cached verifications die with it).
    fn generation(&self, _index: usize) -> u64 {
        0
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// Index of the provider that verified it.
    pub provider: usize,
    pub claims: Rc<Claims>,
}

/// A refused token, and the provider it was judged against (once its issuer is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub error: TokenError,
    pub provider: Option<usize>,
}

/// Verifies `token`, found at one of `sources` (indexes into `Config::token_sources`).
pub fn verify(
    token: &str,
    sources: &[usize],
    providers: &[Provider],
    keys: &dyn KeyLookup,
    host: Option<&dyn HostCrypto>,
    now_s: u64,
) -> Result<VerifiedToken, Rejected> {
    let early = |error| Rejected {
        error,
        provider: None,
    };
    let parsed = jws::parse(token).map_err(early)?;
    let iss = parsed
        .claims
        .iss
        .as_deref()
        .ok_or(early(TokenError::UnknownIssuer))?;
    let (index, provider) = providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.issuer == iss && p.sources.iter().any(|s| sources.contains(s)))
        .ok_or(early(TokenError::UnknownIssuer))?;
    let fail = |error| Rejected {
        error,
        provider: Some(index),
    };
    if token.len() > provider.max_token_bytes {
        return Err(fail(TokenError::TooLarge));
    }
    let alg = Algorithm::parse(&parsed.alg).ok_or(fail(TokenError::UnsupportedAlgorithm))?;
    if !provider.algorithms.contains(&alg) {
        return Err(fail(TokenError::AlgorithmNotAllowed));
    }
    let set = keys
        .keys(index)
        .filter(|s| !s.is_empty())
        .ok_or(fail(TokenError::KeysUnavailable))?;
    let key = set.select(parsed.kid.as_deref(), alg).map_err(|e| {
        fail(match e {
            KeySelectError::UnknownKid | KeySelectError::NoKeyForAlgorithm => {
                TokenError::UnknownKey
            }
            KeySelectError::AlgorithmMismatch => TokenError::AlgorithmNotAllowed,
            KeySelectError::Ambiguous => TokenError::AmbiguousKey,
        })
    })?;
    if key.verify_signature(token, alg, host) != SignatureCheck::Valid {
        return Err(fail(TokenError::BadSignature));
    }
    check_claims(&parsed.claims, provider, now_s).map_err(fail)?;
    Ok(VerifiedToken {
        provider: index,
        claims: Rc::new(parsed.claims),
    })
}

/// Time and audience checks for a token whose signature holds.
pub fn check_claims(claims: &Claims, provider: &Provider, now_s: u64) -> Result<(), TokenError> {
    let skew = provider.clock_skew_seconds;
    let exp = claims.exp.ok_or(TokenError::MissingExpiration)?;
    // RFC 7519 §4.1.4: the token must not be accepted on or after `exp`.
    if now_s >= exp.saturating_add(skew) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.nbf {
        if now_s.saturating_add(skew) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(iat) = claims.iat {
        if iat > now_s.saturating_add(skew) {
            return Err(TokenError::IssuedInFuture);
        }
    }
    if let Some(max) = provider.max_lifetime_seconds {
        let start = claims.iat.unwrap_or(now_s);
        if exp.saturating_sub(start) > max {
            return Err(TokenError::LifetimeTooLong);
        }
    }
    if !provider.audiences.is_empty()
        && !claims
            .aud
            .iter()
            .any(|a| provider.audiences.iter().any(|allowed| allowed == a))
    {
        return Err(TokenError::Audience);
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// RFC 8705 §3: a token carrying `cnf."x5t#S256"` is bound to the client certificate whose
/// SHA-256 (base64url, no padding) it names. `peer_sha256_hex` gives Envoy's lower-case hex
/// digest of the client certificate; it is asked only for a bound token. `dpop_on`: the
/// provider takes DPoP-bound tokens, so a `cnf` holding only `jkt` is left to the DPoP check.
pub fn check_binding<'p>(
    claims: &Claims,
    required: bool,
    dpop_on: bool,
    peer_sha256_hex: impl FnOnce() -> Option<&'p str>,
) -> Result<(), TokenError> {
    use base64::Engine as _;
    let thumbprint = match claims.all.get("cnf") {
        None => None,
        Some(serde_json::Value::Object(cnf)) => match cnf.get("x5t#S256") {
            // DPoP-bound (`jkt`), for a provider with DPoP on: judged with its proof
            // (`engine::dpop`).
            // (A `jkt` that is not a string binds nothing checkable: refused below.)
            None if dpop_on && cnf.len() == 1 && cnf.get("jkt").is_some_and(|j| j.is_string()) => {
                None
            }
            // Bound some other way (`jwk`, …, or `jkt` without DPoP): it must not pass as a
            // bearer token.
            None if !cnf.is_empty() => return Err(TokenError::UnsupportedBinding),
            None => None,
            Some(serde_json::Value::String(t)) => Some(t.as_str()),
            Some(_) => return Err(TokenError::Malformed),
        },
        Some(_) => return Err(TokenError::Malformed),
    };
    let Some(thumbprint) = thumbprint else {
        return if required {
            Err(TokenError::BindingRequired)
        } else {
            Ok(())
        };
    };
    let digest = peer_sha256_hex()
        .and_then(hex_decode)
        .ok_or(TokenError::BindingMismatch)?;
    let peer = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    if peer == thumbprint {
        Ok(())
    } else {
        Err(TokenError::BindingMismatch)
    }
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
