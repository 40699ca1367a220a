//! Fetching a remote JWKS for the whole proxy: from the root context on the timer, or from an
//! HTTP context when a token names an unknown `kid` (the request waits for the fetch).

use crate::config::{KeySource, RemoteJwks};
use crate::jwks_sync::{
    judge_answer, refetch_allowed, AnswerHead, FetchError, JwksMeta, Lease, SharedKeys,
};
use crate::jwt::jwks::KeySet;
use crate::jwt::Algorithm;

use super::abi::{self, BufferType, HostError, LogLevel, MapType};
use super::keys::read_meta;
use super::log;
use super::worker::Worker;

/// What `proxy_on_http_call_response` reported.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub token: u32,
    /// Number of response headers; 0 when the call failed without a response (reset, timeout,
    /// a body cut short or over Envoy's buffer limit): there is then no header map to read.
    pub headers: usize,
    pub body_size: usize,
}

/// Starts a fetch of provider `index` from the current context if this worker wins the lease.
/// Unless `forced` (a kid miss that won the refetch slot), the fetch must still be due after the
/// lease is won.
pub fn start(worker: &Worker, index: usize, now: u64, forced: bool) -> Option<(u32, Lease)> {
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
    match dispatch(remote) {
        Ok(token) => Some((token, lease)),
        Err(status) => {
            let why = match status {
                HostError::BadArgument => {
                    format!("Envoy has no cluster named \"{}\"", remote.cluster)
                }
                other => format!("dispatch failed: {other:?}"),
            };
            fail(
                worker,
                index,
                remote,
                &shared,
                now,
                FetchError::Dispatch,
                &why,
            );
            release_lease(&shared, lease);
            None
        }
    }
}

fn dispatch(remote: &RemoteJwks) -> Result<u32, HostError> {
    let headers: [(&str, &[u8]); 5] = [
        (":method", b"GET"),
        (":path", remote.path.as_bytes()),
        (":authority", remote.authority.as_bytes()),
        ("accept", b"application/jwk-set+json, application/json"),
        ("user-agent", b"meshguard"),
    ];
    let timeout = u32::try_from(remote.timeout_ms).unwrap_or(u32::MAX);
    abi::http_call(&remote.cluster, &headers, timeout)
}

