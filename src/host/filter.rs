//! HTTP context: gather the request's inputs, let the core decide (a second time after catching
//! up with shared keys on a key miss) and settle the final plan once, apply the decision.
//!
//! Two cases make a request wait instead of being answered at once:
//! - a token names a `kid` the provider's keys lack: this worker first catches up with the shared
//!   key set; if that does not help and the provider's refetch slot is free, it fetches the JWKS
//!   itself and the request waits for the answer, so the first token signed with a rotated key
//!   passes;
//! - a provider has never had keys (just configured, or its `jwksUri` changed): the request waits
//!   for the first fetch, at most the provider's `jwksTimeoutMs`, and the root context gives it
//!   another look when keys arrive or the wait is over.
//!
//! While a request waits, its body and trailers wait too (see `dispatch`).

use std::rc::Rc;

use crate::config::KeySource;
use crate::decision::{Decision, LocalReply, Reason};
use crate::engine::{Events, FleetCall, Inputs, Plan};
use crate::identity::{Peer, PeerFacts};
use crate::jwks_sync::Lease;
use crate::jwt::crypto::HostCrypto;
use crate::jwt::TokenError;
use crate::metrics::{identity_bucket, refused_identity, Verdict};
use crate::ratelimit::fleet::{self, Failure};
use crate::request::RequestView;

use super::abi::{self, LogLevel, MapType};
use super::buckets::SharedData;
use super::jwks::{self, Answer};
use super::worker::{Worker, MAX_ORPHANS, MAX_WAITING};
use super::{log, log_enabled, now_ns};

/// `FilterHeadersStatus` / `FilterDataStatus` / `FilterTrailersStatus` values.
pub const CONTINUE: u32 = 0;
/// Headers: `StopIteration`; trailers: `StopIteration`; data: `StopIterationAndBuffer`.
pub const STOP: u32 = 1;

/// Extra wait beyond `jwksTimeoutMs` for the timer that gives waiting requests another look.
const WAIT_MARGIN_MS: u64 = 250;

pub struct Filter {
    worker: Rc<Worker>,
    id: u32,
    /// Headers to add to the upstream's response (remaining quota).
    response_headers: Vec<(&'static str, String)>,
    /// A kid-miss refetch this request waits for: call token, provider, lease.
    refetch: Option<(u32, usize, Lease)>,
    /// Waiting for a provider's first keys: the provider, until when (ms since the epoch).
    waiting: Option<(usize, u64)>,
    /// The fleet call this request waits for: its token, the call, the decision so far, when
    /// it started (ns since the epoch).
    fleet: Option<(u32, FleetCall, Decision, u64)>,
    /// The peer's SPIFFE ID was read before the fleet call: read again when its answer
    /// resumes the request, so the filter state keeps it (a fresh `Peer` knows nothing).
    fleet_peer_read: bool,
    /// The request was allowed on (its headers edited, iteration continued).
    allowed: bool,
    /// For metrics: the matched route and the provider that verified the token (as last
    /// decided), and when the request's headers arrived (ns since the epoch).
    route: Option<usize>,
    provider: Option<usize>,
    started_ns: u64,
}

impl Filter {
    pub fn new(worker: Rc<Worker>, id: u32) -> Filter {
        Filter {
            worker,
            id,
            response_headers: Vec::new(),
            refetch: None,
            waiting: None,
            fleet: None,
            fleet_peer_read: false,
            allowed: false,
            route: None,
            provider: None,
            started_ns: 0,
        }
    }

    /// The HTTP call this request waits for (its answer is to be routed here).
    pub fn pending_call(&self) -> Option<u32> {
        self.refetch.map(|(token, _, _)| token)
    }

    /// True once the request was allowed on: only then may its body and trailers pass. While it
    /// waits for keys, or when its local reply could not be sent, a `Continue` for a body chunk
    /// would let Envoy forward it unjudged.
    pub fn passes_body(&self) -> bool {
        self.allowed
    }

