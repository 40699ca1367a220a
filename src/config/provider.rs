//! Raw provider configuration → validated [`Provider`]s, and the token sources they share (each
//! place a credential may be found is listed once, over all providers).

use std::collections::BTreeSet;

use serde::Deserialize;

use super::headers::header_name;
use super::validate::{self, claim_path, is_short_name, split_uri, within};
use super::ConfigError;
use crate::jwt::extract::TokenSource;
use crate::jwt::jwks::{JwksError, KeySet, MAX_JWKS_BYTES};
use crate::jwt::provider::{ClaimHeader, KeySource, Provider, RemoteJwks};
use crate::jwt::Algorithm;

pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 600;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const MIN_MAX_TOKEN_BYTES: usize = 256;
pub const MAX_MAX_TOKEN_BYTES: usize = 64 * 1024;
pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 300;
pub const MIN_JWKS_REFRESH_SECONDS: u64 = 1;
pub const MAX_JWKS_REFRESH_SECONDS: u64 = 86_400;
pub const DEFAULT_JWKS_TIMEOUT_MS: u64 = 5_000;
pub const MAX_JWKS_TIMEOUT_MS: u64 = 60_000;
pub const MAX_PROVIDERS: usize = 16;
pub const DEFAULT_JWKS_MAX_BYTES: u64 = 64 * 1024;
pub const DEFAULT_JWKS_MAX_STALENESS_SECONDS: u64 = 86_400;
pub const DEFAULT_KID_MISS_REFETCH_SECONDS: u64 = 30;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawProvider {
    #[serde(default)]
    name: Option<String>,
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    jwks: Option<RawJwks>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    jwks_cluster: Option<String>,
    #[serde(default)]
    jwks_timeout_ms: Option<u64>,
    #[serde(default)]
    jwks_refresh_seconds: Option<u64>,
    #[serde(default)]
    jwks_max_bytes: Option<u64>,
    #[serde(default)]
    jwks_max_staleness_seconds: Option<u64>,
    #[serde(default)]
    kid_miss_refetch_seconds: Option<u64>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    clock_skew_seconds: Option<u64>,
    #[serde(default)]
    max_lifetime_seconds: Option<u64>,
    #[serde(default)]
    max_token_bytes: Option<usize>,
    #[serde(default)]
    from_headers: Option<Vec<RawFromHeader>>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    output_claim_to_headers: Vec<RawClaimHeader>,
    #[serde(default)]
    forward_original_token: bool,
    #[serde(default)]
    require_certificate_binding: bool,
    #[serde(default)]
    dpop: Option<super::dpop::RawDpop>,
}

/// Istio gives `jwks` as a string holding the JSON document; a JSON object is accepted too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawJwks {
    Text(String),
    Object(serde_json::Map<String, serde_json::Value>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFromHeader {
    name: String,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClaimHeader {
    header: String,
    claim: String,
}

/// The providers, in order, the token sources they point into, and each provider's DPoP
/// settings (same index as its provider; `None`: off). The DPoP settings are kept beside the
/// providers rather than in them: `dpop` depends on `jwt`, so `jwt::Provider` cannot name them.
pub(super) fn providers(raw: Vec<RawProvider>) -> Result<Providers, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(
            "providers",
            "at least one provider is required",
        ));
    }
    if raw.len() > MAX_PROVIDERS {
        return Err(ConfigError::new(
            "providers",
            format!("at most {MAX_PROVIDERS} providers are supported"),
        ));
    }

    let mut token_sources: Vec<TokenSource> = Vec::new();
    let mut providers = Vec::with_capacity(raw.len());
    let mut dpop = Vec::with_capacity(raw.len());
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    for (i, rp) in raw.into_iter().enumerate() {
        let (p, d) = provider(i, rp, &mut token_sources)?;
        if !names.insert(p.name.clone()) {
            return Err(ConfigError::new(
                format!("providers[{i}].name"),
                format!("duplicate provider name \"{}\"", p.name),
            ));
        }
        if !issuers.insert(p.issuer.clone()) {
            return Err(ConfigError::new(
                format!("providers[{i}].issuer"),
                "duplicate issuer: each issuer may be configured once",
            ));
        }
        providers.push(p);
        dpop.push(d);
    }
    Ok(Providers {
        providers,
        token_sources,
        dpop,
    })
}

