//! Token verification against the configured providers, with `now` passed in.
//!
//! Order: size → syntax → provider by `iss` → algorithm allowed → key (by `kid`) → signature →
//! `exp` / `nbf` / `iat` / lifetime → audience. Time and audience are judged only for tokens
//! whose signature holds, so "token expired" is never said of a forgery.

use super::jwks::{KeySelectError, KeySet, SignatureCheck};
use super::jws::{self, Claims};
use super::{Algorithm, TokenError};
use crate::config::Provider;

/// Where the verification keys of each provider are (the host keeps them per worker).
pub trait KeyLookup {
    /// The current key set of provider `index`, or `None` while it has none.
    fn keys(&self, index: usize) -> Option<&KeySet>;
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// Index of the provider that verified it.
    pub provider: usize,
    pub claims: Claims,
}

/// Verifies `token`, found at one of `sources` (indexes into `Config::token_sources`).
pub fn verify(
    token: &str,
    sources: &[usize],
    providers: &[Provider],
    keys: &dyn KeyLookup,
    now_s: u64,
) -> Result<VerifiedToken, TokenError> {
    let parsed = jws::parse(token)?;
    let iss = parsed
        .claims
        .iss
        .as_deref()
        .ok_or(TokenError::UnknownIssuer)?;
    let (index, provider) = providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.issuer == iss && p.sources.iter().any(|s| sources.contains(s)))
        .ok_or(TokenError::UnknownIssuer)?;
    if token.len() > provider.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let alg = Algorithm::parse(&parsed.alg).ok_or(TokenError::UnsupportedAlgorithm)?;
    if !provider.algorithms.contains(&alg) {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    let set = keys
        .keys(index)
        .filter(|s| !s.is_empty())
        .ok_or(TokenError::KeysUnavailable)?;
    let key = set
        .select(parsed.kid.as_deref(), alg)
        .map_err(|e| match e {
            KeySelectError::UnknownKid | KeySelectError::NoKeyForAlgorithm => {
                TokenError::UnknownKey
            }
            KeySelectError::AlgorithmMismatch => TokenError::AlgorithmNotAllowed,
            KeySelectError::Ambiguous => TokenError::AmbiguousKey,
        })?;
    if key.verify_signature(token, alg) != SignatureCheck::Valid {
        return Err(TokenError::BadSignature);
    }
    check_claims(&parsed.claims, provider, now_s)?;
    Ok(VerifiedToken {
        provider: index,
        claims: parsed.claims,
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
