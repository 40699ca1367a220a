//! Plugin configuration: raw serde types (camelCase, unknown fields refused) converted once into a
//! validated [`Config`]. Once a `Config` exists it is valid; every error names the field path, e.g.
//! `providers[0].clockSkewSeconds: must be at most 600`.

use std::collections::BTreeSet;

use serde::Deserialize;
use thiserror::Error;

mod ratelimits;
mod routes;

use crate::identity::PeerField;
use crate::jwt::cache::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
use crate::jwt::json::Strict;
use crate::jwt::jwks::{JwksError, KeySet, MAX_JWKS_BYTES};
use crate::jwt::Algorithm;
use crate::policy::Policy;
use crate::ratelimit::RateLimits;

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
pub const DEFAULT_PRINCIPAL_HEADER: &str = "x-meshguard-principal";
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
pub const DEFAULT_ROLES_CLAIM: &str = "roles";

/// Longest `realm`: it is echoed in every `WWW-Authenticate` challenge.
pub const MAX_REALM_BYTES: usize = 256;
/// Longest `jwksUri`.
pub const MAX_URI_BYTES: usize = 2048;
/// Longest string of any field not listed in [`string_bound`], and of any object key.
pub const MAX_STRING_BYTES: usize = 256;

/// The most bytes a string in the member `field` may hold (the configuration reference lists
/// them). Checked over the whole configuration before anything else, so no field, present or
/// future, takes an unbounded string and no error message echoes one. Inline `jwks` documents
/// are bounded by their own size limit instead.
pub fn string_bound(field: &str) -> usize {
    match field {
        "realm" => MAX_REALM_BYTES,
        "jwksUri" | "principals" => MAX_URI_BYTES,
        "issuer" | "issuers" | "audiences" | "paths" | "pathPrefixes" | "values" => 1024,
        "hosts" => 255,
        "namespaces" => 253,
        "prefix" => 64,
        "methods" => 32,
        _ => MAX_STRING_BYTES,
    }
}

/// Applies [`string_bound`] to every string and [`MAX_STRING_BYTES`] to every object key.
fn check_string_bounds(value: &serde_json::Value) -> Result<(), ConfigError> {
    use serde_json::Value;
    fn walk(v: &Value, path: &str, field: &str, in_provider: bool) -> Result<(), ConfigError> {
        match v {
            Value::String(s) => {
                let max = string_bound(field);
                if s.len() > max {
                    return Err(ConfigError::new(
                        path,
                        format!("must be at most {max} bytes"),
                    ));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{path}[{i}]");
                    walk(item, &here, field, path == "providers")?;
                }
            }
            Value::Object(members) => {
                for (k, item) in members {
                    let here = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if k.len() > MAX_STRING_BYTES {
                        return Err(ConfigError::new(
                            path,
                            format!("a key longer than {MAX_STRING_BYTES} bytes"),
                        ));
                    }
                    if in_provider && k == "jwks" {
                        continue; // bounded by MAX_JWKS_BYTES when parsed
                    }
                    walk(item, &here, k, false)?;
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }
    walk(value, "", "", false)
}

// ---------------------------------------------------------------------------------------------
// Raw, as written by the user.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    principal_header: Option<String>,
    #[serde(default)]
    output_peer_to_headers: Vec<RawPeerHeader>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProvider {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeerHeader {
    header: String,
    field: String,
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// The whole validated plugin configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    pub providers: Vec<Provider>,
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
}

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
    /// Indexes into [`Config::token_sources`] where this provider's tokens may be found.
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
pub enum TokenSource {
    /// A request header (lower-case name) whose value starts with `prefix` (compared
    /// case-insensitively); the rest of the value is the token.
    Header { name: String, prefix: String },
    /// A query parameter.
    Param { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: String,
    /// Claim path, split on dots (`realm_access.roles` → `["realm_access", "roles"]`).
    pub claim: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHeader {
    pub header: String,
    pub field: PeerField,
}

impl Config {
    /// Per provider: its inline key set, or `None` for a remote JWKS.
    pub fn inline_keys(&self) -> Vec<Option<KeySet>> {
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
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_none_or(|b| *b == b'{' || *b == b'[' || *b == b'"') {
            return Config::from_json(bytes);
        }
        Config::from_value(protobuf_struct_to_json(bytes)?)
    }

    /// Parses and validates a plugin configuration given as JSON bytes. A member given twice in
    /// any object is refused, naming its path (`providers[0].issuer: duplicate field`).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize::<_, Strict>(&mut de)
            .map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." {
                    "config".to_string()
                } else {
                    path
                };
                ConfigError::new(path, strip_position(&e.inner().to_string()))
            })?
            .0;
        de.end()
            .map_err(|e| ConfigError::new("config", strip_position(&e.to_string())))?;
        Config::from_value(value)
    }

    fn from_value(value: serde_json::Value) -> Result<Config, ConfigError> {
        if !value.is_object() {
            return Err(ConfigError::new("config", "must be a JSON object"));
        }
        check_string_bounds(&value)?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            ConfigError::new(e.path().to_string(), strip_position(&e.inner().to_string()))
        })?;
        Config::try_from(raw)
    }
}

