//! Metrics through the host metric API (Envoy's `/stats` and `/stats/prometheus`), named
//! `meshguard.<plugin name>.<metric>` so that two plugin instances do not collide. Every metric
//! is defined when the plugin is configured, so all of them show (at 0) from the start.
//!
//! The counters every allowed request moves (`allowed`, `token_cache.hit`/`.miss`) are kept in
//! the worker and added to Envoy's on the worker's timer (at least once a second) or every 1,024
//! counts, whichever comes first: two host calls fewer per request. Denials, fetches and the rest
//! are counted at once.

use std::cell::Cell;

use crate::config::Config;
use crate::decision::Reason;
use crate::engine::Events;
use crate::jwks_sync::FetchError;
use crate::ratelimit::fleet::Outcome;

use super::abi::{self, MetricType};

/// A counter added to Envoy's in batches.
struct Batched {
    id: Option<u32>,
    pending: Cell<u32>,
}

impl Batched {
    const FLUSH_AT: u32 = 1024;

    fn new(id: Option<u32>) -> Batched {
        Batched {
            id,
            pending: Cell::new(0),
        }
    }

    fn add(&self, n: u32) {
        let p = self.pending.get().saturating_add(n);
        if p >= Self::FLUSH_AT {
            self.pending.set(0);
            add(self.id, p);
        } else {
            self.pending.set(p);
        }
    }

    fn flush(&self) {
        add(self.id, self.pending.replace(0));
    }
}

pub struct Metrics {
    allowed: Batched,
    /// `denied.<reason code>`, in `Reason::ALL` order (indexed by `Reason::index`).
    denied: Vec<Option<u32>>,
    dry_run_would_deny: Option<u32>,
    cas_contention: Option<u32>,
    rate_limit_slot_shared: Option<u32>,
    token_cache_hit: Batched,
    token_cache_miss: Batched,
    /// `fleet.<outcome code>`, in `fleet::Outcome::ALL` order.
    fleet: Vec<Option<u32>>,
    providers: Vec<ProviderMetrics>,
}

/// `jwks.<provider>.*`
pub struct ProviderMetrics {
    fetch_ok: Option<u32>,
    fetch_failed: Option<u32>,
    /// `jwks.<provider>.fetch_error.<code>`, in `FetchError::ALL` order.
    fetch_errors: Vec<Option<u32>>,
    keys_loaded: Option<u32>,
    keys_skipped: Option<u32>,
    age_seconds: Option<u32>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    abi::define_metric(kind, name).ok()
}

impl Metrics {
    pub fn define(plugin: &str, config: &Config) -> Metrics {
        let name = |m: &str| format!("meshguard.{plugin}.{m}");
        let counter = |m: &str| define(MetricType::Counter, &name(m));
        let gauge = |m: &str| define(MetricType::Gauge, &name(m));
        let denied = Reason::ALL
            .iter()
            .map(|r| counter(&format!("denied.{}", r.code())))
            .collect();
        let providers = config
            .providers
            .iter()
            .map(|p| ProviderMetrics {
                fetch_ok: counter(&format!("jwks.{}.fetch_ok", p.name)),
                fetch_failed: counter(&format!("jwks.{}.fetch_failed", p.name)),
                fetch_errors: FetchError::ALL
                    .iter()
                    .map(|e| counter(&format!("jwks.{}.fetch_error.{}", p.name, e.code())))
                    .collect(),
                keys_loaded: gauge(&format!("jwks.{}.keys_loaded", p.name)),
                keys_skipped: counter(&format!("jwks.{}.keys_skipped", p.name)),
                age_seconds: gauge(&format!("jwks.{}.age_seconds", p.name)),
            })
            .collect();
        Metrics {
            allowed: Batched::new(counter("allowed")),
            denied,
            dry_run_would_deny: counter("dry_run_would_deny"),
            cas_contention: counter("cas_contention"),
            rate_limit_slot_shared: counter("rate_limit_slot_shared"),
            token_cache_hit: Batched::new(counter("token_cache.hit")),
            token_cache_miss: Batched::new(counter("token_cache.miss")),
            fleet: Outcome::ALL
                .iter()
                .map(|o| counter(&format!("fleet.{}", o.code())))
                .collect(),
            providers,
        }
    }

    pub fn record(&self, events: &Events) {
        add(self.cas_contention, events.cas_contention);
        add(self.rate_limit_slot_shared, events.shared_slots);
        self.token_cache_hit.add(events.cache_hits);
        self.token_cache_miss.add(events.cache_misses);
        if let Some(outcome) = events.fleet {
            let at = Outcome::ALL.iter().position(|o| *o == outcome);
            add(at.and_then(|i| self.fleet.get(i).copied()).flatten(), 1);
        }
    }

    pub fn allowed(&self) {
        self.allowed.add(1);
    }

    /// Adds the batched counts to Envoy's counters (the worker's timer calls this).
    pub fn flush(&self) {
        self.allowed.flush();
        self.token_cache_hit.flush();
        self.token_cache_miss.flush();
    }

    pub fn denied(&self, reason: Reason) {
        add(self.denied.get(reason.index()).copied().flatten(), 1);
    }

    pub fn dry_run_would_deny(&self) {
        add(self.dry_run_would_deny, 1);
    }

    pub fn provider(&self, index: usize) -> Option<&ProviderMetrics> {
        self.providers.get(index)
    }
}

impl ProviderMetrics {
    pub fn fetched(&self) {
        add(self.fetch_ok, 1);
    }

    pub fn failed(&self, why: FetchError) {
        add(self.fetch_failed, 1);
        let at = FetchError::ALL.iter().position(|e| *e == why);
        add(
            at.and_then(|i| self.fetch_errors.get(i).copied()).flatten(),
            1,
        );
    }

    pub fn skipped(&self, n: usize) {
        add(self.keys_skipped, u32::try_from(n).unwrap_or(u32::MAX));
    }

    pub fn keys_loaded(&self, n: usize) {
        set(self.keys_loaded, n as u64);
    }

    pub fn age(&self, seconds: u64) {
        set(self.age_seconds, seconds);
    }
}

fn add(id: Option<u32>, n: u32) {
    if let (Some(id), true) = (id, n > 0) {
        let _ = abi::increment_metric(id, i64::from(n));
    }
}

fn set(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = abi::record_metric(id, value);
    }
}