/// What [`providers`] builds.
pub(super) struct Providers {
    pub providers: Vec<Provider>,
    pub token_sources: Vec<TokenSource>,
    pub dpop: Vec<Option<crate::dpop::Config>>,
}

/// The `jwksUri`-only members, checked together once the key source is known.
struct RawRemote {
    cluster: Option<String>,
    timeout_ms: Option<u64>,
    refresh_seconds: Option<u64>,
    max_bytes: Option<u64>,
    max_staleness_seconds: Option<u64>,
    kid_miss_refetch_seconds: Option<u64>,
}

fn provider(
    i: usize,
    rp: RawProvider,
    token_sources: &mut Vec<TokenSource>,
) -> Result<(Provider, Option<crate::dpop::Config>), ConfigError> {
    let at = |field: &str| format!("providers[{i}].{field}");
    let RawProvider {
        name,
        issuer,
        audiences,
        jwks,
        jwks_uri,
        jwks_cluster,
        jwks_timeout_ms,
        jwks_refresh_seconds,
        jwks_max_bytes,
        jwks_max_staleness_seconds,
        kid_miss_refetch_seconds,
        algorithms,
        clock_skew_seconds,
        max_lifetime_seconds,
        max_token_bytes,
        from_headers,
        from_params,
        output_claim_to_headers,
        forward_original_token,
        require_certificate_binding,
        dpop,
    } = rp;

    let name = name.unwrap_or_else(|| format!("p{i}"));
    if !is_short_name(&name) {
        return Err(ConfigError::new(
            at("name"),
            "must be 1-32 characters of [a-z0-9_-]",
        ));
    }
    if issuer.is_empty() {
        return Err(ConfigError::new(at("issuer"), "must not be empty"));
    }
    for (j, a) in audiences.iter().enumerate() {
        if a.is_empty() {
            return Err(ConfigError::new(
                at(&format!("audiences[{j}]")),
                "must not be empty",
            ));
        }
    }
    let algorithms = allowed_algorithms(&at, algorithms)?;

    let clock_skew_seconds = clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    if clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(ConfigError::new(
            at("clockSkewSeconds"),
            format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
        ));
    }
    if let Some(l) = max_lifetime_seconds {
        if l == 0 || l > 31_536_000 {
            return Err(ConfigError::new(
                at("maxLifetimeSeconds"),
                "must be between 1 and 31536000 (one year)",
            ));
        }
    }
    let max_token_bytes = max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(MIN_MAX_TOKEN_BYTES..=MAX_MAX_TOKEN_BYTES).contains(&max_token_bytes) {
        return Err(ConfigError::new(
            at("maxTokenBytes"),
            format!("must be between {MIN_MAX_TOKEN_BYTES} and {MAX_MAX_TOKEN_BYTES}"),
        ));
    }

    let remote = RawRemote {
        cluster: jwks_cluster,
        timeout_ms: jwks_timeout_ms,
        refresh_seconds: jwks_refresh_seconds,
        max_bytes: jwks_max_bytes,
        max_staleness_seconds: jwks_max_staleness_seconds,
        kid_miss_refetch_seconds,
    };
    let keys = key_source(&at, jwks, jwks_uri, remote, &algorithms)?;
    let sources = sources(&at, from_headers, from_params, token_sources)?;
    let carried: Vec<&TokenSource> = sources
        .iter()
        .filter_map(|&k| token_sources.get(k))
        .collect();
    let dpop = super::dpop::dpop(&at, dpop, &carried)?;
    let mut sources = sources;
    if dpop.is_some() {
        // RFC 9449 §7.1: a DPoP-bound token comes as `Authorization: DPoP <token>`.
        let scheme = TokenSource::Header {
            name: "authorization".into(),
            prefix: DPOP_SCHEME.into(),
        };
        let k = intern(token_sources, scheme);
        if !sources.contains(&k) {
            sources.push(k);
        }
    }

    let mut claim_headers = Vec::new();
    for (j, c) in output_claim_to_headers.into_iter().enumerate() {
        let header = header_name(&at(&format!("outputClaimToHeaders[{j}].header")), &c.header)?;
        let claim = claim_path(&at(&format!("outputClaimToHeaders[{j}].claim")), &c.claim)?;
        claim_headers.push(ClaimHeader { header, claim });
    }

    let provider = Provider {
        name,
        issuer,
        audiences,
        keys,
        algorithms,
        clock_skew_seconds,
        max_lifetime_seconds,
        max_token_bytes,
        sources,
        claim_headers,
        forward_original_token,
        require_certificate_binding,
    };
    Ok((provider, dpop))
}

