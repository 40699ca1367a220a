"""Cargo runner for wasm32-wasip1: runs a test binary inside the Wasmtime engine (WASI preview 1).

Set as CARGO_TARGET_WASM32_WASIP1_RUNNER so `cargo test --target wasm32-wasip1` runs the core's
unit tests compiled to wasm, the way Envoy runs the filter.
"""
import sys

import wasmtime


def main() -> int:
    path = sys.argv[1]
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    wasi = wasmtime.WasiConfig()
    wasi.argv = [path] + sys.argv[2:]
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.inherit_env()
    store.set_wasi(wasi)
    module = wasmtime.Module.from_file(engine, path)
    instance = linker.instantiate(store, module)
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
