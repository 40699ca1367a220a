//! DPoP (RFC 9449) through the whole pipeline: proofs signed here with ed25519-compact (which
//! also runs under wasm), tokens from the test IdP with `cnf.jkt`, the replay cache on the fake
//! store, nonces at the fixed clock.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::*;
use crate::decision::DpopProof;

const ORIGIN: &str = "https://api.example.com";
const PATH: &str = "/orders";

/// The client's proof key (a fixed seed per `n`).
fn client_key(n: u8) -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([n; 32]))
}

fn jwk(key: &ed25519_compact::KeyPair) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(key.pk.as_ref())})
}

/// RFC 7638: SHA-256 of the required members in lexicographic order, without whitespace.
fn jkt(key: &ed25519_compact::KeyPair) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(key.pk.as_ref())
    );
    URL_SAFE_NO_PAD.encode(hmac_sha256::Hash::hash(canonical.as_bytes()))
}

/// A proof by `key` for `GET {ORIGIN}{PATH}` with the access token `token`, issued at [`NOW`];
/// `extra` merged into the claims.
fn proof(key: &ed25519_compact::KeyPair, jti: &str, token: &str, extra: Value) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk(key)});
    let mut claims = json!({"jti": jti, "htm": "GET", "htu": format!("{ORIGIN}{PATH}"),
        "iat": NOW, "ath": crate::dpop::ath(token)});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let input = format!("{}.{}", b64(&header.to_string()), b64(&claims.to_string()));
    let sig = key.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// An engine whose one provider has `dpop` (EdDSA proofs for [`ORIGIN`]) merged with `extra`.
fn dpop_engine(keys: &TestKeys, extra: Value, top: Value) -> (Engine, Inline) {
    let mut dpop = json!({"mode": "allowed", "algorithms": ["EdDSA"], "publicOrigins": [ORIGIN]});
    dpop.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    engine(keys, json!({"dpop": dpop}), top)
}

/// The request `GET {PATH}` with `authorization` and `dpop` headers as given.
fn headers(authorization: Option<&str>, dpop: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":method".to_string(), b"GET".to_vec()),
        (":scheme".to_string(), b"http".to_vec()),
        (":authority".to_string(), b"orders.svc:8080".to_vec()),
    ];
    h.extend(authorization.map(|a| ("authorization".to_string(), a.as_bytes().to_vec())));
    h.extend(dpop.map(|p| ("dpop".to_string(), p.as_bytes().to_vec())));
    h
}

/// One host: its shared store and the inputs at [`NOW`] (no token cache, no host crypto).
struct Host<'a> {
    e: &'a (Engine, Inline),
    store: MemStore,
}

impl<'a> Host<'a> {
    fn new(e: &'a (Engine, Inline)) -> Host<'a> {
        Host {
            e,
            store: MemStore::for_engine(&e.0),
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            keys: &self.e.1,
            buckets: &self.store,
            crypto: None,
            cache: None,
            now_ns: NOW * 1_000_000_000,
        }
    }

    fn decide(&self, h: &[(String, Vec<u8>)]) -> Plan {
        let peer = Peer::default();
        let req = RequestView {
            path: PATH,
            headers: &crate::request::borrowed(h),
            peer: &peer,
        };
        self.e
            .0
            .decide(&req, &self.inputs(), &mut Events::default())
    }

    fn settle(&self, plan: Plan) -> Decision {
        self.e
            .0
            .settle(plan, &self.inputs(), &mut Events::default())
    }

    fn send(&self, h: &[(String, Vec<u8>)]) -> Decision {
        let plan = self.decide(h);
        self.settle(plan)
    }
}

fn challenges(r: &LocalReply) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| *n == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect()
}

fn allowed(d: Decision) -> Forward {
    match d {
        Decision::Allow(f) => f,
        Decision::Deny(r) => panic!("denied: {r:?}"),
    }
}

#[test]
fn a_valid_proof_is_allowed_and_owes_the_replay_cache_its_jti() {
    let keys = TestKeys::new();
    let e = dpop_engine(&keys, json!({}), json!({}));
    let key = client_key(1);
    let token = keys.es256(claims(json!({"cnf": {"jkt": jkt(&key)}})));
    let h = headers(
        Some(&format!("DPoP {token}")),
        Some(&proof(&key, "j-1", &token, json!({}))),
    );
    let host = Host::new(&e);
    let plan = host.decide(&h);
    assert!(plan.debts.dpop.is_some(), "a valid proof owes its record");
    let fwd = allowed(host.settle(plan));
    for gone in ["authorization", "dpop"] {
        assert!(
            fwd.remove_headers.iter().any(|n| n == gone),
            "{gone} is not forwarded: {:?}",
            fwd.remove_headers
        );
    }
    assert!(
        fwd.response_headers.is_empty(),
        "no nonce without requireNonce"
    );
}

