//! What Envoy does when a filter's Wasm VM crashes, with the failure policy the shipped examples
//! use (`failure_policy: FAIL_RELOAD` with a 100 ms reload backoff) and with plain fail-closed.
//! The VM is `tests/fixtures/crasher`, a stand-in authentication filter that panics on request
//! (header `x-crash`): 403 without `x-token: good`, so a VM that failed *open* would show a 200.
//!
//! Budget: a crash never lets a token-less request through; under FAIL_RELOAD the crashed worker
//! serves again for the next requests (Envoy counts `wasm.<plugin>.vm_reload_success`), under
//! FAIL_CLOSED it answers 503 until Envoy restarts and no stat moves.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// Builds the crashing filter once (its own workspace and target directory).
fn crasher_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = repo().join("target/crasher");
            let out = Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet", "--target", "wasm32-wasip1"])
                .arg("--manifest-path")
                .arg(repo().join("tests/fixtures/crasher/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building tests/fixtures/crasher: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            target.join("wasm32-wasip1/release/meshguard_crasher.wasm")
        })
        .clone()
}

fn start(policy: &str, upstream: u16) -> Envoy {
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: crasher
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: crasher
                root_id: crasher
                {policy}
                vm_config:
                  vm_id: crasher
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#,
        wasm = crasher_wasm().display(),
    );
    Envoy::start(&yaml, 2)
}

/// A counter from Envoy's `/stats` (0 when absent).
fn stat(envoy: &Envoy, name: &str) -> u64 {
    let prefix = format!("{name}: ");
    envoy
        .stats()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

/// The statuses of `n` requests, each on a new connection (so both workers get some).
fn statuses(client: &Client, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    (0..n).map(|_| client.get("/", headers).status).collect()
}

const GOOD: &[(&str, &str)] = &[("x-token", "good")];
const NO_TOKEN: &[(&str, &str)] = &[("x-probe", "token-less")];
const CRASH: &[(&str, &str)] = &[("x-crash", "1"), ("x-probe", "crash")];

/// Crashes VMs until a run of 20 requests with a good token gets no 200 (both workers dead) or
/// `rounds` crashes were sent; returns the statuses the crashing requests got.
fn crash(client: &Client, rounds: usize, until_all_dead: bool) -> Vec<u16> {
    let mut got = Vec::new();
    for _ in 0..rounds {
        got.push(client.get("/", CRASH).status);
        if until_all_dead && !statuses(client, 20, GOOD).contains(&200) {
            break;
        }
    }
    got
}

fn probes_upstream(upstream: &TestServer) -> usize {
    upstream
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.headers.iter().any(|(n, _)| n == "x-probe"))
        .count()
}

#[test]
fn fail_reload_replaces_a_crashed_vm_and_never_lets_a_request_through() {
    let upstream = echo_upstream();
    let envoy = start(
        "failure_policy: FAIL_RELOAD\n                \
         reload_config: {backoff: {base_interval: 0.1s, max_interval: 1s}}",
        upstream.port(),
    );
    let client = Client::plain(envoy.port("plain"));
    assert_eq!(statuses(&client, 10, GOOD), [200; 10]);
    assert_eq!(statuses(&client, 10, NO_TOKEN), [403; 10]);

    // Six crashes, on whichever workers take them: each crashing request is refused.
    let crashes = crash(&client, 6, false);
    assert_eq!(crashes, [503; 6]);
    // Right after, alternately token-less and valid requests until 50 valid ones in a row are
    // served (bounded: 5 s). Token-less ones are refused (403 from a reloaded VM, or 503 while a
    // worker waits out its reload backoff), never let through.
    let t0 = Instant::now();
    let (mut after_no_token, mut after_good, mut last_503, mut run) = (vec![], vec![], None, 0);
    while run < 50 && t0.elapsed() < Duration::from_secs(5) {
        after_no_token.push(client.get("/", NO_TOKEN).status);
        let s = client.get("/", GOOD).status;
        after_good.push(s);
        run = if s == 200 { run + 1 } else { 0 };
        if s != 200 {
            last_503 = Some(t0.elapsed());
        }
    }
    let reloads = stat(&envoy, "wasm.crasher.vm_reload_success");
    let backoff = stat(&envoy, "wasm.crasher.vm_reload_backoff");
    let count = |v: &[u16], s: u16| v.iter().filter(|&&x| x == s).count();
    println!(
        "FAIL_RELOAD: 6 crash requests; then token-less: {} × 403, {} × 503; good token: \
         {} × 200, {} × 503, last 503 after {last_503:?}; vm_reload_success {reloads}, \
         vm_reload_backoff {backoff}, v8.created {}, v8.active {}",
        count(&after_no_token, 403),
        count(&after_no_token, 503),
        count(&after_good, 200),
        count(&after_good, 503),
        stat(&envoy, "wasm.envoy.wasm.runtime.v8.created"),
        stat(&envoy, "wasm.envoy.wasm.runtime.v8.active"),
    );
    assert!(after_no_token.iter().all(|s| [403, 503].contains(s)));
    assert!(after_good.iter().all(|s| [200, 503].contains(s)));
    assert_eq!(
        probes_upstream(&upstream),
        0,
        "a refused request reached the upstream"
    );
    // Recovered, without a restart: every worker runs a fresh VM again.
    assert_eq!(run, 50, "not recovered within 5 s");
    assert!(reloads >= 1, "no VM reloaded");
    assert_eq!(statuses(&client, 20, NO_TOKEN), [403; 20]);
    // A crash request that lands on a worker waiting out its backoff is refused without running
    // the VM: at most one panic per crash request.
    let panics = envoy.log_text().matches("panicked at").count();
    println!("panics logged: {panics}");
    assert!((1..=6).contains(&panics), "{panics} panics");
}

#[test]
fn fail_closed_keeps_a_crashed_vm_dead_until_restart_and_no_stat_shows_it() {
    let upstream = echo_upstream();
    let envoy = start("failure_policy: FAIL_CLOSED", upstream.port());
    let client = Client::plain(envoy.port("plain"));
    assert_eq!(statuses(&client, 10, GOOD), [200; 10]);
    let before: Vec<String> = envoy
        .stats()
        .lines()
        .filter(|l| l.starts_with("wasm."))
        .map(str::to_string)
        .collect();

    let crashes = crash(&client, 20, true);
    assert!(crashes.iter().all(|&s| s == 503), "{crashes:?}");
    // Both workers dead: valid and token-less requests alike get 503, and stay refused.
    assert_eq!(statuses(&client, 20, GOOD), [503; 20]);
    assert_eq!(statuses(&client, 20, NO_TOKEN), [503; 20]);
    assert_eq!(probes_upstream(&upstream), 0);
    let after: Vec<String> = envoy
        .stats()
        .lines()
        .filter(|l| l.starts_with("wasm."))
        .map(str::to_string)
        .collect();
    println!(
        "FAIL_CLOSED: {} crash(es) to kill both workers; wasm.* stats unchanged: {}",
        crashes.len(),
        before == after
    );
    assert_eq!(before, after, "a wasm.* stat moved");
    assert!(envoy.log_text().contains("panicked at"));
}
