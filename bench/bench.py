"""make bench: meshguard against bare Envoy and Envoy's native chain, side by side, in one run.

Setups, on the same Envoy binary and a direct-response route, 2 workers each:
  bare      no auth filters
  native    jwt_authn (remote JWKS, jwt_cache_config on, claim_to_headers sub) + rbac on the
            scope claim + local_ratelimit per identity (a wildcard descriptor on the verified sub,
            max_dynamic_descriptors 10000; limits high enough not to trigger)
  wasm-floor an empty proxy-wasm filter (bench/floor: every callback returns Continue), same
            SDK and runtime: what any proxy-wasm filter costs before it does any work
  meshguard the same policy: remote JWKS, scope "read" required, a per-identity limit that does
            not trigger

Workloads (wrk, plaintext HTTP/1.1 keep-alive):
  W1 warm RS256: 64 connections, 64 tokens, each reused
  W2 cold RS256: every request carries a token that Envoy instance has not seen
  W3 warm ES256: as W1 with ES256
  W4 flood: 58 connections send forged tokens (valid shape, bad signature) while 6 send
     legitimate ones; the legitimate requests' p99 is reported
  W5 DPoP warm (meshguard only: Envoy's native chain has no DPoP): the W1 policy with DPoP
     allowed on the provider (ES256 proofs, a public origin, a replay cache sized so it never
     fills during the run); 64 DPoP-bound RS256 tokens (`cnf.jkt`, one ES256 proof key each),
     reused as in W1, and every request a fresh proof (its own `jti`: the replay cache refuses
     a proof seen before), minted with PyJWT before the run: 1.5 × this round's W1 meshguard
     req/s × the run's seconds (W5 does strictly more work than W1), at most 524288 (the
     largest replay cache, half full), which bounds BENCH_SECONDS for W5 to about 524288 / its
     req/s. Any non-2xx answer stops the bench (an expired, replayed or unrecorded proof would
     be a cheap refusal, not a measurement). Reported beside W1 as dpop_vs_warm_bearer (W5 / W1
     meshguard req/s).
  W6 fleet limit (meshguard only): W1's load and policy, but the per-identity limit is a fleet
     policy (`fleet: true`; README "Per proxy or fleet"): after its local bucket, every request
     pauses for one ShouldRateLimit call through an HTTP/2 Envoy cluster to tools/rls
     (MESHGUARD_RLS, default tools/rls/target/release/meshguard-rls; `make rls`), Limitador's
     engine counting in a redis-server (no persistence). The bench starts both once, as its own
     children on ports picked at run time, waits until they answer, and ends them at exit; they
     share the machine's 2 cores with Envoy and wrk. The service's limit (FLEET_LIMITS) is as high
     as the local one, never reached; `timeoutMs` 1000 and `failureMode: deny`, so any non-2xx
     answer is a real failure and stops the bench. The fleet counters must show a call for every
     2xx answer (calls_per_request in results.json). Reported as fleet_vs_local (W6 / W1
     meshguard req/s).

Ablation (W1 only, when bench/ablation/build.sh has built its variant):
  mg-no-limit        meshguard without its rate limit (same config otherwise)
  mg-worker-buckets  meshguard with buckets in a per-worker map instead of Envoy shared data
                     (not exact across workers; a measurement, never shipped)
Each is reported relative to meshguard: what the removed part costs.

Setups are interleaved (bare, native, wasm-floor, meshguard, bare, …) for ROUNDS rounds so drift hits all
equally; each run starts a fresh Envoy; W5 and W6 come last in each round, after the W1 they are compared
with.
Reported numbers are medians over rounds. Writes bench/results.json and bench/chart.png and prints a table.
"""

