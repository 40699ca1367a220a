//! Every manifest under `istio/` is well-formed YAML whose kinds and fields are those Istio's
//! WasmPlugin / TrafficExtension / PeerAuthentication / ServiceEntry / DestinationRule APIs
//! define, and every `pluginConfig` is accepted by meshguard's own parser; the plugin's
//! `jwksCluster` is the cluster Istio creates for the ServiceEntry the manifests ship; the
//! WasmPlugin and the TrafficExtension configure the same plugin the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::*;
use serde_json::Value;

/// Field names per path, from the Istio API reference (extensions.istio.io/v1alpha1,
/// security.istio.io/v1, networking.istio.io/v1).
fn allowed(kind: &str, path: &str) -> Option<&'static [&'static str]> {
    Some(match (kind, path) {
        (_, "") => &["apiVersion", "kind", "metadata", "spec"],
        (_, "metadata") => &["name", "namespace", "labels", "annotations"],
        ("WasmPlugin", "spec") => &[
            "selector",
            "targetRef",
            "targetRefs",
            "url",
            "sha256",
            "imagePullPolicy",
            "imagePullSecret",
            "pluginConfig",
            "pluginName",
            "phase",
            "priority",
            "vmConfig",
            "match",
            "type",
            "failStrategy",
        ],
        ("WasmPlugin" | "TrafficExtension", "spec.match") => &["mode", "ports"],
        // istio/api extensions/v1alpha1/traffic_extension.proto (Istio 1.30+): `TrafficExtension`
        // and its `WasmConfig`.
        ("TrafficExtension", "spec") => &[
            "selector",
            "targetRefs",
            "phase",
            "priority",
            "match",
            "wasm",
            "lua",
        ],
        ("TrafficExtension", "spec.wasm") => &[
            "url",
            "sha256",
            "imagePullPolicy",
            "imagePullSecret",
            "pluginConfig",
            "pluginName",
            "failStrategy",
            "vmConfig",
            "type",
        ],
        ("PeerAuthentication", "spec") => &["selector", "mtls", "portLevelMtls"],
        ("PeerAuthentication", "spec.mtls") => &["mode"],
        ("ServiceEntry", "spec") => &[
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "workloadSelector",
            "exportTo",
            "subjectAltNames",
        ],
        ("ServiceEntry", "spec.ports") => &["number", "protocol", "name", "targetPort"],
        ("DestinationRule", "spec") => &[
            "host",
            "trafficPolicy",
            "subsets",
            "exportTo",
            "workloadSelector",
        ],
        ("DestinationRule", "spec.trafficPolicy") => &[
            "loadBalancer",
            "connectionPool",
            "outlierDetection",
            "tls",
            "portLevelSettings",
            "tunnel",
            "proxyProtocol",
        ],
        ("DestinationRule", "spec.trafficPolicy.tls") => &[
            "mode",
            "clientCertificate",
            "privateKey",
            "caCertificates",
            "credentialName",
            "subjectAltNames",
            "sni",
            "insecureSkipVerify",
            "caCrl",
        ],
        (_, "spec.selector") => &["matchLabels"],
        _ => return None,
    })
}

fn check_fields(kind: &str, path: &str, v: &Value, errors: &mut Vec<String>) {
    let Some(names) = allowed(kind, path) else {
        return;
    };
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    for item in items {
        let Some(obj) = item.as_object() else {
            continue;
        };
        for (k, child) in obj {
            if !names.contains(&k.as_str()) {
                errors.push(format!("{kind}: unknown field {path}.{k}"));
            }
            let child_path = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            check_fields(kind, &child_path, child, errors);
        }
    }
}

/// `FailStrategy` in istio/api `extensions/v1alpha1/wasm.proto`; `FAIL_RELOAD` since Istio 1.27.
const FAIL_STRATEGIES: [&str; 3] = ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"];

/// `WorkloadMode` in istio/api `type/v1beta1/selector.proto`.
const WORKLOAD_MODES: [&str; 4] = ["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"];

/// What is wrong with how a WasmPlugin is attached: it must apply to inbound traffic only
/// (without `match`, Istio also puts it on outbound listeners, where `defaultAction: deny` would
/// refuse every call the workload makes) and replace a crashed VM rather than bypass it.
fn wasm_plugin_attachment_errors(spec: &Value) -> Vec<String> {
    attachment_errors(&spec["match"], &spec["failStrategy"])
}

