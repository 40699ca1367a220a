//! Requests that wait for keys, through real Envoy (2 workers): a provider's first keys are
//! waited for (a fresh proxy, like a configuration update that changes `jwksUri`, answers valid
//! tokens 200, not `401 signing keys unavailable`), and a request with a body that waits for a
//! kid-miss refetch is never forwarded before it is judged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn plugin(timeout_ms: u64) -> serde_json::Value {
    json!({"providers": [{
        "name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
        "jwksUri": format!("http://idp.test{JWKS_PATH}"), "jwksCluster": "idp",
        "jwksTimeoutMs": timeout_ms, "jwksRefreshSeconds": 3600, "kidMissRefetchSeconds": 1
    }]})
}

#[test]
fn first_requests_wait_for_the_first_keys_instead_of_failing() {
    let signer = Signer::es256("k1");
    let idp = JwksServer::start(jwks(&[&signer]));
    // Every fetch takes 1.5 s: the first requests arrive before any keys exist.
    idp.set_slow(Duration::from_millis(1500));
    let s = Stack::start("wait-first", idp, &plugin(4000), false, 2);
    let token = signer.sign(&claims(json!({})));
    let auth = format!("Bearer {token}");
    let forged = {
        let (rest, _) = token.rsplit_once('.').unwrap();
        format!("Bearer {rest}.AAAA{}", &token[token.len() - 20..])
    };
    assert_eq!(s.idp.fetches(), 0, "the fetch is slower than the start-up");

    let started = Instant::now();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let port = s.envoy.port("plain");
            let auth = if i == 5 { forged.clone() } else { auth.clone() };
            std::thread::spawn(move || {
                Client::plain(port)
                    .get("/wait", &[("authorization", &auth)])
                    .status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let waited = started.elapsed();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 200, 401],
        "valid tokens wait for the first keys and pass; the forged one is refused after the wait"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "they did wait: {waited:?}"
    );
    assert_eq!(
        s.upstream.count("/wait"),
        5,
        "only the valid requests reached the upstream"
    );
    let log = s.envoy.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(
        s.envoy
            .meshguard_stat("denied.invalid_token.keys_unavailable"),
        0
    );
}

#[test]
fn a_request_body_waits_with_its_request_during_a_kid_miss_refetch() {
    let known = Signer::es256("k1");
    let idp = JwksServer::start(jwks(&[&known]));
    let s = Stack::start("wait-body", idp, &plugin(3000), false, 2);
    let good = known.sign(&claims(json!({})));
    eventually("keys loaded", Duration::from_secs(20), || {
        Client::plain(s.envoy.port("plain"))
            .get("/", &[("authorization", &format!("Bearer {good}"))])
            .status
            == 200
    });
    // A token under a kid the IdP does not publish, sent with a body; the refetch it causes
    // takes 1 s, and the body arrives while the request waits.
    s.idp.set_slow(Duration::from_millis(1000));
    let rogue = Signer::es256("k-unknown");
    let token = rogue.sign(&claims(json!({})));
    let body = "x".repeat(20_000);
    let mut tcp = TcpStream::connect(("127.0.0.1", s.envoy.port("plain"))).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nauthorization: Bearer {token}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the body comes in a later packet
    tcp.write_all(body.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(
        s.upstream.count("/upload"),
        0,
        "the request was forwarded before it was judged"
    );
    assert!(s.idp.fetches() >= 2, "the unknown kid caused a refetch");
}

#[test]
fn a_kid_miss_fetch_whose_request_went_away_still_loads_the_keys() {
    let old = Signer::es256("k-old");
    let new = Signer::es256("k-new");
    let idp = JwksServer::start(jwks(&[&old]));
    // One kid-miss refetch per minute: if the orphaned fetch's answer were dropped, the new key
    // would stay unknown for that long.
    let plugin = json!({"providers": [{
        "name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
        "jwksUri": format!("http://idp.test{JWKS_PATH}"), "jwksCluster": "idp",
        "jwksRefreshSeconds": 3600, "kidMissRefetchSeconds": 60
    }]});
    let s = Stack::start("wait-orphan", idp, &plugin, false, 2);
    let port = s.envoy.port("plain");
    let get = |t: &str| {
        Client::plain(port)
            .get("/", &[("authorization", &format!("Bearer {t}"))])
            .status
    };
    let t_old = old.sign(&claims(json!({})));
    eventually("keys loaded", Duration::from_secs(20), || {
        get(&t_old) == 200
    });
    let before = s.idp.fetches();

    // The IdP rotates and answers slowly; a token under the new key arrives and its client
    // hangs up while the refetch it caused is in flight.
    s.idp.set(200, jwks(&[&old, &new]));
    s.idp.set_slow(Duration::from_millis(800));
    let t_new = new.sign(&claims(json!({})));
    {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let req = format!(
            "GET /gone HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t_new}\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).unwrap();
        eventually(
            "the refetch reached the IdP",
            Duration::from_secs(10),
            || s.idp.fetches() > before,
        );
    } // the connection closes here, before the answer
    s.idp.set_slow(Duration::ZERO);
    eventually(
        "the new key is loaded by the orphaned fetch",
        Duration::from_secs(10),
        || get(&t_new) == 200,
    );
    assert_eq!(s.idp.fetches(), before + 1, "no second fetch was needed");
    assert_eq!(
        s.upstream.count("/gone"),
        0,
        "the abandoned request never went upstream"
    );
}