import base64
import hashlib
import http.server
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jwt  # PyJWT: signs the tokens (not the library that verifies)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parent.parent
ENVOY = os.environ.get("ENVOY_BIN", str(ROOT / ".venv/bin/envoy"))
WASM = os.environ.get("MESHGUARD_WASM", str(ROOT / "target/wasm32-wasip1/release/meshguard.wasm"))
FLOOR_WASM = os.environ.get("FLOOR_WASM", str(ROOT / "bench/floor/target/wasm32-wasip1/release/meshguard_bench_floor.wasm"))
DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ISSUER, AUDIENCE = "https://idp.bench", "bench"
SETUPS = ["bare", "native", "wasm-floor", "meshguard"]
# Where meshguard's warm time goes (W1 only): the same policy without its rate limit, and with its
# buckets in a per-worker map instead of Envoy shared data (bench/ablation; not exact across
# workers, never shipped). Skipped when the ablation build is missing.
ABLATION_WASM = os.environ.get("ABLATION_WASM", str(ROOT / "target/ablation/wasm32-wasip1/release/meshguard.wasm"))
ABLATIONS = ["mg-no-limit", "mg-worker-buckets"]
WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6"]
# W6: the rate-limit service (tools/rls, `make rls`: Limitador's engine behind Envoy's RLS API) and
# the Redis it counts in, both started by the bench; the Limitador namespace (`service.domain`).
RLS = os.environ.get("MESHGUARD_RLS", str(ROOT / "tools/rls/target/release/meshguard-rls"))
FLEET_DOMAIN = "bench"
# Long enough that a loaded machine never turns the RPC's latency into 503s (`failureMode: deny`);
# a failure of any kind is then a real one, and stops the bench.
FLEET_TIMEOUT_MS = 1000
# W5: the origin clients sign in `htu` (the sidecar sees 127.0.0.1:<port>; `publicOrigins` says
# what the client used), and the path wrk requests (as in every workload).
DPOP_ORIGIN, DPOP_PATH = "https://api.bench", "/api"
PROOF_KEYS = 64


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def pem_of(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ec_jwk(key) -> dict:
    """The public JWK of a P-256 key: its RFC 7638 required members only."""
    n = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}


def make_keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rn = rsa_key.public_key().public_numbers()
    jwks = {"keys": [
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig", "n": b64(rn.n), "e": b64(rn.e)},
        {"kid": "ec", "alg": "ES256", "use": "sig", **ec_jwk(ec_key)},
    ]}
    return pem_of(rsa_key), pem_of(ec_key), jwks


