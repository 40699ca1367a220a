//! The one table from reason to HTTP answer: status, `WWW-Authenticate` (RFC 6750 §3), JSON body,
//! the log code (also the metric label `reason`) and the 429 headers. Descriptions are fixed
//! strings; no token or claim text ever appears.
//!
//! [`reason_table!`] reads the table once and writes from it [`Reason::ALL`], [`Reason::COUNT`]
//! and [`Reason::row`], a single `match` with one arm per reason and no wildcard: a reason added
//! to one of the enums below stops the build until it has its row, and cannot be left out of
//! `ALL` (the metrics) either. Each reason's answer is built once per configuration, with its
//! realm ([`Answers`]); a denial clones it and adds only what varies (the scopes a route needs,
//! a policy's quota).

use crate::jwt::extract::RequestError;
use crate::jwt::Algorithm;
use crate::jwt::TokenError;
use crate::policy::Denial;
use crate::ratelimit::{Limit, Verdict};

/// Why a request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No credentials where a token is required.
    MissingToken,
    /// The request's credentials cannot be read (RFC 6750 `invalid_request`).
    InvalidRequest(RequestError),
    /// The token is not acceptable (RFC 6750 `invalid_token`).
    InvalidToken(TokenError),
    /// Authenticated (or no token needed), but not allowed here.
    Forbidden(Forbidden),
    /// RFC 6585 429.
    RateLimited(RateLimited),
    /// RFC 9449: the `DPoP` proof is refused (`invalid_dpop_proof`).
    InvalidDpopProof(DpopProof),
    /// RFC 9449 §8: a `DPoP-Nonce` from this proxy is required (`use_dpop_nonce`); the answer
    /// carries a fresh one.
    UseDpopNonce,
    /// The replay cache could not record the proof (full or contended): refused, as a proof
    /// that is not recorded could be replayed.
    DpopUnavailable,
}

/// Why a DPoP proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopProof {
    /// Missing, malformed or not matching the request (the log line says which rule).
    Invalid,
    /// Its `jti` was seen already within its validity window, by any worker of this proxy.
    Replayed,
    /// A proof without an access token.
    WithoutToken,
}

/// Why a request was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimited {
    /// A policy's bucket is empty.
    Limit,
    /// The source spent its failed-authentication budget: refused before any signature work.
    FailedAuth,
    /// The bucket could not be updated (CAS retries exhausted) and `onContention` is `deny`.
    Contention,
    /// The fleet's rate-limit service answered `OVER_LIMIT`.
    Fleet,
    /// The fleet's rate-limit service gave no usable answer and its `failureMode` is `deny`.
    ServiceUnavailable,
}

/// Authorization refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// The token lacks scopes the route needs (RFC 6750 `insufficient_scope` with `scope=`).
    InsufficientScope,
    /// Roles, claim conditions or issuer (`insufficient_scope`, fixed description).
    InsufficientPermissions,
    /// The route needs a client certificate and the connection has none.
    MtlsRequired,
    /// The peer's SPIFFE ID or namespace is not allowed.
    PeerNotAllowed,
    /// No route matched and unmatched requests are denied with 403.
    NoRoute,
    /// No route matched and unmatched requests are denied with 404.
    NotFound,
}

/// The `WWW-Authenticate` header of an answer (RFC 6750 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// None: no token could fix this (peer, route, rate limit).
    Absent,
    /// `Bearer realm="…"`: the request had no credentials, so no error code (§3.1).
    Realm,
    /// `Bearer realm="…", error="…", error_description="…"`.
    Error,
    /// The same plus `scope="…"`, the scopes the route needs (also in the body).
    Scope,
    /// The error belongs to the `DPoP` challenge (RFC 9449 §7.1): `DPoP realm="…", algs="…",
    /// error="…", error_description="…"`.
    Dpop,
}

/// The rate-limit headers of an answer, beyond the ones every answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// None.
    Absent,
    /// The refusing policy's `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*` and `Retry-After`,
    /// from its verdict ([`limit_headers`]).
    Policy,
    /// `Retry-After: 1`: there is no verdict to report.
    RetryAfterOne,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The reason's place in [`Reason::ALL`]: its metric's slot.
    pub index: usize,
    pub status: u16,
    pub challenge: Challenge,
    /// The body's `error` and, with [`Challenge::Error`] or [`Challenge::Scope`], the
    /// challenge's (an RFC 6750 error code, or `unauthorized` when there were no credentials).
    pub error: &'static str,
    /// The fixed `error_description`.
    pub description: &'static str,
    /// Stable code for logs and the metric label `reason`, e.g. `invalid_token.expired`.
    pub code: &'static str,
    pub quota: Quota,
}

/// Writes `Reason::ALL`, `Reason::COUNT` and `Reason::row` from one list of rows
/// `reason => status, challenge, error, description, code, quota;`, numbering the rows in order.
macro_rules! reason_table {
    (@rows [$($arm:tt)*] [$($all:expr,)*] $count:expr;) => {
        impl Reason {
            /// How many reasons there are.
            pub const COUNT: usize = $count;
            /// Every reason, in table order (`ALL[r.index()] == r`).
            pub const ALL: [Reason; $count] = [$($all,)*];

            /// The reason's row of the table.
            pub const fn row(self) -> Row {
                match self {
                    $($arm)*
                }
            }
        }
    };
    (@rows [$($arm:tt)*] [$($all:expr,)*] $count:expr;
        $variant:ident $(($group:ident :: $leaf:ident))? =>
            $status:literal, $challenge:ident, $error:literal, $description:literal, $code:literal,
            $quota:ident;
        $($rest:tt)*
    ) => {
        reason_table!(@rows
            [$($arm)* Reason::$variant $(($group::$leaf))? => Row {
                index: $count,
                status: $status,
                challenge: Challenge::$challenge,
                error: $error,
                description: $description,
                code: $code,
                quota: Quota::$quota,
            },]
            [$($all,)* Reason::$variant $(($group::$leaf))?,]
            $count + 1;
            $($rest)*
        );
    };
    ($($rows:tt)*) => {
        reason_table!(@rows [] [] 0; $($rows)*);
    };
}

