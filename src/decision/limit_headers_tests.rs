//! The 429 headers agree with each other and with the bucket, on a fixed clock. Every expected
//! value is worked out by hand in the comments from the GCRA rule: a policy of 10 requests per
//! 60 s with burst 10 has an emission interval T = 6 s and a capacity of 10·T = 60 s; a request
//! of cost c is admitted at `now` when max(TAT, now) + c·T − now ≤ 60 s.

use super::limit_headers;
use crate::ratelimit::{Bucket, Limit, LimitBy};

const S: u64 = 1_000_000_000;
/// The fixed clock: some time in 2027, in ns.
const NOW: u64 = 1_800_000_000 * S;

fn user() -> Limit {
    Limit {
        name: "user".into(),
        requests: 10,
        per_ns: 60 * S,
        burst: 10,
        by: LimitBy::Identity,
        slots: 1,
    }
}

/// A bucket whose theoretical arrival time is `ahead_ns` past `NOW` (0: full).
fn used(ahead_ns: u64) -> Bucket {
    Bucket {
        tat_ns: NOW + ahead_ns,
        owner: 7,
    }
}

fn headers(bucket: Bucket, cost: u64) -> (bool, Vec<(&'static str, String)>) {
    let limit = user();
    let (v, _) = limit.charge(bucket, cost, NOW, 7);
    (v.allowed, limit_headers(&limit, &v, !v.allowed))
}

fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn allowed_t_is_the_time_until_the_quota_is_full_again() {
    // Full bucket, cost 1: TAT becomes NOW + 6 s; 54 s of capacity left = 9 requests; the
    // bucket is full again 6 s later.
    let (allowed, h) = headers(used(0), 1);
    assert!(allowed);
    assert_eq!(get(&h, "ratelimit"), Some("\"user\";r=9;t=6"));
    assert_eq!(get(&h, "ratelimit-policy"), Some("\"user\";q=10;w=60"));
    assert_eq!(get(&h, "x-ratelimit-remaining"), Some("9"));
    assert_eq!(get(&h, "x-ratelimit-reset"), Some("6"));
    assert_eq!(get(&h, "retry-after"), None, "only on a refusal");

    // 18 s already used, cost 2: TAT becomes NOW + 30 s; 30 s left = 5 requests; full in 30 s.
    let (allowed, h) = headers(used(18 * S), 2);
    assert!(allowed);
    assert_eq!(get(&h, "ratelimit"), Some("\"user\";r=5;t=30"));
    assert_eq!(get(&h, "x-ratelimit-reset"), Some("30"));

    // 0.5 s used, cost 1: full again in 6.5 s, rounded up to 7; 53.5 s left = 8 requests.
    let (_, h) = headers(used(S / 2), 1);
    assert_eq!(get(&h, "ratelimit"), Some("\"user\";r=8;t=7"));
}

#[test]
fn refused_t_retry_after_and_reset_are_the_wait_for_that_cost() {
    // All 10 spent (TAT = NOW + 60 s), cost 1: 66 s > 60 s, admitted after 6 s. (The bucket is
    // full again only after 60 s: the old headers said t=60 beside Retry-After: 6.)
    let (allowed, h) = headers(used(60 * S), 1);
    assert!(!allowed);
    assert_eq!(get(&h, "retry-after"), Some("6"));
    assert_eq!(get(&h, "ratelimit"), Some("\"user\";r=0;t=6"));
    assert_eq!(get(&h, "x-ratelimit-reset"), Some("6"));
    assert_eq!(get(&h, "x-ratelimit-remaining"), Some("0"));

    // 50 s used, cost 3: 50 + 18 = 68 s > 60 s, admitted after 8 s; 10 s left = 1 request.
    let (allowed, h) = headers(used(50 * S), 3);
    assert!(!allowed);
    assert_eq!(get(&h, "retry-after"), Some("8"));
    assert_eq!(get(&h, "ratelimit"), Some("\"user\";r=1;t=8"));
    assert_eq!(get(&h, "x-ratelimit-reset"), Some("8"));

    // 56.5 s used, cost 1: 62.5 s, admitted after 2.5 s: rounded up to 3, never down.
    let (_, h) = headers(used(56 * S + S / 2), 1);
    assert_eq!(get(&h, "retry-after"), Some("3"));
    assert_eq!(get(&h, "ratelimit"), Some("\"user\";r=0;t=3"));

    // 54.2 s used, cost 1: 60.2 s, admitted after 0.2 s: at least 1.
    let (_, h) = headers(used(54 * S + S / 5), 1);
    assert_eq!(get(&h, "retry-after"), Some("1"));
    assert_eq!(get(&h, "ratelimit"), Some("\"user\";r=0;t=1"));
}

#[test]
fn a_refused_request_retried_after_t_seconds_is_admitted_and_not_a_second_before() {
    let limit = user();
    for (ahead, cost) in [
        (60 * S, 1),
        (50 * S, 3),
        (60 * S, 10),
        (56 * S + S / 2, 1),
        (59 * S, 7),
    ] {
        let bucket = used(ahead);
        let (v, _) = limit.charge(bucket, cost, NOW, 7);
        assert!(!v.allowed, "{ahead} {cost}");
        let h = limit_headers(&limit, &v, true);
        let t: u64 = get(&h, "retry-after").unwrap().parse().unwrap();
        assert_eq!(
            get(&h, "ratelimit"),
            Some(&*format!("\"user\";r={};t={t}", v.remaining))
        );
        let at = |secs: u64| limit.charge(bucket, cost, NOW + secs * S, 7).0.allowed;
        assert!(at(t), "admitted after t={t} s ({ahead} {cost})");
        assert!(!at(t - 1), "not admitted after t-1 s ({ahead} {cost})");
    }
}
