//! `make demo`: runs the shipped standalone example (`envoy/examples/standalone/envoy.yaml`)
//! in a real Envoy with 2 workers, a dev PKI, a dev identity provider serving a JWKS, and an
//! upstream that echoes what it received; then walks through what meshguard does and prints a
//! table (step, expected, got, PASS/FAIL). Any FAIL fails the run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DEMO_ISSUER: &str = "https://idp.meshguard.local";
const DEMO_AUDIENCE: &str = "demo-api";
const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";

fn demo_claims(extra: Value) -> Value {
    let mut c = claims(json!({"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE}));
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

struct Table {
    rows: Vec<(String, String, String, bool)>,
}

impl Table {
    fn check(&mut self, step: &str, expected: &str, got: String, pass: bool) {
        self.rows.push((step.into(), expected.into(), got, pass));
    }

    fn print(&self) {
        let w = |i: usize| {
            self.rows
                .iter()
                .map(|r| [&r.0, &r.1, &r.2][i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (a, b, c) = (w(0).max(4), w(1).max(8), w(2).max(3));
        println!(
            "\n{:<a$}  {:<b$}  {:<c$}  result",
            "step", "expected", "got"
        );
        println!("{}", "-".repeat(a + b + c + 12));
        for (step, exp, got, pass) in &self.rows {
            println!(
                "{step:<a$}  {exp:<b$}  {got:<c$}  {}",
                if *pass { "PASS" } else { "FAIL" }
            );
        }
        println!();
    }
}

fn describe(r: &Response) -> String {
    match r.status {
        200 => "200".to_string(),
        s => format!(
            "{s} {}",
            r.json()["error_description"].as_str().unwrap_or("")
        ),
    }
}

#[test]
fn demo() {
    let (dir, pki) = example_dir("demo");
    let rsa = Signer::rsa("demo-rsa");
    let es = Signer::es256("demo-ec");
    let idp = JwksServer::start(jwks(&[&rsa, &es]));
    let upstream = echo_upstream();
    let shipped = Shipped::load("envoy/examples/standalone/envoy.yaml");
    let ports: HashMap<u64, u64> = [
        (10443, 0),
        (9901, 0),
        (8080, u64::from(upstream.port())),
        (8081, u64::from(idp.server.port())),
    ]
    .into();
    let envoy = Envoy::start(&shipped.runnable(&dir, &ports), 2);
    let port = envoy.port("mtls");
    let frontend = pki.workload(FRONTEND);
    let with_cert = Client::new(port, &pki, Some(&frontend));
    let no_cert = Client::new(port, &pki, None);

    let good = rsa.sign(&demo_claims(json!({"sub": "alice"})));
    let bearer = |t: &str| format!("Bearer {t}");
    eventually("JWKS fetched", Duration::from_secs(20), || {
        no_cert
            .get("/", &[("authorization", &bearer(&good))])
            .status
            == 200
    });

    println!(
        "\nmeshguard demo: {} (2 workers), listener https://127.0.0.1:{port}",
        shipped.path.display()
    );
    let mut t = Table { rows: Vec::new() };

    let r = no_cert.get("/orders", &[]);
    t.check(
        "no token",
        "401 authentication required",
        describe(&r),
        r.status == 401
            && !r
                .header("www-authenticate")
                .unwrap_or("")
                .contains("error="),
    );

    let r = with_cert.get(
        "/orders",
        &[("authorization", &bearer(&good)), ("x-user", "mallory")],
    );
    t.check(
        "valid RS256 token + SPIFFE client cert",
        "200",
        describe(&r),
        r.status == 200,
    );
    let user = r.upstream_header("x-user");
    t.check(
        "  upstream x-user (client sent mallory)",
        "alice",
        user.clone().unwrap_or_default(),
        user.as_deref() == Some("alice"),
    );
    let peer = r.upstream_header("x-peer-spiffe");
    t.check(
        "  upstream x-peer-spiffe",
        FRONTEND,
        peer.clone().unwrap_or_default(),
        peer.as_deref() == Some(FRONTEND),
    );
    let auth = r.upstream_header("authorization");
    t.check(
        "  upstream authorization",
        "(removed)",
        auth.clone().unwrap_or("(removed)".into()),
        auth.is_none(),
    );

    let r = no_cert.get(
        "/orders",
        &[("authorization", &bearer(&es.sign(&demo_claims(json!({})))))],
    );
    t.check(
        "valid ES256 token, no client cert",
        "200",
        describe(&r),
        r.status == 200,
    );

    let n = now();
    let cases = [
        (
            "expired token",
            demo_claims(json!({"iat": n - 7200, "exp": n - 3600})),
            &rsa,
            "401 token expired",
        ),
        (
            "wrong audience",
            demo_claims(json!({"aud": "billing"})),
            &rsa,
            "401 audience not allowed",
        ),
        (
            "unknown issuer",
            demo_claims(json!({"iss": "https://evil.example"})),
            &rsa,
            "401 unknown issuer",
        ),
    ];
    for (step, c, signer, want) in cases {
        let r = no_cert.get("/orders", &[("authorization", &bearer(&signer.sign(&c)))]);
        t.check(step, want, describe(&r), describe(&r) == want);
    }
    let forger = Signer::es256("demo-ec");
    let r = no_cert.get(
        "/orders",
        &[(
            "authorization",
            &bearer(&forger.sign(&demo_claims(json!({})))),
        )],
    );
    t.check(
        "forged signature (same kid, other key)",
        "401 invalid signature",
        describe(&r),
        describe(&r) == "401 invalid signature",
    );

    let b64 = |v: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.to_string(),
        )
    };
    let none = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "none"})),
        b64(&demo_claims(json!({})))
    );
    let r = no_cert.get("/orders", &[("authorization", &bearer(&none))]);
    t.check(
        "alg: none",
        "401 unsupported algorithm",
        describe(&r),
        describe(&r) == "401 unsupported algorithm",
    );

    let dup: Vec<(&str, &[u8])> = vec![
        ("authorization", bearer(&good).into_bytes().leak()),
        ("authorization", b"Bearer other"),
    ];
    let r = no_cert.request("GET", "/orders", &dup);
    t.check(
        "two Authorization headers",
        "400 multiple credentials",
        describe(&r),
        describe(&r) == "400 multiple credentials",
    );

    let r = no_cert.get("/orders", &[("authorization", &bearer(&good))]);
    t.check(
        "good token again (workers healthy)",
        "200",
        describe(&r),
        r.status == 200,
    );

    let fetches = idp.fetches();
    t.check(
        "JWKS fetches for the whole proxy",
        "1",
        fetches.to_string(),
        fetches == 1,
    );

    t.print();
    println!("Envoy admin: http://{}/stats?filter=wasm", envoy.admin);
    let failed: Vec<_> = t
        .rows
        .iter()
        .filter(|r| !r.3)
        .map(|r| r.0.clone())
        .collect();
    assert!(failed.is_empty(), "demo steps failed: {failed:?}");
}
