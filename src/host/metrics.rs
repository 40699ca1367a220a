//! Metrics through the host metric API (Envoy's `/stats` and `/stats/prometheus`). Names and
//! label values come from [`crate::metrics`]; this file only defines them and counts.
//!
//! Two sets: the labelled families (`meshguard.<label>=.=<value>;.;…<family>`, labels once
//! Envoy's `stats_tags` rules extract them) and, deprecated, the per-name counters
//! `meshguard.<plugin name>.<metric>` of earlier releases, kept for one release.
//!
//! The counters every allowed request moves (the allowed series of its route and provider, the
//! token cache's) are kept in the worker and added to Envoy's on the worker's timer (at least
//! once a second) or every 1,024 counts, whichever comes first: an allowed request makes no
//! metric host call. Its decision time is recorded for one request in 32. Denials, fetches and
//! the rest are counted at once; a refusal's labelled series is defined on its first use.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::config::Config;
use crate::decision::{LocalReply, Reason};
use crate::engine::Events;
use crate::jwks_sync::FetchError;
use crate::metrics::{self as names, stat_name, Layout, Verdict};
use crate::ratelimit::fleet::Outcome;

use super::abi::{self, MetricType};

/// A counter added to Envoy's in batches (to both of its names: labelled and deprecated).
struct Batched {
    ids: [Option<u32>; 2],
    pending: Cell<u32>,
}

impl Batched {
    const FLUSH_AT: u32 = 1024;

    fn new(ids: [Option<u32>; 2]) -> Batched {
        Batched {
            ids,
            pending: Cell::new(0),
        }
    }

    fn add(&self, n: u32) {
        let p = self.pending.get().saturating_add(n);
        if p >= Self::FLUSH_AT {
            self.pending.set(0);
            self.ids.iter().for_each(|id| add(*id, p));
        } else {
            self.pending.set(p);
        }
    }

    fn flush(&self) {
        let p = self.pending.replace(0);
        self.ids.iter().for_each(|id| add(*id, p));
    }
}

pub struct Metrics {
    plugin: String,
    layout: Layout,
    /// `requests_total` of allowed requests, by `Layout::allowed_index`.
    allowed: Vec<Batched>,
    /// The deprecated `allowed` counter (batched beside the labelled one).
    allowed_legacy: Batched,
    /// Refusal series defined so far: `Layout::refusal_key` → id (at most `refusal_keys`).
    refusals: RefCell<HashMap<usize, Option<u32>>>,
    /// `rate_limited_total`, by `Layout::policy_index`.
    rate_limited: Vec<Option<u32>>,
    /// `refused_identities_total`, by bucket.
    identities: Vec<Option<u32>>,
    decision_time: Option<u32>,
    decisions: Cell<u32>,
    /// Deprecated `denied.<reason code>`, in `Reason::ALL` order.
    denied: Vec<Option<u32>>,
    dry_run_would_deny: Option<u32>,
    cas_contention: [Option<u32>; 2],
    rate_limit_slot_shared: [Option<u32>; 2],
    token_cache_hit: Batched,
    token_cache_miss: Batched,
    /// By `fleet::Outcome::ALL` order: labelled, deprecated.
    fleet: Vec<[Option<u32>; 2]>,
    providers: Vec<ProviderMetrics>,
}

/// One provider's JWKS metrics.
pub struct ProviderMetrics {
    /// `jwks_fetches_total{outcome="ok"}`, deprecated `jwks.<provider>.fetch_ok`.
    fetch_ok: [Option<u32>; 2],
    fetch_failed: Option<u32>,
    /// By `FetchError::ALL` order: labelled, deprecated `jwks.<provider>.fetch_error.<code>`.
    fetch_errors: Vec<[Option<u32>; 2]>,
    keys_loaded: [Option<u32>; 2],
    keys_skipped: [Option<u32>; 2],
    age_seconds: [Option<u32>; 2],
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    abi::define_metric(kind, name).ok()
}

