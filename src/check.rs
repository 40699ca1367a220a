//! Offline configuration check (host only): finds meshguard plugin configurations in a file and
//! parses them with the same code as the filter. Accepts a plugin configuration (JSON or YAML),
//! Istio `WasmPlugin` / `TrafficExtension` manifests (`spec.pluginConfig` / `spec.wasm.pluginConfig`, several documents allowed) and Envoy
//! bootstraps (every Wasm filter `configuration`, `StringValue` or `Struct`).

use serde_json::Value;

use crate::config::{Config, ConfigError};

/// One plugin configuration found in a file, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub location: String,
    /// The bytes Envoy would hand the plugin.
    pub bytes: Vec<u8>,
}

/// Every meshguard plugin configuration in `text`.
pub fn find_plugin_configs(text: &str) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (n, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| format!("document {n}: not YAML/JSON: {e}"))?;
        if value.is_null() {
            continue;
        }
        let at = |what: &str| format!("document {n}: {what}");
        // Istio 1.30's TrafficExtension carries it in `spec.wasm`.
        let kind = value.get("kind").and_then(Value::as_str);
        let pointer = match kind {
            Some("WasmPlugin") => Some("spec.pluginConfig"),
            Some("TrafficExtension") => Some("spec.wasm.pluginConfig"),
            _ => None,
        };
        if let (Some(kind), Some(pointer)) = (kind, pointer) {
            let config = value
                .pointer(&format!("/{}", pointer.replace('.', "/")))
                .cloned()
                .unwrap_or(Value::Null);
            let name = value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?");
            found.push(Found {
                location: at(&format!("{kind} {name} {pointer}")),
                bytes: config.to_string().into_bytes(),
            });
        } else if value.get("static_resources").is_some()
            || value.get("dynamic_resources").is_some()
        {
            envoy_configs(&value, &mut Vec::new(), &mut |path, bytes| {
                found.push(Found {
                    location: at(&format!("Envoy {path}")),
                    bytes,
                });
            })?;
        } else if value.get("providers").is_some() {
            found.push(Found {
                location: at("plugin configuration"),
                bytes: value.to_string().into_bytes(),
            });
        }
    }
    Ok(found)
}

