#!/usr/bin/env python3
"""`make demo`: the seed bench-test plan through a local two-sidecar mesh, with no compile step.

It lays out a dev PKI (mesh CA; SPIFFE certificates for the saas-api workload and two client
workloads, frontend and reports; an expired certificate; one from a foreign CA) and a dev issuer
(an RSA key, its JWKS served to Envoy, RS256 tokens for viewer/editor/admin, free/paid plans, one
certificate-bound and one DPoP-bound token), then starts the shipped sidecar pair
(envoy/examples/sidecar-pair/) as it is, 2 workers each: the client-side Envoy originates mTLS with
the workload certificates to the server-side Envoy running meshguard in front of an upstream that
echoes what it received. Each step of the plan is a row of the printed table (step, expected, got,
PASS/FAIL); any FAIL makes the exit status 1 (2: the demo could not run).

    .venv/bin/python tools/demo.py [--out DIR] [--expect "STEP=VALUE"]

Needs only the project venv (`make setup`: Envoy and `cryptography`) and meshguard.wasm
(`make build`); ENVOY_BIN and MESHGUARD_WASM override where they are looked for. Everything it
starts (two Envoys with `--use-dynamic-base-id`, ports picked at run time; a JWKS server and the
echo upstream in threads) stops when it exits, also on Ctrl-C. It leaves in DIR (default
target/meshguard-demo): the PKI, the issuer's JWKS and 1-hour tokens (for docker compose), each
Envoy's config and log, `results.json` (the table), `stats.prom` (the server sidecar's
/stats/prometheus at the end) and `board.png`, the board's main panels drawn from it.

`--expect "STEP=VALUE"` replaces the expected answer of a step compared as one exact value (e.g.
`--expect "no token=200"`): `tests/demo.rs` uses it to show that a wrong expectation fails the run.
"""
import argparse
import base64
import datetime
import hashlib
import http.client
import http.server
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent
SIDECARS = "envoy/examples/sidecar-pair"
ISSUER = "https://idp.saas.local"
AUDIENCE = "saas-api"
JWKS_PATH = "/.well-known/jwks.json"
SAAS_API = "spiffe://cluster.local/ns/saas/sa/saas-api"
FRONTEND = "spiffe://cluster.local/ns/web/sa/frontend"
REPORTS = "spiffe://cluster.local/ns/batch/sa/reports"
# `failedAuth` budget of server-sidecar.yaml (`forged`: 20 per minute per source).
FAILED_AUTH_BUDGET = 20
STARTED = time.monotonic()


# Loading the repository's scripts below must not leave __pycache__ directories in the checkout.
sys.dont_write_bytecode = True


def load(name: str, relative: str):
    """A module from a file of the repository (their names are not importable as they are)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The README's DPoP client (tools/dpop-proof.py) makes the proofs; the example's own workload
# (echo.py) is the upstream.
dpop = load("dpop_proof", "tools/dpop-proof.py")
echo = load("echo", f"{SIDECARS}/echo.py")
b64 = dpop.b64


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


class Failed(Exception):
    """The demo could not run (not a failed step)."""


# ---------------------------------------------------------------------------------------------
# Dev PKI


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Cert:
    """A certificate and its key, as PEM files `<name>.pem` and `<name>-key.pem` in a directory."""

    def __init__(self, cert, key, directory: Path, name: str):
        self.cert, self.der = cert, cert.public_bytes(serialization.Encoding.DER)
        self.file, self.key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
        self.file.write_bytes(pem(cert))
        self.key_file.write_bytes(key_pem(key))

    def x5t_s256(self) -> str:
        """`cnf."x5t#S256"` for a token bound to this certificate (RFC 8705)."""
        return b64(hashlib.sha256(self.der).digest())


class Ca:
    def __init__(self, directory: Path, name: str):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )
        self.file = directory / "ca.pem"
        self.file.write_bytes(pem(self.cert))

    def issue(self, name: str, spiffe_id=None, server=False, expired=False, directory=None) -> Cert:
        """A certificate signed by this CA: a SPIFFE URI SAN when `spiffe_id`; `localhost` and
        127.0.0.1 when `server`; valid only in 2020 when `expired`."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans = []
        if server:
            sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        if spiffe_id:
            sans.append(x509.UniformResourceIdentifier(spiffe_id))
        if expired:
            start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
            end = datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc)
        else:
            start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
            end = start + datetime.timedelta(days=30)
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        cn = "workload" if spiffe_id else name
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        return Cert(builder.sign(self.key, hashes.SHA256()), key, directory or self.dir, name)


