//! JWKS document → verification keys. Parsed once per document (configure time for inline keys,
//! once per fetched version for remote keys), never per request.
//!
//! A bad key is skipped with a reason and the others still load: duplicate `kid`, `use` other
//! than `sig`, unknown `kty`/`crv`, an `alg` we do not support or that the provider does not
//! allow, RSA moduli under 2048 bits, EC points not on the curve, missing members.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike, ECDSAP384PublicKeyLike, ES256PublicKey, ES384PublicKey,
    Ed25519PublicKey, EdDSAPublicKeyLike, PS256PublicKey, PS384PublicKey, PS512PublicKey,
    RS256PublicKey, RS384PublicKey, RS512PublicKey, RSAPublicKeyLike,
};
use jwt_simple::claims::{JWTClaims, NoCustomClaims};
use jwt_simple::common::VerificationOptions;
use jwt_simple::prelude::UnixTimeStamp;
use serde_json::Value;

use super::crypto::{ecdsa_jose_to_der, host_hash, HostCrypto};
use super::{Algorithm, KeyFamily};

/// Largest JWKS document ever parsed, in bytes (`jwksMaxBytes` may only lower it).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys kept from one document.
pub const MAX_KEYS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// The document as a whole is unusable (not JSON, not an object, no `keys` array, too big).
    Document(String),
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::Document(m) => f.write_str(m),
        }
    }
}

/// A key that was left out, and why (fixed strings: safe to log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub index: usize,
    pub kid: Option<String>,
    pub reason: &'static str,
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    pub skipped: Vec<SkippedKey>,
}

/// One JWK, ready to verify the algorithms it may be used with.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms this key may verify: its own `alg` if the JWK names one, otherwise
    /// every allowed algorithm of its family.
    pub algorithms: Vec<Algorithm>,
    verifiers: Vec<Verifier>,
    /// DER SubjectPublicKeyInfo, for the host's crypto (RSA and EC keys).
    host_der: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Verifier {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
}

/// The outcome of checking a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    Invalid,
}

