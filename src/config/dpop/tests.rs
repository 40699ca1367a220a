//! The `dpop` object of a provider: defaults, each bound, unknown and repeated members, and the
//! rules that tie it to the provider's token sources.

use serde_json::{json, Value};

use crate::config::tests::{err, jwks, parse, with_provider};
use crate::dpop::{Config as DpopConfig, Mode};
use crate::jwt::Algorithm;

fn with_dpop(dpop: Value) -> Value {
    with_provider(json!({ "dpop": dpop }))
}

fn dpop_of(v: Value) -> Option<DpopConfig> {
    parse(v).unwrap().dpop(0).cloned()
}

fn origins_of(v: Value) -> Vec<String> {
    dpop_of(v)
        .unwrap()
        .public_origins
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn absent_or_off_means_no_dpop() {
    assert_eq!(dpop_of(with_provider(json!({}))), None);
    assert_eq!(dpop_of(with_dpop(json!({"mode": "off"}))), None);
    // Off still checks every member: a typo does not wait for the day the mode changes.
    assert_eq!(
        err(with_dpop(json!({"mode": "off", "proofMaxAgeSeconds": 0}))),
        "providers[0].dpop.proofMaxAgeSeconds: must be between 1 and 600 seconds"
    );
    // Off puts no constraint on the token sources.
    let off_with_params = with_provider(json!({
        "dpop": {"mode": "off"},
        "fromHeaders": [{"name": "x-token"}],
        "fromParams": ["access_token"],
    }));
    assert_eq!(dpop_of(off_with_params), None);
}

#[test]
fn every_key_has_its_documented_default() {
    let c = dpop_of(with_dpop(json!({"mode": "allowed"}))).unwrap();
    assert_eq!(c.mode, Mode::Allowed);
    assert_eq!(c.algorithms, vec![Algorithm::ES256, Algorithm::RS256]);
    assert_eq!(c.proof_max_age_seconds, 60);
    assert_eq!(c.clock_skew_seconds, 5);
    assert!(c.public_origins.is_empty());
    assert!(!c.trust_forwarded_headers);
    assert!(!c.require_nonce);
    assert_eq!(c.nonce_step_seconds, 60);
    assert_eq!(c.replay_shards, 256);
    assert_eq!(c.replay_shard_entries, 64);
    assert_eq!(c.max_proof_bytes, 4096);
    assert!(!c.forward_proof);
    let required = dpop_of(with_dpop(json!({"mode": "required"}))).unwrap();
    assert_eq!(required.mode, Mode::Required);
}

#[test]
fn every_key_maps_onto_the_dpop_config() {
    let c = dpop_of(with_dpop(json!({
        "mode": "required",
        "algorithms": ["EdDSA", "PS256", "EdDSA"],
        "proofMaxAgeSeconds": 30,
        "clockSkewSeconds": 2,
        "publicOrigins": ["https://api.example.com"],
        "trustForwardedHeaders": true,
        "requireNonce": true,
        "nonceStepSeconds": 120,
        "replayShards": 1024,
        "replayShardEntries": 32,
        "maxProofBytes": 8192,
        "forwardProof": true,
    })))
    .unwrap();
    assert_eq!(
        c,
        DpopConfig {
            mode: Mode::Required,
            algorithms: vec![Algorithm::EdDSA, Algorithm::PS256],
            proof_max_age_seconds: 30,
            clock_skew_seconds: 2,
            public_origins: vec![
                crate::dpop::htu::Origin::parse("https://api.example.com").unwrap()
            ],
            trust_forwarded_headers: true,
            require_nonce: true,
            nonce_step_seconds: 120,
            replay_shards: 1024,
            replay_shard_entries: 32,
            max_proof_bytes: 8192,
            forward_proof: true,
        }
    );
}

#[test]
fn each_bound_is_refused_in_plain_words_and_its_limits_accepted() {
    let refused = [
        (
            json!({"proofMaxAgeSeconds": 0}),
            "providers[0].dpop.proofMaxAgeSeconds: must be between 1 and 600 seconds",
        ),
        (
            json!({"proofMaxAgeSeconds": 601}),
            "providers[0].dpop.proofMaxAgeSeconds: must be between 1 and 600 seconds",
        ),
        (
            json!({"clockSkewSeconds": 61}),
            "providers[0].dpop.clockSkewSeconds: must be between 0 and 60 seconds",
        ),
        (
            json!({"requireNonce": true, "nonceStepSeconds": 9}),
            "providers[0].dpop.nonceStepSeconds: must be between 10 and 3600 seconds",
        ),
        (
            json!({"requireNonce": true, "nonceStepSeconds": 3601}),
            "providers[0].dpop.nonceStepSeconds: must be between 10 and 3600 seconds",
        ),
        (
            json!({"replayShards": 0}),
            "providers[0].dpop.replayShards: must be between 1 and 4096 shards (one shared-data key each)",
        ),
        (
            json!({"replayShards": 4097}),
            "providers[0].dpop.replayShards: must be between 1 and 4096 shards (one shared-data key each)",
        ),
        (
            json!({"replayShardEntries": 0}),
            "providers[0].dpop.replayShardEntries: must be between 1 and 256 entries (12 bytes each: a shard is read whole for every proof)",
        ),
        (
            json!({"replayShardEntries": 257}),
            "providers[0].dpop.replayShardEntries: must be between 1 and 256 entries (12 bytes each: a shard is read whole for every proof)",
        ),
        (
            json!({"maxProofBytes": 511}),
            "providers[0].dpop.maxProofBytes: must be between 512 and 16384 bytes",
        ),
        (
            json!({"maxProofBytes": 16385}),
            "providers[0].dpop.maxProofBytes: must be between 512 and 16384 bytes",
        ),
    ];
    for (extra, want) in refused {
        let mut dpop = json!({"mode": "allowed"});
        dpop.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert_eq!(err(with_dpop(dpop)), want);
    }
    let lowest = dpop_of(with_dpop(json!({
        "mode": "allowed", "proofMaxAgeSeconds": 1, "clockSkewSeconds": 0, "requireNonce": true,
        "nonceStepSeconds": 10, "replayShards": 1, "replayShardEntries": 1, "maxProofBytes": 512,
    })))
    .unwrap();
    assert_eq!(
        (
            lowest.proof_max_age_seconds,
            lowest.clock_skew_seconds,
            lowest.nonce_step_seconds,
            lowest.replay_shards,
            lowest.replay_shard_entries,
            lowest.max_proof_bytes
        ),
        (1, 0, 10, 1, 1, 512)
    );
    let highest = dpop_of(with_dpop(json!({
        "mode": "allowed", "proofMaxAgeSeconds": 600, "clockSkewSeconds": 60, "requireNonce": true,
        "nonceStepSeconds": 3600, "replayShards": 4096, "replayShardEntries": 256,
        "maxProofBytes": 16384,
    })))
    .unwrap();
    assert_eq!(
        (
            highest.proof_max_age_seconds,
            highest.clock_skew_seconds,
            highest.nonce_step_seconds,
            highest.replay_shards,
            highest.replay_shard_entries,
            highest.max_proof_bytes
        ),
        (600, 60, 3600, 4096, 256, 16384)
    );
}

#[test]
fn only_asymmetric_algorithms_can_be_named() {
    assert_eq!(
        err(with_dpop(json!({"mode": "allowed", "algorithms": []}))),
        "providers[0].dpop.algorithms: must list at least one algorithm"
    );
    for (k, alg) in ["HS256", "none", "ES512"].into_iter().enumerate() {
        let mut list = vec!["ES256"; k];
        list.push(alg);
        assert_eq!(
            err(with_dpop(json!({"mode": "allowed", "algorithms": list}))),
            format!(
                "providers[0].dpop.algorithms[{k}]: unsupported algorithm \"{alg}\", expected \
                 one of: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
            )
        );
    }
}

#[test]
fn mode_is_required_and_spelled_out() {
    assert_eq!(
        err(with_dpop(json!({}))),
        "providers[0].dpop: missing field `mode`"
    );
    assert_eq!(
        err(with_dpop(json!({"mode": "on"}))),
        "providers[0].dpop.mode: unknown variant `on`, expected one of `off`, `allowed`, `required`"
    );
    assert!(err(with_dpop(json!({"mode": true})))
        .starts_with("providers[0].dpop.mode: invalid type: boolean `true`"));
    assert!(err(with_provider(json!({"dpop": true})))
        .starts_with("providers[0].dpop: invalid type: boolean `true`"));
}

#[test]
fn unknown_members_are_named_with_their_path() {
    let e = err(with_dpop(json!({"mode": "allowed", "proofMaxAge": 60})));
    assert!(
        e.starts_with(
            "providers[0].dpop.proofMaxAge: unknown field `proofMaxAge`, expected one of"
        ),
        "{e}"
    );
    let e = err(with_dpop(json!({"mode": "allowed", "nonce": true})));
    assert!(
        e.starts_with("providers[0].dpop.nonce: unknown field `nonce`"),
        "{e}"
    );
}

#[test]
fn a_member_given_twice_is_refused_with_its_path() {
    let text = |dpop: &str| {
        format!(
            r#"{{"providers": [{{"issuer": "https://idp", "jwks": {}, "dpop": {dpop}}}]}}"#,
            serde_json::to_string(&jwks().to_string()).unwrap()
        )
    };
    let twice = text(r#"{"mode": "allowed", "proofMaxAgeSeconds": 30, "proofMaxAgeSeconds": 60}"#);
    assert_eq!(
        crate::config::Config::from_json(twice.as_bytes())
            .unwrap_err()
            .to_string(),
        "providers[0].dpop.proofMaxAgeSeconds: duplicate field"
    );
    let once = text(r#"{"mode": "allowed", "proofMaxAgeSeconds": 30}"#);
    let c = crate::config::Config::from_json(once.as_bytes()).unwrap();
    assert_eq!(c.dpop(0).unwrap().proof_max_age_seconds, 30);
}

#[test]
fn public_origins_are_origins_kept_normalised() {
    let origins = json!({"mode": "allowed", "publicOrigins": [
        "https://API.Example.com:443/",
        "http://api.example.com:8080",
        "https://[::1]:8443",
        "http://edge.example.com.",
    ]});
    assert_eq!(
        origins_of(with_dpop(origins)),
        vec![
            "https://api.example.com",
            "http://api.example.com:8080",
            "https://[::1]:8443",
            "http://edge.example.com",
        ]
    );
    let refused = [
        (
            "https://api.example.com/v1",
            "must be an origin, http(s)://host[:port], without path or query",
        ),
        (
            "https://api.example.com?x=1",
            "must be an origin, http(s)://host[:port], without path or query",
        ),
        (
            "https://api.example.com/#top",
            "must not have a fragment (#)",
        ),
        (
            "https://user@api.example.com",
            "must not carry userinfo (user@host)",
        ),
        (
            "ftp://api.example.com",
            "must be an absolute http:// or https:// URI",
        ),
        (
            "api.example.com",
            "must be an absolute http:// or https:// URI",
        ),
        (
            "https://api.example.com:0",
            "the port must be between 1 and 65535",
        ),
        ("https://a..b", "is not a valid origin: bad host"),
    ];
    for (origin, want) in refused {
        assert_eq!(
            err(with_dpop(
                json!({"mode": "allowed", "publicOrigins": ["https://ok.example.com", origin]})
            )),
            format!("providers[0].dpop.publicOrigins[1]: {want}"),
            "{origin}"
        );
    }
    assert_eq!(
        err(with_dpop(json!({"mode": "allowed", "publicOrigins": [
            "https://api.example.com", "https://API.example.com:443"
        ]}))),
        "providers[0].dpop.publicOrigins[1]: the same origin as publicOrigins[0] (https://api.example.com)"
    );
    let sixteen: Vec<String> = (0..16)
        .map(|k| format!("https://h{k}.example.com"))
        .collect();
    assert_eq!(
        origins_of(with_dpop(
            json!({"mode": "allowed", "publicOrigins": sixteen})
        ))
        .len(),
        16
    );
    // With forwarded headers trusted, the forwarded origin is the sixteenth candidate.
    let fifteen: Vec<String> = (0..15)
        .map(|k| format!("https://h{k}.example.com"))
        .collect();
    let c = dpop_of(with_dpop(
        json!({"mode": "allowed", "publicOrigins": fifteen,
        "trustForwardedHeaders": true}),
    ));
    assert_eq!(c.unwrap().public_origins.len(), 15);
    assert_eq!(
        err(with_dpop(
            json!({"mode": "allowed", "publicOrigins": sixteen,
            "trustForwardedHeaders": true})
        )),
        "providers[0].dpop.publicOrigins: at most 15 origins with trustForwardedHeaders: true \
         (the forwarded origin is one more of the 16 a request is compared with)"
    );
    let seventeen: Vec<String> = (0..17)
        .map(|k| format!("https://h{k}.example.com"))
        .collect();
    assert_eq!(
        err(with_dpop(
            json!({"mode": "allowed", "publicOrigins": seventeen})
        )),
        "providers[0].dpop.publicOrigins: at most 16 origins"
    );
}

#[test]
fn nonce_step_is_only_accepted_with_required_nonces() {
    assert_eq!(
        err(with_dpop(
            json!({"mode": "allowed", "nonceStepSeconds": 60})
        )),
        "providers[0].dpop.nonceStepSeconds: only allowed together with requireNonce: true"
    );
    assert_eq!(
        err(with_dpop(
            json!({"mode": "allowed", "requireNonce": false, "nonceStepSeconds": 60})
        )),
        "providers[0].dpop.nonceStepSeconds: only allowed together with requireNonce: true"
    );
    let c = dpop_of(with_dpop(
        json!({"mode": "allowed", "requireNonce": true, "nonceStepSeconds": 30}),
    ))
    .unwrap();
    assert_eq!((c.require_nonce, c.nonce_step_seconds), (true, 30));
}

#[test]
fn a_dpop_mode_needs_the_authorization_header() {
    for mode in ["allowed", "required"] {
        assert_eq!(
            err(with_provider(json!({
                "dpop": {"mode": mode},
                "fromHeaders": [{"name": "x-token"}],
            }))),
            format!(
                "providers[0].fromHeaders: must include authorization when dpop.mode is \
                 \"{mode}\": a DPoP-bound token is sent as Authorization: DPoP <token> \
                 (RFC 9449 §7.1)"
            )
        );
    }
    // Any prefix: the DPoP scheme is recognised on the header, whatever the bearer prefix is.
    let c = dpop_of(with_provider(json!({
        "dpop": {"mode": "required"},
        "fromHeaders": [{"name": "x-token"}, {"name": "Authorization", "prefix": "Bearer "}],
    })));
    assert_eq!(c.unwrap().mode, Mode::Required);
}

#[test]
fn required_mode_refuses_query_parameter_tokens() {
    assert_eq!(
        err(with_provider(json!({
            "dpop": {"mode": "required"},
            "fromParams": ["access_token"],
        }))),
        "providers[0].fromParams: must be empty when dpop.mode is \"required\": a DPoP-bound \
         token is sent as Authorization: DPoP <token> (RFC 9449 §7.1)"
    );
    // Allowed keeps bearer tokens, wherever they are configured to be found.
    let c = dpop_of(with_provider(json!({
        "dpop": {"mode": "allowed"},
        "fromParams": ["access_token"],
    })));
    assert_eq!(c.unwrap().mode, Mode::Allowed);
}

#[test]
fn each_provider_has_its_own_dpop_settings() {
    let c = parse(json!({"providers": [
        {"issuer": "https://a", "jwks": jwks(), "dpop": {"mode": "required", "proofMaxAgeSeconds": 20}},
        {"issuer": "https://b", "jwks": jwks()},
        {"issuer": "https://c", "jwks": jwks(), "dpop": {"mode": "allowed"}},
    ]}))
    .unwrap();
    let modes: Vec<Option<(Mode, u64)>> = c
        .dpop
        .iter()
        .map(|d| d.as_ref().map(|d| (d.mode, d.proof_max_age_seconds)))
        .collect();
    assert_eq!(
        modes,
        vec![Some((Mode::Required, 20)), None, Some((Mode::Allowed, 60))]
    );
    assert_eq!(
        err(json!({"providers": [
            {"issuer": "https://a", "jwks": jwks()},
            {"issuer": "https://b", "jwks": jwks(), "dpop": {"mode": "allowed", "forwardProof": 1}},
        ]}))
        .split(',')
        .next(),
        Some("providers[1].dpop.forwardProof: invalid type: integer `1`")
    );
}

/// The rows of the README's DPoP table: (field, default column).
fn readme_dpop_rows() -> Vec<(String, String)> {
    crate::config::readme_tables::readme_table("### DPoP (RFC 9449)")
        .into_iter()
        .map(|r| (r.field, r.default))
        .collect()
}

#[test]
fn the_readme_documents_every_member_with_its_default_and_bounds() {
    // The members the parser knows, from its own error listing them.
    let e = err(with_dpop(json!({"mode": "allowed", "x": 1})));
    let listed = e.split("expected one of ").nth(1).unwrap();
    let mut known: Vec<String> = listed
        .split(", ")
        .map(|f| f.trim_matches('`').to_string())
        .collect();
    let rows = readme_dpop_rows();
    let mut documented: Vec<String> = rows.iter().map(|(f, _)| f.clone()).collect();
    known.sort();
    documented.sort();
    assert_eq!(documented, known);
    assert!(include_str!("../../../README.md").contains("| `dpop` | object | absent (off) |"));

    // Each integer row's default and range, as written ("`60` (1–600)"), against the parser.
    let defaults = dpop_of(with_dpop(json!({"mode": "allowed"}))).unwrap();
    let mut checked = 0;
    for (field, default) in rows {
        let Some((value, range)) = default.split_once(" (") else {
            continue;
        };
        let Ok(value) = value.trim_matches('`').parse::<u64>() else {
            continue;
        };
        let (min, max) = range.trim_end_matches(')').split_once('–').unwrap();
        let (min, max): (u64, u64) = (min.parse().unwrap(), max.parse().unwrap());
        let actual = match field.as_str() {
            "proofMaxAgeSeconds" => defaults.proof_max_age_seconds,
            "clockSkewSeconds" => defaults.clock_skew_seconds,
            "nonceStepSeconds" => defaults.nonce_step_seconds,
            "replayShards" => u64::from(defaults.replay_shards),
            "replayShardEntries" => u64::from(defaults.replay_shard_entries),
            "maxProofBytes" => defaults.max_proof_bytes as u64,
            other => panic!("an integer row the test does not know: {other}"),
        };
        assert_eq!(actual, value, "{field}");
        let at =
            |n: u64| with_dpop(json!({"mode": "allowed", "requireNonce": true, field.clone(): n}));
        assert!(parse(at(min)).is_ok() && parse(at(max)).is_ok(), "{field}");
        assert!(parse(at(max + 1)).is_err(), "{field}");
        if min > 0 {
            assert!(parse(at(min - 1)).is_err(), "{field}");
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}