/// The same for a TrafficExtension, whose `failStrategy` is in `wasm`.
fn traffic_extension_attachment_errors(spec: &Value) -> Vec<String> {
    attachment_errors(&spec["match"], &spec["wasm"]["failStrategy"])
}

fn attachment_errors(selectors: &Value, fail_strategy: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    match selectors.as_array() {
        Some(selectors) if !selectors.is_empty() => {
            for (i, s) in selectors.iter().enumerate() {
                let mode = s["mode"].as_str().unwrap_or("(none: CLIENT_AND_SERVER)");
                if !WORKLOAD_MODES.contains(&mode) && s.get("mode").is_some() {
                    errors.push(format!("match[{i}].mode: unknown mode {mode}"));
                } else if mode != "SERVER" {
                    errors.push(format!("match[{i}].mode is {mode}, not SERVER"));
                }
            }
        }
        _ => errors.push("no match: applied to outbound traffic too".to_string()),
    }
    match fail_strategy.as_str() {
        Some("FAIL_RELOAD") => {}
        Some(s) if FAIL_STRATEGIES.contains(&s) => {
            errors.push(format!("failStrategy is {s}, not FAIL_RELOAD"));
        }
        other => errors.push(format!("failStrategy: not a FailStrategy: {other:?}")),
    }
    errors
}

#[test]
fn a_wasm_plugin_on_outbound_traffic_or_without_reload_would_be_caught() {
    let text = fs::read_to_string(repo().join("istio/wasmplugin.yaml")).unwrap();
    let shipped: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(
        wasm_plugin_attachment_errors(&shipped["spec"]),
        Vec::<String>::new()
    );
    let mutations: [(&str, &str, &str); 6] = [
        ("/match", "", "no match"),
        ("/match", "[]", "no match"),
        ("/match/0/mode", "\"CLIENT_AND_SERVER\"", "not SERVER"),
        (
            "/match/0",
            "{\"ports\": [{\"number\": 8080}]}",
            "not SERVER",
        ),
        ("/failStrategy", "\"FAIL_OPEN\"", "not FAIL_RELOAD"),
        ("/failStrategy", "\"FAIL_RESTART\"", "not a FailStrategy"),
    ];
    for (pointer, value, want) in mutations {
        let mut spec = shipped["spec"].clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = spec.pointer_mut(parent).unwrap();
        if value.is_empty() {
            target.as_object_mut().unwrap().remove(key);
        } else {
            let v: Value = serde_json::from_str(value).unwrap();
            match target {
                Value::Array(a) => a[key.parse::<usize>().unwrap()] = v,
                Value::Object(o) => {
                    o.insert(key.to_string(), v);
                }
                _ => unreachable!(),
            }
        }
        let errors = wasm_plugin_attachment_errors(&spec);
        assert!(
            errors.len() == 1 && errors[0].contains(want),
            "{pointer} = {value}: {errors:?}"
        );
    }
}