    pub fn on_request_headers(&mut self) -> u32 {
        let Some(now) = now_ns() else {
            return refuse_unjudged("the host clock is unavailable");
        };
        self.started_ns = now;
        let (plan, events, peer) = self.evaluate(now);
        let now_ms = now / 1_000_000;
        // A request that waits is decided again later: its plan is dropped unsettled (it charged
        // nothing).
        if let Some(index) = events.key_miss {
            if jwks::claim_refetch(&self.worker, index, now_ms) {
                if let Some((token, lease)) = jwks::start(&self.worker, index, now_ms, true) {
                    log(
                        LogLevel::Info,
                        "meshguard: unknown kid: refetching the JWKS; the request waits",
                    );
                    self.refetch = Some((token, index, lease));
                    return STOP;
                }
            }
        }
        if let (Decision::Deny(_), Some(index)) = (plan.decision(), events.keys_unavailable) {
            if let Some(until) = self.first_keys_wait(index, now_ms) {
                log(
                    LogLevel::Debug,
                    "meshguard: provider has no keys yet: the request waits for the first fetch",
                );
                self.waiting = Some((index, until));
                self.worker.waiting.borrow_mut().push(self.id);
                return STOP;
            }
        }
        self.finish(plan, events.provider, now, &peer)
    }

    /// Until when a request may wait for provider `index`'s first keys: `None` when the provider
    /// is not remote, has had keys before (dropped as stale: fail closed at once), its first
    /// fetch failed already (answer at once rather than wait for a retry), or too many requests
    /// wait already.
    fn first_keys_wait(&self, index: usize, now_ms: u64) -> Option<u64> {
        let provider = self.worker.engine.config.providers.get(index)?;
        let KeySource::Remote(remote) = &provider.keys else {
            return None;
        };
        let pending = self.worker.keys.borrow().first_fetch_pending(index);
        (pending && self.worker.waiting.borrow().len() < MAX_WAITING)
            .then(|| now_ms + remote.timeout_ms + WAIT_MARGIN_MS)
    }

    /// Another look at a request waiting for first keys (called by the root, with this request's
    /// stream made current): judged once the first fetch is over, or the wait is. Returns true
    /// while it still waits.
    pub fn retry(&mut self, now_ms: u64) -> bool {
        let Some((index, until)) = self.waiting else {
            return false;
        };
        if now_ms < until && self.worker.keys.borrow().first_fetch_pending(index) {
            return true;
        }
        let Some(now) = now_ns() else {
            return true;
        };
        let (plan, events, peer) = self.evaluate(now);
        self.waiting = None;
        if self.finish(plan, events.provider, now, &peer) == CONTINUE {
            let _ = abi::continue_request();
        }
        false
    }

    /// The answer to this request's kid-miss refetch.
    pub fn on_http_call_response(&mut self, answer: &Answer) {
        let Some((expected, index, lease)) = self.refetch.take() else {
            return;
        };
        if answer.token != expected {
            self.refetch = Some((expected, index, lease));
            return;
        }
        let Some(now) = now_ns() else {
            jwks::abandon(&self.worker, index, lease);
            refuse_unjudged("the host clock is unavailable");
            return;
        };
        jwks::finish(&self.worker, index, lease, answer, now / 1_000_000);
        let (plan, events, peer) = self.evaluate(now);
        if self.finish(plan, events.provider, now, &peer) == CONTINUE {
            let _ = abi::continue_request();
        }
    }

    /// Pays the plan and answers; when the request also needs the fleet's answer (its local
    /// buckets admitted it), asks for it: `STOP` while it waits.
    fn finish(&mut self, mut plan: Plan, provider: Option<usize>, now: u64, peer: &Peer) -> u32 {
        self.route = plan.route();
        self.provider = provider;
        let call = plan.take_fleet();
        let decision = self.settle(plan, now);
        let service = (self.worker.engine.config.rate_limits.as_ref())
            .and_then(|rl| rl.fleet.as_ref())
            .map(|f| &f.service);
        let (Some(call), Some(service), Decision::Allow(fwd)) = (call, service, &decision) else {
            return self.apply(decision, peer);
        };
        if fwd.dry_run.is_some() {
            return self.apply(decision, peer);
        }
        match abi::grpc_call(
            &service.target,
            fleet::GRPC_SERVICE,
            fleet::GRPC_METHOD,
            &call.message,
            service.timeout_ms,
        ) {
            Ok(token) => {
                (self.worker.fleet_calls.borrow_mut()).start(
                    token,
                    self.id,
                    now / 1_000_000,
                    service.timeout_ms,
                );
                self.fleet = Some((token, call, decision, now));
                self.fleet_peer_read = peer.spiffe_if_read().is_some();
                STOP
            }
            Err(e) => {
                self.fleet_warn(now, &format!("call not started ({e:?})"));
                let decision = self.fleet_settle(decision, call, Err(Failure::Dispatch));
                self.apply(decision, peer)
            }
        }
    }

