use serde_json::json;

use super::*;
use crate::testkit::b64;

fn token(header: &str, payload: &str) -> String {
    format!("{}.{}.c2ln", b64(header), b64(payload))
}

#[test]
fn parses_header_hints_and_registered_claims() {
    let t = token(
        r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#,
        r#"{"iss":"i","sub":"s","aud":["a","b"],"exp":2000000000.75,"nbf":1,"iat":2,"x":{"y":[1]}}"#,
    );
    let p = parse(&t).unwrap();
    assert_eq!(p.alg, "RS256");
    assert_eq!(p.kid.as_deref(), Some("k1"));
    assert_eq!(p.claims.aud, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(p.claims.exp, Some(2_000_000_000));
    assert_eq!(
        p.claims.get_path(&["x".into(), "y".into()]),
        Some(&json!([1]))
    );
}

#[test]
fn refuses_bad_encodings() {
    let good = token(r#"{"alg":"RS256"}"#, r#"{"iss":"i"}"#);
    assert!(parse(&good).is_ok());
    let padded = format!(
        "{}=.{}",
        good.split_once('.').unwrap().0,
        good.split_once('.').unwrap().1
    );
    let cases = [
        ("padding", padded),
        ("plus/slash", good.replacen('.', "+/.", 1)),
        ("two parts", good.rsplit_once('.').unwrap().0.to_string()),
        ("four parts", format!("{good}.x")),
        (
            "empty signature",
            format!("{}.", good.rsplit_once('.').unwrap().0),
        ),
        ("spaces", format!("{good} ")),
        ("non-ascii", format!("{good}é")),
        ("garbage", "not a token".to_string()),
        ("empty", String::new()),
        (
            "non-canonical trailing bits",
            format!("{}.{}.c2lo", b64(r#"{"alg":"RS256"}"#), "eyJpc3MiOiJpIn1"),
        ),
    ];
    for (name, t) in cases {
        assert_eq!(parse(&t), Err(TokenError::Malformed), "{name}");
    }
}

#[test]
fn refuses_bad_json_shapes() {
    let cases = [
        ("header not JSON", token("{alg", "{}")),
        ("header array", token("[]", "{}")),
        ("no alg", token(r#"{"kid":"k"}"#, "{}")),
        ("alg number", token(r#"{"alg":256}"#, "{}")),
        ("kid number", token(r#"{"alg":"RS256","kid":1}"#, "{}")),
        (
            "typ not JWT",
            token(r#"{"alg":"RS256","typ":"JOSE+JSON"}"#, "{}"),
        ),
        ("crit", token(r#"{"alg":"RS256","crit":["b64"]}"#, "{}")),
        ("payload array", token(r#"{"alg":"RS256"}"#, "[1]")),
        ("payload string", token(r#"{"alg":"RS256"}"#, r#""x""#)),
        (
            "payload not utf8",
            format!(
                "{}.{}.c2ln",
                b64(r#"{"alg":"RS256"}"#),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe])
            ),
        ),
        (
            "exp string",
            token(r#"{"alg":"RS256"}"#, r#"{"exp":"2000000000"}"#),
        ),
        ("exp negative", token(r#"{"alg":"RS256"}"#, r#"{"exp":-1}"#)),
        ("exp huge", token(r#"{"alg":"RS256"}"#, r#"{"exp":1e300}"#)),
        (
            "exp past 2106",
            token(r#"{"alg":"RS256"}"#, r#"{"exp":4294967296}"#),
        ),
        (
            "exp bignum",
            token(
                r#"{"alg":"RS256"}"#,
                r#"{"exp":123456789012345678901234567890}"#,
            ),
        ),
        ("aud number", token(r#"{"alg":"RS256"}"#, r#"{"aud":5}"#)),
        (
            "aud mixed array",
            token(r#"{"alg":"RS256"}"#, r#"{"aud":["a",5]}"#),
        ),
        ("iss object", token(r#"{"alg":"RS256"}"#, r#"{"iss":{}}"#)),
        ("sub number", token(r#"{"alg":"RS256"}"#, r#"{"sub":1}"#)),
        ("jti number", token(r#"{"alg":"RS256"}"#, r#"{"jti":1}"#)),
    ];
    for (name, t) in cases {
        assert_eq!(parse(&t), Err(TokenError::Malformed), "{name}");
    }
}

#[test]
fn a_member_given_twice_is_malformed_not_last_wins() {
    let cases = [
        (
            "alg twice",
            token(r#"{"alg":"none","alg":"RS256"}"#, r#"{"sub":"s"}"#),
        ),
        (
            "kid twice",
            token(r#"{"alg":"RS256","kid":"a","kid":"a"}"#, "{}"),
        ),
        (
            "sub twice",
            token(r#"{"alg":"RS256"}"#, r#"{"sub":"admin","sub":"alice"}"#),
        ),
        (
            "exp twice",
            token(r#"{"alg":"RS256"}"#, r#"{"exp":1,"iss":"i","exp":2}"#),
        ),
        (
            "nested twice",
            token(
                r#"{"alg":"RS256"}"#,
                r#"{"cnf":{"x5t#S256":"a","x5t#S256":"b"}}"#,
            ),
        ),
        (
            "in an array",
            token(r#"{"alg":"RS256"}"#, r#"{"x":[{"r":1,"r":2}]}"#),
        ),
    ];
    for (name, t) in cases {
        assert_eq!(parse(&t), Err(TokenError::Malformed), "{name}");
    }
    // The same name at different places is fine.
    let ok = token(
        r#"{"alg":"RS256","kid":"k"}"#,
        r#"{"sub":"s","x":{"sub":"t"},"kid":"k"}"#,
    );
    assert_eq!(parse(&ok).unwrap().claims.sub.as_deref(), Some("s"));
}
