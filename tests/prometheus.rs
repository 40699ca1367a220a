//! A real Prometheus (Debian `prometheus`, installed by `make test-integration`) scraping a real
//! Envoy (the shipped server sidecar, 2 workers, its mTLS listener) with the shipped scrape
//! configuration `dashboards/prometheus.yml`, under a scripted mix: valid, expired, forged, wrong
//! role, over the limit, bad client certificates. Then every query of every panel of
//! `dashboards/meshguard.json` (read from the file) must return series through Prometheus' HTTP
//! API, with the label values this mix must produce.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.saas.local";

/// A Prometheus child process (its log in `prometheus.log`), killed on drop.
struct Prometheus {
    process: Process,
    addr: SocketAddr,
}

/// The shipped scrape configuration, pointed at `target` and scraping every second.
fn scrape_config(target: SocketAddr) -> String {
    let text = fs::read_to_string(repo().join("dashboards/prometheus.yml")).unwrap();
    let mut y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    y["global"]["scrape_interval"] = "1s".into();
    y["global"]["evaluation_interval"] = "1s".into();
    let job = &mut y["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/stats/prometheus"));
    job["static_configs"][0]["targets"] = serde_yaml_ng::to_value([target.to_string()]).unwrap();
    serde_yaml_ng::to_string(&y).unwrap()
}