/// `algorithms`, or every supported algorithm when not given; repeats are dropped.
fn allowed_algorithms(
    at: &impl Fn(&str) -> String,
    algorithms: Option<Vec<String>>,
) -> Result<Vec<Algorithm>, ConfigError> {
    match algorithms {
        None => Ok(Algorithm::ALL.to_vec()),
        Some(list) => validate::algorithms(&at("algorithms"), &list),
    }
}

/// Inline keys (`jwks`, parsed now) or a remote JWKS (`jwksUri` and its settings): exactly one.
fn key_source(
    at: &impl Fn(&str) -> String,
    jwks: Option<RawJwks>,
    jwks_uri: Option<String>,
    remote: RawRemote,
    algorithms: &[Algorithm],
) -> Result<KeySource, ConfigError> {
    let remote_only = |field: &str, present: bool| -> Result<(), ConfigError> {
        if present && jwks_uri.is_none() {
            return Err(ConfigError::new(
                at(field),
                "only allowed together with jwksUri",
            ));
        }
        Ok(())
    };
    remote_only("jwksCluster", remote.cluster.is_some())?;
    remote_only("jwksTimeoutMs", remote.timeout_ms.is_some())?;
    remote_only("jwksRefreshSeconds", remote.refresh_seconds.is_some())?;
    remote_only("jwksMaxBytes", remote.max_bytes.is_some())?;
    remote_only(
        "jwksMaxStalenessSeconds",
        remote.max_staleness_seconds.is_some(),
    )?;
    remote_only(
        "kidMissRefetchSeconds",
        remote.kid_miss_refetch_seconds.is_some(),
    )?;

    match (jwks, jwks_uri) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            at("jwks"),
            "set either jwks or jwksUri, not both",
        )),
        (None, None) => Err(ConfigError::new(
            at("jwksUri"),
            "one of jwks or jwksUri is required",
        )),
        (Some(jwks), None) => {
            let text = match jwks {
                RawJwks::Text(t) => t,
                RawJwks::Object(o) => serde_json::Value::Object(o).to_string(),
            };
            let set = KeySet::from_jwks(text.as_bytes(), algorithms).map_err(|e| match e {
                JwksError::Document(m) => ConfigError::new(at("jwks"), m),
            })?;
            if set.is_empty() {
                return Err(ConfigError::new(
                    at("jwks"),
                    format!("no usable key ({})", set.skipped_summary()),
                ));
            }
            Ok(KeySource::Inline(set))
        }
        (None, Some(uri)) => remote_jwks(at, uri, remote).map(KeySource::Remote),
    }
}

