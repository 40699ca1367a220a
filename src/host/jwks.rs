//! Fetching a remote JWKS for the whole proxy: from the root context on the timer, or from an
//! HTTP context when a token names an unknown `kid` (the request waits for the fetch).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::{LogLevel, Status};

use crate::config::{KeySource, RemoteJwks};
use crate::jwks_sync::{refetch_allowed, JwksMeta, Lease, SharedKeys};
use crate::jwt::jwks::KeySet;

use super::keys::read_meta;
use super::log;
use super::root::Worker;

/// Starts a fetch of provider `index` if this worker wins the lease. Unless `forced` (a kid miss
/// that won the refetch slot), the fetch must still be due after the lease is won.
pub fn start<C: Context + ?Sized>(
    ctx: &C,
    worker: &Worker,
    index: usize,
    now: u64,
    forced: bool,
) -> Option<(u32, Lease)> {
    let provider = worker.engine.config.providers.get(index)?;
    let KeySource::Remote(remote) = &provider.keys else {
        return None;
    };
    let shared = worker.keys.borrow().shared_keys(index).cloned()?;
    let lease = take_lease(&shared, now, remote.timeout_ms)?;
    // Another worker may have published between our check and our lease.
    if !forced && !JwksMeta::fetch_due(read_meta(&shared.meta).as_ref(), now) {
        release_lease(&shared, lease);
        return None;
    }
    match dispatch(ctx, remote) {
        Ok(token) => Some((token, lease)),
        Err(status) => {
            let why = match status {
                Status::BadArgument => format!("Envoy has no cluster named \"{}\"", remote.cluster),
                other => format!("dispatch failed: {other:?}"),
            };
            fail(worker, index, remote, &shared, now, &why);
            release_lease(&shared, lease);
            None
        }
    }
}

fn dispatch<C: Context + ?Sized>(ctx: &C, remote: &RemoteJwks) -> Result<u32, Status> {
    let headers = vec![
        (":method", "GET"),
        (":path", remote.path.as_str()),
        (":authority", remote.authority.as_str()),
        ("accept", "application/json"),
        ("user-agent", "meshguard"),
    ];
    let timeout = Duration::from_millis(remote.timeout_ms);
    ctx.dispatch_http_call(&remote.cluster, headers, None, vec![], timeout)
}

/// Handles the answer to a fetch started by [`start`]: publish a usable document (and keep the
/// previous keys otherwise), release the lease, reload this worker's keys.
pub fn finish<C: Context + ?Sized>(
    ctx: &C,
    worker: &Worker,
    index: usize,
    lease: Lease,
    body_size: usize,
    now: u64,
) {
    let Some(provider) = worker.engine.config.providers.get(index) else {
        return;
    };
    let KeySource::Remote(remote) = &provider.keys else {
        return;
    };
    let Some(shared) = worker.keys.borrow().shared_keys(index).cloned() else {
        return;
    };
    let status = ctx.get_http_call_response_header(":status");
    let result = if status.as_deref() != Some("200") {
        Err(format!(
            "status {}",
            status.as_deref().unwrap_or("none (timeout or reset)")
        ))
    } else if body_size > remote.max_bytes {
        Err(format!(
            "document of {body_size} bytes is larger than jwksMaxBytes ({})",
            remote.max_bytes
        ))
    } else {
        let body = ctx
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        match KeySet::from_jwks(&body, &provider.algorithms) {
            Ok(set) if !set.is_empty() => Ok((body, set)),
            Ok(set) => Err(format!("no usable key ({})", set.skipped_summary())),
            Err(e) => Err(e.to_string()),
        }
    };
    match result {
        Ok((body, set)) => {
            let metrics = worker.metrics.provider(index);
            if !set.skipped.is_empty() {
                log(
                    LogLevel::Warn,
                    &format!(
                        "meshguard: provider {}: skipped keys: {}",
                        provider.name,
                        set.skipped_summary()
                    ),
                );
                if let Some(m) = metrics {
                    m.skipped(set.skipped.len());
                }
            }
            // Document first, then the version that points at it.
            let prev = read_meta(&shared.meta);
            let meta = JwksMeta::after_success(prev.as_ref(), now, remote.refresh_seconds);
            let stored = hostcalls::set_shared_data(&shared.doc, Some(&body), None)
                .and_then(|_| hostcalls::set_shared_data(&shared.meta, Some(&meta.encode()), None));
            if let Some(m) = metrics {
                m.fetched(stored.is_ok());
            }
            log(
                LogLevel::Info,
                &format!(
                    "meshguard: provider {}: JWKS fetched, {} keys, version {}",
                    provider.name,
                    set.len(),
                    meta.version
                ),
            );
        }
        Err(why) => fail(worker, index, remote, &shared, now, &why),
    }
    release_lease(&shared, lease);
    worker
        .keys
        .borrow_mut()
        .sync(&worker.engine.config, &worker.metrics, now);
}

