//! Fleet limits through the pipeline: what is asked, and what each answer becomes. Expected
//! message bytes come from Python `protobuf` (`tests/fixtures/rls/gen.py`).

use serde_json::json;

use super::*;
use crate::decision::LocalReply;
use crate::engine::{Events, Inputs};
use crate::identity::PeerInfo;
use crate::jwt::jwks::KeySet;
use crate::jwt::verify::KeyLookup;
use crate::request::RequestView;
use crate::testkit::*;

struct Inline(Vec<Option<KeySet>>);

impl KeyLookup for Inline {
    fn keys(&self, index: usize) -> Option<&KeySet> {
        self.0.get(index)?.as_ref()
    }
}

const OVER: &str = "0802121208021204080a1002220808111080cab5ee011a200a11582d526174654c696d69742d4c696d6974120b31302c2031303b773d3630";

/// A route without tokens charging fleet policy `shared` (local bucket of `local` requests a
/// minute in front) at cost 2; the service fails as `failure_mode` says.
fn engine(local: u64, failure_mode: &str) -> Engine {
    let keys = TestKeys::new();
    let top = json!({
        "rateLimits": {
            "service": {"cluster": "rls", "domain": "saas-api", "timeoutMs": 50, "failureMode": failure_mode},
            "policies": {"shared": {"requests": local, "per": "1m", "fleet": true}},
            "responseHeaders": true
        },
        "routes": [{"match": {"pathPrefixes": ["/"]}, "token": "none",
                    "rateLimit": [{"policy": "shared", "cost": 2}]}]
    });
    let config = parse_config(&config_doc(keys.jwks(), json!({}), top)).unwrap();
    Engine::new(config, "test", [7u8; 16])
}

/// Decides and settles one request from 10.0.0.1 on `store`: the decision and the fleet call.
fn local(engine: &Engine, store: &MemStore) -> (Decision, Option<FleetCall>) {
    request_from(engine, store, from_10_0_0_1(), None)
}

fn from_10_0_0_1() -> PeerInfo {
    PeerInfo {
        source_address: Some("10.0.0.1:4000".into()),
        ..PeerInfo::default()
    }
}

/// Decides and settles one `GET /projects` from `peer` on `store`, with a bearer token signed
/// by the configuration's inline keys when `token` is given.
fn request_from(
    engine: &Engine,
    store: &MemStore,
    peer: PeerInfo,
    token: Option<&str>,
) -> (Decision, Option<FleetCall>) {
    let peer = crate::identity::Peer::from(peer);
    let mut owned = vec![
        (":authority".to_string(), b"api".to_vec()),
        (":method".to_string(), b"GET".to_vec()),
    ];
    if let Some(t) = token {
        owned.push((
            "authorization".to_string(),
            format!("Bearer {t}").into_bytes(),
        ));
    }
    let headers = crate::request::borrowed(&owned);
    let req = RequestView {
        path: "/projects",
        headers: &headers,
        peer: &peer,
    };
    let keys = Inline(engine.config.inline_keys());
    let inputs = Inputs {
        keys: &keys,
        buckets: store,
        crypto: None,
        cache: None,
        now_ns: NOW * 1_000_000_000,
    };
    let mut plan = engine.decide(&req, &inputs, &mut Events::default());
    let call = plan.take_fleet();
    (engine.settle(plan, &inputs, &mut Events::default()), call)
}

fn settle(engine: &Engine, answer: Result<&[u8], Failure>) -> (Decision, Events) {
    let store = MemStore::for_engine(engine);
    let (decision, call) = local(engine, &store);
    let mut events = Events::default();
    let d = engine.fleet_settle(decision, call.unwrap(), answer, &mut events);
    (d, events)
}

fn denied(d: Decision) -> LocalReply {
    match d {
        Decision::Deny(r) => r,
        Decision::Allow(f) => panic!("allowed: {f:?}"),
    }
}

