//! Metric names and labels, decided here once: the families, their label sets, the label values
//! (all from a bounded, configuration-known set) and the Envoy `stats_config.stats_tags` rules
//! that turn them into Prometheus labels. `host::metrics` only defines what this module names.
//!
//! Envoy's wasm metrics have no labels of their own: a plugin defines a flat name, Envoy files it
//! as `wasmcustom.<name>`, and `/stats/prometheus` prints the name with `.` as `_`, without the
//! `wasmcustom` namespace. Tags come from the bootstrap's `stats_config.stats_tags`: a regex whose
//! first capture group is cut out of the name and whose second is the tag's value. meshguard
//! writes every label as `<label>=.=<value>;.;` (Istio's own encoding, which its `extraStatTags`
//! setting turns into exactly the rule [`tag_regex`] gives), between the prefix and the family:
//!
//! `meshguard.plugin=.=meshguard;.;decision=.=deny;.;reason=.=invalid_token.expired;.;status=.=401;.;route=.=login;.;provider=.=none;.;requests_total`
//!
//! becomes, once every label is cut out, `meshguard.requests_total`, which Prometheus sees as
//! `meshguard_requests_total{plugin="meshguard",decision="deny",reason="invalid_token.expired",status="401",route="login",provider="none"}`.
//!
//! Bounds: a label value is a route, provider or policy name of the configuration, a reason code
//! of the decision table, a fixed word, or one of [`IDENTITY_BUCKETS`] identity buckets; never
//! text a request chose. Envoy never deletes a stat, so the names ever defined are bounded by
//! the configuration (see [`Layout`]).

use crate::config::Config;
use crate::decision::{Caller, Reason};
use crate::jwks_sync::FetchError;
use crate::ratelimit::fleet::Outcome;

/// The first element of every meshguard metric name.
pub const PREFIX: &str = "meshguard";

/// The label value for "not applicable" (no route matched, no verified token, no policy).
pub const NONE: &str = "none";

/// How Envoy keeps a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name (after tag extraction, without `meshguard_`), kind, labels in
/// the order they are written, and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

pub const REQUESTS: Family = Family {
    name: "requests_total",
    kind: Kind::Counter,
    labels: &["plugin", "decision", "reason", "status", "route", "provider"],
    help: "requests judged, by decision (allow, deny, dry_run), reason code and the status it answers (none when allowed; a function of the reason, so no extra series), route and the provider that verified the token",
};

pub const RATE_LIMITED: Family = Family {
    name: "rate_limited_total",
    kind: Kind::Counter,
    labels: &["plugin", "policy"],
    help: "429 answers by the refusing rate-limit policy (none: contention)",
};

pub const REFUSED_IDENTITIES: Family = Family {
    name: "refused_identities_total",
    kind: Kind::Counter,
    labels: &["plugin", "identity"],
    help: "refusals by identity bucket: the refused caller's identity hashed into one of 64 buckets (also in the denial log line)",
};

pub const JWKS_FETCHES: Family = Family {
    name: "jwks_fetches_total",
    kind: Kind::Counter,
    labels: &["plugin", "provider", "outcome"],
    help: "JWKS fetches by provider and outcome (ok or why it failed)",
};

pub const JWKS_KEYS: Family = Family {
    name: "jwks_keys",
    kind: Kind::Gauge,
    labels: &["plugin", "provider"],
    help: "keys in the provider's current set (0 while none or after max staleness)",
};

pub const JWKS_AGE: Family = Family {
    name: "jwks_age_seconds",
    kind: Kind::Gauge,
    labels: &["plugin", "provider"],
    help: "seconds since the provider's last successful fetch",
};

pub const JWKS_KEYS_SKIPPED: Family = Family {
    name: "jwks_keys_skipped_total",
    kind: Kind::Counter,
    labels: &["plugin", "provider"],
    help: "JWK entries skipped in fetched documents",
};

pub const TOKEN_CACHE: Family = Family {
    name: "token_cache_total",
    kind: Kind::Counter,
    labels: &["plugin", "result"],
    help: "tokens judged from the verified-token cache (hit) or verified from scratch (miss)",
};

pub const FLEET_CALLS: Family = Family {
    name: "fleet_calls_total",
    kind: Kind::Counter,
    labels: &["plugin", "outcome"],
    help: "rate-limit service calls by outcome",
};

pub const CAS_CONTENTION: Family = Family {
    name: "cas_contention_total",
    kind: Kind::Counter,
    labels: &["plugin"],
    help: "bucket updates that lost 16 compare-and-swap races",
};

pub const SLOT_SHARED: Family = Family {
    name: "rate_limit_slot_shared_total",
    kind: Kind::Counter,
    labels: &["plugin"],
    help: "charges that landed on a slot another identity was using",
};

