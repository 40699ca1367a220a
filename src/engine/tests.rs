//! The whole pipeline on plain requests: what goes upstream, and what is answered.

use serde_json::json;

use super::*;
use crate::config::KeySource;
use crate::identity::Peer;
use crate::jwt::jwks::KeySet;
use crate::jwt::TokenError;
use crate::testkit::*;

struct Inline(Vec<Option<KeySet>>);

impl KeyLookup for Inline {
    fn keys(&self, index: usize) -> Option<&KeySet> {
        self.0.get(index)?.as_ref()
    }
}

fn engine(
    keys: &TestKeys,
    provider_extra: serde_json::Value,
    top: serde_json::Value,
) -> (Engine, Inline) {
    let mut provider = json!({"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks()});
    provider
        .as_object_mut()
        .unwrap()
        .extend(provider_extra.as_object().unwrap().clone());
    let mut cfg = json!({ "providers": [provider] });
    cfg.as_object_mut()
        .unwrap()
        .extend(top.as_object().unwrap().clone());
    let config = Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let sets = config
        .providers
        .iter()
        .map(|p| match &p.keys {
            KeySource::Inline(s) => Some(s.clone()),
            KeySource::Remote(_) => None,
        })
        .collect();
    (Engine::new(config), Inline(sets))
}

fn peer() -> Peer {
    Peer {
        mtls: true,
        uri_san: Some("spiffe://cluster.local/ns/web/sa/frontend".into()),
        certificate_sha256: Some("0f".repeat(32)),
        source_address: Some("10.0.0.1:4000".into()),
    }
}

fn decide(e: &(Engine, Inline), headers: &[(&str, &str)], peer: &Peer) -> Decision {
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let req = RequestView {
        path: "/projects?x=1",
        headers: &headers,
        peer,
    };
    e.0.decide(&req, &e.1, NOW * 1000)
}

fn denied(d: Decision) -> LocalReply {
    match d {
        Decision::Deny(r) => r,
        Decision::Allow(f) => panic!("allowed: {f:?}"),
    }
}

#[test]
fn valid_token_goes_upstream_with_claims_principal_and_peer_headers() {
    let keys = TestKeys::new();
    let e = engine(
        &keys,
        json!({"outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"},
            {"header": "x-roles", "claim": "realm_access.roles"}, {"header": "x-obj", "claim": "realm_access"}]}),
        json!({"outputPeerToHeaders": [{"header": "x-peer", "field": "spiffeId"},
            {"header": "x-peer-ns", "field": "namespace"}]}),
    );
    let token = keys.es256(claims(
        json!({"realm_access": {"roles": ["admin", "viewer"]}}),
    ));
    let auth = format!("Bearer {token}");
    let Decision::Allow(fwd) = decide(
        &e,
        &[("authorization", &auth), ("x-sub", "forged")],
        &peer(),
    ) else {
        panic!("denied")
    };
    assert_eq!(
        fwd.remove_headers,
        vec![
            "x-meshguard-principal",
            "x-peer",
            "x-peer-ns",
            "x-sub",
            "x-roles",
            "x-obj",
            "authorization"
        ]
    );
    assert_eq!(
        fwd.set_headers,
        vec![
            ("x-sub".to_string(), "alice".to_string()),
            ("x-roles".to_string(), "admin,viewer".to_string()),
            (
                "x-meshguard-principal".to_string(),
                format!("{ISSUER}/alice")
            ),
            (
                "x-peer".to_string(),
                "spiffe://cluster.local/ns/web/sa/frontend".to_string()
            ),
            ("x-peer-ns".to_string(), "web".to_string()),
        ]
    );
}

#[test]
fn forward_original_token_keeps_authorization() {
    let keys = TestKeys::new();
    let e = engine(&keys, json!({"forwardOriginalToken": true}), json!({}));
    let auth = format!("Bearer {}", keys.eddsa(claims(json!({}))));
    let Decision::Allow(fwd) = decide(&e, &[("authorization", &auth)], &Peer::default()) else {
        panic!()
    };
    assert!(!fwd.remove_headers.contains(&"authorization".to_string()));
}