#[test]
fn istio_manifests_use_the_documented_api_and_valid_plugin_configs() {
    let files = Shipped::all_under("istio");
    assert!(files.len() >= 3, "{files:?}");
    let mut kinds = BTreeSet::new();
    let mut errors = Vec::new();
    let mut clusters = Vec::new();
    let mut plugin_clusters = Vec::new();
    let mut plugins = Vec::new();
    for file in &files {
        let text = fs::read_to_string(repo().join(file)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no kind"))
                .to_string();
            let api = v["apiVersion"].as_str().unwrap();
            let expected_api = match kind.as_str() {
                "WasmPlugin" | "TrafficExtension" => "extensions.istio.io/v1alpha1",
                "PeerAuthentication" => "security.istio.io/v1",
                "ServiceEntry" | "DestinationRule" => "networking.istio.io/v1",
                other => panic!("{file}: unexpected kind {other}"),
            };
            assert_eq!(api, expected_api, "{file}: {kind}");
            check_fields(&kind, "", &v, &mut errors);
            match kind.as_str() {
                "WasmPlugin" | "TrafficExtension" => {
                    assert_eq!(v["spec"]["phase"], "AUTHN");
                    let (module, attachment) = if kind == "WasmPlugin" {
                        (&v["spec"], wasm_plugin_attachment_errors(&v["spec"]))
                    } else {
                        (
                            &v["spec"]["wasm"],
                            traffic_extension_attachment_errors(&v["spec"]),
                        )
                    };
                    assert!(attachment.is_empty(), "{file}: {attachment:#?}");
                    assert!(module["url"].as_str().unwrap().starts_with("oci://"));
                    assert_eq!(module["sha256"].as_str().unwrap().len(), 64);
                    plugins.push((kind.clone(), v["spec"].clone()));
                    let config = meshguard::config::Config::from_json(
                        module["pluginConfig"].to_string().as_bytes(),
                    )
                    .unwrap_or_else(|e| panic!("{file}: pluginConfig: {e}"));
                    for p in &config.providers {
                        if let meshguard::config::KeySource::Remote(r) = &p.keys {
                            plugin_clusters.push((r.cluster.clone(), r.authority.clone()));
                        }
                    }
                }
                "PeerAuthentication" => assert_eq!(v["spec"]["mtls"]["mode"], "STRICT"),
                "ServiceEntry" => {
                    for host in v["spec"]["hosts"].as_array().unwrap() {
                        for port in v["spec"]["ports"].as_array().unwrap() {
                            clusters.push(format!(
                                "outbound|{}||{}",
                                port["number"],
                                host.as_str().unwrap()
                            ));
                        }
                    }
                }
                _ => {}
            }
            kinds.insert(kind);
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "DestinationRule",
            "PeerAuthentication",
            "ServiceEntry",
            "TrafficExtension",
            "WasmPlugin"
        ]
    );
    same_plugin_both_ways(&plugins);
    assert!(!plugin_clusters.is_empty());
    for (cluster, authority) in plugin_clusters {
        assert!(
            clusters.contains(&cluster),
            "jwksCluster {cluster} is not a ServiceEntry cluster {clusters:?}"
        );
        assert!(
            cluster.ends_with(&format!("||{authority}")),
            "{cluster} vs jwksUri host {authority}"
        );
    }
}

/// The WasmPlugin (Istio ≤ 1.29) and the TrafficExtension (1.30+) say the same thing: the same
/// workload, phase, traffic, module, failure strategy and plugin configuration.
fn same_plugin_both_ways(plugins: &[(String, Value)]) {
    let find = |k: &str| {
        let found: Vec<&Value> = plugins
            .iter()
            .filter(|(kind, _)| kind == k)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(found.len(), 1, "one {k}");
        found[0]
    };
    let (wp, te) = (find("WasmPlugin"), find("TrafficExtension"));
    for field in ["selector", "phase", "match"] {
        assert_eq!(wp[field], te[field], "{field}");
    }
    for field in [
        "url",
        "sha256",
        "imagePullPolicy",
        "failStrategy",
        "type",
        "pluginConfig",
    ] {
        assert_eq!(wp[field], te["wasm"][field], "{field}");
    }
}

#[test]
fn a_traffic_extension_on_outbound_traffic_or_without_reload_would_be_caught() {
    let text = fs::read_to_string(repo().join("istio/trafficextension.yaml")).unwrap();
    let shipped: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(
        traffic_extension_attachment_errors(&shipped["spec"]),
        Vec::<String>::new()
    );
    let mut spec = shipped["spec"].clone();
    spec["match"][0]["mode"] = Value::from("CLIENT");
    spec["wasm"]["failStrategy"] = Value::from("FAIL_OPEN");
    assert_eq!(
        traffic_extension_attachment_errors(&spec),
        [
            "match[0].mode is CLIENT, not SERVER",
            "failStrategy is FAIL_OPEN, not FAIL_RELOAD"
        ]
    );
}

#[test]
fn an_unknown_field_in_a_manifest_would_be_caught() {
    let v: Value = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "x"}, "spec": {"mtls": {"mode": "STRICT", "strict": true}}});
    let mut errors = Vec::new();
    check_fields("PeerAuthentication", "", &v, &mut errors);
    assert_eq!(
        errors,
        ["PeerAuthentication: unknown field spec.mtls.strict"]
    );
    // A WasmPlugin field written at the TrafficExtension's top level (it belongs in `wasm`).
    let v: Value = serde_json::json!({"apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "TrafficExtension", "metadata": {"name": "x"},
        "spec": {"phase": "AUTHN", "url": "oci://r/m:1", "wasm": {"url": "oci://r/m:1", "sha": "x"}}});
    let mut errors = Vec::new();
    check_fields("TrafficExtension", "", &v, &mut errors);
    assert_eq!(
        errors,
        [
            "TrafficExtension: unknown field spec.url",
            "TrafficExtension: unknown field spec.wasm.sha"
        ]
    );
}