fn header<'a>(r: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    r.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn an_admitted_request_asks_for_its_policy_identity_and_cost() {
    let e = engine(10, "deny");
    let store = MemStore::for_engine(&e);
    let (decision, call) = local(&e, &store);
    assert!(matches!(decision, Decision::Allow(_)));
    assert_eq!(
        call.unwrap().message,
        hex("0a08736161732d617069122b0a100a06706f6c69637912067368617265640a170a086964656e74697479120b69703a31302e302e302e311802")
    );
}

#[test]
fn a_request_the_local_bucket_refuses_costs_no_call() {
    // Local bucket of 2 a minute, cost 2: the first request empties it.
    let e = engine(2, "deny");
    let store = MemStore::for_engine(&e);
    assert!(local(&e, &store).1.is_some());
    let (decision, call) = local(&e, &store);
    assert_eq!(denied(decision).status, 429);
    assert_eq!(call, None);
}

#[test]
fn over_limit_is_a_429_with_the_services_numbers() {
    let e = engine(10, "deny");
    let (d, events) = settle(&e, Ok(&hex(OVER)));
    let reply = denied(d);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.reason.code(), "rate_limited.fleet");
    // 17.5 s until the reset, rounded up.
    assert_eq!(header(&reply.headers, "retry-after"), Some("18"));
    assert_eq!(
        header(&reply.headers, "ratelimit"),
        Some("\"shared\";r=0;t=18")
    );
    assert_eq!(
        header(&reply.headers, "ratelimit-policy"),
        Some("\"shared\";q=10;w=60")
    );
    // The service's own header replaces ours of the same name.
    assert_eq!(
        header(&reply.headers, "x-ratelimit-limit"),
        Some("10, 10;w=60")
    );
    assert_eq!(events.fleet, Some(Outcome::OverLimit));
}

#[test]
fn ok_lets_the_request_through_with_the_fleets_remaining() {
    let e = engine(10, "deny");
    // OK; one status: 5 a second, 4 left, reset in 1 s.
    let (d, events) = settle(&e, Ok(&hex("0801120e0801120408051001180422020801")));
    let Decision::Allow(fwd) = d else {
        panic!("denied")
    };
    assert_eq!(
        header(&fwd.response_headers, "ratelimit"),
        Some("\"shared\";r=4;t=1")
    );
    assert_eq!(events.fleet, Some(Outcome::Ok));
}

/// `OK` with no status naming a limit (no limit of the service matched): allowed, no fleet
/// numbers to show, counted under its own outcome.
#[test]
fn ok_without_a_limit_is_allowed_and_counted_apart() {
    let e = engine(10, "deny");
    let (d, events) = settle(&e, Ok(&hex("0801")));
    let Decision::Allow(fwd) = d else {
        panic!("denied")
    };
    // Only the local bucket's numbers (10 a minute, cost 2: 8 left).
    assert_eq!(
        header(&fwd.response_headers, "ratelimit"),
        Some("\"shared\";r=8;t=12")
    );
    assert_eq!(events.fleet, Some(Outcome::OkNoLimit));
    // The same with a status that names no limit.
    let (_, events) = settle(&e, Ok(&hex("080112021801")));
    assert_eq!(events.fleet, Some(Outcome::OkNoLimit));
}

#[test]
fn failures_follow_the_failure_mode() {
    for failure in [
        Failure::Timeout,
        Failure::Unavailable,
        Failure::Dispatch,
        Failure::Deadline,
    ] {
        let (d, events) = settle(&engine(10, "deny"), Err(failure));
        let reply = denied(d);
        assert_eq!(
            (reply.status, reply.reason.code()),
            (503, "rate_limited.service_unavailable")
        );
        assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
        assert_eq!(events.fleet, Some(Outcome::Failed(failure)));

        let (d, _) = settle(&engine(10, "allow"), Err(failure));
        assert!(matches!(d, Decision::Allow(_)), "{failure:?}");
    }
    // UNKNOWN (an empty message) and garbage are failures too.
    let (d, events) = settle(&engine(10, "deny"), Ok(&[]));
    assert_eq!(denied(d).status, 503);
    assert_eq!(events.fleet, Some(Outcome::Failed(Failure::Unknown)));
    let (d, events) = settle(&engine(10, "allow"), Ok(&[0x0a, 0x05, 0x01]));
    assert!(matches!(d, Decision::Allow(_)));
    assert_eq!(events.fleet, Some(Outcome::Failed(Failure::Malformed)));
}

