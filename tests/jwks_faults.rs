//! A misbehaving IdP through a real Envoy (2 workers, the Wasm filter fail-closed): every way a
//! JWKS answer can go wrong on the socket, each answering both a periodic refresh and a fetch
//! started by a request with an unknown `kid`, while valid tokens keep flowing on several
//! connections. A failed fetch must stay just a failed fetch: no VM crash, no 5xx for valid
//! tokens, nothing unauthenticated upstream, the reason counted, and recovery once the IdP does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Provider `periodic` (issuer [`ISSUER`]) refreshes every second: its fetches come from the
/// timer. Provider `kidmiss` refreshes hourly: after a success, its only fetches are the ones a
/// token with an unknown `kid` starts from a request (and, once one failed, its retries).
const PERIODIC: &str = "periodic";
const KIDMISS: &str = "kidmiss";
const ISSUER_KIDMISS: &str = "https://idp-kidmiss.test";
const PATH_KIDMISS: &str = "/kidmiss/jwks.json";
const TIMEOUT_MS: u64 = 1000;
const MAX_BYTES: usize = 1 << 20;

/// Failure reasons meshguard counts in `jwks.<provider>.fetch_error.<reason>`.
const REASONS: [&str; 7] = [
    "no_response",
    "status",
    "content_type",
    "too_large",
    "invalid",
    "no_usable_key",
    "dispatch",
];

struct Mode {
    name: &'static str,
    fault: JwksFault,
    /// The reason both fetches (periodic and kid-miss) must be counted under.
    reason: &'static str,
}

fn modes() -> Vec<Mode> {
    let m = |name, fault, reason| Mode {
        name,
        fault,
        reason,
    };
    vec![
        // Envoy answers these itself (`503`, "upstream connect error or disconnect/reset
        // before headers"): the filter sees a status.
        m(
            "close before headers",
            JwksFault::CloseBeforeHeaders,
            "status",
        ),
        m(
            "reset before headers",
            JwksFault::ResetBeforeHeaders,
            "status",
        ),
        // Headers arrived, then the answer broke: the filter gets no response at all.
        m("truncated body", JwksFault::Truncated, "no_response"),
        m(
            "stalled body",
            JwksFault::Stall(Duration::from_millis(5 * TIMEOUT_MS)),
            "no_response",
        ),
        m("reset mid-body", JwksFault::ResetMidBody, "no_response"),
        // Larger than Envoy's async-client buffer: Envoy resets the stream after the headers.
        m(
            "256 MB body",
            JwksFault::Oversized(256 << 20),
            "no_response",
        ),
        // Delivered, but over jwksMaxBytes.
        m("2 MB body", JwksFault::Oversized(2 << 20), "too_large"),
        m("302 redirect", JwksFault::Redirect, "status"),
        m("text/html", JwksFault::HtmlContentType, "content_type"),
        m("not JSON", JwksFault::NotJson, "invalid"),
        m("no usable key", JwksFault::NoUsableKey, "no_usable_key"),
        m("500", JwksFault::Status(500), "status"),
    ]
}

fn plugin() -> Value {
    let provider = |name: &str, issuer: &str, path: &str, refresh: u64| {
        json!({
            "name": name, "issuer": issuer, "audiences": [AUDIENCE],
            "jwksUri": format!("http://idp.test{path}"), "jwksCluster": "idp",
            "jwksRefreshSeconds": refresh, "jwksTimeoutMs": TIMEOUT_MS,
            "jwksMaxBytes": MAX_BYTES, "kidMissRefetchSeconds": 1
        })
    };
    json!({"logLevel": "warn", "providers": [
        provider(PERIODIC, ISSUER, JWKS_PATH, 1),
        provider(KIDMISS, ISSUER_KIDMISS, PATH_KIDMISS, 3600)
    ]})
}

