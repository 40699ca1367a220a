//! Authentication through a real Envoy (2 workers, mTLS listener, remote JWKS the test serves).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SPIFFE: &str = "spiffe://cluster.local/ns/web/sa/frontend";

struct Setup {
    pki: Pki,
    idp: JwksServer,
    rsa: Signer,
    es: Signer,
    ed: Signer,
    _upstream: TestServer,
    envoy: Envoy,
}

fn plugin(refresh_seconds: u64) -> Value {
    json!({
        "realm": "orders-api",
        "logLevel": "debug",
        "providers": [{
            "name": "idp",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwksUri": format!("http://idp.test{JWKS_PATH}"),
            "jwksCluster": "idp",
            "jwksRefreshSeconds": refresh_seconds,
            "fromParams": ["access_token"],
            "outputClaimToHeaders": [
                {"header": "x-user", "claim": "sub"},
                {"header": "x-tenant", "claim": "org.tenant"}
            ]
        }],
        "outputPeerToHeaders": [
            {"header": "x-peer-spiffe", "field": "spiffeId"},
            {"header": "x-peer-sa", "field": "serviceAccount"},
            {"header": "x-peer-cert-sha256", "field": "certificateSha256"}
        ]
    })
}

fn setup(refresh_seconds: u64) -> Setup {
    let (rsa, es, ed) = (
        Signer::rsa("rsa-1"),
        Signer::es256("ec-1"),
        Signer::ed25519("ed-1"),
    );
    let idp = JwksServer::start(jwks(&[&rsa, &es, &ed]));
    let Stack {
        envoy,
        pki,
        idp,
        upstream,
    } = Stack::start("authn", idp, &plugin(refresh_seconds), false, 2);
    let s = Setup {
        pki,
        idp,
        rsa,
        es,
        ed,
        _upstream: upstream,
        envoy,
    };
    s.wait_for_keys();
    s
}

impl Setup {
    fn client(&self, cert: Option<&ClientCert>) -> Client {
        Client::new(self.envoy.port("mtls"), &self.pki, cert)
    }

    fn wait_for_keys(&self) {
        let c = self.client(None);
        let auth = format!("Bearer {}", self.ed.sign(&claims(json!({}))));
        eventually("JWKS loaded", Duration::from_secs(20), || {
            c.get("/", &[("authorization", &auth)]).status == 200
        });
    }
}

/// Asserts an RFC 6750 error answer: status, challenge parameters and JSON body.
fn assert_denied(r: &Response, status: u16, error: Option<&str>, description: &str) {
    assert_eq!(r.status, status, "body: {}", r.body);
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    let params = challenge_params(challenge);
    assert_eq!(
        params.get("realm").map(String::as_str),
        Some("orders-api"),
        "{challenge}"
    );
    assert_eq!(
        params.get("error").map(String::as_str),
        error,
        "{challenge}"
    );
    match error {
        Some(_) => assert_eq!(
            params.get("error_description").map(String::as_str),
            Some(description)
        ),
        None => assert!(!challenge.contains("error"), "{challenge}"),
    }
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["error_description"], description, "{}", r.body);
    if let Some(e) = error {
        assert_eq!(body["error"], e);
    }
}

