//! The request pipeline: one call per request, from plain inputs to one [`Decision`].
//!
//! authenticate (credential → provider → key → signature → claims) → build upstream headers.
//! Authorization and rate limiting plug in after authentication.

use serde_json::Value;

use crate::config::{Config, TokenSource};
use crate::decision::{Decision, Forward, LocalReply, Reason};
use crate::jwt::extract::extract;
use crate::jwt::jws::Claims;
use crate::jwt::verify::{verify, KeyLookup, VerifiedToken};
use crate::jwt::TokenError;
use crate::request::RequestView;

/// Validated configuration plus the pipeline over it. Built once per configuration.
#[derive(Debug, Clone)]
pub struct Engine {
    pub config: Config,
}

impl Engine {
    pub fn new(config: Config) -> Engine {
        Engine { config }
    }

    /// Decides one request. `now_ms` is the host's wall clock in milliseconds.
    pub fn decide(&self, req: &RequestView<'_>, keys: &dyn KeyLookup, now_ms: u64) -> Decision {
        let cfg = &self.config;
        let deny = |reason| Decision::Deny(LocalReply::new(reason, &cfg.realm));

        let credential = match extract(req, &cfg.token_sources) {
            Ok(Some(c)) => c,
            Ok(None) => return deny(Reason::MissingToken),
            Err(e) => return deny(Reason::InvalidRequest(e)),
        };
        // A cheap bound before any decoding; each provider applies its own after.
        if credential.token.len() > cfg.max_token_bytes {
            return deny(Reason::InvalidToken(TokenError::TooLarge));
        }
        let verified = match verify(
            &credential.token,
            &credential.sources,
            &cfg.providers,
            keys,
            now_ms / 1000,
        ) {
            Ok(v) => v,
            Err(e) => return deny(Reason::InvalidToken(e)),
        };
        Decision::Allow(self.forward(req, &verified, &credential.sources))
    }

    /// Upstream header changes for an authenticated request.
    fn forward(&self, req: &RequestView<'_>, token: &VerifiedToken, sources: &[usize]) -> Forward {
        let cfg = &self.config;
        let mut fwd = Forward {
            remove_headers: cfg.owned_headers.clone(),
            set_headers: Vec::new(),
        };
        let Some(provider) = cfg.providers.get(token.provider) else {
            return fwd;
        };
        if !provider.forward_original_token {
            for s in sources {
                if let Some(TokenSource::Header { name, .. }) = cfg.token_sources.get(*s) {
                    if !fwd.remove_headers.contains(name) {
                        fwd.remove_headers.push(name.clone());
                    }
                }
            }
        }
        for ch in &provider.claim_headers {
            if let Some(v) = token
                .claims
                .get_path(&ch.claim)
                .and_then(claim_header_value)
            {
                fwd.set_headers.push((ch.header.clone(), v));
            }
        }
        if let Some(p) = principal(&token.claims) {
            fwd.set_headers.push((cfg.principal_header.clone(), p));
        }
        for ph in &cfg.peer_headers {
            if let Some(v) = req.peer.field(ph.field).filter(|v| header_safe(v)) {
                fwd.set_headers.push((ph.header.clone(), v));
            }
        }
        fwd
    }
}

/// Istio's `request.auth.principal`: `<iss>/<sub>`.
fn principal(claims: &Claims) -> Option<String> {
    let v = format!("{}/{}", claims.iss.as_deref()?, claims.sub.as_deref()?);
    header_safe(&v).then_some(v)
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON text, arrays of
/// those joined with commas. Objects, nulls and values with control characters are not copied.
pub fn claim_header_value(v: &Value) -> Option<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match v {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        other => scalar(other)?,
    };
    header_safe(&text).then_some(text)
}

/// No control characters (so no header splitting) and a bounded length.
fn header_safe(v: &str) -> bool {
    v.len() <= 4096 && !v.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;
