//! A configuration update under traffic, as an operator (or Istio) makes it: Envoy reads its
//! listener from a file (file-based LDS), two workers run meshguard with a remote JWKS provider,
//! and while a client sends valid tokens without pause the file is swapped (atomic `rename`) for
//! one whose provider has a different `jwksUri` (same IdP, same keys, another path).
//!
//! Budget: 0 valid requests refused while the IdP is up; forged and token-less requests never
//! reach the upstream; the swap is seen to take effect (Envoy counts the LDS update, the new URI
//! is fetched).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROTATED_PATH: &str = "/rotated/jwks.json";

fn plugin(jwks_path: &str) -> Value {
    json!({
        "realm": "swap",
        "providers": [{
            "name": "idp",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwksUri": format!("http://idp.test{jwks_path}"),
            "jwksCluster": "idp",
        }],
    })
}

/// The LDS file: one plaintext listener with meshguard (configured by `plugin`) in front of the
/// upstream. Port 0 stays the same socket across updates (the listener's address is unchanged).
fn lds(plugin: &Value, version: u32) -> String {
    let config = serde_json::to_string(&plugin.to_string()).unwrap();
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: plain
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
        - name: meshguard
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
            config:
              name: meshguard
              root_id: meshguard
              failure_policy: FAIL_RELOAD
              reload_config: {{backoff: {{base_interval: 0.1s, max_interval: 1s}}}}
              configuration:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {config}
              vm_config:
                vm_id: meshguard
                runtime: envoy.wasm.runtime.v8
                code: {{local: {{filename: {wasm}}}}}
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        wasm = wasm_path().display(),
    )
}

/// A bootstrap whose listeners come from `dir/lds/listeners.yaml`, reloaded when a file is moved
/// into `dir/lds` (the atomic-rename swap).
fn bootstrap(dir: &Path, upstream: u16, jwks: u16) -> String {
    let cluster = |name: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"#
        )
    };
    format!(
        r#"
node: {{id: config-swap, cluster: config-swap}}
dynamic_resources:
  lds_config:
    resource_api_version: V3
    path_config_source:
      path: {lds}/listeners.yaml
      watched_directory: {{path: {lds}}}
static_resources:
  clusters:{upstream}{idp}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#,
        lds = dir.join("lds").display(),
        upstream = cluster("upstream", upstream),
        idp = cluster("idp", jwks),
    )
}

/// Writes `text` next to the watched directory, then renames it over the listener file.
fn swap_in(dir: &Path, text: &str) {
    let staged = dir.join("staged.yaml");
    fs::write(&staged, text).unwrap();
    fs::rename(&staged, dir.join("lds/listeners.yaml")).unwrap();
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

/// What a sender sends: valid tokens (distinct `jti`, so the verified-token cache cannot hide
/// missing keys), forged ones (a valid token with its signature altered) or none. Forged and
/// token-less requests carry `x-probe`, so the upstream's log shows any that got through.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Valid,
    Forged,
    TokenLess,
}

fn forge(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
    format!("{head}.{}", String::from_utf8(sig).unwrap())
}

/// (after the swap, kind, status, error_description) → (count, first and last time after the
/// swap, in ms).
type Tally = BTreeMap<(bool, Kind, u16, String), (usize, u128, u128)>;

fn send(
    port: u16,
    kind: Kind,
    tokens: Vec<String>,
    stop: Arc<AtomicBool>,
    swapped: Arc<OnceLock<Instant>>,
    tally: Arc<Mutex<Tally>>,
) {
    let client = Client::plain(port);
    let mut sent = 0usize;
    // Bounded: at most 20,000 requests per sender, and the test stops it after a few seconds.
    while !stop.load(Ordering::SeqCst) && sent < 20_000 {
        let after = swapped.get().copied();
        let auth = format!("Bearer {}", tokens[sent % tokens.len()]);
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        match kind {
            Kind::Valid => headers.push(("authorization", auth.as_bytes())),
            Kind::Forged => {
                headers.push(("authorization", auth.as_bytes()));
                headers.push(("x-probe", b"forged"));
            }
            Kind::TokenLess => headers.push(("x-probe", b"token-less")),
        }
        let outcome = match client.try_request("GET", "/", &headers) {
            Ok(r) if r.status == 200 => (200, String::new()),
            Ok(r) => {
                let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                let why = v["error_description"].as_str().unwrap_or(&r.body);
                (r.status, why.chars().take(60).collect())
            }
            Err(e) => (0, e.chars().take(60).collect()),
        };
        let at = after.map_or(0, |t| t.elapsed().as_millis());
        let mut tally = tally.lock().unwrap();
        let e = tally
            .entry((after.is_some(), kind, outcome.0, outcome.1))
            .or_insert((0, at, at));
        e.0 += 1;
        e.2 = at;
        sent += 1;
    }
}

