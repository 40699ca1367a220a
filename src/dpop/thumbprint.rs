//! RFC 7638 JWK thumbprints with SHA-256: the key's required members (RFC 7638 §3.2; RFC 8037
//! §2 for `OKP`) in lexicographic order, as JSON without whitespace, hashed; base64url. This is
//! the `jkt` a DPoP-bound token names in `cnf.jkt` (RFC 9449 §6.1).

use serde_json::{Map, Value};

use super::sha256_b64;

/// Why a JWK has no thumbprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ThumbprintError {
    #[error("the JWK has no kty")]
    MissingKty,
    #[error("the JWK's kty is not RSA, EC or OKP")]
    UnsupportedKty,
    #[error("the JWK has no string member {0}")]
    MissingMember(&'static str),
}

/// The required members of each key type, already in lexicographic order.
fn required(kty: &str) -> Option<&'static [&'static str]> {
    match kty {
        "RSA" => Some(&["e", "kty", "n"]),
        "EC" => Some(&["crv", "kty", "x", "y"]),
        "OKP" => Some(&["crv", "kty", "x"]),
        _ => None,
    }
}

/// The JSON text that is hashed: `{"e":"…","kty":"RSA","n":"…"}`.
pub fn canonical_json(jwk: &Map<String, Value>) -> Result<String, ThumbprintError> {
    let kty = match jwk.get("kty") {
        Some(Value::String(k)) => k.as_str(),
        _ => return Err(ThumbprintError::MissingKty),
    };
    let members = required(kty).ok_or(ThumbprintError::UnsupportedKty)?;
    let mut out = String::with_capacity(512);
    out.push('{');
    for (i, name) in members.iter().enumerate() {
        let Some(Value::String(value)) = jwk.get(*name) else {
            return Err(ThumbprintError::MissingMember(name));
        };
        if i > 0 {
            out.push(',');
        }
        // Names are plain ASCII; values are written as JSON strings (escaped if they must be).
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        out.push_str(&Value::String(value.clone()).to_string());
    }
    out.push('}');
    Ok(out)
}

/// The base64url SHA-256 thumbprint of a public JWK.
pub fn jkt(jwk: &Map<String, Value>) -> Result<String, ThumbprintError> {
    canonical_json(jwk).map(|text| sha256_b64(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test JWKs are objects"),
        }
    }

    /// RFC 7638 §3.1's example RSA key (with its extra `alg` and `kid`, which are not hashed).
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rsa_key_matches_rfc_7638_section_3_1() {
        let jwk = obj(json!({
            "kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        }));
        assert_eq!(
            canonical_json(&jwk).unwrap(),
            format!(r#"{{"e":"AQAB","kty":"RSA","n":"{RFC7638_N}"}}"#)
        );
        assert_eq!(
            jkt(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn p256_key_matches_rfc_9449() {
        // The proof key of RFC 9449 §4.1's example; its thumbprint is the `jkt` of the
        // example token in §6.1 (and what Python's hashlib gives for the canonical JSON).
        let jwk = obj(json!({
            "kty": "EC",
            "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
            "crv": "P-256"
        }));
        assert_eq!(
            jkt(&jwk).unwrap(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
    }

    #[test]
    fn p384_key_matches_python() {
        // A key made with Python's `cryptography`, its thumbprint computed with hashlib.
        let jwk = obj(json!({
            "kty": "EC", "crv": "P-384",
            "x": "CeIb0ytf69zx863SRXrE76xgP55R-eE7TtlviWEUi1PL8dRIWZr8RW9Y8c5g-epp",
            "y": "KTbrWwu29-X16re7i04DwQmR25xslg4Rk8xg7KjiRklV5Odh4T4NBL7mq1CG8hIX"
        }));
        assert_eq!(
            canonical_json(&jwk).unwrap(),
            r#"{"crv":"P-384","kty":"EC","x":"CeIb0ytf69zx863SRXrE76xgP55R-eE7TtlviWEUi1PL8dRIWZr8RW9Y8c5g-epp","y":"KTbrWwu29-X16re7i04DwQmR25xslg4Rk8xg7KjiRklV5Odh4T4NBL7mq1CG8hIX"}"#
        );
        assert_eq!(
            jkt(&jwk).unwrap(),
            "-qYnjYHZpTg1SLu1X0KOg8476GnxOouOpQ1cr9ArbLc"
        );
    }

    #[test]
    fn ed25519_key_matches_rfc_8037_appendix_a_3() {
        let jwk = obj(json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }));
        assert_eq!(
            jkt(&jwk).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn member_order_and_extra_members_do_not_change_it() {
        let a = obj(json!({"crv": "Ed25519", "kty": "OKP", "x": "AAAA"}));
        let b = obj(json!({"x": "AAAA", "use": "sig", "kty": "OKP", "crv": "Ed25519"}));
        assert_eq!(jkt(&a).unwrap(), jkt(&b).unwrap());
        assert_ne!(
            jkt(&a).unwrap(),
            jkt(&obj(json!({"crv": "Ed25519", "kty": "OKP", "x": "AAAB"}))).unwrap()
        );
    }

    #[test]
    fn keys_without_their_members_have_none() {
        let cases = [
            (json!({"x": "AAAA"}), ThumbprintError::MissingKty),
            (
                json!({"kty": "oct", "k": "AAAA"}),
                ThumbprintError::UnsupportedKty,
            ),
            (
                json!({"kty": "RSA", "n": "AAAA"}),
                ThumbprintError::MissingMember("e"),
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": 1}),
                ThumbprintError::MissingMember("y"),
            ),
        ];
        for (jwk, want) in cases {
            assert_eq!(jkt(&obj(jwk.clone())), Err(want), "{jwk}");
        }
    }
}
