//! What the host lends the core for one request, and what the core reports back for metrics.

use std::cell::RefCell;

use crate::jwt::cache::TokenCache;
use crate::jwt::crypto::HostCrypto;
use crate::jwt::verify::KeyLookup;
use crate::ratelimit::store::BucketStore;

/// What the host needs besides the request: keys, the bucket store, the clock, and optionally
/// host crypto and this worker's verified-token cache.
pub struct Inputs<'a> {
    pub keys: &'a dyn KeyLookup,
    pub buckets: &'a dyn BucketStore,
    pub crypto: Option<&'a dyn HostCrypto>,
    pub cache: Option<&'a RefCell<TokenCache>>,
    /// Wall clock, ns since the Unix epoch.
    pub now_ns: u64,
}

/// Things that happened while deciding or settling, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Bucket updates that ran out of CAS attempts.
    pub cas_contention: u32,
    /// Charges that landed on a slot another identity was using.
    pub shared_slots: u32,
    /// The provider whose key set lacked a token's `kid` (a refetch may be due).
    pub key_miss: Option<usize>,
    /// The provider that had no keys for a token (a request may wait for its first keys).
    pub keys_unavailable: Option<usize>,
    /// Tokens found in the verified-token cache.
    pub cache_hits: u32,
    /// Tokens verified from scratch (parse, key, signature), whatever the outcome.
    pub cache_misses: u32,
    /// Tokens refused from the worker's memory of failed tokens, without verification.
    pub failed_replays: u32,
    /// Tokens verified on a trickle credit although their source's failed-auth budget was spent.
    pub budget_trickle: u32,
    /// The provider whose keys verified the request's token (or whose cached verification it
    /// matched), for the `provider` label.
    pub provider: Option<usize>,
    /// How the fleet's rate-limit service call ended.
    pub fleet: Option<crate::ratelimit::fleet::Outcome>,
}