#[test]
fn valid_tokens_reach_upstream_with_identity_headers_and_without_authorization() {
    let s = setup(300);
    let cert = s.pki.workload(SPIFFE);
    let c = s.client(Some(&cert));
    for signer in [&s.rsa, &s.es, &s.ed] {
        let token = signer.sign(&claims(json!({"org": {"tenant": "acme"}})));
        let auth = format!("Bearer {token}");
        let r = c.get(
            "/orders?page=1",
            &[
                ("authorization", &auth),
                // Smuggling attempts: every header meshguard sets is removed first.
                ("x-user", "mallory"),
                ("x-meshguard-principal", "https://evil/root"),
                ("x_meshguard_principal", "https://evil/root"),
                ("x-peer-spiffe", "spiffe://cluster.local/ns/admin/sa/root"),
            ],
        );
        assert_eq!(r.status, 200, "{:?}: {}", signer.alg, r.body);
        assert_eq!(r.upstream_header("x-user").as_deref(), Some("alice"));
        assert_eq!(r.upstream_header("x-tenant").as_deref(), Some("acme"));
        assert_eq!(
            r.upstream_header("x-meshguard-principal"),
            Some(format!("{ISSUER}/alice"))
        );
        assert_eq!(
            r.upstream_header("x-peer-spiffe").as_deref(),
            Some(SPIFFE),
            "{}",
            r.body
        );
        assert_eq!(r.upstream_header("x-peer-sa").as_deref(), Some("frontend"));
        assert_eq!(
            r.upstream_header("x-peer-cert-sha256"),
            Some(cert.sha256_hex())
        );
        assert_eq!(
            r.upstream_header("authorization"),
            None,
            "token not forwarded"
        );
        let count = |name: &str| {
            r.json()["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h[0] == name)
                .count()
        };
        assert_eq!(count("x-user"), 1);
        assert_eq!(
            count("x_meshguard_principal"),
            0,
            "underscore spelling removed too"
        );
        assert_eq!(r.json()["path"], "/orders?page=1");
    }

    // Without a client certificate: authenticated, but no peer identity reaches upstream, and a
    // smuggled peer header is still removed.
    let plain = s.client(None);
    let auth = format!("Bearer {}", s.es.sign(&claims(json!({}))));
    let r = plain.get("/", &[("authorization", &auth), ("x-peer-spiffe", SPIFFE)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-peer-spiffe"), None);
    assert_eq!(r.upstream_header("x-user").as_deref(), Some("alice"));

    // A token in the configured query parameter works too, and the upstream gets the path
    // without it (other parameters as they were).
    let r = plain.get(
        &format!("/q?x=1&access_token={}&y=2", s.ed.sign(&claims(json!({})))),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/q?x=1&y=2");
}

#[test]
fn one_jwks_fetch_per_refresh_for_the_whole_proxy_and_both_workers_verify() {
    let refresh = 2;
    let s = setup(refresh);
    let start = Instant::now();
    let before = s.idp.fetches();
    assert!(before >= 1);

    // Many connections in parallel: the kernel spreads them over both workers.
    let token = s.rsa.sign(&claims(json!({})));
    let port = s.envoy.port("mtls");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let auth = format!("Bearer {token}");
            let client = Client::new(port, &s.pki, None);
            thread::spawn(move || {
                (0..10)
                    .map(|_| client.get("/", &[("authorization", &auth)]).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().iter().all(|s| *s == 200));
    }

    // Watch three refresh intervals go by; a fetch per worker shows as soon as it exceeds the
    // bound, and ends the watch early.
    let window = Duration::from_secs(3 * refresh) + Duration::from_millis(500);
    eventually(
        "three refresh intervals",
        window + Duration::from_secs(5),
        || {
            let during = s.idp.fetches() - before;
            let max = (start.elapsed().as_secs_f64() / refresh as f64).floor() as usize + 1;
            during > max || start.elapsed() >= window
        },
    );
    let elapsed = start.elapsed().as_secs_f64();
    let during = s.idp.fetches() - before;
    // One fetch per refresh interval for the proxy (not one per worker): at most one extra
    // for the interval in progress when we started counting.
    let max = (elapsed / refresh as f64).floor() as usize + 1;
    assert!(
        during >= 2 && during <= max,
        "{during} fetches in {elapsed:.1}s with refresh {refresh}s (max {max})"
    );

    // Which Envoy worker threads let requests through: the thread id is in each log line.
    let log = s.envoy.log_text();
    let threads: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("meshguard: allow"))
        .filter_map(|l| l.split("][").nth(1))
        .collect();
    assert_eq!(
        threads.len(),
        2,
        "requests verified on both workers: {threads:?}"
    );
    let fetch_logs = log.lines().filter(|l| l.contains("JWKS fetched")).count();
    assert_eq!(
        fetch_logs,
        s.idp.fetches(),
        "every fetch was one worker's, logged once"
    );
}

#[test]
fn each_rejection_has_its_status_challenge_and_body_and_the_next_request_still_works() {
    let s = setup(300);
    let c = s.client(None);
    let n = now();
    let good = s.es.sign(&claims(json!({})));
    let other_key = Signer::es256("ec-1"); // same kid, different key
    let rogue = Signer::ed25519("rogue");

    let b64 = |v: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.to_string(),
        )
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&claims(json!({})))
    );
    let none_sig = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "none"})),
        b64(&claims(json!({})))
    );
    // HS256 keyed with the RSA public key: the classic algorithm-confusion forgery.
    let hs = {
        let secret = s.rsa.jwk.to_string();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let (h, rest) = good.split_once('.').unwrap();
    let padded = format!("{h}=.{rest}");
    // "+/" in place of the signature's first two characters (always present, unlike '-' '_').
    let (signed, sig) = good.rsplit_once('.').unwrap();
    let plus_slash = format!("{signed}.+/{}", &sig[2..]);
    let not_object = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "ES256", "kid": "ec-1"})),
        b64(&json!([1, 2]))
    );
    let huge_exp = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "ES256", "kid": "ec-1"})),
        b64(&json!({"iss": ISSUER, "exp": 1e300}))
    );

    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        (
            "expired",
            bearer(
                &s.es
                    .sign(&claims(json!({"iat": n - 7200, "exp": n - 3600}))),
            ),
            401,
            Some("invalid_token"),
            "token expired",
        ),
        (
            "not yet valid",
            bearer(&s.es.sign(&claims(json!({"nbf": n + 3600})))),
            401,
            Some("invalid_token"),
            "token not yet valid",
        ),
        (
            "issued in future",
            bearer(&s.es.sign(&claims(json!({"iat": n + 3600})))),
            401,
            Some("invalid_token"),
            "token issued in the future",
        ),
        (
            "no exp",
            bearer(&s.es.sign(&claims(json!({"exp": null})))),
            401,
            Some("invalid_token"),
            "token has no expiration",
        ),
        (
            "bad signature",
            bearer(&other_key.sign(&claims(json!({})))),
            401,
            Some("invalid_token"),
            "invalid signature",
        ),
        (
            "unknown kid",
            bearer(&rogue.sign(&claims(json!({})))),
            401,
            Some("invalid_token"),
            "unknown signing key",
        ),
        (
            "wrong audience",
            bearer(&s.es.sign(&claims(json!({"aud": "billing"})))),
            401,
            Some("invalid_token"),
            "audience not allowed",
        ),
        (
            "wrong issuer",
            bearer(&s.es.sign(&claims(json!({"iss": "https://evil.test"})))),
            401,
            Some("invalid_token"),
            "unknown issuer",
        ),
        (
            "alg none, empty signature",
            bearer(&unsigned),
            401,
            Some("invalid_token"),
            "malformed token",
        ),
        (
            "alg none",
            bearer(&none_sig),
            401,
            Some("invalid_token"),
            "unsupported algorithm",
        ),
        (
            "HS256 with public key",
            bearer(&hs),
            401,
            Some("invalid_token"),
            "unsupported algorithm",
        ),
        (
            "garbage",
            bearer("garbage"),
            401,
            Some("invalid_token"),
            "malformed token",
        ),
        (
            "truncated",
            bearer(&good[..good.len() / 2]),
            401,
            Some("invalid_token"),
            "malformed token",
        ),
        (
            "padded base64",
            bearer(&padded),
            401,
            Some("invalid_token"),
            "malformed token",
        ),
        (
            "+/ base64",
            bearer(&plus_slash),
            401,
            Some("invalid_token"),
            "malformed token",
        ),
        (
            "payload not an object",
            bearer(&not_object),
            401,
            Some("invalid_token"),
            "malformed token",
        ),
        (
            "huge exp",
            bearer(&huge_exp),
            401,
            Some("invalid_token"),
            "malformed token",
        ),
        (
            "oversized",
            bearer(&"a".repeat(9000)),
            401,
            Some("invalid_token"),
            "token too large",
        ),
        (
            "empty bearer",
            "Bearer".to_string(),
            400,
            Some("invalid_request"),
            "empty credentials",
        ),
    ];
    for (name, auth, status, error, description) in &cases {
        let r = c.get("/", &[("authorization", auth)]);
        eprintln!("case {name}: {}", r.status);
        assert_denied(&r, *status, *error, description);
        if auth.len() > 30 {
            assert!(
                !r.body.contains(&auth[7..30]),
                "{name}: token echoed in the body"
            );
        }
    }

    // No credentials at all, or another scheme: a challenge without an error code.
    assert_denied(&c.get("/", &[]), 401, None, "authentication required");
    assert_denied(
        &c.get("/", &[("authorization", "Basic dXNlcjpwYXNz")]),
        401,
        None,
        "authentication required",
    );

    // Two credentials: duplicate Authorization lines, or header plus query parameter.
    let auth = bearer(&good);
    let dup: Vec<(&str, &[u8])> = vec![
        ("authorization", auth.as_bytes()),
        ("authorization", auth.as_bytes()),
    ];
    assert_denied(
        &c.request("GET", "/", &dup),
        400,
        Some("invalid_request"),
        "multiple credentials",
    );
    let r = c.get(
        &format!("/?access_token={good}"),
        &[("authorization", &auth)],
    );
    assert_denied(&r, 400, Some("invalid_request"), "multiple credentials");

    // Non-UTF-8 bytes in the header.
    let raw: Vec<(&str, &[u8])> = vec![("authorization", b"Bearer abc\xff\xfe.def.ghi")];
    assert_denied(
        &c.request("GET", "/", &raw),
        401,
        Some("invalid_token"),
        "malformed token",
    );

    // The worker VMs survived all of it.
    let r = c.get("/", &[("authorization", &auth)]);
    assert_eq!(r.status, 200);
    assert!(!s.envoy.log_text().contains("panic"), "no panic in the log");
}

