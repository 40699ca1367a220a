//! What a provider is once configured: the issuer it trusts, where its keys come from, where its
//! tokens are found and which claims it copies upstream. Built by [`crate::config`], read by
//! [`super::verify`] and the engine.

use super::jwks::KeySet;
use super::Algorithm;

#[derive(Debug, Clone)]
pub struct Provider {
    /// Short name used in metrics and shared-data keys (`[a-z0-9_-]`, at most 32 characters).
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew_seconds: u64,
    pub max_lifetime_seconds: Option<u64>,
    pub max_token_bytes: usize,
    /// Indexes into [`crate::config::Config::token_sources`] where this provider's tokens may be found.
    pub sources: Vec<usize>,
    pub claim_headers: Vec<ClaimHeader>,
    pub forward_original_token: bool,
    /// RFC 8705: tokens must carry `cnf.x5t#S256`.
    pub require_certificate_binding: bool,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    /// Keys given in the configuration, parsed once.
    Inline(KeySet),
    /// Keys fetched through an Envoy cluster and shared by all workers.
    Remote(RemoteJwks),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub uri: String,
    pub cluster: String,
    /// `:authority` of the fetch (from the URI).
    pub authority: String,
    /// `:path` of the fetch (from the URI, query included).
    pub path: String,
    pub timeout_ms: u64,
    pub refresh_seconds: u64,
    /// Largest JWKS document accepted from the endpoint.
    pub max_bytes: usize,
    /// Keys older than this (since their last successful fetch) are dropped: tokens fail closed.
    pub max_staleness_seconds: u64,
    /// At most one refetch per this interval when a token names an unknown `kid`.
    pub kid_miss_refetch_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: String,
    /// Claim path, split on dots (`realm_access.roles` → `["realm_access", "roles"]`).
    pub claim: Vec<String>,
}