#[rustfmt::skip]
reason_table! {
    // reason => status, challenge, error, description, code, quota;
    MissingToken => 401, Realm, "unauthorized", "authentication required", "missing_token", Absent;

    InvalidRequest(RequestError::MultipleCredentials) =>
        400, Error, "invalid_request", "multiple credentials", "invalid_request.multiple_credentials", Absent;
    InvalidRequest(RequestError::EmptyCredentials) =>
        400, Error, "invalid_request", "empty credentials", "invalid_request.empty_credentials", Absent;
    InvalidRequest(RequestError::InvalidPath) =>
        400, Error, "invalid_request", "invalid path", "invalid_request.invalid_path", Absent;

    InvalidToken(TokenError::Malformed) =>
        401, Error, "invalid_token", "malformed token", "invalid_token.malformed", Absent;
    InvalidToken(TokenError::TooLarge) =>
        401, Error, "invalid_token", "token too large", "invalid_token.too_large", Absent;
    InvalidToken(TokenError::UnsupportedAlgorithm) =>
        401, Error, "invalid_token", "unsupported algorithm", "invalid_token.unsupported_alg", Absent;
    InvalidToken(TokenError::AlgorithmNotAllowed) =>
        401, Error, "invalid_token", "algorithm not allowed", "invalid_token.alg_not_allowed", Absent;
    InvalidToken(TokenError::UnknownIssuer) =>
        401, Error, "invalid_token", "unknown issuer", "invalid_token.issuer", Absent;
    InvalidToken(TokenError::KeysUnavailable) =>
        401, Error, "invalid_token", "signing keys unavailable", "invalid_token.keys_unavailable", Absent;
    InvalidToken(TokenError::UnknownKey) =>
        401, Error, "invalid_token", "unknown signing key", "invalid_token.unknown_kid", Absent;
    InvalidToken(TokenError::AmbiguousKey) =>
        401, Error, "invalid_token", "key id required", "invalid_token.ambiguous_kid", Absent;
    InvalidToken(TokenError::BadSignature) =>
        401, Error, "invalid_token", "invalid signature", "invalid_token.bad_signature", Absent;
    InvalidToken(TokenError::Expired) =>
        401, Error, "invalid_token", "token expired", "invalid_token.expired", Absent;
    InvalidToken(TokenError::NotYetValid) =>
        401, Error, "invalid_token", "token not yet valid", "invalid_token.not_yet_valid", Absent;
    InvalidToken(TokenError::IssuedInFuture) =>
        401, Error, "invalid_token", "token issued in the future", "invalid_token.issued_in_future", Absent;
    InvalidToken(TokenError::MissingExpiration) =>
        401, Error, "invalid_token", "token has no expiration", "invalid_token.missing_exp", Absent;
    InvalidToken(TokenError::LifetimeTooLong) =>
        401, Error, "invalid_token", "token lifetime too long", "invalid_token.lifetime", Absent;
    InvalidToken(TokenError::Audience) =>
        401, Error, "invalid_token", "audience not allowed", "invalid_token.audience", Absent;
    InvalidToken(TokenError::BindingMismatch) =>
        401, Error, "invalid_token", "certificate binding mismatch", "invalid_token.binding", Absent;
    InvalidToken(TokenError::BindingRequired) =>
        401, Error, "invalid_token", "certificate binding required", "invalid_token.binding_required", Absent;
    InvalidToken(TokenError::UnsupportedBinding) =>
        401, Error, "invalid_token", "unsupported token binding", "invalid_token.unsupported_binding", Absent;
    InvalidToken(TokenError::DpopBoundAsBearer) =>
        401, Error, "invalid_token", "DPoP-bound token sent as bearer", "invalid_token.dpop_as_bearer", Absent;
    InvalidToken(TokenError::NotDpopBound) =>
        401, Dpop, "invalid_token", "token not DPoP-bound", "invalid_token.not_dpop_bound", Absent;
    InvalidToken(TokenError::DpopKeyMismatch) =>
        401, Dpop, "invalid_token", "DPoP key mismatch", "invalid_token.dpop_key", Absent;
    InvalidToken(TokenError::DpopRequired) =>
        401, Dpop, "invalid_token", "DPoP-bound token required", "invalid_token.dpop_required", Absent;

    InvalidDpopProof(DpopProof::Invalid) =>
        401, Dpop, "invalid_dpop_proof", "invalid DPoP proof", "invalid_dpop_proof", Absent;
    InvalidDpopProof(DpopProof::Replayed) =>
        401, Dpop, "invalid_dpop_proof", "DPoP proof replayed", "invalid_dpop_proof.replayed", Absent;
    InvalidDpopProof(DpopProof::WithoutToken) =>
        401, Dpop, "invalid_dpop_proof", "DPoP proof without access token", "invalid_dpop_proof.no_token", Absent;
    UseDpopNonce =>
        401, Dpop, "use_dpop_nonce", "DPoP nonce required", "use_dpop_nonce", Absent;
    DpopUnavailable =>
        503, Absent, "temporarily_unavailable", "DPoP replay cache unavailable", "dpop_replay_unavailable", RetryAfterOne;

    Forbidden(Forbidden::InsufficientScope) =>
        403, Scope, "insufficient_scope", "insufficient scope", "insufficient_scope", Absent;
    Forbidden(Forbidden::InsufficientPermissions) =>
        403, Error, "insufficient_scope", "insufficient permissions", "insufficient_permissions", Absent;
    Forbidden(Forbidden::MtlsRequired) =>
        403, Absent, "access_denied", "mutual TLS required", "peer_denied.mtls_required", Absent;
    Forbidden(Forbidden::PeerNotAllowed) =>
        403, Absent, "access_denied", "peer not allowed", "peer_denied.principal", Absent;
    Forbidden(Forbidden::NoRoute) =>
        403, Absent, "access_denied", "no matching route", "no_route", Absent;
    Forbidden(Forbidden::NotFound) =>
        404, Absent, "not_found", "not found", "no_route.not_found", Absent;

    RateLimited(RateLimited::Limit) =>
        429, Absent, "rate_limited", "rate limit exceeded", "rate_limited", Policy;
    RateLimited(RateLimited::FailedAuth) =>
        429, Absent, "rate_limited", "too many failed authentications", "rate_limited.failed_auth", Policy;
    RateLimited(RateLimited::Contention) =>
        429, Absent, "rate_limited", "rate limit exceeded", "rate_limited.contention", RetryAfterOne;
    RateLimited(RateLimited::Fleet) =>
        429, Absent, "rate_limited", "rate limit exceeded", "rate_limited.fleet", Policy;
    RateLimited(RateLimited::ServiceUnavailable) =>
        503, Absent, "temporarily_unavailable", "rate limit service unavailable", "rate_limited.service_unavailable", RetryAfterOne;
}