#[test]
fn changing_a_providers_jwks_uri_under_traffic_refuses_no_valid_token() {
    let signer = Signer::es256("swap-key");
    let idp = JwksServer::start(jwks(&[&signer]));
    let upstream = echo_upstream();
    let dir = temp_dir("config-swap");
    fs::create_dir_all(dir.join("lds")).unwrap();
    fs::write(dir.join("lds/listeners.yaml"), lds(&plugin(JWKS_PATH), 1)).unwrap();
    let envoy = Envoy::start(&bootstrap(&dir, upstream.port(), idp.server.port()), 2);
    let port = envoy.port("plain");

    // Tokens signed up front (the senders only send): 2 valid senders × 2,000 distinct tokens.
    let sign = |n: usize| signer.sign(&claims(json!({"jti": format!("t{n}")})));
    let valid: Vec<Vec<String>> = (0..2)
        .map(|s| (0..2000).map(|i| sign(s * 2000 + i)).collect())
        .collect();
    let forged: Vec<String> = (0..50).map(|i| forge(&sign(10_000 + i))).collect();

    let client = Client::plain(port);
    let first = format!("Bearer {}", valid[0][0]);
    eventually("first keys loaded", Duration::from_secs(20), || {
        client.get("/", &[("authorization", &first)]).status == 200
    });
    let updates_before = stat(&envoy, "listener_manager.lds.update_success");
    assert!(updates_before >= 1, "the listener came from the LDS file");
    assert_eq!(idp.server.count(ROTATED_PATH), 0);

    let stop = Arc::new(AtomicBool::new(false));
    let swapped = Arc::new(OnceLock::new());
    let tally = Arc::new(Mutex::new(Tally::new()));
    let mut jobs = vec![
        (Kind::Valid, valid[0].clone()),
        (Kind::Valid, valid[1].clone()),
        (Kind::Forged, forged),
        (Kind::TokenLess, vec![String::new()]),
    ];
    let senders: Vec<_> = jobs
        .drain(..)
        .map(|(kind, tokens)| {
            let (stop, swapped, tally) = (stop.clone(), swapped.clone(), tally.clone());
            thread::spawn(move || send(port, kind, tokens, stop, swapped, tally))
        })
        .collect();

    // Traffic before the swap (a traffic window, not a readiness wait).
    thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    swapped.set(t0).unwrap();
    swap_in(&dir, &lds(&plugin(ROTATED_PATH), 2));
    eventually(
        "Envoy applied the new listener",
        Duration::from_secs(10),
        || stat(&envoy, "listener_manager.lds.update_success") > updates_before,
    );
    let applied = t0.elapsed();
    eventually("the new jwksUri fetched", Duration::from_secs(10), || {
        idp.server.count(ROTATED_PATH) >= 1
    });
    let fetched = t0.elapsed();
    // Traffic after the swap.
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().unwrap();
    }

    let tally = tally.lock().unwrap().clone();
    println!("swap applied after {applied:?}, new jwksUri fetched after {fetched:?}");
    println!(
        "listener_manager: lds.update_success {} → {}, listener_in_place_updated {}, \
         listener_modified {}",
        updates_before,
        stat(&envoy, "listener_manager.lds.update_success"),
        stat(&envoy, "listener_manager.listener_in_place_updated"),
        stat(&envoy, "listener_manager.listener_modified"),
    );
    for ((after, kind, status, why), (n, first, last)) in &tally {
        let when = if *after {
            format!("after swap (+{first}…{last} ms)")
        } else {
            "before swap".to_string()
        };
        let kind = format!("{kind:?}");
        println!("{when:<28} {kind:<10} {status:>3} {why:<32} × {n}");
    }
    let count = |f: &dyn Fn(bool, Kind, u16) -> bool| -> usize {
        tally
            .iter()
            .filter(|((a, k, s, _), _)| f(*a, *k, *s))
            .map(|(_, (n, _, _))| n)
            .sum()
    };
    let valid_sent = count(&|_, k, _| k == Kind::Valid);
    let valid_refused = count(&|_, k, s| k == Kind::Valid && s != 200);
    let valid_after = count(&|a, k, _| a && k == Kind::Valid);
    let others_sent = count(&|_, k, _| k != Kind::Valid);
    let others_passed = count(&|_, k, s| k != Kind::Valid && s == 200);
    let probes_upstream = upstream
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.headers.iter().any(|(n, _)| n == "x-probe"))
        .count();
    println!(
        "valid: {valid_sent} sent ({valid_after} after the swap), {valid_refused} not 200; \
         forged/token-less: {others_sent} sent, {others_passed} answered 200, \
         {probes_upstream} reached the upstream"
    );

    assert!(valid_after >= 100, "too little traffic after the swap");
    assert!(others_sent >= 100, "too little forged traffic");
    assert_eq!(others_passed, 0, "a forged or token-less request got 200");
    assert_eq!(
        probes_upstream, 0,
        "a forged or token-less request reached the upstream"
    );
    assert_eq!(
        stat(&envoy, "listener_manager.lds.update_rejected"),
        0,
        "Envoy refused the new listener"
    );
    assert_eq!(valid_refused, 0, "valid tokens refused across the swap");
}
