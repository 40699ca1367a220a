//! Bucket arithmetic with an explicit clock, and the CAS loop against a fake store.

use super::store::{charge, Charge};
use super::*;
use crate::testkit::MemStore;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SEC;

fn limit(requests: u64, per_s: u64, burst: u64) -> Limit {
    Limit {
        name: "l".into(),
        requests,
        per_ns: per_s * SEC,
        burst,
        by: LimitBy::Identity,
        slots: 8,
    }
}

#[test]
fn burst_then_steady_refill() {
    let l = limit(60, 60, 5); // one per second, five at once
    let mut b = Bucket::default();
    for i in 0..5 {
        let (v, next) = l.charge(b, 1, T0, 1);
        assert!(v.allowed, "request {i}");
        assert_eq!(v.remaining, 4 - i);
        b = next.unwrap();
    }
    let (v, next) = l.charge(b, 1, T0, 1);
    assert!(!v.allowed && next.is_none());
    assert_eq!(v.retry_after_ns, SEC, "next token in one second");
    assert_eq!(v.reset_ns, 5 * SEC);
    let (v, _) = l.charge(b, 1, T0 + SEC - 1, 1);
    assert!(!v.allowed);
    let (v, _) = l.charge(b, 1, T0 + SEC, 1);
    assert!(v.allowed);
}

#[test]
fn cost_weights_and_oversized_costs() {
    let l = limit(10, 1, 10);
    let (v, b) = l.charge(Bucket::default(), 5, T0, 1);
    assert!(v.allowed && v.remaining == 5);
    let (v, b) = l.charge(b.unwrap(), 5, T0, 1);
    assert!(v.allowed && v.remaining == 0);
    let (v, _) = l.charge(b.unwrap(), 1, T0, 1);
    assert!(!v.allowed);
    let (v, _) = l.charge(Bucket::default(), 11, T0, 1);
    assert!(!v.allowed, "a cost above the burst never passes");
}

#[test]
fn clock_going_backwards_grants_nothing() {
    let l = limit(1, 1, 1);
    let (_, b) = l.charge(Bucket::default(), 1, T0, 1);
    let b = b.unwrap();
    for back in [1, SEC, 3600 * SEC] {
        assert!(!l.charge(b, 1, T0 - back, 1).0.allowed);
    }
}

/// Property: in any window of length W, at most burst + W/T requests pass, whatever the arrival
/// pattern (a fixed pseudo-random sequence of gaps and costs).
#[test]
fn never_more_than_burst_plus_refill_in_any_window() {
    let l = limit(50, 10, 7); // T = 0.2 s
    let t = l.per_ns / l.requests;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut b = Bucket::default();
    let mut now = T0;
    let mut admitted: Vec<(u64, u64)> = Vec::new();
    for _ in 0..20_000 {
        now += rand() % (t / 2);
        let cost = 1 + rand() % 3;
        let (v, next) = l.charge(b, cost, now, 1);
        if v.allowed {
            b = next.unwrap();
            admitted.push((now, cost));
        }
    }
    assert!(admitted.len() > 1000);
    for (i, (start, _)) in admitted.iter().enumerate() {
        for window in [t, 10 * t, 100 * t] {
            let used: u64 = admitted[i..]
                .iter()
                .take_while(|(at, _)| *at < start + window)
                .map(|(_, c)| c)
                .sum();
            let bound = l.burst + window / t;
            assert!(used <= bound, "{used} > {bound} in a window of {window} ns");
        }
    }
}

#[test]
fn encoding_round_trips_and_garbage_reads_as_full() {
    let b = Bucket {
        tat_ns: T0,
        owner: 42,
    };
    assert_eq!(Bucket::decode(&b.encode()), b);
    assert_eq!(Bucket::decode(b""), Bucket::default());
    assert_eq!(Bucket::decode(b"12345"), Bucket::default());
}