fn counter(name: &str) -> Option<u32> {
    define(MetricType::Counter, name)
}

fn gauge(name: &str) -> Option<u32> {
    define(MetricType::Gauge, name)
}

impl Metrics {
    pub fn define(plugin: &str, config: &Config) -> Metrics {
        let legacy = |m: &str| format!("meshguard.{plugin}.{m}");
        let old = |m: &str| counter(&legacy(m));
        let layout = Layout::of(config);
        let allowed = (layout.allowed_names(plugin).iter())
            .map(|n| Batched::new([counter(n), None]))
            .collect();
        let providers = (config.providers.iter())
            .zip(&layout.providers)
            .map(|(p, label)| {
                let new = |f: &names::Family, kind| {
                    define(kind, &stat_name(f, &[plugin, label.as_str()]))
                };
                let fetch = |outcome: &str| {
                    counter(&stat_name(&names::JWKS_FETCHES, &[plugin, label, outcome]))
                };
                let jwks = |m: &str| legacy(&format!("jwks.{}.{m}", p.name));
                ProviderMetrics {
                    fetch_ok: [fetch("ok"), counter(&jwks("fetch_ok"))],
                    fetch_failed: counter(&jwks("fetch_failed")),
                    fetch_errors: (FetchError::ALL.iter())
                        .map(|e| {
                            [
                                fetch(e.code()),
                                counter(&jwks(&format!("fetch_error.{}", e.code()))),
                            ]
                        })
                        .collect(),
                    keys_loaded: [
                        new(&names::JWKS_KEYS, MetricType::Gauge),
                        gauge(&jwks("keys_loaded")),
                    ],
                    keys_skipped: [
                        new(&names::JWKS_KEYS_SKIPPED, MetricType::Counter),
                        counter(&jwks("keys_skipped")),
                    ],
                    age_seconds: [
                        new(&names::JWKS_AGE, MetricType::Gauge),
                        gauge(&jwks("age_seconds")),
                    ],
                }
            })
            .collect();
        let plain = |f: &names::Family| counter(&stat_name(f, &[plugin]));
        let cache = |result: &str| counter(&stat_name(&names::TOKEN_CACHE, &[plugin, result]));
        Metrics {
            allowed,
            allowed_legacy: Batched::new([old("allowed"), None]),
            refusals: RefCell::new(HashMap::new()),
            rate_limited: (layout.rate_limited_names(plugin).iter())
                .map(|n| counter(n))
                .collect(),
            identities: names::identity_buckets()
                .map(|b| counter(&stat_name(&names::REFUSED_IDENTITIES, &[plugin, &b])))
                .collect(),
            decision_time: define(
                MetricType::Histogram,
                &stat_name(&names::DECISION_TIME, &[plugin]),
            ),
            decisions: Cell::new(0),
            denied: (Reason::ALL.iter())
                .map(|r| old(&format!("denied.{}", r.code())))
                .collect(),
            dry_run_would_deny: old("dry_run_would_deny"),
            cas_contention: [plain(&names::CAS_CONTENTION), old("cas_contention")],
            rate_limit_slot_shared: [plain(&names::SLOT_SHARED), old("rate_limit_slot_shared")],
            token_cache_hit: Batched::new([cache("hit"), old("token_cache.hit")]),
            token_cache_miss: Batched::new([cache("miss"), old("token_cache.miss")]),
            fleet: (Outcome::ALL.iter())
                .map(|o| {
                    let new = stat_name(&names::FLEET_CALLS, &[plugin, o.code()]);
                    [counter(&new), old(&format!("fleet.{}", o.code()))]
                })
                .collect(),
            providers,
            plugin: plugin.to_string(),
            layout,
        }
    }

