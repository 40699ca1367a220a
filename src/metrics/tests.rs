//! Names, labels and the `stats_tags` rules, with fixed expected strings.

use super::*;
use crate::decision::Forbidden;
use crate::jwt::TokenError;
use crate::testkit::{config_doc_providers, parse_config, TestKeys};
use serde_json::json;

fn config() -> Config {
    let jwks = TestKeys::new().jwks().to_string();
    let provider = |name: &str, iss: &str| json!({"name": name, "issuer": iss, "jwks": jwks, "audiences": ["api"]});
    parse_config(&config_doc_providers(
        vec![
            provider("idp-a", "https://a.test"),
            provider("idp-b", "https://b.test"),
        ],
        json!({
            "routes": [
                {"name": "login", "token": "none", "match": {"paths": ["/login"]}},
                {"name": "projects", "match": {"paths": ["/projects"]}}
            ],
            "rateLimits": {"identity": ["sub"], "policies": {
                "free": {"requests": 10, "per": "1m"}
            }}
        }),
    ))
    .unwrap()
}

#[test]
fn a_series_name_carries_its_labels_in_istios_encoding() {
    assert_eq!(
        stat_name(
            &REQUESTS,
            &[
                "meshguard",
                "deny",
                "invalid_token.expired",
                "401",
                "login",
                "none"
            ]
        ),
        "meshguard.plugin=.=meshguard;.;decision=.=deny;.;reason=.=invalid_token.expired;.;\
         status=.=401;.;route=.=login;.;provider=.=none;.;requests_total"
    );
    assert_eq!(
        stat_name(&JWKS_KEYS, &["saas.meshguard"]),
        "meshguard.plugin=.=saas.meshguard;.;provider=.=none;.;jwks_keys"
    );
}

#[test]
fn label_values_cannot_break_out_of_their_tag() {
    assert_eq!(label_value("routes[2]"), "routes_2_");
    assert_eq!(label_value("a;.;b=.=c"), "a_._b_._c");
    assert_eq!(label_value(""), "none");
    assert_eq!(label_value("spiffe://x/ns-1@a:b"), "spiffe://x/ns-1@a:b");
    assert_eq!(label_value(&"x".repeat(100)).len(), 64);
}

