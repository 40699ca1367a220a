//! Charging a bucket in a compare-and-swap store, with a bounded retry loop.

use super::{Bucket, Limit, Verdict};

/// A store of named slots with compare-and-swap: Envoy shared data in the host, a map in tests.
pub trait BucketStore {
    /// The slot's value and its CAS token; `None` when no slot has that name.
    fn get(&self, slot: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` if the slot's CAS token is still `cas`.
    fn set(&self, slot: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch>;
}

/// Another worker wrote first (or the store refused the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// A slot's value and CAS token as read (by the pure phase, to be written by the settling one).
pub type Seen = (Vec<u8>, u32);

/// CAS attempts before giving up on one charge.
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// The result of one charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Done {
        verdict: Verdict,
        /// The slot was still in use by another identity (a hash collision): the bucket is shared.
        shared: bool,
    },
    /// Every CAS attempt lost, or the slot does not exist: the caller applies `onContention`.
    Contended,
}

/// Charges `cost` to the bucket in slot `slot` for identity hash `owner`.
pub fn charge(
    store: &dyn BucketStore,
    slot: &str,
    limit: &Limit,
    cost: u64,
    now_ns: u64,
    owner: u64,
) -> Charge {
    charge_seen(store, slot, limit, cost, now_ns, owner, None)
}

/// [`charge`], whose first attempt starts from `seen` (the slot as read earlier, when it was
/// read: one host read fewer) instead of reading the slot again.
pub fn charge_seen(
    store: &dyn BucketStore,
    slot: &str,
    limit: &Limit,
    cost: u64,
    now_ns: u64,
    owner: u64,
    mut seen: Option<Seen>,
) -> Charge {
    for _ in 0..MAX_CAS_ATTEMPTS {
        // Slots are created at configure time; a missing one cannot be updated atomically.
        let Some((bytes, cas)) = seen.take().or_else(|| store.get(slot)) else {
            return Charge::Contended;
        };
        let bucket = Bucket::decode(&bytes);
        let shared = bucket.owner != owner && bucket.owner != 0 && bucket.tat_ns > now_ns;
        let (verdict, next) = limit.charge(bucket, cost, now_ns, owner);
        let Some(next) = next else {
            return Charge::Done { verdict, shared };
        };
        if store.set(slot, &next.encode(), cas).is_ok() {
            return Charge::Done { verdict, shared };
        }
    }
    Charge::Contended
}

/// Reads a bucket without charging it: `Some` when it is exhausted.
pub fn peek_exhausted(
    store: &dyn BucketStore,
    slot: &str,
    limit: &Limit,
    now_ns: u64,
) -> Option<Verdict> {
    let (bytes, _) = store.get(slot)?;
    limit.exhausted(Bucket::decode(&bytes), now_ns)
}
