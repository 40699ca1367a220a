//! Harness for integration tests through a real Envoy: a test PKI (rcgen), tokens signed with
//! `jsonwebtoken` (not the library that verifies), a JWKS server and an echo upstream the test
//! controls, Envoy itself (ports picked by Envoy, readiness polled, killed on drop, its log
//! printed when a test fails), and an HTTPS client that can present a client certificate.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "orders";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn envoy_bin() -> PathBuf {
    let p = std::env::var("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".venv/bin/envoy"));
    assert!(
        p.exists(),
        "Envoy not found at {} (run `make test`, or set ENVOY_BIN)",
        p.display()
    );
    p
}

pub fn wasm_path() -> PathBuf {
    let p = std::env::var("MESHGUARD_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/wasm32-wasip1/release/meshguard.wasm"));
    assert!(p.exists(), "{} missing: run `make build`", p.display());
    p
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "meshguard-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// PKI

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_file: PathBuf,
}

/// A client identity: certificate chain and key, as PEM, plus the leaf's DER.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl ClientCert {
    /// Writes `<name>.pem` and `<name>-key.pem` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        fs::write(dir.join(format!("{name}.pem")), &self.cert_pem).unwrap();
        fs::write(dir.join(format!("{name}-key.pem")), &self.key_pem).unwrap();
    }

    /// `cnf."x5t#S256"` for a token bound to this certificate (RFC 8705).
    pub fn x5t_s256(&self) -> String {
        use sha2::Digest;
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&self.der))
    }

    /// Lower-case hex SHA-256 of the DER certificate (what Envoy reports).
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        Pki::with_ca_name(dir, "meshguard test mesh CA")
    }

    /// A PKI whose CA has the common name `ca_name` (another mesh's CA, say).
    pub fn with_ca_name(dir: &Path, ca_name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        sp.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        sp.distinguished_name
            .push(DnType::CommonName, "meshguard test server");
        let server_cert = sp.signed_by(&server_key, &issuer).unwrap();

        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            p
        };
        Pki {
            dir: dir.to_path_buf(),
            ca_pem: ca_cert.pem(),
            ca_file: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert.pem()),
            server_key: write("server-key.pem", &server_key.serialize_pem()),
            issuer,
        }
    }

    /// A workload certificate with a SPIFFE URI SAN, signed by the mesh CA.
    pub fn workload(&self, spiffe_id: &str) -> ClientCert {
        self.issue(spiffe_id, false, false)
    }

    /// A workload certificate that is also a server certificate for `localhost`/`127.0.0.1`
    /// (what a server-side sidecar presents).
    pub fn server_workload(&self, spiffe_id: &str) -> ClientCert {
        self.issue(spiffe_id, true, false)
    }

    /// A workload certificate of the mesh CA that expired in 2021.
    pub fn expired_workload(&self, spiffe_id: &str) -> ClientCert {
        self.issue(spiffe_id, false, true)
    }

    fn issue(&self, spiffe_id: &str, server: bool, expired: bool) -> ClientCert {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let names = if server {
            vec!["localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(names).unwrap();
        if server {
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        p.subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "workload");
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signing keys and tokens (jsonwebtoken, not jwt-simple)

pub struct Signer {
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    key: jsonwebtoken::EncodingKey,
    pub jwk: Value,
}

impl Signer {
    pub fn rsa(kid: &str) -> Signer {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let pem = fs::read_to_string(repo().join("tests/fixtures/rsa-2048.pem")).unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be())});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::RS256,
            key: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwk,
        }
    }

    pub fn es256(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::ES256,
            key: jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk,
        }
    }

    pub fn es384(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let raw = kp.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..49]), "y": URL_SAFE_NO_PAD.encode(&raw[49..97])});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::ES384,
            key: jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk,
        }
    }

    pub fn ed25519(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw())});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::EdDSA,
            key: jsonwebtoken::EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk,
        }
    }

    /// Signs `claims` with this key and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    pub fn sign_as(
        &self,
        alg: jsonwebtoken::Algorithm,
        kid: Option<&str>,
        claims: &Value,
    ) -> String {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

pub fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Claims valid now, with `extra` merged in (`null` removes a claim).
pub fn claims(extra: Value) -> Value {
    let n = now();
    let mut c =
        json!({"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": n - 5, "exp": n + 600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server for the JWKS endpoint and the echo upstream

#[derive(Debug, Clone)]
pub struct ServerRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ServerReply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

type Handler = dyn Fn(&ServerRequest) -> ServerReply + Send + Sync;

/// Answers one request by writing on the connection itself (any misbehaviour allowed); returns
/// whether the connection may serve another request.
pub type Responder = dyn Fn(&ServerRequest, &mut TcpStream) -> bool + Send + Sync;

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub hits: Arc<Mutex<Vec<ServerRequest>>>,
}

impl TestServer {
    /// A server whose answers are [`ServerReply`]s from `handler`.
    pub fn start(handler: Arc<Handler>) -> TestServer {
        TestServer::start_raw(Arc::new(
            move |req: &ServerRequest, conn: &mut TcpStream| write_reply(conn, &handler(req)),
        ))
    }

    /// A server whose `responder` writes each answer itself.
    pub fn start_raw(responder: Arc<Responder>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (stop.clone(), hits.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (responder, hits) = (responder.clone(), h.clone());
                thread::spawn(move || serve(conn, &*responder, &hits));
            }
        });
        TestServer { addr, stop, hits }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn count(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, respond: &Responder, hits: &Mutex<Vec<ServerRequest>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim().to_string());
                if n == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.push((n, v));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = ServerRequest {
            method,
            path,
            headers,
        };
        hits.lock().unwrap().push(req.clone());
        if !respond(&req, &mut conn) {
            return;
        }
    }
}

/// Writes `reply` (after its delay; status 0 closes without an answer). Keeps the connection
/// when the answer was written.
fn write_reply(conn: &mut TcpStream, reply: &ServerReply) -> bool {
    if !reply.delay.is_zero() {
        thread::sleep(reply.delay);
    }
    if reply.status == 0 {
        return false; // "down": close without an answer
    }
    let out = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    conn.write_all(out.as_bytes()).is_ok()
}

/// The JWKS endpoint: serves whatever document, status and delay the test sets (status 0 closes
/// the connection without an answer), or misbehaves on the socket as a [`JwksFault`] says, and
/// counts fetches (every path; [`JwksServer::fetches`] counts [`JWKS_PATH`]).
pub struct JwksServer {
    pub server: TestServer,
    pub doc: Arc<Mutex<ServerReply>>,
    fault: Arc<Mutex<JwksFault>>,
}

pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// A way for the JWKS server to misbehave, on every path, until [`JwksServer::restore`]. Faults
/// that send a body send the current document (padded, cut or with the wrong status or type),
/// so only the check that the fault is about can refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksFault {
    /// Answers the document set with [`JwksServer::set`] (after its delay).
    None,
    /// Closes the connection (FIN) before any response byte.
    CloseBeforeHeaders,
    /// Resets the connection (RST: `SO_LINGER` 0) before any response byte.
    ResetBeforeHeaders,
    /// `200`, `content-length` 1000 more than the document's length N, N/2 bytes, then close.
    Truncated,
    /// Headers and half the document, then silence for this long (or until the client closes).
    Stall(Duration),
    /// Headers and half the document, then RST.
    ResetMidBody,
    /// `200` with a body of at least this many bytes: the document padded with JSON whitespace,
    /// streamed from a small buffer (a valid JWKS, so only a size check can refuse it).
    Oversized(usize),
    /// `302` with a `location` (and the document as its body).
    Redirect,
    /// `200` with the document as `text/html`.
    HtmlContentType,
    /// `200 application/json` whose body is not JSON.
    NotJson,
    /// `200 application/json`, a JSON JWKS whose only key cannot be used (symmetric).
    NoUsableKey,
    /// This status, with the document as its body.
    Status(u16),
}