/// Envoy's tag extraction as documented (`config.metrics.v3.TagSpecifier`): every rule is
/// matched against the whole name, the first capture group is cut out of it, the second is
/// the tag's value. Then `/stats/prometheus` drops the `wasmcustom.` namespace and writes `.`
/// as `_`. (Host only: the `regex` crate is a host dev-dependency.)
#[cfg(not(target_arch = "wasm32"))]
fn envoy_prometheus(stat: &str) -> (String, Vec<(String, String)>) {
    let full = format!("wasmcustom.{stat}");
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let mut tags = Vec::new();
    for name in tag_names() {
        let re = regex::Regex::new(&tag_regex(name)).unwrap();
        if let Some(c) = re.captures(&full) {
            let (outer, value) = (c.get(1).unwrap(), c.get(2).unwrap());
            cut.push((outer.start(), outer.end()));
            tags.push((name.to_string(), value.as_str().to_string()));
        }
    }
    let kept: String = full
        .char_indices()
        .filter(|(i, _)| !cut.iter().any(|(s, e)| (*s..*e).contains(i)))
        .map(|(_, c)| c)
        .collect();
    let name = kept
        .strip_prefix("wasmcustom.")
        .unwrap()
        .replace(['.', '-'], "_");
    (name, tags)
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn the_tag_rules_turn_every_family_into_labels() {
    let (name, tags) = envoy_prometheus(&stat_name(
        &REQUESTS,
        &[
            "saas.meshguard",
            "deny",
            "invalid_token.expired",
            "401",
            "a;.;b",
            "idp-a",
        ],
    ));
    assert_eq!(name, "meshguard_requests_total");
    let want = [
        ("plugin", "saas.meshguard"),
        ("decision", "deny"),
        ("reason", "invalid_token.expired"),
        ("status", "401"),
        ("route", "a_._b"),
        ("provider", "idp-a"),
    ];
    assert_eq!(
        tags,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    let fixed = [
        "meshguard_requests_total",
        "meshguard_rate_limited_total",
        "meshguard_refused_identities_total",
        "meshguard_jwks_fetches_total",
        "meshguard_jwks_keys",
        "meshguard_jwks_age_seconds",
        "meshguard_jwks_keys_skipped_total",
        "meshguard_token_cache_total",
        "meshguard_fleet_calls_total",
        "meshguard_cas_contention_total",
        "meshguard_rate_limit_slot_shared_total",
        "meshguard_decision_time_us",
    ];
    for (family, want) in FAMILIES.iter().zip(fixed) {
        let values: Vec<&str> = family.labels.iter().map(|_| "v.1").collect();
        let (name, tags) = envoy_prometheus(&stat_name(family, &values));
        assert_eq!(name, want);
        let labels: Vec<&str> = tags.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = family.labels.to_vec();
        expected.sort_by_key(|l| LABELS.iter().position(|x| x == l));
        assert_eq!(labels, expected, "{want}");
        assert!(tags.iter().all(|(_, v)| v == "v.1"), "{want}: {tags:?}");
    }
}

#[test]
fn every_label_has_exactly_one_rule() {
    assert_eq!(
        tag_names(),
        [
            "plugin", "decision", "reason", "status", "route", "provider", "policy", "identity",
            "outcome", "result"
        ]
    );
    assert_eq!(tag_regex("route"), r"(route=\.=(.*?);\.;)");
    // No label name ends another (Istio's rule would match inside the longer one).
    for a in tag_names() {
        for b in tag_names() {
            assert!(a == b || !b.ends_with(a), "{b} ends with {a}");
        }
    }
}

#[test]
fn the_layout_counts_allowed_requests_by_route_and_provider() {
    let layout = Layout::of(&config());
    assert_eq!(layout.routes, ["login", "projects", "none"]);
    assert_eq!(layout.providers, ["idp-a", "idp-b", "none"]);
    assert_eq!(layout.policies, ["free", "none"]);
    assert_eq!(layout.allowed_count(), 9);
    let names = layout.allowed_names("mg");
    assert_eq!(
        names[layout.allowed_index(Some(1), Some(0))],
        "meshguard.plugin=.=mg;.;decision=.=allow;.;reason=.=none;.;status=.=none;.;route=.=projects;.;\
         provider=.=idp-a;.;requests_total"
    );
    assert_eq!(
        names[layout.allowed_index(None, None)],
        "meshguard.plugin=.=mg;.;decision=.=allow;.;reason=.=none;.;status=.=none;.;route=.=none;.;\
         provider=.=none;.;requests_total"
    );
    // An index past the configuration falls on `none`, never out of the table.
    assert_eq!(layout.allowed_index(Some(7), Some(9)), 8);
    let all: std::collections::BTreeSet<_> = (0..3)
        .flat_map(|r| (0..3).map(move |p| (r, p)))
        .map(|(r, p)| layout.allowed_index((r < 2).then_some(r), (p < 2).then_some(p)))
        .collect();
    assert_eq!(all, (0..9).collect());
}

#[test]
fn refusal_series_are_keyed_within_their_bound() {
    let layout = Layout::of(&config());
    assert_eq!(layout.refusal_keys(), 2 * Reason::COUNT * 9);
    let mut keys = std::collections::BTreeSet::new();
    for verdict in [Verdict::Deny, Verdict::DryRun] {
        for reason in Reason::ALL {
            for route in [Some(0), Some(1), None] {
                for provider in [Some(0), Some(1), None] {
                    let k = layout.refusal_key(verdict, reason, route, provider);
                    assert!(k < layout.refusal_keys());
                    assert!(
                        keys.insert(k),
                        "{verdict:?} {reason:?} {route:?} {provider:?}"
                    );
                }
            }
        }
    }
    assert_eq!(
        layout.refusal_name(
            "mg",
            Verdict::DryRun,
            Reason::Forbidden(Forbidden::InsufficientScope),
            Some(0),
            None
        ),
        "meshguard.plugin=.=mg;.;decision=.=dry_run;.;reason=.=insufficient_scope;.;\
         status=.=403;.;route=.=login;.;provider=.=none;.;requests_total"
    );
    assert_eq!(
        layout.refusal_name(
            "mg",
            Verdict::Deny,
            Reason::InvalidToken(TokenError::Expired),
            None,
            Some(1)
        ),
        "meshguard.plugin=.=mg;.;decision=.=deny;.;reason=.=invalid_token.expired;.;\
         status=.=401;.;route=.=none;.;provider=.=idp-b;.;requests_total"
    );
    assert_eq!(layout.policy_index(Some("free")), 0);
    assert_eq!(layout.policy_index(Some("gone")), 1);
    assert_eq!(layout.policy_index(None), 1);
}

#[test]
fn a_refusal_counts_against_the_most_specific_identity() {
    let caller = Caller {
        iss: Some("https://idp.saas.local".into()),
        sub: Some("alice".into()),
        client_id: None,
    };
    let spiffe = || Some("spiffe://cluster.local/ns/web/sa/frontend".to_string());
    let unread = || -> Option<String> { panic!("a fact read although a better one was known") };
    assert_eq!(
        refused_identity(Some(&caller), unread, unread).as_deref(),
        Some("https://idp.saas.local/alice")
    );
    let no_sub = Caller {
        sub: None,
        ..caller
    };
    assert_eq!(
        refused_identity(Some(&no_sub), spiffe, unread).as_deref(),
        Some("spiffe://cluster.local/ns/web/sa/frontend")
    );
    let address = |a: &str| {
        let a = a.to_string();
        move || Some(a)
    };
    assert_eq!(
        refused_identity(None, || None, address("127.0.0.1:41234")).as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        refused_identity(None, || None, address("[::1]:443")).as_deref(),
        Some("::1")
    );
    assert_eq!(
        refused_identity(None, || None, address("10.0.0.7")).as_deref(),
        Some("10.0.0.7")
    );
    assert_eq!(refused_identity(None, || None, || None), None);
}

#[test]
fn identity_buckets_are_the_first_sha256_byte_mod_64() {
    // Expected values from `printf %s … | sha256sum` (first byte 250, 69, 18).
    assert_eq!(identity_bucket("https://idp.saas.local/alice"), "3a");
    assert_eq!(
        identity_bucket("spiffe://cluster.local/ns/web/sa/frontend"),
        "05"
    );
    assert_eq!(identity_bucket("127.0.0.1"), "12");
    let all: Vec<String> = identity_buckets().collect();
    assert_eq!(all.len(), 64);
    assert_eq!((all[0].as_str(), all[63].as_str()), ("00", "3f"));
}

#[test]
fn one_decision_time_in_32_is_sampled() {
    let n = (0..320).filter(|i| sampled(*i)).count();
    assert_eq!(n, 10);
}

/// The README's metrics table: one row per family, its Prometheus name, type and labels.
#[test]
fn the_readme_metrics_table_matches_the_families() {
    let readme = include_str!("../../README.md");
    let rows: Vec<(String, String, String)> = readme
        .lines()
        .filter(|l| l.starts_with("| `meshguard_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_string(),
                cells[2].to_string(),
                cells[3].to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = FAMILIES
        .iter()
        .map(|f| {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let labels: Vec<String> = f.labels.iter().map(|l| format!("`{l}`")).collect();
            (
                format!("meshguard_{}", f.name),
                kind.to_string(),
                labels.join(", "),
            )
        })
        .collect();
    assert_eq!(rows, want);
    // The label-value lists of the fixed sets.
    let line = |start: &str| {
        readme
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("README has a line starting {start}"))
    };
    let listed = |l: &str| -> Vec<String> {
        l.split_once(':')
            .unwrap()
            .1
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(listed(line("- `decision`:")), ["allow", "deny", "dry_run"]);
    assert_eq!(
        listed(line("- `outcome` of `jwks_fetches_total`:")),
        fetch_outcomes().collect::<Vec<_>>()
    );
    let mut fleet = listed(line("- `outcome` of `fleet_calls_total`:"));
    fleet.sort();
    let mut want_fleet: Vec<&str> = fleet_outcomes().collect();
    want_fleet.sort();
    assert_eq!(fleet, want_fleet);
    assert_eq!(listed(line("- `result`:")), ["hit", "miss"]);
}

/// Every shipped Envoy example carries the rules, exactly as [`tag_regex`] writes them.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn the_shipped_envoy_examples_carry_the_tag_rules() {
    let examples = [
        include_str!("../../envoy/examples/standalone/envoy.yaml"),
        include_str!("../../envoy/examples/saas-api/envoy.yaml"),
        include_str!("../../envoy/examples/saas-api/envoy-fleet.yaml"),
        include_str!("../../envoy/examples/sidecar-pair/server-sidecar.yaml"),
    ];
    let want: Vec<(String, String)> = tag_names()
        .into_iter()
        .map(|t| (t.to_string(), tag_regex(t)))
        .collect();
    for text in examples {
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        let tags = yaml["stats_config"]["stats_tags"].as_sequence().unwrap();
        let got: Vec<(String, String)> = tags
            .iter()
            .map(|t| {
                (
                    t["tag_name"].as_str().unwrap().to_string(),
                    t["regex"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, want);
    }
    // Istio: the same tags through `extraStatTags`, and the names let through the stats matcher.
    let istio = include_str!("../../istio/README.md");
    let tags = tag_names().join(", ");
    assert!(
        istio.contains(&format!("extraStatTags: [{tags}]")),
        "istio/README.md names every tag: {tags}"
    );
}