pub const DECISION_TIME: Family = Family {
    name: "decision_time_us",
    kind: Kind::Histogram,
    labels: &["plugin"],
    help: "microseconds from a request's headers to its decision (one request in 32, per worker)",
};

/// Every family, in the README's order.
pub const FAMILIES: [Family; 12] = [
    REQUESTS,
    RATE_LIMITED,
    REFUSED_IDENTITIES,
    JWKS_FETCHES,
    JWKS_KEYS,
    JWKS_AGE,
    JWKS_KEYS_SKIPPED,
    TOKEN_CACHE,
    FLEET_CALLS,
    CAS_CONTENTION,
    SLOT_SHARED,
    DECISION_TIME,
];

/// Every label name, each once: one `stats_tags` rule each.
pub const LABELS: [&str; 10] = [
    "plugin", "decision", "reason", "status", "route", "provider", "policy", "identity", "outcome",
    "result",
];

/// The labels the shipped `stats_tags` rules extract (every label some family has).
pub fn tag_names() -> Vec<&'static str> {
    LABELS
        .iter()
        .copied()
        .filter(|l| FAMILIES.iter().any(|f| f.labels.contains(l)))
        .collect()
}

/// The `stats_tags` regex for `label`: Istio's `extraStatTags` rule, so the same names carry
/// the same labels in Envoy (rules shipped in the examples) and in Istio.
pub fn tag_regex(label: &str) -> String {
    format!("({label}=\\.=(.*?);\\.;)")
}

/// A label value as it may appear in a name: at most 64 characters out of
/// `[A-Za-z0-9_.:/@-]`, anything else replaced with `_` (so a value can never close its
/// `;.;` early); empty becomes [`NONE`].
pub fn label_value(raw: &str) -> String {
    let v: String = raw
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:/@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() {
        NONE.to_string()
    } else {
        v
    }
}

/// The Envoy name of `family`'s series with `values` (in `family.labels` order; missing values
/// are [`NONE`]). Values are passed through [`label_value`].
pub fn stat_name(family: &Family, values: &[&str]) -> String {
    let mut name = format!("{PREFIX}.");
    for (i, label) in family.labels.iter().enumerate() {
        let value = label_value(values.get(i).copied().unwrap_or(NONE));
        name.push_str(&format!("{label}=.={value};.;"));
    }
    name.push_str(family.name);
    name
}

/// A request's decision, as the `decision` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed by `mode: dryRun` although a rule refused it.
    DryRun,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::DryRun];

    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::DryRun => "dry_run",
        }
    }
}

/// How many identity buckets [`identity_bucket`] hashes into: the label space of
/// `refused_identities_total` per plugin.
pub const IDENTITY_BUCKETS: u8 = 64;

/// The identity a refusal is counted against: the verified token's `iss/sub` (Istio's
/// `request.auth.principal`), else the peer's SPIFFE ID, else the source IP (without port).
/// The peer's facts are asked for only when needed (each may be a host property read).
pub fn refused_identity(
    caller: Option<&Caller>,
    spiffe_id: impl FnOnce() -> Option<String>,
    source_address: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if let Some(Caller {
        iss: Some(iss),
        sub: Some(sub),
        ..
    }) = caller
    {
        return Some(format!("{iss}/{sub}"));
    }
    if let Some(id) = spiffe_id() {
        return Some(id);
    }
    source_address().map(|a| match a.rsplit_once(':') {
        // `[::1]:443` and `10.0.0.7:51234`; a bare address stays whole.
        Some((ip, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            ip.trim_start_matches('[').trim_end_matches(']').to_string()
        }
        _ => a,
    })
}

/// The bucket of an identity: the first byte of its SHA-256 modulo [`IDENTITY_BUCKETS`], as two
/// lowercase hex digits. Not keyed, so an operator can compute the bucket of a known identity
/// (`printf %s 'https://idp/alice' | sha256sum`: first byte mod 64) and every proxy agrees.
pub fn identity_bucket(identity: &str) -> String {
    let digest = hmac_sha256::Hash::hash(identity.as_bytes());
    let first = digest.first().copied().unwrap_or(0);
    format!("{:02x}", first % IDENTITY_BUCKETS)
}

/// Every identity bucket label, in order.
pub fn identity_buckets() -> impl Iterator<Item = String> {
    (0..IDENTITY_BUCKETS).map(|b| format!("{b:02x}"))
}

/// The label values one configuration can produce, and the index of each request series.
///
/// `requests_total`: allowed requests (the warm path) go to one of `(routes + 1) × (providers +
/// 1)` series, all defined at configure time and counted by index without building a name.
/// Refusals go to `(decision, reason, route, provider)` series defined on first use; at most
/// `2 × reasons × (routes + 1) × (providers + 1)` exist, and only those that happen are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Route label values, by route index; [`NONE`] (no route matched) is last.
    pub routes: Vec<String>,
    /// Provider label values, by provider index; [`NONE`] is last.
    pub providers: Vec<String>,
    /// Policy label values (`rate_limited_total`), by policy index; [`NONE`] is last.
    pub policies: Vec<String>,
}