#[test]
fn peer_headers_are_absent_without_a_client_certificate() {
    let keys = TestKeys::new();
    let e = engine(
        &keys,
        json!({}),
        json!({"outputPeerToHeaders": [{"header": "x-peer", "field": "spiffeId"}]}),
    );
    let auth = format!("Bearer {}", keys.eddsa(claims(json!({}))));
    let mut unvalidated = peer();
    unvalidated.mtls = false;
    let Decision::Allow(fwd) = decide(&e, &[("authorization", &auth)], &unvalidated) else {
        panic!()
    };
    assert!(fwd.set_headers.iter().all(|(h, _)| h != "x-peer"));
    assert!(
        fwd.remove_headers.contains(&"x-peer".to_string()),
        "a client copy is still removed"
    );
}

#[test]
fn claim_values_that_could_split_headers_are_not_copied() {
    assert_eq!(claim_header_value(&json!("a\r\nx-evil: 1")), None);
    assert_eq!(claim_header_value(&json!({"a": 1})), None);
    assert_eq!(claim_header_value(&json!(null)), None);
    assert_eq!(claim_header_value(&json!([1, {"a": 1}])), None);
    assert_eq!(claim_header_value(&json!(42)).as_deref(), Some("42"));
    assert_eq!(claim_header_value(&json!(true)).as_deref(), Some("true"));
    assert_eq!(
        claim_header_value(&json!(["a", 2, false])).as_deref(),
        Some("a,2,false")
    );
}

#[test]
fn answers_for_missing_bad_and_ambiguous_credentials() {
    let keys = TestKeys::new();
    let e = engine(&keys, json!({}), json!({"realm": "api"}));
    let r = denied(decide(&e, &[], &Peer::default()));
    assert_eq!((r.status, r.reason), (401, Reason::MissingToken));
    let expired = format!("Bearer {}", keys.eddsa(claims(json!({"exp": NOW - 3600}))));
    let r = denied(decide(&e, &[("authorization", &expired)], &Peer::default()));
    assert_eq!(
        (r.status, r.reason),
        (401, Reason::InvalidToken(TokenError::Expired))
    );
    assert!(
        !r.body.contains(&expired[7..20]),
        "no token material in the body"
    );
    let r = denied(decide(
        &e,
        &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        &Peer::default(),
    ));
    assert_eq!(r.status, 400);
    let r = denied(decide(
        &e,
        &[("authorization", "Bearer %%%")],
        &Peer::default(),
    ));
    assert_eq!(r.reason, Reason::InvalidToken(TokenError::Malformed));
}

#[test]
fn several_providers_each_verify_their_own_issuer() {
    let a = TestKeys::new();
    let b = TestKeys::new();
    let cfg = json!({"providers": [
        {"name": "corp", "issuer": "https://corp", "jwks": a.jwks()},
        {"name": "partner", "issuer": "https://partner", "jwks": b.jwks()}]});
    let config = Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let sets: Vec<_> = config
        .providers
        .iter()
        .map(|p| match &p.keys {
            KeySource::Inline(s) => Some(s.clone()),
            KeySource::Remote(_) => None,
        })
        .collect();
    let e = (Engine::new(config), Inline(sets));
    let ok = format!(
        "Bearer {}",
        b.eddsa(claims(json!({"iss": "https://partner"})))
    );
    assert!(matches!(
        decide(&e, &[("authorization", &ok)], &Peer::default()),
        Decision::Allow(_)
    ));
    // Signed by the partner's key but claiming the corp issuer.
    let cross = format!("Bearer {}", b.eddsa(claims(json!({"iss": "https://corp"}))));
    let r = denied(decide(&e, &[("authorization", &cross)], &Peer::default()));
    assert_eq!(r.reason, Reason::InvalidToken(TokenError::BadSignature));
}

#[test]
fn oversized_credentials_are_refused_before_decoding() {
    let keys = TestKeys::new();
    let e = engine(&keys, json!({}), json!({}));
    let huge = format!("Bearer {}", "a".repeat(8193));
    let r = denied(decide(&e, &[("authorization", &huge)], &Peer::default()));
    assert_eq!(
        (r.status, r.reason),
        (401, Reason::InvalidToken(TokenError::TooLarge))
    );
}
