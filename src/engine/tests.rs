//! The whole pipeline on plain requests: what goes upstream, and what is answered.

use serde_json::json;

use super::*;
use crate::config::KeySource;
use crate::decision::Forbidden;
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
            (
                "x-peer".to_string(),
                "spiffe://cluster.local/ns/web/sa/frontend".to_string()
            ),
            ("x-peer-ns".to_string(), "web".to_string()),
            ("x-sub".to_string(), "alice".to_string()),
            ("x-roles".to_string(), "admin,viewer".to_string()),
            (
                "x-meshguard-principal".to_string(),
                format!("{ISSUER}/alice")
            ),
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

fn routed(
    keys: &TestKeys,
    top: serde_json::Value,
    provider: serde_json::Value,
) -> (Engine, Inline) {
    engine(keys, provider, top)
}

fn request(
    e: &(Engine, Inline),
    method: &str,
    path: &str,
    auth: Option<&str>,
    peer: &Peer,
) -> Decision {
    let mut headers = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":authority".to_string(), b"api.example.com".to_vec()),
    ];
    if let Some(a) = auth {
        headers.push((
            "authorization".to_string(),
            format!("Bearer {a}").into_bytes(),
        ));
    }
    let req = RequestView {
        path,
        headers: &headers,
        peer,
    };
    e.0.decide(&req, &e.1, NOW * 1000)
}

#[test]
fn dry_run_lets_a_denied_request_through_and_records_the_answer() {
    let keys = TestKeys::new();
    let routes = json!([{"name": "admin", "match": {"paths": ["/admin"]}, "mode": "dryRun",
        "require": {"roles": {"anyOf": ["admin"]}}},
        {"name": "scoped", "match": {"paths": ["/reports"]}, "require": {"scopes": {"allOf": ["reports:read"]}}}]);
    let e = routed(&keys, json!({"routes": routes}), json!({}));
    let viewer = keys.eddsa(claims(json!({"roles": ["viewer"]})));
    let Decision::Allow(fwd) = request(&e, "GET", "/admin", Some(&viewer), &Peer::default()) else {
        panic!()
    };
    let would = fwd.dry_run.expect("would-deny recorded");
    assert_eq!((would.status, would.route.as_deref()), (403, Some("admin")));
    assert!(
        fwd.set_headers
            .iter()
            .any(|(h, _)| h == "x-meshguard-principal"),
        "identity still forwarded"
    );
    // The same token is denied where the route enforces.
    let r = denied(request(
        &e,
        "GET",
        "/reports",
        Some(&viewer),
        &Peer::default(),
    ));
    assert_eq!(r.reason, Reason::Forbidden(Forbidden::InsufficientScope));
    assert!(r
        .headers
        .iter()
        .any(|(n, v)| *n == "www-authenticate" && v.ends_with("scope=\"reports:read\"")));
    // Global dry-run covers unmatched routes and authentication failures too.
    let e = routed(&keys, json!({"mode": "dryRun", "routes": []}), json!({}));
    let Decision::Allow(fwd) = request(&e, "GET", "/x", None, &Peer::default()) else {
        panic!()
    };
    assert_eq!(
        fwd.dry_run.map(|r| r.reason),
        Some(Reason::Forbidden(Forbidden::NoRoute))
    );
}

#[test]
fn unmatched_routes_and_bad_paths() {
    let keys = TestKeys::new();
    let e = routed(
        &keys,
        json!({"routes": [{"match": {"paths": ["/a"]}}], "defaultDenyStatus": 404}),
        json!({}),
    );
    assert_eq!(
        denied(request(&e, "GET", "/b", None, &Peer::default())).status,
        404
    );
    let r = denied(request(&e, "GET", "/a%2F..%2Fb", None, &Peer::default()));
    assert_eq!(
        (r.status, r.reason),
        (
            400,
            Reason::InvalidRequest(crate::jwt::extract::RequestError::InvalidPath)
        )
    );
    let open = routed(
        &keys,
        json!({"routes": [], "defaultAction": "allow"}),
        json!({}),
    );
    assert!(matches!(
        request(&open, "GET", "/b", None, &Peer::default()),
        Decision::Allow(_)
    ));
}

#[test]
fn token_none_and_optional_routes() {
    let keys = TestKeys::new();
    let e = routed(
        &keys,
        json!({"routes": [
        {"match": {"paths": ["/public"]}, "token": "none"},
        {"match": {"paths": ["/maybe"]}, "token": "optional"}]}),
        json!({}),
    );
    let Decision::Allow(fwd) = request(&e, "GET", "/public", Some("garbage"), &Peer::default())
    else {
        panic!()
    };
    assert!(
        !fwd.remove_headers.contains(&"authorization".to_string()),
        "token not used, not touched"
    );
    assert!(matches!(
        request(&e, "GET", "/maybe", None, &Peer::default()),
        Decision::Allow(_)
    ));
    let r = denied(request(
        &e,
        "GET",
        "/maybe",
        Some("garbage"),
        &Peer::default(),
    ));
    assert_eq!(
        r.reason,
        Reason::InvalidToken(TokenError::Malformed),
        "a present token must be valid"
    );
}

#[test]
fn certificate_bound_tokens() {
    use base64::Engine as _;
    let keys = TestKeys::new();
    let e = routed(&keys, json!({}), json!({}));
    let strict = routed(&keys, json!({}), json!({"requireCertificateBinding": true}));
    let digest_hex = "0f".repeat(32);
    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x0fu8; 32]);
    let bound = keys.eddsa(claims(json!({"cnf": {"x5t#S256": thumb}})));
    let own = peer();
    assert_eq!(own.certificate_sha256.as_deref(), Some(digest_hex.as_str()));
    assert!(matches!(
        request(&e, "GET", "/", Some(&bound), &own),
        Decision::Allow(_)
    ));
    let mut other = peer();
    other.certificate_sha256 = Some("aa".repeat(32));
    let r = denied(request(&e, "GET", "/", Some(&bound), &other));
    assert_eq!(
        (r.status, r.reason),
        (401, Reason::InvalidToken(TokenError::BindingMismatch))
    );
    let r = denied(request(&e, "GET", "/", Some(&bound), &Peer::default()));
    assert_eq!(
        r.reason,
        Reason::InvalidToken(TokenError::BindingMismatch),
        "no client certificate"
    );
    let unbound = keys.eddsa(claims(json!({})));
    assert!(matches!(
        request(&e, "GET", "/", Some(&unbound), &own),
        Decision::Allow(_)
    ));
    let r = denied(request(&strict, "GET", "/", Some(&unbound), &own));
    assert_eq!(r.reason, Reason::InvalidToken(TokenError::BindingRequired));
    let odd = keys.eddsa(claims(json!({"cnf": "x"})));
    assert_eq!(
        denied(request(&e, "GET", "/", Some(&odd), &own)).reason,
        Reason::InvalidToken(TokenError::Malformed)
    );
}
