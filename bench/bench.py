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

Ablation (W1 only, when bench/ablation/build.sh has built its variant):
  mg-no-limit        meshguard without its rate limit (same config otherwise)
  mg-worker-buckets  meshguard with buckets in a per-worker map instead of Envoy shared data
                     (not exact across workers; a measurement, never shipped)
Each is reported relative to meshguard: what the removed part costs.

Setups are interleaved (bare, native, wasm-floor, meshguard, bare, …) for ROUNDS rounds so drift hits all
equally; each run starts a fresh Envoy. Reported numbers are medians over rounds. Writes
bench/results.json and bench/chart.png and prints a table.
"""

import base64
import http.server
import json
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
WORKLOADS = ["W1", "W2", "W3", "W4"]


def b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rn = rsa_key.public_key().public_numbers()
    en = ec_key.public_key().public_numbers()
    jwks = {"keys": [
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig", "n": b64(rn.n), "e": b64(rn.e)},
        {"kty": "EC", "kid": "ec", "alg": "ES256", "use": "sig", "crv": "P-256",
         "x": base64.urlsafe_b64encode(en.x.to_bytes(32, "big")).rstrip(b"=").decode(),
         "y": base64.urlsafe_b64encode(en.y.to_bytes(32, "big")).rstrip(b"=").decode()},
    ]}
    pem = lambda k: k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    return pem(rsa_key), pem(ec_key), jwks


def mint(args):
    pem, alg, kid, start, count = args
    now = int(time.time())
    # Load the key once per chunk: parsing (and checking) an RSA key costs more than signing.
    key = serialization.load_pem_private_key(pem, password=None)
    return [jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i}", "scope": "read write",
                        "iat": now, "exp": now + 7200}, key, algorithm=alg, headers={"kid": kid})
            for i in range(start, start + count)]


def mint_many(pem, alg, kid, count):
    chunks = [(pem, alg, kid, i, min(2000, count - i)) for i in range(0, count, 2000)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [t for part in pool.map(mint, chunks) for t in part]


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


def bootstrap(setup: str, jwks_port: int) -> str:
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
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {jwks_port}}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"""


class Envoy:
    def __init__(self, setup: str, jwks_port: int):
        self.dir = Path(tempfile.mkdtemp(prefix=f"meshguard-bench-{setup}-"))
        cfg = self.dir / "envoy.yaml"
        cfg.write_text(bootstrap(setup, jwks_port))
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


def wrk(port: int, tokens_file: Path, connections: int, threads: int, seconds: int):
    script = tokens_file.with_suffix(".lua")
    script.write_text(LUA)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", str(script), f"http://127.0.0.1:{port}/api", "--", str(tokens_file), str(threads)],
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
    out_dir = ROOT / "bench"
    work = Path(tempfile.mkdtemp(prefix="meshguard-bench-"))
    print("minting tokens…", flush=True)
    rsa_pem, ec_pem, jwks_doc = make_keys()
    warm_rsa = mint_many(rsa_pem, "RS256", "rsa", 64)
    warm_ec = mint_many(ec_pem, "ES256", "ec", 64)
    cold_count = int(os.environ.get("BENCH_COLD_TOKENS", "150000"))
    cold = mint_many(rsa_pem, "RS256", "rsa", cold_count)
    forged = [forge(t) for t in mint_many(rsa_pem, "RS256", "rsa", 2000)]
    files = {}
    for name, tokens in [("warm_rsa", warm_rsa), ("warm_ec", warm_ec), ("cold", cold), ("forged", forged)]:
        files[name] = work / f"{name}.txt"
        files[name].write_text("\n".join(tokens) + "\n")

    Jwks.body = json.dumps(jwks_doc).encode()
    jwks_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", jwks_port), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    ablations = ABLATIONS if Path(ABLATION_WASM).exists() else []
    if not ablations:
        print(f"note: {ABLATION_WASM} missing (bench/ablation/build.sh): no ablation runs", flush=True)
    setups_of = lambda w: SETUPS + (ablations if w == "W1" else [])
    raw = {w: {s: [] for s in setups_of(w)} for w in WORKLOADS}
    rss = {s: [] for s in SETUPS + ablations}
    for rnd in range(ROUNDS):
        for workload in WORKLOADS:
            for setup in setups_of(workload):
                envoy = Envoy(setup, jwks_port)
                try:
                    # Keys fetched (a token passes), then a warm-up that must be all 2xx.
                    wait_admitted(envoy.port, warm_rsa[0])
                    w = wrk(envoy.port, files["warm_rsa"], 8, 1, 1)
                    if w["non2xx"]:
                        raise SystemExit(f"{setup}: warm-up got {w['non2xx']} non-2xx answers")
                    if workload == "W1":
                        r = wrk(envoy.port, files["warm_rsa"], 64, 2, DURATION)
                    elif workload == "W3":
                        r = wrk(envoy.port, files["warm_ec"], 64, 2, DURATION)
                    elif workload == "W2":
                        # Each Envoy is fresh, so tokens are new to it; stay within the set.
                        r = wrk(envoy.port, files["cold"], 64, 2, DURATION)
                        if r["requests"] > cold_count:
                            print(f"  note: {setup} W2 used {r['requests']} requests > {cold_count} tokens (some repeats)")
                    else:
                        result = {}
                        def flood():
                            result["flood"] = wrk(envoy.port, files["forged"], 58, 1, DURATION)
                        t = threading.Thread(target=flood)
                        t.start()
                        r = wrk(envoy.port, files["warm_rsa"], 6, 1, DURATION)
                        t.join()
                        r["flood_rps"] = result["flood"]["rps"]
                    r["rss_mb"] = envoy.rss_mb()
                    rss[setup].append(r["rss_mb"])
                    raw[workload][setup].append(r)
                    print(f"round {rnd + 1} {workload} {setup:17s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  RSS {r['rss_mb']:5.0f} MB", flush=True)
                finally:
                    envoy.stop()
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
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.2
    for i, s in enumerate(SETUPS):
        xs = [j + (i - (len(SETUPS) - 1) / 2) * width for j in range(len(WORKLOADS))]
        axes[0].bar(xs, [summary[w][s]["rps"] for w in WORKLOADS], width, label=s)
        axes[1].bar(xs, [summary[w][s]["p99_ms"] for w in WORKLOADS], width, label=s)
    labels = ["W1 warm RS256", "W2 cold RS256", "W3 warm ES256", "W4 flood (legit)"]
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