def proof_keys(count: int):
    """W5's client keys (ES256): their PEMs and RFC 7638 thumbprints, computed here with hashlib
    (the `cnf.jkt` of the tokens bound to them)."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(count)]
    thumbprint = lambda jwk: b64url(hashlib.sha256(json.dumps(
        jwk, separators=(",", ":"), sort_keys=True).encode()).digest())
    return [pem_of(k) for k in keys], [thumbprint(ec_jwk(k)) for k in keys]


def mint(args):
    pem, alg, kid, jkts, start, count = args
    now = int(time.time())
    # Load the key once per chunk: parsing (and checking) an RSA key costs more than signing.
    key = serialization.load_pem_private_key(pem, password=None)
    def claims(i):
        c = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i}", "scope": "read write", "iat": now, "exp": now + 7200}
        if jkts:  # DPoP-bound (RFC 9449 §6.1): token i to proof key i mod len(jkts)
            c["cnf"] = {"jkt": jkts[i % len(jkts)]}
        return c
    return [jwt.encode(claims(i), key, algorithm=alg, headers={"kid": kid}) for i in range(start, start + count)]


def mint_proofs(args):
    """Lines "<k> <proof>": proof i is signed by proof key k = i % len(pems), for token k (`ath`),
    as a GET of DPOP_ORIGIN + DPOP_PATH, with a random 128-bit `jti` and `iat` now."""
    pems, tokens, start, count = args
    now = int(time.time())
    keys = [serialization.load_pem_private_key(p, password=None) for p in pems]
    heads = [{"typ": "dpop+jwt", "jwk": ec_jwk(k)} for k in keys]
    aths = [b64url(hashlib.sha256(t.encode()).digest()) for t in tokens]
    lines = []
    for i in range(start, start + count):
        k = i % len(keys)
        claims = {"jti": b64url(os.urandom(16)), "htm": "GET", "htu": DPOP_ORIGIN + DPOP_PATH, "iat": now, "ath": aths[k]}
        lines.append(f"{k} {jwt.encode(claims, keys[k], algorithm='ES256', headers=heads[k])}")
    return lines


def in_chunks(fn, args: tuple, count: int) -> list:
    """fn((*args, start, n)) over chunks of 2000 of range(count), one process per core; in order."""
    chunks = [(*args, i, min(2000, count - i)) for i in range(0, count, 2000)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [t for part in pool.map(fn, chunks) for t in part]


def mint_many(pem, alg, kid, count, jkts=()):
    return in_chunks(mint, (pem, alg, kid, tuple(jkts)), count)


# W5's DPoP settings. Sizing the replay cache (README, "Sizing the replay cache"): a proxy in
# steady state holds every proof of the last proofMaxAgeSeconds + clockSkewSeconds, so it needs
#   replayShards × replayShardEntries ≥ peak proofs/s × (proofMaxAgeSeconds + clockSkewSeconds) × 2
# (2: headroom for uneven shards). Here each run starts a fresh Envoy (an empty cache) and the
# proofs' window (DPOP_MAX_AGE + 5 s of skew) outlasts the run, so nothing expires during it and the
# cache ends up holding every proof the run sent: at most the N minted (warm-up included), which
# takes the place of peak × window: shards × entries ≥ 2 × N. For example 1.5 × 32k req/s × (5 + 1) s
# ≈ 288k proofs: 4086 shards of 141 entries. The window is long because the proofs are minted
# before the run (PyJWT, ~10k/s per core) and must still be fresh at its end; it does not change
# the per-request work (expiry is a comparison).
DPOP_MAX_AGE = 600
MAX_SHARDS, MAX_SHARD_ENTRIES, DEFAULT_SHARD_ENTRIES = 4096, 256, 64
MAX_PROOFS = MAX_SHARDS * MAX_SHARD_ENTRIES // 2


def replay_sizing(proofs: int):
    """(replayShards, replayShardEntries) holding 2 × `proofs`: shards of the default 64 entries
    (a read copies at most 768 bytes, as with the defaults) up to 4096 shards, then larger ones."""
    need = 2 * proofs
    entries = min(MAX_SHARD_ENTRIES, max(DEFAULT_SHARD_ENTRIES, math.ceil(need / MAX_SHARDS)))
    return min(MAX_SHARDS, max(1, math.ceil(need / entries))), entries


def dpop_config(proofs: int) -> dict:
    shards, entries = replay_sizing(proofs)
    return {"mode": "allowed", "algorithms": ["ES256"], "publicOrigins": [DPOP_ORIGIN],
            "proofMaxAgeSeconds": DPOP_MAX_AGE, "clockSkewSeconds": 5,
            "replayShards": shards, "replayShardEntries": entries}


def forge(token: str) -> str:
    head, sig = token.rsplit(".", 1)
    flipped = ("A" if sig[5] != "A" else "B")
    return f"{head}.{sig[:5]}{flipped}{sig[6:]}"


class Jwks(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bootstrap(setup: str, jwks_port: int, dpop: dict | None = None, rls_port: int | None = None) -> str:
    native = f"""
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: {ISSUER}
                  audiences: [{AUDIENCE}]
                  remote_jwks:
                    http_uri: {{uri: "http://idp.bench/jwks", cluster: idp, timeout: 5s}}
                    cache_duration: 600s
                  payload_in_metadata: jwt_payload
                  jwt_cache_config: {{jwt_cache_size: 1000}}
                  claim_to_headers: [{{header_name: x-jwt-sub, claim_name: sub}}]
              rules:
              - match: {{prefix: /}}
                requires: {{provider_name: idp}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  scope-read:
                    permissions: [{{any: true}}]
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{{key: jwt_payload}}, {{key: scope}}]
                        value: {{string_match: {{contains: "read"}}}}
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: {{max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 1s}}
              filter_enabled: {{runtime_key: rl_on, default_value: {{numerator: 100, denominator: HUNDRED}}}}
              filter_enforced: {{runtime_key: rl_enf, default_value: {{numerator: 100, denominator: HUNDRED}}}}
              # Per identity, as meshguard: the verified `sub` (copied to a header by jwt_authn,
              # which replaces any client-sent copy) keys a wildcard descriptor: one bucket per
              # value, in an LRU of max_dynamic_descriptors.
              rate_limits:
              - actions: [{{request_headers: {{header_name: x-jwt-sub, descriptor_key: sub}}}}]
              descriptors:
              - entries: [{{key: sub}}]
                token_bucket: {{max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 1s}}
              max_dynamic_descriptors: 10000"""
    plugin = {
        "logLevel": "warn",
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
                       "jwksUri": "http://idp.bench/jwks", "jwksCluster": "idp"}],
        "routes": [{"name": "api", "match": {"pathPrefixes": ["/"]},
                    "require": {"scopes": {"anyOf": ["read"]}},
                    "rateLimit": [{"policy": "high"}]}],
        "rateLimits": {"identity": ["sub"], "policies": {"high": {"requests": 100000000, "per": "1s"}}},
    }
    if setup == "mg-no-limit":
        del plugin["rateLimits"], plugin["routes"][0]["rateLimit"]
    if dpop:
        plugin["providers"][0]["dpop"] = dpop
    rls_cluster = ""
    if rls_port:  # W6: the same limit, also counted fleet-wide by the service
        plugin["rateLimits"]["service"] = {"cluster": "ratelimit", "domain": FLEET_DOMAIN,
                                           "timeoutMs": FLEET_TIMEOUT_MS, "failureMode": "deny"}
        plugin["rateLimits"]["policies"]["high"]["fleet"] = True
        # HTTP/2 (gRPC), as the README's cluster and tests/fleet.rs have it.
        rls_cluster = f"""
  - name: ratelimit
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: ratelimit
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {rls_port}}}}}}}}}]}}]"""
    plugin = json.dumps(plugin)
    def wasm_filter(name: str, path: str, configuration: str = "") -> str:
        return f"""
          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}{configuration}
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {path}}}}}"""
    meshguard = wasm_filter("meshguard", WASM, f"""
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {json.dumps(plugin)}""")
    floor = wasm_filter("floor", FLOOR_WASM)
    worker_buckets = meshguard.replace(f"filename: {WASM}", f"filename: {ABLATION_WASM}")
    filters = {"bare": "", "native": native, "wasm-floor": floor, "meshguard": meshguard,
               "mg-no-limit": meshguard, "mg-worker-buckets": worker_buckets}[setup]
    return f"""
