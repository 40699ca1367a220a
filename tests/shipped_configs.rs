//! Every Envoy YAML shipped under `envoy/` is accepted by `envoy --mode validate`, and every
//! meshguard plugin configuration inside it is accepted by meshguard's own parser. The sidecar
//! pair's `docker-compose.yaml` (not runnable here: no Docker engine) is checked for what would
//! break it: the official Envoy image of the version we test, and every file an Envoy config
//! names mounted where that Envoy looks for it, from where `make demo` / `make build` put it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use meshguard::ratelimit::fleet::EntryValue;
use serde_yaml_ng::Value as Y;

/// Whether an Envoy YAML loads a wasm filter at all (a client-side sidecar does not).
fn has_wasm_filter(shipped: &Shipped) -> bool {
    fs::read_to_string(&shipped.path)
        .unwrap()
        .contains("envoy.extensions.filters.http.wasm.v3.Wasm")
}

/// Every Wasm filter's `PluginConfig` in an Envoy YAML, with the path where it was found.
fn wasm_plugin_configs<'a>(v: &'a Y, path: &str, out: &mut Vec<(String, &'a Y)>) {
    match v {
        Y::Mapping(m) => {
            if m.get("@type").and_then(Y::as_str)
                == Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
            {
                out.push((path.to_string(), &v["config"]));
            }
            for (k, child) in m {
                let key = k.as_str().unwrap_or("?");
                wasm_plugin_configs(child, &format!("{path}.{key}"), out);
            }
        }
        Y::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                wasm_plugin_configs(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What is wrong with the Wasm filters' failure handling in an Envoy YAML: each must reload a
/// crashed VM (`failure_policy: FAIL_RELOAD`, with a reload backoff) and none may use the
/// deprecated `fail_open` (whose `true` lets every request through a dead VM).
fn failure_policy_errors(yaml: &Y) -> Vec<String> {
    let mut configs = Vec::new();
    wasm_plugin_configs(yaml, "", &mut configs);
    let mut errors = Vec::new();
    for (path, config) in configs {
        if config.get("fail_open").is_some() {
            errors.push(format!("{path}: uses the deprecated fail_open"));
        }
        if config["failure_policy"].as_str() != Some("FAIL_RELOAD") {
            errors.push(format!(
                "{path}: failure_policy is {:?}, not FAIL_RELOAD",
                config["failure_policy"]
            ));
        }
        if config["reload_config"]["backoff"]["base_interval"]
            .as_str()
            .is_none()
        {
            errors.push(format!("{path}: no reload_config.backoff.base_interval"));
        }
    }
    errors
}

#[test]
fn every_shipped_wasm_filter_reloads_a_crashed_vm_and_never_fails_open() {
    let mut filters = 0;
    for file in Shipped::all_under("envoy") {
        let shipped = Shipped::load(&file);
        let mut configs = Vec::new();
        wasm_plugin_configs(&shipped.yaml, "", &mut configs);
        filters += configs.len();
        let errors = failure_policy_errors(&shipped.yaml);
        assert!(errors.is_empty(), "{file}: {errors:#?}");
    }
    assert!(filters >= 3, "standalone, saas-api and the server sidecar");
}

#[test]
fn a_fail_open_or_fail_closed_wasm_filter_would_be_caught() {
    // The check above must be able to fail: the standalone example, mutated.
    let text = fs::read_to_string(repo().join("envoy/examples/standalone/envoy.yaml")).unwrap();
    assert!(failure_policy_errors(&serde_yaml_ng::from_str(&text).unwrap()).is_empty());
    for (from, to, want) in [
        (
            "failure_policy: FAIL_RELOAD",
            "failure_policy: FAIL_CLOSED",
            "not FAIL_RELOAD",
        ),
        (
            "failure_policy: FAIL_RELOAD",
            "fail_open: false",
            "deprecated fail_open",
        ),
        (
            "failure_policy: FAIL_RELOAD",
            "failure_policy: FAIL_RELOAD\n                fail_open: true",
            "deprecated fail_open",
        ),
        (
            "reload_config:",
            "unused_reload_config:",
            "no reload_config",
        ),
    ] {
        assert!(text.contains(from));
        let mutated: Y = serde_yaml_ng::from_str(&text.replacen(from, to, 1)).unwrap();
        let errors = failure_policy_errors(&mutated);
        assert!(errors.iter().any(|e| e.contains(want)), "{to}: {errors:?}");
    }
}

#[test]
fn shipped_envoy_configs_validate_and_their_plugin_configs_parse() {
    let files = Shipped::all_under("envoy");
    assert!(!files.is_empty(), "no Envoy YAML found under envoy/");
    let mut total = 0;
    for file in &files {
        let shipped = Shipped::load(file);
        let configs = shipped.plugin_configs();
        assert_eq!(
            configs.is_empty(),
            !has_wasm_filter(&shipped),
            "{file}: every wasm filter must carry a meshguard plugin configuration"
        );
        for bytes in &configs {
            if let Err(e) = meshguard::config::Config::from_plugin_bytes(bytes) {
                panic!("{file}: plugin configuration refused: {e}");
            }
        }
        total += configs.len();
        let (dir, _pki) = example_dir("validate");
        let cfg = dir.join("envoy.yaml");
        fs::write(&cfg, shipped.runnable(&dir, &HashMap::new())).unwrap();
        let (ok, out) = Envoy::validate(&cfg);
        assert!(ok, "{file}: envoy --mode validate failed:\n{out}");
        eprintln!("{file}: valid ({} plugin configuration(s))", configs.len());
    }
    assert!(total >= 3, "standalone, saas-api and the server sidecar");
}

#[test]
fn a_broken_plugin_config_in_a_shipped_file_would_be_caught() {
    // The check above must be able to fail: the same file with a typo is refused by our parser.
    let shipped = Shipped::load("envoy/examples/standalone/envoy.yaml");
    let text = String::from_utf8(shipped.plugin_configs()[0].clone()).unwrap();
    let typo = text.replace("\"audiences\"", "\"audience\"");
    let err = meshguard::config::Config::from_plugin_bytes(typo.as_bytes()).unwrap_err();
    assert_eq!(err.path, "providers[0].audience");
}

/// `a/b/../c` → `a/c` (no file system access: the sources may not exist yet).
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Every relative `filename` in an Envoy YAML.
fn relative_filenames(v: &Y, out: &mut Vec<String>) {
    match v {
        Y::Mapping(m) => {
            for (k, val) in m {
                match (k.as_str(), val) {
                    (Some("filename"), Y::String(f)) if !f.starts_with('/') => out.push(f.clone()),
                    _ => relative_filenames(val, out),
                }
            }
        }
        Y::Sequence(s) => s.iter().for_each(|x| relative_filenames(x, out)),
        _ => {}
    }
}

#[test]
fn the_sidecar_pair_compose_file_mounts_what_its_envoys_read() {
    let example = repo().join("envoy/examples/sidecar-pair");
    let text = fs::read_to_string(example.join("docker-compose.yaml")).unwrap();
    let mut compose: Y = serde_yaml_ng::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();

    let version = Command::new(envoy_bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    // "…/envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let tested = version
        .split("version: ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .unwrap_or_else(|| panic!("envoy --version: {version}"));
    let envoy_image = format!("envoyproxy/envoy:v{tested}");

    // Where each host path comes from: files in the repository, or what `make build` and
    // `make demo` write.
    let produced = [
        repo().join("target/wasm32-wasip1/release/meshguard.wasm"),
        repo().join("target/meshguard-demo/pki"),
        repo().join("target/meshguard-demo/idp"),
    ];
    let mut envoys = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let image = svc["image"].as_str().unwrap();
        assert_eq!(svc["network_mode"], "host", "{name}: configs use 127.0.0.1");
        for dep in svc["depends_on"].as_sequence().into_iter().flatten() {
            assert!(
                services.contains_key(dep),
                "{name}: depends on unknown {dep:?}"
            );
        }
        let mounts: Vec<(PathBuf, PathBuf)> = svc["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|v| {
                let mut parts = v.as_str().unwrap().split(':');
                let host = normalise(&example.join(parts.next().unwrap()));
                let inside = PathBuf::from(parts.next().unwrap());
                assert!(
                    host.exists() && host.starts_with(&example) || produced.contains(&host),
                    "{name}: mounts {} that neither the repository nor make build/demo provide",
                    host.display()
                );
                (host, inside)
            })
            .collect();
        if !image.starts_with("envoyproxy/envoy") {
            assert!(
                image.starts_with("python:3"),
                "{name}: official images only"
            );
            continue;
        }
        envoys += 1;
        assert_eq!(
            image, envoy_image,
            "{name}: the Envoy version make test runs"
        );
        let args: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let config = args[args.iter().position(|a| *a == "-c").unwrap() + 1];
        let (config_host, _) = mounts
            .iter()
            .find(|(_, inside)| inside == Path::new(config))
            .unwrap_or_else(|| panic!("{name}: {config} is not mounted"));
        assert!(
            Shipped::all_under("envoy/examples/sidecar-pair")
                .iter()
                .any(|f| repo().join(f) == *config_host),
            "{name}: runs {} which is not a shipped sidecar-pair config",
            config_host.display()
        );
        let workdir = PathBuf::from(svc["working_dir"].as_str().unwrap());
        let envoy_yaml: Y =
            serde_yaml_ng::from_str(&fs::read_to_string(config_host).unwrap()).unwrap();
        let mut files = Vec::new();
        relative_filenames(&envoy_yaml, &mut files);
        assert!(!files.is_empty());
        for f in files {
            let wanted = workdir.join(&f);
            let mount = mounts.iter().find(|(_, inside)| wanted.starts_with(inside));
            let (host, inside) =
                mount.unwrap_or_else(|| panic!("{name}: {f} is not mounted under {workdir:?}"));
            let source = host.join(wanted.strip_prefix(inside).unwrap());
            // The demo runs these configs from target/meshguard-demo with the same layout.
            let demo_equivalent = repo().join("target/meshguard-demo").join(&f);
            assert!(
                source == demo_equivalent || f == "meshguard.wasm" && host == &produced[0],
                "{name}: {f} would come from {}",
                source.display()
            );
        }
    }
    assert_eq!(envoys, 2, "both sidecars");
}

#[test]
fn the_compose_workload_echoes_what_it_received() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("python3")
        .arg(repo().join("envoy/examples/sidecar-pair/echo.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::plain(port);
    let mut answer = None;
    eventually("echo.py listening", Duration::from_secs(20), || {
        answer = client
            .try_request("POST", "/projects?x=1", &[("x-user", b"ada")])
            .ok();
        answer.is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    let r = answer.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(r.json()["path"], "/projects?x=1");
    assert_eq!(r.upstream_header("x-user").as_deref(), Some("ada"));
}

/// The saas-api fleet example's three files agree: every fleet policy of `envoy-fleet.yaml` has a
/// Limitador limit (namespace = the service's domain, matched on `descriptors[0].policy`, per
/// `descriptors[0].identity`; with a descriptor entry, one per value of it plus one for every
/// other value) and an envoyproxy/ratelimit descriptor with the same numbers.
#[test]
fn the_saas_api_fleet_limits_agree_with_its_envoy_config() {
    let shipped = Shipped::load("envoy/examples/saas-api/envoy-fleet.yaml");
    let configs = shipped.plugin_configs();
    assert_eq!(configs.len(), 1);
    let config = meshguard::config::Config::from_json(&configs[0]).unwrap();
    let rl = config.rate_limits.as_ref().unwrap();
    let fleet = rl.fleet.as_ref().expect("a fleet service");
    assert_eq!(fleet.service.cluster, "ratelimit");
    let cluster = &shipped.yaml["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ratelimit")
        .expect("the ratelimit cluster")["typed_extension_protocol_options"];
    assert!(
        serde_yaml_ng::to_string(cluster)
            .unwrap()
            .contains("http2_protocol_options"),
        "the rate-limit cluster speaks HTTP/2"
    );
    let dir = repo().join("envoy/examples/saas-api/ratelimit");
    let limitador: Y =
        serde_yaml_ng::from_str(&fs::read_to_string(dir.join("limitador-limits.yaml")).unwrap())
            .unwrap();
    let envoyproxy: Y = serde_yaml_ng::from_str(
        &fs::read_to_string(dir.join("envoyproxy-ratelimit-config.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        envoyproxy["domain"].as_str(),
        Some(fleet.service.domain.as_str())
    );
    assert_eq!(fleet.policies.len(), 2);
    let limits = limitador.as_sequence().unwrap();
    let mut used = 0;
    for &i in &fleet.policies {
        let name = &rl.limits[i].name;
        let descriptor = envoyproxy["descriptors"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|d| d["key"] == "policy" && d["value"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no envoyproxy/ratelimit descriptor for {name}"));
        let inner = &descriptor["descriptors"][0];
        assert_eq!(inner["key"], "identity");
        assert!(inner.get("value").is_none(), "one counter per identity");
        let mine: Vec<&Y> = limits
            .iter()
            .filter(|l| {
                l["conditions"][0].as_str() == Some(&format!("descriptors[0].policy == '{name}'"))
            })
            .collect();
        used += mine.len();
        for limit in &mine {
            assert_eq!(
                limit["namespace"].as_str(),
                Some(fleet.service.domain.as_str())
            );
            assert_eq!(
                limit["variables"][0].as_str(),
                Some("descriptors[0].identity")
            );
        }
        // The envoyproxy/ratelimit node each Limitador limit stands for: the identity node for a
        // policy without entries; with one entry (`key`), its `key: value` child for a limit on
        // `descriptors[0].<key> == '<value>'`, and its child without a value for the limit on
        // every other value.
        let entries = fleet.entries(i);
        let pairs: Vec<(&Y, &Y)> = match entries {
            [] => {
                assert_eq!(mine.len(), 1, "{name}: one Limitador limit");
                assert_eq!(mine[0]["name"].as_str(), Some(name.as_str()));
                vec![(mine[0], inner)]
            }
            [entry] => {
                let children = inner["descriptors"].as_sequence().unwrap();
                let key = &entry.key;
                let EntryValue::Claim {
                    default: Some(default),
                    ..
                } = &entry.value
                else {
                    panic!("{name}: the example's entry is a claim with a default");
                };
                assert!(
                    children
                        .iter()
                        .any(|c| c["value"].as_str() == Some(default)),
                    "{name}: the default {default} has its limit"
                );
                assert_eq!(mine.len(), children.len(), "{name}: one limit per plan");
                mine.iter()
                    .map(|l| {
                        let condition = l["conditions"][1].as_str().unwrap();
                        let node = match condition
                            .strip_prefix(&format!("descriptors[0].{key} == '"))
                            .and_then(|v| v.strip_suffix('\''))
                        {
                            Some(value) => children.iter().find(|c| {
                                c["key"].as_str() == Some(key) && c["value"].as_str() == Some(value)
                            }),
                            None => {
                                assert!(
                                    condition.starts_with(&format!("!(descriptors[0].{key} in [")),
                                    "{condition}"
                                );
                                children.iter().find(|c| {
                                    c["key"].as_str() == Some(key) && c.get("value").is_none()
                                })
                            }
                        };
                        (
                            *l,
                            node.unwrap_or_else(|| panic!("{name}: no node for {condition}")),
                        )
                    })
                    .collect()
            }
            more => panic!("{name}: {} entries", more.len()),
        };
        for (limit, node) in pairs {
            let unit_seconds = match node["rate_limit"]["unit"].as_str().unwrap() {
                "second" => 1,
                "minute" => 60,
                "hour" => 3600,
                "day" => 86_400,
                other => panic!("unit {other}"),
            };
            assert_eq!(limit["seconds"].as_u64(), Some(unit_seconds), "{name}");
            assert_eq!(
                limit["max_value"].as_u64(),
                node["rate_limit"]["requests_per_unit"].as_u64(),
                "{name}"
            );
        }
    }
    assert_eq!(
        used,
        limits.len(),
        "every Limitador limit belongs to a fleet policy"
    );
}