#[test]
fn a_fleet_policy_needs_the_service() {
    let keys = TestKeys::new();
    let top =
        json!({"rateLimits": {"policies": {"p": {"requests": 1, "per": "1s", "fleet": true}}}});
    let err = parse_config(&config_doc(keys.jwks(), json!({}), top)).unwrap_err();
    assert!(
        err.to_string().contains("rateLimits.policies.p.fleet"),
        "{err}"
    );
    let top = json!({"rateLimits": {"policies": {"p": {"requests": 1, "per": "1s"}},
        "service": {"cluster": "c", "domain": "d", "timeoutMs": 0}}});
    let err = parse_config(&config_doc(keys.jwks(), json!({}), top)).unwrap_err();
    assert!(
        err.to_string().contains("rateLimits.service.timeoutMs"),
        "{err}"
    );
}

/// A `key: sourceIp` fleet policy counts the caller's address, as its local bucket does, even
/// when the caller has another identity (here a mesh peer's SPIFFE ID): rotating identities
/// must not escape a per-IP limit.
#[test]
fn a_source_ip_policy_asks_for_the_address_not_the_identity() {
    let keys = TestKeys::new();
    let top = json!({
        "rateLimits": {
            "identity": ["spiffeId"],
            "service": {"cluster": "rls", "domain": "saas-api", "timeoutMs": 50},
            "policies": {
                "per-ip": {"requests": 10, "per": "1m", "key": "sourceIp", "fleet": true},
                "per-caller": {"requests": 10, "per": "1m", "fleet": true}
            }
        },
        "routes": [{"match": {"pathPrefixes": ["/"]}, "token": "none",
                    "rateLimit": [{"policy": "per-ip"}, {"policy": "per-caller"}]}]
    });
    let config = parse_config(&config_doc(keys.jwks(), json!({}), top)).unwrap();
    let e = Engine::new(config, "test", [7u8; 16]);
    let store = MemStore::for_engine(&e);
    let peer = PeerInfo {
        mtls: true,
        uri_san: Some("spiffe://cluster.local/ns/web/sa/frontend".into()),
        source_address: Some("10.0.0.1:4000".into()),
        ..PeerInfo::default()
    };
    let message = request_from(&e, &store, peer, None).1.unwrap().message;
    let text = String::from_utf8_lossy(&message);
    // The per-ip descriptor carries the address; the per-caller one the SPIFFE ID.
    let ip = text.find("ip:10.0.0.1").expect("the address is sent");
    let spiffe = text
        .find("spiffe:spiffe://cluster.local/ns/web/sa/frontend")
        .expect("the identity is sent");
    assert!(text.find("per-ip").unwrap() < ip && ip < text.find("per-caller").unwrap());
    assert!(text.find("per-caller").unwrap() < spiffe);
    assert_eq!(text.matches("ip:10.0.0.1").count(), 1, "{text}");
}

#[test]
fn the_service_authority_defaults_from_the_cluster_and_is_checked() {
    let keys = TestKeys::new();
    let with = |service: serde_json::Value| {
        let top = json!({"rateLimits": {"policies": {"p": {"requests": 1, "per": "1s", "fleet": true}},
            "service": service}});
        parse_config(&config_doc(keys.jwks(), json!({}), top))
    };
    let istio =
        with(json!({"cluster": "outbound|8081||rls.infra.svc.cluster.local", "domain": "d"}))
            .unwrap();
    let service = &istio.rate_limits.unwrap().fleet.unwrap().service;
    assert_eq!(service.authority, "rls.infra.svc.cluster.local");
    let given =
        with(json!({"cluster": "rls", "authority": "rls.example:8081", "domain": "d"})).unwrap();
    assert_eq!(
        given.rate_limits.unwrap().fleet.unwrap().service.authority,
        "rls.example:8081"
    );
    for bad in [
        json!({"cluster": "a|b", "domain": "d"}),
        json!({"cluster": "rls", "authority": "", "domain": "d"}),
        json!({"cluster": "rls", "authority": "rls svc", "domain": "d"}),
        json!({"cluster": "rls", "authority": "rls/x", "domain": "d"}),
    ] {
        let err = with(bad.clone()).unwrap_err();
        assert!(
            err.to_string().contains("rateLimits.service.authority"),
            "{bad}: {err}"
        );
    }
}

