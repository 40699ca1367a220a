//! Fleet-wide limits: one call of Envoy's rate-limit service protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) per request, answered by a
//! service every replica shares (Limitador, envoyproxy/ratelimit).
//!
//! Pure: the messages are encoded and decoded here (the few fields meshguard uses, field numbers
//! from `envoy/service/ratelimit/v3/rls.proto`); the host sends the bytes over gRPC and hands back
//! what came in, or why nothing did.

use crate::jwt::principal::header_safe;

/// Where and how the fleet's service is called (`rateLimits.service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The Envoy cluster of the rate-limit service (HTTP/2).
    pub cluster: String,
    /// The `:authority` of the calls: `authority` as configured, else the host of an Istio
    /// cluster name (`outbound|<port>|<subset>|<host>`), else the cluster name.
    pub authority: String,
    /// What `proxy_grpc_call` is given: an encoded `envoy.config.core.v3.GrpcService` naming the
    /// cluster and the authority (built once; see [`grpc_target`]).
    pub target: Vec<u8>,
    /// The request's `domain` (Limitador's namespace).
    pub domain: String,
    /// The longest a request waits for the answer.
    pub timeout_ms: u32,
    /// What a failure (timeout, no connection, `UNKNOWN`, an unreadable answer) does: `true`
    /// lets the request through, `false` answers 503.
    pub fail_open: bool,
}

/// `envoy.config.core.v3.GrpcService` with its `envoy_grpc` target (the fields meshguard sets).
#[derive(Clone, PartialEq, prost::Message)]
struct GrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<EnvoyGrpc>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
    #[prost(string, tag = "2")]
    authority: String,
}

/// The `proxy_grpc_call` target: a `GrpcService` naming `cluster` and `authority`. Given a bare
/// cluster name instead, Envoy uses the name as the calls' `:authority`, which an Istio cluster
/// name (`outbound|8081||rls.svc`, with `|`) is not; and a name could happen to parse as a
/// protobuf. An explicit message has neither problem.
pub fn grpc_target(cluster: &str, authority: &str) -> Vec<u8> {
    use prost::Message as _;
    GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: cluster.to_string(),
            authority: authority.to_string(),
        }),
    }
    .encode_to_vec()
}

/// The default `:authority` for `cluster`: the host of an Istio cluster name
/// (`outbound|<port>|<subset>|<host>`), else the cluster name itself.
pub fn default_authority(cluster: &str) -> &str {
    let mut parts = cluster.split('|');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("outbound" | "inbound"), Some(_), Some(_), Some(host), None) if !host.is_empty() => {
            host
        }
        _ => cluster,
    }
}

/// The gRPC service and method meshguard calls.
pub const GRPC_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const GRPC_METHOD: &str = "ShouldRateLimit";

/// The longest descriptor value sent; a longer identity is sent as its stable hash.
pub const MAX_VALUE_LEN: usize = 256;
/// At most this many of the service's `response_headers_to_add` are copied to an answer.
pub const MAX_SERVICE_HEADERS: usize = 8;

/// At most this many entries a fleet policy adds to its descriptor (`fleet.entries`).
pub const MAX_ENTRIES: usize = 4;
/// The longest value of such an entry (bytes); a longer claim value counts as absent.
pub const MAX_ENTRY_VALUE_LEN: usize = 64;
/// The entry keys meshguard always sends: configured entries cannot take them.
pub const RESERVED_KEYS: [&str; 2] = ["policy", "identity"];

/// An entry a fleet policy adds to its descriptor after `policy` and `identity`
/// (`policies.<name>.fleet.entries[]`): a key and where its value comes from, always a verified
/// fact, never a client header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySpec {
    pub key: String,
    pub value: EntryValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryValue {
    /// The matched route's name (`routes[].name`, else `routes[<i>]`).
    Route,
    /// A string claim of the verified token. When the request has no verified token, the claim
    /// is missing, is not a string, is longer than [`MAX_ENTRY_VALUE_LEN`] or holds a control
    /// character, the value is `default`; without a `default` the entry is left out and the
    /// request is counted under the shorter descriptor.
    Claim {
        path: Vec<String>,
        default: Option<String>,
    },
}