/// Decodes a serialized `google.protobuf.Struct` into the JSON value it stands for. Integral
/// numbers become JSON integers (a Struct only has doubles) so that counts and sizes parse. A key
/// given twice in one Struct is refused like a duplicate JSON member (protobuf's map decoding
/// would keep the last), so the wire is walked here rather than through `prost_types::Struct`.
fn protobuf_struct_to_json(bytes: &[u8]) -> Result<serde_json::Value, ConfigError> {
    pb::object(bytes, "", 0)
}

/// The wire format of `google.protobuf.{Struct, Value, ListValue}` (struct.proto).
mod pb {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    use serde_json::{Map, Value};

    use super::ConfigError;
    use crate::jwt::json::DUPLICATE;

    /// Deeper nesting is refused (prost's own limit is 100).
    const MAX_DEPTH: usize = 64;

    fn bad() -> ConfigError {
        ConfigError::new("config", "neither JSON nor a google.protobuf.Struct")
    }

    fn key(buf: &mut &[u8]) -> Result<(u32, WireType), ConfigError> {
        decode_key(buf).map_err(|_| bad())
    }

    /// The bytes of a length-delimited field.
    fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ConfigError> {
        let len = usize::try_from(decode_varint(buf).map_err(|_| bad())?).map_err(|_| bad())?;
        let body = buf.get(..len).ok_or_else(bad)?;
        *buf = buf.get(len..).ok_or_else(bad)?;
        Ok(body)
    }

    fn skip(wire: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), ConfigError> {
        skip_field(wire, tag, buf, DecodeContext::default()).map_err(|_| bad())
    }

    /// `Struct { map<string, Value> fields = 1; }`: a map is a repeated entry `{key = 1; value = 2}`.
    pub(super) fn object(mut buf: &[u8], path: &str, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(path, "nested too deeply"));
        }
        let mut out = Map::new();
        while !buf.is_empty() {
            let (tag, wire) = key(&mut buf)?;
            if tag != 1 || wire != WireType::LengthDelimited {
                skip(wire, tag, &mut buf)?;
                continue;
            }
            let mut entry = delimited(&mut buf)?;
            let (mut name, mut value) = (String::new(), None);
            while !entry.is_empty() {
                match key(&mut entry)? {
                    (1, WireType::LengthDelimited) => {
                        name = String::from_utf8(delimited(&mut entry)?.to_vec())
                            .map_err(|_| bad())?;
                    }
                    (2, WireType::LengthDelimited) => value = Some(delimited(&mut entry)?),
                    (tag, wire) => skip(wire, tag, &mut entry)?,
                }
            }
            let here = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if out.contains_key(&name) {
                return Err(ConfigError::new(here, DUPLICATE));
            }
            let v = match value {
                Some(v) => self::value(v, &here, depth + 1)?,
                None => Value::Null,
            };
            out.insert(name, v);
        }
        Ok(Value::Object(out))
    }

    /// `Value { oneof kind { null_value = 1; number_value = 2; string_value = 3; bool_value = 4;
    /// struct_value = 5; list_value = 6; } }`: the last kind on the wire wins, as in protobuf.
    fn value(mut buf: &[u8], path: &str, depth: usize) -> Result<Value, ConfigError> {
        let mut out = Value::Null;
        while !buf.is_empty() {
            out = match key(&mut buf)? {
                (1, WireType::Varint) => {
                    decode_varint(&mut buf).map_err(|_| bad())?;
                    Value::Null
                }
                (2, WireType::SixtyFourBit) => {
                    let bytes: [u8; 8] = buf
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(bad)?;
                    buf = buf.get(8..).ok_or_else(bad)?;
                    number(f64::from_le_bytes(bytes))
                }
                (3, WireType::LengthDelimited) => Value::String(
                    String::from_utf8(delimited(&mut buf)?.to_vec()).map_err(|_| bad())?,
                ),
                (4, WireType::Varint) => {
                    Value::Bool(decode_varint(&mut buf).map_err(|_| bad())? != 0)
                }
                (5, WireType::LengthDelimited) => object(delimited(&mut buf)?, path, depth)?,
                (6, WireType::LengthDelimited) => list(delimited(&mut buf)?, path, depth)?,
                (tag, wire) => {
                    skip(wire, tag, &mut buf)?;
                    continue;
                }
            };
        }
        Ok(out)
    }

    /// `ListValue { repeated Value values = 1; }`.
    fn list(mut buf: &[u8], path: &str, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(path, "nested too deeply"));
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            match key(&mut buf)? {
                (1, WireType::LengthDelimited) => {
                    let here = format!("{path}[{}]", out.len());
                    out.push(value(delimited(&mut buf)?, &here, depth + 1)?);
                }
                (tag, wire) => skip(wire, tag, &mut buf)?,
            }
        }
        Ok(Value::Array(out))
    }

    fn number(n: f64) -> Value {
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            (n as i64).into()
        } else {
            serde_json::Number::from_f64(n).map_or(Value::Null, Into::into)
        }
    }
}

