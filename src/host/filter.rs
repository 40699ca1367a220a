//! HTTP context: gather the request's inputs, call the core once, apply the decision.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::decision::{Decision, LocalReply, Reason};
use crate::engine::{Events, Inputs};
use crate::identity::Peer;
use crate::jwt::TokenError;
use crate::request::RequestView;

use super::buckets::SharedData;
use super::root::Worker;
use super::{log, now_ns};

pub struct Filter {
    worker: Rc<Worker>,
    /// Headers to add to the upstream's response (remaining quota).
    response_headers: Vec<(&'static str, String)>,
}

impl Filter {
    pub fn new(worker: Rc<Worker>) -> Filter {
        Filter {
            worker,
            response_headers: Vec::new(),
        }
    }

    fn property_string(&self, path: Vec<&str>) -> Option<String> {
        self.get_property(path)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
    }

    fn property_bool(&self, path: Vec<&str>) -> bool {
        self.get_property(path)
            .is_some_and(|b| b.first() == Some(&1))
    }

    fn peer(&self) -> Peer {
        let mtls = self.property_bool(vec!["connection", "mtls"]);
        Peer {
            mtls,
            uri_san: if mtls {
                self.property_string(vec!["connection", "uri_san_peer_certificate"])
            } else {
                None
            },
            certificate_sha256: if mtls {
                self.property_string(vec!["connection", "sha256_peer_certificate_digest"])
            } else {
                None
            },
            source_address: self.property_string(vec!["source", "address"]),
        }
    }

    fn decide(&self, req: &RequestView<'_>, now_ns: u64) -> Decision {
        let keys = self.worker.keys.borrow();
        let inputs = Inputs {
            keys: &*keys,
            buckets: &SharedData,
            now_ns,
        };
        let mut events = Events::default();
        let decision = self.worker.engine.decide(req, &inputs, &mut events);
        self.worker.metrics.record(&events);
        decision
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        // A missing or non-UTF-8 `:path` (HTTP/2 allows one) becomes "", which the core refuses
        // with 400: never a default path that could match a weaker route.
        let path = headers
            .iter()
            .find(|(n, _)| n == ":path")
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or("")
            .to_string();
        let peer = self.peer();
        let now = now_ns(self.get_current_time());
        let req = RequestView {
            path: &path,
            headers: &headers,
            peer: &peer,
        };

        let mut decision = self.decide(&req, now);
        // Keys another worker fetched may not be loaded here yet: catch up once and retry (also
        // in dry-run, so a would-deny is not counted for keys this worker merely lacked).
        let key_miss = |reason: Reason| {
            matches!(
                reason,
                Reason::InvalidToken(TokenError::KeysUnavailable | TokenError::UnknownKey)
            )
        };
        let missed = match &decision {
            Decision::Deny(reply) => key_miss(reply.reason),
            Decision::Allow(fwd) => fwd.dry_run.as_ref().is_some_and(|r| key_miss(r.reason)),
        };
        if missed
            && self
                .worker
                .keys
                .borrow_mut()
                .sync(&self.worker.engine.config)
        {
            decision = self.decide(&req, now);
        }

        match decision {
            Decision::Allow(fwd) => {
                if let Some(would) = &fwd.dry_run {
                    self.worker.metrics.dry_run_would_deny();
                    log(LogLevel::Info, &decision_line("dry_run_would_deny", would));
                } else {
                    log(LogLevel::Debug, "meshguard: allow");
                }
                for name in &fwd.remove_headers {
                    self.set_http_request_header(name, None);
                }
                for (name, value) in &fwd.set_headers {
                    self.set_http_request_header(name, Some(value));
                }
                self.response_headers = fwd.response_headers;
                Action::Continue
            }
            Decision::Deny(reply) => {
                log(LogLevel::Debug, &decision_line("deny", &reply));
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
}

/// One JSON line for a denial or a dry-run would-deny: reason code, status, route; no token.
fn decision_line(event: &str, reply: &LocalReply) -> String {
    serde_json::json!({
        "meshguard": event,
        "status": reply.status,
        "reason": reply.reason.code(),
        "route": reply.route,
    })
    .to_string()
}