fn start_prometheus(dir: &Path, target: SocketAddr) -> Prometheus {
    let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    fs::write(dir.join("prometheus.yml"), scrape_config(target)).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let process = spawn_logged(
        "prometheus",
        dir,
        Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}")),
    );
    let mut p = Prometheus { process, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = p.process.child.try_wait().unwrap() {
            panic!("prometheus exited ({status}) during start");
        }
        assert!(Instant::now() < deadline, "prometheus not ready in 60 s");
        if matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
            return p;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// An instant query's result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        let (status, body) =
            http_get(self.addr, &format!("/api/v1/query?query={}", url_encode(q))).unwrap();
        assert_eq!(status, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// A panel query as Prometheus gets it from Grafana: its variables given values.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$plugin", ".+")
}

/// The values of `label` among a result's series with a value above 0.
fn label_values(result: &[Value], label: &str) -> BTreeSet<String> {
    result
        .iter()
        .filter(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
        .filter_map(|s| s["metric"][label].as_str().map(str::to_string))
        .collect()
}

struct Saas {
    signer: Signer,
}

impl Saas {
    /// A token; `jti` makes it new to the verified-token cache.
    fn token(&self, sub: &str, role: &str, exp_in: i64, jti: u32) -> String {
        let n = now() as i64;
        let claims = json!({"iss": ISSUER, "aud": "saas-api", "sub": sub, "role": role,
            "plan": "paid", "iat": n - 120, "exp": n + exp_in, "jti": jti.to_string()});
        format!("Bearer {}", self.signer.sign(&claims))
    }
}

/// A signature with one character changed (its key is right, its bytes are not).
fn forged(bearer: &str) -> String {
    let mut b = bearer.as_bytes().to_vec();
    let at = b.len() - 10;
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

/// What each panel query must show: (panel title, refId, label, values that must be among the
/// series above 0; empty: the query must return at least one series).
fn expected() -> Vec<(&'static str, &'static str, &'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // Envoy's tag is the listener's configured address: the harness maps the shipped port to 0.
    let listener = s(&["127.0.0.1_0"]);
    vec![
        (
            "Requests: allowed vs denied",
            "A",
            "decision",
            s(&["allow", "deny"]),
        ),
        (
            "Denied by reason",
            "A",
            "reason",
            s(&[
                "invalid_token.expired",
                "invalid_token.bad_signature",
                "insufficient_permissions",
                "rate_limited",
                "missing_token",
            ]),
        ),
        (
            "Requests by route and decision",
            "A",
            "route",
            s(&["list-projects", "public-status", "login", "create-project"]),
        ),
        (
            "401 / 403 / 429 answers",
            "A",
            "status",
            s(&["401", "403", "429"]),
        ),
        ("429s by rate-limit policy", "A", "policy", s(&["login"])),
        (
            "Top refused identities (bucket; the denial log line's identity_bucket)",
            "A",
            "identity",
            // sha256(SPIFFE ID or iss/sub), first byte mod 64: frontend 05, reports 39,
            // https://idp.saas.local/bob 0f.
            s(&["05", "39", "0f"]),
        ),
        ("JWKS health", "A", "provider", s(&["saas-idp"])),
        ("JWKS health", "B", "provider", Vec::new()),
        ("JWKS health", "C", "outcome", s(&["ok"])),
        (
            "mTLS handshake failures",
            "A",
            "envoy_listener_address",
            listener.clone(),
        ),
        // Connection errors other than certificate checks: none in this mix, but the series is
        // there.
        (
            "mTLS handshake failures",
            "B",
            "envoy_listener_address",
            listener.clone(),
        ),
        (
            "mTLS handshake failures",
            "C",
            "envoy_listener_address",
            Vec::new(),
        ),
        ("Decision time (µs, sampled 1 in 32)", "A", "", Vec::new()),
        ("Decision time (µs, sampled 1 in 32)", "B", "", Vec::new()),
        ("Token cache", "A", "result", s(&["hit", "miss"])),
    ]
}

#[test]
fn every_board_panel_shows_the_scripted_traffic() {
    let dir = temp_dir("prometheus");
    let pki = example_layout(&dir);
    let frontend = pki.workload(FRONTEND);
    let reports = pki.workload(REPORTS);
    let expired_cert = pki.expired_workload(FRONTEND);
    let foreign =
        Pki::with_ca_name(&temp_dir("prometheus-foreign-ca"), "another CA").workload(FRONTEND);
    let saas = Saas {
        signer: Signer::rsa("saas-1"),
    };
    let idp = JwksServer::start(jwks(&[&saas.signer]));
    let upstream = echo_upstream();
    let envoy = start_server_sidecar(&dir, upstream.port(), idp.server.port());
    let inbound = envoy.port("inbound");
    let as_frontend = Client::new(inbound, &pki, Some(&frontend));
    let as_reports = Client::new(inbound, &pki, Some(&reports));
    let admin = saas.token("root", "admin", 600, 0);
    eventually("JWKS fetched", Duration::from_secs(20), || {
        as_frontend
            .get("/projects", &[("authorization", &admin)])
            .status
            == 200
    });
    let prometheus = start_prometheus(&dir, envoy.admin);

    // The board file, read as Grafana would.
    let board: Value = serde_json::from_str(
        &fs::read_to_string(repo().join("dashboards/meshguard.json")).unwrap(),
    )
    .unwrap();
    let panels = board["panels"].as_array().unwrap();
    let mut queries = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            queries.push((
                p["title"].as_str().unwrap().to_string(),
                t["refId"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let want = expected();
    // Every query of the board has its expectation, and every expectation its query.
    let listed: BTreeSet<(String, String)> = want
        .iter()
        .map(|(t, r, _, _)| (t.to_string(), r.to_string()))
        .collect();
    let on_board: BTreeSet<(String, String)> = queries
        .iter()
        .map(|(t, r, _)| (t.clone(), r.clone()))
        .collect();
    assert_eq!(on_board, listed);

    let viewer = saas.token("bob", "viewer", 600, 0);
    let expired = saas.token("carol", "viewer", -600, 0);
    let bad = forged(&admin);
    let rounds = std::cell::Cell::new(0);
    let round = || {
        rounds.set(rounds.get() + 1);
        // A new token each round: one verification (a cache miss), then cache hits.
        let admin = saas.token("root", "admin", 600, rounds.get());
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                as_frontend
                    .get("/projects", &[("authorization", &admin)])
                    .status,
            );
        }
        statuses.push(as_frontend.get("/public/status", &[]).status);
        statuses.push(as_frontend.get("/projects", &[]).status);
        statuses.push(
            as_frontend
                .get("/projects", &[("authorization", &expired)])
                .status,
        );
        statuses.push(
            as_frontend
                .get("/projects", &[("authorization", &bad)])
                .status,
        );
        statuses.push(
            as_reports
                .request("POST", "/projects", &[("authorization", viewer.as_bytes())])
                .status,
        );
        for _ in 0..7 {
            statuses.push(as_reports.request("POST", "/login", &[]).status);
        }
        for cert in [Some(&expired_cert), Some(&foreign), None] {
            let r = Client::new(inbound, &pki, cert).try_request("GET", "/public/status", &[]);
            assert!(r.is_err(), "a bad client certificate was accepted");
        }
        statuses
    };
    let first = round();
    for status in [200, 401, 403, 429] {
        assert!(first.contains(&status), "{status} in {first:?}");
    }

    // Rounds go on (each adds to every counter) until every panel shows what it must, or the
    // deadline passes.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<String>;
    loop {
        round();
        missing = Vec::new();
        for (title, ref_id, expr) in &queries {
            let (_, _, label, values) = want
                .iter()
                .find(|(t, r, _, _)| t == title && r == ref_id)
                .unwrap();
            let result = prometheus.query(&concrete(expr));
            if result.is_empty() {
                missing.push(format!("{title} [{ref_id}]: no series for {expr}"));
                continue;
            }
            let seen = label_values(&result, label);
            for v in values {
                if !seen.contains(v) {
                    missing.push(format!(
                        "{title} [{ref_id}]: no {label}=\"{v}\" above 0 (saw {seen:?})"
                    ));
                }
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    if !missing.is_empty() {
        let (_, prom) = http_get(envoy.admin, "/stats/prometheus").unwrap();
        let ours: Vec<&str> = prom
            .lines()
            .filter(|l| l.starts_with("meshguard_") || l.contains("ssl"))
            .filter(|l| !l.ends_with(" 0"))
            .collect();
        panic!(
            "panels without their series:\n{}\n\nEnvoy's non-zero meshguard/ssl lines:\n{}",
            missing.join("\n"),
            ours.join("\n")
        );
    }

    // The labelled series as Prometheus stores them: one exact series, every label fixed.
    let exact = prometheus
        .query("meshguard_requests_total{decision=\"deny\",reason=\"insufficient_permissions\"}");
    assert_eq!(exact.len(), 1, "{exact:?}");
    let m = &exact[0]["metric"];
    let labels: Vec<(&str, &str)> = [
        "plugin", "decision", "reason", "status", "route", "provider",
    ]
    .iter()
    .map(|l| (*l, m[*l].as_str().unwrap_or("")))
    .collect();
    assert_eq!(
        labels,
        [
            ("plugin", "meshguard"),
            ("decision", "deny"),
            ("reason", "insufficient_permissions"),
            ("status", "403"),
            ("route", "create-project"),
            ("provider", "saas-idp"),
        ]
    );
    // The board as a picture (tools/board.py), from two snapshots of this run: rates.
    let snapshot = |name: &str| {
        let (_, text) = http_get(envoy.admin, "/stats/prometheus").unwrap();
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    };
    let before = snapshot("before.prom");
    round();
    let after = snapshot("after.prom");
    let png = dir.join("board.png");
    board_tool(&[
        "--prom",
        before.to_str().unwrap(),
        "--prom",
        after.to_str().unwrap(),
        "--interval",
        "2",
        "--out",
        png.to_str().unwrap(),
    ])
    .unwrap();
    assert!(fs::read(&png).unwrap().starts_with(b"\x89PNG"));

    // The refused identity's bucket is in its denial log line too.
    let lines = json_log_lines(&envoy.log_text(), "deny");
    assert!(
        lines
            .iter()
            .any(|l| l["reason"] == "insufficient_permissions" && l["identity_bucket"] == "0f"),
        "{lines:?}"
    );
}
