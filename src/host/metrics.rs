//! Counters through the host metric API (they appear in Envoy's `/stats` and
//! `/stats/prometheus`), named `meshguard.<plugin name>.<counter>` so that two plugin instances do
//! not collide.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::engine::Events;

pub struct Metrics {
    dry_run_would_deny: Option<u32>,
    cas_contention: Option<u32>,
    rate_limit_slot_shared: Option<u32>,
}

impl Metrics {
    pub fn define(plugin: &str) -> Metrics {
        let counter = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("meshguard.{plugin}.{name}"))
                .ok()
        };
        Metrics {
            dry_run_would_deny: counter("dry_run_would_deny"),
            cas_contention: counter("cas_contention"),
            rate_limit_slot_shared: counter("rate_limit_slot_shared"),
        }
    }

    pub fn record(&self, events: &Events) {
        add(self.cas_contention, events.cas_contention);
        add(self.rate_limit_slot_shared, events.shared_slots);
    }

    pub fn dry_run_would_deny(&self) {
        add(self.dry_run_would_deny, 1);
    }
}

fn add(id: Option<u32>, n: u32) {
    if let (Some(id), true) = (id, n > 0) {
        let _ = hostcalls::increment_metric(id, i64::from(n));
    }
}