/// serde_json appends " at line L column C"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let realm = raw.realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
        if realm.is_empty() || realm.len() > MAX_REALM_BYTES || !is_quoted_string_safe(&realm) {
            return Err(ConfigError::new(
                "realm",
                format!(
                    "must be 1-{MAX_REALM_BYTES} bytes of printable ASCII without '\"' or '\\'"
                ),
            ));
        }
        if raw.providers.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "at least one provider is required",
            ));
        }
        if raw.providers.len() > MAX_PROVIDERS {
            return Err(ConfigError::new(
                "providers",
                format!("at most {MAX_PROVIDERS} providers are supported"),
            ));
        }

        let mut token_sources: Vec<TokenSource> = Vec::new();
        let mut providers = Vec::with_capacity(raw.providers.len());
        let mut names = BTreeSet::new();
        let mut issuers = BTreeSet::new();
        for (i, rp) in raw.providers.into_iter().enumerate() {
            let p = provider(i, rp, &mut token_sources)?;
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
        }

        let principal_header = raw
            .principal_header
            .unwrap_or_else(|| DEFAULT_PRINCIPAL_HEADER.to_string());
        let principal_header = header_name("principalHeader", &principal_header)?;

        let mut peer_headers = Vec::new();
        for (i, ph) in raw.output_peer_to_headers.into_iter().enumerate() {
            let header = header_name(&format!("outputPeerToHeaders[{i}].header"), &ph.header)?;
            let field = PeerField::parse(&ph.field).ok_or_else(|| {
                ConfigError::new(
                    format!("outputPeerToHeaders[{i}].field"),
                    format!(
                        "unknown peer field \"{}\", expected one of: {}",
                        ph.field,
                        PeerField::NAMES.join(", ")
                    ),
                )
            })?;
            peer_headers.push(PeerHeader { header, field });
        }

        // Every header we set, with the field that names it, to refuse the same header twice.
        let mut owned: Vec<(String, String)> =
            vec![("principalHeader".to_string(), principal_header.clone())];
        for (i, h) in peer_headers.iter().enumerate() {
            owned.push((format!("outputPeerToHeaders[{i}].header"), h.header.clone()));
        }
        for (i, p) in providers.iter().enumerate() {
            for (j, h) in p.claim_headers.iter().enumerate() {
                // The same header from two providers is fine: one token, one provider.
                let dup_in_provider = p.claim_headers.iter().take(j).any(|c| c.header == h.header);
                let path = format!("providers[{i}].outputClaimToHeaders[{j}].header");
                if dup_in_provider {
                    return Err(ConfigError::new(path, "header set twice by this provider"));
                }
                owned.push((path, h.header.clone()));
            }
        }
        for (k, (path, h)) in owned.iter().enumerate() {
            let clash = owned.iter().take(k).any(|(p, o)| {
                o == h && !(p.starts_with("providers[") && path.starts_with("providers["))
            });
            if clash {
                return Err(ConfigError::new(
                    path.clone(),
                    format!("header \"{h}\" is already set by another output"),
                ));
            }
            let is_source = token_sources
                .iter()
                .any(|s| matches!(s, TokenSource::Header { name, .. } if name == h));
            if is_source {
                return Err(ConfigError::new(
                    path.clone(),
                    format!("header \"{h}\" is also a token source"),
                ));
            }
        }
        // Envoy passes `x_meshguard_principal` by default, and CGI-style upstreams read it as
        // `x-meshguard-principal`: client copies under the underscore spelling go too.
        let mut owned_headers: Vec<String> = Vec::new();
        for (_, h) in owned {
            for name in [h.clone(), h.replace('-', "_")] {
                if !owned_headers.contains(&name) {
                    owned_headers.push(name);
                }
            }
        }

        let max_token_bytes = providers
            .iter()
            .map(|p| p.max_token_bytes)
            .max()
            .unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
        let (cache_entries, cache_bytes) = match &raw.token_cache {
            None => (DEFAULT_MAX_ENTRIES as u64, DEFAULT_MAX_BYTES as u64),
            Some(c) => (
                within(
                    "tokenCache.maxEntries",
                    c.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES as u64),
                    0,
                    100_000,
                )?,
                within(
                    "tokenCache.maxBytes",
                    c.max_bytes.unwrap_or(DEFAULT_MAX_BYTES as u64),
                    4096,
                    64 << 20,
                )?,
            ),
        };
        let cache_entries = usize::try_from(cache_entries).unwrap_or(0);
        let cache_bytes = usize::try_from(cache_bytes).unwrap_or(0);
        let roles_claim = raw
            .roles_claim
            .unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_string());
        let roles_claim = claim_path("rolesClaim", &roles_claim)?;
        let rate_limits = raw
            .rate_limits
            .map(|r| ratelimits::rate_limits(r, roles_claim.clone()))
            .transpose()?;
        let policy = routes::policy(
            routes::RawPolicy {
                routes: raw.routes,
                default_action: raw.default_action,
                default_deny_status: raw.default_deny_status,
                mode: raw.mode,
                roles_claim,
                case_sensitive_paths: raw.case_sensitive_paths,
            },
            &providers,
            rate_limits.as_ref(),
        )?;
        Ok(Config {
            realm,
            providers,
            principal_header,
            peer_headers,
            owned_headers,
            token_sources,
            max_token_bytes,
            policy,
            rate_limits,
            log_level: raw.log_level.unwrap_or_default(),
            token_cache_entries: cache_entries,
            token_cache_bytes: cache_bytes,
            host_crypto: raw.host_crypto.unwrap_or(true),
        })
    }
}

