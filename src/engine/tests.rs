//! The whole pipeline on plain requests: what goes upstream, and what is answered.

use serde_json::json;

use std::cell::RefCell;

use super::*;
use crate::decision::Forbidden;
use crate::identity::{Peer, PeerInfo};
use crate::jwt::cache::TokenCache;
use crate::jwt::jwks::KeySet;
use crate::jwt::principal::claim_header_value;
use crate::jwt::verify::KeyLookup;
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
    let mut provider = json!({"audiences": [AUDIENCE]});
    provider
        .as_object_mut()
        .unwrap()
        .extend(provider_extra.as_object().unwrap().clone());
    let config = parse_config(&config_doc(keys.jwks(), provider, top)).unwrap();
    let sets = config.inline_keys();
    (Engine::new(config, "test", [7u8; 16]), Inline(sets))
}

/// Decides with the inline keys, a fresh bucket store and the fixed clock.
fn run(e: &(Engine, Inline), req: &RequestView<'_>) -> Decision {
    let store = MemStore::for_engine(&e.0);
    let inputs = Inputs {
        keys: &e.1,
        buckets: &store,
        crypto: None,
        cache: None,
        now_ns: NOW * 1_000_000_000,
    };
    decide_and_settle(&e.0, req, &inputs, &mut Events::default())
}

/// What the host does: decide, then settle the plan once.
fn decide_and_settle(
    engine: &Engine,
    req: &RequestView<'_>,
    inputs: &Inputs<'_>,
    events: &mut Events,
) -> Decision {
    let plan = engine.decide(req, inputs, events);
    engine.settle(plan, inputs, events)
}

fn peer_info() -> PeerInfo {
    PeerInfo {
        mtls: true,
        uri_san: Some("spiffe://cluster.local/ns/web/sa/frontend".into()),
        certificate_sha256: Some("0f".repeat(32)),
        source_address: Some("10.0.0.1:4000".into()),
    }
}

fn peer() -> Peer {
    Peer::from(peer_info())
}

