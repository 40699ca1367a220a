//! Operations through real Envoy (2 workers): JWKS rotation and kid-miss refetch, a bad day at
//! the IdP, maximum staleness, metrics in `/stats/prometheus`, JSON denial logs without token
//! material, and `meshguard-check` agreeing with Envoy's log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn remote_plugin(extra: Value) -> Value {
    let mut provider = json!({
        "name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
        "jwksUri": format!("http://idp.test{JWKS_PATH}"), "jwksCluster": "idp"
    });
    provider
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"providers": [provider]})
}

struct Setup {
    pki: Pki,
    idp: JwksServer,
    _upstream: TestServer,
    envoy: Envoy,
}

fn setup(jwks_doc: String, plugin: Value) -> Setup {
    let Stack {
        envoy,
        pki,
        idp,
        upstream,
    } = Stack::start("ops", JwksServer::start(jwks_doc), &plugin, false, 2);
    Setup {
        pki,
        idp,
        _upstream: upstream,
        envoy,
    }
}

impl Setup {
    /// A request on a new connection (so both workers get some).
    fn get(&self, token: &str) -> Response {
        Client::new(self.envoy.port("mtls"), &self.pki, None)
            .get("/", &[("authorization", &format!("Bearer {token}"))])
    }
}

#[test]
fn rotated_key_is_picked_up_by_its_first_token_with_one_extra_fetch() {
    let old = Signer::es256("k-old");
    let new = Signer::es256("k-new");
    let s = setup(
        jwks(&[&old]),
        remote_plugin(json!({"jwksRefreshSeconds": 3600})),
    );
    let t_old = old.sign(&claims(json!({})));
    eventually("keys loaded", Duration::from_secs(20), || {
        s.get(&t_old).status == 200
    });
    let before = s.idp.fetches();

    // The IdP rotates: the next token is signed with a key the proxy has never seen.
    s.idp.set(200, jwks(&[&old, &new]));
    let t_new = new.sign(&claims(json!({})));
    let r = s.get(&t_new);
    assert_eq!(
        r.status, 200,
        "the first token with the new kid passes: {}",
        r.body
    );
    assert_eq!(s.idp.fetches(), before + 1, "exactly one extra fetch");
    // Every worker now verifies it, from the shared key set, without fetching again.
    for _ in 0..10 {
        assert_eq!(s.get(&t_new).status, 200);
    }
    assert_eq!(s.idp.fetches(), before + 1);
    assert_eq!(s.envoy.meshguard_stat("jwks.idp.keys_loaded"), 2);
}

#[test]
fn random_unknown_kids_cause_at_most_one_fetch_per_window() {
    let signer = Signer::es256("k1");
    let s = setup(
        jwks(&[&signer]),
        remote_plugin(json!({"jwksRefreshSeconds": 3600, "kidMissRefetchSeconds": 60})),
    );
    let good = signer.sign(&claims(json!({})));
    eventually("keys loaded", Duration::from_secs(20), || {
        s.get(&good).status == 200
    });
    let before = s.idp.fetches();
    for i in 0..100 {
        let bogus = signer.sign_as(
            jsonwebtoken::Algorithm::ES256,
            Some(&format!("bogus-{i}")),
            &claims(json!({})),
        );
        let r = s.get(&bogus);
        assert_eq!(
            (r.status, r.json()["error_description"].as_str()),
            (401, Some("unknown signing key"))
        );
    }
    let extra = s.idp.fetches() - before;
    assert!(
        extra <= 1,
        "{extra} fetches for 100 unknown kids within one 60 s window"
    );
    assert_eq!(
        s.envoy.meshguard_stat("denied.invalid_token.unknown_kid"),
        100
    );
}

#[test]
fn a_bad_day_at_the_idp_keeps_the_old_keys_until_max_staleness() {
    let signer = Signer::es256("k1");
    let doc = jwks(&[&signer]);
    let s = setup(
        doc.clone(),
        remote_plugin(
            json!({"jwksRefreshSeconds": 1, "jwksTimeoutMs": 500, "jwksMaxStalenessSeconds": 8}),
        ),
    );
    let token = signer.sign(&claims(json!({})));
    eventually("keys loaded", Duration::from_secs(20), || {
        s.get(&token).status == 200
    });
    assert!(s.envoy.meshguard_stat("jwks.idp.fetch_ok") >= 1);

    // Refreshes succeed every second until now; the last success is at most ~1.5 s ago.
    let failures = |n: u64| s.envoy.meshguard_stat("jwks.idp.fetch_failed") >= n;
    s.idp.set(500, "{}".into());
    let bad_day = Instant::now();
    eventually("a 500 counted", Duration::from_secs(5), || failures(1));
    assert_eq!(s.get(&token).status, 200, "old keys still work after a 500");
    s.idp.set(200, "<html>not json</html>".into());
    eventually("garbage counted", Duration::from_secs(5), || failures(2));
    assert_eq!(
        s.get(&token).status,
        200,
        "old keys still work after garbage"
    );
    s.idp.set(0, String::new());
    eventually("server down counted", Duration::from_secs(5), || {
        failures(3)
    });
    assert_eq!(
        s.get(&token).status,
        200,
        "old keys still work with the server down"
    );
    s.idp.set(200, doc);
    s.idp.set_slow(Duration::from_secs(3));
    eventually("timeout counted", Duration::from_secs(5), || failures(4));
    assert!(
        bad_day.elapsed() < Duration::from_millis(6500),
        "the checks above ran before max staleness"
    );
    assert_eq!(
        s.get(&token).status,
        200,
        "old keys still work after a timeout"
    );

    // Past jwksMaxStalenessSeconds the keys are dropped: fail closed.
    eventually("fail closed", Duration::from_secs(15), || {
        let r = s.get(&token);
        r.status == 401 && r.json()["error_description"] == "signing keys unavailable"
    });
    assert!(
        bad_day.elapsed() >= Duration::from_millis(6500),
        "not before max staleness"
    );
    assert!(s
        .envoy
        .log_text()
        .contains("older than jwksMaxStalenessSeconds"));
}