#[test]
fn a_proof_decided_twice_is_recorded_once_when_settled() {
    let keys = TestKeys::new();
    let e = dpop_engine(&keys, json!({}), json!({}));
    let key = client_key(1);
    let token = keys.es256(claims(json!({"cnf": {"jkt": jkt(&key)}})));
    let h = headers(
        Some(&format!("DPoP {token}")),
        Some(&proof(&key, "j-1", &token, json!({}))),
    );
    let host = Host::new(&e);
    // The host decides again after catching up with shared keys: the first plan is dropped
    // unpaid, and deciding wrote nothing.
    let first = host.decide(&h);
    let second = host.decide(&h);
    assert_eq!(first, second);
    allowed(host.settle(second));
    // The same proof again (another request, any worker): replayed.
    let Decision::Deny(r) = host.send(&h) else {
        panic!("a replayed proof passed")
    };
    assert_eq!(
        (r.status, r.reason),
        (401, Reason::InvalidDpopProof(DpopProof::Replayed))
    );
    assert_eq!(
        r.caller.as_ref().and_then(|c| c.sub.as_deref()),
        Some("alice"),
        "the log line says whose proof was replayed"
    );
    assert_eq!(
        challenges(&r)[1],
        r#"DPoP realm="meshguard", algs="EdDSA", error="invalid_dpop_proof", error_description="DPoP proof replayed""#
    );
    // A new proof (new jti) from the same key passes.
    let h = headers(
        Some(&format!("DPoP {token}")),
        Some(&proof(&key, "j-2", &token, json!({}))),
    );
    allowed(host.send(&h));
}

#[test]
fn a_dpop_bound_token_sent_as_bearer_is_refused() {
    let keys = TestKeys::new();
    let e = dpop_engine(&keys, json!({}), json!({}));
    let key = client_key(1);
    let token = keys.es256(claims(json!({"cnf": {"jkt": jkt(&key)}})));
    let host = Host::new(&e);
    for dpop in [None, Some(proof(&key, "j-1", &token, json!({})))] {
        let Decision::Deny(r) =
            host.send(&headers(Some(&format!("Bearer {token}")), dpop.as_deref()))
        else {
            panic!("a DPoP-bound token passed as bearer")
        };
        assert_eq!(
            r.reason,
            Reason::InvalidToken(TokenError::DpopBoundAsBearer)
        );
        assert_eq!(
            challenges(&r),
            [
                r#"Bearer realm="meshguard", error="invalid_token", error_description="DPoP-bound token sent as bearer""#,
                r#"DPoP realm="meshguard", algs="EdDSA""#
            ]
        );
    }
}

#[test]
fn a_jkt_that_is_not_a_string_binds_nothing_and_is_refused_either_way() {
    let keys = TestKeys::new();
    let e = dpop_engine(&keys, json!({}), json!({}));
    let token = keys.es256(claims(json!({"cnf": {"jkt": 42}})));
    let host = Host::new(&e);
    for scheme in ["Bearer", "DPoP"] {
        let Decision::Deny(r) = host.send(&headers(Some(&format!("{scheme} {token}")), None))
        else {
            panic!("a token with a non-string cnf.jkt passed as {scheme}")
        };
        assert_eq!(
            r.reason,
            Reason::InvalidToken(TokenError::UnsupportedBinding),
            "{scheme}"
        );
    }
}

#[test]
fn a_proof_by_another_key_than_the_tokens_is_refused() {
    let keys = TestKeys::new();
    let e = dpop_engine(&keys, json!({}), json!({}));
    let token = keys.es256(claims(json!({"cnf": {"jkt": jkt(&client_key(1))}})));
    let thief = client_key(2);
    let h = headers(
        Some(&format!("DPoP {token}")),
        Some(&proof(&thief, "j-1", &token, json!({}))),
    );
    let Decision::Deny(r) = Host::new(&e).send(&h) else {
        panic!("a stolen token passed with the thief's proof")
    };
    assert_eq!(
        (r.status, r.reason),
        (401, Reason::InvalidToken(TokenError::DpopKeyMismatch))
    );
    assert_eq!(
        challenges(&r)[1],
        r#"DPoP realm="meshguard", algs="EdDSA", error="invalid_token", error_description="DPoP key mismatch""#
    );
}