#[test]
fn provider_without_keys_fails_closed_with_a_clear_401() {
    let signer = Signer::es256("ec-1");
    let idp = JwksServer::start(String::new());
    idp.set(500, "{}".into());
    let Stack {
        envoy,
        pki,
        idp,
        upstream: _upstream,
    } = Stack::start("nokeys", idp, &plugin(300), false, 2);
    eventually("a failed fetch", Duration::from_secs(10), || {
        idp.fetches() >= 1
    });
    let c = Client::new(envoy.port("mtls"), &pki, None);
    let r = c.get(
        "/",
        &[(
            "authorization",
            &format!("Bearer {}", signer.sign(&claims(json!({})))),
        )],
    );
    assert_denied(&r, 401, Some("invalid_token"), "signing keys unavailable");

    // The IdP recovers: retries (backing off from 1 s) pick the keys up without a restart.
    idp.set(200, jwks(&[&signer]));
    let auth = format!("Bearer {}", signer.sign(&claims(json!({}))));
    eventually("keys after recovery", Duration::from_secs(15), || {
        c.get("/", &[("authorization", &auth)]).status == 200
    });
    assert!(envoy
        .log_text()
        .contains("JWKS fetch from http://idp.test/.well-known/jwks.json failed: status 500"));
}

#[test]
fn plugin_configuration_as_a_struct_is_accepted() {
    let signer = Signer::ed25519("ed-1");
    let idp = JwksServer::start(jwks(&[&signer]));
    let mut cfg = plugin(300);
    cfg["providers"][0]["jwksUri"] = Value::Null;
    cfg["providers"][0]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.starts_with("jwks"));
    cfg["providers"][0]["jwks"] = json!(jwks(&[&signer]));
    let Stack {
        envoy,
        pki,
        idp,
        upstream: _upstream,
    } = Stack::start("struct", idp, &cfg, true, 2);
    let c = Client::new(envoy.port("mtls"), &pki, None);
    let r = c.get(
        "/",
        &[(
            "authorization",
            &format!("Bearer {}", signer.sign(&claims(json!({})))),
        )],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(idp.fetches(), 0, "inline keys need no fetch");
}

