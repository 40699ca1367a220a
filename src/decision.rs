//! The one table from reason to HTTP answer: status, `WWW-Authenticate` (RFC 6750 §3), JSON body
//! and the metric/log code. Descriptions are fixed strings; no token or claim text ever appears.

use crate::jwt::extract::RequestError;
use crate::jwt::TokenError;

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

impl Forbidden {
    pub const ALL: [Forbidden; 6] = [
        Forbidden::InsufficientScope,
        Forbidden::InsufficientPermissions,
        Forbidden::MtlsRequired,
        Forbidden::PeerNotAllowed,
        Forbidden::NoRoute,
        Forbidden::NotFound,
    ];

    fn description(self) -> &'static str {
        match self {
            Forbidden::InsufficientScope => "insufficient scope",
            Forbidden::InsufficientPermissions => "insufficient permissions",
            Forbidden::MtlsRequired => "mutual TLS required",
            Forbidden::PeerNotAllowed => "peer not allowed",
            Forbidden::NoRoute => "no matching route",
            Forbidden::NotFound => "not found",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Forbidden::InsufficientScope => "insufficient_scope",
            Forbidden::InsufficientPermissions => "insufficient_permissions",
            Forbidden::MtlsRequired => "peer_denied.mtls_required",
            Forbidden::PeerNotAllowed => "peer_denied.principal",
            Forbidden::NoRoute => "no_route",
            Forbidden::NotFound => "no_route.not_found",
        }
    }
}

impl RateLimited {
    pub const ALL: [RateLimited; 3] = [
        RateLimited::Limit,
        RateLimited::FailedAuth,
        RateLimited::Contention,
    ];
}

impl Reason {
    /// Every reason, for defining one metric per reason code up front.
    pub fn all() -> Vec<Reason> {
        let mut all = vec![Reason::MissingToken];
        all.extend(RequestError::ALL.map(Reason::InvalidRequest));
        all.extend(TokenError::ALL.map(Reason::InvalidToken));
        all.extend(Forbidden::ALL.map(Reason::Forbidden));
        all.extend(RateLimited::ALL.map(Reason::RateLimited));
        all
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::MissingToken | Reason::InvalidToken(_) => 401,
            Reason::InvalidRequest(_) => 400,
            Reason::Forbidden(Forbidden::NotFound) => 404,
            Reason::Forbidden(_) => 403,
            Reason::RateLimited(_) => 429,
        }
    }

    /// Whether the answer carries a `WWW-Authenticate: Bearer` challenge: not for refusals
    /// that no token could fix (peer, route).
    fn challenges(self) -> bool {
        !matches!(
            self,
            Reason::Forbidden(
                Forbidden::MtlsRequired
                    | Forbidden::PeerNotAllowed
                    | Forbidden::NoRoute
                    | Forbidden::NotFound
            ) | Reason::RateLimited(_)
        )
    }

    /// RFC 6750 error code; `None` when the request had no credentials (§3.1).
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Reason::MissingToken => None,
            Reason::InvalidRequest(_) => Some("invalid_request"),
            Reason::InvalidToken(_) => Some("invalid_token"),
            Reason::Forbidden(
                Forbidden::InsufficientScope | Forbidden::InsufficientPermissions,
            ) => Some("insufficient_scope"),
            Reason::Forbidden(Forbidden::NotFound) => Some("not_found"),
            Reason::Forbidden(_) => Some("access_denied"),
            Reason::RateLimited(_) => Some("rate_limited"),
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Reason::MissingToken => "authentication required",
            Reason::InvalidRequest(e) => e.description(),
            Reason::InvalidToken(e) => e.description(),
            Reason::Forbidden(f) => f.description(),
            Reason::RateLimited(RateLimited::FailedAuth) => "too many failed authentications",
            Reason::RateLimited(_) => "rate limit exceeded",
        }
    }

    /// Stable code for logs and metrics, e.g. `invalid_token.expired`.
    pub fn code(self) -> String {
        match self {
            Reason::MissingToken => "missing_token".to_string(),
            Reason::InvalidRequest(e) => format!("invalid_request.{}", e.code()),
            Reason::InvalidToken(e) => format!("invalid_token.{}", e.code()),
            Reason::Forbidden(f) => f.code().to_string(),
            Reason::RateLimited(RateLimited::Limit) => "rate_limited".to_string(),
            Reason::RateLimited(RateLimited::FailedAuth) => "rate_limited.failed_auth".to_string(),
            Reason::RateLimited(RateLimited::Contention) => "rate_limited.contention".to_string(),
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub reason: Reason,
    /// Name of the matched route, for logs.
    pub route: Option<String>,
    /// Who was refused, when authenticated (for logs).
    pub caller: Option<Caller>,
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl LocalReply {
    /// The answer for `reason`. `scope`: the scopes the route needs (for `insufficient_scope`).
    pub fn new(reason: Reason, realm: &str, scope: Option<&str>) -> LocalReply {
        let mut headers = Vec::with_capacity(3);
        if reason.challenges() {
            let mut challenge = format!("Bearer realm=\"{realm}\"");
            if let Some(code) = reason.error_code() {
                challenge.push_str(&format!(
                    ", error=\"{code}\", error_description=\"{}\"",
                    reason.description()
                ));
            }
            if let Some(scope) = scope {
                challenge.push_str(&format!(", scope=\"{scope}\""));
            }
            headers.push(("www-authenticate", challenge));
        }
        headers.push(("content-type", "application/json".to_string()));
        headers.push(("cache-control", "no-store".to_string()));
        let mut body = serde_json::Map::new();
        body.insert(
            "error".into(),
            reason.error_code().unwrap_or("unauthorized").into(),
        );
        body.insert("error_description".into(), reason.description().into());
        if let Some(scope) = scope {
            body.insert("scope".into(), scope.into());
        }
        let body = serde_json::Value::Object(body);
        LocalReply {
            reason,
            route: None,
            caller: None,
            status: reason.status(),
            headers,
            body: body.to_string(),
        }
    }
}

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
        let codes: std::collections::BTreeSet<String> =
            Reason::all().into_iter().map(Reason::code).collect();
        assert_eq!(codes.len(), Reason::all().len());
        assert!(codes.iter().all(|c| c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')));
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
}