/// The value of a claim entry from the claim as the token has it (`None`: absent or unusable).
pub fn claim_entry_value(claim: Option<&serde_json::Value>) -> Option<String> {
    let s = claim?.as_str()?;
    (s.len() <= MAX_ENTRY_VALUE_LEN && !s.chars().any(char::is_control)).then(|| s.to_string())
}

/// One descriptor: the policy it counts against and the caller it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Index of the policy in `rateLimits.policies`.
    pub policy: usize,
    /// `(key, value)` in order: `policy`, `identity`, then the policy's configured entries.
    pub entries: Vec<(String, String)>,
    /// What this request costs against it (the route's `cost`).
    pub cost: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RateLimitRequest {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(message, repeated, tag = "2")]
    descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<Entry>,
    /// `google.protobuf.UInt64Value hits_addend = 3`: only when it differs from the request's.
    #[prost(message, optional, tag = "3")]
    hits_addend: Option<UInt64Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UInt64Value {
    #[prost(uint64, tag = "1")]
    value: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    response_headers_to_add: Vec<HeaderValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HeaderValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(message, optional, tag = "2")]
    current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    duration_until_reset: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RateLimit {
    #[prost(uint32, tag = "1")]
    requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    unit: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const CODE_OK: i32 = 1;
const CODE_OVER_LIMIT: i32 = 2;

/// The `ShouldRateLimit` request for `descriptors`. The request's `hits_addend` is the largest
/// cost; a descriptor whose cost differs carries its own (`RateLimitDescriptor.hits_addend`).
pub fn encode_request(domain: &str, descriptors: &[Descriptor]) -> Vec<u8> {
    let hits = descriptors.iter().map(|d| d.cost).max().unwrap_or(1);
    let request = RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors
            .iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                hits_addend: (d.cost != hits).then_some(UInt64Value { value: d.cost }),
            })
            .collect(),
        hits_addend: u32::try_from(hits).unwrap_or(u32::MAX),
    };
    prost::Message::encode_to_vec(&request)
}

/// A descriptor value for an identity: as it is, or its stable hash when it is too long.
pub fn descriptor_value(identity: &str) -> String {
    if identity.len() <= MAX_VALUE_LEN {
        identity.to_string()
    } else {
        format!("hash:{:016x}", super::stable_hash(identity))
    }
}

/// What the service answered, as meshguard uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: Code,
    /// The numbers of the status that decides: the first `OVER_LIMIT` one when refused, else the
    /// one with the least remaining. With its descriptor's index.
    pub status: Option<(usize, Status)>,
    /// The service's `response_headers_to_add` that are rate-limit headers
    /// ([`SERVICE_HEADERS`]) with header-safe values, at most [`MAX_SERVICE_HEADERS`].
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
    /// `UNKNOWN` or a code this version does not define: a failure.
    Unknown,
}

/// One descriptor's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// `current_limit.requests_per_unit` (0: the service named no limit).
    pub limit: u64,
    /// The limit's unit in seconds (0: unknown unit).
    pub unit_seconds: u64,
    pub remaining: u64,
    /// `duration_until_reset` in ns.
    pub reset_ns: u64,
}

/// The unit of `RateLimitResponse.RateLimit.Unit` in seconds; 0 for `UNKNOWN` and undefined ones.
fn unit_seconds(unit: i32) -> u64 {
    match unit {
        1 => 1,
        2 => 60,
        3 => 3_600,
        4 => 86_400,
        5 => 30 * 86_400,
        6 => 365 * 86_400,
        7 => 7 * 86_400,
        _ => 0,
    }
}

