//! `tools/board.py`: the board's main panels as a PNG from saved `/stats/prometheus` snapshots
//! (`tests/fixtures/board/snapshot.prom` was saved from `tests/prometheus.rs`'s Envoy).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::fs;

use common::*;

#[test]
fn a_snapshot_becomes_a_png_and_an_empty_one_is_refused() {
    let dir = temp_dir("board");
    let snapshot = repo().join("tests/fixtures/board/snapshot.prom");
    let png = dir.join("board.png");
    let printed = board_tool(&[
        "--prom",
        snapshot.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(printed, png.to_str().unwrap());
    let bytes = fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "an empty picture: {} bytes",
        bytes.len()
    );

    // Nothing of meshguard's in the input: an error, and no picture.
    let empty = dir.join("empty.prom");
    fs::write(&empty, "").unwrap();
    let none = dir.join("none.png");
    let (code, stderr) = board_tool(&[
        "--prom",
        empty.to_str().unwrap(),
        "--out",
        none.to_str().unwrap(),
    ])
    .unwrap_err();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no meshguard series"), "{stderr}");
    assert!(!none.exists());
}