static_resources:
  listeners:
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: idp
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: idp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {jwks_port}}}}}}}}}]}}]{rls_cluster}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"""


class Envoy:
    def __init__(self, setup: str, jwks_port: int, dpop: dict | None = None, rls_port: int | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix=f"meshguard-bench-{setup}-"))
        cfg = self.dir / "envoy.yaml"
        cfg.write_text(bootstrap(setup, jwks_port, dpop, rls_port))
        admin_file = self.dir / "admin.txt"
        self.proc = subprocess.Popen(
            [ENVOY, "-c", str(cfg), "--concurrency", "2", "--use-dynamic-base-id", "-l", "warn",
             "--admin-address-path", str(admin_file)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "envoy.log", "w"))
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"Envoy ({setup}) exited:\n{(self.dir / 'envoy.log').read_text()[-3000:]}")
            if time.time() > deadline:
                raise SystemExit(f"Envoy ({setup}) not ready")
            try:
                self.admin = admin_file.read_text().strip()
                if self.get("/ready")[0] == 200:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        listeners = json.loads(self.get("/listeners?format=json")[1])
        self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, ""

    def fleet_counters(self) -> dict:
        """meshguard's `fleet.<outcome>` counters (not batched: exact when read)."""
        marker = "meshguard.meshguard.fleet."
        return {line[line.index(marker) + len(marker):].split(":")[0]: int(line.rsplit(":", 1)[1])
                for line in self.get("/stats")[1].splitlines() if marker in line}

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# W6's limit at the service, in Limitador's format (envoy/examples/saas-api/ratelimit/
# limitador-limits.yaml): meshguard sends the fleet policy `high` as the descriptor
# [(policy, high), (identity, <verified identity>)]; as high as the local bucket, never reached.
FLEET_LIMITS = f"""- namespace: {FLEET_DOMAIN}
  name: high
  max_value: 100000000
  seconds: 1
  conditions: ["descriptors[0].policy == 'high'"]
  variables: ["descriptors[0].identity"]
"""


def redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class FleetService:
    """W6's rate-limit service: a redis-server (no persistence, its own temp dir) and tools/rls
    counting in it, both children of the bench on ports picked now; stop() ends both."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="meshguard-bench-fleet-"))
        self.procs = []
        (self.dir / "limits.yaml").write_text(FLEET_LIMITS)
        redis_port, self.port = free_port(), free_port()
        try:
            self.spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                       lambda: redis_pong(redis_port))
            rls_log = self.dir / "rls.log"
            self.spawn("rls", [RLS, "--listen", f"127.0.0.1:{self.port}", "--limits", str(self.dir / "limits.yaml"),
                               "--redis", f"redis://127.0.0.1:{redis_port}"],
                       lambda: "listening on" in rls_log.read_text())  # printed once it serves
        except BaseException:
            self.stop()
            raise

    def spawn(self, what: str, cmd: list, ready):
        log = self.dir / f"{what}.log"
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.time() + 20
        while not ready():
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited:\n{log.read_text()[-3000:]}")
            if time.time() > deadline:
                raise SystemExit(f"{what} not ready after 20 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self):
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


LUA = r"""
-- Each wrk thread walks its own stride of the token list (thread t: t, t+T, t+2T, ...).
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local tokens = {}
local idx = 0
local stride = 1
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  stride = tonumber(args[2])
  idx = tid
