//! The failed-auth budget through real Envoy (2 workers): it bounds signature work, not service.
//!
//! Sources are simulated on loopback: Linux accepts any 127.x.y.z as a local address, so each
//! client socket is bound to its own 127.a.b.c before connecting to Envoy's 127.0.0.1 listener,
//! which sees it as `source.address`. Signature checks are read from meshguard's metrics:
//! `token_cache.miss` counts every token verified from scratch (whatever the outcome).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// `forged`: 2 failed authentications per minute per source address (4,096 slots), so a flood
/// spends every slot it touches within seconds.
fn stack() -> (Stack, Signer) {
    let signer = Signer::ed25519("ed-1");
    let doc = jwks(&[&signer]);
    let plugin = json!({
        "providers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": doc}],
        "rateLimits": {
            "policies": {"forged": {"requests": 2, "per": "1m", "key": "sourceIp"}},
            "failedAuth": {"policy": "forged"}
        },
        "routes": [{"match": {"pathPrefixes": ["/"]}}]
    });
    let stack = Stack::start("budget", JwksServer::start(doc), &plugin, false, 2);
    (stack, signer)
}

/// A TCP connection to Envoy from the local address `source`.
fn connect_from(source: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddrV4::new(source, 0).into())?;
    socket.connect(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads one response and returns its status and whether the server closes the connection.
fn read_status(stream: &mut TcpStream) -> std::io::Result<(u16, bool)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut more = |stream: &mut TcpStream, buf: &mut Vec<u8>| -> std::io::Result<()> {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed mid-response"));
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(stream, &mut buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < end + len {
            more(stream, &mut buf)?;
        }
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        while !buf.ends_with(b"0\r\n\r\n") {
            more(stream, &mut buf)?;
        }
    }
    Ok((status, header("connection:").as_deref() == Some("close")))
}

/// A keep-alive client bound to one source address (reconnects when the server closes).
struct Conn {
    source: Ipv4Addr,
    port: u16,
    stream: Option<TcpStream>,
}

impl Conn {
    fn new(source: Ipv4Addr, port: u16) -> Conn {
        Conn {
            source,
            port,
            stream: None,
        }
    }

    fn get(&mut self, token: &str) -> u16 {
        let req = format!(
            "GET /api HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n"
        );
        for _ in 0..3 {
            if self.stream.is_none() {
                self.stream = connect_from(self.source, self.port).ok();
            }
            let Some(s) = self.stream.as_mut() else {
                continue;
            };
            if s.write_all(req.as_bytes()).is_ok() {
                if let Ok((status, close)) = read_status(s) {
                    if close {
                        self.stream = None;
                    }
                    return status;
                }
            }
            self.stream = None;
        }
        panic!("{}: connection failed three times", self.source);
    }

    /// One request on a connection of its own (lands on either worker).
    fn once(source: Ipv4Addr, port: u16, token: &str) -> u16 {
        Conn::new(source, port).get(token)
    }
}

/// Distinct forged tokens: one forged token (right issuer, audience and `kid`, wrong key) with a
/// counter written into the middle of its signature. Each costs a full signature check unless
/// the budget refuses it first.
struct Forgery {
    base: String,
    next: AtomicU64,
}

impl Forgery {
    fn new() -> Forgery {
        let forger = Signer::ed25519("ed-1");
        Forgery {
            base: forger.sign(&claims(json!({"sub": "mallory"}))),
            next: AtomicU64::new(0),
        }
    }

    fn token(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let sig = self.base.rfind('.').unwrap() + 1;
        let at = sig + 40;
        format!("{}{n:016}{}", &self.base[..at], &self.base[at + 16..])
    }
}

/// Requests, 401s and 429s of a flood.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    unauthorized: AtomicUsize,
    limited: AtomicUsize,
}

impl Tally {
    fn count(&self, status: u16) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match status {
            401 => self.unauthorized.fetch_add(1, Ordering::Relaxed),
            429 => self.limited.fetch_add(1, Ordering::Relaxed),
            other => panic!("a forged token got {other}"),
        };
    }

    fn get(&self) -> (usize, usize, usize) {
        (
            self.sent.load(Ordering::Relaxed),
            self.unauthorized.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
        )
    }
}

/// What the metrics say: tokens verified from scratch, and refusals by reason.
#[derive(Debug, Clone, Copy)]
struct Checks {
    verified: u64,
    bad_signature: u64,
    failed_auth: u64,
}

fn checks(envoy: &Envoy) -> Checks {
    Checks {
        verified: envoy.meshguard_stat("token_cache.miss"),
        bad_signature: envoy.meshguard_stat("denied.invalid_token.bad_signature"),
        failed_auth: envoy.meshguard_stat("denied.rate_limited.failed_auth"),
    }
}

