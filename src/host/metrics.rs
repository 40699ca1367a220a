//! Counters through the host metric API (they appear in Envoy's `/stats` and
//! `/stats/prometheus`), named `meshguard.<plugin name>.<counter>` so that two plugin instances do
//! not collide.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

pub struct Metrics {
    dry_run_would_deny: Option<u32>,
}

impl Metrics {
    pub fn define(plugin: &str) -> Metrics {
        let counter = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("meshguard.{plugin}.{name}"))
                .ok()
        };
        Metrics {
            dry_run_would_deny: counter("dry_run_would_deny"),
        }
    }

    pub fn dry_run_would_deny(&self) {
        if let Some(id) = self.dry_run_would_deny {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}
