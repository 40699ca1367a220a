//! Raw rate-limit configuration → validated [`RateLimits`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::validate::{claim_path, duration_ns, is_short_name, principal, DURATION_FORMS};
use super::ConfigError;
use crate::ratelimit::fleet::{
    claim_entry_value, EntrySpec, EntryValue, Service, MAX_ENTRIES, MAX_ENTRY_VALUE_LEN,
    RESERVED_KEYS,
};
use crate::ratelimit::{
    Fleet, IdentitySource, Limit, LimitBy, LimitChoice, RateLimits, RouteLimit,
};

pub const DEFAULT_SLOTS: u32 = 4096;
pub const MAX_SLOTS: u32 = 65_536;
pub const MAX_TOTAL_SLOTS: u64 = 262_144;
pub const MAX_POLICIES: usize = 32;
const MAX_REQUESTS: u64 = 1_000_000_000;
const MIN_PER_NS: u64 = 1_000_000_000;
const MAX_PER_NS: u64 = 7 * 86_400 * 1_000_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRateLimits {
    #[serde(default)]
    identity: Option<Vec<String>>,
    policies: BTreeMap<String, RawLimit>,
    #[serde(default)]
    global: Vec<String>,
    #[serde(default)]
    exempt: Option<RawExempt>,
    #[serde(default)]
    failed_auth: Option<RawFailedAuth>,
    #[serde(default)]
    on_contention: Option<RawContention>,
    #[serde(default)]
    response_headers: bool,
    #[serde(default)]
    service: Option<RawService>,
}

/// `rateLimits.service`: the rate-limit service fleet policies are counted by.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    domain: String,
    #[serde(default)]
    timeout_ms: Option<u32>,
    #[serde(default)]
    failure_mode: Option<RawContention>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLimit {
    #[serde(default)]
    requests: Option<u64>,
    #[serde(default)]
    per: Option<String>,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    key: Option<RawLimitBy>,
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    fleet: Option<RawFleet>,
}

/// `policies.<name>.fleet`: `true`, or an object naming the descriptor's extra entries.
#[derive(Debug)]
enum RawFleet {
    On(bool),
    With(RawFleetSpec),
}

