//! Scope bits give the answers the claims give.

use serde_json::{json, Value};

use super::*;
use crate::identity::Peer;
use crate::policy::{Denial, Requirements, TokenUse};

fn route(all_of: &[&str], any_of: &[&str]) -> Route {
    let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Route {
        name: "r".into(),
        hosts: Vec::new(),
        paths: Vec::new(),
        methods: Vec::new(),
        token: TokenUse::Required,
        mode: None,
        require: Requirements {
            scopes_all_of: names(all_of),
            scopes_any_of: names(any_of),
            ..Requirements::default()
        },
        rate_limits: Vec::new(),
    }
}

fn claims(v: Value) -> Claims {
    Claims {
        all: v.as_object().unwrap().clone(),
        ..Claims::default()
    }
}

/// Both ways of judging a route's scopes, for one token.
fn both(index: &ScopeIndex, r: &Route, c: &Claims) -> (Result<(), Denial>, Result<(), Denial>) {
    let peer = Peer::default();
    let by_bits = r
        .require
        .check_granted(Some(c), Some(index.granted_mask(c)), &peer);
    (by_bits, r.require.check(Some(c), &peer))
}

#[test]
fn scopes_are_numbered_in_order_and_routes_compiled_to_masks() {
    let mut routes = vec![
        route(&["read", "write"], &[]),
        route(&["read"], &["admin", "ops"]),
    ];
    let index = ScopeIndex::compile(&mut routes);
    assert_eq!(
        routes[0].require.scope_masks,
        Some(ScopeMasks { all: 0b11, any: 0 })
    );
    assert_eq!(
        routes[1].require.scope_masks,
        Some(ScopeMasks {
            all: 0b1,
            any: 0b1100
        })
    );
    // Scopes no route names get no bit; `scp` as an array or a string counts too.
    let token = claims(json!({"scope": "read other", "scp": ["ops"]}));
    assert_eq!(index.granted_mask(&token), 0b1001);
    assert!(routes[1].require.scope_masks.unwrap().allow(0b1001));
    assert!(!routes[0].require.scope_masks.unwrap().allow(0b1001));
}

#[test]
fn scopes_past_the_bits_are_judged_from_the_claims() {
    let filler: Vec<String> = (0..MAX_SCOPE_BITS).map(|i| format!("s{i}")).collect();
    let filler: Vec<&str> = filler.iter().map(String::as_str).collect();
    let mut routes = vec![
        route(&filler, &[]),
        route(&["s5"], &[]),
        route(&["s5"], &["late"]),
        route(&["late"], &[]),
    ];
    let index = ScopeIndex::compile(&mut routes);
    assert_eq!(index.bits.len(), MAX_SCOPE_BITS, "bounded");
    assert!(routes[0].require.scope_masks.is_some());
    assert_eq!(
        routes[1].require.scope_masks,
        Some(ScopeMasks {
            all: 1 << 5,
            any: 0
        })
    );
    assert_eq!(routes[2].require.scope_masks, None, "`late` has no bit");
    assert_eq!(routes[3].require.scope_masks, None);
    let late = claims(json!({"scope": "s5 late"}));
    let early = claims(json!({"scope": "s5"}));
    for r in &routes[1..] {
        let (bits, from_claims) = both(&index, r, &late);
        assert_eq!(bits, from_claims);
        assert_eq!(bits, Ok(()));
    }
    assert_eq!(
        both(&index, &routes[3], &early).0,
        Err(Denial::InsufficientScope("late".into()))
    );
}

// Failing seeds are kept beside this file (`tests.proptest-regressions`); the wasm test runner
// has no files, so the property runs on the host.
#[cfg(not(target_arch = "wasm32"))]
mod property {
    use proptest::prelude::*;

    use super::*;

    /// A scope claim: absent, a string (extra spaces allowed), an array, or a wrong type.
    fn scope_claim(names: Vec<String>) -> impl Strategy<Value = Option<Value>> {
        let list = prop::sample::subsequence(names.clone(), 0..=names.len());
        prop_oneof![
            Just(None),
            list.clone().prop_map(|l| Some(Value::String(l.join("  ")))),
            list.prop_map(|l| Some(json!(l))),
            Just(Some(json!(5))),
            Just(Some(json!({"read": true}))),
        ]
    }

    /// The scopes of the property: a few names, some of which may fall past the bits when the
    /// filler route before them names many.
    fn alphabet() -> Vec<String> {
        ["read", "write", "admin", "ops", "a:b", "x/y", "s3", "s127"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 500,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
            )),
            ..ProptestConfig::default()
        })]

        #[test]
        fn bits_and_claims_give_the_same_answers(
            filler in 0usize..=MAX_SCOPE_BITS + 2,
            required in prop::collection::vec(
                (prop::sample::subsequence(alphabet(), 0..=3), prop::sample::subsequence(alphabet(), 0..=3)),
                1..6,
            ),
            tokens in prop::collection::vec((scope_claim(alphabet()), scope_claim(alphabet())), 1..8),
        ) {
            let filler: Vec<String> = (0..filler).map(|i| format!("s{i}")).collect();
            let filler: Vec<&str> = filler.iter().map(String::as_str).collect();
            let mut routes = vec![route(&filler, &[])];
            for (all, any) in &required {
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                let any: Vec<&str> = any.iter().map(String::as_str).collect();
                routes.push(route(&all, &any));
            }
            let index = ScopeIndex::compile(&mut routes);
            for (scope, scp) in tokens {
                let mut c = json!({});
                if let Some(v) = scope { c["scope"] = v; }
                if let Some(v) = scp { c["scp"] = v; }
                let c = claims(c);
                for r in &routes {
                    let (bits, from_claims) = both(&index, r, &c);
                    prop_assert_eq!(bits, from_claims);
                }
            }
        }
    }
}