impl Layout {
    pub fn of(config: &Config) -> Layout {
        let with_none = |names: Vec<String>| {
            let mut v: Vec<String> = names.iter().map(|n| label_value(n)).collect();
            v.push(NONE.to_string());
            v
        };
        Layout {
            routes: with_none(
                config
                    .policy
                    .routes
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
            ),
            providers: with_none(config.providers.iter().map(|p| p.name.clone()).collect()),
            policies: with_none(
                (config.rate_limits.iter())
                    .flat_map(|rl| rl.limits.iter().map(|l| l.name.clone()))
                    .collect(),
            ),
        }
    }

    fn route_slot(&self, route: Option<usize>) -> usize {
        let none = self.routes.len().saturating_sub(1);
        route.filter(|r| *r < none).unwrap_or(none)
    }

    fn provider_slot(&self, provider: Option<usize>) -> usize {
        let none = self.providers.len().saturating_sub(1);
        provider.filter(|p| *p < none).unwrap_or(none)
    }

    /// How many allowed-request series there are.
    pub fn allowed_count(&self) -> usize {
        self.routes.len() * self.providers.len()
    }

    /// The index of an allowed request's series, in `allowed_names` order.
    pub fn allowed_index(&self, route: Option<usize>, provider: Option<usize>) -> usize {
        self.route_slot(route) * self.providers.len() + self.provider_slot(provider)
    }

    /// Every allowed-request series name, by [`Layout::allowed_index`].
    pub fn allowed_names(&self, plugin: &str) -> Vec<String> {
        let mut names = Vec::with_capacity(self.allowed_count());
        for route in &self.routes {
            for provider in &self.providers {
                names.push(stat_name(
                    &REQUESTS,
                    &[plugin, Verdict::Allow.label(), NONE, NONE, route, provider],
                ));
            }
        }
        names
    }

    /// A refusal's (or dry-run would-deny's) series: its key (unique per series, below
    /// [`Layout::refusal_keys`]) and a way to name it.
    pub fn refusal_key(
        &self,
        verdict: Verdict,
        reason: Reason,
        route: Option<usize>,
        provider: Option<usize>,
    ) -> usize {
        let dry = usize::from(verdict == Verdict::DryRun);
        ((dry * Reason::COUNT + reason.index()) * self.routes.len() + self.route_slot(route))
            * self.providers.len()
            + self.provider_slot(provider)
    }

    /// The number of refusal series keys (the bound on refusal series).
    pub fn refusal_keys(&self) -> usize {
        2 * Reason::COUNT * self.allowed_count()
    }

    pub fn refusal_name(
        &self,
        plugin: &str,
        verdict: Verdict,
        reason: Reason,
        route: Option<usize>,
        provider: Option<usize>,
    ) -> String {
        let route = self.routes.get(self.route_slot(route)).map_or(NONE, |s| s);
        let provider = (self.providers.get(self.provider_slot(provider))).map_or(NONE, |s| s);
        let status = reason.status().to_string();
        stat_name(
            &REQUESTS,
            &[
                plugin,
                verdict.label(),
                reason.code(),
                &status,
                route,
                provider,
            ],
        )
    }

    /// The `rate_limited_total` series names, by policy index ([`NONE`] last).
    pub fn rate_limited_names(&self, plugin: &str) -> Vec<String> {
        (self.policies.iter())
            .map(|p| stat_name(&RATE_LIMITED, &[plugin, p]))
            .collect()
    }

    /// The index of a 429's `policy` label (the refusing policy's name, if any).
    pub fn policy_index(&self, name: Option<&str>) -> usize {
        let none = self.policies.len().saturating_sub(1);
        name.map(label_value)
            .and_then(|n| self.policies.iter().position(|p| *p == n))
            .unwrap_or(none)
    }
}

/// The `jwks_fetches_total` outcomes: `ok`, then every [`FetchError`] code.
pub fn fetch_outcomes() -> impl Iterator<Item = &'static str> {
    std::iter::once("ok").chain(FetchError::ALL.iter().map(|e| e.code()))
}

/// The `fleet_calls_total` outcomes, in [`Outcome::ALL`] order.
pub fn fleet_outcomes() -> impl Iterator<Item = &'static str> {
    Outcome::ALL.iter().map(|o| o.code())
}

/// A decision time is sampled for one request in this many, per worker: two host calls (a clock
/// read and the histogram record) for 1/32 of requests rather than for each.
pub const DECISION_TIME_SAMPLE: u32 = 32;

/// Whether the `n`th request (counted per worker) has its decision time recorded.
pub const fn sampled(n: u32) -> bool {
    n.is_multiple_of(DECISION_TIME_SAMPLE)
}

#[cfg(test)]
mod tests;