/// A fleet-only policy (no local bucket) naming descriptor entries: the matched route's name,
/// a claim with a default, a nested claim without one.
fn plans_engine(keys: &TestKeys) -> Engine {
    let top = json!({
        "rateLimits": {
            "identity": ["sub"],
            "service": {"cluster": "rls", "domain": "saas-api"},
            "policies": {"per-plan": {"fleet": {"entries": [
                {"key": "route"},
                {"key": "plan", "claim": "plan", "default": "free"},
                {"key": "org", "claim": "org.id"}
            ]}}}
        },
        "routes": [{"name": "projects", "match": {"pathPrefixes": ["/"]},
                    "rateLimit": [{"policy": "per-plan"}]}]
    });
    let config = parse_config(&config_doc(
        keys.jwks(),
        json!({"audiences": [AUDIENCE]}),
        top,
    ));
    Engine::new(config.unwrap(), "test", [7u8; 16])
}

#[test]
fn descriptor_entries_come_from_the_route_and_verified_claims() {
    let keys = TestKeys::new();
    let e = plans_engine(&keys);
    // A fleet-only policy has no local bucket: no slot exists, nothing is charged locally.
    let store = MemStore::for_engine(&e);
    assert!(e.slot_names().is_empty());
    let token = keys.rs256(claims(json!({"plan": "pro", "org": {"id": "acme"}})));
    let (decision, call) = request_from(&e, &store, from_10_0_0_1(), Some(&token));
    assert!(matches!(decision, Decision::Allow(_)));
    assert_eq!(
        call.unwrap().message,
        hex("0a08736161732d61706912700a120a06706f6c69637912087065722d706c616e0a2d0a086964656e7469747912217375623a68747470733a2f2f6964702e6578616d706c652e636f6d7c616c6963650a110a05726f757465120870726f6a656374730a0b0a04706c616e120370726f0a0b0a036f7267120461636d651801")
    );
}

/// No `plan` claim: its default is sent; `org.id` is a number (not a string): left out.
/// A plan value too long to be a plan (65 bytes) counts as absent.
#[test]
fn a_missing_claim_sends_its_default_or_nothing() {
    let keys = TestKeys::new();
    let e = plans_engine(&keys);
    let store = MemStore::for_engine(&e);
    let expected = hex("0a08736161732d61706912620a120a06706f6c69637912087065722d706c616e0a2b0a086964656e74697479121f7375623a68747470733a2f2f6964702e6578616d706c652e636f6d7c626f620a110a05726f757465120870726f6a656374730a0c0a04706c616e1204667265651801");
    for extra in [
        json!({"sub": "bob", "org": {"id": 42}}),
        json!({"sub": "bob", "plan": "p".repeat(65)}),
        json!({"sub": "bob", "plan": ["pro"]}),
    ] {
        let token = keys.rs256(claims(extra.clone()));
        let call = request_from(&e, &store, from_10_0_0_1(), Some(&token)).1;
        assert_eq!(call.unwrap().message, expected, "{extra}");
    }
}

#[test]
fn a_fleet_only_policy_is_decided_by_the_service_alone() {
    let keys = TestKeys::new();
    let e = plans_engine(&keys);
    let store = MemStore::for_engine(&e);
    let token = keys.rs256(claims(json!({})));
    // However many requests: no local bucket ever refuses.
    for _ in 0..3 {
        let (decision, call) = request_from(&e, &store, from_10_0_0_1(), Some(&token));
        let mut events = Events::default();
        let d = e.fleet_settle(decision, call.unwrap(), Ok(&hex(OVER)), &mut events);
        assert_eq!(denied(d).status, 429);
        assert_eq!(events.fleet, Some(Outcome::OverLimit));
    }
}

