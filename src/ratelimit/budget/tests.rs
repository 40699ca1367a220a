//! The failed-auth slot with an explicit clock, against the fake compare-and-swap store.

use super::*;
use crate::ratelimit::LimitBy;
use crate::testkit::MemStore;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SEC;

/// 2 failures per minute per slot, at most 2 at once.
fn policy() -> Limit {
    Limit {
        name: "forged".into(),
        requests: 2,
        per_ns: 60 * SEC,
        burst: 2,
        by: LimitBy::SourceIp,
        slots: 1,
    }
}

fn spent(store: &MemStore, fp: u32, at: u64) {
    for _ in 0..2 {
        assert!(record_failure(store, "k", &policy(), fp, at));
    }
}

#[test]
fn the_slot_is_forty_bytes_and_anything_else_reads_fresh() {
    let slot = FailedAuthSlot {
        budget_tat_ns: 1,
        trickle_tat_ns: 2,
        recent: [3, 4, 5, 6, 7, 0xffff_ffff],
    };
    let bytes = slot.encode();
    assert_eq!(bytes.len(), 40);
    assert_eq!(&bytes[..9], &[1, 0, 0, 0, 0, 0, 0, 0, 2]);
    assert_eq!(FailedAuthSlot::decode(&bytes), slot);
    // An empty value (a new key) or the 16-byte bucket layout of an older version.
    assert_eq!(FailedAuthSlot::decode(b""), FailedAuthSlot::default());
    assert_eq!(FailedAuthSlot::decode(&[9; 16]), FailedAuthSlot::default());
}

#[test]
fn failures_list_the_newest_sources_first_without_duplicates() {
    let l = policy();
    let mut s = FailedAuthSlot::default();
    for fp in 1..=8 {
        s = s.with_failure(&l, fp, T0);
    }
    assert_eq!(s.recent, [8, 7, 6, 5, 4, 3], "the oldest two fell out");
    s = s.with_failure(&l, 5, T0);
    assert_eq!(s.recent, [5, 8, 7, 6, 4, 3], "a repeat moves to the front");
    assert!(s.lists(3) && !s.lists(2));
    // The budget took two failures and went no deeper.
    assert_eq!(s.budget_tat_ns, T0 + 60 * SEC);
}

#[test]
fn the_trickle_holds_three_then_one_per_second() {
    let mut s = FailedAuthSlot::default();
    for i in 0..3 {
        s = s
            .take_trickle(T0)
            .unwrap_or_else(|w| panic!("credit {i}: wait {w}"));
    }
    assert_eq!(s.take_trickle(T0), Err(SEC));
    assert_eq!(s.take_trickle(T0 + SEC / 4), Err(3 * SEC / 4));
    let s = s.take_trickle(T0 + SEC).unwrap();
    assert!(s.take_trickle(T0 + SEC).is_err());
}

#[test]
fn fingerprints_are_never_the_empty_place() {
    assert_eq!(fingerprint(0x1234_5678_0000_0000), 0x1234_5678);
    assert_eq!(fingerprint(0x0000_0000_ffff_ffff), 1);
}

#[test]
fn a_spent_budget_defers_new_tokens_from_listed_sources_and_serves_their_retries() {
    let (l, store) = (policy(), MemStore::with_slot("k"));
    let flooder = 11;
    for _ in 0..2 {
        assert_eq!(
            admit(&store, "k", &l, flooder, false, T0),
            Admission::Budget
        );
        assert!(record_failure(&store, "k", &l, flooder, T0));
    }
    // A new token from the flooder's source: refused unchecked, retry in a second.
    let Admission::Deferred { verdict } = admit(&store, "k", &l, flooder, false, T0) else {
        panic!("a spent budget verifies nothing new from a listed source")
    };
    assert!(!verdict.allowed);
    assert_eq!(verdict.retry_after_ns, SEC);
    assert_eq!(verdict.reset_ns, 60 * SEC, "the budget's own reset");
    // The same token again: verified on the trickle, three at once, then one per second.
    for _ in 0..3 {
        assert_eq!(
            admit(&store, "k", &l, flooder, true, T0),
            Admission::Trickle
        );
    }
    let Admission::Deferred { verdict } = admit(&store, "k", &l, flooder, true, T0) else {
        panic!("the trickle is bounded")
    };
    assert_eq!(verdict.retry_after_ns, SEC);
    assert_eq!(
        admit(&store, "k", &l, flooder, true, T0 + SEC),
        Admission::Trickle
    );
    // The budget refills at its own rate (one failure per 30 s): then anything is verified.
    assert_eq!(
        admit(&store, "k", &l, flooder, false, T0 + 30 * SEC),
        Admission::Budget
    );
}

#[test]
fn a_newcomer_on_a_spent_slot_is_verified_not_refused() {
    let (l, store) = (policy(), MemStore::with_slot("k"));
    spent(&store, 11, T0);
    assert!(matches!(
        admit(&store, "k", &l, 11, false, T0),
        Admission::Deferred { .. }
    ));
    assert_eq!(admit(&store, "k", &l, 12, false, T0), Admission::Trickle);
    // Once it failed too, it is listed like the flooder.
    assert!(record_failure(&store, "k", &l, 12, T0));
    assert!(matches!(
        admit(&store, "k", &l, 12, false, T0),
        Admission::Deferred { .. }
    ));
}

#[test]
fn missing_slots_admit_and_lost_races_refuse() {
    let (l, store) = (policy(), MemStore::with_slot("k"));
    assert_eq!(admit(&store, "nope", &l, 1, false, T0), Admission::Budget);
    assert!(!record_failure(&store, "nope", &l, 1, T0));
    spent(&store, 1, T0);
    *store.lose.borrow_mut() = 100;
    let Admission::Contended { verdict } = admit(&store, "k", &l, 2, false, T0) else {
        panic!("every CAS attempt lost")
    };
    assert!(!verdict.allowed && verdict.retry_after_ns == SEC);
    assert!(!record_failure(&store, "k", &l, 2, T0));
    *store.lose.borrow_mut() = 3;
    assert_eq!(admit(&store, "k", &l, 2, false, T0), Admission::Trickle);
}

/// The bound the README states: on one slot, failing tokens are verified at most
/// `burst + rate·t` (budget) `+ 3 + t/1s` (trickle) times, however many sources rotate through
/// it and however they retry.
#[test]
fn signature_checks_per_slot_stay_within_budget_plus_trickle() {
    let (l, store) = (policy(), MemStore::with_slot("k"));
    let seconds = 120;
    let mut checks = 0u64;
    let mut n = 0u32;
    // 50 attempts per 100 ms from 64 rotating sources, half of them retries.
    for tick in 0..seconds * 10 {
        let now = T0 + tick * SEC / 10;
        for _ in 0..50 {
            n += 1;
            let fp = n % 64 + 1;
            let admitted = admit(&store, "k", &l, fp, n.is_multiple_of(2), now);
            if matches!(admitted, Admission::Budget | Admission::Trickle) {
                checks += 1;
                assert!(record_failure(&store, "k", &l, fp, now));
            }
        }
    }
    let bound = 2 + 2 * seconds / 60 + TRICKLE_BURST + seconds;
    assert!(checks <= bound, "{checks} checks, bound {bound}");
    assert!(checks >= seconds, "the trickle runs: {checks}");
}
