//! DPoP (RFC 9449) through a real Envoy (2 workers): proofs and tokens signed with
//! `jsonwebtoken`, verified by meshguard; the replay cache shared by the workers; nonces; and
//! DPoP-bound beside certificate-bound tokens on one mTLS listener.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

const ORIGIN: &str = "https://api.example.com";
const ALGS: &str = "ES256 RS256 EdDSA";

fn plugin(dpop: Value) -> Value {
    json!({
        "realm": "orders-api",
        "logLevel": "debug",
        "providers": [{
            "name": "idp",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwksUri": format!("http://idp.test{JWKS_PATH}"),
            "jwksCluster": "idp",
            "dpop": dpop,
            "outputClaimToHeaders": [{"header": "x-dpop-jkt", "claim": "cnf.jkt"}]
        }]
    })
}

struct Setup {
    stack: Stack,
    idp_key: Signer,
}

fn setup(tag: &str, dpop: Value) -> Setup {
    let idp_key = Signer::es256("idp-1");
    let idp = JwksServer::start(jwks(&[&idp_key]));
    let stack = Stack::start(tag, idp, &plugin(dpop), false, 2);
    Setup { stack, idp_key }
}

impl Setup {
    fn token_for(&self, key: Option<&ProofKey>, extra: Value) -> String {
        let mut c = claims(extra);
        if let Some(k) = key {
            c["cnf"] = json!({"jkt": k.jkt()});
        }
        self.idp_key.sign(&c)
    }

    fn client(&self) -> Client {
        Client::plain(self.stack.envoy.port("plain"))
    }
}

fn challenges(r: &Response) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The challenge of `scheme` among the answer's `WWW-Authenticate` fields, with its parameters.
fn challenge(r: &Response, scheme: &str) -> Option<std::collections::HashMap<String, String>> {
    challenges(r)
        .iter()
        .map(|c| scheme_params(c))
        .find(|(s, _)| s == scheme)
        .map(|(_, params)| params)
}

/// The proof with its signature's first character changed (still base64url).
fn bad_signature(proof: &str) -> String {
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    format!("{input}.{flipped}{}", &sig[1..])
}

fn dpop_error(r: &Response) -> Option<String> {
    challenge(r, "DPoP").and_then(|p| p.get("error").cloned())
}