end
function request()
  local t = tokens[(idx % #tokens) + 1]
  idx = idx + stride
  return wrk.format("GET", "/api", {["Authorization"] = "Bearer " .. t})
end
"""

# W5: args are the proofs file (lines "<k> <proof>"), the thread count and the tokens file (token k
# on line k + 1). Thread t keeps lines t, t+T, ... and sends each once: a proof is good for one
# request (the replay cache refuses it after), so running out shows as non-2xx answers.
LUA_DPOP = r"""
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local tokens, proofs, keys = {}, {}, {}
local idx = 0
function init(args)
  local stride, n = tonumber(args[2]), 0
  for line in io.lines(args[1]) do
    if n % stride == tid then
      local sp = line:find(" ", 1, true)
      keys[#keys + 1] = tonumber(line:sub(1, sp - 1)) + 1
      proofs[#proofs + 1] = line:sub(sp + 1)
    end
    n = n + 1
  end
  for line in io.lines(args[3]) do tokens[#tokens + 1] = line end
end
function request()
  local i = (idx % #proofs) + 1
  idx = idx + 1
  return wrk.format("GET", "/api", {["Authorization"] = "DPoP " .. tokens[keys[i]], ["DPoP"] = proofs[i]})
end
"""


def wrk(port: int, data_file: Path, connections: int, threads: int, seconds: int, lua: str = LUA, extra=()):
    script = data_file.with_suffix(".lua")
    script.write_text(lua)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", str(script), f"http://127.0.0.1:{port}/api", "--", str(data_file), str(threads), *extra],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "requests": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def mint_dpop_run(work: Path, pems, tokens, w1_rps: float):
    """W5's proofs for one run, minted now (fresh `iat`): 1 s of warm-up and DURATION s of run at
    1.5 × w1_rps (W5 does all of W1's work and a proof on top), at most MAX_PROOFS in all.
    Writes proofs_warm.txt and proofs_run.txt; returns the provider's `dpop` object for that count."""
    warm_n = math.ceil(1.5 * w1_rps)
    run_n = min(math.ceil(1.5 * w1_rps * DURATION), MAX_PROOFS - warm_n)
    if run_n < 1.5 * w1_rps * DURATION:
        print(f"  note: W5 capped at {run_n} proofs (the replay cache's largest size); a run that sends more gets 401s", flush=True)
    started = time.time()
    lines = in_chunks(mint_proofs, (tuple(pems), tuple(tokens)), warm_n + run_n)
    (work / "proofs_warm.txt").write_text("\n".join(lines[:warm_n]) + "\n")
    (work / "proofs_run.txt").write_text("\n".join(lines[warm_n:]) + "\n")
    print(f"  minted {len(lines)} DPoP proofs in {time.time() - started:.1f} s", flush=True)
    return dpop_config(len(lines))


def wait_admitted(port: int, token: str):
    deadline = time.time() + 20
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api", headers={"Authorization": f"Bearer {token}"})
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit("the setup never admitted a valid token")


def main():
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (make bench installs it)")
    if shutil.which("redis-server") is None or not Path(RLS).exists():
        raise SystemExit(f"W6 needs redis-server on PATH and {RLS} (MESHGUARD_RLS): make rls")
    out_dir = ROOT / "bench"
    work = Path(tempfile.mkdtemp(prefix="meshguard-bench-"))
    print("minting tokens…", flush=True)
    rsa_pem, ec_pem, jwks_doc = make_keys()
    warm_rsa = mint_many(rsa_pem, "RS256", "rsa", 64)
    warm_ec = mint_many(ec_pem, "ES256", "ec", 64)
    cold_count = int(os.environ.get("BENCH_COLD_TOKENS", "150000"))
    cold = mint_many(rsa_pem, "RS256", "rsa", cold_count)
    forged = [forge(t) for t in mint_many(rsa_pem, "RS256", "rsa", 2000)]
    # W5: RS256 tokens from the same issuer as W1's, each bound to its own ES256 proof key.
    proof_pems, jkts = proof_keys(PROOF_KEYS)
    dpop_tokens = mint_many(rsa_pem, "RS256", "rsa", PROOF_KEYS, jkts)
    files = {}
    for name, tokens in [("warm_rsa", warm_rsa), ("warm_ec", warm_ec), ("cold", cold), ("forged", forged),
                         ("dpop_tokens", dpop_tokens)]:
        files[name] = work / f"{name}.txt"
        files[name].write_text("\n".join(tokens) + "\n")

    Jwks.body = json.dumps(jwks_doc).encode()
    jwks_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", jwks_port), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    ablations = ABLATIONS if Path(ABLATION_WASM).exists() else []
    if not ablations:
        print(f"note: {ABLATION_WASM} missing (bench/ablation/build.sh): no ablation runs", flush=True)
    setups_of = lambda w: ["meshguard"] if w in ("W5", "W6") else SETUPS + (ablations if w == "W1" else [])
    raw = {w: {s: [] for s in setups_of(w)} for w in WORKLOADS}
    rss = {s: [] for s in SETUPS + ablations}
    fleet = FleetService()  # idle (no calls) outside W6
    try:
        for rnd in range(ROUNDS):
            for workload in WORKLOADS:
                for setup in setups_of(workload):
                    dpop = None
                    if workload == "W5":  # minted before Envoy starts: the machine is otherwise idle
                        dpop = mint_dpop_run(work, proof_pems, dpop_tokens, raw["W1"]["meshguard"][-1]["rps"])
                    envoy = Envoy(setup, jwks_port, dpop, fleet.port if workload == "W6" else None)
                    try:
                        # Keys fetched (a token passes), then a warm-up that must be all 2xx.
                        wait_admitted(envoy.port, warm_rsa[0])
                        w = wrk(envoy.port, files["warm_rsa"], 8, 1, 1)
                        if w["non2xx"]:
                            raise SystemExit(f"{workload} {setup}: warm-up got {w['non2xx']} non-2xx answers")
                        if workload == "W1":
                            r = wrk(envoy.port, files["warm_rsa"], 64, 2, DURATION)
                        elif workload == "W3":
                            r = wrk(envoy.port, files["warm_ec"], 64, 2, DURATION)
                        elif workload == "W2":
                            # Each Envoy is fresh, so tokens are new to it; stay within the set.
                            r = wrk(envoy.port, files["cold"], 64, 2, DURATION)
                            if r["requests"] > cold_count:
                                print(f"  note: {setup} W2 used {r['requests']} requests > {cold_count} tokens (some repeats)")
                        elif workload == "W4":
                            result = {}
                            def flood():
                                result["flood"] = wrk(envoy.port, files["forged"], 58, 1, DURATION)
                            t = threading.Thread(target=flood)
                            t.start()
                            r = wrk(envoy.port, files["warm_rsa"], 6, 1, DURATION)
                            t.join()
                            r["flood_rps"] = result["flood"]["rps"]
                        elif workload == "W6":
                            r = wrk(envoy.port, files["warm_rsa"], 64, 2, DURATION)
                            if r["non2xx"]:
                                raise SystemExit(f"W6: {r['non2xx']} non-2xx answers of {r['requests']}: the service "
                                                 f"failed (503, failureMode deny) or refused (429); see fleet.* in /stats")
                            # Every admitted request made one call: the probe, the warm-up and the run
                            # answered 2xx; calls still in flight when wrk stopped come on top.
                            calls = envoy.fleet_counters()
                            answered = 1 + w["requests"] + r["requests"]
                            if calls.get("ok", 0) < answered:
                                raise SystemExit(f"W6: {answered} requests admitted but fleet counters {calls}: "
                                                 "the fleet policy was not asked")
                            r.update(fleet_calls=calls, calls_per_request=sum(calls.values()) / answered,
                                     vs_w1_same_round=r["rps"] / raw["W1"]["meshguard"][-1]["rps"])
                        else:  # W5
                            # The DPoP-bound tokens' own warm-up (verified once per worker), then the run.
                            tokens = [str(files["dpop_tokens"])]
                            w = wrk(envoy.port, work / "proofs_warm.txt", 8, 1, 1, LUA_DPOP, tokens)
                            r = wrk(envoy.port, work / "proofs_run.txt", 64, 2, DURATION, LUA_DPOP, tokens)
                            for phase, x in (("warm-up", w), ("run", r)):
                                if x["non2xx"]:
                                    raise SystemExit(
                                        f"W5 {phase}: {x['non2xx']} non-2xx answers of {x['requests']}: proofs expired, "
                                        "replayed (more requests than proofs minted) or not recorded (replay cache full)")
                            shards, entries = dpop["replayShards"], dpop["replayShardEntries"]
                            r.update(replay_shards=shards, replay_shard_entries=entries,
                                     # how full the cache was at the end (uniform shards): its reads grow with it
                                     replay_fill=(w["requests"] + r["requests"]) / (shards * entries),
                                     vs_w1_same_round=r["rps"] / raw["W1"]["meshguard"][-1]["rps"])
                        r["rss_mb"] = envoy.rss_mb()
                        rss[setup].append(r["rss_mb"])
                        raw[workload][setup].append(r)
                        print(f"round {rnd + 1} {workload} {setup:17s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  RSS {r['rss_mb']:5.0f} MB"
                              + (f"  replay cache {r['replay_fill']:.0%} full" if workload == "W5" else "")
                              + (f"  {r['calls_per_request']:.3f} calls/request" if workload == "W6" else ""), flush=True)
                    finally:
                        envoy.stop()
    finally:
        fleet.stop()
        server.shutdown()

    med = lambda xs: statistics.median(xs)
    summary = {w: {s: {k: med([r[k] for r in raw[w][s]]) for k in ("rps", "p50_ms", "p99_ms", "rss_mb")}
                   for s in setups_of(w)} for w in WORKLOADS}
    ratios = {
        "warm_vs_native": summary["W1"]["meshguard"]["rps"] / summary["W1"]["native"]["rps"],
        "warm_vs_bare": summary["W1"]["meshguard"]["rps"] / summary["W1"]["bare"]["rps"],
        "warm_vs_wasm_floor": summary["W1"]["meshguard"]["rps"] / summary["W1"]["wasm-floor"]["rps"],
        "wasm_floor_vs_native": summary["W1"]["wasm-floor"]["rps"] / summary["W1"]["native"]["rps"],
        "cold_vs_native": summary["W2"]["meshguard"]["rps"] / summary["W2"]["native"]["rps"],
        "es256_warm_vs_native": summary["W3"]["meshguard"]["rps"] / summary["W3"]["native"]["rps"],
        "flood_legit_p99_vs_warm_p99": summary["W4"]["meshguard"]["p99_ms"] / summary["W1"]["meshguard"]["p99_ms"],
        "native_flood_legit_p99_vs_warm_p99": summary["W4"]["native"]["p99_ms"] / summary["W1"]["native"]["p99_ms"],
        # A fresh proof per request (W5) against the warm bearer path (W1), both meshguard.
        "dpop_vs_warm_bearer": summary["W5"]["meshguard"]["rps"] / summary["W1"]["meshguard"]["rps"],
        # One RPC per request to a local rate-limit service (W6) against the local bucket (W1).
        "fleet_vs_local": summary["W6"]["meshguard"]["rps"] / summary["W1"]["meshguard"]["rps"],
    }
    # Ablation (W1): throughput of each variant relative to meshguard; the gain is what that part costs.
    ablation = {f"{a}_vs_meshguard": summary["W1"][a]["rps"] / summary["W1"]["meshguard"]["rps"] for a in ablations}
    # Issue 12's goals (the native chain limits per identity, like meshguard).
    goals = {"warm_vs_native": (">=", 1.10), "cold_vs_native": (">=", 1.0),
             "warm_vs_wasm_floor": (">=", 0.9), "flood_legit_p99_vs_warm_p99": ("<=", 2.0)}
    result = {"duration_s": DURATION, "rounds": ROUNDS, "envoy_workers": 2, "envoy": ENVOY,
              **ratios, "ablation": ablation, "goals": {k: {"goal": f"{op} {v}", "met": (ratios[k] >= v if op == ">=" else ratios[k] <= v)}
                                  for k, (op, v) in goals.items()},
              "summary": summary, "raw": raw}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))

    print("\nmedians over", ROUNDS, "interleaved rounds,", DURATION, "s each, 2 Envoy workers")
    print(f"{'workload':9s} {'setup':17s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'RSS MB':>7s}")
    for w in WORKLOADS:
        for s in setups_of(w):
            v = summary[w][s]
            print(f"{w:9s} {s:17s} {v['rps']:9.0f} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f} {v['rss_mb']:7.0f}")
    print()
    for k, v in ratios.items():
        goal = result["goals"].get(k)
        print(f"{k:36s} {v:6.2f}" + (f"   goal {goal['goal']}: {'met' if goal['met'] else 'MISSED'}" if goal else ""))
    for k, v in ablation.items():
        print(f"{'ablation ' + k:36s} {v:6.2f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
    width = 0.2
    for i, s in enumerate(SETUPS):
        ws = [(j, w) for j, w in enumerate(WORKLOADS) if s in summary[w]]  # W5, W6: meshguard only
        xs = [j + (i - (len(SETUPS) - 1) / 2) * width for j, _ in ws]
        axes[0].bar(xs, [summary[w][s]["rps"] for _, w in ws], width, label=s)
        axes[1].bar(xs, [summary[w][s]["p99_ms"] for _, w in ws], width, label=s)
    labels = ["W1 warm RS256", "W2 cold RS256", "W3 warm ES256", "W4 flood (legit)", "W5 DPoP warm\n(meshguard only)",
              "W6 fleet limit\n(meshguard only)"]
    for ax, title in zip(axes, ["throughput (req/s)", "p99 latency (ms)"]):
        ax.set_xticks(range(len(WORKLOADS)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"meshguard vs Envoy native vs an empty wasm filter vs bare — medians of {ROUNDS} interleaved rounds, 2 workers")
    fig.tight_layout()
    fig.savefig(out_dir / "chart.png", dpi=110)
    print(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'chart.png'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
