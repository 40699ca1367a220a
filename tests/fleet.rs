//! Fleet-wide limits through real Envoys: two proxies (2 workers each) share one rate-limit
//! service (tools/rls: Limitador's engine, Envoy's RLS API) counting in one real `redis-server`.
//! A fleet policy's capacity holds across both proxies; faults (service slow, stopped, Redis
//! restarted) follow each proxy's `failureMode`, bounded by `timeoutMs`, counted, no VM crash.
//!
//! Needs `MESHGUARD_RLS` (the built tools/rls binary) and `redis-server` on PATH: `make rls`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The fleet capacity of one identity, per hour (Limitador limit `fleet-user`).
const CAPACITY: usize = 30;
/// `rateLimits.service.timeoutMs` of both proxies.
const TIMEOUT_MS: u64 = 300;
/// The fleet quotas of plans `free` and `pro` on route `plans`, per identity and hour
/// (Limitador limits `plan-free`, `plan-pro`).
const FREE: usize = 3;
const PRO: usize = 6;

fn rls_bin() -> PathBuf {
    let bin = std::env::var_os("MESHGUARD_RLS").map_or_else(
        || repo().join("tools/rls/target/release/meshguard-rls"),
        PathBuf::from,
    );
    assert!(bin.exists(), "{} missing: run `make rls`", bin.display());
    bin
}

fn redis_pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

fn start_redis(dir: &Path, port: u16) -> Process {
    let p = spawn_logged(
        "redis",
        dir,
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir),
    );
    eventually("redis answers PING", Duration::from_secs(20), || {
        redis_pong(port)
    });
    p
}

fn start_rls(dir: &Path, port: u16, redis: u16) -> Process {
    let p = spawn_logged(
        "rls",
        dir,
        Command::new(rls_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--limits")
            .arg(dir.join("limits.yaml"))
            .args(["--redis", &format!("redis://127.0.0.1:{redis}")])
            .arg("--delay-file")
            .arg(dir.join("delay-ms")),
    );
    eventually(
        "the rate-limit service listens",
        Duration::from_secs(20),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    p
}

/// One fleet (2 Envoys, a service, a Redis) at a time: this machine has 2 cores, and with three
/// fleets at once a first call could miss its 300 ms timeout (seen once).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Redis, the service, and two proxies: `failureModes` per proxy.
struct Fleet {
    dir: PathBuf,
    redis_port: u16,
    rls_port: u16,
    redis: Option<Process>,
    rls: Option<Process>,
    proxies: Vec<Envoy>,
    signer: Signer,
    _idp: JwksServer,
    _upstream: TestServer,
    _pki: Pki,
    jwks_doc: String,
    /// Per proxy, with [`Setup::lds`]: its LDS directory and `plain` port.
    lds: Vec<(PathBuf, u16)>,
    /// Held for the fleet's life (declared last: fields drop in order, so after the processes).
    _turn: MutexGuard<'static, ()>,
}

fn fleet(tag: &str, failure_modes: [&str; 2]) -> Fleet {
    fleet_with(tag, failure_modes, Setup::default())
}

/// How [`fleet_with`] departs from [`fleet`].
#[derive(Default)]
struct Setup {
    /// The proxies' `ratelimit` cluster gets these endpoints instead of the service's.
    endpoints: Option<&'static str>,
    /// `timeoutMs` instead of [`TIMEOUT_MS`].
    timeout_ms: Option<u64>,
    /// The `plain` listener comes from a watched LDS file (see [`Fleet::reload`]), on a fixed
    /// port; the `mtls` listener is left out.
    lds: bool,
}

/// meshguard's configuration in the fleet tests.
fn plugin(jwks_doc: &str, mode: &str, timeout_ms: u64) -> serde_json::Value {
    json!({
        "providers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks_doc}],
        "rateLimits": {
            "identity": ["sub"],
            "service": {"cluster": "ratelimit", "domain": "fleet-test",
                        "timeoutMs": timeout_ms, "failureMode": mode},
            // The local bucket in front is far above the fleet's capacity.
            "policies": {
                "fleet-user": {"requests": 100000, "per": "1h", "fleet": true},
                // Fleet-only, counted per plan: the service's limits pick the quota.
                "per-plan": {"fleet": {"entries": [
                    {"key": "route"}, {"key": "plan", "claim": "plan", "default": "free"}
                ]}}
            },
            "responseHeaders": true
        },
        "routes": [
            {"name": "plans", "match": {"pathPrefixes": ["/plans"]}, "rateLimit": [{"policy": "per-plan"}]},
            {"match": {"pathPrefixes": ["/heavy"]}, "rateLimit": [{"policy": "fleet-user", "cost": 3}]},
            {"match": {"pathPrefixes": ["/"]}, "rateLimit": [{"policy": "fleet-user"}]}
        ]
    })
}

/// The bootstrap with its `plain` listener moved to the LDS file `<dir>/lds.yaml` (written
/// whole and renamed into place, as Envoy's watched directory expects) on `port`.
fn with_lds(yaml: &str, dir: &Path, port: u16) -> String {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
    let listeners = doc["static_resources"]
        .as_mapping_mut()
        .unwrap()
        .remove("listeners")
        .unwrap();
    let mut plain = listeners
        .as_sequence()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "plain")
        .unwrap()
        .clone();
    plain["address"]["socket_address"]["port_value"] = port.into();
    let mut resource = serde_yaml_ng::Mapping::new();
    resource.insert(
        "@type".into(),
        "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
    );
    for (k, v) in plain.as_mapping().unwrap() {
        resource.insert(k.clone(), v.clone());
    }
    let mut file = serde_yaml_ng::Mapping::new();
    file.insert(
        "resources".into(),
        serde_yaml_ng::Value::Sequence(vec![resource.into()]),
    );
    let tmp = dir.join("lds.tmp");
    fs::write(&tmp, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    fs::rename(&tmp, dir.join("lds.yaml")).unwrap();
    let dynamic: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "lds_config:\n  resource_api_version: V3\n  path_config_source:\n    path: {}\n    watched_directory: {{path: {}}}\n",
        dir.join("lds.yaml").display(),
        dir.display()
    ))
    .unwrap();
    doc["dynamic_resources"] = dynamic;
    doc["node"] = serde_yaml_ng::from_str("{id: meshguard-test, cluster: meshguard-test}").unwrap();
    serde_yaml_ng::to_string(&doc).unwrap()
}

