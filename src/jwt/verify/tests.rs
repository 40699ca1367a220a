//! Verification stories with an explicit clock: `NOW` and the provider's 60 s skew.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;

use super::*;
use crate::testkit::*;

struct Fixed(Option<KeySet>);

impl KeyLookup for Fixed {
    fn keys(&self, _index: usize) -> Option<&KeySet> {
        self.0.as_ref()
    }
}

struct Setup {
    keys: TestKeys,
    config: crate::config::Config,
    lookup: Fixed,
}

fn setup(extra: serde_json::Value) -> Setup {
    let keys = TestKeys::new();
    let config = config_with(&keys.jwks(), extra);
    let lookup = match &config.providers[0].keys {
        crate::config::KeySource::Inline(set) => Fixed(Some(set.clone())),
        crate::config::KeySource::Remote(_) => Fixed(None),
    };
    Setup {
        keys,
        config,
        lookup,
    }
}

impl Setup {
    fn check_at(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        verify(token, &[0], &self.config.providers, &self.lookup, None, now).map_err(|r| r.error)
    }
    fn check(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        self.check_at(token, NOW)
    }
}

#[test]
fn each_supported_algorithm_verifies() {
    let s = setup(json!({}));
    for token in [
        s.keys.rs256(claims(json!({}))),
        s.keys.ps256(claims(json!({}))),
        s.keys.es256(claims(json!({}))),
        s.keys.eddsa(claims(json!({}))),
    ] {
        let v = s.check(&token).unwrap();
        assert_eq!(v.claims.sub.as_deref(), Some("alice"));
        assert_eq!(v.provider, 0);
    }
}

#[test]
fn alg_none_and_hmac_are_refused_before_any_key_is_used() {
    let s = setup(json!({}));
    let body = b64(&claims(json!({})).to_string());
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), body);
    assert_eq!(
        s.check(&none),
        Err(TokenError::Malformed),
        "empty signature part"
    );
    let none_sig = format!("{}.{}.AAAA", b64(r#"{"alg":"none"}"#), body);
    assert_eq!(s.check(&none_sig), Err(TokenError::UnsupportedAlgorithm));
    let hs = s
        .keys
        .raw_ed(json!({"alg": "HS256", "kid": "rsa1"}), claims(json!({})));
    assert_eq!(s.check(&hs), Err(TokenError::UnsupportedAlgorithm));
}

#[test]
fn algorithm_outside_the_allow_list_is_refused() {
    let s = setup(json!({"algorithms": ["ES256"]}));
    assert_eq!(
        s.check(&s.keys.rs256(claims(json!({})))),
        Err(TokenError::AlgorithmNotAllowed)
    );
    assert!(s.check(&s.keys.es256(claims(json!({})))).is_ok());
}

#[test]
fn key_type_decides_the_algorithm() {
    let s = setup(json!({}));
    // An Ed25519 signature claiming to be ES256 under the EC key's kid.
    let t = s
        .keys
        .raw_ed(json!({"alg": "ES256", "kid": "ed1"}), claims(json!({})));
    assert_eq!(s.check(&t), Err(TokenError::AlgorithmNotAllowed));
    // The RSA key published with alg PS256 cannot verify RS256.
    let rs_as_ps = rewrite_header(&s.keys.rs256(claims(json!({}))), |h| {
        h["kid"] = json!("ps1")
    });
    assert_eq!(s.check(&rs_as_ps), Err(TokenError::AlgorithmNotAllowed));
}

#[test]
fn tampered_payload_fails_the_signature() {
    let s = setup(json!({}));
    for token in [
        s.keys.rs256(claims(json!({}))),
        s.keys.es256(claims(json!({}))),
        s.keys.eddsa(claims(json!({}))),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&claims(json!({"sub": "mallory"})).to_string()),
            parts[2]
        );
        assert_eq!(s.check(&forged), Err(TokenError::BadSignature));
    }
}

#[test]
fn kid_picks_the_key_and_unknown_kid_is_reported() {
    let s = setup(json!({}));
    let t = s
        .keys
        .raw_ed(json!({"alg": "EdDSA", "kid": "nope"}), claims(json!({})));
    assert_eq!(s.check(&t), Err(TokenError::UnknownKey));
}

#[test]
fn token_without_kid_needs_exactly_one_candidate_key() {
    let s = setup(json!({}));
    let ed = s.keys.raw_ed(json!({"alg": "EdDSA"}), claims(json!({})));
    assert!(s.check(&ed).is_ok(), "one Ed25519 key: accepted");
    // Two RSA keys (rsa1 for any RS/PS, ps1 for PS256) can verify PS256: ambiguous.
    let ps = s.keys.ps256(claims(json!({})));
    let ps_no_kid = rewrite_header(&ps, |h| {
        h.as_object_mut().unwrap().remove("kid");
    });
    assert_eq!(s.check(&ps_no_kid), Err(TokenError::AmbiguousKey));
}

#[test]
fn expiry_is_required_and_judged_with_clock_skew() {
    let s = setup(json!({}));
    let t = s.keys.eddsa(claims(json!({"exp": NOW})));
    assert!(s.check_at(&t, NOW + 59).is_ok(), "within 60 s skew");
    assert_eq!(s.check_at(&t, NOW + 60), Err(TokenError::Expired));
    let no_exp = s
        .keys
        .raw_ed(json!({"alg": "EdDSA"}), claims(json!({"exp": null})));
    assert_eq!(s.check(&no_exp), Err(TokenError::MissingExpiration));
}

