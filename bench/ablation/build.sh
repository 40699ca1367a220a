#!/usr/bin/env bash
# Builds the ablation variant of meshguard for `make bench`: a copy of the tree with
# src/host/buckets.rs replaced by bench/ablation/worker_buckets.rs (per-worker buckets, no shared
# data). Output: target/ablation/wasm32-wasip1/release/meshguard.wasm. Never shipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
copy="$root/target/ablation-src"
rm -rf "$copy"
mkdir -p "$copy"
cp -r "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" "$copy/"
[ -f "$root/clippy.toml" ] && cp "$root/clippy.toml" "$copy/"
cp "$root/bench/ablation/worker_buckets.rs" "$copy/src/host/buckets.rs"
CARGO_TARGET_DIR="$root/target/ablation" cargo build --quiet --release --target wasm32-wasip1 \
  --manifest-path "$copy/Cargo.toml" --lib
ls -l "$root/target/ablation/wasm32-wasip1/release/meshguard.wasm"