fn fleet_with(tag: &str, failure_modes: [&str; 2], setup: Setup) -> Fleet {
    // A test that failed while holding the turn poisons it: the next one may still run.
    let turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = temp_dir(tag);
    fs::write(
        dir.join("limits.yaml"),
        format!(
            "- namespace: fleet-test\n  name: fleet-user\n  max_value: {CAPACITY}\n  seconds: 3600\n  \
             conditions: [\"descriptors[0].policy == 'fleet-user'\"]\n  variables: [\"descriptors[0].identity\"]\n\
             - namespace: fleet-test\n  name: plan-free\n  max_value: {FREE}\n  seconds: 3600\n  \
             conditions: [\"descriptors[0].policy == 'per-plan'\", \"descriptors[0].route == 'plans'\", \
             \"descriptors[0].plan == 'free'\"]\n  variables: [\"descriptors[0].identity\"]\n\
             - namespace: fleet-test\n  name: plan-pro\n  max_value: {PRO}\n  seconds: 3600\n  \
             conditions: [\"descriptors[0].policy == 'per-plan'\", \"descriptors[0].route == 'plans'\", \
             \"descriptors[0].plan == 'pro'\"]\n  variables: [\"descriptors[0].identity\"]\n"
        ),
    )
    .unwrap();
    let (redis_port, rls_port) = (free_port(), free_port());
    let redis = start_redis(&dir, redis_port);
    let rls = start_rls(&dir, rls_port, redis_port);
    let signer = Signer::ed25519("ed-1");
    let jwks_doc = jwks(&[&signer]);
    let idp = JwksServer::start(jwks_doc.clone());
    let upstream = echo_upstream();
    let pki = Pki::new(&dir);
    let world = World {
        pki: &pki,
        upstream_port: upstream.port(),
        jwks_port: idp.server.port(),
    };
    let timeout_ms = setup.timeout_ms.unwrap_or(TIMEOUT_MS);
    let mut lds = Vec::new();
    let proxies = failure_modes
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let plugin = plugin(&jwks_doc, mode, timeout_ms);
            let yaml = bootstrap(&world, &plugin, false);
            let yaml = match setup.endpoints {
                None => with_rls_cluster(&yaml, rls_port),
                Some(e) => with_cluster(&yaml, e),
            };
            let yaml = if setup.lds {
                let (at, port) = (dir.join(format!("lds-{i}")), free_port());
                fs::create_dir_all(&at).unwrap();
                let yaml = with_lds(&yaml, &at, port);
                lds.push((at, port));
                yaml
            } else {
                yaml
            };
            Envoy::start(&yaml, 2)
        })
        .collect();
    Fleet {
        dir,
        redis_port,
        rls_port,
        redis: Some(redis),
        rls: Some(rls),
        proxies,
        signer,
        _idp: idp,
        _upstream: upstream,
        _pki: pki,
        jwks_doc,
        lds,
        _turn: turn,
    }
}