    /// The fleet's answer to this request's call (the response message), or why there is none.
    pub fn on_grpc_answer(&mut self, token: u32, answer: Result<Vec<u8>, GrpcEnd>) {
        let Some((expected, call, decision, started)) = self.fleet.take() else {
            return;
        };
        if token != expected {
            self.fleet = Some((expected, call, decision, started));
            return;
        }
        if let Ok(mut calls) = self.worker.fleet_calls.try_borrow_mut() {
            calls.end(token);
        }
        let timeout_ms = (self.worker.engine.config.rate_limits.as_ref())
            .and_then(|rl| rl.fleet.as_ref())
            .map_or(0, |f| f.service.timeout_ms);
        // No clock: take the call as lasting its whole timeout.
        let now = now_ns();
        let elapsed_ms = now.map_or(u64::MAX, |n| n.saturating_sub(started) / 1_000_000);
        let answer = answer.map_err(|end| match end {
            GrpcEnd::Unreadable => (Failure::Malformed, None),
            GrpcEnd::Closed(status) => (
                fleet::failure_of_close(status, elapsed_ms, timeout_ms),
                Some(status),
            ),
            GrpcEnd::Deadline => (Failure::Deadline, None),
        });
        if let Err((f, status)) = &answer {
            self.fleet_warn(
                now.unwrap_or(started),
                &format!("call failed ({f:?}, grpc status {status:?}, after {elapsed_ms} ms)"),
            );
        }
        let answer = answer.map_err(|(f, _)| f);
        let decision = self.fleet_settle(decision, call, answer.as_deref().map_err(|f| *f));
        let peer = Peer::lazy(&HostPeer);
        if std::mem::take(&mut self.fleet_peer_read) {
            let _ = peer.spiffe();
        }
        if self.apply(decision, &peer) == CONTINUE {
            let _ = abi::continue_request();
        }
    }

    /// A Warn line about a failed fleet call, within the worker's [`fleet::LogBudget`].
    fn fleet_warn(&self, now_ns: u64, what: &str) {
        let admitted = (self.worker.fleet_log.try_borrow_mut().ok())
            .and_then(|mut b| b.admit(now_ns / 1_000_000));
        let Some(left_out) = admitted else {
            return;
        };
        let more = if left_out > 0 {
            format!("; {left_out} more such lines left out (see the fleet.failure.* counters)")
        } else {
            String::new()
        };
        log(
            LogLevel::Warn,
            &format!("meshguard: rate-limit service {what}{more}"),
        );
    }

    fn fleet_settle(
        &self,
        decision: Decision,
        call: FleetCall,
        answer: Result<&[u8], Failure>,
    ) -> Decision {
        let mut events = Events::default();
        let decision = self
            .worker
            .engine
            .fleet_settle(decision, call, answer, &mut events);
        self.worker.metrics.record(&events);
        decision
    }

    pub fn on_response_headers(&mut self) {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            let _ = abi::set_header(MapType::Response, name, value.as_bytes());
        }
    }

    /// The request is gone: a fetch it started will never be answered here.
    pub fn on_delete(&mut self) {
        if let Some((token, _, _, _)) = self.fleet.take() {
            if let Ok(mut calls) = self.worker.fleet_calls.try_borrow_mut() {
                calls.end(token);
            }
        }
        if let Some((token, index, lease)) = self.refetch.take() {
            // The fetch goes on (the host owns it): its answer reaches the root, which finishes
            // it, so the refetch slot it used is not wasted.
            let mut orphans = self.worker.orphans.borrow_mut();
            if orphans.len() < MAX_ORPHANS {
                orphans.insert(token, (index, lease));
            } else {
                drop(orphans);
                jwks::abandon(&self.worker, index, lease);
            }
        }
        if self.waiting.take().is_some() {
            if let Ok(mut w) = self.worker.waiting.try_borrow_mut() {
                w.retain(|id| *id != self.id);
            }
        }
    }