impl Reason {
    /// The reason's place in [`Reason::ALL`] (its metric's slot).
    pub const fn index(self) -> usize {
        self.row().index
    }

    pub const fn status(self) -> u16 {
        self.row().status
    }

    pub const fn description(self) -> &'static str {
        self.row().description
    }

    /// Stable code for logs and metrics, e.g. `invalid_token.expired`.
    pub const fn code(self) -> &'static str {
        self.row().code
    }

    /// The local reply's response code details (Envoy's `%RESPONSE_CODE_DETAILS%`), derived
    /// from the code: `meshguard_` and the code with `.` as `_`, e.g.
    /// `meshguard_invalid_token_expired` (in the style of Envoy's `local_rate_limited`; no
    /// spaces, which Envoy does not take in details).
    pub fn response_code_details(self) -> String {
        format!("meshguard_{}", self.code().replace('.', "_"))
    }
}

impl From<&Denial> for Reason {
    fn from(d: &Denial) -> Reason {
        match d {
            Denial::TokenRequired => Reason::MissingToken,
            Denial::InsufficientScope(_) => Reason::Forbidden(Forbidden::InsufficientScope),
            Denial::InsufficientPermissions => {
                Reason::Forbidden(Forbidden::InsufficientPermissions)
            }
            Denial::MtlsRequired => Reason::Forbidden(Forbidden::MtlsRequired),
            Denial::PeerNotAllowed => Reason::Forbidden(Forbidden::PeerNotAllowed),
        }
    }
}

/// What the host must do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward upstream after removing and then setting these request headers.
    Allow(Forward),
    /// Answer locally.
    Deny(LocalReply),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forward {
    /// Removed first (client-sent copies of our headers, the consumed token header).
    pub remove_headers: Vec<String>,
    /// Then set.
    pub set_headers: Vec<(String, String)>,
    /// The verified token's meaning: its `upstream_headers` are set too (prebuilt once per
    /// token, so a warm request copies nothing).
    pub principal: Option<std::rc::Rc<crate::jwt::principal::Principal>>,
    /// A new `:path`: the request's without the query parameter the token came from.
    pub set_path: Option<String>,
    /// In dry-run mode: the answer enforcement would have given (log it, count it, forward).
    pub dry_run: Option<LocalReply>,
    /// Set on the upstream's response (remaining-quota headers).
    pub response_headers: Vec<(&'static str, String)>,
    /// The matched route's index in the policy (for the filter state).
    pub route: Option<usize>,
    /// The policy that reported on this request and what it has left (for the filter state).
    pub rate_limit: Option<RateLimitFact>,
}

/// A rate-limit policy's name and what it had left after the request (for the filter state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitFact {
    pub policy: String,
    pub remaining: u64,
}

