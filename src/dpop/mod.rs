//! DPoP (RFC 9449): sender-constrained access tokens, checked at the sidecar. The building
//! blocks, plain Rust with `now` passed in like the rest of the core; the pipeline uses them in
//! `engine::dpop` (after the token is verified: scheme and binding, proof, `cnf.jkt`, nonce; the
//! `jti` recorded in the replay cache when the plan is settled).
//!
//! | file | what it holds |
//! |---|---|
//! | [`proof`] | a `DPoP` header checked against the request: JWS, `typ`, `alg`, public `jwk`, signature, `jti`/`htm`/`htu`/`iat`/`ath`/`nonce` |
//! | [`thumbprint`] | RFC 7638 SHA-256 JWK thumbprints (`jkt`, compared with the token's `cnf.jkt`) |
//! | [`htu`] | the URI the client signed: §4.3 normalisation, the public origin(s) a sidecar must be told |
//! | [`replay`] | a bounded `jti` replay cache shared by all workers of one proxy (CAS over shared data) |
//! | [`nonce`] | stateless `DPoP-Nonce` values: a MAC over a time step with the proxy's secret |
//!
//! [`Config`] is a provider's validated `dpop` object, built by [`crate::config`]; its fields
//! are named after the configuration keys, and its defaults are the ones the README documents.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::jwt::Algorithm;

pub mod htu;
pub mod nonce;
pub mod proof;
pub mod replay;
pub mod thumbprint;

/// How a provider treats DPoP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Today's behaviour: `Authorization: DPoP …` is not a credential; a `cnf.jkt`-bound token
    /// is refused.
    #[default]
    Off,
    /// Bearer tokens and DPoP-bound tokens are both accepted, each under its own rules (a
    /// `cnf.jkt`-bound token only with the DPoP scheme and a valid proof).
    Allowed,
    /// Only DPoP-bound tokens with a valid proof.
    Required,
}

/// A provider's DPoP settings, valid by construction once built by the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Whether DPoP-bound tokens are accepted. Default: [`Mode::Off`].
    pub mode: Mode,
    /// Proof algorithms accepted, in the order the `algs` challenge parameter lists them.
    /// Asymmetric only: [`Algorithm`] has no `none` or `HS*`. The proof key's type must permit
    /// the proof's `alg`. Default: `ES256`, `RS256` (both verified by the host's BoringSSL).
    pub algorithms: Vec<Algorithm>,
    /// Seconds after its `iat` that a proof is still accepted (plus `clock_skew_seconds`). It also bounds
    /// how long a `jti` is kept by the replay cache. Default: 60.
    pub proof_max_age_seconds: u64,
    /// Seconds of clock difference with the client tolerated either way: an `iat` up to this far
    /// in the future is accepted, and a proof up to `proof_max_age_seconds + clock_skew_seconds` old. Default: 5.
    pub clock_skew_seconds: u64,
    /// The origins (`scheme://host[:port]`) clients use to reach this service, for `htu`. Empty:
    /// the request's own scheme and `:authority` (right only when clients reach the sidecar
    /// directly). Default: empty.
    pub public_origins: Vec<htu::Origin>,
    /// Also accept the origin named by `X-Forwarded-Proto` / `X-Forwarded-Host` (their first
    /// element). Only safe when the edge proxy overwrites those headers. Default: false.
    pub trust_forwarded_headers: bool,
    /// Require a `nonce` claim issued by meshguard ([`nonce`]). Default: false.
    pub require_nonce: bool,
    /// Seconds per nonce time step: a nonce is accepted during its step and the next one
    /// (between `nonce_step_seconds` and twice that). Default: 60.
    pub nonce_step_seconds: u64,
    /// Shards of the replay cache (one shared-data key each, created at configure time).
    /// Default: 256.
    pub replay_shards: u32,
    /// `jti`s one shard holds (12 bytes each). The cache holds `replay_shards ×
    /// replay_shard_entries` live proofs; a full shard refuses proofs. Default: 64.
    pub replay_shard_entries: u16,
    /// Largest `DPoP` header value, in bytes. Default: 4096 (an RSA-4096 proof is about 2.2 KB).
    pub max_proof_bytes: usize,
    /// Forward the `DPoP` header upstream (it is removed otherwise). Default: false.
    pub forward_proof: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: Mode::Off,
            algorithms: vec![Algorithm::ES256, Algorithm::RS256],
            proof_max_age_seconds: 60,
            clock_skew_seconds: 5,
            public_origins: Vec::new(),
            trust_forwarded_headers: false,
            require_nonce: false,
            nonce_step_seconds: 60,
            replay_shards: 256,
            replay_shard_entries: 64,
            max_proof_bytes: 4096,
            forward_proof: false,
        }
    }
}

/// base64url (no padding) of SHA-256 of `bytes`.
pub fn sha256_b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(hmac_sha256::Hash::hash(bytes))
}

/// The `ath` claim a proof must carry with `access_token`: base64url(SHA-256(ASCII token)),
/// RFC 9449 §4.2.
pub fn ath(access_token: &str) -> String {
    sha256_b64(access_token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ath_matches_rfc_9449_section_7_1() {
        // The access token and the `ath` of the example request in RFC 9449 §7.1 (also
        // checked with Python's hashlib).
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn sha256_of_abc_is_the_fips_180_vector() {
        // FIPS 180-2 Appendix B.1: SHA-256("abc") = ba7816bf…15ad, here in base64url.
        assert_eq!(
            sha256_b64(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