/// Handles the answer to a fetch started by [`start`] (in the context that started it): publish
/// a usable document, or count and log the failure and keep the previous keys; release the
/// lease either way; reload this worker's keys. Every shape of failure is just a failed fetch.
pub fn finish(worker: &Worker, index: usize, lease: Lease, answer: &Answer, now: u64) {
    let Some(provider) = worker.engine.config.providers.get(index) else {
        return;
    };
    let KeySource::Remote(remote) = &provider.keys else {
        return;
    };
    let Some(shared) = worker.keys.borrow().shared_keys(index).cloned() else {
        return;
    };
    match read_answer(answer, remote, &provider.algorithms) {
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
            let stored = abi::shared_set(&shared.doc, &body, 0)
                .and_then(|()| abi::shared_set(&shared.meta, &meta.encode(), 0));
            match stored {
                Ok(()) => {
                    if let Some(m) = metrics {
                        m.fetched();
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
                Err(e) => {
                    let why = format!("storing it in shared data failed: {e:?}");
                    fail(worker, index, remote, &shared, now, FetchError::Store, &why);
                }
            }
        }
        Err((error, why)) => fail(worker, index, remote, &shared, now, error, &why),
    }
    release_lease(&shared, lease);
    worker
        .keys
        .borrow_mut()
        .sync(&worker.engine.config, &worker.metrics, now);
}

/// Reads and judges an answer: the body and its key set, or why not. Headers are read only when
/// the host reported some, and the body only once the head says it is worth reading.
fn read_answer(
    answer: &Answer,
    remote: &RemoteJwks,
    algorithms: &[Algorithm],
) -> Result<(Vec<u8>, KeySet), (FetchError, String)> {
    let header = |name: &str| {
        if answer.headers == 0 {
            return None;
        }
        abi::header(MapType::CallResponse, name).ok().flatten()
    };
    let status = header(":status");
    let content_type = header("content-type");
    let head = AnswerHead {
        headers: answer.headers,
        status: status.as_deref(),
        content_type: content_type.as_deref(),
        body_size: answer.body_size,
    };
    judge_answer(&head, remote.max_bytes).map_err(|e| {
        let why = match e {
            FetchError::NoResponse => {
                "no response (refused, reset, timed out, cut short, or larger than Envoy's buffer)"
                    .to_string()
            }
            FetchError::Status => format!(
                "status {}",
                String::from_utf8_lossy(status.as_deref().unwrap_or_default())
            ),
            FetchError::ContentType => format!(
                "content-type {:?} is not JSON",
                String::from_utf8_lossy(content_type.as_deref().unwrap_or_default())
            ),
            FetchError::TooLarge => format!(
                "document of {} bytes is larger than jwksMaxBytes ({})",
                answer.body_size, remote.max_bytes
            ),
            other => other.code().to_string(),
        };
        (e, why)
    })?;
    let body = match abi::buffer(BufferType::CallResponseBody, 0, answer.body_size) {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => return Err((FetchError::NoResponse, format!("body unreadable: {e:?}"))),
    };
    match KeySet::from_jwks(&body, algorithms) {
        Ok(set) if !set.is_empty() => Ok((body, set)),
        Ok(set) => Err((
            FetchError::NoUsableKey,
            format!("no usable key ({})", set.skipped_summary()),
        )),
        Err(e) => Err((FetchError::Invalid, e.to_string())),
    }
}

fn fail(
    worker: &Worker,
    index: usize,
    remote: &RemoteJwks,
    shared: &SharedKeys,
    now: u64,
    error: FetchError,
    why: &str,
) {
    let prev = read_meta(&shared.meta);
    let meta = JwksMeta::after_failure(prev.as_ref(), now, remote.refresh_seconds);
    let _ = abi::shared_set(&shared.meta, &meta.encode(), 0);
    if let Some(m) = worker.metrics.provider(index) {
        m.failed(error);
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
            "meshguard: provider {name}: JWKS fetch from {} failed: {why} (fetch_error.{}); keeping previous keys, retry in {} ms",
            remote.uri,
            error.code(),
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
    let Ok(Some((bytes, cas))) = abi::shared_get(&shared.refetch) else {
        return false;
    };
    let last = bytes.try_into().map(u64::from_le_bytes).unwrap_or(0);
    refetch_allowed(last, now, remote.kid_miss_refetch_seconds)
        && abi::shared_set(&shared.refetch, &now.to_le_bytes(), cas).is_ok()
}

/// Creates the lease and refetch keys before any worker's first tick (creating ignores CAS).
pub fn create_keys(shared: &SharedKeys) {
    for key in [&shared.lease, &shared.refetch] {
        if let Ok(None) = abi::shared_get(key) {
            let _ = abi::shared_set(key, &0u64.to_le_bytes(), 0);
        }
    }
}

/// Takes the provider's fetch lease if it is free: compare-and-swap on the value just read.
fn take_lease(shared: &SharedKeys, now: u64, timeout_ms: u64) -> Option<Lease> {
    let Ok(Some((bytes, cas))) = abi::shared_get(&shared.lease) else {
        return None;
    };
    if !Lease::decode(&bytes).is_some_and(|l| l.is_free(now)) {
        return None;
    }
    let lease = Lease::take(now, timeout_ms);
    abi::shared_set(&shared.lease, &lease.encode(), cas)
        .ok()
        .map(|()| lease)
}

/// Frees the lease only if it is still ours: a late answer to a fetch whose lease expired (and
/// that another worker has taken since) leaves the other worker's lease alone.
pub fn release_lease(shared: &SharedKeys, ours: Lease) {
    if let Ok(Some((bytes, cas))) = abi::shared_get(&shared.lease) {
        if Lease::decode(&bytes) == Some(ours) {
            let _ = abi::shared_set(&shared.lease, &Lease::FREE.encode(), cas);
        }
    }
}

/// Releases the lease of a fetch whose answer will never come (its context was deleted).
pub fn abandon(worker: &Worker, index: usize, lease: Lease) {
    if let Some(shared) = worker.keys.borrow().shared_keys(index) {
        release_lease(shared, lease);
    }
}