/// Every numeric line of Envoy's `/stats`.
fn stats(envoy: &Envoy) -> BTreeMap<String, u64> {
    envoy
        .stats()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

fn jwks_stat(s: &BTreeMap<String, u64>, provider: &str, name: &str) -> Option<u64> {
    s.get(&format!(
        "wasmcustom.meshguard.meshguard.jwks.{provider}.{name}"
    ))
    .copied()
}

/// Envoy's stats about its Wasm VMs (`wasm.*`): what a crashed VM would move.
fn vm_stats(s: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    s.iter()
        .filter(|(k, _)| k.starts_with("wasm."))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Polls `f` every 50 ms until true or `timeout`; whether it became true.
fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The status of one GET with `token` (if any) on a new connection; 0 when Envoy gave no answer
/// (within the client's 15 s read timeout) or the connection failed.
fn status(client: &Client, path: &str, token: Option<&str>) -> u16 {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &[u8])> = auth
        .iter()
        .map(|a| ("authorization", a.as_bytes()))
        .collect();
    client
        .try_request("GET", path, &headers)
        .map_or(0, |r| r.status)
}

/// Background traffic: valid tokens of both providers from `connections` threads, each request
/// on a new connection (so both workers serve), plus a thread of forged and token-less requests.
/// Answers other than 200 to valid tokens (and other than 401 to the rest) are recorded with the
/// mode that was running; 0 is no answer.
struct Traffic {
    stop: Arc<AtomicBool>,
    mode: Arc<Mutex<String>>,
    valid: Arc<AtomicUsize>,
    bad_valid: Arc<Mutex<Vec<(String, u16)>>>,
    rejected: Arc<Mutex<Vec<(String, u16)>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16, valid_tokens: Vec<String>, forged: String, connections: usize) -> Traffic {
        let mut t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            mode: Arc::new(Mutex::new("keys loaded".into())),
            valid: Arc::new(AtomicUsize::new(0)),
            bad_valid: Arc::new(Mutex::new(Vec::new())),
            rejected: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        for c in 0..connections {
            let (stop, mode, valid, bad) = (
                t.stop.clone(),
                t.mode.clone(),
                t.valid.clone(),
                t.bad_valid.clone(),
            );
            let tokens = valid_tokens.clone();
            t.threads.push(thread::spawn(move || {
                let client = Client::plain(port);
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let s = status(&client, "/valid", Some(&tokens[i % tokens.len()]));
                    valid.fetch_add(1, Ordering::SeqCst);
                    if s != 200 {
                        bad.lock().unwrap().push((mode.lock().unwrap().clone(), s));
                    }
                    i += 1;
                }
            }));
        }
        let (stop, mode, rejected) = (t.stop.clone(), t.mode.clone(), t.rejected.clone());
        t.threads.push(thread::spawn(move || {
            let client = Client::plain(port);
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let s = if i.is_multiple_of(2) {
                    status(&client, "/forged", Some(&forged))
                } else {
                    status(&client, "/none", None)
                };
                if s != 401 {
                    rejected
                        .lock()
                        .unwrap()
                        .push((mode.lock().unwrap().clone(), s));
                }
                i += 1;
                thread::sleep(Duration::from_millis(20));
            }
        }));
        t
    }

    fn set_mode(&self, name: &str) {
        *self.mode.lock().unwrap() = name.to_string();
    }

    /// Stops the traffic; (valid requests sent, panics of traffic threads).
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let panics = self
            .threads
            .into_iter()
            .map(|t| t.join())
            .filter(Result::is_err)
            .count();
        (self.valid.load(Ordering::SeqCst), panics)
    }
}

