//! HTTP context: gather the request's inputs, call the core once, apply the decision.
//!
//! When a token names a `kid` the provider's keys lack, this worker first catches up with the
//! shared key set; if that does not help and the provider's refetch slot is free, it fetches the
//! JWKS itself and the request waits for it, so the first token signed with a rotated key passes.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::decision::{Decision, LocalReply, Reason};
use crate::engine::{Events, Inputs};
use crate::identity::{Peer, PeerFacts};
use crate::jwks_sync::Lease;
use crate::jwt::crypto::HostCrypto;
use crate::jwt::TokenError;
use crate::request::RequestView;

use super::buckets::SharedData;
use super::root::Worker;
use super::{jwks, log, now_ms, now_ns};

pub struct Filter {
    worker: Rc<Worker>,
    /// Headers to add to the upstream's response (remaining quota).
    response_headers: Vec<(&'static str, String)>,
    /// A kid-miss refetch this request waits for: call token, provider, lease.
    refetch: Option<(u32, usize, Lease)>,
}

impl Filter {
    pub fn new(worker: Rc<Worker>) -> Filter {
        Filter {
            worker,
            response_headers: Vec::new(),
            refetch: None,
        }
    }

    /// Reads the request, decides (catching up with shared keys once on a key miss).
    fn evaluate(&self) -> (Decision, Events, Peer) {
        let headers = self.get_http_request_headers_bytes();
        // A missing or non-UTF-8 `:path` (HTTP/2 allows one) becomes "", which the core refuses
        // with 400: never a default path that could match a weaker route.
        let path = headers
            .iter()
            .find(|(n, _)| n == ":path")
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or("")
            .to_string();
        let peer = Peer::lazy(&HostPeer);
        let now = now_ns(self.get_current_time());
        let req = RequestView {
            path: &path,
            headers: &headers,
            peer: &peer,
        };
        let (mut decision, mut events) = self.decide(&req, now);
        let missed = match &decision {
            Decision::Deny(reply) => key_miss(reply.reason),
            Decision::Allow(fwd) => fwd.dry_run.as_ref().is_some_and(|r| key_miss(r.reason)),
        };
        let now_ms = now / 1_000_000;
        if missed
            && self.worker.keys.borrow_mut().sync(
                &self.worker.engine.config,
                &self.worker.metrics,
                now_ms,
            )
        {
            (decision, events) = self.decide(&req, now);
        }
        (decision, events, peer)
    }

    fn decide(&self, req: &RequestView<'_>, now_ns: u64) -> (Decision, Events) {
        let keys = self.worker.keys.borrow();
        let config = &self.worker.engine.config;
        let crypto: Option<&dyn HostCrypto> = config.host_crypto.then_some(&self.worker.crypto);
        let cache = (config.token_cache_entries > 0).then_some(&self.worker.cache);
        let inputs = Inputs {
            keys: &*keys,
            buckets: &SharedData,
            crypto,
            cache,
            now_ns,
        };
        let mut events = Events::default();
        let decision = self.worker.engine.decide(req, &inputs, &mut events);
        self.worker.metrics.record(&events);
        (decision, events)
    }

    /// Applies a decision: forward (`Continue`) or answer locally (`Pause`).
    fn apply(&mut self, decision: Decision, peer: &Peer) -> Action {
        let metrics = &self.worker.metrics;
        match decision {
            Decision::Allow(fwd) => {
                metrics.allowed();
                if let Some(would) = &fwd.dry_run {
                    metrics.dry_run_would_deny();
                    log(
                        LogLevel::Info,
                        &self.decision_line("dry_run_would_deny", would, peer),
                    );
                } else {
                    log(LogLevel::Debug, "meshguard: allow");
                }
                for name in &fwd.remove_headers {
                    self.set_http_request_header(name, None);
                }
                for (name, value) in &fwd.set_headers {
                    self.set_http_request_header(name, Some(value));
                }
                if let Some(path) = &fwd.set_path {
                    self.set_http_request_header(":path", Some(path));
                }
                self.response_headers = fwd.response_headers;
                Action::Continue
            }
            Decision::Deny(reply) => {
                metrics.denied(reply.reason);
                log(LogLevel::Info, &self.decision_line("deny", &reply, peer));
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                self.send_http_response(
                    u32::from(reply.status),
                    headers,
                    Some(reply.body.as_bytes()),
                );
                Action::Pause
            }
        }
    }

    /// One JSON line per denial or dry-run would-deny: reason, status, route, request id and
    /// identity keys (iss, sub, client_id only when verified; SPIFFE ID, source IP). Never the
    /// token or other claims.
    fn decision_line(&self, event: &str, reply: &LocalReply, peer: &Peer) -> String {
        let caller = reply.caller.clone().unwrap_or_default();
        serde_json::json!({
            "meshguard": event,
            "status": reply.status,
            "reason": reply.reason.code(),
            "route": reply.route,
            "request_id": property_text(&["request", "id"]),
            "source_address": peer.source_address(),
            "spiffe_id": peer.spiffe().map(|id| id.uri),
            "iss": caller.iss,
            "sub": caller.sub,
            "client_id": caller.client_id,
        })
        .to_string()
    }
}

fn key_miss(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::InvalidToken(TokenError::KeysUnavailable | TokenError::UnknownKey)
    )
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((expected, index, lease)) = self.refetch.take() else {
            return;
        };
        if token != expected {
            return;
        }
        let now = now_ms(self.get_current_time());
        let worker = self.worker.clone();
        jwks::finish(self, &worker, index, lease, body_size, now);
        let (decision, _, peer) = self.evaluate();
        if self.apply(decision, &peer) == Action::Continue {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (decision, events, peer) = self.evaluate();
        if let Some(index) = events.key_miss {
            let now = now_ms(self.get_current_time());
            if jwks::claim_refetch(&self.worker, index, now) {
                let worker = self.worker.clone();
                if let Some((token, lease)) = jwks::start(self, &worker, index, now, true) {
                    log(
                        LogLevel::Info,
                        "meshguard: unknown kid: refetching the JWKS; the request waits",
                    );
                    self.refetch = Some((token, index, lease));
                    return Action::Pause;
                }
            }
        }
        self.apply(decision, &peer)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}

/// The downstream connection's facts, read from Envoy's properties when the core asks.
struct HostPeer;

fn property(path: &[&str]) -> Option<Vec<u8>> {
    proxy_wasm::hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
}

fn property_text(path: &[&str]) -> Option<String> {
    property(path)
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
}

impl PeerFacts for HostPeer {
    fn mtls(&self) -> bool {
        property(&["connection", "mtls"]).is_some_and(|b| b.first() == Some(&1))
    }

    fn uri_san(&self) -> Option<String> {
        property_text(&["connection", "uri_san_peer_certificate"])
    }

    fn certificate_sha256(&self) -> Option<String> {
        property_text(&["connection", "sha256_peer_certificate_digest"])
    }

    fn source_address(&self) -> Option<String> {
        property_text(&["source", "address"])
    }
}
