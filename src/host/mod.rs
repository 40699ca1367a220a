//! The only code that names `proxy_wasm`: it reads inputs from Envoy, calls the pure core once
//! per event, and applies the result.
//!
//! - [`root`]: one root context per worker VM: configuration, the JWKS timer.
//! - [`filter`]: one HTTP context per request: read → `Engine::decide` → apply.
//! - [`jwks`]: fetching a remote JWKS for the whole proxy (timer, or a kid miss).
//! - [`keys`]: the worker's key sets, kept in step with the JWKS in Envoy shared data.
//! - [`metrics`]: counters and gauges in Envoy's stats.
//! - [`buckets`]: rate-limit buckets in shared data.
//! - [`crypto`]: Envoy's BoringSSL `verify_signature` foreign function.

mod buckets;
mod crypto;
mod filter;
mod jwks;
mod keys;
mod metrics;
mod root;

use std::sync::atomic::{AtomicU8, Ordering};

use proxy_wasm::types::LogLevel;

use crate::config;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("meshguard: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(root::Root::default()));
}}

/// meshguard's own log threshold (`logLevel`), as a proxy-wasm level number.
static LOG_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

fn set_log_level(level: config::LogLevel) {
    let l = match level {
        config::LogLevel::Error => LogLevel::Error,
        config::LogLevel::Warn => LogLevel::Warn,
        config::LogLevel::Info => LogLevel::Info,
        config::LogLevel::Debug => LogLevel::Debug,
    };
    LOG_LEVEL.store(l as u8, Ordering::Relaxed);
}

fn log(level: LogLevel, message: &str) {
    if level as u8 >= LOG_LEVEL.load(Ordering::Relaxed) {
        let _ = proxy_wasm::hostcalls::log(level, message);
    }
}

/// Milliseconds since the Unix epoch from the host's clock.
fn now_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Nanoseconds since the Unix epoch from the host's clock.
fn now_ns(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
