//! HTTPS client (optionally presenting a client certificate), keep-alive connections for volume
//! tests, and reading responses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::*;

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
