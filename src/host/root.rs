//! Root context (one per worker VM): parses the configuration once, owns the worker's keys, and
//! runs the JWKS timer. Only the worker holding the shared lease fetches a provider's JWKS; the
//! result goes to shared data, where every worker picks it up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::config::{Config, KeySource};
use crate::engine::Engine;
use crate::jwks_sync::{JwksMeta, Lease};
use crate::jwt::cache::TokenCache;

use super::buckets::create_slots;
use super::crypto::BoringSsl;
use super::filter::Filter;
use super::keys::{read_meta, WorkerKeys};
use super::metrics::Metrics;
use super::{jwks, log, now_ms, set_log_level};

/// Tick while some remote provider has no keys yet, and once all have.
const FAST_TICK: Duration = Duration::from_millis(200);
const SLOW_TICK: Duration = Duration::from_millis(1000);

/// What every HTTP context of this worker shares.
pub struct Worker {
    pub engine: Engine,
    pub keys: RefCell<WorkerKeys>,
    pub metrics: Metrics,
    pub cache: RefCell<TokenCache>,
    pub crypto: BoringSsl,
}

#[derive(Default)]
pub struct Root {
    worker: Option<Rc<Worker>>,
    /// In-flight JWKS fetches: call token → provider index and the lease taken for it.
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
        let now = now_ms(self.get_current_time());
        jwks::finish(self, &worker, index, lease, body_size, now);
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
        set_log_level(config.log_level);
        let plugin = self
            .get_property(vec!["plugin_name"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let keys = WorkerKeys::new(&config, &plugin);
        for i in 0..config.providers.len() {
            if let Some(shared) = keys.shared_keys(i) {
                jwks::create_keys(shared);
            }
        }
        let metrics = Metrics::define(&plugin, &config);
        let engine = Engine::new(config, &plugin, [0u8; 16]); // TODO(host): per-proxy secret
        create_slots(&engine.slot_keys());
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
        });
        let now = now_ms(self.get_current_time());
        worker
            .keys
            .borrow_mut()
            .sync(&worker.engine.config, &worker.metrics, now);
        self.worker = Some(worker);
        self.tick = None;
        self.adjust_tick();
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_ms(self.get_current_time());
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
            if let Some((token, lease)) = jwks::start(self, &worker, i, now, false) {
                self.pending.insert(token, (i, lease));
            }
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
