//! Envoy itself: a bootstrap for the test's world, the process (ports picked by Envoy, readiness
//! polled, killed on drop, its log printed when a test fails), its admin interface and log.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

pub struct Envoy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, u16>,
}

/// What an Envoy config needs to know about the test's world.
pub struct World<'a> {
    pub pki: &'a Pki,
    pub upstream_port: u16,
    pub jwks_port: u16,
}

/// An Envoy bootstrap: an mTLS listener (`mtls`; client certificate optional, validated against
/// the test CA when presented) and a plaintext listener (`plain`), both with meshguard in front of
/// the echo upstream, and an `idp` cluster for the JWKS. `plugin` is the plugin configuration as `google.protobuf.StringValue`
/// JSON (or, with `as_struct`, as a `google.protobuf.Struct`).
pub fn bootstrap(world: &World<'_>, plugin: &Value, as_struct: bool) -> String {
    let configuration = if as_struct {
        format!(
            "\"@type\": type.googleapis.com/google.protobuf.Struct\n                  value: {}",
            plugin
        )
    } else {
        format!(
            "\"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: {}",
            serde_json::to_string(&plugin.to_string()).unwrap()
        )
    };
    let hcm = format!(
        r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: meshguard
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: meshguard
                root_id: meshguard
                configuration:
                  {configuration}
                vm_config:
                  vm_id: meshguard
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#,
        wasm = wasm_path().display(),
    );
    format!(
        r#"
static_resources:
  listeners:
  - name: mtls
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: false
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {server_cert}}}
              private_key: {{filename: {server_key}}}
            validation_context:
              trusted_ca: {{filename: {ca}}}
      filters:{hcm}
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:{hcm}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
  - name: idp
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: idp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {jwks}}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#,
        server_cert = world.pki.server_cert.display(),
        server_key = world.pki.server_key.display(),
        ca = world.pki.ca_file.display(),
        upstream = world.upstream_port,
        jwks = world.jwks_port,
    )
}

impl Envoy {
    fn spawn(yaml: &str, concurrency: u32, tag: &str) -> (Child, PathBuf, PathBuf, PathBuf) {
        let dir = temp_dir(tag);
        let cfg = dir.join("envoy.yaml");
        fs::write(&cfg, yaml).unwrap();
        let log = dir.join("envoy.log");
        let admin_file = dir.join("admin.txt");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&cfg)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["-l", "info", "--component-log-level", "wasm:debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                fs::File::create(dir.join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        (child, dir, log, admin_file)
    }

    /// Starts Envoy and waits (polling, with a deadline) until it is ready.
    pub fn start(yaml: &str, concurrency: u32) -> Envoy {
        let (child, dir, log, admin_file) = Envoy::spawn(yaml, concurrency, "envoy");
        let mut envoy = Envoy {
            child: Some(child),
            dir,
            log,
            admin: "127.0.0.1:1".parse().unwrap(),
            listeners: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = envoy.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "Envoy exited ({status}) during start:\n{}",
                    envoy.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready in 60 s:\n{}",
                envoy.log_text()
            );
            if let Ok(text) = fs::read_to_string(&admin_file) {
                if let Ok(addr) = text.trim().parse() {
                    envoy.admin = addr;
                    if matches!(http_get(addr, "/ready"), Ok((200, _))) {
                        break;
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        let (_, body) = http_get(envoy.admin, "/listeners?format=json").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        for l in v["listener_statuses"].as_array().unwrap() {
            let port = l["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap();
            envoy
                .listeners
                .insert(l["name"].as_str().unwrap().to_string(), port as u16);
        }
        envoy
    }

    /// Runs Envoy expecting it to refuse the configuration; returns its log.
    pub fn expect_refusal(yaml: &str) -> String {
        let (mut child, _dir, log, admin_file) = Envoy::spawn(yaml, 2, "refuse");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                return fs::read_to_string(&log).unwrap_or_default();
            }
            if Instant::now() > deadline || admin_file.exists() && ready_at(&admin_file) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "Envoy accepted a bad configuration:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `envoy --mode validate` on a config file.
    pub fn validate(config: &Path) -> (bool, String) {
        let out = Command::new(envoy_bin())
            .args([
                "--mode",
                "validate",
                "--use-dynamic-base-id",
                "-l",
                "warn",
                "-c",
            ])
            .arg(config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    pub fn port(&self, listener: &str) -> u16 {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// Whether Envoy has exited, and how (for `make run`).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of a meshguard stat in Envoy's `/stats` (`meshguard.meshguard.<name>: N`).
    pub fn meshguard_stat(&self, name: &str) -> u64 {
        let suffix = format!("meshguard.meshguard.{name}: ");
        self.stats()
            .lines()
            .find_map(|l| {
                l.find(&suffix)
                    .map(|i| l[i + suffix.len()..].trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no stat {name}"))
    }

    pub fn stats(&self) -> String {
        http_get(self.admin, "/stats")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

fn ready_at(admin_file: &Path) -> bool {
    fs::read_to_string(admin_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .is_some_and(|a| matches!(http_get(a, "/ready"), Ok((200, _))))
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- Envoy log (last 80 lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Envoy's heap in bytes (admin `/memory`, `allocated`).
pub fn envoy_allocated(envoy: &Envoy) -> u64 {
    let (_, body) = http_get(envoy.admin, "/memory").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["allocated"].as_str().unwrap().parse().unwrap()
}

/// meshguard's JSON log lines with `"meshguard": event` from an Envoy log.
pub fn json_log_lines(log: &str, event: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| l.find("{\"").map(|i| &l[i..]))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v["meshguard"] == event)
        .collect()
}