    /// Reads the request, decides (catching up with shared keys once on a key miss, and then
    /// deciding again: deciding reads only, so the first plan is simply dropped).
    fn evaluate(&self, now: u64) -> (Plan, Events, Peer) {
        // Unreadable headers become none: the core then refuses the request (no `:path`: 400).
        let raw = abi::headers(MapType::Request).unwrap_or_default();
        let headers = crate::wire::decode_map(&raw).unwrap_or_default();
        // A missing or non-UTF-8 `:path` (HTTP/2 allows one) becomes "", which the core refuses
        // with 400: never a default path that could match a weaker route.
        let path = headers
            .iter()
            .find(|(n, _)| *n == ":path")
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or("");
        let peer = Peer::lazy(&HostPeer);
        let req = RequestView {
            path,
            headers: &headers,
            peer: &peer,
        };
        let (mut plan, mut events) = self.decide(&req, now);
        if plan.refusal().is_some_and(|r| key_miss(r.reason))
            && self.worker.keys.borrow_mut().sync(
                &self.worker.engine.config,
                &self.worker.metrics,
                now / 1_000_000,
            )
        {
            (plan, events) = self.decide(&req, now);
        }
        (plan, events, peer)
    }

    fn decide(&self, req: &RequestView<'_>, now_ns: u64) -> (Plan, Events) {
        let mut events = Events::default();
        let plan = self.with_inputs(now_ns, |inputs| {
            self.worker.engine.decide(req, inputs, &mut events)
        });
        self.worker.metrics.record(&events);
        (plan, events)
    }

    /// Pays the plan of the request's final decision: once per request.
    fn settle(&self, plan: Plan, now_ns: u64) -> Decision {
        let mut events = Events::default();
        let decision = self.with_inputs(now_ns, |inputs| {
            self.worker.engine.settle(plan, inputs, &mut events)
        });
        self.worker.metrics.record(&events);
        decision
    }

    fn with_inputs<T>(&self, now_ns: u64, f: impl FnOnce(&Inputs<'_>) -> T) -> T {
        let keys = self.worker.keys.borrow();
        let config = &self.worker.engine.config;
        let crypto: Option<&dyn HostCrypto> = config.host_crypto.then_some(&self.worker.crypto);
        // Always passed: with `tokenCache.maxEntries: 0` it keeps no verified tokens, but still
        // remembers failed and deferred ones for the failed-auth budget.
        let cache = Some(&self.worker.cache);
        let inputs = Inputs {
            keys: &*keys,
            buckets: &SharedData,
            crypto,
            cache,
            now_ns,
        };
        f(&inputs)
    }

    /// Applies a decision: forward (`CONTINUE`) or answer locally (`STOP`).
    fn apply(&mut self, decision: Decision, peer: &Peer) -> u32 {
        set_facts(&decision, &self.worker.engine.config, peer);
        let metrics = &self.worker.metrics;
        if metrics.time_this_one() {
            if let Some(now) = now_ns() {
                metrics.decision_time(now.saturating_sub(self.started_ns) / 1_000);
            }
        }
        match decision {
            Decision::Allow(fwd) => {
                metrics.allowed(self.route, self.provider);
                if let Some(would) = &fwd.dry_run {
                    metrics.refused(Verdict::DryRun, would, self.route, self.provider, None);
                    if log_enabled(LogLevel::Info) {
                        log(
                            LogLevel::Info,
                            &decision_line("dry_run_would_deny", would, peer, None),
                        );
                    }
                } else {
                    log(LogLevel::Debug, "meshguard: allow");
                }
                // Every edit must take: a client's copy of an identity header or the consumed
                // token left in place would reach the upstream.
                let map = MapType::Request;
                let mut edited = Ok(());
                for name in &fwd.remove_headers {
                    edited = edited.and(abi::remove_header(map, name));
                }
                for (name, value) in fwd.headers_to_set() {
                    edited = edited.and(abi::set_header(map, name, value.as_bytes()));
                }
                if let Some(path) = &fwd.set_path {
                    edited = edited.and(abi::set_header(map, ":path", path.as_bytes()));
                }
                if let Err(e) = edited {
                    return refuse_unjudged(&format!(
                        "editing the request's headers failed ({e:?})"
                    ));
                }
                self.response_headers = fwd.response_headers;
                self.allowed = true;
                CONTINUE
            }
            Decision::Deny(reply) => {
                let identity = refused_identity(
                    reply.caller.as_deref(),
                    || peer.spiffe().map(|id| id.uri),
                    || peer.source_address().map(str::to_string),
                )
                .map(|id| identity_bucket(&id));
                let bucket = identity.as_deref();
                metrics.refused(Verdict::Deny, &reply, self.route, self.provider, bucket);
                if log_enabled(LogLevel::Info) {
                    log(LogLevel::Info, &decision_line("deny", &reply, peer, bucket));
                }
                let headers: Vec<(&str, &[u8])> = reply
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_bytes()))
                    .collect();
                if let Err(e) = abi::send_local_response(
                    u32::from(reply.status),
                    &reply.reason.response_code_details(),
                    &headers,
                    reply.body.as_bytes(),
                ) {
                    log(
                        LogLevel::Error,
                        &format!("meshguard: local reply failed ({e:?}): request stays stopped"),
                    );
                }
                STOP
            }
        }
    }
}