/// The rate-limit service's cluster, HTTP/2 (gRPC), as the README's example has it.
fn with_rls_cluster(yaml: &str, port: u16) -> String {
    with_cluster(
        yaml,
        &format!("[{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"),
    )
}

/// The `ratelimit` cluster with `endpoints` (YAML flow list).
fn with_cluster(yaml: &str, endpoints: &str) -> String {
    let cluster = format!(
        r#"  clusters:
  - name: ratelimit
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: ratelimit
      endpoints: {endpoints}
"#
    );
    assert!(yaml.contains("  clusters:\n"));
    yaml.replacen("  clusters:\n", &cluster, 1)
}

impl Fleet {
    /// Replaces proxy `proxy`'s meshguard configuration through LDS (a new listener version
    /// whose plugin has a new configuration, so a new root context) and waits until Envoy
    /// applied it.
    fn reload(&self, proxy: usize, plugin: &serde_json::Value) {
        let world = World {
            pki: &self._pki,
            upstream_port: self._upstream.port(),
            jwks_port: self._idp.server.port(),
        };
        let before = self.admin_stat(proxy, "listener_manager.lds.update_success");
        let (dir, port) = &self.lds[proxy];
        with_lds(&bootstrap(&world, plugin, false), dir, *port);
        eventually(
            "Envoy applies the new listener",
            Duration::from_secs(20),
            || self.admin_stat(proxy, "listener_manager.lds.update_success") > before,
        );
    }

    /// An Envoy stat by its full name.
    fn admin_stat(&self, proxy: usize, name: &str) -> u64 {
        let prefix = format!("{name}: ");
        self.proxies[proxy]
            .stats()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0)
    }

    fn auth(&self, sub: &str) -> String {
        self.auth_with(json!({"sub": sub}))
    }

    fn auth_with(&self, extra: serde_json::Value) -> String {
        format!("Bearer {}", self.signer.sign(&claims(extra)))
    }

    fn get(&self, proxy: usize, path: &str, auth: &str) -> (Response, Duration) {
        let start = Instant::now();
        let r =
            Client::plain(self.proxies[proxy].port("plain")).get(path, &[("authorization", auth)]);
        (r, start.elapsed())
    }

    fn stat(&self, proxy: usize, name: &str) -> u64 {
        self.proxies[proxy].meshguard_stat(name)
    }

    /// The `fleet.*` counters of a proxy, for failure messages.
    fn fleet_stats(&self, proxy: usize) -> String {
        let stats = self.proxies[proxy].stats();
        let lines: Vec<&str> = stats.lines().filter(|l| l.contains(".fleet.")).collect();
        lines.join("\n")
    }

    fn assert_no_vm_crash(&self) {
        for (i, p) in self.proxies.iter().enumerate() {
            let log = p.log_text();
            assert!(
                !log.contains("panicked") && !log.contains("Uncaught"),
                "proxy {i}: a Wasm VM crashed"
            );
        }
    }
}

/// `threads` clients, alternating between the two proxies, each sending `per_thread` requests
/// for `sub` on `path`: how many were admitted.
fn flood(f: &Fleet, sub: &str, path: &'static str, threads: usize, per_thread: usize) -> usize {
    flood_as(f, &f.auth(sub), path, threads, per_thread)
}

