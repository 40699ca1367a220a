//! The host boundary cannot panic: meshguard does not link the proxy-wasm Rust SDK (whose host
//! calls panic on unexpected statuses), and only `src/host/abi.rs` declares host imports, each
//! wrapped in a function that returns the host's status as a `Result`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    assert!(files.len() > 20, "found only {} sources", files.len());
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(repo())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn the_wasm_build_does_not_depend_on_the_proxy_wasm_sdk() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--target",
            "wasm32-wasip1",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("jwt-simple"), "unexpected tree:\n{tree}");
    let sdk: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("proxy-wasm "))
        .collect();
    assert!(
        sdk.is_empty(),
        "the wasm build links the proxy-wasm SDK, whose host calls panic: {sdk:?}"
    );
}

#[test]
fn only_the_abi_module_declares_host_imports() {
    for (path, text) in sources() {
        assert!(
            !text.contains("proxy_wasm::"),
            "{path} uses the proxy-wasm SDK"
        );
        let imports = text.contains("wasm_import_module") || text.contains("raw::proxy_");
        if path != "src/host/abi.rs" {
            assert!(
                !imports,
                "{path} calls host imports directly: go through host/abi.rs"
            );
        } else {
            assert!(
                imports,
                "src/host/abi.rs no longer declares the host imports"
            );
        }
    }
}

/// Every host import is called in exactly one wrapper, which maps its status (`check(…)`), or
/// returns the buffer through `buffer_call`, which does.
#[test]
fn every_host_import_is_wrapped_in_a_status_check() {
    let abi = std::fs::read_to_string(repo().join("src/host/abi.rs")).unwrap();
    let declared: Vec<&str> = abi
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub fn proxy_"))
        .map(|l| l.split('(').next().unwrap())
        .collect();
    assert!(declared.len() >= 15, "declared: {declared:?}");
    for name in &declared {
        let call = format!("raw::proxy_{name}(");
        let sites: Vec<usize> = abi.match_indices(&call).map(|(i, _)| i).collect();
        assert_eq!(
            sites.len(),
            1,
            "proxy_{name} is called {} times",
            sites.len()
        );
        // From the enclosing function's start to the call, a status check must be open.
        let start = abi[..sites[0]]
            .rfind("\npub fn ")
            .expect("call outside a wrapper");
        let before = &abi[start..sites[0]];
        let checked = before.contains("check(unsafe")
            || before.contains("buffer_call(|d, s| unsafe")
            || (before.contains("let status = unsafe")
                && abi[sites[0]..].contains("match check(status)"));
        assert!(checked, "proxy_{name}'s status is not checked:\n{before}");
    }
}

#[test]
fn unsafe_code_stays_in_the_abi_layer() {
    let allowed = ["src/host/abi.rs", "src/host/dispatch.rs", "src/host/mod.rs"];
    for (path, text) in sources() {
        if text.contains("unsafe ") && !allowed.contains(&path.as_str()) {
            panic!("{path} has unsafe code");
        }
    }
}
