//! `make demo` is `tools/demo.py` (no compile step): this runs it through the real Envoy and
//! checks what it reports. The plan's rows are fixed here (a step the demo dropped or renamed
//! fails), every row must pass, and the run must also be able to fail: with one expectation
//! replaced by a wrong one (`--expect`), the demo exits 1 and that row alone says FAIL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The demo's steps, in order (`tools/demo.py`; the README shows its table).
const STEPS: [&str; 28] = [
    "client cert from a foreign CA",
    "expired client cert",
    "no client cert",
    "mesh cert (frontend), GET /public/status",
    "no token",
    "expired token",
    "viewer POST /projects",
    "editor POST /projects",
    "admin DELETE /projects/42",
    "  upstream saw x-user",
    "  upstream saw x-peer-spiffe",
    "  upstream saw authorization",
    "POST /login ×20, fast",
    "  429 headers",
    "  meanwhile reports POST /login (own bucket)",
    "  after waiting Retry-After (N s)",
    "free plan GET /projects ×30",
    "paid plan GET /projects ×30",
    "admin (free plan) GET /projects ×30",
    "cert-bound token from its workload",
    "  replayed from the reports workload",
    "DPoP-bound token with its proof",
    "  the same proof replayed",
    "  stolen token, thief's own proof",
    "  stolen token sent as Bearer",
    "forged tokens ×200",
    "  signatures checked / refused unchecked",
    "JWKS fetches (one proxy, 2 workers)",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the demo into a fresh directory; its exit code, its stdout and its rows (results.json).
fn run_demo(tag: &str, args: &[&str]) -> (i32, String, Vec<Value>) {
    let out = std::env::temp_dir().join(format!("meshguard-demo-{tag}-{}", std::process::id()));
    let python = repo().join(".venv/bin/python");
    let run = Command::new(&python)
        .arg(repo().join("tools/demo.py"))
        .arg("--out")
        .arg(&out)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", python.display()));
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    println!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let rows = rows(&out.join("results.json"));
    assert!(
        out.join("stats.prom").exists(),
        "the demo saves the server sidecar's /stats/prometheus"
    );
    if run.status.code() == Some(0) {
        let png = std::fs::read(out.join("board.png")).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a passing demo ends with the board's panels as a PNG ({} bytes)",
            png.len()
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    (run.status.code().unwrap_or(-1), stdout, rows)
}

fn rows(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (the demo did not finish)", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A row's step with the waited seconds replaced by `N` (they come from `Retry-After`).
fn step_name(row: &Value) -> String {
    let step = row["step"].as_str().unwrap();
    match step.strip_prefix("  after waiting Retry-After (") {
        Some(rest) if rest.ends_with(" s)") => "  after waiting Retry-After (N s)".to_string(),
        _ => step.to_string(),
    }
}

#[test]
fn the_demo_passes_every_step_of_the_plan() {
    let (code, stdout, rows) = run_demo("pass", &[]);
    let steps: Vec<String> = rows.iter().map(step_name).collect();
    assert_eq!(steps, STEPS);
    let failed: Vec<&Value> = rows.iter().filter(|r| r["pass"] != true).collect();
    assert!(failed.is_empty(), "failed steps: {failed:?}");
    assert_eq!(code, 0);
    assert!(stdout.contains("28 of 28 steps passed"));
    // A few rows whose answers are fixed by the shipped configuration.
    let got = |step: &str| {
        rows.iter()
            .find(|r| r["step"] == step)
            .map(|r| r["got"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(got("no token"), "401 authentication required");
    assert_eq!(got("POST /login ×20, fast"), "5×200, 15×429");
    assert_eq!(got("free plan GET /projects ×30"), "10×200, 20×429");
    assert_eq!(got("JWKS fetches (one proxy, 2 workers)"), "1");
}

#[test]
fn a_wrong_expectation_fails_the_demo() {
    let (code, stdout, rows) = run_demo("fail", &["--expect", "no token=200"]);
    assert_eq!(code, 1);
    let failed: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["pass"] != true)
        .map(|r| (r["step"].as_str().unwrap(), r["got"].as_str().unwrap()))
        .collect();
    assert_eq!(failed, [("no token", "401 authentication required")]);
    assert!(stdout.contains("27 of 28 steps passed"));
}