/// Written out (rather than `#[serde(untagged)]`) so that a mistake inside the object keeps its
/// field path (`…fleet.entries[0].claim`) instead of "did not match any variant".
impl<'de> Deserialize<'de> for RawFleet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawFleet;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "true, false or an object such as {\"entries\": [{\"key\": \"route\"}]}",
                )
            }
            fn visit_bool<E>(self, b: bool) -> Result<RawFleet, E> {
                Ok(RawFleet::On(b))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawFleet, A::Error> {
                RawFleetSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawFleet::With)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFleetSpec {
    entries: Vec<RawEntry>,
}

/// One descriptor entry: `{key: "route"}` (the matched route's name) or
/// `{key: "plan", claim: "plan", default: "free"}` (a verified string claim).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEntry {
    key: String,
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum RawLimitBy {
    Identity,
    SourceIp,
    Global,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum RawContention {
    Deny,
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExempt {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    principals: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFailedAuth {
    policy: String,
}

/// A route's rate-limit entry: a policy, or a tier chosen by a claim; with a cost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRouteLimit {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    tier: Option<RawTier>,
    #[serde(default)]
    cost: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTier {
    claim: String,
    policies: BTreeMap<String, String>,
    default: String,
}

pub(super) fn rate_limits(
    raw: RawRateLimits,
    roles_claim: Vec<String>,
) -> Result<RateLimits, ConfigError> {
    let at = |f: &str| format!("rateLimits.{f}");
    if raw.policies.is_empty() || raw.policies.len() > MAX_POLICIES {
        return Err(ConfigError::new(
            at("policies"),
            format!("list 1 to {MAX_POLICIES} policies"),
        ));
    }
    let mut limits = Vec::new();
    let mut fleet_policies = Vec::new();
    let mut fleet_entries = Vec::new();
    let mut total_slots = 0u64;
    for (name, l) in raw.policies {
        let p = |f: &str| at(&format!("policies.{name}.{f}"));
        let fleet = match l.fleet {
            None | Some(RawFleet::On(false)) => None,
            Some(RawFleet::On(true)) => Some(Vec::new()),
            Some(RawFleet::With(spec)) => Some(entries(&p("fleet.entries"), spec.entries)?),
        };
        if let Some(entries) = fleet {
            if raw.service.is_none() {
                return Err(ConfigError::new(
                    p("fleet"),
                    "a fleet policy needs rateLimits.service",
                ));
            }
            if !entries.is_empty() {
                fleet_entries.push((limits.len(), entries));
            }
            fleet_policies.push(limits.len());
        }
        if !is_short_name(&name) {
            return Err(ConfigError::new(
                at(&format!("policies.{name}")),
                "a policy name is 1-32 characters of [a-z0-9_-]",
            ));
        }
        let by = match l.key.unwrap_or(RawLimitBy::Identity) {
            RawLimitBy::Identity => LimitBy::Identity,
            RawLimitBy::SourceIp => LimitBy::SourceIp,
            RawLimitBy::Global => LimitBy::Global,
        };
        let (requests, per) = match (l.requests, l.per) {
            (Some(requests), Some(per)) => (requests, per),
            (None, None) if fleet_policies.last() == Some(&limits.len()) => {
                // Fleet-only: the service alone counts; no local bucket, no slots.
                for (field, given) in [("burst", l.burst.is_some()), ("slots", l.slots.is_some())] {
                    if given {
                        return Err(ConfigError::new(
                            p(field),
                            "only with a local bucket (requests and per); this fleet policy has none",
                        ));
                    }
                }
                limits.push(Limit {
                    name,
                    requests: 0,
                    per_ns: 0,
                    burst: u64::MAX,
                    by,
                    slots: 0,
                });
                continue;
            }
            (None, None) => {
                return Err(ConfigError::new(
                    p("requests"),
                    "required: a policy has a local bucket (requests per per), \"fleet\", or both",
                ))
            }
            (None, Some(_)) => return Err(ConfigError::new(p("requests"), "required with per")),
            (Some(_), None) => return Err(ConfigError::new(p("per"), "required with requests")),
        };
        if requests == 0 || requests > MAX_REQUESTS {
            return Err(ConfigError::new(
                p("requests"),
                format!("must be between 1 and {MAX_REQUESTS}"),
            ));
        }
        let per_ns = duration_ns(&per).ok_or_else(|| {
            ConfigError::new(p("per"), format!("{DURATION_FORMS}; got \"{per}\""))
        })?;
        if !(MIN_PER_NS..=MAX_PER_NS).contains(&per_ns) {
            return Err(ConfigError::new(p("per"), "must be between 1s and 7d"));
        }
        let burst = l.burst.unwrap_or(requests);
        if burst == 0 || burst > MAX_REQUESTS {
            return Err(ConfigError::new(
                p("burst"),
                format!("must be between 1 and {MAX_REQUESTS}"),
            ));
        }
        let slots = match (by, l.slots) {
            (LimitBy::Global, Some(_)) => {
                return Err(ConfigError::new(
                    p("slots"),
                    "a global policy has one bucket",
                ));
            }
            (LimitBy::Global, None) => 1,
            (_, s) => s.unwrap_or(DEFAULT_SLOTS),
        };
        if slots == 0 || slots > MAX_SLOTS {
            return Err(ConfigError::new(
                p("slots"),
                format!("must be between 1 and {MAX_SLOTS}"),
            ));
        }
        total_slots += u64::from(slots);
        limits.push(Limit {
            name,
            requests,
            per_ns,
            burst,
            by,
            slots,
        });
    }
    if total_slots > MAX_TOTAL_SLOTS {
        return Err(ConfigError::new(
            at("policies"),
            format!("at most {MAX_TOTAL_SLOTS} slots in all"),
        ));
    }
    let index = |path: String, name: &str| {
        limits
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| ConfigError::new(path, format!("unknown policy \"{name}\"")))
    };

    let identity = match raw.identity {
        None => vec![
            IdentitySource::ClientId,
            IdentitySource::Subject,
            IdentitySource::SpiffeId,
            IdentitySource::SourceIp,
        ],
        Some(list) => {
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let path = at(&format!("identity[{i}]"));
                out.push(match s.as_str() {
                    "clientId" => IdentitySource::ClientId,
                    "sub" => IdentitySource::Subject,
                    "spiffeId" => IdentitySource::SpiffeId,
                    "certificateSha256" => IdentitySource::CertificateSha256,
                    "sourceIp" => IdentitySource::SourceIp,
                    // The DPoP key thumbprint: a `cnf.jkt`-bound token passes only with a proof
                    // signed by that key (RFC 9449), so the claim names the proven key.
                    "jkt" => IdentitySource::Claim(vec!["cnf".into(), "jkt".into()]),
                    other => match other.strip_prefix("claim:") {
                        Some(c) => IdentitySource::Claim(claim_path(&path, c)?),
                        None => {
                            return Err(ConfigError::new(
                                path,
                                format!("unknown identity \"{other}\", expected clientId, sub, jkt, claim:<path>, spiffeId, certificateSha256 or sourceIp"),
                            ))
                        }
                    },
                });
            }
            if out.last() != Some(&IdentitySource::SourceIp) {
                out.push(IdentitySource::SourceIp);
            }
            out
        }
    };
    let mut global = Vec::new();
    for (i, g) in raw.global.iter().enumerate() {
        global.push(index(at(&format!("global[{i}]")), g)?);
    }
    let (exempt_roles, exempt_principals) = match raw.exempt {
        None => (Vec::new(), Vec::new()),
        Some(e) => {
            let mut principals = Vec::new();
            for (i, p) in e.principals.iter().enumerate() {
                principals.push(principal(&at(&format!("exempt.principals[{i}]")), p)?);
            }
            (e.roles, principals)
        }
    };
    let failed_auth = match raw.failed_auth {
        None => None,
        Some(f) => {
            let i = index(at("failedAuth.policy"), &f.policy)?;
            if limits.get(i).is_some_and(|l| l.by != LimitBy::SourceIp) {
                return Err(ConfigError::new(
                    at("failedAuth.policy"),
                    "must be a policy with key \"sourceIp\"",
                ));
            }
            Some(i)
        }
    };
    if failed_auth.is_some_and(|i| fleet_policies.contains(&i)) {
        return Err(ConfigError::new(
            at("failedAuth.policy"),
            "must be a local policy (not fleet)",
        ));
    }
    let fleet = match raw.service {
        None => None,
        Some(s) => Some(Fleet {
            service: service(&at("service"), s)?,
            policies: fleet_policies,
            entries: fleet_entries,
        }),
    };
    if fleet.as_ref().is_some_and(|f| f.policies.is_empty()) {
        return Err(ConfigError::new(
            at("service"),
            "no policy has \"fleet\": true",
        ));
    }
    Ok(RateLimits {
        fleet,
        identity,
        limits,
        global,
        exempt_roles,
        exempt_roles_claim: roles_claim,
        exempt_principals,
        failed_auth,
        deny_on_contention: !matches!(raw.on_contention, Some(RawContention::Allow)),
        response_headers: raw.response_headers,
    })
}

pub const DEFAULT_FLEET_TIMEOUT_MS: u32 = 100;
const MAX_FLEET_TIMEOUT_MS: u32 = 10_000;
const MAX_CLUSTER_LEN: usize = 256;
const MAX_DOMAIN_LEN: usize = 128;

fn service(at: &str, raw: RawService) -> Result<Service, ConfigError> {
    let RawService {
        cluster,
        authority,
        domain,
        timeout_ms,
        failure_mode,
    } = raw;
    let field = |f: &str| format!("{at}.{f}");
    if cluster.is_empty() || cluster.len() > MAX_CLUSTER_LEN {
        return Err(ConfigError::new(
            field("cluster"),
            format!("an Envoy cluster name of 1 to {MAX_CLUSTER_LEN} bytes"),
        ));
    }
    if domain.is_empty() || domain.len() > MAX_DOMAIN_LEN {
        return Err(ConfigError::new(
            field("domain"),
            format!("1 to {MAX_DOMAIN_LEN} bytes"),
        ));
    }
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_FLEET_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_FLEET_TIMEOUT_MS {
        return Err(ConfigError::new(
            field("timeoutMs"),
            format!("must be between 1 and {MAX_FLEET_TIMEOUT_MS}"),
        ));
    }
    let authority =
        authority.unwrap_or_else(|| crate::ratelimit::fleet::default_authority(&cluster).into());
    if authority.is_empty()
        || authority.len() > MAX_CLUSTER_LEN
        || !authority
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"|\"\\/?#@".contains(&b))
    {
        return Err(ConfigError::new(
            field("authority"),
            format!("a host[:port] of 1 to {MAX_CLUSTER_LEN} bytes (printable ASCII, no spaces, no | / ? # @)"),
        ));
    }
    let target = crate::ratelimit::fleet::grpc_target(&cluster, &authority);
    Ok(Service {
        cluster,
        authority,
        target,
        domain,
        timeout_ms,
        fail_open: matches!(failure_mode, Some(RawContention::Allow)),
    })
}

/// A fleet policy's descriptor entries (`at`: their path): keys unique, not meshguard's own,
/// values from the route or a claim.
fn entries(at: &str, raw: Vec<RawEntry>) -> Result<Vec<EntrySpec>, ConfigError> {
    if raw.is_empty() || raw.len() > MAX_ENTRIES {
        return Err(ConfigError::new(
            at,
            format!("list 1 to {MAX_ENTRIES} entries (or write \"fleet\": true)"),
        ));
    }
    let mut out: Vec<EntrySpec> = Vec::new();
    for (i, e) in raw.into_iter().enumerate() {
        let RawEntry {
            key,
            claim,
            default,
        } = e;
        let field = |f: &str| format!("{at}[{i}].{f}");
        if key.is_empty()
            || key.len() > MAX_ENTRY_KEY_LEN
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(ConfigError::new(
                field("key"),
                format!("1 to {MAX_ENTRY_KEY_LEN} characters of [A-Za-z0-9_.-]"),
            ));
        }
        if RESERVED_KEYS.contains(&key.as_str()) {
            return Err(ConfigError::new(
                field("key"),
                format!("\"{key}\" is an entry meshguard always sends"),
            ));
        }
        if out.iter().any(|o| o.key == key) {
            return Err(ConfigError::new(
                field("key"),
                format!("\"{key}\" is given twice"),
            ));
        }
        let value = match (claim, default) {
            (Some(c), default) => {
                let path = claim_path(&field("claim"), &c)?;
                if let Some(d) = &default {
                    if claim_entry_value(Some(&serde_json::Value::String(d.clone()))).is_none()
                        || d.is_empty()
                    {
                        return Err(ConfigError::new(
                            field("default"),
                            format!("1 to {MAX_ENTRY_VALUE_LEN} bytes without control characters"),
                        ));
                    }
                }
                EntryValue::Claim { path, default }
            }
            (None, None) if key == "route" => EntryValue::Route,
            (None, None) => {
                return Err(ConfigError::new(
                    field("claim"),
                    format!("required for key \"{key}\" (only key \"route\", the matched route's name, needs none)"),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    field("default"),
                    "only with claim (a route always has a name)",
                ))
            }
        };
        out.push(EntrySpec { key, value });
    }
    Ok(out)
}

