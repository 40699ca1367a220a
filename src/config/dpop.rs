//! A provider's `dpop` object (RFC 9449) → [`dpop::Config`], or `None` when DPoP is off. Every
//! member is checked even under `mode: "off"`, so switching a mode on never reveals an old typo.

use serde::Deserialize;

use super::validate::{self, split_uri, within_unit};
use super::ConfigError;
use crate::dpop::{self, htu, replay, Mode};
use crate::jwt::extract::TokenSource;

pub const MIN_DPOP_PROOF_MAX_AGE_SECONDS: u64 = 1;
pub const MAX_DPOP_PROOF_MAX_AGE_SECONDS: u64 = 600;
pub const MAX_DPOP_CLOCK_SKEW_SECONDS: u64 = 60;
/// Most `publicOrigins`: each is one candidate `htu` per request.
pub const MAX_DPOP_PUBLIC_ORIGINS: usize = htu::MAX_CANDIDATES;
pub const MIN_DPOP_NONCE_STEP_SECONDS: u64 = 10;
pub const MAX_DPOP_NONCE_STEP_SECONDS: u64 = 3_600;
pub const MIN_DPOP_MAX_PROOF_BYTES: u64 = 512;
pub const MAX_DPOP_MAX_PROOF_BYTES: u64 = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDpop {
    mode: RawMode,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    proof_max_age_seconds: Option<u64>,
    #[serde(default)]
    clock_skew_seconds: Option<u64>,
    #[serde(default)]
    public_origins: Vec<String>,
    #[serde(default)]
    trust_forwarded_headers: bool,
    #[serde(default)]
    require_nonce: bool,
    #[serde(default)]
    nonce_step_seconds: Option<u64>,
    #[serde(default)]
    replay_shards: Option<u64>,
    #[serde(default)]
    replay_shard_entries: Option<u64>,
    #[serde(default)]
    max_proof_bytes: Option<u64>,
    #[serde(default)]
    forward_proof: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum RawMode {
    Off,
    Allowed,
    Required,
}

/// The provider's DPoP settings (`at` gives a provider field's path; `sources` are the places
/// this provider's tokens are found), or `None` when `dpop` is absent or its `mode` is `off`.
pub(super) fn dpop(
    at: &impl Fn(&str) -> String,
    raw: Option<RawDpop>,
    sources: &[&TokenSource],
) -> Result<Option<dpop::Config>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let d = |field: &str| at(&format!("dpop.{field}"));
    let RawDpop {
        mode,
        algorithms,
        proof_max_age_seconds,
        clock_skew_seconds,
        public_origins,
        trust_forwarded_headers,
        require_nonce,
        nonce_step_seconds,
        replay_shards,
        replay_shard_entries,
        max_proof_bytes,
        forward_proof,
    } = raw;
    let defaults = dpop::Config::default();

    let algorithms = match algorithms {
        None => defaults.algorithms,
        Some(list) => validate::algorithms(&d("algorithms"), &list)?,
    };
    let proof_max_age_seconds = within_unit(
        &d("proofMaxAgeSeconds"),
        proof_max_age_seconds.unwrap_or(defaults.proof_max_age_seconds),
        MIN_DPOP_PROOF_MAX_AGE_SECONDS,
        MAX_DPOP_PROOF_MAX_AGE_SECONDS,
        "seconds",
    )?;
    let clock_skew_seconds = within_unit(
        &d("clockSkewSeconds"),
        clock_skew_seconds.unwrap_or(defaults.clock_skew_seconds),
        0,
        MAX_DPOP_CLOCK_SKEW_SECONDS,
        "seconds",
    )?;
    let public_origins = origins(&d, &public_origins)?;
    if trust_forwarded_headers && public_origins.len() >= MAX_DPOP_PUBLIC_ORIGINS {
        // htu::expected yields at most MAX_CANDIDATES URIs: the forwarded one would be dropped.
        return Err(ConfigError::new(
            d("publicOrigins"),
            format!(
                "at most {} origins with trustForwardedHeaders: true (the forwarded origin is \
                 one more of the {MAX_DPOP_PUBLIC_ORIGINS} a request is compared with)",
                MAX_DPOP_PUBLIC_ORIGINS - 1
            ),
        ));
    }
    if nonce_step_seconds.is_some() && !require_nonce {
        return Err(ConfigError::new(
            d("nonceStepSeconds"),
            "only allowed together with requireNonce: true",
        ));
    }
    let nonce_step_seconds = within_unit(
        &d("nonceStepSeconds"),
        nonce_step_seconds.unwrap_or(defaults.nonce_step_seconds),
        MIN_DPOP_NONCE_STEP_SECONDS,
        MAX_DPOP_NONCE_STEP_SECONDS,
        "seconds",
    )?;
    let replay_shards = within_unit(
        &d("replayShards"),
        replay_shards.unwrap_or(u64::from(defaults.replay_shards)),
        1,
        u64::from(replay::MAX_SHARDS),
        "shards (one shared-data key each)",
    )?;
    let replay_shard_entries = within_unit(
        &d("replayShardEntries"),
        replay_shard_entries.unwrap_or(u64::from(defaults.replay_shard_entries)),
        1,
        u64::from(replay::MAX_ENTRIES),
        &format!(
            "entries ({} bytes each: a shard is read whole for every proof)",
            replay::RECORD_BYTES
        ),
    )?;
    let max_proof_bytes = within_unit(
        &d("maxProofBytes"),
        max_proof_bytes.unwrap_or(defaults.max_proof_bytes as u64),
        MIN_DPOP_MAX_PROOF_BYTES,
        MAX_DPOP_MAX_PROOF_BYTES,
        "bytes",
    )?;

    let mode = match mode {
        RawMode::Off => return Ok(None),
        RawMode::Allowed => Mode::Allowed,
        RawMode::Required => Mode::Required,
    };
    let named = if mode == Mode::Required {
        "\"required\""
    } else {
        "\"allowed\""
    };
    let authorization = sources
        .iter()
        .any(|s| matches!(s, TokenSource::Header { name, .. } if name == "authorization"));
    if !authorization {
        return Err(ConfigError::new(
            at("fromHeaders"),
            format!(
                "must include authorization when dpop.mode is {named}: a DPoP-bound token is \
                 sent as Authorization: DPoP <token> (RFC 9449 §7.1)"
            ),
        ));
    }
    if mode == Mode::Required
        && sources
            .iter()
            .any(|s| matches!(s, TokenSource::Param { .. }))
    {
        return Err(ConfigError::new(
            at("fromParams"),
            "must be empty when dpop.mode is \"required\": a DPoP-bound token is sent as \
             Authorization: DPoP <token> (RFC 9449 §7.1)",
        ));
    }

    Ok(Some(dpop::Config {
        mode,
        algorithms,
        proof_max_age_seconds,
        clock_skew_seconds,
        public_origins,
        trust_forwarded_headers,
        require_nonce,
        nonce_step_seconds,
        replay_shards: u32::try_from(replay_shards).unwrap_or(replay::MAX_SHARDS),
        replay_shard_entries: u16::try_from(replay_shard_entries).unwrap_or(replay::MAX_ENTRIES),
        max_proof_bytes: usize::try_from(max_proof_bytes).unwrap_or(defaults.max_proof_bytes),
        forward_proof,
    }))
}