#[test]
fn every_failed_jwks_fetch_is_just_a_failed_fetch() {
    let started = Instant::now();
    let base = Signer::es256("base");
    let Stack {
        envoy,
        pki: _pki,
        idp,
        upstream,
    } = Stack::start(
        "jwks-faults",
        JwksServer::start(jwks(&[&base])),
        &plugin(),
        false,
        2,
    );
    let port = envoy.port("plain");
    let client = Client::plain(port);
    let kidmiss_claims = || claims(json!({"iss": ISSUER_KIDMISS}));
    let token_periodic = base.sign(&claims(json!({})));
    let token_kidmiss = base.sign(&kidmiss_claims());
    for token in [&token_periodic, &token_kidmiss] {
        eventually("keys loaded", Duration::from_secs(20), || {
            status(&client, "/warmup", Some(token)) == 200
        });
    }
    // The same kid with another key: a forged signature.
    let forger = Signer::es256("base");
    let forged = forger.sign(&claims(json!({})));

    let all_before = stats(&envoy);
    let vm_before = vm_stats(&all_before);
    println!("Envoy's Wasm VM stats after keys loaded: {vm_before:?}");
    let traffic = Traffic::start(
        port,
        vec![token_periodic.clone(), token_kidmiss.clone()],
        forged,
        4,
    );

    // Failures so far; a mode that leaves the proxy broken (a dead VM, valid tokens refused, no
    // recovery) ends the loop, since every later mode would fail for the same reason.
    let mut failures: Vec<String> = Vec::new();
    let mut broken = false;
    let mut kidmiss_statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut report = Table::default();
    for (n, mode) in modes().iter().enumerate() {
        traffic.set_mode(mode.name);
        let mut fail = |what: String| failures.push(format!("{}: {what}", mode.name));
        let before = stats(&envoy);
        let (periodic_before, kidmiss_before) = (idp.fetches(), idp.server.count(PATH_KIDMISS));
        idp.set_fault(mode.fault);

        // Kid-miss: a token with a kid nobody has makes a request fetch (and wait for it). The
        // refetch slot frees once per second; poll until the fetch reached the server.
        let unknown = base.sign_as(
            jsonwebtoken::Algorithm::ES256,
            Some(&format!("unknown-{n}")),
            &kidmiss_claims(),
        );
        let fetched = poll(Duration::from_secs(5), || {
            *kidmiss_statuses
                .entry(status(&client, "/kidmiss", Some(&unknown)))
                .or_default() += 1;
            idp.server.count(PATH_KIDMISS) > kidmiss_before
        });
        if !fetched {
            fail("no kid-miss fetch reached the IdP in 5 s".into());
        }
        // Periodic: the next refresh reaches the server within about a second.
        if !poll(Duration::from_secs(5), || idp.fetches() > periodic_before) {
            fail("no periodic fetch reached the IdP in 5 s".into());
        }
        // Both failures counted (a stalled fetch ends at jwksTimeoutMs), or a VM died trying.
        let counted = poll(Duration::from_millis(TIMEOUT_MS + 4000), || {
            let s = stats(&envoy);
            let failed = |p: &str| jwks_stat(&s, p, "fetch_failed");
            (failed(PERIODIC) > jwks_stat(&before, PERIODIC, "fetch_failed")
                && failed(KIDMISS) > jwks_stat(&before, KIDMISS, "fetch_failed"))
                || envoy.log_text().contains("Uncaught RuntimeError")
        });
        let after = stats(&envoy);
        for p in [PERIODIC, KIDMISS] {
            let delta = |name: &str| {
                let key = format!("fetch_error.{name}");
                match (jwks_stat(&before, p, &key), jwks_stat(&after, p, &key)) {
                    (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                    _ => None,
                }
            };
            let failed = jwks_stat(&after, p, "fetch_failed").unwrap_or(0) as i64
                - jwks_stat(&before, p, "fetch_failed").unwrap_or(0) as i64;
            let moved: Vec<String> = REASONS
                .iter()
                .filter_map(|r| delta(r).filter(|d| *d > 0).map(|d| format!("{r}+{d}")))
                .collect();
            let got = match delta(mode.reason) {
                None => format!(
                    "no fetch_error.{} counter; fetch_failed +{failed}",
                    mode.reason
                ),
                Some(_) => format!("{}; fetch_failed +{failed}", moved.join(" ")),
            };
            let pass =
                delta(mode.reason).is_some_and(|d| d >= 1) && moved.len() == 1 && failed >= 1;
            report.check(
                &format!("{} / {p}", mode.name),
                &format!("{}+N", mode.reason),
                got.clone(),
                pass,
            );
            if !pass {
                fail(format!(
                    "{p}: expected fetch_error.{}, got {got}",
                    mode.reason
                ));
            }
        }
        if !counted {
            fail("the failed fetches were not counted".into());
        }

        // The IdP recovers with a new key: the kid-miss provider picks it up from a request, the
        // periodic one from its next refresh.
        let fresh = Signer::es256(&format!("fresh-{n}"));
        idp.set(200, jwks(&[&base, &fresh]));
        idp.restore();
        let fresh_kidmiss = fresh.sign(&kidmiss_claims());
        if !poll(Duration::from_secs(8), || {
            status(&client, "/recover", Some(&fresh_kidmiss)) == 200
        }) {
            fail("a token with the new kid (kid-miss provider) was not served within 8 s".into());
            broken = true;
        }
        let ok_before = jwks_stat(&stats(&envoy), PERIODIC, "fetch_ok").unwrap_or(0);
        if poll(Duration::from_secs(8), || {
            jwks_stat(&stats(&envoy), PERIODIC, "fetch_ok").unwrap_or(0) > ok_before
        }) {
            let fresh_periodic = fresh.sign(&claims(json!({})));
            let s = status(&client, "/recover", Some(&fresh_periodic));
            if s != 200 {
                fail(format!("after a refresh, a token with the new kid got {s}"));
                broken = true;
            }
        } else {
            fail("no successful periodic refresh within 8 s after the IdP recovered".into());
            broken = true;
        }
        let log = envoy.log_text();
        if log.contains("panicked") || log.contains("Uncaught RuntimeError") {
            fail("a Wasm VM crashed".into());
            broken = true;
        }
        if !traffic.bad_valid.lock().unwrap().is_empty() {
            broken = true;
        }
        if broken {
            break;
        }
    }

    // A moment of traffic after the last recovery: the valid count moves on.
    traffic.set_mode("after");
    let valid_at_end = traffic.valid.load(Ordering::SeqCst);
    poll(Duration::from_secs(5), || {
        traffic.valid.load(Ordering::SeqCst) >= valid_at_end + 50
    });
    let bad_valid = traffic.bad_valid.lock().unwrap().clone();
    let rejected = traffic.rejected.lock().unwrap().clone();
    let (valid_sent, traffic_panics) = traffic.stop();
    let log = envoy.log_text();
    let all_after = stats(&envoy);
    let vm_after = vm_stats(&all_after);

    report.print();
    let by_mode = |v: &[(String, u16)]| {
        let mut m: BTreeMap<(String, u16), usize> = BTreeMap::new();
        for (mode, s) in v {
            *m.entry((mode.clone(), *s)).or_default() += 1;
        }
        m
    };
    let bad_by_mode = by_mode(&bad_valid);
    println!(
        "valid-token requests: {valid_sent}, non-200: {} {bad_by_mode:?}",
        bad_valid.len()
    );
    println!("kid-miss request statuses: {kidmiss_statuses:?}");
    println!(
        "upstream saw: /valid {}, /recover {}, /forged {}, /none {}, /kidmiss {}",
        upstream.count("/valid"),
        upstream.count("/recover"),
        upstream.count("/forged"),
        upstream.count("/none"),
        upstream.count("/kidmiss")
    );
    for l in log
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("Uncaught"))
    {
        println!("Envoy log: {l}");
    }
    let vm_moved: Vec<String> = vm_after
        .iter()
        .filter(|(k, v)| vm_before.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {:?} -> {v}", vm_before.get(k)))
        .collect();
    println!("Wasm VM stats that moved: {vm_moved:?}");
    println!("took {:.1} s", started.elapsed().as_secs_f64());

    if !bad_valid.is_empty() {
        failures.push(format!(
            "{} valid-token requests were not answered 200: {bad_by_mode:?}",
            bad_valid.len()
        ));
    }
    if !rejected.is_empty() {
        failures.push(format!(
            "{} forged or token-less requests not answered 401: {:?}",
            rejected.len(),
            by_mode(&rejected)
        ));
    }
    // Envoy's own count of 5xx answers on the listeners, whoever sent them.
    let ingress_5xx = |s: &BTreeMap<String, u64>| {
        s.get("http.ingress.downstream_rq_5xx")
            .copied()
            .unwrap_or(0)
    };
    if ingress_5xx(&all_after) != ingress_5xx(&all_before) {
        failures.push(format!(
            "Envoy counted {} 5xx answers (http.ingress.downstream_rq_5xx)",
            ingress_5xx(&all_after) - ingress_5xx(&all_before)
        ));
    }
    if kidmiss_statuses.keys().any(|s| *s != 401) {
        failures.push(format!(
            "unknown-kid requests not all answered 401: {kidmiss_statuses:?}"
        ));
    }
    for path in ["/forged", "/none", "/kidmiss"] {
        if upstream.count(path) != 0 {
            failures.push(format!(
                "{} {path} requests reached the upstream",
                upstream.count(path)
            ));
        }
    }
    if traffic_panics != 0 {
        failures.push(format!("{traffic_panics} traffic threads lost Envoy"));
    }
    if log.contains("panicked") {
        failures.push("Envoy's log has a `panicked` line".into());
    }
    if log.contains("Uncaught RuntimeError") {
        failures.push("Envoy's log has a Wasm trap (`Uncaught RuntimeError`)".into());
    }
    if !vm_moved.is_empty() {
        failures.push(format!("Envoy's Wasm VM stats moved: {vm_moved:?}"));
    }
    assert!(
        vm_before.contains_key("wasm.envoy.wasm.runtime.v8.created")
            && vm_before.contains_key("wasm.envoy.wasm.runtime.v8.active"),
        "Envoy's V8 VM stats not found: {vm_before:?}"
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// How a raw answer ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// All `content-length` bytes arrived (the connection may stay open).
    Complete,
    /// The server closed the connection (FIN) before that.
    Closed,
    /// Reading failed: a reset, or the client's read timeout.
    Error(std::io::ErrorKind),
}

/// What a raw client saw of one answer.
#[derive(Debug)]
struct Raw {
    /// The status line and headers (empty if none arrived).
    head: String,
    status: u16,
    content_type: String,
    content_length: usize,
    /// Body bytes received (only the first 4 MiB are kept in `body`).
    received: usize,
    body: Vec<u8>,
    end: End,
}

impl Raw {
    /// (status, content-type, content-length, body bytes received, how it ended).
    fn shape(&self) -> (u16, &str, usize, usize, &End) {
        (
            self.status,
            &self.content_type,
            self.content_length,
            self.received,
            &self.end,
        )
    }
}

/// One GET straight to the JWKS server, read as a client would until the answer is complete,
/// the connection ends or `read_timeout` passes.
fn raw_fetch(idp: &JwksServer, read_timeout: Duration) -> Raw {
    use std::io::{Read, Write};
    const KEEP: usize = 4 << 20;
    let mut s = std::net::TcpStream::connect(idp.server.addr).unwrap();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s.write_all(format!("GET {JWKS_PATH} HTTP/1.1\r\nhost: idp\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = Raw {
        head: String::new(),
        status: 0,
        content_type: String::new(),
        content_length: 0,
        received: 0,
        body: Vec::new(),
        end: End::Closed,
    };
    let mut head = Vec::new(); // bytes until the end of the headers
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if !raw.head.is_empty() && raw.received >= raw.content_length {
            raw.end = End::Complete;
            return raw;
        }
        let n = match s.read(&mut buf) {
            Ok(0) => return raw,
            Ok(n) => n,
            Err(e) => {
                raw.end = End::Error(e.kind());
                return raw;
            }
        };
        let mut data = &buf[..n];
        if raw.head.is_empty() {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            raw.head = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            let header = |name: &str| {
                raw.head
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    .unwrap_or_default()
            };
            raw.status = raw.head.split_whitespace().nth(1).unwrap().parse().unwrap();
            raw.content_type = header("content-type:");
            raw.content_length = header("content-length:").parse().unwrap();
            data = &head[end + 4..];
        }
        raw.received += data.len();
        let keep = data.len().min(KEEP.saturating_sub(raw.body.len()));
        raw.body.extend_from_slice(&data[..keep]);
    }
}

/// The fault server really misbehaves on the socket as each fault says (checked without Envoy,
/// so the test above cannot pass on faults that did not happen).
#[test]
fn the_jwks_server_misbehaves_as_told() {
    use std::io::ErrorKind;
    let signer = Signer::es256("k");
    let doc = jwks(&[&signer]);
    let n = doc.len();
    let idp = JwksServer::start(doc.clone());
    let wait = Duration::from_secs(5);
    let json = "application/json";

    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (200, json, n, n, &End::Complete));
    assert_eq!(r.body, doc.as_bytes());

    idp.set_fault(JwksFault::CloseBeforeHeaders);
    let r = raw_fetch(&idp, wait);
    assert_eq!((r.head.as_str(), &r.end), ("", &End::Closed));

    idp.set_fault(JwksFault::ResetBeforeHeaders);
    let r = raw_fetch(&idp, wait);
    assert_eq!(
        (r.head.as_str(), &r.end),
        ("", &End::Error(ErrorKind::ConnectionReset))
    );

    idp.set_fault(JwksFault::Truncated);
    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (200, json, n + 1000, n / 2, &End::Closed));

    // Silent past the client's patience: the client's read times out first.
    idp.set_fault(JwksFault::Stall(Duration::from_secs(3)));
    let started = Instant::now();
    let r = raw_fetch(&idp, Duration::from_millis(500));
    assert!(started.elapsed() >= Duration::from_millis(500));
    let (status, ctype, length, received, end) = r.shape();
    assert_eq!((status, ctype, length, received), (200, json, n, n / 2));
    assert!(
        matches!(end, End::Error(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "{end:?}"
    );

    idp.set_fault(JwksFault::ResetMidBody);
    let r = raw_fetch(&idp, wait);
    assert_eq!(
        r.shape(),
        (200, json, n, n / 2, &End::Error(ErrorKind::ConnectionReset))
    );

    // The document, then JSON whitespace: a valid JWKS that only a size limit refuses.
    idp.set_fault(JwksFault::Oversized(2 << 20));
    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (200, json, 2 << 20, 2 << 20, &End::Complete));
    assert!(r.body.starts_with(doc.as_bytes()));
    assert!(r.body[n..].iter().all(|b| *b == b' '));
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        serde_json::from_str::<Value>(&doc).unwrap()
    );
    idp.set_fault(JwksFault::Oversized(256 << 20));
    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (200, json, 256 << 20, 256 << 20, &End::Complete));

    idp.set_fault(JwksFault::Redirect);
    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (302, json, n, n, &End::Complete));
    assert!(r.head.contains("\r\nlocation: /moved/"), "{}", r.head);

    idp.set_fault(JwksFault::HtmlContentType);
    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (200, "text/html", n, n, &End::Complete));
    assert_eq!(r.body, doc.as_bytes());

    idp.set_fault(JwksFault::NotJson);
    let r = raw_fetch(&idp, wait);
    assert_eq!((r.status, r.content_type.as_str()), (200, json));
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    idp.set_fault(JwksFault::NoUsableKey);
    let r = raw_fetch(&idp, wait);
    assert_eq!((r.status, r.content_type.as_str()), (200, json));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["keys"][0]["kty"], "oct");

    idp.set_fault(JwksFault::Status(500));
    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (500, json, n, n, &End::Complete));
    assert_eq!(r.body, doc.as_bytes());

    idp.restore();
    let r = raw_fetch(&idp, wait);
    assert_eq!(r.shape(), (200, json, n, n, &End::Complete));
    assert_eq!(idp.fetches(), 14, "every request counted");
}
