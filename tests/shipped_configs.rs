//! Every Envoy YAML shipped under `envoy/` is accepted by `envoy --mode validate`, and every
//! meshguard plugin configuration inside it is accepted by meshguard's own parser.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::fs;

use common::*;

#[test]
fn shipped_envoy_configs_validate_and_their_plugin_configs_parse() {
    let files = Shipped::all_under("envoy");
    assert!(!files.is_empty(), "no Envoy YAML found under envoy/");
    for file in &files {
        let shipped = Shipped::load(file);
        let configs = shipped.plugin_configs();
        assert!(
            !configs.is_empty(),
            "{file}: no meshguard plugin configuration"
        );
        for bytes in &configs {
            if let Err(e) = meshguard::config::Config::from_plugin_bytes(bytes) {
                panic!("{file}: plugin configuration refused: {e}");
            }
        }
        let (dir, _pki) = example_dir("validate");
        let cfg = dir.join("envoy.yaml");
        fs::write(&cfg, shipped.runnable(&dir, &HashMap::new())).unwrap();
        let (ok, out) = Envoy::validate(&cfg);
        assert!(ok, "{file}: envoy --mode validate failed:\n{out}");
        eprintln!("{file}: valid ({} plugin configuration(s))", configs.len());
    }
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
