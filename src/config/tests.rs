//! Configuration stories: defaults, and each refusal naming its field.

use serde_json::{json, Value};

use super::*;
use crate::testkit::TestKeys;

fn jwks() -> Value {
    TestKeys::new().jwks()
}

fn parse(v: Value) -> Result<Config, ConfigError> {
    Config::from_json(v.to_string().as_bytes())
}

fn err(v: Value) -> String {
    parse(v).unwrap_err().to_string()
}

fn with_provider(extra: Value) -> Value {
    let mut p = json!({"issuer": "https://idp", "jwks": jwks().to_string()});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({ "providers": [p] })
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(with_provider(json!({}))).unwrap();
    assert_eq!(c.realm, "meshguard");
    assert_eq!(c.principal_header, "x-meshguard-principal");
    let p = &c.providers[0];
    assert_eq!(p.name, "p0");
    assert_eq!(p.clock_skew_seconds, 60);
    assert_eq!(p.max_token_bytes, 8192);
    assert_eq!(p.algorithms.len(), 9);
    assert!(!p.forward_original_token);
    assert_eq!(
        c.token_sources,
        vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into()
        }]
    );
    assert_eq!(
        c.owned_headers,
        vec![
            "x-meshguard-principal".to_string(),
            "x_meshguard_principal".to_string()
        ]
    );
}

#[test]
fn jwks_may_be_an_object_or_a_string() {
    let as_object = json!({"providers": [{"issuer": "i", "jwks": jwks()}]});
    let KeySource::Inline(set) = &parse(as_object).unwrap().providers[0].keys else {
        panic!()
    };
    assert_eq!(set.len(), 4);
}

#[test]
fn remote_jwks_needs_a_cluster_and_splits_the_uri() {
    let c = parse(
        json!({"providers": [{"issuer": "i", "jwksUri": "https://idp.example.com:8443/keys?v=2",
        "jwksCluster": "outbound|443||idp.example.com"}]}),
    )
    .unwrap();
    let KeySource::Remote(r) = &c.providers[0].keys else {
        panic!()
    };
    assert_eq!(r.authority, "idp.example.com:8443");
    assert_eq!(r.path, "/keys?v=2");
    assert_eq!((r.timeout_ms, r.refresh_seconds), (5000, 300));
    assert_eq!(
        err(json!({"providers": [{"issuer": "i", "jwksUri": "https://idp/keys"}]})),
        "providers[0].jwksCluster: required with jwksUri: the Envoy cluster that reaches the JWKS host"
    );
    assert!(
        err(json!({"providers": [{"issuer": "i", "jwksUri": "ftp://x", "jwksCluster": "c"}]}))
            .starts_with("providers[0].jwksUri:")
    );
}

#[test]
fn unknown_fields_are_named_with_their_path() {
    let e = err(with_provider(json!({"issuerr": "x"})));
    assert!(e.starts_with("providers[0]"), "{e}");
    assert!(e.contains("unknown field `issuerr`"), "{e}");
    let e = err(json!({"providers": [], "realmm": "x"}));
    assert!(e.contains("unknown field `realmm`"), "{e}");
    let e = err(with_provider(
        json!({"fromHeaders": [{"name": "x", "prefx": "y"}]}),
    ));
    assert!(e.starts_with("providers[0].fromHeaders[0]"), "{e}");
}

#[test]
fn ill_typed_fields_are_named_with_their_path() {
    let e = err(with_provider(json!({"clockSkewSeconds": "60"})));
    assert!(
        e.starts_with("providers[0].clockSkewSeconds: invalid type: string"),
        "{e}"
    );
    let e = err(with_provider(json!({"maxTokenBytes": -1})));
    assert!(
        e.starts_with("providers[0].maxTokenBytes: invalid value"),
        "{e}"
    );
    let e = err(json!({"providers": {"issuer": "x"}}));
    assert!(e.starts_with("providers: invalid type: map"), "{e}");
}

