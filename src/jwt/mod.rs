//! JSON Web Tokens: where a credential is found ([`extract`]), how a compact JWS is parsed
//! ([`jws`]), how a JWKS becomes verification keys ([`jwks`]) and how a token is verified
//! against a provider ([`provider`]: built by the configuration) with an explicit `now`
//! ([`verify`]).

pub mod cache;
pub mod crypto;
pub mod extract;
pub mod json;
pub mod jwks;
pub mod jws;
pub mod principal;
pub mod provider;
pub mod verify;

/// Signature algorithms meshguard verifies. Symmetric (`HS*`) and `none` are never accepted:
/// the keys come from a public JWKS, and the key's type decides the algorithm family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The key type an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn family(self) -> KeyFamily {
        match self {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::P256,
            Algorithm::ES384 => KeyFamily::P384,
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }
}

/// Why a token was refused. Each variant's answer (fixed client-facing description, log and
/// metric code) is its row in the decision table ([`crate::decision::Reason::row`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    TooLarge,
    UnsupportedAlgorithm,
    AlgorithmNotAllowed,
    UnknownIssuer,
    KeysUnavailable,
    UnknownKey,
    AmbiguousKey,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    MissingExpiration,
    LifetimeTooLong,
    Audience,
    /// RFC 8705: `cnf."x5t#S256"` differs from the client certificate, or there is none.
    BindingMismatch,
    /// The provider requires certificate-bound tokens and this one has no `cnf."x5t#S256"`.
    BindingRequired,
    /// `cnf` binds the token in a way meshguard cannot check here (`jwk`, …, or DPoP `jkt` for
    /// a provider without DPoP).
    UnsupportedBinding,
    /// RFC 9449 §7.1: a DPoP-bound token (`cnf.jkt`) presented with the Bearer scheme.
    DpopBoundAsBearer,
    /// A token without `cnf.jkt` presented with the DPoP scheme.
    NotDpopBound,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    DpopKeyMismatch,
    /// The provider accepts only DPoP-bound tokens (`dpop.mode: required`).
    DpopRequired,
}
