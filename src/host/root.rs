//! Root context (one per plugin configuration and worker VM): parses the configuration once, owns
//! the worker's keys, and runs the timer: JWKS fetches (only the worker holding the shared lease
//! fetches; the result goes to shared data, where every worker picks it up) and requests waiting
//! for a provider's first keys.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::config::{Config, KeySource};
use crate::engine::Engine;
use crate::jwks_sync::{JwksMeta, Lease};
use crate::jwt::cache::TokenCache;

use super::abi::{self, BufferType, LogLevel};
use super::buckets::create_slots;
use super::crypto::BoringSsl;
use super::jwks::{self, Answer};
use super::keys::{read_meta, WorkerKeys};
use super::metrics::Metrics;
use super::worker::Worker;
use super::{log, now_ms, secret, set_log_level};

/// Tick while requests wait for first keys, while some remote provider has no keys yet, and once
/// all have (ms).
const WAIT_TICK_MS: u32 = 50;
const FAST_TICK_MS: u32 = 200;
/// The timer with a fleet service: a fleet wait Envoy never ends is ended at most this long
/// after its deadline.
const FLEET_TICK_MS: u32 = 100;
/// Also what flushes the batched counters.
const SLOW_TICK_MS: u32 = 1000;

pub struct Root {
    worker: Option<Rc<Worker>>,
    /// In-flight JWKS fetches: call token → provider index and the lease taken for it.
    pending: HashMap<u32, (usize, Lease)>,
    tick_ms: u32,
}

impl Root {
    pub fn new() -> Root {
        Root {
            worker: None,
            pending: HashMap::new(),
            tick_ms: 0,
        }
    }

    pub fn worker(&self) -> Option<Rc<Worker>> {
        self.worker.clone()
    }

    pub fn on_configure(&mut self, size: usize) -> bool {
        let bytes = abi::buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
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
        let Some(now) = now_ms() else {
            log(
                LogLevel::Critical,
                "meshguard: the host clock is unavailable",
            );
            return false;
        };
        set_log_level(config.log_level);
        let plugin = abi::property(&["plugin_name"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let keys = WorkerKeys::new(&config, &plugin);
        for i in 0..config.providers.len() {
            if let Some(shared) = keys.shared_keys(i) {
                jwks::create_keys(shared);
            }
        }
        let metrics = Metrics::define(&plugin, &config);
        let engine = Engine::new(config, &plugin, secret::per_proxy());
        create_slots(&engine.slot_names());
        let cache = TokenCache::new(
            engine.config.token_cache_entries,
            engine.config.token_cache_bytes,
        );
        let worker = Rc::new(Worker {
            engine,
            keys: RefCell::new(keys),
            metrics,
            cache: RefCell::new(cache),
            crypto: BoringSsl::default(),
            waiting: RefCell::new(Vec::new()),
            orphans: RefCell::new(HashMap::new()),
            fleet_calls: RefCell::new(crate::ratelimit::fleet::Waits::default()),
            fleet_log: RefCell::new(crate::ratelimit::fleet::LogBudget::default()),
        });
        worker
            .keys
            .borrow_mut()
            .sync(&worker.engine.config, &worker.metrics, now);
        self.worker = Some(worker);
        self.tick_ms = 0;
        self.adjust_tick();
        true
    }

    /// The timer: flush counters, pick up shared keys, start due fetches. Returns the worker and
    /// the time when requests wait for first keys, for the caller to give them another look.
    pub fn on_tick(&mut self) -> Option<(Rc<Worker>, u64)> {
        let (Some(worker), Some(now)) = (self.worker.clone(), now_ms()) else {
            return None;
        };
        worker.metrics.flush();
        worker
            .keys
            .borrow_mut()
            .sync(&worker.engine.config, &worker.metrics, now);
        for (i, p) in worker.engine.config.providers.iter().enumerate() {
            if !matches!(p.keys, KeySource::Remote(_))
                || self.pending.values().any(|(v, _)| *v == i)
            {
                continue;
            }
            let Some(shared) = worker.keys.borrow().shared_keys(i).cloned() else {
                continue;
            };
            if !JwksMeta::fetch_due(read_meta(&shared.meta).as_ref(), now) {
                continue;
            }
            if let Some((token, lease)) = jwks::start(&worker, i, now, false) {
                self.pending.insert(token, (i, lease));
            }
        }
        self.adjust_tick();
        Some((worker, now))
    }

    /// The answer to one of this root's fetches (`None` when the call is not one of its own).
    /// Returns the worker and the time, as [`Root::on_tick`].
    pub fn on_http_call_response(&mut self, answer: &Answer) -> Option<(Rc<Worker>, u64)> {
        let worker = self.worker.clone()?;
        let (index, lease) = self
            .pending
            .remove(&answer.token)
            .or_else(|| worker.orphans.borrow_mut().remove(&answer.token))?;
        let Some(now) = now_ms() else {
            jwks::abandon(&worker, index, lease);
            return None;
        };
        jwks::finish(&worker, index, lease, answer, now);
        self.adjust_tick();
        Some((worker, now))
    }

    /// Sets the timer for what the worker needs now (also after waiting requests were retried).
    pub fn adjust_tick(&mut self) {
        let Some(worker) = &self.worker else { return };
        let has_remote = worker
            .engine
            .config
            .providers
            .iter()
            .any(|p| matches!(p.keys, KeySource::Remote(_)));
        let want = if !worker.waiting.borrow().is_empty() {
            WAIT_TICK_MS
        } else if !has_remote || worker.keys.borrow().all_loaded() {
            SLOW_TICK_MS
        } else {
            FAST_TICK_MS
        };
        // With a fleet service, the timer also ends fleet waits Envoy never ends (see
        // `dispatch::expire_fleet_calls`): ticks close enough to bound them.
        let has_fleet =
            (worker.engine.config.rate_limits.as_ref()).is_some_and(|rl| rl.fleet.is_some());
        let want = if has_fleet {
            want.min(FLEET_TICK_MS)
        } else {
            want
        };
        if want != self.tick_ms && abi::set_tick_period_ms(want).is_ok() {
            self.tick_ms = want;
        }
    }
}