fn fail(
    worker: &Worker,
    index: usize,
    remote: &RemoteJwks,
    shared: &SharedKeys,
    now: u64,
    why: &str,
) {
    let prev = read_meta(&shared.meta);
    let meta = JwksMeta::after_failure(prev.as_ref(), now, remote.refresh_seconds);
    let _ = hostcalls::set_shared_data(&shared.meta, Some(&meta.encode()), None);
    if let Some(m) = worker.metrics.provider(index) {
        m.fetched(false);
    }
    let name = worker
        .engine
        .config
        .providers
        .get(index)
        .map_or("?", |p| p.name.as_str());
    log(
        LogLevel::Warn,
        &format!(
            "meshguard: provider {name}: JWKS fetch from {} failed: {why}; keeping previous keys, retry in {} ms",
            remote.uri,
            meta.next_due_ms.saturating_sub(now)
        ),
    );
}

/// A token named a `kid` the provider's keys lack: claim the provider's refetch slot (at most one
/// per `kidMissRefetchSeconds` for the whole proxy).
pub fn claim_refetch(worker: &Worker, index: usize, now: u64) -> bool {
    let Some(provider) = worker.engine.config.providers.get(index) else {
        return false;
    };
    let KeySource::Remote(remote) = &provider.keys else {
        return false;
    };
    let Some(shared) = worker.keys.borrow().shared_keys(index).cloned() else {
        return false;
    };
    let Ok((Some(bytes), Some(cas))) = hostcalls::get_shared_data(&shared.refetch) else {
        return false;
    };
    let last = bytes.try_into().map(u64::from_le_bytes).unwrap_or(0);
    refetch_allowed(last, now, remote.kid_miss_refetch_seconds)
        && hostcalls::set_shared_data(&shared.refetch, Some(&now.to_le_bytes()), Some(cas)).is_ok()
}

/// Creates the lease and refetch keys before any worker's first tick (creating ignores CAS).
pub fn create_keys(shared: &SharedKeys) {
    for key in [&shared.lease, &shared.refetch] {
        if let Ok((None, _)) = hostcalls::get_shared_data(key) {
            let _ = hostcalls::set_shared_data(key, Some(&0u64.to_le_bytes()), None);
        }
    }
}

/// Takes the provider's fetch lease if it is free: compare-and-swap on the value just read.
fn take_lease(shared: &SharedKeys, now: u64, timeout_ms: u64) -> Option<Lease> {
    let Ok((Some(bytes), Some(cas))) = hostcalls::get_shared_data(&shared.lease) else {
        return None;
    };
    if !Lease::decode(&bytes).is_some_and(|l| l.is_free(now)) {
        return None;
    }
    let lease = Lease::take(now, timeout_ms);
    hostcalls::set_shared_data(&shared.lease, Some(&lease.encode()), Some(cas))
        .ok()
        .map(|_| lease)
}

/// Frees the lease only if it is still ours: a late answer to a fetch whose lease expired (and
/// that another worker has taken since) leaves the other worker's lease alone.
fn release_lease(shared: &SharedKeys, ours: Lease) {
    if let Ok((Some(bytes), Some(cas))) = hostcalls::get_shared_data(&shared.lease) {
        if Lease::decode(&bytes) == Some(ours) {
            let _ =
                hostcalls::set_shared_data(&shared.lease, Some(&Lease::FREE.encode()), Some(cas));
        }
    }
}