/// Walks an Envoy config for Wasm filter `configuration` fields.
fn envoy_configs(
    v: &Value,
    path: &mut Vec<String>,
    out: &mut dyn FnMut(String, Vec<u8>),
) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(c)) = m.get("configuration") {
                let here = format!("{}.configuration", path.join("."));
                match (c.get("@type").and_then(Value::as_str), c.get("value")) {
                    (
                        Some("type.googleapis.com/google.protobuf.StringValue"),
                        Some(Value::String(s)),
                    ) => out(here, s.clone().into_bytes()),
                    (Some("type.googleapis.com/google.protobuf.Struct"), Some(v)) => {
                        out(here, v.to_string().into_bytes())
                    }
                    (t, _) => return Err(format!("{here}: unsupported configuration type {t:?}")),
                }
            }
            for (k, child) in m {
                path.push(k.clone());
                envoy_configs(child, path, out)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                envoy_configs(child, path, out)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses a found configuration like the filter does.
pub fn check(found: &Found) -> Result<Config, ConfigError> {
    Config::from_plugin_bytes(&found.bytes)
}

/// Most errors [`check_all`] reports for one configuration.
pub const MAX_ERRORS: usize = 20;

/// Like [`check`], but on an error goes on to find the next ones: the filter's parser stops at the
/// first, so the field it names is dropped and the configuration parsed again, until it parses,
/// the error names no member of an object (a whole list, an item of one, the root), the error is
/// about the member just dropped (it was required), or [`MAX_ERRORS`] were found.
pub fn check_all(found: &Found) -> Result<Config, Vec<ConfigError>> {
    let first = match check(found) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    let mut errors = vec![first];
    let Ok(mut value) = serde_json::from_slice::<Value>(&found.bytes) else {
        return Err(errors);
    };
    while errors.len() < MAX_ERRORS {
        let Some(last) = errors.last() else { break };
        if last.message == crate::jwt::json::DUPLICATE {
            break; // the document as read kept one of the two: parsing it again would mislead
        }
        let Some(dropped) = remove_member(&mut value, &last.path) else {
            break;
        };
        match Config::from_json(value.to_string().as_bytes()) {
            Ok(_) => break,
            Err(e) if e.message == format!("missing field `{dropped}`") || errors.contains(&e) => {
                break
            }
            Err(e) => errors.push(e),
        }
    }
    Err(errors)
}

/// Removes the object member at `path` (`providers[0].dpop.mode`); its name, or `None` when the
/// path does not end at an object member that exists.
fn remove_member(value: &mut Value, path: &str) -> Option<String> {
    let mut node = value;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, indexes) = match segment.find('[') {
            Some(i) => segment.split_at(i),
            None => (segment, ""),
        };
        let last = segments.peek().is_none();
        if last && indexes.is_empty() {
            return node.as_object_mut()?.remove(name).map(|_| name.to_string());
        }
        node = node.get_mut(name)?;
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            node = node.get_mut(index.parse::<usize>().ok()?)?;
        }
        if last {
            return None; // a list item: dropping it would renumber the others
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_configs_in_manifests_bootstraps_and_plain_files() {
        let manifests = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: guard}
spec:
  pluginConfig:
    providers: [{issuer: "https://i", jwksUri: "https://i/k", jwksCluster: "c"}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
---
apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata: {name: guard2}
spec:
  wasm:
    pluginConfig:
      providers: [{issuer: "https://i", jwksUri: "https://i/k", jwksCluster: "c", bogus: 1}]
"#;
        let found = find_plugin_configs(manifests).unwrap();
        assert_eq!(found.len(), 2);
        assert!(found[0]
            .location
            .contains("WasmPlugin guard spec.pluginConfig"));
        assert!(check(&found[0]).is_ok());
        assert_eq!(
            found[1].location,
            "document 2: TrafficExtension guard2 spec.wasm.pluginConfig"
        );
        assert!(check(&found[1]).is_err());
        let plain = find_plugin_configs(r#"{"providers": [{"issuer": "i", "jwksUri": "https://i/k", "jwksCluster": "c", "bogus": 1}]}"#).unwrap();
        assert_eq!(
            check(&plain[0]).unwrap_err().to_string().split(',').next(),
            Some("providers[0].bogus: unknown field `bogus`")
        );
        let envoy = r#"
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - typed_config:
          http_filters:
          - typed_config:
              config:
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"providers": []}'
"#;
        let found = find_plugin_configs(envoy).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            check(&found[0]).unwrap_err().to_string(),
            "providers: at least one provider is required"
        );
    }

    #[test]
    fn every_error_of_a_configuration_is_reported() {
        // Three mistakes of a user coming from Istio, reported together.
        let found = find_plugin_configs(
            r#"{"providers": [{"issuer": "https://i", "jwksUri": "https://i/k",
                "jwksCluster": "c", "timeout": "5s", "clockSkewSeconds": "60"}],
                "rules": [], "defaultAction": "deny"}"#,
        )
        .unwrap();
        let errors = check_all(&found[0]).unwrap_err();
        // In the order the parser meets them: object members sorted by name.
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "providers[0].clockSkewSeconds",
                "providers[0].timeout",
                "rules"
            ]
        );
        assert_eq!(
            errors[0].message,
            "invalid type: string \"60\", expected a whole number ≥ 0"
        );
        assert!(errors[1]
            .message
            .starts_with("unknown field `timeout`, expected one of `name`, `issuer`"));
        assert!(errors[1].message.ends_with("; did you mean `jwksTimeoutMs`? (Istio's `timeout` is a duration such as \"5s\"; jwksTimeoutMs is in milliseconds: 5000)"));
        assert!(errors[2]
            .message
            .ends_with("; did you mean `routes`? (Istio AuthorizationPolicy `rules`: `to.operation` becomes a route's `match`, `from` and `when` its `require`)"));
        // The first error is the one the filter itself reports.
        assert_eq!(check(&found[0]).unwrap_err(), errors[0]);
    }

    #[test]
    fn the_search_stops_at_a_required_field_and_at_list_items() {
        let long = "x".repeat(1100);
        let text = format!(
            r#"{{"providers": [{{"issuer": "{long}", "jwksUri": "https://i/k", "jwksCluster": "c"}}]}}"#
        );
        let errors = check_all(&find_plugin_configs(&text).unwrap()[0]).unwrap_err();
        assert_eq!(
            errors,
            [ConfigError {
                path: "providers[0].issuer".into(),
                message: "must be at most 1024 bytes".into()
            }]
        );
        let errors = check_all(
            &find_plugin_configs(r#"{"providers": [{"issuer": "i", "jwksUri": "https://i/k", "jwksCluster": "c", "algorithms": ["HS256", "none"]}]}"#).unwrap()[0],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "providers[0].algorithms[0]");
    }

    #[test]
    fn a_valid_configuration_has_no_errors() {
        let found = find_plugin_configs(
            r#"{"providers": [{"issuer": "https://i", "jwksUri": "https://i/k", "jwksCluster": "c"}]}"#,
        )
        .unwrap();
        assert_eq!(check_all(&found[0]).unwrap().providers.len(), 1);
    }

    #[test]
    fn a_provider_with_dpop_is_checked_by_the_same_parser() {
        let manifest = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: guard}
spec:
  pluginConfig:
    providers:
    - issuer: "https://i"
      jwksUri: "https://i/k"
      jwksCluster: "c"
      dpop: {mode: required, publicOrigins: ["https://api.example.com"], requireNonce: true}
"#;
        let found = find_plugin_configs(manifest).unwrap();
        let config = check(&found[0]).unwrap();
        let dpop = config.dpop(0).unwrap();
        assert_eq!(dpop.mode, crate::dpop::Mode::Required);
        assert!(dpop.require_nonce);
        let bad = find_plugin_configs(
            r#"{"providers": [{"issuer": "i", "jwksUri": "https://i/k", "jwksCluster": "c",
                "dpop": {"mode": "allowed", "proofMaxAgeSeconds": 900}}]}"#,
        )
        .unwrap();
        assert_eq!(
            check(&bad[0]).unwrap_err().to_string(),
            "providers[0].dpop.proofMaxAgeSeconds: must be between 1 and 600 seconds"
        );
    }
}