impl JwksServer {
    pub fn start(doc: String) -> JwksServer {
        let state = Arc::new(Mutex::new(ServerReply {
            status: 200,
            body: doc,
            delay: Duration::ZERO,
        }));
        let fault = Arc::new(Mutex::new(JwksFault::None));
        let (s, f) = (state.clone(), fault.clone());
        let server = TestServer::start_raw(Arc::new(
            move |_req: &ServerRequest, conn: &mut TcpStream| {
                let reply = s.lock().unwrap().clone();
                let fault = *f.lock().unwrap();
                answer_with_fault(conn, &reply, fault)
            },
        ));
        JwksServer {
            server,
            doc: state,
            fault,
        }
    }

    pub fn fetches(&self) -> usize {
        self.server.count(JWKS_PATH)
    }

    pub fn set(&self, status: u16, doc: String) {
        *self.doc.lock().unwrap() = ServerReply {
            status,
            body: doc,
            delay: Duration::ZERO,
        };
    }

    /// Answers after `delay` (slower than the fetch timeout means a timeout).
    pub fn set_slow(&self, delay: Duration) {
        self.doc.lock().unwrap().delay = delay;
    }

    /// Misbehaves as `fault` says from the next request on.
    pub fn set_fault(&self, fault: JwksFault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Back to answering the document set with [`JwksServer::set`].
    pub fn restore(&self) {
        self.set_fault(JwksFault::None);
    }
}

/// Writes one JWKS answer as `fault` says; whether the connection may serve another request.
fn answer_with_fault(conn: &mut TcpStream, reply: &ServerReply, fault: JwksFault) -> bool {
    let doc = reply.body.as_bytes();
    let half = &doc[..doc.len() / 2];
    let head = |status: u16, content_type: &str, length: usize| {
        format!("HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n\r\n")
    };
    let json = "application/json";
    let send = |conn: &mut TcpStream, parts: &[&[u8]]| {
        parts.iter().all(|p| conn.write_all(p).is_ok()) && conn.flush().is_ok()
    };
    // Closing the socket then sends RST instead of FIN.
    let reset = |conn: &TcpStream| {
        let _ = socket2::SockRef::from(conn).set_linger(Some(Duration::ZERO));
    };
    match fault {
        JwksFault::None => write_reply(conn, reply),
        JwksFault::CloseBeforeHeaders => false,
        JwksFault::ResetBeforeHeaders => {
            reset(conn);
            false
        }
        JwksFault::Truncated => {
            send(conn, &[head(200, json, doc.len() + 1000).as_bytes(), half]);
            false
        }
        JwksFault::Stall(stall) => {
            if send(conn, &[head(200, json, doc.len()).as_bytes(), half]) {
                // Silence until the client gives up (closes) or `stall` passes.
                let _ = conn.set_read_timeout(Some(stall));
                let _ = conn.read(&mut [0u8; 1]);
            }
            false
        }
        JwksFault::ResetMidBody => {
            if send(conn, &[head(200, json, doc.len()).as_bytes(), half]) {
                // Let the client read the headers first, so the reset lands mid-body.
                thread::sleep(Duration::from_millis(300));
            }
            reset(conn);
            false
        }
        JwksFault::Oversized(size) => {
            let size = size.max(doc.len());
            if send(conn, &[head(200, json, size).as_bytes(), doc]) {
                let pad = vec![b' '; 64 * 1024];
                let mut left = size - doc.len();
                while left > 0 {
                    let n = left.min(pad.len());
                    if conn.write_all(&pad[..n]).is_err() {
                        return false;
                    }
                    left -= n;
                }
            }
            false
        }
        JwksFault::Redirect => {
            let h = format!(
                "HTTP/1.1 302 Found\r\nlocation: /moved{JWKS_PATH}\r\ncontent-type: {json}\r\ncontent-length: {}\r\n\r\n",
                doc.len()
            );
            send(conn, &[h.as_bytes(), doc]);
            false
        }
        JwksFault::HtmlContentType => {
            send(conn, &[head(200, "text/html", doc.len()).as_bytes(), doc]);
            false
        }
        JwksFault::NotJson => {
            let body = b"<html><body>not JSON {\"keys\": [</body></html>";
            send(conn, &[head(200, json, body.len()).as_bytes(), body]);
            false
        }
        JwksFault::NoUsableKey => {
            let body = br#"{"keys":[{"kty":"oct","kid":"sym","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}"#;
            send(conn, &[head(200, json, body.len()).as_bytes(), body]);
            false
        }
        JwksFault::Status(status) => {
            send(conn, &[head(status, json, doc.len()).as_bytes(), doc]);
            false
        }
    }
}

/// The upstream: answers 200 with a JSON echo of the request line and headers it received.
pub fn echo_upstream() -> TestServer {
    TestServer::start(Arc::new(|req: &ServerRequest| {
        let body =
            json!({"method": req.method, "path": req.path, "headers": req.headers}).to_string();
        ServerReply {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Envoy

pub struct Envoy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, u16>,
}

/// What an Envoy config needs to know about the test's world.
pub struct World<'a> {
    pub pki: &'a Pki,
    pub upstream_port: u16,
    pub jwks_port: u16,
}

/// An Envoy bootstrap: an mTLS listener (`mtls`; client certificate optional, validated against
/// the test CA when presented) and a plaintext listener (`plain`), both with meshguard in front of
/// the echo upstream, and an `idp` cluster for the JWKS. `plugin` is the plugin configuration as `google.protobuf.StringValue`
/// JSON (or, with `as_struct`, as a `google.protobuf.Struct`).
pub fn bootstrap(world: &World<'_>, plugin: &Value, as_struct: bool) -> String {
    let configuration = if as_struct {
        format!(
            "\"@type\": type.googleapis.com/google.protobuf.Struct\n                  value: {}",
            plugin
        )
    } else {
        format!(
            "\"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: {}",
            serde_json::to_string(&plugin.to_string()).unwrap()
        )
    };
    let hcm = format!(
        r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: meshguard
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: meshguard
                root_id: meshguard
                configuration:
                  {configuration}
                vm_config:
                  vm_id: meshguard
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#,
        wasm = wasm_path().display(),
    );
    format!(
        r#"
static_resources:
  listeners:
  - name: mtls
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: false
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {server_cert}}}
              private_key: {{filename: {server_key}}}
            validation_context:
              trusted_ca: {{filename: {ca}}}
      filters:{hcm}
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:{hcm}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
  - name: idp
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: idp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {jwks}}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#,
        server_cert = world.pki.server_cert.display(),
        server_key = world.pki.server_key.display(),
        ca = world.pki.ca_file.display(),
        upstream = world.upstream_port,
        jwks = world.jwks_port,
    )
}

impl Envoy {
    fn spawn(yaml: &str, concurrency: u32, tag: &str) -> (Child, PathBuf, PathBuf, PathBuf) {
        let dir = temp_dir(tag);
        let cfg = dir.join("envoy.yaml");
        fs::write(&cfg, yaml).unwrap();
        let log = dir.join("envoy.log");
        let admin_file = dir.join("admin.txt");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&cfg)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["-l", "info", "--component-log-level", "wasm:debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                fs::File::create(dir.join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        (child, dir, log, admin_file)
    }

