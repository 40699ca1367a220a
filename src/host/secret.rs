//! The per-proxy secret that keys rate-limit slot hashing, so nobody outside the proxy can aim at
//! a chosen slot. Drawn from the host's randomness (WASI `random_get`) by the first worker that
//! configures and shared with the others through shared data; it lives as long as the proxy
//! process (shared data outlives configuration updates), so slots stay put across reloads.

use super::abi::{self, HostError, LogLevel};
use super::log;

const KEY: &str = "meshguard/secret/v1";

/// The proxy's secret: the stored one, else a fresh one stored for the other workers.
pub fn per_proxy() -> [u8; 16] {
    if let Some(stored) = stored() {
        return stored;
    }
    let mut fresh = [0u8; 16];
    if getrandom::getrandom(&mut fresh).is_err() {
        log(
            LogLevel::Error,
            "meshguard: no randomness from the host: rate-limit slots use a time-derived secret",
        );
        let t = abi::now_ns().unwrap_or(0).to_le_bytes();
        for (d, s) in fresh.iter_mut().zip(t) {
            *d = s;
        }
    }
    // Creating a missing key ignores the CAS; if another worker created it first, this non-zero
    // CAS does not match (its CAS is a small counter this early) and its value stays.
    match abi::shared_set(KEY, &fresh, u32::MAX) {
        Ok(()) | Err(HostError::CasMismatch) => stored().unwrap_or(fresh),
        Err(_) => fresh,
    }
}

fn stored() -> Option<[u8; 16]> {
    let (value, _) = abi::shared_get(KEY).ok()??;
    value.try_into().ok()
}