impl KeySet {
    /// Parses a JWKS document, keeping keys usable with one of `allowed` algorithms.
    pub fn from_jwks(doc: &[u8], allowed: &[Algorithm]) -> Result<KeySet, JwksError> {
        if doc.len() > MAX_JWKS_BYTES {
            return Err(JwksError::Document(format!(
                "JWKS document is larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        let value: Value = serde_json::from_slice(doc)
            .map_err(|_| JwksError::Document("JWKS is not valid JSON".into()))?;
        let Value::Object(mut root) = value else {
            return Err(JwksError::Document("JWKS is not a JSON object".into()));
        };
        let Some(Value::Array(list)) = root.remove("keys") else {
            return Err(JwksError::Document("JWKS has no \"keys\" array".into()));
        };
        let mut set = KeySet::default();
        for (index, jwk) in list.iter().enumerate() {
            let kid = match jwk.get("kid") {
                Some(Value::String(k)) => Some(k.clone()),
                _ => None,
            };
            let skip = |reason| SkippedKey {
                index,
                kid: kid.clone(),
                reason,
            };
            if set.keys.len() >= MAX_KEYS {
                set.skipped.push(skip("too many keys"));
                continue;
            }
            if kid.is_some() && set.keys.iter().any(|k| k.kid == kid) {
                set.skipped.push(skip("duplicate kid"));
                continue;
            }
            match parse_key(jwk, allowed) {
                Ok(key) => set.keys.push(Key { kid, ..key }),
                Err(reason) => set.skipped.push(skip(reason)),
            }
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// One line naming why keys were skipped, for logs and config errors.
    pub fn skipped_summary(&self) -> String {
        if self.skipped.is_empty() {
            return "the key list is empty".into();
        }
        self.skipped
            .iter()
            .map(|s| match &s.kid {
                Some(kid) => format!("keys[{}] kid \"{}\": {}", s.index, kid, s.reason),
                None => format!("keys[{}]: {}", s.index, s.reason),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Picks the key for a token: by `kid` when the token names one, otherwise the only key
    /// that can verify `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, KeySelectError> {
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(KeySelectError::UnknownKid)?;
                if key.algorithms.contains(&alg) {
                    Ok(key)
                } else {
                    Err(KeySelectError::AlgorithmMismatch)
                }
            }
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) => Err(KeySelectError::NoKeyForAlgorithm),
                    (Some(_), Some(_)) => Err(KeySelectError::Ambiguous),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySelectError {
    UnknownKid,
    AlgorithmMismatch,
    NoKeyForAlgorithm,
    Ambiguous,
}

impl Key {
    /// One JWK on its own, under the rules of a JWKS key (`use`, `key_ops`, `alg` against
    /// `allowed`, RSA ≥ 2048 bits, EC points on the curve): a DPoP proof's header `jwk`. The
    /// caller refuses private members first; this reads only the public ones.
    pub fn from_jwk(jwk: &Value, allowed: &[Algorithm]) -> Result<Key, &'static str> {
        parse_key(jwk, allowed)
    }

    /// Checks the signature of a whole compact token with this key and `alg`: through the
    /// host's crypto when it offers the algorithm, else with jwt-simple. Claims are not looked at
    /// here: `verify` checks them with its own explicit clock.
    pub fn verify_signature(
        &self,
        token: &str,
        alg: Algorithm,
        host: Option<&dyn HostCrypto>,
    ) -> SignatureCheck {
        if let (Some(host), Some(der), Some(hash)) = (host, &self.host_der, host_hash(alg)) {
            if let Some(valid) = host_verify_token(host, der, hash, token, alg) {
                return check(valid);
            }
        }
        let Some(v) = self.verifiers.iter().find(|v| v.algorithm() == alg) else {
            return SignatureCheck::Invalid;
        };
        check(v.verify(token))
    }

    /// Checks a JWS signature given as its parts: the signing input (`header.payload`, as sent)
    /// and the decoded signature. For a JWS jwt-simple cannot parse: a DPoP proof, whose header
    /// carries `jwk` as an object. The host's crypto first, as in [`Key::verify_signature`],
    /// else the same pure-Rust primitives jwt-simple uses, without its token parser.
    pub fn verify_parts(
        &self,
        signing_input: &[u8],
        signature: &[u8],
        alg: Algorithm,
        host: Option<&dyn HostCrypto>,
    ) -> SignatureCheck {
        if let (Some(host), Some(der), Some(hash)) = (host, &self.host_der, host_hash(alg)) {
            if let Some(valid) = host_verify(host, der, hash, signing_input, signature, alg) {
                return check(valid);
            }
        }
        let Some(v) = self.verifiers.iter().find(|v| v.algorithm() == alg) else {
            return SignatureCheck::Invalid;
        };
        check(v.verify_raw(signing_input, signature))
    }
}

fn check(valid: bool) -> SignatureCheck {
    if valid {
        SignatureCheck::Valid
    } else {
        SignatureCheck::Invalid
    }
}

/// `Some(valid)` from the host, `None` when it cannot answer (fall back).
fn host_verify_token(
    host: &dyn HostCrypto,
    der: &[u8],
    hash: &str,
    token: &str,
    alg: Algorithm,
) -> Option<bool> {
    let (message, sig_b64) = token.rsplit_once('.')?;
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig_b64.as_bytes()) else {
        return Some(false);
    };
    host_verify(host, der, hash, message.as_bytes(), &sig, alg)
}

/// `Some(valid)` from the host, `None` when it cannot answer (fall back). ECDSA signatures are
/// converted from JOSE `r‖s` to DER; one of the wrong length is invalid.
fn host_verify(
    host: &dyn HostCrypto,
    der: &[u8],
    hash: &str,
    message: &[u8],
    sig: &[u8],
    alg: Algorithm,
) -> Option<bool> {
    let converted;
    let sig = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let len = if alg == Algorithm::ES256 { 32 } else { 48 };
            match ecdsa_jose_to_der(sig, len) {
                Some(der) => {
                    converted = der;
                    &converted
                }
                None => return Some(false),
            }
        }
        _ => sig,
    };
    host.verify(hash, der, sig, message)
}

impl Verifier {
    fn algorithm(&self) -> Algorithm {
        match self {
            Verifier::RS256(_) => Algorithm::RS256,
            Verifier::RS384(_) => Algorithm::RS384,
            Verifier::RS512(_) => Algorithm::RS512,
            Verifier::PS256(_) => Algorithm::PS256,
            Verifier::PS384(_) => Algorithm::PS384,
            Verifier::PS512(_) => Algorithm::PS512,
            Verifier::ES256(_) => Algorithm::ES256,
            Verifier::ES384(_) => Algorithm::ES384,
            Verifier::EdDSA(_) => Algorithm::EdDSA,
        }
    }

    /// The signature alone, over `message`, with the primitives jwt-simple uses for `verify`
    /// (superboring's RSA, RustCrypto's ECDSA, ed25519-compact), none of which reads a clock.
    fn verify_raw(&self, message: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        use superboring::hash::MessageDigest;
        use superboring::rsa::Padding;
        let rsa = |key: &jwt_simple::algorithms::RSAPublicKey, digest, padding| {
            rsa_verify(key.as_ref(), digest, padding, message, sig)
        };
        match self {
            Verifier::RS256(k) => rsa(k.public_key(), MessageDigest::sha256(), Padding::PKCS1),
            Verifier::RS384(k) => rsa(k.public_key(), MessageDigest::sha384(), Padding::PKCS1),
            Verifier::RS512(k) => rsa(k.public_key(), MessageDigest::sha512(), Padding::PKCS1),
            Verifier::PS256(k) => rsa(k.public_key(), MessageDigest::sha256(), Padding::PKCS1_PSS),
            Verifier::PS384(k) => rsa(k.public_key(), MessageDigest::sha384(), Padding::PKCS1_PSS),
            Verifier::PS512(k) => rsa(k.public_key(), MessageDigest::sha512(), Padding::PKCS1_PSS),
            Verifier::ES256(k) => p256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| k.public_key().as_ref().verify(message, &s).is_ok()),
            Verifier::ES384(k) => p384::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| k.public_key().as_ref().verify(message, &s).is_ok()),
            Verifier::EdDSA(k) => ed25519_compact::Signature::from_slice(sig)
                .is_ok_and(|s| k.public_key().as_ref().verify(message, &s).is_ok()),
        }
    }

    fn verify(&self, token: &str) -> bool {
        // jwt-simple checks the signature and then the claims. Its claim checks are made
        // vacuous (time frozen at 0, future tokens accepted, no issuer/audience sets): the
        // caller checks claims against its own `now`. No clock is read here.
        let options = VerificationOptions {
            artificial_time: Some(UnixTimeStamp::from_secs(0)),
            time_tolerance: Some(UnixTimeStamp::from_secs(0)),
            accept_future: true,
            max_token_length: None,
            ..VerificationOptions::default()
        };
        let opts = Some(options);
        let r: Result<JWTClaims<NoCustomClaims>, _> = match self {
            Verifier::RS256(k) => k.verify_token(token, opts),
            Verifier::RS384(k) => k.verify_token(token, opts),
            Verifier::RS512(k) => k.verify_token(token, opts),
            Verifier::PS256(k) => k.verify_token(token, opts),
            Verifier::PS384(k) => k.verify_token(token, opts),
            Verifier::PS512(k) => k.verify_token(token, opts),
            Verifier::ES256(k) => k.verify_token(token, opts),
            Verifier::ES384(k) => k.verify_token(token, opts),
            Verifier::EdDSA(k) => k.verify_token(token, opts),
        };
        r.is_ok()
    }
}

fn rsa_verify(
    key: &superboring::rsa::Rsa<superboring::pkey::Public>,
    digest: superboring::hash::MessageDigest,
    padding: superboring::rsa::Padding,
    message: &[u8],
    sig: &[u8],
) -> bool {
    let Ok(pkey) = superboring::pkey::PKey::from_rsa(key.clone()) else {
        return false;
    };
    let Ok(mut verifier) = superboring::sign::Verifier::new(digest, &pkey) else {
        return false;
    };
    verifier.set_rsa_padding(padding).is_ok()
        && verifier.update(message).is_ok()
        && verifier.verify(sig).unwrap_or(false)
}

fn b64_member(jwk: &Value, name: &str) -> Result<Vec<u8>, &'static str> {
    match jwk.get(name) {
        Some(Value::String(s)) => URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| "member is not base64url"),
        Some(_) => Err("member is not a string"),
        None => Err("missing member"),
    }
}