#[test]
fn zero_skew_is_exact() {
    let s = setup(json!({"clockSkewSeconds": 0}));
    let t = s.keys.eddsa(claims(json!({"exp": NOW + 1})));
    assert!(s.check_at(&t, NOW).is_ok());
    assert_eq!(s.check_at(&t, NOW + 1), Err(TokenError::Expired));
}

#[test]
fn not_before_and_issued_at_in_the_future() {
    let s = setup(json!({}));
    let nbf = s.keys.eddsa(claims(json!({"nbf": NOW + 61})));
    assert_eq!(s.check(&nbf), Err(TokenError::NotYetValid));
    assert!(s.check_at(&nbf, NOW + 1).is_ok());
    let iat = s.keys.eddsa(claims(json!({"iat": NOW + 61})));
    assert_eq!(s.check(&iat), Err(TokenError::IssuedInFuture));
}

#[test]
fn max_lifetime_limits_exp_minus_iat() {
    let s = setup(json!({"maxLifetimeSeconds": 3600}));
    assert!(s
        .check(&s.keys.eddsa(claims(json!({"iat": NOW, "exp": NOW + 3600}))))
        .is_ok());
    let long = s.keys.eddsa(claims(json!({"iat": NOW, "exp": NOW + 3601})));
    assert_eq!(s.check(&long), Err(TokenError::LifetimeTooLong));
    let no_iat = s
        .keys
        .eddsa(claims(json!({"iat": null, "exp": NOW + 7200})));
    assert_eq!(s.check(&no_iat), Err(TokenError::LifetimeTooLong));
}

#[test]
fn audience_any_of_string_or_array() {
    let s = setup(json!({"audiences": ["api", "other"]}));
    assert!(s
        .check(&s.keys.raw_ed(
            json!({"alg": "EdDSA"}),
            claims(json!({"aud": ["x", "other"]}))
        ))
        .is_ok());
    let wrong = s
        .keys
        .raw_ed(json!({"alg": "EdDSA"}), claims(json!({"aud": ["x", "y"]})));
    assert_eq!(s.check(&wrong), Err(TokenError::Audience));
    let none = s
        .keys
        .raw_ed(json!({"alg": "EdDSA"}), claims(json!({"aud": null})));
    assert_eq!(s.check(&none), Err(TokenError::Audience));
}

#[test]
fn no_configured_audience_means_audience_is_not_checked() {
    let keys = TestKeys::new();
    let cfg = parse_config(&config_doc(keys.jwks(), json!({}), json!({}))).unwrap();
    let crate::config::KeySource::Inline(set) = &cfg.providers[0].keys else {
        unreachable!()
    };
    let t = keys.eddsa(claims(json!({"aud": "anything"})));
    assert!(verify(
        &t,
        &[0],
        &cfg.providers,
        &Fixed(Some(set.clone())),
        None,
        NOW
    )
    .is_ok());
}

#[test]
fn issuer_must_match_exactly() {
    let s = setup(json!({}));
    for iss in [
        json!("https://idp.example.com/"),
        json!("https://IDP.example.com"),
        serde_json::Value::Null,
    ] {
        let t = s.keys.eddsa(claims(json!({"iss": iss})));
        assert_eq!(s.check(&t), Err(TokenError::UnknownIssuer), "{iss}");
    }
}

#[test]
fn provider_without_keys_fails_closed() {
    let s = setup(json!({}));
    let t = s.keys.eddsa(claims(json!({})));
    let none = Fixed(None);
    assert_eq!(
        verify(&t, &[0], &s.config.providers, &none, None, NOW).map_err(|r| r.error),
        Err(TokenError::KeysUnavailable)
    );
    let empty = Fixed(Some(KeySet::default()));
    assert_eq!(
        verify(&t, &[0], &s.config.providers, &empty, None, NOW).map_err(|r| r.error),
        Err(TokenError::KeysUnavailable)
    );
}

#[test]
fn provider_token_size_limit() {
    let s = setup(json!({"maxTokenBytes": 256}));
    let t = s.keys.eddsa(claims(json!({"pad": "x".repeat(300)})));
    assert_eq!(s.check(&t), Err(TokenError::TooLarge));
}

#[test]
fn token_from_a_source_the_issuer_does_not_use_is_refused() {
    let s = setup(json!({}));
    let t = s.keys.eddsa(claims(json!({})));
    assert_eq!(
        verify(&t, &[7], &s.config.providers, &s.lookup, None, NOW).map_err(|r| r.error),
        Err(TokenError::UnknownIssuer)
    );
}

/// A header and payload given as raw JSON text (so members may repeat), signed with Ed25519.
fn signed_raw(keys: &TestKeys, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let kp = ed25519_compact::KeyPair::from_slice(&keys.ed.to_bytes()).unwrap();
    let sig = kp.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

#[test]
fn a_correctly_signed_token_with_a_repeated_member_is_malformed() {
    let s = setup(json!({}));
    let payload = |sub: &str| {
        format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"sub":"alice"{sub}}}"#,
            NOW + 600
        )
    };
    let header = r#"{"alg":"EdDSA","kid":"ed1"}"#;
    // The control: the same token without the repeat verifies.
    let good = signed_raw(&s.keys, header, &payload(""));
    assert_eq!(s.check(&good).unwrap().claims.sub.as_deref(), Some("alice"));
    let twice_sub = signed_raw(&s.keys, header, &payload(r#","sub":"admin""#));
    assert_eq!(s.check(&twice_sub).map(|_| ()), Err(TokenError::Malformed));
    let twice_alg = signed_raw(
        &s.keys,
        r#"{"alg":"EdDSA","kid":"ed1","alg":"EdDSA"}"#,
        &payload(""),
    );
    assert_eq!(s.check(&twice_alg).map(|_| ()), Err(TokenError::Malformed));
}