    /// Starts Envoy and waits (polling, with a deadline) until it is ready.
    pub fn start(yaml: &str, concurrency: u32) -> Envoy {
        let (child, dir, log, admin_file) = Envoy::spawn(yaml, concurrency, "envoy");
        let mut envoy = Envoy {
            child: Some(child),
            dir,
            log,
            admin: "127.0.0.1:1".parse().unwrap(),
            listeners: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = envoy.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "Envoy exited ({status}) during start:\n{}",
                    envoy.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready in 60 s:\n{}",
                envoy.log_text()
            );
            if let Ok(text) = fs::read_to_string(&admin_file) {
                if let Ok(addr) = text.trim().parse() {
                    envoy.admin = addr;
                    if matches!(http_get(addr, "/ready"), Ok((200, _))) {
                        break;
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        let (_, body) = http_get(envoy.admin, "/listeners?format=json").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        for l in v["listener_statuses"].as_array().unwrap() {
            let port = l["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap();
            envoy
                .listeners
                .insert(l["name"].as_str().unwrap().to_string(), port as u16);
        }
        envoy
    }

    /// Runs Envoy expecting it to refuse the configuration; returns its log.
    pub fn expect_refusal(yaml: &str) -> String {
        let (mut child, _dir, log, admin_file) = Envoy::spawn(yaml, 2, "refuse");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                return fs::read_to_string(&log).unwrap_or_default();
            }
            if Instant::now() > deadline || admin_file.exists() && ready_at(&admin_file) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "Envoy accepted a bad configuration:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `envoy --mode validate` on a config file.
    pub fn validate(config: &Path) -> (bool, String) {
        let out = Command::new(envoy_bin())
            .args([
                "--mode",
                "validate",
                "--use-dynamic-base-id",
                "-l",
                "warn",
                "-c",
            ])
            .arg(config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    pub fn port(&self, listener: &str) -> u16 {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// Blocks until Envoy exits (for `make run`).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.as_mut().unwrap().wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of a meshguard stat in Envoy's `/stats` (`meshguard.meshguard.<name>: N`).
    pub fn meshguard_stat(&self, name: &str) -> u64 {
        let suffix = format!("meshguard.meshguard.{name}: ");
        self.stats()
            .lines()
            .find_map(|l| {
                l.find(&suffix)
                    .map(|i| l[i + suffix.len()..].trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no stat {name}"))
    }

    pub fn stats(&self) -> String {
        http_get(self.admin, "/stats")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

fn ready_at(admin_file: &Path) -> bool {
    fs::read_to_string(admin_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .is_some_and(|a| matches!(http_get(a, "/ready"), Ok((200, _))))
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- Envoy log (last 80 lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Plain HTTP GET (admin interface).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let r = parse_response(&buf).ok_or_else(|| std::io::Error::other("bad response"))?;
    Ok((r.status, r.body))
}

// ---------------------------------------------------------------------------------------------
// HTTPS client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// `"200"`, or `"<status> <error_description>"` for a refusal: what the tables compare.
    pub fn describe(&self) -> String {
        match self.status {
            200 => "200".to_string(),
            s => format!(
                "{s} {}",
                self.json()["error_description"].as_str().unwrap_or("")
            ),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    /// For echo-upstream answers: the value of a header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let v = self.json();
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|h| (h[0].as_str() == Some(name)).then(|| h[1].as_str().unwrap().to_string()))
    }
}

pub struct Client {
    pub port: u16,
    /// `None`: plaintext HTTP.
    config: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    pub fn new(port: u16, pki: &Pki, cert: Option<&ClientCert>) -> Client {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match cert {
            Some(c) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        Client {
            port,
            config: Some(Arc::new(config)),
        }
    }

    /// Plaintext HTTP/1.1 (no TLS at all).
    pub fn plain(port: u16) -> Client {
        Client { port, config: None }
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let raw: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        self.request("GET", path, &raw)
    }

    /// One request on a new connection; header values are raw bytes.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Response {
        self.try_request(method, path, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> Result<Response, String> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut stream: Box<dyn ReadWrite> = match &self.config {
            Some(config) => {
                let conn =
                    rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap())
                        .map_err(|e| e.to_string())?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
            None => Box::new(tcp),
        };
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n")
                .into_bytes();
        for (n, v) in headers {
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        stream.write_all(&req).map_err(|e| e.to_string())?;
        let buf = read_response(&mut stream).map_err(|e| e.to_string())?;
        parse_response(&buf)
            .ok_or_else(|| format!("unparseable response: {}", String::from_utf8_lossy(&buf)))
    }
}

/// Reads one response: up to its Content-Length, or the last chunk, or the end of the stream.
/// (Waiting for the server to close would cost Envoy's 1 s delayed-close timeout per request.)
fn read_response(stream: &mut dyn ReadWrite) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = response_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {
                return Ok(buf)
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where the response in `buf` ends, once it is complete.
fn response_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        return (buf.len() >= head_end + len).then_some(head_end + len);
    }
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let body = &buf[head_end..];
        return body
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|i| head_end + i + 5);
    }
    None
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_response(buf: &[u8]) -> Option<Response> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// Polls `f` until it returns true or the deadline passes.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Parses `WWW-Authenticate: Bearer k="v", …` into its parameters.
pub fn challenge_params(v: &str) -> HashMap<String, String> {
    let rest = v
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a Bearer challenge: {v}"));
    rest.split("\", ")
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shipped Envoy YAML: loaded as it is in the repository, then made runnable here (relative file
// names resolved against a directory the test prepared, fixed ports mapped to the test's).

pub struct Shipped {
    pub path: PathBuf,
    pub yaml: serde_yaml_ng::Value,
}

impl Shipped {
    pub fn load(relative: &str) -> Shipped {
        let path = repo().join(relative);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Shipped {
            path,
            yaml: serde_yaml_ng::from_str(&text).unwrap(),
        }
    }

    /// Every Envoy `*.yaml` under `dir` (relative to the repository); Compose files
    /// (`docker-compose.yaml`) are not Envoy configs and are left out.
    pub fn all_under(dir: &str) -> Vec<String> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(p).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().contains("compose"))
                {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&repo().join(dir), &mut out);
        out.sort();
        out.iter()
            .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
            .collect()
    }

    /// The YAML with relative `filename`s under `base` and ports mapped (unmapped stay).
    pub fn runnable(&self, base: &Path, ports: &HashMap<u64, u64>) -> String {
        fn fix(v: &mut serde_yaml_ng::Value, base: &Path, ports: &HashMap<u64, u64>) {
            use serde_yaml_ng::Value as Y;
            match v {
                Y::Mapping(m) => {
                    for (k, val) in m.iter_mut() {
                        match (k.as_str(), &*val) {
                            (Some("filename"), Y::String(f)) if !f.starts_with('/') => {
                                *val = Y::String(base.join(f).display().to_string());
                            }
                            (Some("port_value"), Y::Number(n)) => {
                                if let Some(p) = n.as_u64().and_then(|p| ports.get(&p)) {
                                    *val = Y::Number((*p).into());
                                }
                            }
                            _ => fix(val, base, ports),
                        }
                    }
                }
                Y::Sequence(s) => s.iter_mut().for_each(|x| fix(x, base, ports)),
                _ => {}
            }
        }
        let mut y = self.yaml.clone();
        fix(&mut y, base, ports);
        serde_yaml_ng::to_string(&y).unwrap()
    }

    /// Every meshguard plugin configuration in the file, as the bytes Envoy would hand over
    /// (found by the same code as `meshguard-check`).
    pub fn plugin_configs(&self) -> Vec<Vec<u8>> {
        let text = fs::read_to_string(&self.path).unwrap();
        meshguard::check::find_plugin_configs(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
            .into_iter()
            .map(|f| f.bytes)
            .collect()
    }
}

/// The SPIFFE IDs of the sidecar-pair example's workloads.
pub const SAAS_API: &str = "spiffe://cluster.local/ns/saas/sa/saas-api";
pub const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
pub const REPORTS: &str = "spiffe://cluster.local/ns/batch/sa/reports";

/// Lays `dir` out as the shipped examples expect: `pki/` (mesh CA `ca.pem`; `server.pem`;
/// workload certificates `saas-api.pem` (also a server certificate), `frontend.pem`,
/// `reports.pem`; each with its `-key.pem`) and `meshguard.wasm`.
pub fn example_layout(dir: &Path) -> Pki {
    let pki_dir = dir.join("pki");
    fs::create_dir_all(&pki_dir).unwrap();
    let pki = Pki::new(&pki_dir);
    pki.server_workload(SAAS_API).write(&pki_dir, "saas-api");
    pki.workload(FRONTEND).write(&pki_dir, "frontend");
    pki.workload(REPORTS).write(&pki_dir, "reports");
    std::os::unix::fs::symlink(wasm_path(), dir.join("meshguard.wasm")).unwrap();
    pki
}

/// A new temporary directory laid out by [`example_layout`].
pub fn example_dir(tag: &str) -> (PathBuf, Pki) {
    let dir = temp_dir(tag);
    let pki = example_layout(&dir);
    (dir, pki)
}

/// Starts the shipped Envoy YAML `relative` with 2 workers from `dir` (laid out by
/// [`example_layout`]), its fixed ports mapped by `ports` (0: picked by Envoy; unlisted stay).
pub fn start_shipped_in(relative: &str, dir: &Path, ports: &[(u64, u64)]) -> Envoy {
    let ports: HashMap<u64, u64> = ports.iter().copied().collect();
    Envoy::start(&Shipped::load(relative).runnable(dir, &ports), 2)
}

/// Starts a single-Envoy shipped example (ports 10443/9901 → picked by Envoy, 8080 →
/// `upstream`, 8081 → `jwks`) with 2 workers, from a new directory (`pki.dir`'s parent).
pub fn start_shipped(relative: &str, tag: &str, upstream: u16, jwks: u16) -> (Envoy, Pki, Shipped) {
    let (dir, pki) = example_dir(tag);
    let ports = [
        (10443, 0),
        (9901, 0),
        (8080, u64::from(upstream)),
        (8081, u64::from(jwks)),
    ];
    let envoy = start_shipped_in(relative, &dir, &ports);
    (envoy, pki, Shipped::load(relative))
}

/// A plaintext HTTP/1.1 connection reused for many requests (keep-alive), for volume tests.
pub struct KeepAlive {
    port: u16,
    stream: Option<TcpStream>,
}

impl KeepAlive {
    pub fn new(port: u16) -> KeepAlive {
        KeepAlive { port, stream: None }
    }

    /// Sends one GET; reconnects once if the connection was closed.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        for _ in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                s.set_nodelay(true).unwrap();
                self.stream = Some(s);
            }
            let s = self.stream.as_mut().unwrap();
            if s.write_all(req.as_bytes()).is_ok() {
                if let Ok(buf) = read_response(s) {
                    if let Some(r) = parse_response(&buf) {
                        if r.header("connection") == Some("close") {
                            self.stream = None;
                        }
                        return r;
                    }
                }
            }
            self.stream = None;
        }
        panic!("GET {path}: connection failed twice");
    }
}

/// Envoy's heap in bytes (admin `/memory`, `allocated`).
pub fn envoy_allocated(envoy: &Envoy) -> u64 {
    let (_, body) = http_get(envoy.admin, "/memory").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["allocated"].as_str().unwrap().parse().unwrap()
}

/// meshguard's JSON log lines with `"meshguard": event` from an Envoy log.
pub fn json_log_lines(log: &str, event: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| l.find("{\"").map(|i| &l[i..]))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v["meshguard"] == event)
        .collect()
}

/// What most integration tests run against: a test PKI, the JWKS server `idp`, an echo
/// upstream, and Envoy with `workers` workers running meshguard with `plugin` (as a `Struct` when
/// `as_struct`).
pub struct Stack {
    pub envoy: Envoy,
    pub pki: Pki,
    pub idp: JwksServer,
    pub upstream: TestServer,
}

impl Stack {
    pub fn start(
        tag: &str,
        idp: JwksServer,
        plugin: &Value,
        as_struct: bool,
        workers: u32,
    ) -> Stack {
        let pki = Pki::new(&temp_dir(tag));
        let upstream = echo_upstream();
        let world = World {
            pki: &pki,
            upstream_port: upstream.port(),
            jwks_port: idp.server.port(),
        };
        let envoy = Envoy::start(&bootstrap(&world, plugin, as_struct), workers);
        Stack {
            envoy,
            pki,
            idp,
            upstream,
        }
    }
}

/// A step-by-step check printed as a table: step, expected, got, PASS/FAIL.
#[derive(Default)]
pub struct Table {
    pub rows: Vec<(String, String, String, bool)>,
}

impl Table {
    pub fn check(&mut self, step: &str, expected: &str, got: String, pass: bool) {
        self.rows.push((step.into(), expected.into(), got, pass));
    }

    /// A step whose outcome is a response: passes when `r.describe()` is `expected`.
    pub fn expect(&mut self, step: &str, expected: &str, r: &Response) {
        let got = r.describe();
        let pass = got == expected;
        self.check(step, expected, got, pass);
    }

    /// A step on what the upstream received: header `name` is `want`, or absent for `None`.
    pub fn upstream(&mut self, step: &str, r: &Response, name: &str, want: Option<&str>) {
        let got = r.upstream_header(name);
        let show = |v: Option<&str>| v.unwrap_or("(removed)").to_string();
        let pass = got.as_deref() == want;
        self.check(step, &show(want), show(got.as_deref()), pass);
    }

    pub fn print(&self) {
        let w = |i: usize| {
            self.rows
                .iter()
                .map(|r| [&r.0, &r.1, &r.2][i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (a, b, c) = (w(0).max(4), w(1).max(8), w(2).max(3));
        println!(
            "\n{:<a$}  {:<b$}  {:<c$}  result",
            "step", "expected", "got"
        );
        println!("{}", "-".repeat(a + b + c + 12));
        for (step, exp, got, pass) in &self.rows {
            println!(
                "{step:<a$}  {exp:<b$}  {got:<c$}  {}",
                if *pass { "PASS" } else { "FAIL" }
            );
        }
        println!();
    }

    pub fn assert_all_pass(&self) {
        let failed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| !r.3)
            .map(|r| r.0.as_str())
            .collect();
        assert!(failed.is_empty(), "steps failed: {failed:?}");
    }
}
