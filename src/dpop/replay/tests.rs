//! The replay cache against the fake CAS store, with other workers' writes injected between a
//! read and its write.

use std::cell::RefCell;

use super::*;
use crate::ratelimit::store::CasMismatch;
use crate::testkit::MemStore;

const NOW: u64 = 1_767_225_600;

fn one_shard(entries: u16) -> (ReplayCache, MemStore) {
    let cache = ReplayCache::new("mg.dpop.p", 1, entries);
    let store = MemStore::with_slots(cache.slot_names());
    (cache, store)
}

#[test]
fn proof_hash_is_keyed_siphash_2_4_of_jkt_and_jti() {
    // From an independent SipHash-2-4 in Python (checked against the paper's vector), key
    // 00..0f, message "<RFC 9449 example jkt> <its jti>".
    let key: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(
        proof_hash(
            &key,
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
            "-BwC3ESc6acc2lTc"
        ),
        0x651e_b4a1_ae12_9a3c
    );
}

#[test]
fn slot_names_are_fixed_and_bounded() {
    let cache = ReplayCache::new("mg.dpop.p", 3, 8);
    assert_eq!(
        cache.slot_names(),
        ["mg.dpop.p.0", "mg.dpop.p.1", "mg.dpop.p.2"]
    );
    assert_eq!(ReplayCache::new("x", 0, 0).slot_names(), ["x.0"]);
    assert_eq!(
        ReplayCache::new("x", u32::MAX, 1).slot_names().len(),
        MAX_SHARDS as usize
    );
}

#[test]
fn a_proof_is_accepted_once_within_its_window() {
    let (cache, store) = one_shard(4);
    assert_eq!(cache.record(&store, 7, NOW + 65, NOW), Ok(()));
    assert_eq!(
        cache.record(&store, 7, NOW + 65, NOW + 65),
        Err(ReplayError::Replayed)
    );
    // Past its expiry the record is dropped (the proof itself is too old by then).
    assert_eq!(cache.record(&store, 7, NOW + 200, NOW + 66), Ok(()));
    // Stored layout: one record, hash then expiry, little-endian.
    let (bytes, _) = crate::ratelimit::store::BucketStore::get(&store, "mg.dpop.p.0").unwrap();
    let mut want = 7u64.to_le_bytes().to_vec();
    want.extend_from_slice(&u32::try_from(NOW + 200).unwrap().to_le_bytes());
    assert_eq!(bytes, want);
}

#[test]
fn a_full_shard_refuses_until_records_expire() {
    let (cache, store) = one_shard(2);
    assert_eq!(cache.record(&store, 1, NOW + 10, NOW), Ok(()));
    assert_eq!(cache.record(&store, 2, NOW + 20, NOW), Ok(()));
    assert_eq!(
        cache.record(&store, 3, NOW + 20, NOW),
        Err(ReplayError::Full)
    );
    // A replay is still named a replay when the shard is full.
    assert_eq!(
        cache.record(&store, 2, NOW + 20, NOW),
        Err(ReplayError::Replayed)
    );
    assert_eq!(
        cache.record(&store, 3, NOW + 20, NOW + 11),
        Ok(()),
        "1 expired"
    );
}

#[test]
fn shards_spread_proofs_by_the_hash_high_half() {
    let cache = ReplayCache::new("s", 4, 1);
    let store = MemStore::with_slots(cache.slot_names());
    // High halves 0..3: one per shard, so four single-record shards all take one.
    for shard in 0..4u64 {
        assert_eq!(cache.record(&store, shard << 32 | 9, NOW + 5, NOW), Ok(()));
    }
    assert_eq!(
        cache.record(&store, 9, NOW + 5, NOW),
        Err(ReplayError::Replayed)
    );
    assert_eq!(
        cache.record(&store, 4 << 32, NOW + 5, NOW),
        Err(ReplayError::Full)
    );
}

#[test]
fn a_missing_shard_is_unavailable_not_created() {
    let cache = ReplayCache::new("mg.dpop.p", 1, 4);
    let store = MemStore::with_slot("something else");
    assert_eq!(
        cache.record(&store, 1, NOW + 5, NOW),
        Err(ReplayError::Unavailable)
    );
}

#[test]
fn endless_lost_races_are_contention() {
    let (cache, store) = one_shard(4);
    *store.lose.borrow_mut() = MAX_CAS_ATTEMPTS;
    assert_eq!(
        cache.record(&store, 1, NOW + 5, NOW),
        Err(ReplayError::Contended)
    );
    *store.lose.borrow_mut() = MAX_CAS_ATTEMPTS - 1;
    assert_eq!(
        cache.record(&store, 1, NOW + 5, NOW),
        Ok(()),
        "the last try wins"
    );
}

/// A store in which another worker records `their` proof between our read and our first write.
struct Racing<'a> {
    inner: MemStore,
    cache: &'a ReplayCache,
    their: RefCell<Option<u64>>,
}

impl crate::ratelimit::store::BucketStore for Racing<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        if let Some(hash) = self.their.borrow_mut().take() {
            let theirs = self.cache.record(&self.inner, hash, NOW + 65, NOW);
            assert_eq!(theirs, Ok(()), "the other worker records first");
        }
        self.inner.set(key, value, cas)
    }
}

fn racing(cache: &ReplayCache, their: u64) -> Racing<'_> {
    Racing {
        inner: MemStore::with_slots(cache.slot_names()),
        cache,
        their: RefCell::new(Some(their)),
    }
}

#[test]
fn a_lost_race_keeps_both_proofs() {
    // Fails if the CAS is not honoured: a blind write would erase the other worker's record,
    // and its proof could then be replayed.
    let cache = ReplayCache::new("mg.dpop.p", 1, 4);
    let store = racing(&cache, 2);
    assert_eq!(cache.record(&store, 1, NOW + 65, NOW), Ok(()));
    assert_eq!(
        cache.record(&store, 2, NOW + 65, NOW),
        Err(ReplayError::Replayed)
    );
    assert_eq!(
        cache.record(&store, 1, NOW + 65, NOW),
        Err(ReplayError::Replayed)
    );
}

#[test]
fn the_same_proof_on_two_workers_is_accepted_once() {
    let cache = ReplayCache::new("mg.dpop.p", 1, 4);
    let store = racing(&cache, 1);
    assert_eq!(
        cache.record(&store, 1, NOW + 65, NOW),
        Err(ReplayError::Replayed),
        "the other worker's write went first"
    );
}

#[test]
fn a_race_that_fills_the_shard_is_full() {
    let cache = ReplayCache::new("mg.dpop.p", 1, 1);
    let store = racing(&cache, 2);
    assert_eq!(
        cache.record(&store, 1, NOW + 65, NOW),
        Err(ReplayError::Full)
    );
}

#[test]
fn a_corrupt_shard_value_is_read_as_whole_records() {
    let (cache, store) = one_shard(4);
    let mut junk = 5u64.to_le_bytes().to_vec();
    junk.extend_from_slice(&u32::MAX.to_le_bytes());
    junk.extend_from_slice(&[1, 2, 3]); // a partial record is ignored
    crate::ratelimit::store::BucketStore::set(&store, "mg.dpop.p.0", &junk, 1).unwrap();
    assert_eq!(
        cache.record(&store, 5, NOW + 5, NOW),
        Err(ReplayError::Replayed)
    );
    assert_eq!(cache.record(&store, 6, NOW + 5, NOW), Ok(()));
}