#[test]
fn out_of_range_values_are_refused() {
    let cases = [
        (
            json!({"clockSkewSeconds": 601}),
            "providers[0].clockSkewSeconds: must be at most 600",
        ),
        (
            json!({"maxTokenBytes": 100}),
            "providers[0].maxTokenBytes: must be between 256 and 65536",
        ),
        (
            json!({"maxLifetimeSeconds": 0}),
            "providers[0].maxLifetimeSeconds: must be between 1 and 31536000 (one year)",
        ),
        (
            json!({"algorithms": []}),
            "providers[0].algorithms: must list at least one algorithm",
        ),
        (
            json!({"name": "Bad Name"}),
            "providers[0].name: must be 1-32 characters of [a-z0-9_-]",
        ),
        (
            json!({"jwksRefreshSeconds": 5}),
            "providers[0].jwksRefreshSeconds: only allowed together with jwksUri",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(err(with_provider(extra)), want);
    }
}

#[test]
fn hmac_and_none_are_not_configurable() {
    for alg in ["HS256", "none", "ES512"] {
        let e = err(with_provider(json!({"algorithms": ["RS256", alg]})));
        assert!(
            e.starts_with(&format!(
                "providers[0].algorithms[1]: unsupported algorithm \"{alg}\""
            )),
            "{e}"
        );
    }
}

#[test]
fn key_source_must_be_exactly_one() {
    assert_eq!(
        err(json!({"providers": [{"issuer": "i"}]})),
        "providers[0].jwksUri: one of jwks or jwksUri is required"
    );
    assert_eq!(
        err(with_provider(
            json!({"jwksUri": "https://x/k", "jwksCluster": "c"})
        )),
        "providers[0].jwks: set either jwks or jwksUri, not both"
    );
    assert!(err(with_provider(json!({"jwks": "{\"keys\": []}"})))
        .starts_with("providers[0].jwks: no usable key"));
    assert_eq!(
        err(with_provider(json!({"jwks": "nope"}))),
        "providers[0].jwks: JWKS is not valid JSON"
    );
}

#[test]
fn providers_are_required_and_unique() {
    assert_eq!(
        err(json!({})),
        "providers: at least one provider is required"
    );
    let p = json!({"issuer": "https://idp", "jwks": jwks()});
    assert_eq!(
        err(json!({"providers": [p.clone(), p.clone()]})),
        "providers[1].issuer: duplicate issuer: each issuer may be configured once"
    );
    let mut named = p.clone();
    named["name"] = json!("p0");
    named["issuer"] = json!("https://other");
    assert_eq!(
        err(json!({"providers": [p, named]})),
        "providers[1].name: duplicate provider name \"p0\""
    );
}

#[test]
fn output_headers_are_validated_and_never_set_twice() {
    assert_eq!(
        err(with_provider(json!({"outputClaimToHeaders": [{"header": "x-meshguard-principal", "claim": "sub"}]}))),
        "providers[0].outputClaimToHeaders[0].header: header \"x-meshguard-principal\" is already set by another output"
    );
    assert_eq!(
        err(with_provider(
            json!({"outputClaimToHeaders": [{"header": "bad header", "claim": "sub"}]})
        )),
        "providers[0].outputClaimToHeaders[0].header: \"bad header\" is not a valid header name"
    );
    assert_eq!(
        err(with_provider(json!({"outputClaimToHeaders": [{"header": "authorization", "claim": "sub"}]}))),
        "providers[0].outputClaimToHeaders[0].header: header \"authorization\" is also a token source"
    );
    assert_eq!(
        err(with_provider(json!({"outputClaimToHeaders": [{"header": "x-a", "claim": "a..b"}]}))),
        "providers[0].outputClaimToHeaders[0].claim: must be a claim name or dotted path such as realm_access.roles"
    );
    let mut two =
        with_provider(json!({"outputClaimToHeaders": [{"header": "X-Sub", "claim": "sub"}]}));
    two["outputPeerToHeaders"] = json!([{"header": "x-peer", "field": "spiffeId"}]);
    let c = parse(two).unwrap();
    assert_eq!(
        c.owned_headers,
        vec![
            "x-meshguard-principal",
            "x_meshguard_principal",
            "x-peer",
            "x_peer",
            "x-sub",
            "x_sub"
        ]
    );
    let mut bad_field = with_provider(json!({}));
    bad_field["outputPeerToHeaders"] = json!([{"header": "x-peer", "field": "spiffe"}]);
    assert!(
        err(bad_field).starts_with("outputPeerToHeaders[0].field: unknown peer field \"spiffe\"")
    );
}

#[test]
fn not_json_or_trailing_garbage_is_refused() {
    assert!(Config::from_json(b"not json")
        .unwrap_err()
        .to_string()
        .starts_with("config: expected"));
    let e = Config::from_json(b"[]").unwrap_err().to_string();
    assert_eq!(e, "config: must be a JSON object");
    let mut bytes = with_provider(json!({})).to_string().into_bytes();
    bytes.extend_from_slice(b" {}");
    assert!(Config::from_json(&bytes)
        .unwrap_err()
        .to_string()
        .starts_with("config: trailing characters"));
}

#[test]
fn a_serialized_protobuf_struct_is_read_like_json() {
    use prost::Message;
    use prost_types::value::Kind;
    let s = |v: &str| prost_types::Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let provider = prost_types::Struct {
        fields: [
            ("issuer".to_string(), s("https://idp")),
            ("jwks".to_string(), s(&jwks().to_string())),
            (
                "clockSkewSeconds".to_string(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(30.0)),
                },
            ),
        ]
        .into_iter()
        .collect(),
    };
    let root = prost_types::Struct {
        fields: [(
            "providers".to_string(),
            prost_types::Value {
                kind: Some(Kind::ListValue(prost_types::ListValue {
                    values: vec![prost_types::Value {
                        kind: Some(Kind::StructValue(provider)),
                    }],
                })),
            },
        )]
        .into_iter()
        .collect(),
    };
    let c = Config::from_plugin_bytes(&root.encode_to_vec()).unwrap();
    assert_eq!(c.providers[0].clock_skew_seconds, 30);
    assert_eq!(
        Config::from_plugin_bytes(b"\x0a\xff").unwrap_err().path,
        "config"
    );
    assert!(Config::from_plugin_bytes(with_provider(json!({})).to_string().as_bytes()).is_ok());
}