#[test]
fn a_valid_proof_passes_and_each_rule_is_enforced() {
    let s = setup(
        "dpop-rules",
        json!({"mode": "allowed", "algorithms": ["ES256", "RS256", "EdDSA"], "publicOrigins": [ORIGIN]}),
    );
    let key = ProofKey::es256();
    let token = s.token_for(Some(&key), json!({}));
    let htu = format!("{ORIGIN}/orders/1");
    let c = s.client();
    let send = |auth: &str, proofs: &[&str], path: &str| {
        let mut h: Vec<(&str, &str)> = vec![("authorization", auth)];
        for p in proofs {
            h.push(("dpop", p));
        }
        c.get(path, &h)
    };
    let auth = format!("DPoP {token}");

    // A valid proof: forwarded, without the proof, with the key's thumbprint available.
    let p = key.proof("GET", &htu, Some(&token), json!({}));
    let r = send(&auth, &[&p], "/orders/1?x=1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("dpop"),
        None,
        "the proof is not forwarded"
    );
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "the token is not forwarded"
    );
    assert_eq!(
        r.upstream_header("x-dpop-jkt").as_deref(),
        Some(key.jkt().as_str())
    );

    // An Ed25519 key works too (pure-Rust path in the VM).
    let ed = ProofKey::ed25519();
    let ed_token = s.token_for(Some(&ed), json!({"sub": "bob"}));
    let r = send(
        &format!("DPoP {ed_token}"),
        &[&ed.proof("GET", &htu, Some(&ed_token), json!({}))],
        "/orders/1",
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // Each rule of RFC 9449 §4.3, refused with 401 `invalid_dpop_proof` and `algs`.
    let cases: Vec<(&str, String)> = vec![
        (
            "wrong typ",
            key.proof_with("GET", &htu, Some(&token), json!({}), |h| {
                h["typ"] = json!("JWT")
            }),
        ),
        (
            "alg none",
            key.proof_with("GET", &htu, Some(&token), json!({}), |h| {
                h["alg"] = json!("none")
            }),
        ),
        (
            "alg HS256",
            key.proof_with("GET", &htu, Some(&token), json!({}), |h| {
                h["alg"] = json!("HS256")
            }),
        ),
        (
            "private jwk member",
            key.proof_with("GET", &htu, Some(&token), json!({}), |h| {
                h["jwk"]["d"] = json!("AAAA")
            }),
        ),
        (
            "no jwk",
            key.proof_with("GET", &htu, Some(&token), json!({}), |h| {
                h.as_object_mut().unwrap().remove("jwk");
            }),
        ),
        (
            "bad signature",
            bad_signature(&key.proof("GET", &htu, Some(&token), json!({}))),
        ),
        (
            "htm POST for GET",
            key.proof("POST", &htu, Some(&token), json!({})),
        ),
        (
            "htu of another host",
            key.proof(
                "GET",
                "https://evil.example.com/orders/1",
                Some(&token),
                json!({}),
            ),
        ),
        (
            "htu of another path",
            key.proof(
                "GET",
                &format!("{ORIGIN}/orders/2"),
                Some(&token),
                json!({}),
            ),
        ),
        (
            "iat an hour old",
            key.proof("GET", &htu, Some(&token), json!({"iat": now() - 3600})),
        ),
        (
            "iat in the future",
            key.proof("GET", &htu, Some(&token), json!({"iat": now() + 600})),
        ),
        (
            "no jti",
            key.proof("GET", &htu, Some(&token), json!({"jti": null})),
        ),
        (
            "jti too long",
            key.proof("GET", &htu, Some(&token), json!({"jti": "x".repeat(300)})),
        ),
        (
            "ath of another token",
            key.proof("GET", &htu, Some("another.token.value"), json!({})),
        ),
        ("no ath", key.proof("GET", &htu, None, json!({}))),
    ];
    for (what, proof) in &cases {
        let r = send(&auth, &[proof], "/orders/1");
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(
            dpop_error(&r).as_deref(),
            Some("invalid_dpop_proof"),
            "{what}: {:?}",
            challenges(&r)
        );
        assert_eq!(
            challenge(&r, "DPoP")
                .unwrap()
                .get("algs")
                .map(String::as_str),
            Some(ALGS),
            "{what}"
        );
        // Bearer is also accepted (mode allowed): both challenges (RFC 9449 §7.1).
        assert!(
            challenge(&r, "Bearer").is_some(),
            "{what}: {:?}",
            challenges(&r)
        );
    }

    // The htu mismatch is explained in the log: what was compared.
    let log = s.stack.envoy.log_text();
    assert!(
        log.contains("https://evil.example.com/orders/1") && log.contains(&htu),
        "htu log line names both URIs"
    );
    assert!(!log.contains(&token), "the token never reaches the log");

    // The proof's key is not the one the token is bound to: a thief's own key, or the bound
    // key's header with a thief's key in `jwk` (refused before any signature work).
    let other = ProofKey::es256();
    let r = send(
        &auth,
        &[&other.proof("GET", &htu, Some(&token), json!({}))],
        "/orders/1",
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        dpop_error(&r).as_deref(),
        Some("invalid_token"),
        "{:?}",
        challenges(&r)
    );
    let swapped = key.proof_with("GET", &htu, Some(&token), json!({}), |h| {
        h["jwk"] = other.public_jwk()
    });
    let r = send(&auth, &[&swapped], "/orders/1");
    assert_eq!(r.status, 401);
    assert_eq!(dpop_error(&r).as_deref(), Some("invalid_token"));

    // Two DPoP headers.
    let (p1, p2) = (
        key.proof("GET", &htu, Some(&token), json!({})),
        key.proof("GET", &htu, Some(&token), json!({})),
    );
    let r = send(&auth, &[&p1, &p2], "/orders/1");
    assert_eq!(r.status, 401);
    assert_eq!(dpop_error(&r).as_deref(), Some("invalid_dpop_proof"));
}