#[test]
fn cas_loop_retries_then_reports_contention() {
    let l = limit(10, 1, 10);
    let store = MemStore::with_slot("k");
    *store.lose.borrow_mut() = 3;
    assert!(
        matches!(charge(&store, "k", &l, 1, T0, 7), Charge::Done { verdict, .. } if verdict.allowed)
    );
    *store.lose.borrow_mut() = 100;
    assert_eq!(charge(&store, "k", &l, 1, T0, 7), Charge::Contended);
    assert_eq!(charge(&store, "missing", &l, 1, T0, 7), Charge::Contended);
}

#[test]
fn colliding_identities_share_a_bucket_and_cannot_refill_it() {
    let l = limit(2, 60, 2);
    let store = MemStore::with_slot("k");
    let victim = 1;
    let attacker = 2;
    for _ in 0..2 {
        assert!(
            matches!(charge(&store, "k", &l, 1, T0, victim), Charge::Done { verdict, .. } if verdict.allowed)
        );
    }
    // The attacker's requests land on the victim's exhausted slot: denied, flagged as shared,
    // and the victim's bucket stays exhausted.
    match charge(&store, "k", &l, 1, T0, attacker) {
        Charge::Done { verdict, shared } => assert!(!verdict.allowed && shared),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(charge(&store, "k", &l, 1, T0 + 1, victim), Charge::Done { verdict, .. } if !verdict.allowed)
    );
}

/// Known answers from an independent SipHash-2-4 (the reference algorithm written in Python;
/// it reproduces the SipHash paper's vector below).
#[test]
fn identity_hash_is_keyed_siphash_2_4() {
    let key: [u8; 16] = std::array::from_fn(|i| i as u8);
    // The paper's (Aumasson & Bernstein, appendix A) vector: key 00..0f, message 00..0e.
    let message: String = (0u8..15).map(char::from).collect();
    assert_eq!(identity_hash(&key, &message), 0xa129_ca61_49be_45e5);
    assert_eq!(identity_hash(&key, ""), 0x726f_db47_dd0e_0e31);
    assert_eq!(identity_hash(&key, "ip:10.0.0.1"), 0xe163_b5df_1689_b085);
    assert_eq!(
        identity_hash(&[0; 16], "ip:127.0.0.1"),
        0x7000_7730_aa64_bb6f
    );
    // Another secret, another slot choice.
    assert_ne!(
        identity_hash(&[0; 16], "ip:10.0.0.1"),
        identity_hash(&key, "ip:10.0.0.1")
    );
}

/// The JWKS key names keep what the deprecated `std::hash::SipHasher` gave them.
#[test]
fn stable_hash_matches_the_std_siphasher_it_replaces() {
    use std::hash::{Hash, Hasher};
    for text in ["", "https://idp.example.com|http://idp/jwks|idp", "é"] {
        #[allow(deprecated)]
        let mut old =
            std::hash::SipHasher::new_with_keys(0x6d65_7368_6775_6172, 0x7261_7465_6c69_6d74);
        text.hash(&mut old);
        assert_eq!(stable_hash(text), old.finish(), "{text}");
    }
}

#[test]
fn identity_hashes_are_stable_and_keys_bounded() {
    // Known answer from the independent SipHash-2-4 above.
    assert_eq!(identity_hash(&[1; 16], "sub:alice"), 0x5231_74b8_cd70_a50c);
    assert_ne!(
        identity_hash(&[1; 16], "sub:alice"),
        identity_hash(&[1; 16], "sub:alicf")
    );
    let l = limit(1, 1, 1);
    let keys: std::collections::HashSet<String> = (0..10_000)
        .map(|i| {
            let hash = identity_hash(&[1; 16], &format!("ip:{i}"));
            slot_name(&slot_prefix("p", SlotKind::Bucket, &l), slot_of(&l, hash))
        })
        .collect();
    assert_eq!(keys.len(), 8, "10,000 identities, 8 slots");
    assert!(keys.iter().all(|k| k.starts_with("meshguard/p/rl/l/")));
}