const MAX_ENTRY_KEY_LEN: usize = 64;

pub(super) fn route_limits(
    at: &str,
    raw: Vec<RawRouteLimit>,
    limits: Option<&RateLimits>,
) -> Result<Vec<RouteLimit>, ConfigError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let Some(limits) = limits else {
        return Err(ConfigError::new(at, "needs a top-level rateLimits section"));
    };
    let index = |path: String, name: &str| {
        limits
            .index(name)
            .ok_or_else(|| ConfigError::new(path, format!("unknown policy \"{name}\"")))
    };
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let here = format!("{at}[{i}]");
        let cost = r.cost.unwrap_or(1);
        if cost == 0 || cost > 1_000_000 {
            return Err(ConfigError::new(
                format!("{here}.cost"),
                "must be between 1 and 1000000",
            ));
        }
        let choice = match (r.policy, r.tier) {
            (Some(p), None) => LimitChoice::Fixed(index(format!("{here}.policy"), &p)?),
            (None, Some(t)) => {
                let claim = claim_path(&format!("{here}.tier.claim"), &t.claim)?;
                let mut by_value = Vec::new();
                for (value, name) in &t.policies {
                    by_value.push((
                        value.clone(),
                        index(format!("{here}.tier.policies.{value}"), name)?,
                    ));
                }
                let default = index(format!("{here}.tier.default"), &t.default)?;
                LimitChoice::Tier {
                    claim,
                    by_value,
                    default,
                }
            }
            _ => return Err(ConfigError::new(here, "set exactly one of policy or tier")),
        };
        // A cost above a policy's burst could never be admitted: that route would answer 429
        // forever. With a tier, the cost must fit every policy the route can pick.
        let candidates: Vec<usize> = match &choice {
            LimitChoice::Fixed(i) => vec![*i],
            LimitChoice::Tier {
                by_value, default, ..
            } => by_value
                .iter()
                .map(|(_, i)| *i)
                .chain(std::iter::once(*default))
                .collect(),
        };
        for i in candidates {
            if let Some(l) = limits.limits.get(i).filter(|l| cost > l.burst) {
                return Err(ConfigError::new(
                    format!("{here}.cost"),
                    format!(
                        "{cost} is above the burst of policy \"{}\" ({}): such a request could never be admitted",
                        l.name, l.burst
                    ),
                ));
            }
        }
        out.push(RouteLimit { choice, cost });
    }
    Ok(out)
}