/// Decodes a `RateLimitResponse`; `None` when it is not one.
pub fn decode_response(bytes: &[u8]) -> Option<Answer> {
    let response: RateLimitResponse = prost::Message::decode(bytes).ok()?;
    let RateLimitResponse {
        overall_code,
        statuses,
        response_headers_to_add,
    } = response;
    let code = match overall_code {
        CODE_OK => Code::Ok,
        CODE_OVER_LIMIT => Code::OverLimit,
        _ => Code::Unknown,
    };
    let numbers = |s: &DescriptorStatus| {
        let reset = s.duration_until_reset.as_ref().map_or(0, |d| {
            let secs = u64::try_from(d.seconds).unwrap_or(0);
            let nanos = u64::try_from(d.nanos).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        });
        Status {
            limit: s
                .current_limit
                .as_ref()
                .map_or(0, |l| u64::from(l.requests_per_unit)),
            unit_seconds: s.current_limit.as_ref().map_or(0, |l| unit_seconds(l.unit)),
            remaining: u64::from(s.limit_remaining),
            reset_ns: reset,
        }
    };
    let over = statuses.iter().position(|s| s.code == CODE_OVER_LIMIT);
    let least = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| s.current_limit.is_some())
        .min_by_key(|(_, s)| s.limit_remaining)
        .map(|(i, _)| i);
    let status = match code {
        Code::OverLimit => over.or(least),
        Code::Ok | Code::Unknown => least,
    }
    .and_then(|i| statuses.get(i).map(|s| (i, numbers(s))));
    let headers = response_headers_to_add
        .into_iter()
        .filter(|h| header_safe(&h.value))
        .filter_map(|h| {
            let name = SERVICE_HEADERS
                .iter()
                .find(|n| n.eq_ignore_ascii_case(&h.key))?;
            Some((*name, h.value))
        })
        .take(MAX_SERVICE_HEADERS)
        .collect();
    Some(Answer {
        code,
        status,
        headers,
    })
}

/// The `response_headers_to_add` a service may set on an answer: rate-limit headers only (what
/// Limitador and envoyproxy/ratelimit add), so a service cannot set cookies or CORS headers.
pub const SERVICE_HEADERS: [&str; 8] = [
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "x-envoy-ratelimited",
    "x-ratelimit-policy",
];

/// Why no answer could be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The call could not be started (no such cluster).
    Dispatch,
    /// No answer within `timeoutMs` (gRPC `DEADLINE_EXCEEDED`).
    Timeout,
    /// The call failed: no connection, or another gRPC status.
    Unavailable,
    /// The service answered `UNKNOWN` (it could not decide, e.g. its storage is down).
    Unknown,
    /// The answer was not a `RateLimitResponse`.
    Malformed,
    /// Envoy never reported the call's end: meshguard's own deadline (`timeoutMs` plus a
    /// margin, checked on the worker's timer) ended the wait.
    Deadline,
}

/// Every outcome of a fleet call, each with its metric `fleet.<code>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// `OK` without a status naming a limit (`current_limit`): no limit of the service matched
    /// the descriptors. Allowed, without `RateLimit` headers (there are no numbers).
    OkNoLimit,
    OverLimit,
    Failed(Failure),
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::OkNoLimit,
        Outcome::OverLimit,
        Outcome::Failed(Failure::Dispatch),
        Outcome::Failed(Failure::Timeout),
        Outcome::Failed(Failure::Unavailable),
        Outcome::Failed(Failure::Unknown),
        Outcome::Failed(Failure::Malformed),
        Outcome::Failed(Failure::Deadline),
    ];

    pub const fn code(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::OkNoLimit => "ok_no_limit",
            Outcome::OverLimit => "over_limit",
            Outcome::Failed(Failure::Dispatch) => "failure.dispatch",
            Outcome::Failed(Failure::Timeout) => "failure.timeout",
            Outcome::Failed(Failure::Unavailable) => "failure.unavailable",
            Outcome::Failed(Failure::Unknown) => "failure.unknown",
            Outcome::Failed(Failure::Malformed) => "failure.malformed",
            Outcome::Failed(Failure::Deadline) => "failure.deadline",
        }
    }
}