fn str_member<'a>(jwk: &'a Value, name: &str) -> Result<Option<&'a str>, &'static str> {
    match jwk.get(name) {
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("member is not a string"),
        None => Ok(None),
    }
}

fn parse_key(jwk: &Value, allowed: &[Algorithm]) -> Result<Key, &'static str> {
    if !jwk.is_object() {
        return Err("key is not a JSON object");
    }
    if let Some(u) = str_member(jwk, "use")? {
        if u != "sig" {
            return Err("use is not sig");
        }
    }
    if let Some(Value::Array(ops)) = jwk.get("key_ops") {
        if !ops.iter().any(|o| o == "verify") {
            return Err("key_ops does not include verify");
        }
    }
    let family = match (str_member(jwk, "kty")?, str_member(jwk, "crv")?) {
        (Some("RSA"), _) => KeyFamily::Rsa,
        (Some("EC"), Some("P-256")) => KeyFamily::P256,
        (Some("EC"), Some("P-384")) => KeyFamily::P384,
        (Some("OKP"), Some("Ed25519")) => KeyFamily::Ed25519,
        (Some("EC"), _) | (Some("OKP"), _) => return Err("unsupported curve"),
        (Some(_), _) => return Err("unsupported kty"),
        (None, _) => return Err("missing kty"),
    };
    let algorithms: Vec<Algorithm> = match str_member(jwk, "alg")? {
        Some(name) => {
            let alg = Algorithm::parse(name).ok_or("unsupported alg")?;
            if alg.family() != family {
                return Err("alg does not match kty");
            }
            if !allowed.contains(&alg) {
                return Err("alg not allowed by provider");
            }
            vec![alg]
        }
        None => allowed
            .iter()
            .copied()
            .filter(|a| a.family() == family)
            .collect(),
    };
    if algorithms.is_empty() {
        return Err("no allowed algorithm for this key type");
    }

    let mut verifiers = Vec::with_capacity(algorithms.len());
    let mut host_der = None;
    match family {
        KeyFamily::Rsa => {
            let n = b64_member(jwk, "n")?;
            let e = b64_member(jwk, "e")?;
            let n_bits = bit_length(&n);
            if n_bits < 2048 {
                return Err("RSA modulus under 2048 bits");
            }
            host_der = RS256PublicKey::from_components(&n, &e)
                .ok()
                .and_then(|k| k.to_der().ok());
            for alg in &algorithms {
                let bad = |_| "invalid RSA key";
                verifiers.push(match alg {
                    Algorithm::RS256 => {
                        Verifier::RS256(RS256PublicKey::from_components(&n, &e).map_err(bad)?)
                    }
                    Algorithm::RS384 => {
                        Verifier::RS384(RS384PublicKey::from_components(&n, &e).map_err(bad)?)
                    }
                    Algorithm::RS512 => {
                        Verifier::RS512(RS512PublicKey::from_components(&n, &e).map_err(bad)?)
                    }
                    Algorithm::PS256 => {
                        Verifier::PS256(PS256PublicKey::from_components(&n, &e).map_err(bad)?)
                    }
                    Algorithm::PS384 => {
                        Verifier::PS384(PS384PublicKey::from_components(&n, &e).map_err(bad)?)
                    }
                    Algorithm::PS512 => {
                        Verifier::PS512(PS512PublicKey::from_components(&n, &e).map_err(bad)?)
                    }
                    _ => return Err("alg does not match kty"),
                });
            }
        }
        KeyFamily::P256 | KeyFamily::P384 => {
            let x = b64_member(jwk, "x")?;
            let y = b64_member(jwk, "y")?;
            let len = if family == KeyFamily::P256 { 32 } else { 48 };
            if x.len() != len || y.len() != len {
                return Err("EC coordinate has the wrong length");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let off_curve = |_| "EC point is not on the curve";
            if family == KeyFamily::P256 {
                let key = ES256PublicKey::from_bytes(&point).map_err(off_curve)?;
                host_der = key.to_der().ok();
                verifiers.push(Verifier::ES256(key));
            } else {
                let key = ES384PublicKey::from_bytes(&point).map_err(off_curve)?;
                host_der = key.to_der().ok();
                verifiers.push(Verifier::ES384(key));
            }
        }
        KeyFamily::Ed25519 => {
            let x = b64_member(jwk, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key has the wrong length");
            }
            verifiers.push(Verifier::EdDSA(
                Ed25519PublicKey::from_bytes(&x).map_err(|_| "invalid Ed25519 key")?,
            ));
        }
    }
    Ok(Key {
        kid: None,
        algorithms,
        verifiers,
        host_der,
    })
}

fn bit_length(n: &[u8]) -> usize {
    let mut bytes = n.iter().skip_while(|b| **b == 0);
    match bytes.next() {
        Some(first) => (8 - first.leading_zeros() as usize) + 8 * bytes.count(),
        None => 0,
    }
}

#[cfg(test)]
mod tests;