#[test]
fn bad_configuration_is_refused_and_envoy_log_names_the_field() {
    let dir = temp_dir("badcfg");
    let pki = Pki::new(&dir);
    let world = World {
        pki: &pki,
        upstream_port: 9,
        jwks_port: 9,
    };
    let cases = [
        (
            json!({"providers": [{"issuer": ISSUER, "jwksUri": "http://x/k", "jwksCluster": "idp", "clockSkewSecs": 5}]}),
            "providers[0].clockSkewSecs: unknown field `clockSkewSecs`",
        ),
        (
            json!({"providers": [{"issuer": ISSUER, "jwksUri": "http://x/k", "jwksCluster": "idp", "clockSkewSeconds": "60"}]}),
            "providers[0].clockSkewSeconds: invalid type: string \"60\", expected a whole number ≥ 0",
        ),
        (
            json!({"providers": [{"issuer": ISSUER, "jwksUri": "http://x/k", "jwksCluster": "idp", "algorithms": ["HS256"]}]}),
            "providers[0].algorithms[0]: unsupported algorithm \"HS256\"",
        ),
    ];
    for (cfg, want) in cases {
        let log = Envoy::expect_refusal(&bootstrap(&world, &cfg, false));
        assert!(
            log.contains(&format!("meshguard: invalid configuration: {want}")),
            "want {want:?} in:\n{log}"
        );
    }
}