impl Forward {
    /// Every header to set upstream: the peer's (`set_headers`), then the token's.
    pub fn headers_to_set(&self) -> impl Iterator<Item = (&str, &str)> {
        let token = self
            .principal
            .iter()
            .flat_map(|p| p.upstream_headers.iter());
        self.set_headers
            .iter()
            .chain(token)
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// The verified caller's identity keys, for logs (never the token, never other claims).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub client_id: Option<String>,
}

impl Caller {
    pub fn from_claims(c: &crate::jwt::jws::Claims) -> Caller {
        let text = |name: &str| c.all.get(name).and_then(|v| v.as_str()).map(str::to_string);
        Caller {
            iss: c.iss.clone(),
            sub: c.sub.clone(),
            client_id: text("client_id").or_else(|| text("azp")),
        }
    }
}

/// A refusal: why, and the answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub reason: Reason,
    /// Name of the matched route, for logs.
    pub route: Option<String>,
    /// Who was refused, when authenticated (for logs).
    pub caller: Option<Box<Caller>>,
    /// What exactly failed, for the log line only (never sent): e.g. which `htu` was compared.
    pub detail: Option<String>,
    /// The refusing rate-limit policy and what it has left (a 429 with a policy's quota).
    pub rate_limit: Option<Box<RateLimitFact>>,
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// The `DPoP` challenge a configuration offers (RFC 9449 §7.1), when a provider has DPoP on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopOffer {
    /// `algs`: the proof algorithms accepted, space-separated.
    pub algs: String,
    /// Bearer tokens are accepted too (a provider without `dpop.mode: required`).
    pub bearer: bool,
}

impl DpopOffer {
    /// The offer of providers' DPoP settings (`None` per provider: DPoP off).
    pub fn of<'a>(
        dpop: impl Iterator<Item = Option<&'a crate::dpop::Config>>,
    ) -> Option<DpopOffer> {
        let mut algs: Vec<Algorithm> = Vec::new();
        let mut bearer = false;
        let mut any = false;
        for d in dpop {
            match d {
                None => bearer = true,
                Some(d) => {
                    any = true;
                    bearer |= d.mode != crate::dpop::Mode::Required;
                    for a in &d.algorithms {
                        if !algs.contains(a) {
                            algs.push(*a);
                        }
                    }
                }
            }
        }
        any.then(|| DpopOffer {
            algs: algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" "),
            bearer,
        })
    }
}

impl LocalReply {
    /// The rate-limit policy a 429 names in its `RateLimit-Policy` header (as [`limit_headers`]
    /// writes it: `"<name>";q=…;w=…`), for metrics; `None` when the answer names none.
    pub fn policy(&self) -> Option<&str> {
        let (_, v) = self
            .headers
            .iter()
            .find(|(n, _)| *n == "ratelimit-policy")?;
        v.strip_prefix('"')?.split_once('"').map(|(name, _)| name)
    }

    /// The answer for `reason`, as its row says. `scope`: the scopes the route needs, for a row
    /// with [`Challenge::Scope`] (ignored otherwise). Without the [`Quota::Policy`] headers,
    /// which need the policy's verdict ([`Answers::rate_limited`]).
    pub fn new(reason: Reason, realm: &str, scope: Option<&str>) -> LocalReply {
        LocalReply::answer(reason, realm, scope, None, false)
    }

    /// As [`LocalReply::new`], for a configuration that offers DPoP (`offer`): a 401 or 403
    /// carries a `DPoP` challenge beside the Bearer one (only the `DPoP` one when no provider
    /// takes bearer tokens), and the error goes to the challenge of the scheme it concerns —
    /// `DPoP` for a [`Challenge::Dpop`] row, or when the credential came with the DPoP scheme
    /// (`via_dpop`).
    pub fn answer(
        reason: Reason,
        realm: &str,
        scope: Option<&str>,
        offer: Option<&DpopOffer>,
        via_dpop: bool,
    ) -> LocalReply {
        let row = reason.row();
        let scope = scope.filter(|_| row.challenge == Challenge::Scope);
        let mut headers = Vec::with_capacity(5);
        if row.challenge != Challenge::Absent {
            let dpop_row = row.challenge == Challenge::Dpop;
            let dpop_line = offer.is_some() || dpop_row;
            let bearer_line = offer.map_or(!dpop_row, |o| o.bearer);
            let error_in_dpop = dpop_line && (dpop_row || via_dpop || !bearer_line);
            let mut error = String::new();
            if row.challenge != Challenge::Realm {
                error = format!(
                    ", error=\"{}\", error_description=\"{}\"",
                    row.error, row.description
                );
                if let Some(scope) = scope {
                    error.push_str(&format!(", scope=\"{scope}\""));
                }
            }
            if bearer_line {
                let e = if error_in_dpop { "" } else { error.as_str() };
                headers.push(("www-authenticate", format!("Bearer realm=\"{realm}\"{e}")));
            }
            if dpop_line {
                let algs = offer.map_or(String::new(), |o| format!(", algs=\"{}\"", o.algs));
                let e = if error_in_dpop { error.as_str() } else { "" };
                headers.push((
                    "www-authenticate",
                    format!("DPoP realm=\"{realm}\"{algs}{e}"),
                ));
            }
        }
        headers.push(("content-type", "application/json".to_string()));
        headers.push(("cache-control", "no-store".to_string()));
        match row.quota {
            Quota::Absent | Quota::Policy => {}
            Quota::RetryAfterOne => headers.push(("retry-after", "1".to_string())),
        }
        if row.status == 429 {
            // As Envoy's own `local_ratelimit` marks its 429s.
            headers.push(("x-envoy-ratelimited", "true".to_string()));
        }
        let mut body = serde_json::Map::new();
        body.insert("error".into(), row.error.into());
        body.insert("error_description".into(), row.description.into());
        if let Some(scope) = scope {
            body.insert("scope".into(), scope.into());
        }
        LocalReply {
            reason,
            route: None,
            caller: None,
            detail: None,
            rate_limit: None,
            status: row.status,
            headers,
            body: serde_json::Value::Object(body).to_string(),
        }
    }
}