/// Why a call that closed without an answer failed: its gRPC status (`DEADLINE_EXCEEDED` is 4)
/// and how long after it started (ms). Envoy 1.40 closes a call that ran past its timeout with
/// `UNAVAILABLE` (14), like a refused connection (verified: tests/fleet.rs), so a call that
/// lasted (nearly: Envoy's timer and the wall clock disagree by a millisecond or so; measured
/// 299–302 ms for 300) its whole `timeout_ms` is a timeout whatever the status.
pub fn failure_of_close(status: u32, elapsed_ms: u64, timeout_ms: u32) -> Failure {
    let nearly = u64::from(timeout_ms).saturating_mul(9) / 10;
    if status == 4 || elapsed_ms >= nearly {
        Failure::Timeout
    } else {
        Failure::Unavailable
    }
}

/// How much longer than `timeoutMs` a request waits for Envoy to report its call's end before
/// meshguard ends the wait itself ([`Failure::Deadline`]): Envoy's own timer fires first.
pub const DEADLINE_MARGIN_MS: u64 = 250;

/// The fleet calls one worker's requests wait for: call token → the waiting HTTP context and
/// the deadline (ms since the epoch) after which meshguard ends the wait itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waits {
    calls: std::collections::BTreeMap<u32, (u32, u64)>,
}

impl Waits {
    /// Context `context` waits for call `token`, started at `now_ms` with `timeout_ms`.
    pub fn start(&mut self, token: u32, context: u32, now_ms: u64, timeout_ms: u32) {
        let deadline = now_ms
            .saturating_add(u64::from(timeout_ms))
            .saturating_add(DEADLINE_MARGIN_MS);
        self.calls.insert(token, (context, deadline));
    }

    /// The context waiting for call `token` (it stays registered until [`Waits::end`]).
    pub fn waiter(&self, token: u32) -> Option<u32> {
        self.calls.get(&token).map(|(context, _)| *context)
    }

    /// Call `token` is no longer waited for (answered, or its request is gone).
    pub fn end(&mut self, token: u32) {
        self.calls.remove(&token);
    }

    /// Removes and returns (token, context) of the calls past their deadline at `now_ms`, or of
    /// all calls when `None` (the root context is going away).
    pub fn expire(&mut self, now_ms: Option<u64>) -> Vec<(u32, u32)> {
        let due: Vec<(u32, u32)> = self
            .calls
            .iter()
            .filter(|(_, (_, deadline))| now_ms.is_none_or(|now| *deadline <= now))
            .map(|(token, (context, _))| (*token, *context))
            .collect();
        for (token, _) in &due {
            self.calls.remove(token);
        }
        due
    }
}

/// Warn lines about failed calls, per worker: at most [`LogBudget::LINES`] per
/// [`LogBudget::WINDOW_MS`]; the first line of a later window says how many were left out. A
/// service that is down fails every request, and one log line per request would flood Envoy's
/// log (the `fleet.failure.*` counters count every one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBudget {
    /// When the current window began (`None`: no line yet).
    window_start_ms: Option<u64>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const LINES: u32 = 5;
    pub const WINDOW_MS: u64 = 10_000;

    /// May a line be logged at `now_ms`? `Some(n)`: yes, and `n` lines were left out before it
    /// (to be said in it); `None`: no (counted).
    pub fn admit(&mut self, now_ms: u64) -> Option<u64> {
        let current = self
            .window_start_ms
            .is_some_and(|start| (start..start.saturating_add(Self::WINDOW_MS)).contains(&now_ms));
        if !current {
            self.window_start_ms = Some(now_ms);
            self.used = 0;
        }
        if self.used >= Self::LINES {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests;
