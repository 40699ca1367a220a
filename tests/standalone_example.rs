//! The shipped standalone example (`envoy/examples/standalone/envoy.yaml`) as it is, in a real
//! Envoy with 2 workers, a test PKI, a JWKS server and an echo upstream: the authentication
//! walk-through (what each kind of bad token gets, identity headers upstream, one JWKS fetch,
//! a DPoP-bound token with proofs made by `tools/dpop-proof.py`), checked step by step as a
//! table; any FAIL fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const EXAMPLE_ISSUER: &str = "https://idp.meshguard.local";
const EXAMPLE_AUDIENCE: &str = "demo-api";

fn example_claims(extra: Value) -> Value {
    let mut c = claims(json!({"iss": EXAMPLE_ISSUER, "aud": EXAMPLE_AUDIENCE}));
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn the_standalone_example_authenticates_as_documented() {
    let rsa = Signer::rsa("demo-rsa");
    let es = Signer::es256("demo-ec");
    let idp = JwksServer::start(jwks(&[&rsa, &es]));
    let upstream = echo_upstream();
    let (envoy, pki, _) = start_shipped(
        "envoy/examples/standalone/envoy.yaml",
        "standalone",
        upstream.port(),
        idp.server.port(),
    );
    let port = envoy.port("mtls");
    let frontend = pki.workload(FRONTEND);
    let with_cert = Client::new(port, &pki, Some(&frontend));
    let no_cert = Client::new(port, &pki, None);

    let good = rsa.sign(&example_claims(json!({"sub": "alice"})));
    let bearer = |t: &str| format!("Bearer {t}");
    eventually("JWKS fetched", Duration::from_secs(20), || {
        no_cert
            .get("/", &[("authorization", &bearer(&good))])
            .status
            == 200
    });

    let mut t = Table::default();

    let r = no_cert.get("/orders", &[]);
    t.check(
        "no token",
        "401 authentication required",
        r.describe(),
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
    t.expect("valid RS256 token + SPIFFE client cert", "200", &r);
    t.upstream(
        "  upstream x-user (client sent mallory)",
        &r,
        "x-user",
        Some("alice"),
    );
    t.upstream(
        "  upstream x-peer-spiffe",
        &r,
        "x-peer-spiffe",
        Some(FRONTEND),
    );
    t.upstream("  upstream authorization", &r, "authorization", None);

    let r = no_cert.get(
        "/orders",
        &[(
            "authorization",
            &bearer(&es.sign(&example_claims(json!({})))),
        )],
    );
    t.expect("valid ES256 token, no client cert", "200", &r);

    let n = now();
    let cases = [
        (
            "expired token",
            example_claims(json!({"iat": n - 7200, "exp": n - 3600})),
            &rsa,
            "401 token expired",
        ),
        (
            "wrong audience",
            example_claims(json!({"aud": "billing"})),
            &rsa,
            "401 audience not allowed",
        ),
        (
            "unknown issuer",
            example_claims(json!({"iss": "https://evil.example"})),
            &rsa,
            "401 unknown issuer",
        ),
    ];
    for (step, c, signer, want) in cases {
        let r = no_cert.get("/orders", &[("authorization", &bearer(&signer.sign(&c)))]);
        t.expect(step, want, &r);
    }
    let forger = Signer::es256("demo-ec");
    let r = no_cert.get(
        "/orders",
        &[(
            "authorization",
            &bearer(&forger.sign(&example_claims(json!({})))),
        )],
    );
    t.expect(
        "forged signature (same kid, other key)",
        "401 invalid signature",
        &r,
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
        b64(&example_claims(json!({})))
    );
    let r = no_cert.get("/orders", &[("authorization", &bearer(&none))]);
    t.expect("alg: none", "401 unsupported algorithm", &r);

    let dup: Vec<(&str, &[u8])> = vec![
        ("authorization", bearer(&good).into_bytes().leak()),
        ("authorization", b"Bearer other"),
    ];
    let r = no_cert.request("GET", "/orders", &dup);
    t.expect("two Authorization headers", "400 multiple credentials", &r);

    let r = no_cert.get("/orders", &[("authorization", &bearer(&good))]);
    t.expect("good token again (workers healthy)", "200", &r);

    // RFC 9449, as in the README's worked example: the client's key and proofs come from
    // tools/dpop-proof.py, the token names the key's thumbprint in `cnf.jkt`.
    let key = pki.dir.parent().unwrap().join("dpop-key.pem");
    let key = key.to_str().unwrap();
    let jkt = dpop_tool(&["keygen", key]);
    let again = dpop_tool(&["jkt", key]);
    t.check(
        "dpop-proof.py: jkt of the key = keygen's",
        &jkt,
        again.clone(),
        again == jkt && jkt.len() == 43,
    );
    let bound = rsa.sign(&example_claims(json!({"sub": "dave", "cnf": {"jkt": jkt}})));
    // The URL this client uses (it sends `host: localhost`), with a query the proof leaves out.
    let proof = dpop_tool(&[
        "proof",
        key,
        "GET",
        "https://localhost/orders?page=2",
        "--token",
        &bound,
    ]);
    let dpop_auth = format!("DPoP {bound}");
    let with_proof = [
        ("authorization", dpop_auth.as_str()),
        ("dpop", proof.as_str()),
    ];
    let r = no_cert.get("/orders?page=2", &with_proof);
    t.expect("DPoP-bound token + proof from dpop-proof.py", "200", &r);
    t.upstream("  upstream x-user", &r, "x-user", Some("dave"));
    t.upstream("  upstream dpop", &r, "dpop", None);
    let r = no_cert.get("/orders?page=2", &with_proof);
    t.expect("the same proof again", "401 DPoP proof replayed", &r);
    let dpop_challenge = r
        .headers
        .iter()
        .find(|(n, v)| n == "www-authenticate" && v.starts_with("DPoP "))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    t.check(
        "  its DPoP challenge",
        "error=invalid_dpop_proof",
        dpop_challenge.clone(),
        dpop_challenge.contains("algs=\"ES256 RS256\", error=\"invalid_dpop_proof\""),
    );
    let r = no_cert.get("/orders", &[("authorization", &bearer(&bound))]);
    t.expect(
        "the DPoP-bound token as Bearer",
        "401 DPoP-bound token sent as bearer",
        &r,
    );

    let fetches = idp.fetches();
    t.check(
        "JWKS fetches for the whole proxy",
        "1",
        fetches.to_string(),
        fetches == 1,
    );

    t.print();
    t.assert_all_pass();
}
