//! Plugin configuration: raw serde types (camelCase, unknown fields refused) converted once into a
//! validated [`Config`]. Once a `Config` exists it is valid; every error names the field path, e.g.
//! `providers[0].clockSkewSeconds: must be at most 600`.
//!
//! | part | what it holds |
//! |---|---|
//! | this file | [`Config`], [`ConfigError`], the top-level members and the order they are checked in |
//! | `wire` | JSON text or protobuf `Struct` → one JSON value: duplicate members, string bounds |
//! | `explain` | serde's messages in plain words, "did you mean" hints (Istio names, case, `_`) |
//! | `provider` | `providers[]` → [`Provider`]s and their shared [`TokenSource`]s |
//! | `dpop` | a provider's `dpop` object → [`crate::dpop::Config`] (RFC 9449) |
//! | `headers` | header names, and the headers meshguard sets upstream checked together |
//! | `routes` | `routes[]` → [`Policy`] |
//! | `ratelimits` | `rateLimits` → [`RateLimits`] |
//! | `validate` | field validators shared by the parts (URIs, durations, claim paths, SPIFFE patterns) |
//!
//! The validated provider types belong to the verifier ([`crate::jwt::provider`]) and are
//! re-exported here: configuration depends on `jwt`, never the other way round.

mod dpop;
mod explain;
mod headers;
mod provider;
mod ratelimits;
mod routes;
mod validate;
mod wire;

use serde::Deserialize;
use thiserror::Error;

use crate::jwt::cache::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
use crate::policy::Policy;
use crate::ratelimit::RateLimits;

pub use crate::jwt::extract::TokenSource;
pub use crate::jwt::provider::{ClaimHeader, KeySource, Provider, RemoteJwks};
pub use headers::{PeerHeader, DEFAULT_PRINCIPAL_HEADER};
pub use provider::{
    DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_JWKS_MAX_BYTES, DEFAULT_JWKS_MAX_STALENESS_SECONDS,
    DEFAULT_JWKS_REFRESH_SECONDS, DEFAULT_JWKS_TIMEOUT_MS, DEFAULT_KID_MISS_REFETCH_SECONDS,
    DEFAULT_MAX_TOKEN_BYTES, MAX_CLOCK_SKEW_SECONDS, MAX_JWKS_REFRESH_SECONDS, MAX_JWKS_TIMEOUT_MS,
    MAX_MAX_TOKEN_BYTES, MAX_PROVIDERS, MIN_JWKS_REFRESH_SECONDS, MIN_MAX_TOKEN_BYTES,
};
pub use wire::{string_bound, MAX_REALM_BYTES, MAX_STRING_BYTES, MAX_URI_BYTES};

/// A configuration problem, with the path of the field that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub const DEFAULT_REALM: &str = "meshguard";
pub const DEFAULT_ROLES_CLAIM: &str = "roles";

// ---------------------------------------------------------------------------------------------
// Raw, as written by the user.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    providers: Vec<provider::RawProvider>,
    #[serde(default)]
    principal_header: Option<String>,
    #[serde(default)]
    output_peer_to_headers: Vec<headers::RawPeerHeader>,
    #[serde(default)]
    routes: Option<Vec<routes::RawRoute>>,
    #[serde(default)]
    default_action: Option<routes::RawAction>,
    #[serde(default)]
    default_deny_status: Option<u16>,
    #[serde(default)]
    mode: Option<routes::RawMode>,
    #[serde(default)]
    roles_claim: Option<String>,
    #[serde(default)]
    case_sensitive_paths: bool,
    #[serde(default)]
    rate_limits: Option<ratelimits::RawRateLimits>,
    #[serde(default)]
    log_level: Option<LogLevel>,
    #[serde(default)]
    token_cache: Option<RawTokenCache>,
    #[serde(default)]
    host_crypto: Option<bool>,
    #[serde(default)]
    filter_state: Option<FilterState>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTokenCache {
    #[serde(default)]
    max_entries: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// meshguard's own log threshold (Envoy's `wasm` log level filters on top).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum LogLevel {
    Error,
    Warn,
    /// Denials and dry-run would-denies (one JSON line each), JWKS fetches.
    #[default]
    Info,
    /// Also every allowed request.
    Debug,
}

/// Which requests get meshguard's facts in Envoy's filter state (`wasm.meshguard.*`, for access
/// logs and later filters). Each fact set is one host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum FilterState {
    /// Every request: allowed ones too (decision, route, principal, client id, rate limit).
    /// About 8 % of warm-path throughput (five host calls per allowed request).
    All,
    /// Denials and dry-run would-denies only: allowed requests pay no host call for it.
    #[default]
    Denials,
    /// None.
    Off,
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// The whole validated plugin configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    pub providers: Vec<Provider>,
    /// Each provider's DPoP (RFC 9449) settings, at its index in `providers`; `None`: DPoP is
    /// off for it. Kept beside the providers because `dpop` depends on `jwt`.
    pub dpop: Vec<Option<crate::dpop::Config>>,
    /// The token source `Authorization: DPoP …`, when a provider has DPoP on: a credential
    /// found there was presented with the DPoP scheme.
    pub dpop_source: Option<usize>,
    pub principal_header: String,
    pub peer_headers: Vec<PeerHeader>,
    /// Every header meshguard may set upstream; client-sent copies are removed on every request.
    pub owned_headers: Vec<String>,
    /// Every place a credential may be found, over all providers, without repeats.
    pub token_sources: Vec<TokenSource>,
    /// Largest `maxTokenBytes` of any provider: a cheap bound applied before any parsing.
    pub max_token_bytes: usize,
    /// Routes and what they require.
    pub policy: Policy,
    /// Rate-limit policies, when configured.
    pub rate_limits: Option<RateLimits>,
    pub log_level: LogLevel,
    /// Verified-token cache per worker: most entries (0 = off) and bytes.
    pub token_cache_entries: usize,
    pub token_cache_bytes: usize,
    /// Verify RS*/ES* through the host's BoringSSL when it offers `verify_signature`.
    pub host_crypto: bool,
    /// Which requests get their facts in Envoy's filter state.
    pub filter_state: FilterState,
}