#[test]
fn descriptor_entries_and_fleet_only_policies_are_checked() {
    let keys = TestKeys::new();
    let with = |policy: serde_json::Value, service: bool| {
        let mut rl = json!({"policies": {"p": policy}});
        if service {
            rl["service"] = json!({"cluster": "rls", "domain": "d"});
        }
        let top = json!({"rateLimits": rl});
        parse_config(&config_doc(keys.jwks(), json!({}), top))
            .err()
            .map(|e| e.to_string())
    };
    let at = "rateLimits.policies.p.";
    for (policy, service, path, words) in [
        // Neither a local bucket nor fleet.
        (json!({}), true, "requests", "required"),
        (json!({"fleet": false}), true, "requests", "required"),
        (
            json!({"per": "1s", "fleet": true}),
            true,
            "requests",
            "required with per",
        ),
        (
            json!({"requests": 1, "fleet": true}),
            true,
            "per",
            "required with requests",
        ),
        // Fleet-only: nothing of a local bucket, and a service.
        (
            json!({"fleet": true, "burst": 5}),
            true,
            "burst",
            "local bucket",
        ),
        (
            json!({"fleet": true, "slots": 5}),
            true,
            "slots",
            "local bucket",
        ),
        (json!({"fleet": true}), false, "fleet", "rateLimits.service"),
        (json!({"fleet": "yes"}), true, "fleet", "invalid type"),
        // Entries.
        (
            json!({"fleet": {"entries": []}}),
            true,
            "fleet.entries",
            "1 to 4",
        ),
        (json!({"fleet": {}}), true, "fleet", "entries"),
        (
            json!({"fleet": {"entries": [{"key": "route"}], "more": 1}}),
            true,
            "fleet.more",
            "unknown field",
        ),
        (
            json!({"fleet": {"entries": [{"key": "route", "value": "x"}]}}),
            true,
            "fleet.entries[0].value",
            "unknown field",
        ),
        (
            json!({"fleet": {"entries": [{"key": "identity", "claim": "sub"}]}}),
            true,
            "fleet.entries[0].key",
            "always sends",
        ),
        (
            json!({"fleet": {"entries": [{"key": "route"}, {"key": "route"}]}}),
            true,
            "fleet.entries[1].key",
            "twice",
        ),
        (
            json!({"fleet": {"entries": [{"key": "a b", "claim": "x"}]}}),
            true,
            "fleet.entries[0].key",
            "A-Za-z0-9",
        ),
        (
            json!({"fleet": {"entries": [{"key": "plan"}]}}),
            true,
            "fleet.entries[0].claim",
            "required",
        ),
        (
            json!({"fleet": {"entries": [{"key": "plan", "claim": "a..b"}]}}),
            true,
            "fleet.entries[0].claim",
            "dotted path",
        ),
        (
            json!({"fleet": {"entries": [{"key": "route", "default": "x"}]}}),
            true,
            "fleet.entries[0].default",
            "only with claim",
        ),
        (
            json!({"fleet": {"entries": [{"key": "plan", "claim": "plan", "default": ""}]}}),
            true,
            "fleet.entries[0].default",
            "1 to 64",
        ),
    ] {
        let err = with(policy.clone(), service).unwrap_or_else(|| panic!("{policy} accepted"));
        assert!(err.starts_with(&format!("{at}{path}:")), "{policy}: {err}");
        assert!(err.contains(words), "{policy}: {err}");
    }
    let five: Vec<_> = (0..5)
        .map(|i| json!({"key": format!("k{i}"), "claim": "c"}))
        .collect();
    let err = with(json!({"fleet": {"entries": five}}), true).unwrap();
    assert!(err.starts_with(&format!("{at}fleet.entries:")), "{err}");
    // Both forms are accepted, with and without a local bucket.
    assert_eq!(with(json!({"fleet": true}), true), None);
    assert_eq!(
        with(
            json!({"requests": 1, "per": "1s", "fleet": {"entries": [{"key": "route"}]}}),
            true
        ),
        None
    );
}