/// Every reason's answer, built once per configuration with its realm (and its DPoP offer): a
/// denial copies one instead of formatting it.
#[derive(Debug, Clone)]
pub struct Answers {
    realm: String,
    offer: Option<DpopOffer>,
    /// In [`Reason::ALL`] order: for a credential presented as Bearer (or none) …
    prebuilt: Vec<LocalReply>,
    /// … and with the DPoP scheme (empty when no provider has DPoP on).
    prebuilt_dpop: Vec<LocalReply>,
}

impl Answers {
    pub fn new(realm: &str, offer: Option<DpopOffer>) -> Answers {
        let build = |via_dpop: bool| -> Vec<LocalReply> {
            Reason::ALL
                .iter()
                .map(|r| LocalReply::answer(*r, realm, None, offer.as_ref(), via_dpop))
                .collect()
        };
        Answers {
            realm: realm.to_string(),
            prebuilt: build(false),
            prebuilt_dpop: if offer.is_some() {
                build(true)
            } else {
                Vec::new()
            },
            offer,
        }
    }

    /// The answer for `reason` (for [`Challenge::Scope`] and [`Quota::Policy`] rows, without
    /// what only the request knows: see [`Answers::denied`] and [`Answers::rate_limited`]).
    pub fn refuse(&self, reason: Reason) -> LocalReply {
        self.refuse_via(reason, false)
    }

    /// As [`Answers::refuse`], for a credential presented with the DPoP scheme when `via_dpop`.
    pub fn refuse_via(&self, reason: Reason, via_dpop: bool) -> LocalReply {
        let set = if via_dpop && self.offer.is_some() {
            &self.prebuilt_dpop
        } else {
            &self.prebuilt
        };
        match set.get(reason.index()) {
            Some(reply) => reply.clone(),
            None => LocalReply::answer(reason, &self.realm, None, self.offer.as_ref(), via_dpop),
        }
    }

    /// The answer to a route requirement's refusal (the needed scopes included). `via_dpop`:
    /// the token came with the DPoP scheme and its proof, so an error goes to the `DPoP`
    /// challenge (RFC 9449 §7.2: the challenge of the scheme the client used).
    pub fn denied(&self, denial: &Denial, via_dpop: bool) -> LocalReply {
        let reason = Reason::from(denial);
        if let Denial::InsufficientScope(scope) = denial {
            return LocalReply::answer(
                reason,
                &self.realm,
                Some(scope),
                self.offer.as_ref(),
                via_dpop,
            );
        }
        self.refuse_via(reason, via_dpop)
    }

    /// A 429 with the refusing policy's quota headers (for a [`Quota::Policy`] row).
    pub fn rate_limited(&self, why: RateLimited, limit: &Limit, verdict: &Verdict) -> LocalReply {
        let reason = Reason::RateLimited(why);
        let mut reply = self.refuse(reason);
        match reason.row().quota {
            Quota::Policy => {
                reply.headers.extend(limit_headers(limit, verdict, true));
                reply.rate_limit = Some(Box::new(RateLimitFact {
                    policy: limit.name.clone(),
                    remaining: verdict.remaining,
                }));
            }
            Quota::Absent | Quota::RetryAfterOne => {}
        }
        reply
    }
}