impl Config {
    /// The DPoP settings of the provider at index `provider`, or `None` when DPoP is off for it.
    pub fn dpop(&self, provider: usize) -> Option<&crate::dpop::Config> {
        self.dpop.get(provider).and_then(Option::as_ref)
    }

    /// Per provider: its inline key set, or `None` for a remote JWKS.
    pub fn inline_keys(&self) -> Vec<Option<crate::jwt::jwks::KeySet>> {
        self.providers
            .iter()
            .map(|p| match &p.keys {
                KeySource::Inline(set) => Some(set.clone()),
                KeySource::Remote(_) => None,
            })
            .collect()
    }

    /// Parses the plugin configuration exactly as Envoy hands it over: JSON text (from a
    /// `google.protobuf.StringValue`, which is also what Istio sends for a WasmPlugin's
    /// `pluginConfig`) or a serialized `google.protobuf.Struct` (Envoy passes any other `Any`
    /// as its protobuf bytes).
    pub fn from_plugin_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::try_from(wire::raw::<RawConfig>(wire::plugin_value(bytes)?)?)
    }

    /// Parses and validates a plugin configuration given as JSON bytes. A member given twice in
    /// any object is refused, naming its path (`providers[0].issuer: duplicate field`).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::try_from(wire::raw::<RawConfig>(wire::json_value(bytes)?)?)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let RawConfig {
            realm,
            providers,
            principal_header,
            output_peer_to_headers,
            routes,
            default_action,
            default_deny_status,
            mode,
            roles_claim,
            case_sensitive_paths,
            rate_limits,
            log_level,
            token_cache,
            host_crypto,
            filter_state,
        } = raw;
        let realm = realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
        if realm.is_empty()
            || realm.len() > MAX_REALM_BYTES
            || !validate::is_quoted_string_safe(&realm)
        {
            return Err(ConfigError::new(
                "realm",
                format!(
                    "must be 1-{MAX_REALM_BYTES} bytes of printable ASCII without '\"' or '\\'"
                ),
            ));
        }
        let provider::Providers {
            providers,
            token_sources,
            dpop,
        } = provider::providers(providers)?;
        let headers::Outputs {
            principal_header,
            peer_headers,
            owned_headers,
        } = headers::outputs(
            principal_header,
            output_peer_to_headers,
            &providers,
            &token_sources,
        )?;

        let max_token_bytes = providers
            .iter()
            .map(|p| p.max_token_bytes)
            .max()
            .unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
        let (token_cache_entries, token_cache_bytes) = token_cache_bounds(token_cache.as_ref())?;
        let roles_claim = roles_claim.unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_string());
        let roles_claim = validate::claim_path("rolesClaim", &roles_claim)?;
        let rate_limits = rate_limits
            .map(|r| ratelimits::rate_limits(r, roles_claim.clone()))
            .transpose()?;
        let policy = routes::policy(
            routes::RawPolicy {
                routes,
                default_action,
                default_deny_status,
                mode,
                roles_claim,
                case_sensitive_paths,
            },
            &providers,
            rate_limits.as_ref(),
        )?;
        let dpop_source = token_sources.iter().position(|s| {
            matches!(s, TokenSource::Header { name, prefix }
                if name == "authorization" && prefix == provider::DPOP_SCHEME)
        });
        let dpop_source = dpop_source.filter(|_| dpop.iter().any(Option::is_some));
        Ok(Config {
            realm,
            providers,
            dpop,
            dpop_source,
            principal_header,
            peer_headers,
            owned_headers,
            token_sources,
            max_token_bytes,
            policy,
            rate_limits,
            log_level: log_level.unwrap_or_default(),
            token_cache_entries,
            token_cache_bytes,
            host_crypto: host_crypto.unwrap_or(true),
            filter_state: filter_state.unwrap_or_default(),
        })
    }
}

/// `tokenCache`: most entries (0 = off) and bytes per worker.
fn token_cache_bounds(raw: Option<&RawTokenCache>) -> Result<(usize, usize), ConfigError> {
    let (entries, bytes) = match raw {
        None => (DEFAULT_MAX_ENTRIES as u64, DEFAULT_MAX_BYTES as u64),
        Some(c) => (
            validate::within(
                "tokenCache.maxEntries",
                c.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES as u64),
                0,
                100_000,
            )?,
            validate::within(
                "tokenCache.maxBytes",
                c.max_bytes.unwrap_or(DEFAULT_MAX_BYTES as u64),
                4096,
                64 << 20,
            )?,
        ),
    };
    Ok((
        usize::try_from(entries).unwrap_or(0),
        usize::try_from(bytes).unwrap_or(0),
    ))
}

#[cfg(test)]
mod readme_tables;
#[cfg(test)]
mod tests;
