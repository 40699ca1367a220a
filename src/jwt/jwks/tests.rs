//! JWKS documents: good keys load, bad keys are skipped with a reason, others still load.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::*;
use crate::testkit::TestKeys;

fn load(doc: serde_json::Value) -> KeySet {
    KeySet::from_jwks(doc.to_string().as_bytes(), &Algorithm::ALL).unwrap()
}

#[test]
fn loads_each_key_family_with_its_algorithms() {
    let set = load(TestKeys::new().jwks());
    assert_eq!(set.len(), 4);
    let algs: Vec<_> = set
        .keys()
        .iter()
        .map(|k| (k.kid.clone().unwrap(), k.algorithms.len()))
        .collect();
    assert_eq!(
        algs,
        vec![
            ("rsa1".into(), 6),
            ("ps1".into(), 1),
            ("ec1".into(), 1),
            ("ed1".into(), 1)
        ]
    );
}

#[test]
fn allow_list_limits_the_algorithms_a_key_gets() {
    let set = KeySet::from_jwks(
        TestKeys::new().jwks().to_string().as_bytes(),
        &[Algorithm::RS256],
    )
    .unwrap();
    assert_eq!(set.len(), 1, "only the RSA key without alg");
    assert_eq!(set.keys()[0].algorithms, vec![Algorithm::RS256]);
    let reasons: Vec<_> = set.skipped.iter().map(|s| s.reason).collect();
    assert_eq!(
        reasons,
        vec![
            "alg not allowed by provider",
            "no allowed algorithm for this key type",
            "no allowed algorithm for this key type"
        ]
    );
}

#[test]
fn bad_keys_are_skipped_with_reasons_and_good_keys_still_load() {
    let k = TestKeys::new();
    // A 1024-bit modulus (odd, top bit set): the size alone disqualifies it.
    let small_n = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
    let mut off_curve = k.ec_jwk();
    off_curve["kid"] = json!("off");
    off_curve["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let mut enc = k.ed_jwk();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    let mut missing_n = k.rsa_jwk("nn", None);
    missing_n.as_object_mut().unwrap().remove("n");
    let mut dup = k.ec_jwk();
    dup["kid"] = json!("ed1");
    let doc = json!({"keys": [
        k.ed_jwk(),
        {"kty": "RSA", "kid": "small", "n": small_n, "e": "AQAB"},
        off_curve,
        enc,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        missing_n,
        dup,
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "badalg", "alg": "HS256", "n": "AA", "e": "AQAB"},
        "not an object",
        k.ec_jwk(),
    ]});
    let set = load(doc);
    let kids: Vec<_> = set.keys().iter().map(|k| k.kid.clone().unwrap()).collect();
    assert_eq!(kids, vec!["ed1", "ec1"]);
    let reasons: Vec<_> = set
        .skipped
        .iter()
        .map(|s| (s.kid.clone().unwrap_or_default(), s.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("small".into(), "RSA modulus under 2048 bits"),
            ("off".into(), "EC point is not on the curve"),
            ("enc".into(), "use is not sig"),
            ("hmac".into(), "unsupported kty"),
            ("nn".into(), "missing member"),
            ("ed1".into(), "duplicate kid"),
            ("p521".into(), "unsupported curve"),
            ("badalg".into(), "unsupported alg"),
            (String::new(), "key is not a JSON object"),
        ]
    );
    assert!(set
        .skipped_summary()
        .contains("keys[1] kid \"small\": RSA modulus under 2048 bits"));
}

#[test]
fn unusable_documents_are_errors() {
    let cases: [(&[u8], &str); 4] = [
        (b"<html>", "JWKS is not valid JSON"),
        (b"[1]", "JWKS is not a JSON object"),
        (b"{\"keys\": {}}", "JWKS has no \"keys\" array"),
        (b"{}", "JWKS has no \"keys\" array"),
    ];
    for (doc, want) in cases {
        assert_eq!(
            KeySet::from_jwks(doc, &Algorithm::ALL).unwrap_err(),
            JwksError::Document(want.into())
        );
    }
    let huge = vec![b' '; MAX_JWKS_BYTES + 1];
    assert!(KeySet::from_jwks(&huge, &Algorithm::ALL).is_err());
}

#[test]
fn key_selection() {
    let set = load(TestKeys::new().jwks());
    assert_eq!(
        set.select(Some("ec1"), Algorithm::ES256)
            .unwrap()
            .kid
            .as_deref(),
        Some("ec1")
    );
    assert_eq!(
        set.select(Some("zz"), Algorithm::ES256).unwrap_err(),
        KeySelectError::UnknownKid
    );
    assert_eq!(
        set.select(Some("ec1"), Algorithm::RS256).unwrap_err(),
        KeySelectError::AlgorithmMismatch
    );
    assert_eq!(
        set.select(None, Algorithm::ES256).unwrap().kid.as_deref(),
        Some("ec1")
    );
    assert_eq!(
        set.select(None, Algorithm::RS256).unwrap().kid.as_deref(),
        Some("rsa1")
    );
    assert_eq!(
        set.select(None, Algorithm::PS256).unwrap_err(),
        KeySelectError::Ambiguous
    );
    assert_eq!(
        set.select(None, Algorithm::ES384).unwrap_err(),
        KeySelectError::NoKeyForAlgorithm
    );
}

#[test]
fn too_many_keys_are_cut_at_the_bound() {
    let ed = TestKeys::new().ed_jwk();
    let keys: Vec<_> = (0..MAX_KEYS + 3)
        .map(|i| {
            let mut k = ed.clone();
            k["kid"] = json!(format!("k{i}"));
            k
        })
        .collect();
    let set = load(json!({ "keys": keys }));
    assert_eq!(set.len(), MAX_KEYS);
    assert_eq!(set.skipped.len(), 3);
    assert!(set.skipped.iter().all(|s| s.reason == "too many keys"));
}