fn addr(net: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (i / 250) as u8, (1 + i % 250) as u8)
}

#[test]
fn a_flooder_on_a_shared_address_spends_signature_work_not_service() {
    let (s, signer) = stack();
    let port = s.envoy.port("plain");
    let nat = Ipv4Addr::new(127, 9, 0, 1);
    let forgery = Arc::new(Forgery::new());

    // A repeated forged token costs one check per worker, then nothing.
    let before = checks(&s.envoy);
    let replayed = forgery.token();
    let replay_from = Ipv4Addr::new(127, 9, 1, 1);
    let statuses: Vec<u16> = (0..300)
        .map(|_| Conn::once(replay_from, port, &replayed))
        .collect();
    let after = checks(&s.envoy);
    let verified = after.verified - before.verified;
    eprintln!(
        "one forged token sent 300 times on new connections: {} x 401, {} x 429, {verified} signature checks",
        statuses.iter().filter(|s| **s == 401).count(),
        statuses.iter().filter(|s| **s == 429).count(),
    );
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(verified <= 2, "once per worker at most: {verified}");

    // The client behind the address has a token verified by both workers before the flood.
    let cached = signer.sign(&claims(json!({"sub": "behind-the-nat"})));
    let warm = Instant::now();
    let base = checks(&s.envoy).verified;
    while checks(&s.envoy).verified < base + 2 {
        assert_eq!(Conn::once(nat, port, &cached), 200);
        assert!(
            warm.elapsed() < Duration::from_secs(10),
            "both workers verified the token"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(Tally::default());
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, flood, forgery) = (stop.clone(), flood.clone(), forgery.clone());
            thread::spawn(move || {
                let mut c = Conn::new(nat, port);
                while !stop.load(Ordering::Relaxed) {
                    flood.count(c.get(&forgery.token()));
                }
            })
        })
        .collect();
    eventually(
        "the flood spent the address's budget",
        Duration::from_secs(10),
        || flood.get().2 > 0,
    );
    let start = checks(&s.envoy);
    let started = Instant::now();

    // (a) The cached token keeps being served, on connections to either worker.
    let served = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served, refused, token) = (
                stop.clone(),
                served.clone(),
                refused.clone(),
                cached.clone(),
            );
            thread::spawn(move || {
                let mut c = Conn::new(nat, port);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    if c.get(&token) == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                    if n % 25 == 0 {
                        c.stream = None; // a new connection: maybe the other worker
                    }
                }
            })
        })
        .collect();

    // (b) A fresh valid token from the flooded address, retried every 200 ms.
    let fresh = signer.sign(&claims(json!({"sub": "just-logged-in"})));
    let t0 = Instant::now();
    let mut attempts = Vec::new();
    while t0.elapsed() < Duration::from_secs(5) {
        let status = Conn::once(nat, port, &fresh);
        attempts.push(status);
        if status == 200 {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let fresh_after = t0.elapsed();

    // Let the flood run a while longer, then stop everything.
    while started.elapsed() < Duration::from_secs(8) {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in flooders.into_iter().chain(clients) {
        t.join().unwrap();
    }
    let window = started.elapsed().as_secs_f64();
    let end = checks(&s.envoy);
    let (sent, unauthorized, limited) = flood.get();
    let (ok, ko) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let verified = end.verified - start.verified;
    // Failed checks: everything verified but the fresh token's one success.
    let failed_checks = verified.saturating_sub(1);
    eprintln!(
        "flood from {nat} for {window:.1} s: {sent} forged tokens ({:.0}/s), {unauthorized} x 401, {limited} x 429",
        sent as f64 / window
    );
    eprintln!(
        "cached token from {nat}: {ok} of {} served ({:.3} %)",
        ok + ko,
        100.0 * ok as f64 / (ok + ko).max(1) as f64
    );
    eprintln!(
        "fresh token from {nat}: statuses {attempts:?}, served after {:.2} s",
        fresh_after.as_secs_f64()
    );
    eprintln!(
        "signature checks in the window: {verified} ({:.1}/s; bad_signature +{}, failed_auth 429 +{})",
        verified as f64 / window,
        end.bad_signature - start.bad_signature,
        end.failed_auth - start.failed_auth
    );
    assert!(
        ok + ko >= 1000,
        "enough cached requests to judge 99.9 %: {}",
        ok + ko
    );
    assert!(
        ok as f64 >= 0.999 * (ok + ko) as f64,
        "{ko} cached requests refused"
    );
    assert_eq!(
        attempts.last(),
        Some(&200),
        "served within 5 s: {attempts:?}"
    );
    // One slot: its budget (2, then one per 30 s) plus the trickle (3, then one per second).
    let bound = (2.0 + window / 30.0 + 3.0 + window).floor() as u64;
    assert!(
        failed_checks <= bound,
        "{failed_checks} failed checks from one address in {window:.1} s; bound {bound}"
    );
    assert!(sent > 10 * bound as usize, "the flood was a flood: {sent}");
}

#[test]
fn a_flood_over_4096_addresses_refuses_no_fresh_legitimate_address() {
    let (s, signer) = stack();
    let port = s.envoy.port("plain");
    let forgery = Arc::new(Forgery::new());
    let sources = 4096;
    let threads = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(Tally::default());
    let flood_start = Instant::now();
    let flooders: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, flood, forgery) = (stop.clone(), flood.clone(), forgery.clone());
            thread::spawn(move || {
                // Keep-alive connections, one per source, cycled.
                let mut conns: Vec<Conn> = (t..sources)
                    .step_by(threads)
                    .map(|i| Conn::new(addr(1, i), port))
                    .collect();
                'flood: loop {
                    for c in &mut conns {
                        if stop.load(Ordering::Relaxed) {
                            break 'flood;
                        }
                        flood.count(c.get(&forgery.token()));
                    }
                }
            })
        })
        .collect();

    // Wait until the flood has gone over every source at least twice (2 failures spend a slot)
    // and most of its tokens are refused unverified.
    let spent = Instant::now();
    loop {
        let (sent, _, limited) = flood.get();
        if sent >= 3 * sources && limited * 10 >= sent * 6 {
            break;
        }
        assert!(
            spent.elapsed() < Duration::from_secs(30),
            "the flood did not spend the slots: {:?}",
            flood.get()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let ramp = flood_start.elapsed().as_secs_f64();
    let (sent0, unauthorized0, limited0) = flood.get();
    let start = checks(&s.envoy);
    let measured = Instant::now();

    // (c) 200 fresh legitimate addresses, each with its own fresh token (not in any cache),
    // one request each on a new connection, while the flood goes on.
    let tokens: Vec<String> = (0..300)
        .map(|i| signer.sign(&claims(json!({ "sub": format!("user-{i}") }))))
        .collect();
    let during: Vec<u16> = (0..200)
        .map(|i| {
            thread::sleep(Duration::from_millis(20)); // spread over a few seconds of flood
            Conn::once(addr(2, i), port, &tokens[i])
        })
        .collect();
    let window = measured.elapsed().as_secs_f64();
    let end = checks(&s.envoy);
    let (sent1, unauthorized1, limited1) = flood.get();
    stop.store(true, Ordering::Relaxed);
    for t in flooders {
        t.join().unwrap();
    }
    // Right after the flood: 100 more.
    let after: Vec<u16> = (200..300)
        .map(|i| Conn::once(addr(2, i), port, &tokens[i]))
        .collect();

    let refused = |v: &[u16]| v.iter().filter(|s| **s != 200).count();
    let (sent, limited) = (sent1 - sent0, limited1 - limited0);
    let verified = end.verified - start.verified;
    let served = (200 - refused(&during)) as u64;
    let failed_checks = verified.saturating_sub(served);
    eprintln!(
        "flood over {sources} addresses: ramp {ramp:.1} s ({sent0} tokens, {unauthorized0} x 401, {limited0} x 429)"
    );
    eprintln!(
        "measured {window:.1} s: {sent} forged tokens ({:.0}/s), {} x 401, {limited} x 429 ({:.1} % refused unverified)",
        sent as f64 / window,
        unauthorized1 - unauthorized0,
        100.0 * limited as f64 / sent.max(1) as f64
    );
    eprintln!(
        "fresh legitimate addresses refused: {} of 200 during the flood, {} of 100 right after",
        refused(&during),
        refused(&after)
    );
    eprintln!(
        "signature checks while measuring: {verified} ({:.0}/s), of which {failed_checks} failed ({:.0}/s) for {:.0} forged tokens/s",
        verified as f64 / window,
        failed_checks as f64 / window,
        sent as f64 / window
    );
    assert!(refused(&during) <= 2, "during: {during:?}");
    assert!(refused(&after) <= 1, "after: {after:?}");
    assert!(
        limited * 3 >= sent * 2,
        "the flood's slots were spent while measuring: {limited} of {sent} refused unverified"
    );
    // Listed flood sources are verified only as their slots' budgets refill (4,096 × 2/min),
    // plus trickle credits for sources not yet listed; far below the flood's rate.
    let refill = 4096.0 * 2.0 / 60.0 * window;
    let bound = (1.5 * refill + 100.0) as u64;
    assert!(
        failed_checks <= bound,
        "{failed_checks} failed checks in {window:.1} s; bound {bound}"
    );
}