fn remote_jwks(
    at: &impl Fn(&str) -> String,
    uri: String,
    remote: RawRemote,
) -> Result<RemoteJwks, ConfigError> {
    let cluster = remote.cluster.ok_or_else(|| {
        ConfigError::new(
            at("jwksCluster"),
            "required with jwksUri: the Envoy cluster that reaches the JWKS host",
        )
    })?;
    if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            at("jwksCluster"),
            "must be a non-empty Envoy cluster name (printable ASCII, no spaces)",
        ));
    }
    let (authority, path) = split_uri(&uri).map_err(|m| ConfigError::new(at("jwksUri"), m))?;
    let timeout_ms = remote.timeout_ms.unwrap_or(DEFAULT_JWKS_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_JWKS_TIMEOUT_MS {
        return Err(ConfigError::new(
            at("jwksTimeoutMs"),
            format!("must be between 1 and {MAX_JWKS_TIMEOUT_MS}"),
        ));
    }
    let refresh_seconds = remote
        .refresh_seconds
        .unwrap_or(DEFAULT_JWKS_REFRESH_SECONDS);
    if !(MIN_JWKS_REFRESH_SECONDS..=MAX_JWKS_REFRESH_SECONDS).contains(&refresh_seconds) {
        return Err(ConfigError::new(
            at("jwksRefreshSeconds"),
            format!("must be between {MIN_JWKS_REFRESH_SECONDS} and {MAX_JWKS_REFRESH_SECONDS}"),
        ));
    }
    let max_bytes = within(
        &at("jwksMaxBytes"),
        remote.max_bytes.unwrap_or(DEFAULT_JWKS_MAX_BYTES),
        1024,
        MAX_JWKS_BYTES as u64,
    )?;
    let max_staleness_seconds = within(
        &at("jwksMaxStalenessSeconds"),
        remote
            .max_staleness_seconds
            .unwrap_or(DEFAULT_JWKS_MAX_STALENESS_SECONDS),
        refresh_seconds,
        30 * 86_400,
    )?;
    let kid_miss_refetch_seconds = within(
        &at("kidMissRefetchSeconds"),
        remote
            .kid_miss_refetch_seconds
            .unwrap_or(DEFAULT_KID_MISS_REFETCH_SECONDS),
        1,
        3_600,
    )?;
    Ok(RemoteJwks {
        uri,
        cluster,
        authority,
        path,
        timeout_ms,
        refresh_seconds,
        max_bytes: usize::try_from(max_bytes).unwrap_or(MAX_JWKS_BYTES),
        max_staleness_seconds,
        kid_miss_refetch_seconds,
    })
}

/// Where this provider's tokens are found (`Authorization: Bearer` by default), as indexes into
/// the shared `token_sources`.
fn sources(
    at: &impl Fn(&str) -> String,
    from_headers: Option<Vec<RawFromHeader>>,
    from_params: Vec<String>,
    token_sources: &mut Vec<TokenSource>,
) -> Result<Vec<usize>, ConfigError> {
    let raw_headers = from_headers.unwrap_or_else(|| {
        vec![RawFromHeader {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }]
    });
    let mut sources = Vec::new();
    for (j, h) in raw_headers.into_iter().enumerate() {
        let name = header_name(&at(&format!("fromHeaders[{j}].name")), &h.name)?;
        let prefix = h.prefix.unwrap_or_default();
        if !prefix.is_ascii() {
            return Err(ConfigError::new(
                at(&format!("fromHeaders[{j}].prefix")),
                "must be ASCII",
            ));
        }
        sources.push(intern(token_sources, TokenSource::Header { name, prefix }));
    }
    for (j, p) in from_params.into_iter().enumerate() {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'&' && b != b'=')
        {
            return Err(ConfigError::new(
                at(&format!("fromParams[{j}]")),
                "must be a non-empty query parameter name",
            ));
        }
        sources.push(intern(token_sources, TokenSource::Param { name: p }));
    }
    if sources.is_empty() {
        return Err(ConfigError::new(
            at("fromHeaders"),
            "no token source: list a header or param",
        ));
    }
    Ok(sources)
}

/// The `Authorization` scheme of DPoP-bound tokens (RFC 9449 §7.1), a token source of every
/// provider with DPoP on.
pub const DPOP_SCHEME: &str = "DPoP ";

fn intern(list: &mut Vec<TokenSource>, src: TokenSource) -> usize {
    if let Some(i) = list.iter().position(|s| *s == src) {
        return i;
    }
    list.push(src);
    list.len() - 1
}