fn decide(e: &(Engine, Inline), headers: &[(&str, &str)], peer: &Peer) -> Decision {
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let req = RequestView {
        path: "/projects?x=1",
        headers: &crate::request::borrowed(&headers),
        peer,
    };
    run(e, &req)
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
        &[
            ("authorization", &auth),
            ("x-sub", "forged"),
            ("x_meshguard_principal", "forged"),
        ],
        &peer(),
    ) else {
        panic!("denied")
    };
    assert_eq!(
        fwd.remove_headers,
        vec!["x_meshguard_principal", "x-sub", "authorization"],
        "client copies present in the request, then the consumed token header"
    );
    let set: Vec<(String, String)> = fwd
        .headers_to_set()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        set,
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
    let mut unvalidated = peer_info();
    unvalidated.mtls = false;
    let unvalidated = Peer::from(unvalidated);
    let Decision::Allow(fwd) = decide(
        &e,
        &[("authorization", &auth), ("x-peer", "spoofed")],
        &unvalidated,
    ) else {
        panic!()
    };
    assert!(fwd.headers_to_set().all(|(h, _)| h != "x-peer"));
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
    let providers = vec![
        json!({"name": "corp", "issuer": "https://corp", "jwks": a.jwks()}),
        json!({"name": "partner", "issuer": "https://partner", "jwks": b.jwks()}),
    ];
    let config = parse_config(&config_doc_providers(providers, json!({}))).unwrap();
    let sets = config.inline_keys();
    let e = (Engine::new(config, "test", [7u8; 16]), Inline(sets));
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
        headers: &crate::request::borrowed(&headers),
        peer,
    };
    run(e, &req)
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
    let would = fwd.dry_run.clone().expect("would-deny recorded");
    assert_eq!((would.status, would.route.as_deref()), (403, Some("admin")));
    assert!(
        fwd.headers_to_set()
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
fn a_dry_run_would_deny_is_a_dry_run_deny_in_the_filter_state() {
    let keys = TestKeys::new();
    let routes = json!([{"name": "admin", "match": {"paths": ["/admin"]}, "mode": "dryRun",
        "require": {"roles": {"anyOf": ["admin"]}}}]);
    let e = routed(&keys, json!({"routes": routes}), json!({}));
    let viewer = keys.eddsa(claims(json!({"roles": ["viewer"], "client_id": "cli"})));
    let d = request(&e, "GET", "/admin", Some(&viewer), &Peer::default());
    let mut facts = Vec::new();
    crate::decision::facts::each(&d, &e.0.config, None, |k, v| facts.push((k, v.to_string())));
    assert_eq!(
        facts,
        [
            ("meshguard.decision", "dry_run_deny".to_string()),
            ("meshguard.reason", "insufficient_permissions".to_string()),
            ("meshguard.route", "admin".to_string()),
            (
                "meshguard.principal",
                "https://idp.example.com/alice".to_string()
            ),
            ("meshguard.client_id", "cli".to_string()),
        ]
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
    assert_eq!(own.certificate_sha256(), Some(digest_hex.as_str()));
    assert!(matches!(
        request(&e, "GET", "/", Some(&bound), &own),
        Decision::Allow(_)
    ));
    let other = Peer::from(PeerInfo {
        certificate_sha256: Some("aa".repeat(32)),
        ..peer_info()
    });
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

mod rate_limits {
    use super::*;
    use crate::decision::RateLimited;

    struct World {
        engine: Engine,
        keys: Inline,
        store: MemStore,
        cache: RefCell<TokenCache>,
    }

    fn world(keys: &TestKeys) -> World {
        let top = json!({
            "rolesClaim": "role",
            "filterState": "all",
            "rateLimits": {
                "identity": ["clientId", "sub"],
                "policies": {
                    "free": {"requests": 60, "per": "1m"},
                    "paid": {"requests": 600, "per": "1m"},
                    "login": {"requests": 5, "per": "15m", "key": "sourceIp"},
                    "forged": {"requests": 10, "per": "1m", "key": "sourceIp", "slots": 64}
                },
                "exempt": {"roles": ["admin"]},
                "failedAuth": {"policy": "forged"},
                "responseHeaders": true
            },
            "routes": [
                {"name": "login", "match": {"paths": ["/login"]}, "token": "none", "rateLimit": [{"policy": "login"}]},
                {"name": "search", "match": {"paths": ["/search"]},
                 "rateLimit": [{"tier": {"claim": "plan", "policies": {"free": "free", "paid": "paid"}, "default": "free"}, "cost": 5}]},
                {"name": "api", "match": {"pathPrefixes": ["/"]},
                 "rateLimit": [{"tier": {"claim": "plan", "policies": {"free": "free", "paid": "paid"}, "default": "free"}}]}
            ]
        });
        let provider = json!({"audiences": [AUDIENCE]});
        let config = parse_config(&config_doc(keys.jwks(), provider, top)).unwrap();
        let sets = config.inline_keys();
        let engine = Engine::new(config, "t", [7u8; 16]);
        let store = MemStore::for_engine(&engine);
        World {
            engine,
            keys: Inline(sets),
            store,
            cache: RefCell::new(TokenCache::new(100, 1 << 20)),
        }
    }

    impl World {
        fn call(&self, path: &str, token: Option<&str>, ip: &str, at_s: u64) -> Decision {
            self.call_with(path, token, ip, at_s).0
        }

        /// One request, and what happened while deciding it.
        fn call_with(
            &self,
            path: &str,
            token: Option<&str>,
            ip: &str,
            at_s: u64,
        ) -> (Decision, Events) {
            let mut events = Events::default();
            let d = self.with_request(path, token, ip, at_s, |req, inputs| {
                decide_and_settle(&self.engine, req, inputs, &mut events)
            });
            (d, events)
        }

        /// Runs `f` on one request and this world's inputs.
        fn with_request<T>(
            &self,
            path: &str,
            token: Option<&str>,
            ip: &str,
            at_s: u64,
            f: impl FnOnce(&RequestView<'_>, &Inputs<'_>) -> T,
        ) -> T {
            let mut headers = vec![(":method".to_string(), b"GET".to_vec())];
            if let Some(t) = token {
                headers.push((
                    "authorization".to_string(),
                    format!("Bearer {t}").into_bytes(),
                ));
            }
            let peer = Peer::from(PeerInfo {
                source_address: Some(format!("{ip}:5555")),
                ..PeerInfo::default()
            });
            let req = RequestView {
                path,
                headers: &crate::request::borrowed(&headers),
                peer: &peer,
            };
            let inputs = Inputs {
                keys: &self.keys,
                buckets: &self.store,
                crypto: None,
                cache: Some(&self.cache),
                now_ns: at_s * 1_000_000_000,
            };
            f(&req, &inputs)
        }

        fn admitted(
            &self,
            n: usize,
            path: &str,
            token: Option<&str>,
            ip: &str,
            at_s: u64,
        ) -> usize {
            (0..n)
                .filter(|_| matches!(self.call(path, token, ip, at_s), Decision::Allow(_)))
                .count()
        }
    }

    fn header<'a>(r: &'a LocalReply, name: &str) -> &'a str {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn login_five_per_fifteen_minutes_per_ip_then_429_with_headers() {
        let keys = TestKeys::new();
        let w = world(&keys);
        assert_eq!(w.admitted(5, "/login", None, "10.0.0.1", NOW), 5);
        let r = denied(w.call("/login", None, "10.0.0.1", NOW));
        assert_eq!(
            (r.status, r.reason),
            (429, Reason::RateLimited(RateLimited::Limit))
        );
        assert_eq!(
            header(&r, "retry-after"),
            "180",
            "one attempt per 3 minutes refills"
        );
        assert_eq!(header(&r, "ratelimit-policy"), "\"login\";q=5;w=900");
        // On a refusal `t` and X-RateLimit-Reset say the same as Retry-After (not the 900 s
        // until the bucket is full again).
        assert_eq!(header(&r, "ratelimit"), "\"login\";r=0;t=180");
        assert_eq!(header(&r, "x-ratelimit-reset"), "180");
        assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
        assert!(r.headers.iter().all(|(n, _)| *n != "www-authenticate"));
        assert_eq!(
            w.admitted(5, "/login", None, "10.0.0.2", NOW),
            5,
            "another IP is isolated"
        );
        assert_eq!(w.admitted(1, "/login", None, "10.0.0.1", NOW + 179), 0);
        assert_eq!(
            w.admitted(2, "/login", None, "10.0.0.1", NOW + 180),
            1,
            "access returns after Retry-After"
        );
    }

    #[test]
    fn tiers_by_plan_claim_costs_and_admin_exemption() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let free = keys.eddsa(claims(json!({"sub": "f", "plan": "free"})));
        let paid = keys.eddsa(claims(json!({"sub": "p", "plan": "paid"})));
        let unknown_plan = keys.eddsa(claims(json!({"sub": "u", "plan": "gold"})));
        let admin = keys.eddsa(claims(json!({"sub": "a", "role": "admin"})));
        assert_eq!(w.admitted(100, "/items", Some(&free), "1.1.1.1", NOW), 60);
        assert_eq!(w.admitted(700, "/items", Some(&paid), "1.1.1.1", NOW), 600);
        assert_eq!(
            w.admitted(100, "/items", Some(&unknown_plan), "1.1.1.1", NOW),
            60,
            "default tier"
        );
        assert_eq!(
            w.admitted(1000, "/items", Some(&admin), "1.1.1.1", NOW),
            1000,
            "exempt"
        );
        // Search costs 5: a fresh free user gets 12 searches.
        let other = keys.eddsa(claims(json!({"sub": "g", "plan": "free"})));
        assert_eq!(w.admitted(20, "/search", Some(&other), "1.1.1.1", NOW), 12);
    }

    #[test]
    fn users_are_isolated_and_allowed_responses_carry_quota_headers() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let alice = keys.eddsa(claims(json!({"sub": "alice"})));
        let bob = keys.eddsa(claims(json!({"sub": "bob"})));
        assert_eq!(w.admitted(70, "/x", Some(&alice), "9.9.9.9", NOW), 60);
        let Decision::Allow(fwd) = w.call("/x", Some(&bob), "9.9.9.9", NOW) else {
            panic!("bob shares alice's IP, not her bucket")
        };
        let h: std::collections::HashMap<_, _> = fwd.response_headers.into_iter().collect();
        assert_eq!(h["ratelimit"], "\"free\";r=59;t=1");
        assert_eq!(h["x-ratelimit-limit"], "60");
    }

    /// 10 failures per minute per source (`forged`, 64 slots). Returns the forged tokens.
    fn spend_budget(w: &World, ip: &str) -> Vec<String> {
        let forger = TestKeys::new();
        let forged: Vec<String> = (0..10)
            .map(|i| forger.eddsa(claims(json!({ "sub": format!("f{i}") }))))
            .collect();
        for t in &forged {
            let (d, ev) = w.call_with("/x", Some(t), ip, NOW);
            assert_eq!(denied(d).status, 401);
            assert_eq!(ev.cache_misses, 1, "verified");
        }
        forged
    }

    #[test]
    fn forged_tokens_spend_the_source_budget_then_new_ones_get_429_unverified() {
        let keys = TestKeys::new();
        let w = world(&keys);
        spend_budget(&w, "6.6.6.6");
        let forged = TestKeys::new().eddsa(claims(json!({"sub": "more"})));
        let (d, ev) = w.call_with("/x", Some(&forged), "6.6.6.6", NOW);
        let r = denied(d);
        assert_eq!(
            (r.status, r.reason),
            (429, Reason::RateLimited(RateLimited::FailedAuth))
        );
        assert_eq!(ev.cache_misses, 0, "refused before verification");
        assert_eq!(
            header(&r, "retry-after"),
            "1",
            "a retry is served by the trickle"
        );
        // The budget refills at its own rate: one failure per 6 s.
        let other = TestKeys::new().eddsa(claims(json!({"sub": "later"})));
        assert_eq!(
            denied(w.call("/x", Some(&other), "6.6.6.6", NOW + 6)).status,
            401
        );
    }

    /// The `provider` of a refusal (its metrics label): known once the signature held, whether
    /// the token was judged from scratch, from the failed-token memo or from the cache; unknown
    /// for a bad signature.
    #[test]
    fn a_refusal_names_its_provider_only_when_the_signature_held() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let expired = keys.eddsa(claims(json!({"sub": "old", "exp": NOW - 3600})));
        for attempt in ["from scratch", "again"] {
            let (d, ev) = w.call_with("/x", Some(&expired), "10.1.1.1", NOW);
            assert_eq!(denied(d).reason, Reason::InvalidToken(TokenError::Expired));
            assert_eq!(ev.provider, Some(0), "{attempt}");
        }
        let valid = keys.eddsa(claims(json!({"sub": "soon-old", "exp": NOW + 10})));
        assert!(matches!(
            w.call("/x", Some(&valid), "10.1.1.2", NOW),
            Decision::Allow(_)
        ));
        let (d, ev) = w.call_with("/x", Some(&valid), "10.1.1.2", NOW + 3600);
        assert_eq!(denied(d).reason, Reason::InvalidToken(TokenError::Expired));
        assert_eq!((ev.cache_hits, ev.provider), (1, Some(0)), "from the cache");
        let forged = TestKeys::new().eddsa(claims(json!({"sub": "x"})));
        let (d, ev) = w.call_with("/x", Some(&forged), "10.1.1.3", NOW);
        assert_eq!(
            denied(d).reason,
            Reason::InvalidToken(TokenError::BadSignature)
        );
        assert_eq!(ev.provider, None);
    }

    #[test]
    fn a_token_that_failed_is_refused_again_without_verification() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let forged = TestKeys::new().eddsa(claims(json!({})));
        let (d, ev) = w.call_with("/x", Some(&forged), "6.6.6.6", NOW);
        assert_eq!(
            denied(d).reason,
            Reason::InvalidToken(TokenError::BadSignature)
        );
        assert_eq!((ev.cache_misses, ev.failed_replays), (1, 0));
        for _ in 0..50 {
            let (d, ev) = w.call_with("/x", Some(&forged), "6.6.6.6", NOW);
            let r = denied(d);
            assert_eq!(
                (r.status, r.reason),
                (401, Reason::InvalidToken(TokenError::BadSignature)),
                "the same answer"
            );
            assert_eq!((ev.cache_misses, ev.failed_replays), (0, 1));
        }
        // Replays cost the budget nothing: a new forged token is still verified.
        let other = TestKeys::new().eddsa(claims(json!({})));
        assert_eq!(
            w.call_with("/x", Some(&other), "6.6.6.6", NOW)
                .1
                .cache_misses,
            1
        );
        // An expired token is remembered too; one not yet valid is not (it may become valid).
        let expired = keys.eddsa(claims(json!({"exp": NOW - 100, "iat": NOW - 200})));
        let early = keys.eddsa(claims(json!({"nbf": NOW + 100})));
        for (token, misses) in [(&expired, 1), (&expired, 0), (&early, 1), (&early, 1)] {
            assert_eq!(
                w.call_with("/x", Some(token), "7.7.7.7", NOW)
                    .1
                    .cache_misses,
                misses
            );
        }
    }

    #[test]
    fn a_cached_token_is_never_refused_by_a_spent_budget() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let good = keys.eddsa(claims(json!({"sub": "behind-the-nat"})));
        assert!(matches!(
            w.call("/x", Some(&good), "6.6.6.6", NOW),
            Decision::Allow(_)
        ));
        spend_budget(&w, "6.6.6.6");
        for _ in 0..50 {
            let (d, ev) = w.call_with("/x", Some(&good), "6.6.6.6", NOW);
            assert!(matches!(d, Decision::Allow(_)));
            assert_eq!(ev.cache_hits, 1);
        }
    }

    #[test]
    fn a_fresh_valid_token_from_a_flooded_source_is_served_on_its_retry() {
        let keys = TestKeys::new();
        let w = world(&keys);
        spend_budget(&w, "6.6.6.6");
        let fresh = keys.eddsa(claims(json!({"sub": "new-login"})));
        let r = denied(w.call("/x", Some(&fresh), "6.6.6.6", NOW));
        assert_eq!((r.status, header(&r, "retry-after")), (429, "1"));
        // The flood goes on with new tokens: each is deferred, none verified.
        let forger = TestKeys::new();
        for i in 0..100 {
            let t = forger.eddsa(claims(json!({ "sub": format!("g{i}") })));
            let (d, ev) = w.call_with("/x", Some(&t), "6.6.6.6", NOW);
            assert_eq!((denied(d).status, ev.cache_misses), (429, 0));
        }
        let (d, ev) = w.call_with("/x", Some(&fresh), "6.6.6.6", NOW);
        assert!(matches!(d, Decision::Allow(_)), "the retry is verified");
        assert_eq!((ev.budget_trickle, ev.cache_misses), (1, 1));
    }

    #[test]
    fn another_source_sharing_a_spent_slot_is_verified_not_refused() {
        let keys = TestKeys::new();
        let w = world(&keys);
        // 64 slots: find a source that shares the flooder's slot.
        let flooder = "6.6.6.6";
        let slot = |ip: &str| {
            let peer = Peer::from(PeerInfo {
                source_address: Some(format!("{ip}:1")),
                ..PeerInfo::default()
            });
            w.engine.failed_auth_slot(&peer)
        };
        let neighbour = (0..10_000)
            .map(|i| format!("10.9.{}.{}", i / 256, i % 256))
            .find(|ip| slot(ip) == slot(flooder))
            .unwrap();
        spend_budget(&w, flooder);
        let fresh = keys.eddsa(claims(json!({"sub": "neighbour"})));
        let (d, ev) = w.call_with("/x", Some(&fresh), &neighbour, NOW);
        assert!(matches!(d, Decision::Allow(_)));
        assert_eq!(ev.budget_trickle, 1);
    }

    #[test]
    fn slots_are_chosen_with_the_secret() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let other = Engine::new(w.engine.config.clone(), "t", [8u8; 16]);
        let peer = |i: u32| {
            Peer::from(PeerInfo {
                source_address: Some(format!("10.0.{}.{}:1", i / 256, i % 256)),
                ..PeerInfo::default()
            })
        };
        let moved = (0..100)
            .filter(|i| w.engine.failed_auth_slot(&peer(*i)) != other.failed_auth_slot(&peer(*i)))
            .count();
        assert!(
            moved > 90,
            "another secret, other slots: {moved} of 100 moved"
        );
    }

    /// The host may decide a request twice (after catching up with shared keys); only the
    /// plan it settles is paid.
    fn decided_twice_settled_once(w: &World, path: &str, token: &str, ip: &str) -> Decision {
        w.with_request(path, Some(token), ip, NOW, |req, inputs| {
            let mut events = Events::default();
            let first = w.engine.decide(req, inputs, &mut events);
            let second = w.engine.decide(req, inputs, &mut events);
            assert_eq!(first, second, "deciding again reads the same state");
            w.engine.settle(second, inputs, &mut events)
        })
    }

    #[test]
    fn deciding_twice_before_settling_charges_the_bucket_once() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let alice = keys.eddsa(claims(json!({"sub": "alice"})));
        let d = decided_twice_settled_once(&w, "/x", &alice, "9.9.9.9");
        let Decision::Allow(fwd) = d else {
            panic!("allowed")
        };
        let h: std::collections::HashMap<_, _> = fwd.response_headers.into_iter().collect();
        assert_eq!(h["ratelimit"], "\"free\";r=59;t=1", "one request charged");
        // 60 per minute: 59 left after it (57 had deciding charged too).
        assert_eq!(w.admitted(70, "/x", Some(&alice), "9.9.9.9", NOW), 59);
    }

    #[test]
    fn deciding_twice_before_settling_charges_the_failed_auth_budget_once() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let forger = TestKeys::new();
        let first = forger.eddsa(claims(json!({"sub": "f-first"})));
        let r = denied(decided_twice_settled_once(&w, "/x", &first, "6.6.6.6"));
        assert_eq!(r.reason, Reason::InvalidToken(TokenError::BadSignature));
        // The budget is 10 failures per minute: 9 more are verified, the next is deferred.
        for i in 0..9 {
            let t = forger.eddsa(claims(json!({ "sub": format!("f{i}") })));
            assert_eq!(denied(w.call("/x", Some(&t), "6.6.6.6", NOW)).status, 401);
        }
        let t = forger.eddsa(claims(json!({"sub": "f-last"})));
        assert_eq!(denied(w.call("/x", Some(&t), "6.6.6.6", NOW)).status, 429);
    }

    #[test]
    fn a_plan_never_settled_charges_nothing() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let alice = keys.eddsa(claims(json!({"sub": "alice"})));
        for _ in 0..100 {
            w.with_request("/x", Some(&alice), "9.9.9.9", NOW, |req, inputs| {
                w.engine.decide(req, inputs, &mut Events::default())
            });
        }
        assert_eq!(w.admitted(70, "/x", Some(&alice), "9.9.9.9", NOW), 60);
    }

    #[test]
    fn a_charge_refused_when_settling_turns_the_answer_into_429() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let alice = keys.eddsa(claims(json!({"sub": "alice"})));
        let d = w.with_request("/x", Some(&alice), "9.9.9.9", NOW, |req, inputs| {
            let plan = w.engine.decide(req, inputs, &mut Events::default());
            assert!(matches!(plan.decision(), Decision::Allow(_)));
            // Meanwhile other workers spend alice's bucket.
            assert_eq!(w.admitted(70, "/x", Some(&alice), "9.9.9.9", NOW), 60);
            w.engine.settle(plan, inputs, &mut Events::default())
        });
        let r = denied(d);
        assert_eq!(
            (r.status, r.reason, r.route.as_deref()),
            (429, Reason::RateLimited(RateLimited::Limit), Some("api"))
        );
        assert_eq!(r.caller.and_then(|c| c.sub).as_deref(), Some("alice"));
    }

    #[test]
    fn a_trickle_credit_gone_when_settling_gives_the_429_of_a_spent_budget() {
        let keys = TestKeys::new();
        let w = world(&keys);
        spend_budget(&w, "6.6.6.6");
        let fresh = keys.eddsa(claims(json!({"sub": "new-login"})));
        // Deferred once, so its retry may take a trickle credit.
        assert_eq!(
            denied(w.call("/x", Some(&fresh), "6.6.6.6", NOW)).status,
            429
        );
        let d = w.with_request("/x", Some(&fresh), "6.6.6.6", NOW, |req, inputs| {
            let plan = w.engine.decide(req, inputs, &mut Events::default());
            assert!(matches!(plan.decision(), Decision::Allow(_)), "verified");
            // Meanwhile the trickle's 3 credits go to retries from elsewhere.
            let slot = w.engine.failed_auth_slot(req.peer);
            let rl = w.engine.config.rate_limits.as_ref().unwrap();
            let limit = &rl.limits[rl.failed_auth.unwrap()];
            for _ in 0..3 {
                let admitted = crate::ratelimit::budget::admit(
                    &w.store,
                    &slot,
                    limit,
                    1,
                    true,
                    NOW * 1_000_000_000,
                );
                assert_eq!(admitted, crate::ratelimit::budget::Admission::Trickle);
            }
            let mut events = Events::default();
            let d = w.engine.settle(plan, inputs, &mut events);
            assert_eq!(events.budget_trickle, 0);
            d
        });
        let r = denied(d);
        assert_eq!(
            (r.status, r.reason),
            (429, Reason::RateLimited(RateLimited::FailedAuth))
        );
        assert_eq!(header(&r, "retry-after"), "1");
    }

    #[test]
    fn rate_limit_config_errors_name_the_field() {
        let keys = TestKeys::new();
        let base = |rl: serde_json::Value, routes: serde_json::Value| {
            let top = json!({"rateLimits": rl, "routes": routes});
            parse_config(&config_doc(keys.jwks(), json!({}), top))
                .unwrap_err()
                .to_string()
        };
        let p = |l: serde_json::Value| json!({"policies": {"a": l}});
        let cases = [
            (
                p(json!({"requests": 0, "per": "1s"})),
                json!([]),
                "rateLimits.policies.a.requests: must be between 1 and",
            ),
            (
                p(json!({"requests": -5, "per": "1s"})),
                json!([]),
                "rateLimits.policies.a.requests: invalid value",
            ),
            (
                p(json!({"requests": 5, "per": "0s"})),
                json!([]),
                "rateLimits.policies.a.per: must be between 1s and 7d",
            ),
            (
                p(json!({"requests": 5, "per": "30d"})),
                json!([]),
                "rateLimits.policies.a.per: must be between 1s and 7d",
            ),
            (
                p(json!({"requests": 5, "per": "soon"})),
                json!([]),
                "rateLimits.policies.a.per: a duration",
            ),
            (
                p(json!({"requests": 5, "per": "1s", "burst": 0})),
                json!([]),
                "rateLimits.policies.a.burst: must be between 1",
            ),
            (
                p(json!({"requests": 5, "per": "1s", "slots": 0})),
                json!([]),
                "rateLimits.policies.a.slots: must be between 1 and 65536",
            ),
            (
                p(json!({"requests": 5, "per": "1s", "slots": 10000000})),
                json!([]),
                "rateLimits.policies.a.slots: must be between 1 and 65536",
            ),
            (
                p(json!({"requests": 5, "per": "1s"})),
                json!([{"rateLimit": [{"policy": "b"}]}]),
                "routes[0].rateLimit[0].policy: unknown policy \"b\"",
            ),
            (
                json!({"policies": {"a": {"requests": 5, "per": "1s"}}, "failedAuth": {"policy": "a"}}),
                json!([]),
                "rateLimits.failedAuth.policy: must be a policy with key \"sourceIp\"",
            ),
            (
                json!({"policies": {"a": {"requests": 5, "per": "1s"}}, "onContention": "maybe"}),
                json!([]),
                "rateLimits.onContention: unknown variant `maybe`",
            ),
        ];
        for (rl, routes, want) in cases {
            let e = base(rl, routes);
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
    }

    /// The filter-state facts of a decision, as the host would set them.
    fn facts(w: &World, d: &Decision, spiffe: Option<&str>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        crate::decision::facts::each(d, &w.engine.config, spiffe, |k, v| {
            out.push((k, v.to_string()))
        });
        out
    }

    #[test]
    fn filter_state_facts_of_an_allowed_a_throttled_and_an_unauthenticated_request() {
        let keys = TestKeys::new();
        let w = world(&keys);
        let token = keys.eddsa(claims(
            json!({"sub": "bob", "plan": "free", "azp": "web-app"}),
        ));
        let d = w.call("/items", Some(&token), "10.0.0.9", NOW);
        assert_eq!(
            facts(&w, &d, None),
            [
                ("meshguard.decision", "allow".to_string()),
                ("meshguard.route", "api".to_string()),
                (
                    "meshguard.principal",
                    "https://idp.example.com/bob".to_string()
                ),
                ("meshguard.client_id", "web-app".to_string()),
                ("meshguard.rate_limit_policy", "free".to_string()),
                ("meshguard.rate_limit_remaining", "59".to_string()),
            ]
        );
        assert_eq!(w.admitted(5, "/login", None, "10.0.0.9", NOW), 5);
        let d = w.call("/login", None, "10.0.0.9", NOW);
        assert_eq!(
            facts(&w, &d, Some("spiffe://cluster.local/ns/web/sa/frontend")),
            [
                ("meshguard.decision", "deny".to_string()),
                ("meshguard.reason", "rate_limited".to_string()),
                ("meshguard.route", "login".to_string()),
                (
                    "meshguard.spiffe_id",
                    "spiffe://cluster.local/ns/web/sa/frontend".to_string()
                ),
                ("meshguard.rate_limit_policy", "login".to_string()),
                ("meshguard.rate_limit_remaining", "0".to_string()),
            ]
        );
        let expired = keys.eddsa(claims(
            json!({"sub": "bob", "exp": NOW - 600, "iat": NOW - 900}),
        ));
        let d = w.call("/items", Some(&expired), "10.0.0.9", NOW);
        assert_eq!(
            facts(&w, &d, None),
            [
                ("meshguard.decision", "deny".to_string()),
                ("meshguard.reason", "invalid_token.expired".to_string()),
                ("meshguard.route", "api".to_string()),
            ],
            "an unverified caller has no principal"
        );
    }

    #[test]
    fn filter_state_denials_only_or_off() {
        let keys = TestKeys::new();
        let token = keys.eddsa(claims(json!({"sub": "bob"})));
        let expired = keys.eddsa(claims(
            json!({"sub": "bob", "exp": NOW - 600, "iat": NOW - 900}),
        ));
        for (mode, allowed, denied) in [("denials", 0, 3), ("off", 0, 0), ("all", 5, 3)] {
            let mut w = world(&keys);
            let doc = json!({"filterState": mode});
            w.engine.config.filter_state =
                serde_json::from_value(doc["filterState"].clone()).unwrap();
            let d = w.call("/items", Some(&token), "10.0.0.9", NOW);
            assert_eq!(facts(&w, &d, None).len(), allowed, "{mode}: allowed");
            let d = w.call("/items", Some(&expired), "10.0.0.9", NOW);
            assert_eq!(facts(&w, &d, None).len(), denied, "{mode}: denied");
        }
    }

    #[test]
    fn response_code_details_come_from_the_log_code() {
        assert_eq!(
            Reason::InvalidToken(crate::jwt::TokenError::Expired).response_code_details(),
            "meshguard_invalid_token_expired"
        );
        assert_eq!(
            Reason::RateLimited(RateLimited::Limit).response_code_details(),
            "meshguard_rate_limited"
        );
        let details: std::collections::BTreeSet<String> = Reason::ALL
            .iter()
            .map(|r| r.response_code_details())
            .collect();
        assert_eq!(details.len(), Reason::COUNT, "distinct");
        assert!(details
            .iter()
            .all(|d| d.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}

#[test]
fn tokens_bound_in_ways_meshguard_cannot_check_are_refused() {
    let keys = TestKeys::new();
    let e = routed(&keys, json!({}), json!({}));
    let dpop = keys.eddsa(claims(
        json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
    ));
    let r = denied(request(&e, "GET", "/", Some(&dpop), &peer()));
    assert_eq!(
        r.reason,
        Reason::InvalidToken(TokenError::UnsupportedBinding)
    );
}

#[test]
fn non_utf8_or_missing_request_line_parts_are_refused() {
    let keys = TestKeys::new();
    let e = routed(
        &keys,
        json!({"routes": [{"match": {"paths": ["/"]}, "token": "none"}]}),
        json!({}),
    );
    let headers = vec![
        (":authority".to_string(), b"api\xff".to_vec()),
        (":method".to_string(), b"GET".to_vec()),
    ];
    let p = Peer::default();
    let r = denied(run(
        &e,
        &RequestView {
            path: "/",
            headers: &crate::request::borrowed(&headers),
            peer: &p,
        },
    ));
    assert_eq!(r.status, 400);
    // The host passes "" for a missing or non-UTF-8 `:path`: never a default path.
    let r = denied(run(
        &e,
        &RequestView {
            path: "",
            headers: &[],
            peer: &p,
        },
    ));
    assert_eq!(
        r.reason,
        Reason::InvalidRequest(crate::jwt::extract::RequestError::InvalidPath)
    );
}

#[test]
fn the_token_cache_skips_the_signature_but_not_the_clock_or_a_key_change() {
    struct Gen(Inline, u64);
    impl KeyLookup for Gen {
        fn keys(&self, i: usize) -> Option<&KeySet> {
            self.0.keys(i)
        }
        fn generation(&self, _i: usize) -> u64 {
            self.1
        }
    }
    let keys = TestKeys::new();
    let (engine, inline) = engine(&keys, json!({}), json!({}));
    let store = MemStore::for_engine(&engine);
    let cache = RefCell::new(TokenCache::new(10, 1 << 20));
    let token = keys.rs256(claims(json!({"exp": NOW + 60})));
    let headers = vec![(
        "authorization".to_string(),
        format!("Bearer {token}").into_bytes(),
    )];
    let p = Peer::default();
    let req = RequestView {
        path: "/",
        headers: &crate::request::borrowed(&headers),
        peer: &p,
    };
    let mut lookup = Gen(inline, 1);
    let run_at = |lookup: &Gen, at: u64| {
        let inputs = Inputs {
            keys: lookup,
            buckets: &store,
            crypto: None,
            cache: Some(&cache),
            now_ns: at * 1_000_000_000,
        };
        let mut events = Events::default();
        let d = decide_and_settle(&engine, &req, &inputs, &mut events);
        (d, events.cache_hits, events.cache_misses)
    };
    assert!(matches!(run_at(&lookup, NOW), (Decision::Allow(_), 0, 1)));
    assert!(
        matches!(run_at(&lookup, NOW), (Decision::Allow(_), 1, 0)),
        "second time: a hit"
    );
    let (d, hits, _) = run_at(&lookup, NOW + 3600);
    assert_eq!(hits, 1);
    assert_eq!(
        denied(d).reason,
        Reason::InvalidToken(TokenError::Expired),
        "expiry still judged on a hit"
    );
    lookup.1 = 2;
    assert!(
        matches!(run_at(&lookup, NOW), (Decision::Allow(_), 0, 1)),
        "a new key set means a miss"
    );
    assert_eq!(cache.borrow().len(), 1);
}

/// Counts the host reads behind a lazy [`Peer`] (each is a property read in Envoy).
#[derive(Default)]
struct CountingPeer {
    reads: std::cell::RefCell<Vec<&'static str>>,
}

impl crate::identity::PeerFacts for CountingPeer {
    fn mtls(&self) -> bool {
        self.reads.borrow_mut().push("mtls");
        true
    }
    fn uri_san(&self) -> Option<String> {
        self.reads.borrow_mut().push("uri_san");
        Some("spiffe://cluster.local/ns/web/sa/frontend".into())
    }
    fn certificate_sha256(&self) -> Option<String> {
        self.reads.borrow_mut().push("certificate_sha256");
        Some("0f".repeat(32))
    }
    fn source_address(&self) -> Option<String> {
        self.reads.borrow_mut().push("source_address");
        Some("10.0.0.1:4000".into())
    }
}

#[test]
fn peer_facts_are_read_only_when_the_decision_needs_them() {
    let keys = TestKeys::new();
    let reads = |top: serde_json::Value, token: &str| {
        let e = routed(&keys, top, json!({}));
        let facts: &'static CountingPeer = Box::leak(Box::default());
        let d = request(&e, "GET", "/api", Some(token), &Peer::lazy(facts));
        assert!(matches!(d, Decision::Allow(_)), "{d:?}");
        facts.reads.take()
    };
    let with_sub = keys.eddsa(claims(json!({"sub": "alice", "scope": "read"})));
    let no_sub = keys.eddsa(claims(json!({"sub": null, "scope": "read"})));
    // A scope check and a limit keyed by `sub`: nothing about the connection is needed.
    let by_sub = json!({
        "routes": [{"match": {"pathPrefixes": ["/"]}, "require": {"scopes": {"anyOf": ["read"]}},
                    "rateLimit": [{"policy": "p"}]}],
        "rateLimits": {"identity": ["sub"], "policies": {"p": {"requests": 10, "per": "1s"}}}
    });
    assert_eq!(reads(by_sub.clone(), &with_sub), Vec::<&str>::new());
    // Without `sub` the bucket falls back to the source address.
    assert_eq!(reads(by_sub, &no_sub), ["source_address"]);
    // A SPIFFE header: the certificate, once each, however often the core asks.
    let header = json!({"outputPeerToHeaders": [
        {"header": "x-peer", "field": "spiffeId"}, {"header": "x-ns", "field": "namespace"}]});
    assert_eq!(reads(header, &with_sub), ["mtls", "uri_san"]);
    // A certificate-bound token: the digest.
    let thumb = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        [0x0fu8; 32],
    );
    let bound = keys.eddsa(claims(json!({"cnf": {"x5t#S256": thumb}})));
    assert_eq!(reads(json!({}), &bound), ["mtls", "certificate_sha256"]);
}

#[test]
fn a_query_parameter_token_is_cut_from_the_forwarded_path() {
    let keys = TestKeys::new();
    let token = keys.eddsa(claims(json!({})));
    let path = format!("/q?a=1&access_token={token}&b=2");
    let forwarded = |provider: serde_json::Value| {
        let e = engine(&keys, provider, json!({}));
        let peer = Peer::default();
        let req = RequestView {
            path: &path,
            headers: &[],
            peer: &peer,
        };
        match run(&e, &req) {
            Decision::Allow(fwd) => fwd.set_path,
            Decision::Deny(r) => panic!("denied: {r:?}"),
        }
    };
    assert_eq!(
        forwarded(json!({"fromParams": ["access_token"]})).as_deref(),
        Some("/q?a=1&b=2")
    );
    assert_eq!(
        forwarded(json!({"fromParams": ["access_token"], "forwardOriginalToken": true})),
        None
    );
}

impl Engine {
    /// The failed-auth slot of a request from `peer`.
    fn failed_auth_slot(&self, peer: &Peer) -> String {
        let rl = self.config.rate_limits.as_ref().unwrap();
        self.slots.failed_auth_gate(rl, peer).unwrap().slot
    }
}

#[test]
fn a_cached_token_is_judged_by_its_scope_bits_as_a_fresh_one_by_its_claims() {
    let keys = TestKeys::new();
    let routes = json!({"routes": [
        {"match": {"paths": ["/read"]}, "require": {"scopes": {"anyOf": ["read", "admin"]}}},
        {"match": {"paths": ["/write"]}, "require": {"scopes": {"allOf": ["read", "write"]}}}]});
    let (engine, inline) = engine(&keys, json!({}), routes);
    let store = MemStore::for_engine(&engine);
    let cache = RefCell::new(TokenCache::new(10, 1 << 20));
    let reader = keys.eddsa(claims(json!({"scope": "read other"})));
    let writer = keys.eddsa(claims(json!({"scope": "write", "scp": ["read"]})));
    let call = |path: &str, token: &str| {
        let headers = vec![
            (":method".to_string(), b"GET".to_vec()),
            (
                "authorization".to_string(),
                format!("Bearer {token}").into_bytes(),
            ),
        ];
        let peer = Peer::default();
        let req = RequestView {
            path,
            headers: &crate::request::borrowed(&headers),
            peer: &peer,
        };
        let inputs = Inputs {
            keys: &inline,
            buckets: &store,
            crypto: None,
            cache: Some(&cache),
            now_ns: NOW * 1_000_000_000,
        };
        let mut events = Events::default();
        let d = decide_and_settle(&engine, &req, &inputs, &mut events);
        (d, events.cache_hits)
    };
    for hits in [0, 1] {
        let (d, h) = call("/write", &reader);
        assert_eq!(h, hits);
        assert_eq!(
            denied(d).reason,
            Reason::Forbidden(Forbidden::InsufficientScope),
            "cold and warm alike"
        );
    }
    // Bits in order of mention: read 0, admin 1, write 2; `other` has none.
    let (Decision::Allow(fwd), 1) = call("/read", &reader) else {
        panic!("a cached reader reads")
    };
    assert_eq!(fwd.principal.unwrap().scopes, 0b001);
    for hits in [0, 1] {
        let (d, h) = call("/write", &writer);
        assert_eq!(h, hits);
        let Decision::Allow(fwd) = d else {
            panic!("a writer writes")
        };
        assert_eq!(fwd.principal.unwrap().scopes, 0b101);
    }
}

mod dpop;
