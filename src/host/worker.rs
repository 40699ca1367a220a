//! What every HTTP context of one plugin configuration on one worker shares: the engine, the
//! worker's keys, metrics, token cache, host crypto, and the requests waiting for first keys.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::engine::Engine;
use crate::jwks_sync::Lease;
use crate::jwt::cache::TokenCache;
use crate::ratelimit::fleet::{LogBudget, Waits};

use super::crypto::BoringSsl;
use super::keys::WorkerKeys;
use super::metrics::Metrics;

/// At most this many requests per worker wait for first keys; more are answered at once.
pub const MAX_WAITING: usize = 1024;

/// At most this many kid-miss fetches per worker outlive their request (each takes the
/// provider's refetch slot, so there are few).
pub const MAX_ORPHANS: usize = 64;

/// What every HTTP context of this configuration on this worker shares.
pub struct Worker {
    pub engine: Engine,
    pub keys: RefCell<WorkerKeys>,
    pub metrics: Metrics,
    pub cache: RefCell<TokenCache>,
    pub crypto: BoringSsl,
    /// HTTP contexts waiting for a provider's first keys.
    pub waiting: RefCell<Vec<u32>>,
    /// Kid-miss fetches whose request went away: call token → provider and lease. The root
    /// finishes them when their answer arrives.
    pub orphans: RefCell<HashMap<u32, (usize, Lease)>>,
    /// Fleet calls (gRPC) requests wait for: call token → HTTP context and the deadline (ms
    /// since the epoch) after which the root's timer ends the wait if Envoy never reported the
    /// call's end. The host delivers the answer to the root context, which routes it with this.
    /// One entry per waiting request; the request removes it when it takes its answer.
    pub fleet_calls: RefCell<Waits>,
    /// Bounds the Warn lines about failed fleet calls.
    pub fleet_log: RefCell<LogBudget>,
}
