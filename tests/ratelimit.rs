//! Rate limiting through real Envoy with 4 workers: exact across workers, the seed-003 limits,
//! bounded memory under 100,000 identities, and the forged-token guard.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Setup {
    signer: Arc<Signer>,
    _idp: JwksServer,
    _upstream: TestServer,
    envoy: Envoy,
}

fn setup(rate_limits: Value, routes: Value) -> Setup {
    let signer = Signer::ed25519("ed-1");
    let jwks_doc = jwks(&[&signer]);
    let plugin = json!({
        "logLevel": "debug",
        "rolesClaim": "role",
        "providers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks_doc}],
        "rateLimits": rate_limits,
        "routes": routes
    });
    let Stack {
        envoy,
        idp,
        upstream,
        ..
    } = Stack::start("rl", JwksServer::start(jwks_doc.clone()), &plugin, false, 4);
    Setup {
        signer: Arc::new(signer),
        _idp: idp,
        _upstream: upstream,
        envoy,
    }
}

impl Setup {
    fn token(&self, extra: Value) -> String {
        self.signer.sign(&claims(extra))
    }
}

#[test]
fn one_identity_from_many_parallel_clients_gets_exactly_the_capacity() {
    // 50 per hour: one token every 72 s, so the test's few seconds add at most what we compute.
    let s = setup(
        json!({"identity": ["sub"], "policies": {"hourly": {"requests": 50, "per": "1h"}}}),
        json!([{"match": {"pathPrefixes": ["/"]}, "rateLimit": [{"policy": "hourly"}]}]),
    );
    let auth = format!("Bearer {}", s.token(json!({"sub": "shared-identity"})));
    let port = s.envoy.port("plain");
    let admitted = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (auth, admitted) = (auth.clone(), admitted.clone());
            thread::spawn(move || {
                let mut c = KeepAlive::new(port);
                for _ in 0..20 {
                    let r = c.get("/api", &[("authorization", &auth)]);
                    match r.status {
                        200 => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        429 => assert!(r.header("retry-after").is_some()),
                        other => panic!("unexpected {other}: {}", r.body),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let refill = (elapsed / 72.0).floor() as usize;
    let got = admitted.load(Ordering::SeqCst);
    assert!(
        got >= 50 && got <= 50 + refill,
        "320 requests from 16 connections over 4 workers: admitted {got}, capacity 50 + refill {refill} ({elapsed:.1}s)"
    );
    let stats = s.envoy.stats();
    assert!(
        stats.contains("meshguard.meshguard.cas_contention: 0"),
        "no contention fallback was needed"
    );
    let log = s.envoy.log_text();
    let threads: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("meshguard: allow") || l.contains("\"meshguard\":\"deny\""))
        .filter_map(|l| l.split("][").nth(1))
        .collect();
    assert!(
        threads.len() >= 2,
        "requests served by several workers: {threads:?}"
    );
}

#[test]
fn seed_003_limits_through_envoy() {
    let s = setup(
        json!({
            "identity": ["clientId", "sub"],
            "policies": {
                "login": {"requests": 5, "per": "15m", "key": "sourceIp"},
                "free": {"requests": 60, "per": "1m"},
                "paid": {"requests": 600, "per": "1m"},
                "otp": {"requests": 2, "per": "4s", "key": "sourceIp"}
            },
            "exempt": {"roles": ["admin"]},
            "responseHeaders": true
        }),
        json!([
            {"name": "login", "match": {"paths": ["/login"]}, "token": "none", "rateLimit": [{"policy": "login"}]},
            {"name": "otp", "match": {"paths": ["/otp"]}, "token": "none", "rateLimit": [{"policy": "otp"}]},
            {"name": "api", "match": {"pathPrefixes": ["/"]},
             "rateLimit": [{"tier": {"claim": "plan", "policies": {"free": "free", "paid": "paid"}, "default": "free"}}]}
        ]),
    );
    let mut c = KeepAlive::new(s.envoy.port("plain"));

    // 5 logins per 15 minutes per IP; the 6th gets 429 with Retry-After and the headers.
    for i in 0..5 {
        let r = c.get("/login", &[]);
        assert_eq!(r.status, 200, "login {i}");
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((4 - i).to_string().as_str())
        );
    }
    let r = c.get("/login", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("180"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"login\";q=5;w=900"));
    assert_eq!(
        r.header("ratelimit"),
        Some("\"login\";r=0;t=180"),
        "same as Retry-After"
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("180"));
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("www-authenticate"), None);

    // Tiers by the plan claim; admin exempt; users isolated from each other.
    // Admitted requests out of `n`, and the most refill the elapsed time allows at `per_sec`.
    let count = |c: &mut KeepAlive, n: usize, token: &str, per_sec: f64| {
        let auth = format!("Bearer {token}");
        let start = Instant::now();
        let ok = (0..n)
            .filter(|_| c.get("/items", &[("authorization", &auth)]).status == 200)
            .count();
        (
            ok,
            (start.elapsed().as_secs_f64() * per_sec).ceil() as usize,
        )
    };
    let free = s.token(json!({"sub": "free-user", "plan": "free"}));
    let paid = s.token(json!({"sub": "paid-user", "plan": "paid"}));
    let admin = s.token(json!({"sub": "root", "role": "admin", "plan": "free"}));
    let other_free = s.token(json!({"sub": "other-free-user", "plan": "free"}));
    let (ok, refill) = count(&mut c, 70, &free, 1.0);
    assert!(
        ok >= 60 && ok <= 60 + refill,
        "free: {ok} (refill {refill})"
    );
    let (ok, _) = count(&mut c, 10, &other_free, 1.0);
    assert_eq!(ok, 10, "another free user is not affected");
    let (ok, refill) = count(&mut c, 700, &paid, 10.0);
    assert!(
        ok >= 600 && ok <= 600 + refill && ok < 700,
        "paid: {ok} (refill {refill})"
    );
    let (ok, _) = count(&mut c, 700, &admin, 0.0);
    assert_eq!(ok, 700, "admin is exempt");

    // Access returns after Retry-After (a short policy, so the test stays short).
    assert_eq!(c.get("/otp", &[]).status, 200);
    assert_eq!(c.get("/otp", &[]).status, 200);
    let r = c.get("/otp", &[]);
    assert_eq!(r.status, 429);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    thread::sleep(Duration::from_secs(wait));
    assert_eq!(
        c.get("/otp", &[]).status,
        200,
        "allowed again after Retry-After"
    );
}

#[test]
fn a_hundred_thousand_identities_stay_within_the_slot_bound_and_cannot_refill_a_victim() {
    let s = setup(
        json!({"identity": ["sub"], "policies": {"per-user": {"requests": 3, "per": "1h", "slots": 4096}}}),
        json!([{"match": {"pathPrefixes": ["/"]}, "rateLimit": [{"policy": "per-user"}]}]),
    );
    let port = s.envoy.port("plain");
    let mut c = KeepAlive::new(port);
    let victim = format!("Bearer {}", s.token(json!({"sub": "victim"})));
    for _ in 0..3 {
        assert_eq!(c.get("/v", &[("authorization", &victim)]).status, 200);
    }
    assert_eq!(c.get("/v", &[("authorization", &victim)]).status, 429);

    // Warm up Envoy's own buffers before measuring.
    for i in 0..2000 {
        let t = format!("Bearer {}", s.token(json!({"sub": format!("warm-{i}")})));
        c.get("/w", &[("authorization", &t)]);
    }
    let before = envoy_allocated(&s.envoy);

    let total = 100_000;
    let per_thread = total / 8;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let signer = s.signer.clone();
            thread::spawn(move || {
                let mut c = KeepAlive::new(port);
                let mut statuses = [0usize; 2];
                for i in 0..per_thread {
                    let token = signer.sign(&claims(json!({"sub": format!("user-{t}-{i}")})));
                    let r = c.get("/x", &[("authorization", &format!("Bearer {token}"))]);
                    statuses[usize::from(r.status == 429)] += 1;
                    assert!(r.status == 200 || r.status == 429, "{}", r.status);
                }
                statuses
            })
        })
        .collect();
    let mut allowed = 0;
    let mut limited = 0;
    for t in threads {
        let [a, l] = t.join().unwrap();
        allowed += a;
        limited += l;
    }
    let after = envoy_allocated(&s.envoy);
    let growth = after.saturating_sub(before);
    eprintln!("{total} identities: {allowed} allowed, {limited} limited; heap {before} -> {after} (+{growth} bytes)");
    assert_eq!(allowed + limited, total);
    // Slots are created at start: traffic adds no shared-data keys. The allowance covers Envoy's
    // own per-connection and stats growth, and is far below what 100,000 keys would take.
    assert!(growth < 4 * 1024 * 1024, "heap grew by {growth} bytes");
    assert_eq!(
        c.get("/v", &[("authorization", &victim)]).status,
        429,
        "the victim's bucket stays exhausted"
    );
}

#[test]
fn a_forged_token_flood_gets_429_within_the_failed_auth_budget() {
    let s = setup(
        json!({
            "policies": {
                "api": {"requests": 1000, "per": "1s"},
                "forged": {"requests": 20, "per": "1m", "key": "sourceIp"}
            },
            "failedAuth": {"policy": "forged"}
        }),
        json!([{"match": {"pathPrefixes": ["/"]}, "rateLimit": [{"policy": "api"}]}]),
    );
    let forger = Signer::ed25519("ed-1");
    let mut c = KeepAlive::new(s.envoy.port("plain"));
    let mut first_429 = None;
    let mut unauthorized = 0;
    for i in 0..1000 {
        let token = forger.sign(&claims(json!({"sub": format!("forged-{i}")})));
        let r = c.get("/x", &[("authorization", &format!("Bearer {token}"))]);
        match r.status {
            401 => unauthorized += 1,
            429 => {
                first_429.get_or_insert(i);
                assert_eq!(
                    r.json()["error_description"],
                    "too many failed authentications"
                );
                assert!(r.header("retry-after").is_some());
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        first_429,
        Some(20),
        "the 21st forged token is refused before verification"
    );
    assert_eq!(unauthorized, 20);
}