/// `publicOrigins`: at most [`MAX_DPOP_PUBLIC_ORIGINS`], each `http(s)://host[:port]` (a
/// trailing `/` allowed) checked like `jwksUri`, kept normalised as [`htu`] compares them, none
/// twice once normalised.
fn origins(d: &impl Fn(&str) -> String, list: &[String]) -> Result<Vec<htu::Origin>, ConfigError> {
    if list.len() > MAX_DPOP_PUBLIC_ORIGINS {
        return Err(ConfigError::new(
            d("publicOrigins"),
            format!("at most {MAX_DPOP_PUBLIC_ORIGINS} origins"),
        ));
    }
    let mut out: Vec<htu::Origin> = Vec::with_capacity(list.len());
    for (j, text) in list.iter().enumerate() {
        let here = d(&format!("publicOrigins[{j}]"));
        let (_, path) = split_uri(text).map_err(|m| ConfigError::new(&here, m))?;
        if path != "/" {
            return Err(ConfigError::new(
                &here,
                "must be an origin, http(s)://host[:port], without path or query",
            ));
        }
        let origin = htu::Origin::parse(text)
            .map_err(|e| ConfigError::new(&here, format!("is not a valid origin: {e}")))?;
        if let Some(k) = out.iter().position(|o| *o == origin) {
            return Err(ConfigError::new(
                &here,
                format!("the same origin as publicOrigins[{k}] ({origin})"),
            ));
        }
        out.push(origin);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
