//! Property-based fuzzing (proptest, a fixed number of cases so `make test` stays bounded) of the
//! inputs an attacker or a typo controls: plugin configuration and tokens. The property: never a
//! panic, and garbage is never accepted. A failing case's seed is saved in
//! `tests/fuzz.proptest-regressions` (commit it) and replayed first on every later run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use meshguard::config::Config;
use meshguard::jwt::jwks::KeySet;
use meshguard::jwt::verify::{verify, KeyLookup};
use meshguard::jwt::{jws, Algorithm};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "providers",
        "issuer",
        "audiences",
        "jwks",
        "jwksUri",
        "jwksCluster",
        "routes",
        "match",
        "paths",
        "require",
        "roles",
        "anyOf",
        "scopes",
        "rateLimits",
        "policies",
        "requests",
        "per",
        "keys",
        "kty",
        "n",
        "e",
        "x",
        "y",
        "crv",
        "kid",
        "alg",
        "mode",
        "token",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "RS256",
            "none",
            "/a/{id}",
            "1m",
            "dryRun",
            "https://i",
            "*",
            "**"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..5).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

struct NoKeys;
impl KeyLookup for NoKeys {
    fn keys(&self, _: usize) -> Option<&KeySet> {
        None
    }
}

struct Keys(KeySet);
impl KeyLookup for Keys {
    fn keys(&self, _: usize) -> Option<&KeySet> {
        Some(&self.0)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))), ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Config::from_plugin_bytes(&bytes);
    }

    #[test]
    fn config_parsing_never_panics_on_json_shapes(v in json_value()) {
        let _ = Config::from_json(v.to_string().as_bytes());
        let _ = KeySet::from_jwks(v.to_string().as_bytes(), &Algorithm::ALL);
    }

    #[test]
    fn token_parsing_never_panics_and_never_accepts_garbage(s in "[A-Za-z0-9_.=+/ -]{0,200}") {
        let _ = jws::parse(&s);
        let cfg = Config::from_json(json!({"providers": [{"issuer": "i", "jwksUri": "https://i/k", "jwksCluster": "c"}]}).to_string().as_bytes()).unwrap();
        prop_assert!(verify(&s, &[0], &cfg.providers, &NoKeys, None, 1_800_000_000).is_err());
    }

    #[test]
    fn tokens_with_arbitrary_json_parts_never_panic(header in json_value(), payload in json_value(), sig in prop::collection::vec(any::<u8>(), 0..80)) {
        let token = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()), URL_SAFE_NO_PAD.encode(sig));
        let _ = jws::parse(&token);
    }

    #[test]
    fn mutated_valid_tokens_are_refused(pos in 0usize..400, byte in any::<u8>()) {
        // A valid Ed25519 token with one byte changed anywhere must be refused.
        use jwt_simple::algorithms::{Ed25519KeyPair, EdDSAKeyPairLike};
        let kp = Ed25519KeyPair::generate();
        let claims = jwt_simple::claims::Claims::create(jwt_simple::prelude::Duration::from_hours(1)).with_issuer("i");
        let token = kp.sign(claims).unwrap();
        let jwk = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(kp.public_key().to_bytes())}]});
        let cfg = Config::from_json(json!({"providers": [{"issuer": "i", "jwks": jwk}]}).to_string().as_bytes()).unwrap();
        let keys = Keys(KeySet::from_jwks(jwk.to_string().as_bytes(), &Algorithm::ALL).unwrap());
        let mut bytes = token.clone().into_bytes();
        let i = pos % bytes.len();
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        let now = jwt_simple::prelude::Clock::now_since_epoch().as_secs();
        prop_assert!(verify(&token, &[0], &cfg.providers, &keys, None, now).is_ok());
        prop_assert!(verify(&mutated, &[0], &cfg.providers, &keys, None, now).is_err(), "mutation accepted at {i}");
    }
}