fn provider(
    i: usize,
    rp: RawProvider,
    token_sources: &mut Vec<TokenSource>,
) -> Result<Provider, ConfigError> {
    let at = |field: &str| format!("providers[{i}].{field}");

    let name = rp.name.unwrap_or_else(|| format!("p{i}"));
    if !is_short_name(&name) {
        return Err(ConfigError::new(
            at("name"),
            "must be 1-32 characters of [a-z0-9_-]",
        ));
    }
    if rp.issuer.is_empty() {
        return Err(ConfigError::new(at("issuer"), "must not be empty"));
    }
    for (j, a) in rp.audiences.iter().enumerate() {
        if a.is_empty() {
            return Err(ConfigError::new(
                at(&format!("audiences[{j}]")),
                "must not be empty",
            ));
        }
    }

    let algorithms = match rp.algorithms {
        None => Algorithm::ALL.to_vec(),
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    at("algorithms"),
                    "must list at least one algorithm",
                ));
            }
            let mut algs = Vec::new();
            for (j, a) in list.iter().enumerate() {
                let alg = Algorithm::parse(a).ok_or_else(|| {
                    ConfigError::new(
                        at(&format!("algorithms[{j}]")),
                        format!(
                            "unsupported algorithm \"{a}\", expected one of: {}",
                            Algorithm::ALL
                                .iter()
                                .map(|a| a.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                if !algs.contains(&alg) {
                    algs.push(alg);
                }
            }
            algs
        }
    };

    let clock_skew_seconds = rp.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    if clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(ConfigError::new(
            at("clockSkewSeconds"),
            format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
        ));
    }
    if let Some(l) = rp.max_lifetime_seconds {
        if l == 0 || l > 31_536_000 {
            return Err(ConfigError::new(
                at("maxLifetimeSeconds"),
                "must be between 1 and 31536000 (one year)",
            ));
        }
    }
    let max_token_bytes = rp.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(MIN_MAX_TOKEN_BYTES..=MAX_MAX_TOKEN_BYTES).contains(&max_token_bytes) {
        return Err(ConfigError::new(
            at("maxTokenBytes"),
            format!("must be between {MIN_MAX_TOKEN_BYTES} and {MAX_MAX_TOKEN_BYTES}"),
        ));
    }

    let remote_only = |field: &str, present: bool| -> Result<(), ConfigError> {
        if present && rp.jwks_uri.is_none() {
            return Err(ConfigError::new(
                at(field),
                "only allowed together with jwksUri",
            ));
        }
        Ok(())
    };
    remote_only("jwksCluster", rp.jwks_cluster.is_some())?;
    remote_only("jwksTimeoutMs", rp.jwks_timeout_ms.is_some())?;
    remote_only("jwksRefreshSeconds", rp.jwks_refresh_seconds.is_some())?;
    remote_only("jwksMaxBytes", rp.jwks_max_bytes.is_some())?;
    remote_only(
        "jwksMaxStalenessSeconds",
        rp.jwks_max_staleness_seconds.is_some(),
    )?;
    remote_only(
        "kidMissRefetchSeconds",
        rp.kid_miss_refetch_seconds.is_some(),
    )?;

    let keys = match (rp.jwks, rp.jwks_uri) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                at("jwks"),
                "set either jwks or jwksUri, not both",
            ));
        }
        (None, None) => {
            return Err(ConfigError::new(
                at("jwksUri"),
                "one of jwks or jwksUri is required",
            ));
        }
        (Some(jwks), None) => {
            let text = match jwks {
                RawJwks::Text(t) => t,
                RawJwks::Object(o) => serde_json::Value::Object(o).to_string(),
            };
            let set = KeySet::from_jwks(text.as_bytes(), &algorithms).map_err(|e| match e {
                JwksError::Document(m) => ConfigError::new(at("jwks"), m),
            })?;
            if set.is_empty() {
                return Err(ConfigError::new(
                    at("jwks"),
                    format!("no usable key ({})", set.skipped_summary()),
                ));
            }
            KeySource::Inline(set)
        }
        (None, Some(uri)) => {
            let cluster = rp.jwks_cluster.ok_or_else(|| {
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
            let (authority, path) =
                split_uri(&uri).map_err(|m| ConfigError::new(at("jwksUri"), m))?;
            let timeout_ms = rp.jwks_timeout_ms.unwrap_or(DEFAULT_JWKS_TIMEOUT_MS);
            if timeout_ms == 0 || timeout_ms > MAX_JWKS_TIMEOUT_MS {
                return Err(ConfigError::new(
                    at("jwksTimeoutMs"),
                    format!("must be between 1 and {MAX_JWKS_TIMEOUT_MS}"),
                ));
            }
            let refresh_seconds = rp
                .jwks_refresh_seconds
                .unwrap_or(DEFAULT_JWKS_REFRESH_SECONDS);
            if !(MIN_JWKS_REFRESH_SECONDS..=MAX_JWKS_REFRESH_SECONDS).contains(&refresh_seconds) {
                return Err(ConfigError::new(
                    at("jwksRefreshSeconds"),
                    format!(
                        "must be between {MIN_JWKS_REFRESH_SECONDS} and {MAX_JWKS_REFRESH_SECONDS}"
                    ),
                ));
            }
            let max_bytes = within(
                &at("jwksMaxBytes"),
                rp.jwks_max_bytes.unwrap_or(DEFAULT_JWKS_MAX_BYTES),
                1024,
                MAX_JWKS_BYTES as u64,
            )?;
            let max_staleness_seconds = within(
                &at("jwksMaxStalenessSeconds"),
                rp.jwks_max_staleness_seconds
                    .unwrap_or(DEFAULT_JWKS_MAX_STALENESS_SECONDS),
                refresh_seconds,
                30 * 86_400,
            )?;
            let kid_miss_refetch_seconds = within(
                &at("kidMissRefetchSeconds"),
                rp.kid_miss_refetch_seconds
                    .unwrap_or(DEFAULT_KID_MISS_REFETCH_SECONDS),
                1,
                3_600,
            )?;
            KeySource::Remote(RemoteJwks {
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
    };

    let raw_headers = rp.from_headers.unwrap_or_else(|| {
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
    for (j, p) in rp.from_params.into_iter().enumerate() {
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

    let mut claim_headers = Vec::new();
    for (j, c) in rp.output_claim_to_headers.into_iter().enumerate() {
        let header = header_name(&at(&format!("outputClaimToHeaders[{j}].header")), &c.header)?;
        let claim = claim_path(&at(&format!("outputClaimToHeaders[{j}].claim")), &c.claim)?;
        claim_headers.push(ClaimHeader { header, claim });
    }

    Ok(Provider {
        name,
        issuer: rp.issuer,
        audiences: rp.audiences,
        keys,
        algorithms,
        clock_skew_seconds,
        max_lifetime_seconds: rp.max_lifetime_seconds,
        max_token_bytes,
        sources,
        claim_headers,
        forward_original_token: rp.forward_original_token,
        require_certificate_binding: rp.require_certificate_binding,
    })
}

fn intern(list: &mut Vec<TokenSource>, src: TokenSource) -> usize {
    if let Some(i) = list.iter().position(|s| *s == src) {
        return i;
    }
    list.push(src);
    list.len() - 1
}

/// Header names are lower-cased tokens (RFC 9110); pseudo-headers and hop-by-hop names are refused.
fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() || !lower.bytes().all(header_token) {
        return Err(ConfigError::new(
            path,
            format!("\"{name}\" is not a valid header name"),
        ));
    }
    const RESERVED: [&str; 7] = [
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "upgrade",
        "keep-alive",
    ];
    if RESERVED.contains(&lower.as_str()) {
        return Err(ConfigError::new(
            path,
            format!("header \"{name}\" cannot be used"),
        ));
    }
    Ok(lower)
}

/// `value` if it lies in `min..=max`, else an error naming the field.
fn within(at: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            at,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// Names used in shared-data keys and metrics: 1-32 characters of `[a-z0-9_-]`.
fn is_short_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// RFC 9110 `tchar`: the characters of header names and methods.
fn header_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A claim name or dotted path (`realm_access.roles`), split on dots.
fn claim_path(at: &str, c: &str) -> Result<Vec<String>, ConfigError> {
    if c.is_empty() || c.split('.').any(str::is_empty) {
        return Err(ConfigError::new(
            at,
            "must be a claim name or dotted path such as realm_access.roles",
        ));
    }
    Ok(c.split('.').map(str::to_string).collect())
}

fn is_quoted_string_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `https://host:port/path?q` → (`host:port`, `/path?q`), or why the URI is refused. The scheme
/// is `http` or `https`; the host a DNS name, an IPv4 address or a bracketed, well-formed IPv6
/// address; the port, when given, 1–65535; no userinfo and no fragment. The authority is kept as
/// written (it becomes the fetch's `:authority`); a missing path is `/`.
fn split_uri(uri: &str) -> Result<(String, String), &'static str> {
    const ABSOLUTE: &str = "must be an absolute http:// or https:// URI";
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or(ABSOLUTE)?;
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces");
    }
    if uri.contains('#') {
        return Err("must not have a fragment (#)");
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err("must not carry userinfo (user@host)");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address must be in brackets and well-formed: [::1]")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("an IPv6 address must be in brackets and well-formed: [::1]");
        }
        match after {
            "" => (addr, None),
            p => (
                addr,
                Some(
                    p.strip_prefix(':')
                        .ok_or("must be host[:port] after the scheme")?,
                ),
            ),
        }
    } else if authority.matches(':').count() > 1 {
        return Err("an IPv6 address must be in brackets and well-formed: [::1]");
    } else {
        match authority.split_once(':') {
            None => (authority, None),
            Some((h, p)) => (h, Some(p)),
        }
    };
    if host.is_empty() {
        return Err("must name a host");
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err("the host must be a DNS name, an IPv4 address or a bracketed IPv6 address");
    }
    if let Some(p) = port {
        let valid = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n));
        if !valid {
            return Err("the port must be between 1 and 65535");
        }
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Ok((authority.to_string(), path))
}

#[cfg(test)]
mod tests;