#[test]
fn prometheus_metrics_and_json_denial_logs_after_a_known_sequence() {
    let signer = Signer::ed25519("e1");
    let doc = jwks(&[&signer]);
    let plugin = json!({"providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": doc}],
                        "rateLimits": {"policies": {"all": {"requests": 1000, "per": "1s", "key": "global"}}, "global": ["all"]},
                        "routes": [{"name": "api", "match": {"pathPrefixes": ["/"]}}]});
    let s = setup(String::new(), plugin);
    let c = Client::new(
        s.envoy.port("mtls"),
        &s.pki,
        Some(&s.pki.workload("spiffe://cluster.local/ns/web/sa/frontend")),
    );
    let good = signer.sign(&claims(json!({"sub": "alice", "client_id": "web-app"})));
    let n = now();
    let expired = signer.sign(&claims(json!({"iat": n - 7200, "exp": n - 3600})));
    let bearer = |t: &str| format!("Bearer {t}");
    for _ in 0..3 {
        assert_eq!(c.get("/", &[("authorization", &bearer(&good))]).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            c.get("/", &[("authorization", &bearer(&expired))]).status,
            401
        );
    }
    assert_eq!(c.get("/", &[]).status, 401);
    assert_eq!(
        c.get("/", &[("authorization", "Bearer not-a-token")])
            .status,
        401
    );

    // `allowed` reaches Envoy's stats on the worker's timer (batched): read once it has.
    let scrape = || {
        let (status, prom) = http_get(s.envoy.admin, "/stats/prometheus").unwrap();
        assert_eq!(status, 200);
        prom
    };
    eventually("batched counters flushed", Duration::from_secs(5), || {
        scrape().contains("meshguard_meshguard_allowed{} 3")
            || scrape().contains("meshguard_meshguard_allowed 3")
    });
    let prom = scrape();
    let value = |name: &str| -> u64 {
        prom.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.split(['{', ' '])
                    .next()
                    .is_some_and(|n| n.ends_with(name))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /stats/prometheus"))
    };
    assert_eq!(value("meshguard_meshguard_allowed"), 3);
    assert_eq!(value("meshguard_meshguard_denied_invalid_token_expired"), 2);
    assert_eq!(value("meshguard_meshguard_denied_missing_token"), 1);
    assert_eq!(
        value("meshguard_meshguard_denied_invalid_token_malformed"),
        1
    );
    assert_eq!(
        value("meshguard_meshguard_denied_invalid_token_bad_signature"),
        0
    );
    assert_eq!(value("meshguard_meshguard_denied_rate_limited"), 0);
    assert_eq!(value("meshguard_meshguard_cas_contention"), 0);
    assert_eq!(value("meshguard_meshguard_dry_run_would_deny"), 0);

    // One JSON line per denial, with identity keys; no token material anywhere in the log.
    eventually("4 denial lines", Duration::from_secs(5), || {
        json_log_lines(&s.envoy.log_text(), "deny").len() == 4
    });
    let log = s.envoy.log_text();
    let lines = json_log_lines(&log, "deny");
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "invalid_token.expired",
            "invalid_token.expired",
            "missing_token",
            "invalid_token.malformed"
        ]
    );
    for l in &lines {
        assert_eq!(l["status"], 401);
        assert_eq!(l["route"], "api");
        assert_eq!(l["spiffe_id"], "spiffe://cluster.local/ns/web/sa/frontend");
        assert!(l["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(l["source_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        // No token was verified: the identity keys are absent, not `null` (README, Logs).
        for key in ["iss", "sub", "client_id", "detail"] {
            assert!(l.get(key).is_none(), "{key} in {l}");
        }
    }
    for token in [&good, &expired] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !log.contains(token.as_str()) && !log.contains(signature),
            "token material in the log"
        );
    }
    assert!(!log.contains("not-a-token"));
}

#[test]
fn meshguard_check_prints_the_error_envoy_logs() {
    let dir = temp_dir("check");
    let pki = Pki::new(&dir);
    let world = World {
        pki: &pki,
        upstream_port: 9,
        jwks_port: 9,
    };
    let bad = remote_plugin(json!({"jwksRefreshSecond": 60}));
    let yaml = bootstrap(&world, &bad, false);
    let envoy_log = Envoy::expect_refusal(&yaml);
    let marker = "meshguard: invalid configuration: ";
    let from_envoy = envoy_log
        .lines()
        .find_map(|l| l.find(marker).map(|i| l[i..].to_string()))
        .unwrap();

    for (name, text) in [("plugin.json", bad.to_string()), ("envoy.yaml", yaml)] {
        let file = dir.join(name);
        fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_meshguard-check"))
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let from_check = stdout
            .lines()
            .find_map(|l| l.find(marker).map(|i| l[i..].to_string()))
            .unwrap();
        assert_eq!(from_check, from_envoy, "{name}");
    }
    let good = dir.join("good.json");
    fs::write(&good, remote_plugin(json!({})).to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshguard-check"))
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}