# ---------------------------------------------------------------------------------------------
# Dev issuer


class Issuer:
    """One RSA key (tests/fixtures/rsa-2048.pem): RS256 tokens and the JWKS that publishes it."""

    def __init__(self, kid: str):
        self.kid = kid
        self.key = serialization.load_pem_private_key(
            (REPO / "tests/fixtures/rsa-2048.pem").read_bytes(), password=None
        )
        numbers = self.key.public_key().public_numbers()

        def uint(n: int) -> str:
            return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        self.jwks = json.dumps(
            {"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "n": uint(numbers.n), "e": uint(numbers.e)}]}
        )

    @staticmethod
    def claims(sub: str, extra: dict) -> dict:
        n = int(time.time())
        return {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": n - 5, "exp": n + 600, **extra}

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64(signature)

    def token(self, sub: str, **extra) -> str:
        """`Bearer <JWT>` for `sub`, valid for 10 minutes unless `extra` says otherwise."""
        return "Bearer " + self.sign(self.claims(sub, extra))


# ---------------------------------------------------------------------------------------------
# The JWKS server and the echo upstream (threads of this process)


class Quiet:
    def log_message(self, *args):
        pass


class Echo(Quiet, echo.Echo):
    pass


def jwks_handler(document: str, fetches: list):
    class Jwks(Quiet, http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            found = self.path == JWKS_PATH
            if found:
                fetches.append(time.time())
            body = document.encode() if found else b"{}"
            self.send_response(200 if found else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Jwks


def serve(handler) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------------------------------------
# Envoy


def admin_get(admin: str, path: str) -> tuple:
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


class Envoy:
    """A shipped Envoy YAML run as it is from `cwd` (its relative file names resolve there), its
    fixed ports mapped by `ports` (0: picked by Envoy), 2 workers; readiness polled."""

    def __init__(self, name: str, relative: str, cwd: Path, ports: dict):
        self.name, self.dir = name, cwd / f"envoy-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        text = (REPO / relative).read_text()
        for port in ports:
            if not re.search(rf"port_value: {port}\b", text):
                raise Failed(f"{relative}: no port_value {port} to map")
        text = re.sub(r"port_value: (\d+)\b", lambda m: f"port_value: {ports.get(int(m[1]), int(m[1]))}", text)
        config, self.log = self.dir / "envoy.yaml", self.dir / "envoy.log"
        config.write_text(text)
        admin_file = self.dir / "admin.txt"
        envoy = os.environ.get("ENVOY_BIN") or str(REPO / ".venv/bin/envoy")
        with open(self.dir / "stdout.log", "wb") as out, open(self.log, "wb") as err:
            self.process = subprocess.Popen(
                [envoy, "-c", str(config), "--concurrency", "2", "--use-dynamic-base-id",
                 "--admin-address-path", str(admin_file), "-l", "info", "--component-log-level", "wasm:debug"],
                cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise Failed(f"Envoy ({name}) exited with {self.process.returncode} during start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise Failed(f"Envoy ({name}) not ready in 60 s:\n{self.log_tail()}")
            try:
                self.admin = admin_file.read_text().strip()
                if self.admin and admin_get(self.admin, "/ready")[0] == 200:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        listeners = json.loads(admin_get(self.admin, "/listeners?format=json")[1])
        self.ports = {
            l["name"]: l["local_address"]["socket_address"]["port_value"] for l in listeners["listener_statuses"]
        }

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def meshguard_stat(self, name: str) -> int:
        """A meshguard counter from /stats (`meshguard.meshguard.<name>: N`)."""
        suffix = f"meshguard.meshguard.{name}: "
        for line in admin_get(self.admin, "/stats")[1].splitlines():
            if suffix in line:
                return int(line.split(suffix, 1)[1])
        raise Failed(f"no stat {name} on the {self.name} sidecar")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------------------------------
# Clients


class Response:
    def __init__(self, status: int, headers: list, body: bytes):
        self.status, self.body = status, body.decode(errors="replace")
        self.headers = [(k.lower(), v) for k, v in headers]

    def header(self, name: str):
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> dict:
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def describe(self) -> str:
        """`200`, or `<status> <error_description>` for a refusal: what the table compares."""
        if self.status == 200:
            return "200"
        return f"{self.status} {self.json().get('error_description', '')}"

    def upstream_header(self, name: str):
        """For echo answers: the value of a header the upstream received."""
        return next((v for k, v in self.json().get("headers", []) if k == name), None)


def request(port: int, method: str, path: str, headers: dict = None, context=None) -> Response:
    """One request on a new connection (plain HTTP/1.1, or HTTPS with `context`)."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=15, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def direct_tls(port: int, ca: Path, cert) -> str:
    """What a workload with `cert` (or none) gets from the server sidecar, talking to it directly."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert.file), str(cert.key_file))
    try:
        return f"HTTP {request(port, 'GET', '/public/status', context=context).status}"
    except ssl.SSLEOFError:
        return "TLS refused: connection closed by the server"
    except ssl.SSLError as e:
        return f"TLS refused: {e.reason or e}"
    except (OSError, http.client.HTTPException) as e:
        return f"TLS refused: {type(e).__name__}"


def tally(statuses: list) -> str:
    """`5×200, 15×429`: how many of each status, in order of first appearance."""
    seen = {}
    for s in statuses:
        seen[s] = seen.get(s, 0) + 1
    return ", ".join(f"{n}×{s}" for s, n in seen.items())


# ---------------------------------------------------------------------------------------------
# The table


class Table:
    STEP, EXPECTED, GOT = 44, 34, 34

    def __init__(self, overrides: dict):
        self.rows, self.overrides = [], dict(overrides)
        print(f"\n{'step':<{self.STEP}}  {'expected':<{self.EXPECTED}}  {'got':<{self.GOT}}  result")
        print("-" * (self.STEP + self.EXPECTED + self.GOT + 12), flush=True)

    def check(self, step: str, expected: str, got: str, passed: bool) -> None:
        self.rows.append({"step": step, "expected": expected, "got": got, "pass": bool(passed)})
        result = "PASS" if passed else "FAIL"
        print(f"{step:<{self.STEP}}  {expected:<{self.EXPECTED}}  {got:<{self.GOT}}  {result}", flush=True)

    def exact(self, step: str, expected: str, got: str) -> None:
        """A step that passes when `got` is `expected` (which `--expect` may replace)."""
        expected = self.overrides.pop(step, expected)
        self.check(step, expected, got, got == expected)

    def expect(self, step: str, expected: str, r: Response) -> None:
        self.exact(step, expected, r.describe())

    def upstream(self, step: str, r: Response, name: str, want) -> None:
        """What the upstream received: header `name` is `want`, or absent for None."""
        self.exact(step, want or "(removed)", r.upstream_header(name) or "(removed)")

    def failed(self) -> list:
        return [r["step"] for r in self.rows if not r["pass"]]


# ---------------------------------------------------------------------------------------------
# The plan


def plan(out: Path, overrides: dict) -> Table:
    say(f"dev PKI and issuer in {out}")
    pki = out / "pki"
    mesh = Ca(pki, "meshguard demo mesh CA")
    mesh.issue("server", server=True)
    mesh.issue("saas-api", SAAS_API, server=True)
    frontend = mesh.issue("frontend", FRONTEND)
    mesh.issue("reports", REPORTS)
    others = out / "other-certs"
    others.mkdir()
    expired = mesh.issue("expired-frontend", FRONTEND, expired=True, directory=others)
    foreign = Ca(out / "foreign-ca", "some other CA").issue("frontend", FRONTEND)
    wasm = Path(os.environ.get("MESHGUARD_WASM") or REPO / "target/wasm32-wasip1/release/meshguard.wasm")
    if not wasm.exists():
        raise Failed(f"{wasm} missing: run `make build`")
    (out / "meshguard.wasm").symlink_to(wasm)

    issuer = Issuer("saas-idp-2026")
    (out / "idp/.well-known").mkdir(parents=True)
    (out / "idp" / JWKS_PATH.lstrip("/")).write_text(issuer.jwks)
    fetches = []
    idp = serve(jwks_handler(issuer.jwks, fetches))
    upstream = serve(Echo)
    envoys = []
    try:
        say("starting the server sidecar (meshguard, 2 workers)")
        server = Envoy(
            "server", f"{SIDECARS}/server-sidecar.yaml", out,
            {15006: 0, 15000: 0, 8080: upstream.server_address[1], 8081: idp.server_address[1]},
        )
        envoys.append(server)
        inbound = server.ports["inbound"]
        say("starting the client sidecar (frontend and reports workloads)")
        client = Envoy("client", f"{SIDECARS}/client-sidecar.yaml", out, {15001: 0, 15002: 0, 15100: 0, 15006: inbound})
        envoys.append(client)
        as_frontend, as_reports = client.ports["frontend"], client.ports["reports"]

        say("waiting for meshguard to fetch the JWKS")
        probe = issuer.token("probe", role="viewer", plan="paid")
        deadline = time.monotonic() + 20

        def probed() -> bool:
            try:
                return request(as_frontend, "GET", "/projects", {"authorization": probe}).status == 200
            except (OSError, http.client.HTTPException):
                return False

        while not probed():
            if time.monotonic() > deadline:
                raise Failed(f"no 200 with a valid token in 20 s:\n{server.log_tail()}")
            time.sleep(0.05)
        say(
            "ready: frontend app -> http://127.0.0.1:%d, reports app -> http://127.0.0.1:%d, "
            "server sidecar https://127.0.0.1:%d (mTLS required) -> echo upstream"
            % (as_frontend, as_reports, inbound)
        )
        t = Table(overrides)
        run_steps(t, issuer, server, inbound, mesh, frontend, expired, foreign, as_frontend, as_reports, fetches)
        finish(out, issuer, server)
        return t
    finally:
        for e in envoys:
            e.stop()
        idp.shutdown()
        upstream.shutdown()


def run_steps(t, issuer, server, inbound, mesh, frontend, expired, foreign, as_frontend, as_reports, fetches):
    def call(port, method, path, auth=None, **headers):
        if auth is not None:
            headers["authorization"] = auth
        return request(port, method, path, headers)

    # mTLS: only mesh workloads with valid certificates get an HTTP answer at all.
    refused = "TLS handshake failure"
    for step, cert, expected in [
        ("client cert from a foreign CA", foreign, refused),
        ("expired client cert", expired, refused),
        ("no client cert", None, refused),
        ("mesh cert (frontend), GET /public/status", frontend, "HTTP 200"),
    ]:
        got = direct_tls(inbound, mesh.file, cert)
        passed = got.startswith("TLS refused") if expected == refused else got == expected
        t.check(step, expected, got, passed)

    # Authentication and roles, through the frontend's sidecar.
    t.expect("no token", "401 authentication required", call(as_frontend, "GET", "/projects"))
    n = int(time.time())
    stale = issuer.token("bob", role="viewer", iat=n - 7200, exp=n - 3600)
    t.expect("expired token", "401 token expired", call(as_frontend, "GET", "/projects", stale))
    viewer = issuer.token("vera", role="viewer")
    t.expect("viewer POST /projects", "403 insufficient permissions", call(as_frontend, "POST", "/projects", viewer))
    editor = issuer.token("eddie", role="editor")
    t.expect("editor POST /projects", "200", call(as_frontend, "POST", "/projects", editor))
    admin = issuer.token("ada", role="admin", plan="free")
    r = call(as_frontend, "DELETE", "/projects/42", admin)
    t.expect("admin DELETE /projects/42", "200", r)
    t.upstream("  upstream saw x-user", r, "x-user", "ada")
    t.upstream("  upstream saw x-peer-spiffe", r, "x-peer-spiffe", FRONTEND)
    t.upstream("  upstream saw authorization", r, "authorization", None)

    # Login: 5 per 10 s per calling workload.
    logins = [call(as_frontend, "POST", "/login") for _ in range(20)]
    statuses = [r.status for r in logins]
    t.check(
        "POST /login ×20, fast", "5×200, 15×429", tally(statuses),
        statuses.count(200) == 5 and statuses.count(429) == 15,
    )
    limited = next((r for r in logins if r.status == 429), None)
    shown = "" if limited is None else ", ".join(
        f"{h}: {limited.header(h) or '(missing)'}" for h in ("retry-after", "ratelimit")
    )
    t.check(
        "  429 headers", "Retry-After, RateLimit(-Policy)", shown,
        limited is not None and all(limited.header(h) for h in ("retry-after", "ratelimit", "ratelimit-policy")),
    )
    t.expect("  meanwhile reports POST /login (own bucket)", "200", call(as_reports, "POST", "/login"))
    retry_after = limited.header("retry-after") if limited else None
    retry_after = int(retry_after) if retry_after and retry_after.isdigit() else 1
    say(f"waiting Retry-After ({retry_after} s)")
    time.sleep(retry_after)
    t.expect(f"  after waiting Retry-After ({retry_after} s)", "200", call(as_frontend, "POST", "/login"))

    # Plans: free 10/min, paid 100/min, admins exempt.
    def burst(token):
        return [call(as_frontend, "GET", "/projects", token).status for _ in range(30)]

    free = burst(issuer.token("fred", role="viewer", plan="free"))
    t.check("free plan GET /projects ×30", "10×200, 20×429", tally(free), free.count(200) == 10 and free.count(429) == 20)
    paid = burst(issuer.token("paula", role="viewer", plan="paid"))
    t.check("paid plan GET /projects ×30", "30×200", tally(paid), paid.count(200) == 30)
    exempt = burst(admin)
    t.check("admin (free plan) GET /projects ×30", "30×200 (exempt)", tally(exempt), exempt.count(200) == 30)

    # RFC 8705: a token bound to the frontend's certificate.
    bound = issuer.token("frontend-svc", plan="paid", cnf={"x5t#S256": frontend.x5t_s256()})
    t.expect("cert-bound token from its workload", "200", call(as_frontend, "GET", "/projects", bound))
    t.expect(
        "  replayed from the reports workload", "401 certificate binding mismatch",
        call(as_reports, "GET", "/projects", bound),
    )

    # RFC 9449: a token bound to a client key (DPoP), presented with a proof signed by that key
    # for this request (`htu` under the public origin the shipped config names).
    app_key = ec.generate_private_key(ec.SECP256R1())
    dpop_token = issuer.token("mobile-app", plan="paid", cnf={"jkt": dpop.jkt(dpop.public_jwk(app_key))})
    dpop_token = dpop_token.removeprefix("Bearer ")
    htu = "https://api.saas.local/projects"

    def with_proof(proof):
        return call(as_frontend, "GET", "/projects", f"DPoP {dpop_token}", dpop=proof)

    proof = dpop.proof(app_key, "GET", htu, dpop_token)
    t.expect("DPoP-bound token with its proof", "200", with_proof(proof))
    t.expect("  the same proof replayed", "401 DPoP proof replayed", with_proof(proof))
    thief = ec.generate_private_key(ec.SECP256R1())
    t.expect("  stolen token, thief's own proof", "401 DPoP key mismatch", with_proof(dpop.proof(thief, "GET", htu, dpop_token)))
    t.expect(
        "  stolen token sent as Bearer", "401 DPoP-bound token sent as bearer",
        call(as_frontend, "GET", "/projects", f"Bearer {dpop_token}"),
    )

    # A flood of forged tokens (the issuer's header and signature on other claims): the
    # failed-auth budget answers 429 before any signature work once it is spent.
    header, _, signature = issuer.token("mallory").removeprefix("Bearer ").split(".")
    checks_before = server.meshguard_stat("denied.invalid_token.bad_signature")
    refused_before = server.meshguard_stat("denied.rate_limited.failed_auth")
    flood = []
    for i in range(200):
        claims = b64(json.dumps(Issuer.claims(f"forged-{i}", {"role": "admin"})).encode())
        flood.append(call(as_frontend, "GET", "/projects", f"Bearer {header}.{claims}.{signature}").status)
    checked = server.meshguard_stat("denied.invalid_token.bad_signature") - checks_before
    refused_unchecked = server.meshguard_stat("denied.rate_limited.failed_auth") - refused_before
    first_429 = flood.index(429) if 429 in flood else len(flood)
    t.check(
        "forged tokens ×200", f"≤{FAILED_AUTH_BUDGET}×401 (budget), then 429", tally(flood),
        flood.count(401) <= FAILED_AUTH_BUDGET
        and flood[:first_429] == [401] * first_429
        and flood[first_429:] == [429] * (200 - first_429),
    )
    t.check(
        "  signatures checked / refused unchecked",
        f"{flood.count(401)} / {flood.count(429)}",
        f"{checked} / {refused_unchecked}",
        checked == flood.count(401) and refused_unchecked == flood.count(429),
    )
    t.exact("JWKS fetches (one proxy, 2 workers)", "1", str(len(fetches)))


def finish(out: Path, issuer: Issuer, server: Envoy) -> None:
    """Metrics, 1-hour tokens for docker compose, stats.prom and the board."""
    status, prom = admin_get(server.admin, "/stats/prometheus")
    (out / "stats.prom").write_text(prom)
    print(f"\nMetrics: http://{server.admin}/stats/prometheus on the server sidecar (stops with the demo; "
          f"`make run` keeps an Envoy running), saved as {out / 'stats.prom'}. This run's decisions "
          "(meshguard_requests_total, summed over routes and providers):")
    totals: dict = {}
    for line in prom.splitlines():
        m = re.match(r"meshguard_requests_total\{(.*)\} (\d+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = (labels.get("decision", "?"), labels.get("status", "?"), labels.get("reason", "?"))
            totals[key] = totals.get(key, 0) + int(m.group(2))
    for (decision, status, reason), n in sorted(totals.items(), key=lambda kv: -kv[1]):
        if n:
            print(f"  {n:5d}  {decision:8s} {status:5s} {reason}")
    tokens = out / "tokens"
    tokens.mkdir()
    for name, extra in [
        ("viewer", {"role": "viewer", "plan": "free"}),
        ("editor", {"role": "editor", "plan": "paid"}),
        ("admin", {"role": "admin"}),
    ]:
        extra["exp"] = int(time.time()) + 3600
        (tokens / f"{name}.jwt").write_text(issuer.sign(Issuer.claims(f"{name}-1", extra)))
    print(f"\nThe dev PKI, the issuer's JWKS and 1-hour tokens (viewer, editor, admin) are in {out}\n"
          "(for docker compose: envoy/examples/sidecar-pair/README.md).")
    # The board's main panels for this run (dashboards/meshguard.json's queries, drawn from the
    # snapshot by tools/board.py, no Prometheus or Grafana needed).
    done = subprocess.run(
        [sys.executable, str(REPO / "tools/board.py"), "--prom", str(out / "stats.prom"),
         "--out", str(out / "board.png")],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise Failed(f"tools/board.py failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    print(f"The board's main panels for this run: {out / 'board.png'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "target/meshguard-demo"), help="output directory (emptied first)")
    parser.add_argument("--expect", action="append", default=[], metavar="STEP=VALUE",
                        help="replace the expected answer of an exactly compared step")
    args = parser.parse_args()
    overrides = dict(e.split("=", 1) for e in args.expect)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # Ctrl-C raises KeyboardInterrupt; a SIGTERM does the same, so the `finally` blocks stop Envoy.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        t = plan(out, overrides)
    except Failed as e:
        print(f"\nmeshguard demo could not run: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: Envoy and the demo's servers stopped", file=sys.stderr)
        return 130
    (out / "results.json").write_text(json.dumps(t.rows, indent=1, ensure_ascii=False) + "\n")
    if t.overrides:
        print(f"--expect named no exactly compared step: {sorted(t.overrides)}", file=sys.stderr)
        return 2
    failed = t.failed()
    print(f"\ndemo finished in {time.monotonic() - STARTED:.1f} s: {len(t.rows) - len(failed)} of {len(t.rows)} steps passed")
    if failed:
        print(f"FAILED: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