#[test]
fn downgrades_are_refused() {
    let s = setup(
        "dpop-downgrades",
        json!({"mode": "allowed", "publicOrigins": [ORIGIN]}),
    );
    let key = ProofKey::es256();
    let bound = s.token_for(Some(&key), json!({}));
    let plain = s.token_for(None, json!({"sub": "carol"}));
    let htu = format!("{ORIGIN}/orders");
    let c = s.client();

    // A DPoP-bound token sent as Bearer (with or without a proof).
    let r = c.get("/orders", &[("authorization", &format!("Bearer {bound}"))]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        challenge(&r, "Bearer")
            .and_then(|p| p.get("error").cloned())
            .as_deref(),
        Some("invalid_token")
    );
    let p = key.proof("GET", &htu, Some(&bound), json!({}));
    let r = c.get(
        "/orders",
        &[("authorization", &format!("Bearer {bound}")), ("dpop", &p)],
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // A token that is not DPoP-bound, sent with the DPoP scheme and a valid proof.
    let p = key.proof("GET", &htu, Some(&plain), json!({}));
    let r = c.get(
        "/orders",
        &[("authorization", &format!("DPoP {plain}")), ("dpop", &p)],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        dpop_error(&r).as_deref(),
        Some("invalid_token"),
        "{:?}",
        challenges(&r)
    );

    // A proof without a token.
    let p = key.proof("GET", &htu, None, json!({}));
    let r = c.get("/orders", &[("dpop", &p)]);
    assert_eq!(r.status, 401, "{}", r.body);

    // The DPoP scheme without a proof.
    let r = c.get("/orders", &[("authorization", &format!("DPoP {bound}"))]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(dpop_error(&r).as_deref(), Some("invalid_dpop_proof"));

    // A plain Bearer token still passes in mode `allowed`.
    let r = c.get("/orders", &[("authorization", &format!("Bearer {plain}"))]);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn required_mode_refuses_bearer_tokens() {
    let s = setup(
        "dpop-required",
        json!({"mode": "required", "publicOrigins": [ORIGIN]}),
    );
    let plain = s.token_for(None, json!({}));
    let r = s
        .client()
        .get("/orders", &[("authorization", &format!("Bearer {plain}"))]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(challenge(&r, "DPoP").is_some(), "{:?}", challenges(&r));
    assert!(
        challenge(&r, "Bearer").is_none(),
        "only DPoP is offered: {:?}",
        challenges(&r)
    );
    let key = ProofKey::es256();
    let bound = s.token_for(Some(&key), json!({}));
    let p = key.proof("GET", &format!("{ORIGIN}/orders"), Some(&bound), json!({}));
    let r = s.client().get(
        "/orders",
        &[("authorization", &format!("DPoP {bound}")), ("dpop", &p)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Envoy's thread id of the last meshguard log line matching `needle`.
fn threads_of(log: &str, needle: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split("][").nth(1).map(str::to_string))
        .collect()
}

#[test]
fn a_replayed_proof_is_refused_by_every_worker() {
    let s = setup(
        "dpop-replay",
        json!({"mode": "required", "publicOrigins": [ORIGIN]}),
    );
    let key = ProofKey::es256();
    let token = s.token_for(Some(&key), json!({}));
    let p = key.proof("GET", &format!("{ORIGIN}/orders"), Some(&token), json!({}));
    let headers = [
        ("authorization", format!("DPoP {token}")),
        ("dpop", p.clone()),
    ];
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let first = s.client().get("/orders", &h);
    assert_eq!(first.status, 200, "{}", first.body);
    let allowed_on = threads_of(&s.stack.envoy.log_text(), "meshguard: allow");
    assert_eq!(allowed_on.len(), 1);
    // Fresh connections until a replay lands on another worker; every replay is refused.
    let mut refused_on = BTreeSet::new();
    for _ in 0..40 {
        let r = s.client().get("/orders", &h);
        assert_eq!(r.status, 401, "a replay passed: {}", r.body);
        assert_eq!(dpop_error(&r).as_deref(), Some("invalid_dpop_proof"));
        refused_on = threads_of(&s.stack.envoy.log_text(), "invalid_dpop_proof.replayed");
        if refused_on.difference(&allowed_on).next().is_some() {
            break;
        }
    }
    assert!(
        refused_on.difference(&allowed_on).next().is_some(),
        "a replay was refused by another worker than the one that accepted the proof: accepted on {allowed_on:?}, refused on {refused_on:?}"
    );
    // A new proof from the same key passes.
    let p2 = key.proof("GET", &format!("{ORIGIN}/orders"), Some(&token), json!({}));
    let r = s.client().get(
        "/orders",
        &[("authorization", &format!("DPoP {token}")), ("dpop", &p2)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn nonce_flow_end_to_end() {
    let s = setup(
        "dpop-nonce",
        json!({"mode": "required", "publicOrigins": [ORIGIN], "requireNonce": true}),
    );
    let key = ProofKey::es256();
    let token = s.token_for(Some(&key), json!({}));
    let htu = format!("{ORIGIN}/orders");
    let auth = format!("DPoP {token}");
    let c = s.client();

    // No nonce: 401 use_dpop_nonce with a nonce to use.
    let r = c.get(
        "/orders",
        &[
            ("authorization", &auth),
            ("dpop", &key.proof("GET", &htu, Some(&token), json!({}))),
        ],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        dpop_error(&r).as_deref(),
        Some("use_dpop_nonce"),
        "{:?}",
        challenges(&r)
    );
    let nonce = r
        .header("dpop-nonce")
        .expect("DPoP-Nonce on use_dpop_nonce")
        .to_string();

    // A made-up nonce: the same answer.
    let r = c.get(
        "/orders",
        &[
            ("authorization", &auth),
            (
                "dpop",
                &key.proof(
                    "GET",
                    &htu,
                    Some(&token),
                    json!({"nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
                ),
            ),
        ],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(dpop_error(&r).as_deref(), Some("use_dpop_nonce"));

    // With the server's nonce: allowed, and a fresh nonce comes back (from any worker).
    for _ in 0..4 {
        let r = s.client().get(
            "/orders",
            &[
                ("authorization", &auth),
                (
                    "dpop",
                    &key.proof("GET", &htu, Some(&token), json!({"nonce": nonce})),
                ),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.header("dpop-nonce").is_some(),
            "a fresh DPoP-Nonce on success"
        );
    }
}

#[test]
fn certificate_bound_and_dpop_bound_tokens_side_by_side() {
    let s = setup(
        "dpop-mtls",
        json!({"mode": "allowed", "publicOrigins": [ORIGIN]}),
    );
    let cert = s
        .stack
        .pki
        .workload("spiffe://cluster.local/ns/web/sa/frontend");
    let mtls = Client::new(s.stack.envoy.port("mtls"), &s.stack.pki, Some(&cert));

    // RFC 8705: bound to the client certificate.
    let cert_bound = s.idp_key.sign(&claims(
        json!({"sub": "svc", "cnf": {"x5t#S256": cert.x5t_s256()}}),
    ));
    let r = mtls.get(
        "/orders",
        &[("authorization", &format!("Bearer {cert_bound}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // RFC 9449: bound to the client's key, on the same listener.
    let key = ProofKey::es256();
    let dpop_bound = s.token_for(Some(&key), json!({"sub": "app"}));
    let p = key.proof(
        "GET",
        &format!("{ORIGIN}/orders"),
        Some(&dpop_bound),
        json!({}),
    );
    let r = mtls.get(
        "/orders",
        &[
            ("authorization", &format!("DPoP {dpop_bound}")),
            ("dpop", &p),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // Each binding still checked: the certificate-bound token from another certificate fails.
    let other = s
        .stack
        .pki
        .workload("spiffe://cluster.local/ns/web/sa/other");
    let r = Client::new(s.stack.envoy.port("mtls"), &s.stack.pki, Some(&other)).get(
        "/orders",
        &[("authorization", &format!("Bearer {cert_bound}"))],
    );
    assert_eq!(r.status, 401, "{}", r.body);
}