/// The rate-limit answer headers (draft-ietf-httpapi-ratelimit-headers, "RateLimit Field" and
/// its "Reset Parameter", and "Server Behavior": when a response carries both `Retry-After` and
/// `RateLimit`, the reset value SHOULD name the same point in time as `Retry-After`).
///
/// - Allowed: `t` (and `X-RateLimit-Reset`) is the whole seconds until the quota is fully
///   restored, as the draft's "Reset Parameter" defines it.
/// - Refused: `t`, `Retry-After` and `X-RateLimit-Reset` are one number: the whole seconds
///   (rounded up, at least 1) until a request of the refused request's cost is admitted.
pub fn limit_headers(limit: &Limit, v: &Verdict, refused: bool) -> Vec<(&'static str, String)> {
    let secs = |ns: u64| ns.div_ceil(1_000_000_000);
    let reset = if refused {
        secs(v.retry_after_ns).max(1)
    } else {
        secs(v.reset_ns)
    };
    let mut h = vec![
        (
            "ratelimit-policy",
            format!(
                "\"{}\";q={};w={}",
                limit.name,
                limit.requests,
                limit.window_seconds()
            ),
        ),
        (
            "ratelimit",
            format!("\"{}\";r={};t={reset}", limit.name, v.remaining),
        ),
        ("x-ratelimit-limit", limit.requests.to_string()),
        ("x-ratelimit-remaining", v.remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ];
    if refused {
        h.push(("retry-after", reset.to_string()));
    }
    h
}

pub mod facts;
pub mod log;

#[cfg(test)]
mod limit_headers_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insufficient_scope_names_the_needed_scopes() {
        let r = LocalReply::new(
            Reason::Forbidden(Forbidden::InsufficientScope),
            "api",
            Some("a:read b:write"),
        );
        assert_eq!(r.status, 403);
        assert_eq!(
            header(&r, "www-authenticate"),
            "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"insufficient scope\", scope=\"a:read b:write\""
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["scope"], "a:read b:write");
    }

    #[test]
    fn peer_and_route_refusals_have_no_bearer_challenge() {
        for (f, status, desc) in [
            (Forbidden::MtlsRequired, 403, "mutual TLS required"),
            (Forbidden::PeerNotAllowed, 403, "peer not allowed"),
            (Forbidden::NoRoute, 403, "no matching route"),
            (Forbidden::NotFound, 404, "not found"),
        ] {
            let r = LocalReply::new(Reason::Forbidden(f), "api", None);
            assert_eq!(r.status, status);
            assert!(r.headers.iter().all(|(n, _)| *n != "www-authenticate"));
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["error_description"], desc);
        }
    }

    #[test]
    fn reason_codes_are_distinct_metric_names() {
        let codes: std::collections::BTreeSet<&str> =
            Reason::ALL.into_iter().map(Reason::code).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert!(codes.iter().all(|c| c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')));
    }

    #[test]
    fn every_429_and_only_a_429_is_marked_as_envoy_marks_its_own() {
        for r in Reason::ALL {
            let reply = LocalReply::new(r, "api", None);
            let marked = reply
                .headers
                .iter()
                .any(|(n, v)| *n == "x-envoy-ratelimited" && v == "true");
            assert_eq!(marked, r.status() == 429, "{}", r.code());
        }
        assert_eq!(
            LocalReply::new(Reason::RateLimited(RateLimited::Fleet), "api", None).status,
            429
        );
    }

    fn header<'a>(r: &'a LocalReply, name: &str) -> &'a str {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn missing_token_challenge_has_no_error() {
        let r = LocalReply::new(Reason::MissingToken, "api", None);
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "www-authenticate"), "Bearer realm=\"api\"");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error_description"], "authentication required");
    }

    #[test]
    fn invalid_token_challenge_names_error_and_description() {
        let r = LocalReply::new(Reason::InvalidToken(TokenError::Expired), "api", None);
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token expired\""
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "token expired");
        assert_eq!(r.reason.code(), "invalid_token.expired");
    }

    #[test]
    fn invalid_request_is_400() {
        let r = LocalReply::new(
            Reason::InvalidRequest(RequestError::MultipleCredentials),
            "api",
            None,
        );
        assert_eq!(r.status, 400);
        assert!(header(&r, "www-authenticate").contains("error=\"invalid_request\""));
        assert_eq!(header(&r, "cache-control"), "no-store");
    }

    #[test]
    fn every_reason_has_one_row_at_its_index() {
        assert_eq!(Reason::COUNT, 42);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
            assert_eq!(Reason::ALL.iter().filter(|o| *o == r).count(), 1, "{r:?}");
        }
    }

    #[test]
    fn prebuilt_answers_carry_the_realm_and_constant_headers() {
        let answers = Answers::new("shop", None);
        let r = answers.refuse(Reason::InvalidToken(TokenError::UnknownKey));
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            "Bearer realm=\"shop\", error=\"invalid_token\", error_description=\"unknown signing key\""
        );
        assert_eq!(
            r.body,
            r#"{"error":"invalid_token","error_description":"unknown signing key"}"#
        );
        let r = answers.refuse(Reason::RateLimited(RateLimited::Contention));
        assert_eq!((r.status, header(&r, "retry-after")), (429, "1"));
        assert!(r.headers.iter().all(|(n, _)| *n != "www-authenticate"));
        assert_eq!(
            r.body,
            r#"{"error":"rate_limited","error_description":"rate limit exceeded"}"#
        );
    }

    #[test]
    fn route_requirement_refusals_map_to_their_reasons() {
        let answers = Answers::new("api", None);
        for (denial, reason) in [
            (Denial::TokenRequired, Reason::MissingToken),
            (
                Denial::InsufficientPermissions,
                Reason::Forbidden(Forbidden::InsufficientPermissions),
            ),
            (
                Denial::MtlsRequired,
                Reason::Forbidden(Forbidden::MtlsRequired),
            ),
            (
                Denial::PeerNotAllowed,
                Reason::Forbidden(Forbidden::PeerNotAllowed),
            ),
        ] {
            assert_eq!(answers.denied(&denial, false).reason, reason);
        }
        let r = answers.denied(&Denial::InsufficientScope("orders:read".into()), false);
        assert_eq!(
            header(&r, "www-authenticate"),
            "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"insufficient scope\", scope=\"orders:read\""
        );
        assert_eq!(
            r.body,
            r#"{"error":"insufficient_scope","error_description":"insufficient scope","scope":"orders:read"}"#
        );
    }

    #[test]
    fn a_throttled_answer_carries_the_policy_headers() {
        let limit = Limit {
            name: "user".into(),
            requests: 10,
            per_ns: 60_000_000_000,
            burst: 10,
            by: crate::ratelimit::LimitBy::Identity,
            slots: 1,
        };
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            retry_after_ns: 5_500_000_000,
            reset_ns: 60_000_000_000,
        };
        let answers = Answers::new("api", None);
        let r = answers.rate_limited(RateLimited::FailedAuth, &limit, &verdict);
        assert_eq!(
            (r.status, r.reason.code()),
            (429, "rate_limited.failed_auth")
        );
        assert_eq!(header(&r, "retry-after"), "6");
        assert_eq!(header(&r, "ratelimit"), "\"user\";r=0;t=6");
        assert_eq!(header(&r, "ratelimit-policy"), "\"user\";q=10;w=60");
        // The policy as the metrics' `policy` label reads it back.
        assert_eq!(r.policy(), Some("user"));
        // Contention has no verdict to report: `Retry-After: 1`, once.
        let r = answers.rate_limited(RateLimited::Contention, &limit, &verdict);
        let retry: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| *n == "retry-after")
            .collect();
        assert_eq!(retry, [&("retry-after", "1".to_string())]);
        assert!(r.headers.iter().all(|(n, _)| *n != "ratelimit"));
        assert_eq!(r.policy(), None);
    }

    /// Every `WWW-Authenticate` line of an answer, in order.
    fn challenges(r: &LocalReply) -> Vec<&str> {
        r.headers
            .iter()
            .filter(|(n, _)| *n == "www-authenticate")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn with_bearer_allowed_both_challenges_are_sent_and_the_error_goes_to_the_scheme_used() {
        let offer = DpopOffer {
            algs: "ES256 RS256".into(),
            bearer: true,
        };
        let answer = |reason, via_dpop| {
            LocalReply::answer(reason, "api", Some("a:read"), Some(&offer), via_dpop)
        };
        let dpop = r#"DPoP realm="api", algs="ES256 RS256""#;
        // No credentials: both schemes offered, no error (RFC 9449 §7.2, Figure 17).
        assert_eq!(
            challenges(&answer(Reason::MissingToken, false)),
            [r#"Bearer realm="api""#, dpop]
        );
        // A token error with the Bearer scheme: in the Bearer challenge (Figure 18) …
        let expired = Reason::InvalidToken(TokenError::Expired);
        let error = r#", error="invalid_token", error_description="token expired""#;
        assert_eq!(
            challenges(&answer(expired, false)),
            [format!(r#"Bearer realm="api"{error}"#).as_str(), dpop]
        );
        // … with the DPoP scheme: in the DPoP challenge.
        assert_eq!(
            challenges(&answer(expired, true)),
            [r#"Bearer realm="api""#, format!("{dpop}{error}").as_str()]
        );
        // A DPoP-bound token sent as Bearer: the Bearer challenge says why.
        assert_eq!(
            challenges(&answer(
                Reason::InvalidToken(TokenError::DpopBoundAsBearer),
                false
            )),
            [
                r#"Bearer realm="api", error="invalid_token", error_description="DPoP-bound token sent as bearer""#,
                dpop
            ]
        );
        // DPoP rows put their error in the DPoP challenge whatever the scheme.
        for (reason, error) in [
            (
                Reason::InvalidDpopProof(DpopProof::WithoutToken),
                r#", error="invalid_dpop_proof", error_description="DPoP proof without access token""#,
            ),
            (
                Reason::InvalidToken(TokenError::NotDpopBound),
                r#", error="invalid_token", error_description="token not DPoP-bound""#,
            ),
            (
                Reason::UseDpopNonce,
                r#", error="use_dpop_nonce", error_description="DPoP nonce required""#,
            ),
        ] {
            for via_dpop in [false, true] {
                assert_eq!(
                    challenges(&answer(reason, via_dpop)),
                    [r#"Bearer realm="api""#, format!("{dpop}{error}").as_str()],
                    "{reason:?} via_dpop={via_dpop}"
                );
            }
        }
        // Scopes a DPoP-bound token lacks: in the DPoP challenge, with `scope`.
        let scope = Reason::Forbidden(Forbidden::InsufficientScope);
        assert_eq!(
            challenges(&answer(scope, true)),
            [
                r#"Bearer realm="api""#,
                format!(r#"{dpop}, error="insufficient_scope", error_description="insufficient scope", scope="a:read""#).as_str()
            ]
        );
        // No challenge at all where no token could help.
        assert!(challenges(&answer(Reason::DpopUnavailable, true)).is_empty());
        assert!(challenges(&answer(Reason::Forbidden(Forbidden::NoRoute), true)).is_empty());
    }

    #[test]
    fn with_dpop_required_everywhere_only_the_dpop_challenge_is_sent() {
        let offer = DpopOffer {
            algs: "ES256".into(),
            bearer: false,
        };
        let answer =
            |reason, via_dpop| LocalReply::answer(reason, "api", None, Some(&offer), via_dpop);
        assert_eq!(
            challenges(&answer(Reason::MissingToken, false)),
            [r#"DPoP realm="api", algs="ES256""#]
        );
        // A bearer token's error has no Bearer challenge to go to.
        for via_dpop in [false, true] {
            assert_eq!(
                challenges(&answer(
                    Reason::InvalidToken(TokenError::DpopRequired),
                    via_dpop
                )),
                [
                    r#"DPoP realm="api", algs="ES256", error="invalid_token", error_description="DPoP-bound token required""#
                ]
            );
            assert_eq!(
                challenges(&answer(Reason::InvalidToken(TokenError::Expired), via_dpop)),
                [
                    r#"DPoP realm="api", algs="ES256", error="invalid_token", error_description="token expired""#
                ]
            );
        }
    }

    #[test]
    fn the_offer_lists_every_proof_algorithm_once_and_takes_bearer_unless_all_require_dpop() {
        use crate::dpop::{Config as Dpop, Mode};
        let dpop = |mode, algorithms: &[Algorithm]| Dpop {
            mode,
            algorithms: algorithms.to_vec(),
            ..Dpop::default()
        };
        let required = dpop(Mode::Required, &[Algorithm::ES256, Algorithm::RS256]);
        let allowed = dpop(Mode::Allowed, &[Algorithm::EdDSA, Algorithm::ES256]);
        let offer = |list: &[Option<&Dpop>]| DpopOffer::of(list.iter().copied());
        assert_eq!(offer(&[None, None]), None, "no provider has DPoP on");
        assert_eq!(
            offer(&[Some(&required)]),
            Some(DpopOffer {
                algs: "ES256 RS256".into(),
                bearer: false
            })
        );
        assert_eq!(
            offer(&[Some(&required), Some(&allowed)]),
            Some(DpopOffer {
                algs: "ES256 RS256 EdDSA".into(),
                bearer: true
            }),
            "an allowed provider takes bearer tokens"
        );
        assert_eq!(
            offer(&[Some(&required), None]),
            Some(DpopOffer {
                algs: "ES256 RS256".into(),
                bearer: true
            }),
            "a provider without dpop takes bearer tokens"
        );
    }

    #[test]
    fn prebuilt_answers_follow_the_scheme_used() {
        let offer = DpopOffer {
            algs: "ES256".into(),
            bearer: true,
        };
        let answers = Answers::new("api", Some(offer.clone()));
        for reason in Reason::ALL {
            for via_dpop in [false, true] {
                assert_eq!(
                    answers.refuse_via(reason, via_dpop),
                    LocalReply::answer(reason, "api", None, Some(&offer), via_dpop),
                    "{reason:?}"
                );
            }
        }
        let scope = Denial::InsufficientScope("a:read".into());
        assert_eq!(
            challenges(&answers.denied(&scope, true))[1],
            r#"DPoP realm="api", algs="ES256", error="insufficient_scope", error_description="insufficient scope", scope="a:read""#
        );
        assert_eq!(
            challenges(&answers.denied(&Denial::InsufficientPermissions, true))[0],
            r#"Bearer realm="api""#
        );
        // Without an offer, the DPoP scheme changes nothing: one Bearer challenge.
        let plain = Answers::new("api", None);
        assert_eq!(
            challenges(&plain.refuse_via(Reason::InvalidToken(TokenError::Expired), true)),
            [r#"Bearer realm="api", error="invalid_token", error_description="token expired""#]
        );
    }

    /// The README's decision table, row by row, against the table here: every reason has a row
    /// there, and each row's status, challenge, body and quota headers are the ones answered.
    #[test]
    fn the_readme_decision_table_matches_the_code() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Decision table\n")
            .nth(1)
            .expect("README has a decision table");
        let rows = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2);
        let ticks = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let mut seen = std::collections::BTreeSet::new();
        for line in rows {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 5, "{line}");
            let (status, challenge, body, code) = (cells[1], cells[2], cells[3], cells[4]);
            let codes = ticks(code);
            let Some(reason) = Reason::ALL
                .into_iter()
                .find(|r| codes == [r.code().to_string()])
            else {
                assert!(codes.is_empty(), "unknown log code in {line}");
                continue;
            };
            seen.insert(reason.code());
            let row = reason.row();
            // DPoP rows as a `dpop.mode: required` configuration answers them (one challenge).
            let offer = DpopOffer {
                algs: "…".into(),
                bearer: false,
            };
            let offer = (row.challenge == Challenge::Dpop).then_some(&offer);
            let reply = LocalReply::answer(reason, "R", Some("<needed scopes>"), offer, false);
            assert!(status.starts_with(&row.status.to_string()), "{line}");
            let sent = reply
                .headers
                .iter()
                .find(|(n, _)| *n == "www-authenticate")
                .map(|(_, v)| v.as_str());
            match row.challenge {
                Challenge::Absent => assert!(challenge.starts_with("none"), "{line}"),
                Challenge::Realm | Challenge::Error | Challenge::Scope | Challenge::Dpop => {
                    if challenge.starts_with("`Bearer") || challenge.starts_with("`DPoP") {
                        assert_eq!(sent, ticks(challenge).first().map(String::as_str), "{line}");
                    } else {
                        assert!(challenge.starts_with('…'), "{line}");
                        if let Some(error) = ticks(challenge).first() {
                            assert_eq!(error, row.error, "{line}");
                        }
                    }
                }
            }
            match row.quota {
                Quota::Absent => assert!(!challenge.contains("Retry-After"), "{line}"),
                Quota::Policy => assert!(challenge.contains("Retry-After"), "{line}"),
                Quota::RetryAfterOne => assert!(challenge.contains("`Retry-After: 1`"), "{line}"),
            }
            let body_ticks = ticks(body);
            if body.contains(" / ") {
                assert_eq!(body_ticks[..2], [row.error, row.description], "{line}");
            } else {
                assert_eq!(body_ticks, [row.description], "{line}");
            }
            assert_eq!(
                body.contains("\"scope\""),
                row.challenge == Challenge::Scope,
                "{line}"
            );
        }
        let all: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            seen, all,
            "every reason has a row in the README's decision table"
        );
    }

    /// The README's metrics section lists every reason code as a `reason` label value.
    #[test]
    fn the_readme_metrics_section_lists_every_reason_label() {
        let readme = include_str!("../README.md");
        let line = readme
            .lines()
            .find(|l| l.starts_with("- `reason`:"))
            .expect("README lists the reason label values");
        let listed = line
            .split("decision table:")
            .nth(1)
            .expect("the list follows 'decision table:'");
        let mut codes = std::collections::BTreeSet::new();
        for item in listed.split('`').skip(1).step_by(2) {
            match item.split_once(".{") {
                Some((prefix, rest)) => {
                    for leaf in rest.trim_end_matches('}').split(',') {
                        codes.insert(format!("{prefix}.{leaf}"));
                    }
                }
                None => {
                    codes.insert(item.to_string());
                }
            }
        }
        let all: std::collections::BTreeSet<_> =
            Reason::ALL.iter().map(|r| r.code().to_string()).collect();
        assert_eq!(codes, all);
    }
}
