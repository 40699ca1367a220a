//! Configuration stories: defaults, and each refusal naming its field.

use serde_json::{json, Value};

use super::*;
use crate::testkit::TestKeys;

pub(super) fn jwks() -> Value {
    TestKeys::new().jwks()
}

pub(super) fn parse(v: Value) -> Result<Config, ConfigError> {
    Config::from_json(v.to_string().as_bytes())
}

pub(super) fn err(v: Value) -> String {
    parse(v).unwrap_err().to_string()
}

pub(super) fn with_provider(extra: Value) -> Value {
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
    assert_eq!(e, "providers: invalid type: an object, expected a list");
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

#[test]
fn a_member_given_twice_is_refused_with_its_path() {
    let p = format!(
        r#"{{"issuer": "https://idp", "jwks": {}}}"#,
        serde_json::to_string(&jwks().to_string()).unwrap()
    );
    let cases = [
        (
            format!(r#"{{"realm": "a", "providers": [{p}], "realm": "b"}}"#),
            "realm: duplicate field",
        ),
        (
            format!(
                r#"{{"providers": [{}]}}"#,
                p.replacen('{', r#"{"issuer": "https://other", "#, 1)
            ),
            "providers[0].issuer: duplicate field",
        ),
        (
            format!(
                r#"{{"providers": [{p}], "routes": [{{"match": {{"paths": ["/a"], "paths": ["/b"]}}}}]}}"#
            ),
            "routes[0].match.paths: duplicate field",
        ),
        (
            format!(
                r#"{{"providers": [{p}], "rateLimits": {{"policies": {{"x": {{"requests": 1, "per": "1s"}}, "x": {{"requests": 9, "per": "1s"}}}}}}}}"#
            ),
            "rateLimits.policies.x: duplicate field",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            Config::from_json(text.as_bytes()).unwrap_err().to_string(),
            want,
            "{text}"
        );
    }
    // The control: the first case without its repeat parses.
    let once = format!(r#"{{"realm": "a", "providers": [{p}]}}"#);
    assert_eq!(Config::from_json(once.as_bytes()).unwrap().realm, "a");
}

#[test]
fn a_protobuf_struct_key_given_twice_is_refused_with_its_path() {
    // Struct { fields: [entry{key, value}] }, written by hand: prost's map type cannot repeat a key.
    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut e = vec![0x0a, key.len() as u8];
        e.extend_from_slice(key.as_bytes());
        e.push(0x12);
        e.push(value.len() as u8);
        e.extend_from_slice(value);
        let mut out = vec![0x0a, e.len() as u8];
        out.extend(e);
        out
    }
    fn string(s: &str) -> Vec<u8> {
        let mut v = vec![0x1a, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }
    fn object(fields: &[u8]) -> Vec<u8> {
        let mut v = vec![0x2a, fields.len() as u8];
        v.extend_from_slice(fields);
        v
    }
    let top = [entry("realm", &string("a")), entry("realm", &string("b"))].concat();
    assert_eq!(
        Config::from_plugin_bytes(&top).unwrap_err().to_string(),
        "realm: duplicate field"
    );
    let nested = entry(
        "tokenCache",
        &object(
            &[
                entry("maxEntries", &[0x11, 0, 0, 0, 0, 0, 0, 0x59, 0x40]),
                entry("maxEntries", &[0x11, 0, 0, 0, 0, 0, 0, 0x59, 0x40]),
            ]
            .concat(),
        ),
    );
    assert_eq!(
        Config::from_plugin_bytes(&nested).unwrap_err().to_string(),
        "tokenCache.maxEntries: duplicate field"
    );
    // The control: one of each decodes (and then fails only for want of providers).
    let once = [entry("realm", &string("a"))].concat();
    assert_eq!(
        Config::from_plugin_bytes(&once).unwrap_err().to_string(),
        "providers: at least one provider is required"
    );
}

#[test]
fn realm_is_bounded_and_header_safe() {
    let with_realm = |realm: &str| {
        let mut v = with_provider(json!({}));
        v["realm"] = json!(realm);
        v
    };
    assert_eq!(
        parse(with_realm(&"r".repeat(256))).unwrap().realm.len(),
        256
    );
    assert_eq!(
        err(with_realm(&"r".repeat(257))),
        "realm: must be at most 256 bytes"
    );
    // The 10 MB realm of the report: refused, and the error does not echo it.
    let e = err(with_realm(&"r".repeat(10 << 20)));
    assert_eq!(e, "realm: must be at most 256 bytes");
    for bad in ["", "a\"b", "a\\b", "a\r\nb", "caf\u{e9}"] {
        assert!(
            err(with_realm(bad)).starts_with("realm: must be 1-256 bytes of printable ASCII"),
            "{bad:?}"
        );
    }
}

#[test]
fn every_string_is_bounded_and_the_error_names_the_field() {
    let long = |n: usize| "a".repeat(n);
    let cases = [
        (
            json!({"issuer": long(1025)}),
            "providers[0].issuer: must be at most 1024 bytes",
        ),
        (
            json!({"audiences": ["api", long(1025)]}),
            "providers[0].audiences[1]: must be at most 1024 bytes",
        ),
        (
            json!({"fromHeaders": [{"name": long(257)}]}),
            "providers[0].fromHeaders[0].name: must be at most 256 bytes",
        ),
        (
            json!({"fromHeaders": [{"name": "x-token", "prefix": long(65)}]}),
            "providers[0].fromHeaders[0].prefix: must be at most 64 bytes",
        ),
        (
            json!({"fromParams": [long(257)]}),
            "providers[0].fromParams[0]: must be at most 256 bytes",
        ),
        (
            json!({"outputClaimToHeaders": [{"header": "x-a", "claim": long(257)}]}),
            "providers[0].outputClaimToHeaders[0].claim: must be at most 256 bytes",
        ),
        (
            json!({"algorithms": [long(300)]}),
            "providers[0].algorithms[0]: must be at most 256 bytes",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(err(with_provider(extra)), want);
    }
    // Just inside the bounds: accepted.
    let ok = with_provider(json!({"audiences": [long(1024)],
        "outputClaimToHeaders": [{"header": long(256), "claim": long(256)}]}));
    assert!(parse(ok).is_ok());

    let mut top = with_provider(json!({}));
    top["principalHeader"] = json!(long(257));
    assert_eq!(err(top), "principalHeader: must be at most 256 bytes");
    let mut routes = with_provider(json!({}));
    routes["routes"] = json!([{"match": {"paths": ["/ok", format!("/{}", long(1024))]}}]);
    assert_eq!(
        err(routes),
        "routes[0].match.paths[1]: must be at most 1024 bytes"
    );
    let mut key = with_provider(json!({}));
    key["rateLimits"] = json!({"policies": {"a": {"requests": 1, "per": "1s"}, long(257): {"requests": 1, "per": "1s"}}});
    assert_eq!(err(key), "rateLimits.policies: a key longer than 256 bytes");
    // An inline JWKS is not a short string: its own size bound applies.
    let keys = TestKeys::new();
    let mut jwk = keys.rsa_jwk("rsa1", None);
    jwk["x5c"] = json!([long(3000)]);
    let big = json!({"providers": [{"issuer": "i", "jwks": {"keys": [jwk]}}]});
    assert!(parse(big).is_ok());
}

#[test]
fn jwks_uri_is_fully_validated() {
    let remote =
        |uri: &str| json!({"providers": [{"issuer": "i", "jwksUri": uri, "jwksCluster": "c"}]});
    let split = |uri: &str| match &parse(remote(uri)).unwrap().providers[0].keys {
        KeySource::Remote(r) => (r.authority.clone(), r.path.clone()),
        KeySource::Inline(_) => panic!(),
    };
    // Valid URIs keep their authority and path as written.
    assert_eq!(
        split("https://idp.example.com/k"),
        ("idp.example.com".into(), "/k".into())
    );
    assert_eq!(
        split("http://idp:8080/a/b?x=1"),
        ("idp:8080".into(), "/a/b?x=1".into())
    );
    assert_eq!(split("https://idp"), ("idp".into(), "/".into()));
    assert_eq!(split("https://idp?v=2"), ("idp".into(), "/?v=2".into()));
    assert_eq!(
        split("http://[::1]:9000/jwks"),
        ("[::1]:9000".into(), "/jwks".into())
    );
    assert_eq!(
        split("http://[2001:db8::7]/jwks"),
        ("[2001:db8::7]".into(), "/jwks".into())
    );
    assert_eq!(
        split("http://10.0.0.1:1/k"),
        ("10.0.0.1:1".into(), "/k".into())
    );
    assert_eq!(split("http://idp:65535/k").0, "idp:65535");

    let cases = [
        ("http://idp:99999/x", "the port must be between 1 and 65535"),
        ("http://idp:0/x", "the port must be between 1 and 65535"),
        ("http://idp:65536/x", "the port must be between 1 and 65535"),
        ("http://idp:/x", "the port must be between 1 and 65535"),
        ("http://idp:8a/x", "the port must be between 1 and 65535"),
        ("http://idp:+80/x", "the port must be between 1 and 65535"),
        (
            "http://[::1/x",
            "an IPv6 address must be in brackets and well-formed: [::1]",
        ),
        (
            "http://[::g]/x",
            "an IPv6 address must be in brackets and well-formed: [::1]",
        ),
        (
            "http://[fe80::1%25eth0]/x",
            "an IPv6 address must be in brackets and well-formed: [::1]",
        ),
        ("http://[::1]x/k", "must be host[:port] after the scheme"),
        (
            "http://::1/x",
            "an IPv6 address must be in brackets and well-formed: [::1]",
        ),
        (
            "http://user:pw@idp/x",
            "must not carry userinfo (user@host)",
        ),
        ("http://@idp/x", "must not carry userinfo (user@host)"),
        ("https://idp/k#frag", "must not have a fragment (#)"),
        ("https:///k", "must name a host"),
        ("https://:443/k", "must name a host"),
        ("https://id p/k", "must be printable ASCII without spaces"),
        (
            "https://idp/k\u{e9}",
            "must be printable ASCII without spaces",
        ),
        (
            "https://id%70/k",
            "the host must be a DNS name, an IPv4 address or a bracketed IPv6 address",
        ),
        ("ftp://idp/k", "must be an absolute http:// or https:// URI"),
        (
            "HTTPS://idp/k",
            "must be an absolute http:// or https:// URI",
        ),
        ("//idp/k", "must be an absolute http:// or https:// URI"),
    ];
    for (uri, want) in cases {
        assert_eq!(
            err(remote(uri)),
            format!("providers[0].jwksUri: {want}"),
            "{uri}"
        );
    }
    assert_eq!(
        err(remote(&format!("https://idp/{}", "k".repeat(2048)))),
        "providers[0].jwksUri: must be at most 2048 bytes"
    );
}

fn with_limits(policies: Value, route_limits: Value) -> Value {
    let mut v = with_provider(json!({}));
    v["rateLimits"] = json!({ "policies": policies });
    v["routes"] = json!([{"name": "r", "rateLimit": route_limits}]);
    v
}

#[test]
fn a_route_cost_above_its_policy_burst_is_refused() {
    let policies = json!({
        "ten": {"requests": 10, "per": "1m"},
        "small": {"requests": 100, "per": "1m", "burst": 5},
        "big": {"requests": 100, "per": "1m"}
    });
    // The report's case: cost 11 on burst 10 would answer 429 forever.
    assert_eq!(
        err(with_limits(policies.clone(), json!([{"policy": "ten", "cost": 11}]))),
        "routes[0].rateLimit[0].cost: 11 is above the burst of policy \"ten\" (10): such a request could never be admitted"
    );
    // Cost equal to the burst is fine.
    assert!(parse(with_limits(
        policies.clone(),
        json!([{"policy": "ten", "cost": 10}])
    ))
    .is_ok());
    // The burst, not the rate, is the bound.
    assert!(err(with_limits(
        policies.clone(),
        json!([{"policy": "small", "cost": 6}])
    ))
    .starts_with("routes[0].rateLimit[0].cost: 6 is above the burst of policy \"small\" (5)"));
    // A tier: every policy it can pick must fit the cost, the default too.
    let tier = |default: &str| json!([{"tier": {"claim": "plan", "policies": {"a": "big", "b": "small"}, "default": default}, "cost": 8}]);
    assert!(err(with_limits(policies.clone(), tier("big")))
        .starts_with("routes[0].rateLimit[0].cost: 8 is above the burst of policy \"small\" (5)"));
    let tier_ok = json!([{"tier": {"claim": "plan", "policies": {"a": "big"}, "default": "ten"}, "cost": 10}]);
    assert!(parse(with_limits(policies.clone(), tier_ok)).is_ok());
    let tier_default = json!([{"tier": {"claim": "plan", "policies": {"a": "big"}, "default": "ten"}, "cost": 11}]);
    assert!(err(with_limits(policies, tier_default))
        .starts_with("routes[0].rateLimit[0].cost: 11 is above the burst of policy \"ten\" (10)"));
}

#[test]
fn durations_in_envoy_and_istio_forms_configure_the_window() {
    for (per, ns) in [
        ("1m30s", 90_000_000_000u64),
        ("1.5s", 1_500_000_000),
        ("15m", 900_000_000_000),
        ("2h", 7_200_000_000_000),
    ] {
        let c = parse(with_limits(
            json!({"p": {"requests": 3, "per": per}}),
            json!([]),
        ))
        .unwrap();
        assert_eq!(c.rate_limits.unwrap().limits[0].per_ns, ns, "{per}");
    }
    let e = err(with_limits(
        json!({"p": {"requests": 3, "per": "1w"}}),
        json!([]),
    ));
    assert!(
        e.starts_with("rateLimits.policies.p.per: a duration:"),
        "{e}"
    );
    for form in ["1m30s", "1.5s", "500ms", "2h", "1d"] {
        assert!(e.contains(form), "the error lists {form}: {e}");
    }
    assert!(e.ends_with("got \"1w\""), "{e}");
}
