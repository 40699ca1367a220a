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
}

impl Reason {
    pub fn status(self) -> u16 {
        match self {
            Reason::MissingToken | Reason::InvalidToken(_) => 401,
            Reason::InvalidRequest(_) => 400,
        }
    }

    /// RFC 6750 error code; `None` when the request had no credentials (§3.1).
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Reason::MissingToken => None,
            Reason::InvalidRequest(_) => Some("invalid_request"),
            Reason::InvalidToken(_) => Some("invalid_token"),
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Reason::MissingToken => "authentication required",
            Reason::InvalidRequest(e) => e.description(),
            Reason::InvalidToken(e) => e.description(),
        }
    }

    /// Stable code for logs and metrics, e.g. `invalid_token.expired`.
    pub fn code(self) -> String {
        match self {
            Reason::MissingToken => "missing_token".to_string(),
            Reason::InvalidRequest(e) => format!("invalid_request.{}", e.code()),
            Reason::InvalidToken(e) => format!("invalid_token.{}", e.code()),
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub reason: Reason,
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl LocalReply {
    pub fn new(reason: Reason, realm: &str) -> LocalReply {
        let mut challenge = format!("Bearer realm=\"{realm}\"");
        if let Some(code) = reason.error_code() {
            challenge.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                reason.description()
            ));
        }
        let body = serde_json::json!({
            "error": reason.error_code().unwrap_or("unauthorized"),
            "error_description": reason.description(),
        })
        .to_string();
        LocalReply {
            reason,
            status: reason.status(),
            headers: vec![
                ("www-authenticate", challenge),
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a LocalReply, name: &str) -> &'a str {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn missing_token_challenge_has_no_error() {
        let r = LocalReply::new(Reason::MissingToken, "api");
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "www-authenticate"), "Bearer realm=\"api\"");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error_description"], "authentication required");
    }

    #[test]
    fn invalid_token_challenge_names_error_and_description() {
        let r = LocalReply::new(Reason::InvalidToken(TokenError::Expired), "api");
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
        );
        assert_eq!(r.status, 400);
        assert!(header(&r, "www-authenticate").contains("error=\"invalid_request\""));
        assert_eq!(header(&r, "cache-control"), "no-store");
    }
}