#[test]
fn a_missing_nonce_is_answered_with_one_that_is_then_accepted() {
    let keys = TestKeys::new();
    let e = dpop_engine(&keys, json!({"requireNonce": true}), json!({}));
    let key = client_key(1);
    let token = keys.es256(claims(json!({"cnf": {"jkt": jkt(&key)}})));
    let auth = format!("DPoP {token}");
    let host = Host::new(&e);

    let h = headers(Some(&auth), Some(&proof(&key, "j-1", &token, json!({}))));
    let Decision::Deny(r) = host.send(&h) else {
        panic!("a proof without a nonce passed")
    };
    assert_eq!((r.status, r.reason), (401, Reason::UseDpopNonce));
    assert_eq!(
        challenges(&r)[1],
        r#"DPoP realm="meshguard", algs="EdDSA", error="use_dpop_nonce", error_description="DPoP nonce required""#
    );
    let nonce = r
        .headers
        .iter()
        .find(|(n, _)| *n == "dpop-nonce")
        .map(|(_, v)| v.clone())
        .expect("DPoP-Nonce on use_dpop_nonce");

    // A nonce this proxy did not issue: the same answer.
    let h = headers(
        Some(&auth),
        Some(&proof(
            &key,
            "j-2",
            &token,
            json!({"nonce": "x".repeat(nonce.len())}),
        )),
    );
    let Decision::Deny(r) = host.send(&h) else {
        panic!("a made-up nonce passed")
    };
    assert_eq!(r.reason, Reason::UseDpopNonce);

    // The nonce it issued: allowed, with a fresh nonce on the response.
    let h = headers(
        Some(&auth),
        Some(&proof(&key, "j-3", &token, json!({"nonce": nonce}))),
    );
    let fwd = allowed(host.send(&h));
    assert!(
        fwd.response_headers.iter().any(|(n, _)| *n == "dpop-nonce"),
        "{:?}",
        fwd.response_headers
    );
}

#[test]
fn missing_scopes_of_a_dpop_bound_token_are_said_in_the_dpop_challenge() {
    let keys = TestKeys::new();
    let routes = json!({"routes": [{"match": {"paths": [PATH]},
        "require": {"scopes": {"allOf": ["orders:write"]}}}]});
    let e = dpop_engine(&keys, json!({}), routes);
    let key = client_key(1);
    let token = keys.es256(claims(json!({"cnf": {"jkt": jkt(&key)}})));
    let h = headers(
        Some(&format!("DPoP {token}")),
        Some(&proof(&key, "j-1", &token, json!({}))),
    );
    let Decision::Deny(r) = Host::new(&e).send(&h) else {
        panic!("allowed without the scope")
    };
    assert_eq!(r.status, 403);
    assert_eq!(
        challenges(&r),
        [
            r#"Bearer realm="meshguard""#,
            r#"DPoP realm="meshguard", algs="EdDSA", error="insufficient_scope", error_description="insufficient scope", scope="orders:write""#
        ]
    );
}

#[test]
fn a_proof_beside_a_bearer_token_is_not_forwarded() {
    // Mode `allowed`: a bearer token without `cnf.jkt` passes; the `DPoP` header beside it
    // was not judged, so it stays here unless `forwardProof`.
    let keys = TestKeys::new();
    let token = keys.es256(claims(json!({})));
    let key = client_key(1);
    let h = headers(
        Some(&format!("Bearer {token}")),
        Some(&proof(&key, "j-1", &token, json!({}))),
    );
    let e = dpop_engine(&keys, json!({}), json!({}));
    let fwd = allowed(Host::new(&e).send(&h));
    assert!(fwd.remove_headers.iter().any(|n| n == "dpop"));
    let e = dpop_engine(&keys, json!({"forwardProof": true}), json!({}));
    let fwd = allowed(Host::new(&e).send(&h));
    assert!(!fwd.remove_headers.iter().any(|n| n == "dpop"));
}

#[test]
fn a_proof_without_a_token_is_refused_even_where_the_token_is_optional() {
    let keys = TestKeys::new();
    let routes = json!({"routes": [{"match": {"paths": [PATH]}, "token": "optional"}]});
    let e = dpop_engine(&keys, json!({}), routes);
    let host = Host::new(&e);
    allowed(host.send(&headers(None, None)));
    let key = client_key(1);
    let p = proof(&key, "j-1", "no token", json!({}));
    let Decision::Deny(r) = host.send(&headers(None, Some(&p))) else {
        panic!("a lone proof passed")
    };
    assert_eq!(
        (r.status, r.reason),
        (401, Reason::InvalidDpopProof(DpopProof::WithoutToken))
    );
}
