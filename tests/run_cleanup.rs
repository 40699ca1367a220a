//! `make run` (examples/run.rs) cleans up after itself: started as `make run` starts it, then
//! sent SIGINT (Ctrl-C), it stops Envoy and removes its directory and Envoy's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn ctrl_c_stops_make_run_and_removes_its_directories() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["build", "--quiet", "--example", "run"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success());
    // This test runs from <target>/debug/deps; the example is in <target>/debug/examples.
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().unwrap().parent().unwrap().join("examples/run");
    let mut child = Command::new(&example)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Its banner names both directories; the last line says it is ready.
    let (mut run_dir, mut envoy_dir) = (None, None);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(log) = line.trim().strip_prefix("Envoy log: ") {
            envoy_dir = PathBuf::from(log).parent().map(PathBuf::from);
        }
        if let Some(rest) = line.trim().strip_prefix("Ctrl-C stops it and removes ") {
            run_dir = Some(PathBuf::from(rest.trim_end_matches('.')));
            break;
        }
    }
    let (run_dir, envoy_dir) = (run_dir.unwrap(), envoy_dir.unwrap());
    assert!(run_dir.join("tokens/alice.jwt").exists());
    assert!(envoy_dir.join("envoy.log").exists());

    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("make run did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    assert!(!envoy_dir.exists(), "{} left behind", envoy_dir.display());
}
