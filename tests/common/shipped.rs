//! Shipped Envoy YAML: loaded as it is in the repository, then made runnable here (relative file
//! names resolved against a directory the test prepared, fixed ports mapped to the test's).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::*;

pub struct Shipped {
    pub path: PathBuf,
    pub yaml: serde_yaml_ng::Value,
}

impl Shipped {
    pub fn load(relative: &str) -> Shipped {
        let path = repo().join(relative);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Shipped {
            path,
            yaml: serde_yaml_ng::from_str(&text).unwrap(),
        }
    }

    /// Every Envoy `*.yaml` under `dir` (relative to the repository); Compose files
    /// (`docker-compose.yaml`) and rate-limit service configs (under a `ratelimit/` directory)
    /// are not Envoy configs and are left out.
    pub fn all_under(dir: &str) -> Vec<String> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(p).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    if !p.ends_with("ratelimit") {
                        walk(&p, out);
                    }
                } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().contains("compose"))
                {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&repo().join(dir), &mut out);
        out.sort();
        out.iter()
            .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
            .collect()
    }

    /// The YAML with relative `filename`s under `base` and ports mapped (unmapped stay).
    pub fn runnable(&self, base: &Path, ports: &HashMap<u64, u64>) -> String {
        fn fix(v: &mut serde_yaml_ng::Value, base: &Path, ports: &HashMap<u64, u64>) {
            use serde_yaml_ng::Value as Y;
            match v {
                Y::Mapping(m) => {
                    for (k, val) in m.iter_mut() {
                        match (k.as_str(), &*val) {
                            (Some("filename"), Y::String(f)) if !f.starts_with('/') => {
                                *val = Y::String(base.join(f).display().to_string());
                            }
                            (Some("port_value"), Y::Number(n)) => {
                                if let Some(p) = n.as_u64().and_then(|p| ports.get(&p)) {
                                    *val = Y::Number((*p).into());
                                }
                            }
                            _ => fix(val, base, ports),
                        }
                    }
                }
                Y::Sequence(s) => s.iter_mut().for_each(|x| fix(x, base, ports)),
                _ => {}
            }
        }
        let mut y = self.yaml.clone();
        fix(&mut y, base, ports);
        serde_yaml_ng::to_string(&y).unwrap()
    }

    /// Every meshguard plugin configuration in the file, as the bytes Envoy would hand over
    /// (found by the same code as `meshguard-check`).
    pub fn plugin_configs(&self) -> Vec<Vec<u8>> {
        let text = fs::read_to_string(&self.path).unwrap();
        meshguard::check::find_plugin_configs(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
            .into_iter()
            .map(|f| f.bytes)
            .collect()
    }
}

/// The SPIFFE IDs of the sidecar-pair example's workloads.
pub const SAAS_API: &str = "spiffe://cluster.local/ns/saas/sa/saas-api";
pub const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
pub const REPORTS: &str = "spiffe://cluster.local/ns/batch/sa/reports";

/// Lays `dir` out as the shipped examples expect: `pki/` (mesh CA `ca.pem`; `server.pem`;
/// workload certificates `saas-api.pem` (also a server certificate), `frontend.pem`,
/// `reports.pem`; each with its `-key.pem`) and `meshguard.wasm`.
pub fn example_layout(dir: &Path) -> Pki {
    let pki_dir = dir.join("pki");
    fs::create_dir_all(&pki_dir).unwrap();
    let pki = Pki::new(&pki_dir);
    pki.server_workload(SAAS_API).write(&pki_dir, "saas-api");
    pki.workload(FRONTEND).write(&pki_dir, "frontend");
    pki.workload(REPORTS).write(&pki_dir, "reports");
    std::os::unix::fs::symlink(wasm_path(), dir.join("meshguard.wasm")).unwrap();
    pki
}

/// A new temporary directory laid out by [`example_layout`].
pub fn example_dir(tag: &str) -> (PathBuf, Pki) {
    let dir = temp_dir(tag);
    let pki = example_layout(&dir);
    (dir, pki)
}

/// Starts the shipped Envoy YAML `relative` with 2 workers from `dir` (laid out by
/// [`example_layout`]), its fixed ports mapped by `ports` (0: picked by Envoy; unlisted stay).
pub fn start_shipped_in(relative: &str, dir: &Path, ports: &[(u64, u64)]) -> Envoy {
    let ports: HashMap<u64, u64> = ports.iter().copied().collect();
    Envoy::start(&Shipped::load(relative).runnable(dir, &ports), 2)
}

/// The shipped server sidecar (`envoy/examples/sidecar-pair/server-sidecar.yaml`) as it is, in
/// `dir` (laid out by [`example_layout`]): its inbound and admin listeners on ports Envoy picks,
/// its upstream and IdP clusters pointed at the test's servers.
pub fn start_server_sidecar(dir: &Path, upstream_port: u16, idp_port: u16) -> Envoy {
    start_shipped_in(
        "envoy/examples/sidecar-pair/server-sidecar.yaml",
        dir,
        &[
            (15006, 0),
            (15000, 0),
            (8080, u64::from(upstream_port)),
            (8081, u64::from(idp_port)),
        ],
    )
}

/// Starts a single-Envoy shipped example (ports 10443/9901 → picked by Envoy, 8080 →
/// `upstream`, 8081 → `jwks`) with 2 workers, from a new directory (`pki.dir`'s parent).
pub fn start_shipped(relative: &str, tag: &str, upstream: u16, jwks: u16) -> (Envoy, Pki, Shipped) {
    let (dir, pki) = example_dir(tag);
    let ports = [
        (10443, 0),
        (9901, 0),
        (8080, u64::from(upstream)),
        (8081, u64::from(jwks)),
    ];
    let envoy = start_shipped_in(relative, &dir, &ports);
    (envoy, pki, Shipped::load(relative))
}
