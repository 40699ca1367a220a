//! A tiny HTTP/1.1 server the test controls: the JWKS endpoint (with faults on demand) and the
//! echo upstream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::json;

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
