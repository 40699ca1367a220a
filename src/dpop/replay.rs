//! The `jti` replay cache of one proxy, shared by all its workers through the CAS store
//! ([`BucketStore`]: Envoy shared data in the host).
//!
//! Shared data has no delete, and a CAS write to a key that does not exist always succeeds (two
//! workers could both "create" it), so the structure is fixed: `shards` keys, all created at
//! configure time, each holding at most `entries` records of (64-bit keyed hash of jkt+jti,
//! expiry second). Recording a proof reads its shard, drops expired records, refuses a hash
//! that is already there (a replay), refuses when the shard is still full, and writes back with
//! CAS, re-reading on a lost race a bounded number of times.
//!
//! When a proof cannot be recorded the caller **fails closed**: a proof that is not recorded
//! could be replayed. [`ReplayError::Full`] and [`ReplayError::Contended`] are kept apart from
//! [`ReplayError::Replayed`] so the answer can blame the proxy (503, retry) and not the client,
//! and so a full cache shows in its own metric: the cure is more shards or a shorter window,
//! not a nonce (a nonce does not make a proof take less room).
//!
//! Protection is per proxy: another replica has its own cache. Across a fleet a short window
//! (`proof_max_age_seconds`) bounds how long a stolen proof is usable, and nonces (issued per proxy,
//! valid for one or two time steps) narrow it further.

use crate::ratelimit::store::{BucketStore, MAX_CAS_ATTEMPTS};
use crate::ratelimit::{identity_hash, SlotSecret};

/// Bytes of one record: hash (u64 LE) and expiry (u32 LE, seconds since the epoch).
pub const RECORD_BYTES: usize = 12;
/// Most shards (shared-data keys) one cache may have.
pub const MAX_SHARDS: u32 = 4096;
/// Most records one shard may hold: a read copies the whole shard (at most 3 KiB).
pub const MAX_ENTRIES: u16 = 256;

/// Why a proof was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("DPoP proof jti was already used")]
    Replayed,
    #[error("DPoP replay cache shard is full")]
    Full,
    #[error("DPoP replay cache shard is contended")]
    Contended,
    #[error("DPoP replay cache shard does not exist")]
    Unavailable,
}

/// The cache's layout: where its shards live and how big they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCache {
    prefix: String,
    shards: u32,
    entries: usize,
}

/// The record id of a proof: SipHash-2-4 keyed with the proxy's secret over `jkt`, a space
/// and `jti` (a thumbprint has no space), so clients cannot aim at a shard or a collision.
pub fn proof_hash(secret: &SlotSecret, jkt: &str, jti: &str) -> u64 {
    identity_hash(secret, &format!("{jkt} {jti}"))
}

impl ReplayCache {
    /// `shards` slots named `<prefix>.<n>`, each holding up to `entries` proofs (both clamped to
    /// `1..=MAX_*`).
    pub fn new(prefix: &str, shards: u32, entries: u16) -> ReplayCache {
        ReplayCache {
            prefix: prefix.to_string(),
            shards: shards.clamp(1, MAX_SHARDS),
            entries: usize::from(entries.clamp(1, MAX_ENTRIES)),
        }
    }

    /// Every shard's slot name: the host creates them (empty) at configure time.
    pub fn slot_names(&self) -> Vec<String> {
        (0..self.shards).map(|n| self.slot_name(n)).collect()
    }

    fn slot_name(&self, shard: u32) -> String {
        format!("{}.{shard}", self.prefix)
    }

    /// The shard of a proof hash (its high half, so the record's bits stay independent).
    fn shard_of(&self, hash: u64) -> u32 {
        u32::try_from((hash >> 32) % u64::from(self.shards)).unwrap_or(0)
    }

    /// Records the proof `hash` until `expires` (inclusive, seconds), at `now`.
    pub fn record(
        &self,
        store: &dyn BucketStore,
        hash: u64,
        expires: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        let slot = self.slot_name(self.shard_of(hash));
        let expires = u32::try_from(expires).unwrap_or(u32::MAX);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((bytes, cas)) = store.get(&slot) else {
                return Err(ReplayError::Unavailable);
            };
            let mut live: Vec<(u64, u32)> = decode(&bytes)
                .filter(|(_, exp)| u64::from(*exp) >= now)
                .collect();
            if live.iter().any(|(h, _)| *h == hash) {
                return Err(ReplayError::Replayed);
            }
            if live.len() >= self.entries {
                return Err(ReplayError::Full);
            }
            live.push((hash, expires));
            if store.set(&slot, &encode(&live), cas).is_ok() {
                return Ok(());
            }
        }
        Err(ReplayError::Contended)
    }
}

fn decode(bytes: &[u8]) -> impl Iterator<Item = (u64, u32)> + '_ {
    bytes.chunks_exact(RECORD_BYTES).map(|r| {
        let mut h = [0u8; 8];
        let mut e = [0u8; 4];
        h.copy_from_slice(r.get(..8).unwrap_or(&[0; 8]));
        e.copy_from_slice(r.get(8..RECORD_BYTES).unwrap_or(&[0; 4]));
        (u64::from_le_bytes(h), u32::from_le_bytes(e))
    })
}

fn encode(records: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * RECORD_BYTES);
    for (h, e) in records {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
