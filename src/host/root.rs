//! Root context (one per worker VM): parses the configuration once, owns the worker's keys, and
//! runs the JWKS timer. Only the worker holding the shared lease fetches a provider's JWKS; the
//! result goes to shared data, where every worker picks it up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, Status};

use crate::config::{Config, KeySource, RemoteJwks};
use crate::engine::Engine;
use crate::jwks_sync::{JwksMeta, Lease, SharedKeys};
use crate::jwt::jwks::{KeySet, MAX_JWKS_BYTES};

use super::buckets::create_slots;
use super::filter::Filter;
use super::keys::{read_meta, WorkerKeys};
use super::metrics::Metrics;
use super::{log, now_ms};

/// Tick while some remote provider has no keys yet, and once all have.
const FAST_TICK: Duration = Duration::from_millis(200);
const SLOW_TICK: Duration = Duration::from_millis(1000);

/// What every HTTP context of this worker shares.
pub struct Worker {
    pub engine: Engine,
    pub keys: RefCell<WorkerKeys>,
    pub metrics: Metrics,
}

#[derive(Default)]
pub struct Root {
    worker: Option<Rc<Worker>>,
    /// In-flight JWKS fetches: call token → provider index.
    pending: HashMap<u32, (usize, Lease)>,
    tick: Option<Duration>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((index, lease)) = self.pending.remove(&token) else {
            return;
        };
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some(provider) = worker.engine.config.providers.get(index) else {
            return;
        };
        let KeySource::Remote(remote) = &provider.keys else {
            return;
        };
        let Some(shared) = worker.keys.borrow().shared_keys(index).cloned() else {
            return;
        };
        let now = now_ms(self.get_current_time());

        let status = self.get_http_call_response_header(":status");
        let result = if status.as_deref() != Some("200") {
            Err(format!(
                "status {}",
                status.as_deref().unwrap_or("none (timeout or reset)")
            ))
        } else if body_size > MAX_JWKS_BYTES {
            Err(format!("document larger than {MAX_JWKS_BYTES} bytes"))
        } else {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            match KeySet::from_jwks(&body, &provider.algorithms) {
                Ok(set) if !set.is_empty() => Ok((body, set)),
                Ok(set) => Err(format!("no usable key ({})", set.skipped_summary())),
                Err(e) => Err(e.to_string()),
            }
        };
        let prev = read_meta(&shared.meta);
        match result {
            Ok((body, set)) => {
                if !set.skipped.is_empty() {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "meshguard: provider {}: skipped keys: {}",
                            provider.name,
                            set.skipped_summary()
                        ),
                    );
                }
                // Document first, then the version that points at it.
                let stored = hostcalls::set_shared_data(&shared.doc, Some(&body), None);
                let meta = JwksMeta::after_success(prev.as_ref(), now, remote.refresh_seconds);
                let _ = stored.and_then(|_| {
                    hostcalls::set_shared_data(&shared.meta, Some(&meta.encode()), None)
                });
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
            Err(why) => {
                let meta = JwksMeta::after_failure(prev.as_ref(), now, remote.refresh_seconds);
                let _ = hostcalls::set_shared_data(&shared.meta, Some(&meta.encode()), None);
                log(
                    LogLevel::Warn,
                    &format!(
                        "meshguard: provider {}: JWKS fetch from {} failed: {why}; keeping previous keys, retry in {} ms",
                        provider.name,
                        remote.uri,
                        meta.next_due_ms.saturating_sub(now)
                    ),
                );
            }
        }
        release_lease(&shared, lease);
        worker.keys.borrow_mut().sync(&worker.engine.config);
        self.adjust_tick();
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::from_plugin_bytes(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("meshguard: invalid configuration: {e}"),
                );
                return false;
            }
        };
        let plugin = self
            .get_property(vec!["plugin_name"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let keys = WorkerKeys::new(&config, &plugin);
        // Create the lease keys before any worker's first tick: creating a key ignores CAS.
        for i in 0..config.providers.len() {
            if let Some(shared) = keys.shared_keys(i) {
                if let Ok((None, _)) = hostcalls::get_shared_data(&shared.lease) {
                    let _ = hostcalls::set_shared_data(
                        &shared.lease,
                        Some(&Lease::FREE.encode()),
                        None,
                    );
                }
            }
        }
        let metrics = Metrics::define(&plugin);
        let engine = Engine::new(config, &plugin);
        create_slots(&engine.slot_keys());
        let worker = Rc::new(Worker {
            engine,
            keys: RefCell::new(keys),
            metrics,
        });
        worker.keys.borrow_mut().sync(&worker.engine.config);
        self.worker = Some(worker);
        self.tick = None;
        self.adjust_tick();
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        worker.keys.borrow_mut().sync(&worker.engine.config);
        let now = now_ms(self.get_current_time());
        for (i, p) in worker.engine.config.providers.iter().enumerate() {
            let KeySource::Remote(remote) = &p.keys else {
                continue;
            };
            let Some(shared) = worker.keys.borrow().shared_keys(i).cloned() else {
                continue;
            };
            if self.pending.values().any(|(v, _)| *v == i) {
                continue;
            }
            if !JwksMeta::fetch_due(read_meta(&shared.meta).as_ref(), now) {
                continue;
            }
            let Some(lease) = take_lease(&shared, now, remote.timeout_ms) else {
                continue;
            };
            // Another worker may have published between our check and our lease.
            if !JwksMeta::fetch_due(read_meta(&shared.meta).as_ref(), now) {
                release_lease(&shared, lease);
                continue;
            }
            self.fetch(i, &p.name, remote, &shared, now, lease);
        }
        self.adjust_tick();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(Filter::new(worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    fn fetch(
        &mut self,
        index: usize,
        name: &str,
        remote: &RemoteJwks,
        shared: &SharedKeys,
        now: u64,
        lease: Lease,
    ) {
        let headers = vec![
            (":method", "GET"),
            (":path", remote.path.as_str()),
            (":authority", remote.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", "meshguard"),
        ];
        let timeout = Duration::from_millis(remote.timeout_ms);
        match self.dispatch_http_call(&remote.cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.pending.insert(token, (index, lease));
            }
            Err(status) => {
                let why = match status {
                    Status::BadArgument => {
                        format!("Envoy has no cluster named \"{}\"", remote.cluster)
                    }
                    other => format!("dispatch failed: {other:?}"),
                };
                let prev = read_meta(&shared.meta);
                let meta = JwksMeta::after_failure(prev.as_ref(), now, remote.refresh_seconds);
                let _ = hostcalls::set_shared_data(&shared.meta, Some(&meta.encode()), None);
                release_lease(shared, lease);
                log(
                    LogLevel::Error,
                    &format!("meshguard: provider {name}: JWKS fetch not started: {why}"),
                );
            }
        }
    }

    fn adjust_tick(&mut self) {
        let Some(worker) = &self.worker else { return };
        let has_remote = worker
            .engine
            .config
            .providers
            .iter()
            .any(|p| matches!(p.keys, KeySource::Remote(_)));
        let want = if !has_remote {
            None
        } else if worker.keys.borrow().all_loaded() {
            Some(SLOW_TICK)
        } else {
            Some(FAST_TICK)
        };
        if want != self.tick {
            self.set_tick_period(want.unwrap_or(Duration::ZERO));
            self.tick = want;
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