    pub fn record(&self, events: &Events) {
        add_both(self.cas_contention, events.cas_contention);
        add_both(self.rate_limit_slot_shared, events.shared_slots);
        self.token_cache_hit.add(events.cache_hits);
        self.token_cache_miss.add(events.cache_misses);
        if let Some(outcome) = events.fleet {
            let at = Outcome::ALL.iter().position(|o| *o == outcome);
            if let Some(ids) = at.and_then(|i| self.fleet.get(i)) {
                add_both(*ids, 1);
            }
        }
    }

    /// An allowed request on route `route`, its token verified by `provider`: no host call.
    pub fn allowed(&self, route: Option<usize>, provider: Option<usize>) {
        if let Some(b) = self.allowed.get(self.layout.allowed_index(route, provider)) {
            b.add(1);
        }
        self.allowed_legacy.add(1);
    }

    /// Adds the batched counts to Envoy's counters (the worker's timer calls this).
    pub fn flush(&self) {
        self.allowed.iter().for_each(Batched::flush);
        self.allowed_legacy.flush();
        self.token_cache_hit.flush();
        self.token_cache_miss.flush();
    }

    /// A refusal (sent, or let through by dry-run mode): its labelled series, defined on first
    /// use; a sent one also by policy (429) and by identity bucket (`identity`).
    pub fn refused(
        &self,
        verdict: Verdict,
        reply: &LocalReply,
        route: Option<usize>,
        provider: Option<usize>,
        identity: Option<&str>,
    ) {
        let key = self
            .layout
            .refusal_key(verdict, reply.reason, route, provider);
        let id = match self.refusals.try_borrow_mut() {
            Ok(mut defined) => *defined.entry(key).or_insert_with(|| {
                let name = (self.layout).refusal_name(
                    &self.plugin,
                    verdict,
                    reply.reason,
                    route,
                    provider,
                );
                counter(&name)
            }),
            Err(_) => None,
        };
        add(id, 1);
        if verdict == Verdict::DryRun {
            add(self.dry_run_would_deny, 1);
            return;
        }
        add(self.denied.get(reply.reason.index()).copied().flatten(), 1);
        if reply.status == 429 {
            let at = self.layout.policy_index(reply.policy());
            add(self.rate_limited.get(at).copied().flatten(), 1);
        }
        if let Some(bucket) = identity.and_then(|b| u8::from_str_radix(b, 16).ok()) {
            add(
                self.identities.get(usize::from(bucket)).copied().flatten(),
                1,
            );
        }
    }

    /// One decision more on this worker: true when its time is to be recorded (one in 32).
    pub fn time_this_one(&self) -> bool {
        let n = self.decisions.get();
        self.decisions.set(n.wrapping_add(1));
        names::sampled(n)
    }

    pub fn decision_time(&self, micros: u64) {
        set(self.decision_time, micros);
    }

    pub fn provider(&self, index: usize) -> Option<&ProviderMetrics> {
        self.providers.get(index)
    }
}

impl ProviderMetrics {
    pub fn fetched(&self) {
        add_both(self.fetch_ok, 1);
    }

    pub fn failed(&self, why: FetchError) {
        add(self.fetch_failed, 1);
        let at = FetchError::ALL.iter().position(|e| *e == why);
        if let Some(ids) = at.and_then(|i| self.fetch_errors.get(i)) {
            add_both(*ids, 1);
        }
    }

    pub fn skipped(&self, n: usize) {
        add_both(self.keys_skipped, u32::try_from(n).unwrap_or(u32::MAX));
    }

    pub fn keys_loaded(&self, n: usize) {
        self.keys_loaded.iter().for_each(|id| set(*id, n as u64));
    }

    pub fn age(&self, seconds: u64) {
        self.age_seconds.iter().for_each(|id| set(*id, seconds));
    }
}

fn add(id: Option<u32>, n: u32) {
    if let (Some(id), true) = (id, n > 0) {
        let _ = abi::increment_metric(id, i64::from(n));
    }
}

fn add_both(ids: [Option<u32>; 2], n: u32) {
    ids.iter().for_each(|id| add(*id, n));
}

fn set(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = abi::record_metric(id, value);
    }
}