/// [`flood`] with the given `authorization`.
fn flood_as(f: &Fleet, auth: &str, path: &'static str, threads: usize, per_thread: usize) -> usize {
    let admitted = Arc::new(AtomicUsize::new(0));
    let ports: Vec<u16> = f.proxies.iter().map(|p| p.port("plain")).collect();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (auth, admitted, port) = (auth.to_string(), admitted.clone(), ports[i % 2]);
            thread::spawn(move || {
                let mut c = KeepAlive::new(port);
                for _ in 0..per_thread {
                    let r = c.get(path, &[("authorization", &auth)]);
                    match r.status {
                        200 => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        429 => assert!(r.header("retry-after").is_some(), "{}", r.describe()),
                        _ => panic!("unexpected answer: {}", r.describe()),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    admitted.load(Ordering::SeqCst)
}

#[test]
fn a_fleet_capacity_holds_across_two_proxies_under_concurrent_load() {
    let f = fleet("fleet-cap", ["deny", "deny"]);
    let run = std::process::id();
    let mut report = Vec::new();
    for rep in 0..5 {
        let sub = format!("user-{run}-{rep}");
        // 8 clients × 10 requests = 80 requests, half through each proxy.
        let admitted = flood(&f, &sub, "/api", 8, 10);
        report.push(admitted);
        eprintln!(
            "repetition {rep}: admitted {admitted} of capacity {CAPACITY} (80 sent over 2 proxies)"
        );
    }
    assert_eq!(
        report,
        vec![CAPACITY; 5],
        "admitted per repetition vs capacity {CAPACITY}"
    );

    // Another identity is unaffected; its answers carry the fleet's numbers.
    let (r, _) = f.get(1, "/api", &f.auth(&format!("other-{run}")));
    assert_eq!(r.status, 200, "{}", r.describe());
    let remaining = r.header("x-ratelimit-remaining").unwrap().to_string();
    assert_eq!(remaining, (CAPACITY - 1).to_string(), "{}", r.describe());

    // Cost 3: a fresh identity gets CAPACITY / 3 heavy requests, from either proxy.
    let admitted = flood(&f, &format!("heavy-{run}"), "/heavy", 4, 5);
    eprintln!("cost 3: admitted {admitted} of {}", CAPACITY / 3);
    assert_eq!(admitted, CAPACITY / 3);

    // The refusal is the service's: its numbers, Retry-After until its window resets.
    let (r, _) = f.get(0, "/api", &f.auth(&format!("user-{run}-0")));
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(&*format!("\"fleet-user\";q={CAPACITY};w=3600"))
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "{}", r.describe());

    let over = f.stat(0, "fleet.over_limit") + f.stat(1, "fleet.over_limit");
    let ok = f.stat(0, "fleet.ok") + f.stat(1, "fleet.ok");
    assert_eq!(ok as usize, 5 * CAPACITY + 1 + CAPACITY / 3);
    assert!(over > 0);
    f.assert_no_vm_crash();
}

#[test]
fn faults_follow_the_failure_mode_within_the_timeout() {
    // Proxy 0 denies when the service fails, proxy 1 lets requests through.
    let mut f = fleet("fleet-faults", ["deny", "allow"]);
    let auth = f.auth("fault-user");
    let bound = Duration::from_millis(TIMEOUT_MS + 700);
    let check = |f: &Fleet, case: &str, deny_status: u16| {
        let (r, took) = f.get(0, "/api", &auth);
        assert_eq!(
            r.status,
            deny_status,
            "{case}, failureMode deny: {}",
            r.describe()
        );
        assert!(took < bound, "{case}: deny took {took:?}");
        let (r, took) = f.get(1, "/api", &auth);
        assert_eq!(r.status, 200, "{case}, failureMode allow: {}", r.describe());
        assert!(took < bound, "{case}: allow took {took:?}");
    };
    check(&f, "service up", 200);

    // Slow past the timeout.
    fs::write(f.dir.join("delay-ms"), "2000").unwrap();
    check(&f, "service slow", 503);
    fs::remove_file(f.dir.join("delay-ms")).unwrap();
    for proxy in [0, 1] {
        let n = f.stat(proxy, "fleet.failure.timeout");
        assert!(n >= 1, "proxy {proxy}:\n{}", f.fleet_stats(proxy));
    }
    check(&f, "service fast again", 200);

    // Stopped.
    drop(f.rls.take());
    check(&f, "service stopped", 503);
    for proxy in [0, 1] {
        let n = f.stat(proxy, "fleet.failure.unavailable");
        assert!(n >= 1, "proxy {proxy}:\n{}", f.fleet_stats(proxy));
    }
    f.rls = Some(start_rls(&f.dir, f.rls_port, f.redis_port));
    eventually(
        "proxy 0 admits again after the service restarts",
        Duration::from_secs(20),
        || f.get(0, "/api", &auth).0.status == 200,
    );

    // Redis restarted: while it is down the service answers UNKNOWN at once (a broken
    // connection) or, while its Redis client reconnects, late (a timeout here).
    let failures = |f: &Fleet, proxy| {
        f.stat(proxy, "fleet.failure.unknown") + f.stat(proxy, "fleet.failure.timeout")
    };
    let before = [failures(&f, 0), failures(&f, 1)];
    drop(f.redis.take());
    check(&f, "redis down", 503);
    check(&f, "redis still down", 503);
    for proxy in [0, 1] {
        let n = failures(&f, proxy) - before[proxy];
        assert!(n >= 2, "proxy {proxy}:\n{}", f.fleet_stats(proxy));
    }
    assert!(
        f.stat(0, "fleet.failure.unknown") + f.stat(1, "fleet.failure.unknown") >= 1,
        "{}\n{}",
        f.fleet_stats(0),
        f.fleet_stats(1)
    );
    f.redis = Some(start_redis(&f.dir, f.redis_port));
    eventually(
        "proxy 0 admits again after Redis restarts",
        Duration::from_secs(30),
        || f.get(0, "/api", &auth).0.status == 200,
    );
    check(&f, "redis back", 200);

    assert!(f.stat(0, "denied.rate_limited.service_unavailable") >= 3);
    f.assert_no_vm_crash();
}

/// A fleet-only policy whose descriptor carries the route's name and the token's `plan` claim:
/// the service counts each plan against its own quota, across both proxies; a token without
/// the claim is counted as its default (`free`); a plan the service has no limit for is let
/// through and counted under `fleet.ok_no_limit`.
#[test]
fn descriptor_entries_pick_the_services_limit_per_plan() {
    let f = fleet("fleet-plans", ["deny", "deny"]);
    let run = std::process::id();
    let as_plan = |who: &str, plan: Option<&str>| {
        let mut claims = json!({"sub": format!("{who}-{run}")});
        if let Some(p) = plan {
            claims["plan"] = json!(p);
        }
        f.auth_with(claims)
    };
    let free = flood_as(&f, &as_plan("free", Some("free")), "/plans", 4, 4);
    let pro = flood_as(&f, &as_plan("pro", Some("pro")), "/plans", 4, 4);
    let none = flood_as(&f, &as_plan("none", None), "/plans", 4, 4);
    let gold = flood_as(&f, &as_plan("gold", Some("gold")), "/plans", 2, 2);
    eprintln!("admitted of 16: free {free} (quota {FREE}), pro {pro} (quota {PRO}), no plan {none}, gold {gold} of 4");
    assert_eq!((free, pro, none, gold), (FREE, PRO, FREE, 4));
    // The pro refusal carries the pro limit's numbers.
    let (r, _) = f.get(1, "/plans", &as_plan("pro", Some("pro")));
    assert_eq!(r.status, 429, "{}", r.describe());
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(&*format!("\"per-plan\";q={PRO};w=3600"))
    );
    let no_limit = f.stat(0, "fleet.ok_no_limit") + f.stat(1, "fleet.ok_no_limit");
    assert_eq!(no_limit, 4, "{}\n{}", f.fleet_stats(0), f.fleet_stats(1));
    f.assert_no_vm_crash();
}

/// A service cluster with no endpoints at all: Envoy's router can only answer the call itself
/// ("no healthy upstream"), and may do so before `proxy_grpc_call` returns. Whatever Envoy
/// reports, or fails to report, the request follows `failureMode` within the bound, counted.
#[test]
fn a_service_cluster_without_endpoints_follows_the_failure_mode() {
    let setup = Setup {
        endpoints: Some("[]"),
        ..Setup::default()
    };
    let f = fleet_with("fleet-empty", ["deny", "allow"], setup);
    let auth = f.auth("lonely");
    let bound = Duration::from_millis(TIMEOUT_MS + 700);
    for (proxy, status) in [(0, 503), (1, 200)] {
        for _ in 0..3 {
            let (r, took) = f.get(proxy, "/api", &auth);
            assert_eq!(r.status, status, "proxy {proxy}: {}", r.describe());
            assert!(took < bound, "proxy {proxy}: took {took:?}");
        }
        let stats = f.fleet_stats(proxy);
        eprintln!("proxy {proxy}:\n{stats}");
        let failures: u64 = ["dispatch", "timeout", "unavailable", "deadline"]
            .iter()
            .map(|c| f.stat(proxy, &format!("fleet.failure.{c}")))
            .sum();
        assert_eq!(failures, 3, "proxy {proxy}:\n{stats}");
    }
    // 30 failed calls within 10 s: at most 5 Warn lines per worker (2 workers).
    for _ in 0..27 {
        assert_eq!(f.get(0, "/api", &auth).0.status, 503);
    }
    let lines = f.proxies[0]
        .log_text()
        .matches("rate-limit service call not started")
        .count();
    eprintln!("30 failed calls, {lines} Warn lines");
    assert!((1..=10).contains(&lines), "{lines} Warn lines");
    assert_eq!(f.stat(0, "fleet.failure.dispatch"), 30);
    f.assert_no_vm_crash();
}

/// A request paused on its fleet call while meshguard's configuration is replaced (LDS: a new
/// listener, a new plugin configuration, so a new root context in the same VM): it is not lost.
/// It gets the service's answer (the old listener drains; its root context lives on until its
/// requests end) and nothing is counted as meshguard's deadline; requests after the reload run on
/// the new configuration.
#[test]
fn a_request_paused_on_its_fleet_call_survives_a_configuration_reload() {
    let setup = Setup {
        timeout_ms: Some(3_000),
        lds: true,
        ..Setup::default()
    };
    let f = fleet_with("fleet-reload", ["deny", "deny"], setup);
    let auth = f.auth("reloaded");
    assert_eq!(f.get(0, "/api", &auth).0.status, 200);
    fs::write(f.dir.join("delay-ms"), "1500").unwrap();
    let port = f.lds[0].1;
    let paused = {
        let auth = auth.clone();
        thread::spawn(move || {
            let start = Instant::now();
            let r = Client::plain(port).get("/api", &[("authorization", &auth)]);
            (r.status, r.describe(), start.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(400));
    // Another configuration: the local bucket in front allows 1 an hour.
    let mut next = plugin(&f.jwks_doc, "deny", 3_000);
    next["rateLimits"]["policies"]["fleet-user"]["requests"] = json!(1);
    // (Without the cost-3 route, which a burst of 1 could never admit: refused as configured.)
    next["routes"].as_array_mut().unwrap().remove(1);
    f.reload(0, &next);
    let (status, describe, took) = paused.join().unwrap();
    eprintln!("paused request: {status} after {took:?}");
    assert_eq!(status, 200, "{describe}");
    assert!(took < Duration::from_millis(3_000), "took {took:?}");
    fs::remove_file(f.dir.join("delay-ms")).unwrap();
    // The new configuration answers: its local bucket admits one request, then refuses.
    let (r, _) = f.get(0, "/api", &auth);
    assert_eq!(r.status, 200, "{}", r.describe());
    let (r, _) = f.get(0, "/api", &auth);
    assert_eq!(r.status, 429, "{}", r.describe());
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"fleet-user\";q=1;w=3600")
    );
    assert_eq!(
        f.stat(0, "fleet.failure.deadline"),
        0,
        "{}",
        f.fleet_stats(0)
    );
    f.assert_no_vm_crash();
}
