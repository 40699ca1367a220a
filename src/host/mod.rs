//! The only code that names `proxy_wasm`: it reads inputs from Envoy, calls the pure core once
//! per event, and applies the result.
//!
//! - [`root`]: one root context per worker VM: configuration, the JWKS timer and fetches.
//! - [`filter`]: one HTTP context per request: read → `Engine::decide` → apply.
//! - [`keys`]: the worker's key sets, kept in step with the JWKS in Envoy shared data.
//! - [`metrics`]: counters in Envoy's stats.
//! - [`buckets`]: rate-limit buckets in shared data.

mod buckets;
mod filter;
mod keys;
mod metrics;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("meshguard: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(root::Root::default()));
}}

/// Milliseconds since the Unix epoch from the host's clock.
fn now_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn log(level: LogLevel, message: &str) {
    let _ = proxy_wasm::hostcalls::log(level, message);
}

/// Nanoseconds since the Unix epoch from the host's clock.
fn now_ns(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