/// Puts the decision's facts in Envoy's filter state (`wasm.meshguard.*`), as `filterState`
/// says. The SPIFFE ID of a denial is read if need be (the log line reads it too); an allowed
/// request's only when the core already read it: no extra host call on the allowed path.
fn set_facts(decision: &Decision, config: &crate::config::Config, peer: &Peer) {
    let read;
    let spiffe = match decision {
        Decision::Deny(_) if config.filter_state != crate::config::FilterState::Off => {
            read = peer.spiffe().map(|id| id.uri);
            read.as_deref()
        }
        Decision::Deny(_) | Decision::Allow(_) => peer.spiffe_if_read(),
    };
    let mut failed = None;
    crate::decision::facts::each(decision, config, spiffe, |key, value| {
        if failed.is_none() {
            failed = abi::set_property(key, value.as_bytes()).err();
        }
    });
    if let Some(e) = failed {
        log(
            LogLevel::Debug,
            &format!("meshguard: filter state not set ({e:?})"),
        );
    }
}

/// How a gRPC call ended without a usable message.
pub enum GrpcEnd {
    /// The host could not hand over the response message.
    Unreadable,
    /// Closed with this gRPC status, no message.
    Closed(u32),
    /// Envoy never reported the end: meshguard's deadline passed ([`fleet::DEADLINE_MARGIN_MS`]).
    Deadline,
}

/// Answers 503 to a request meshguard cannot judge: never a pass.
fn refuse_unjudged(why: &str) -> u32 {
    log(
        LogLevel::Error,
        &format!("meshguard: {why}: request refused"),
    );
    let _ = abi::send_local_response(503, "meshguard_unavailable", &[], b"");
    STOP
}

/// The log line of a denial or dry-run would-deny, with what the host knows of the request and
/// the refused identity's bucket in `meshguard_refused_identities_total`.
fn decision_line(event: &str, reply: &LocalReply, peer: &Peer, bucket: Option<&str>) -> String {
    let context = crate::decision::log::Context {
        request_id: property_text(&["request", "id"]),
        source_address: peer.source_address().map(str::to_string),
        spiffe_id: peer.spiffe().map(|id| id.uri),
        identity_bucket: bucket.map(str::to_string),
    };
    crate::decision::log::line(event, reply, context)
}

fn key_miss(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::InvalidToken(TokenError::KeysUnavailable | TokenError::UnknownKey)
    )
}

/// The downstream connection's facts, read from Envoy's properties when the core asks.
struct HostPeer;

fn property(path: &[&str]) -> Option<Vec<u8>> {
    abi::property(path).ok().flatten()
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
