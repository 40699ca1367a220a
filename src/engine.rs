//! The request pipeline: one call per request, from plain inputs to one [`Decision`].
//!
//! normalise path → route (first match wins) → authenticate (credential → provider → key →
//! signature → claims → certificate binding) → [rate limit: next] → authorize (peer, issuer,
//! scopes, roles, claims) → upstream headers. In dry-run mode a refusal is recorded in the
//! decision and the request goes on.

use serde_json::Value;

use crate::config::{Config, TokenSource};
use crate::decision::{Decision, Forbidden, Forward, LocalReply, Reason};
use crate::jwt::extract::{extract, RequestError};
use crate::jwt::jws::Claims;
use crate::jwt::verify::{check_binding, verify, KeyLookup, VerifiedToken};
use crate::jwt::TokenError;
use crate::policy::path::normalize;
use crate::policy::{Denial, Mode, Route, TokenUse, Unmatched};
use crate::request::RequestView;

/// Validated configuration plus the pipeline over it. Built once per configuration.
#[derive(Debug, Clone)]
pub struct Engine {
    pub config: Config,
}

/// A refusal before it becomes an answer: the reason and, for `insufficient_scope`, the scopes.
type Refusal = (Reason, Option<String>);

impl Engine {
    pub fn new(config: Config) -> Engine {
        Engine { config }
    }

    /// Decides one request. `now_ms` is the host's wall clock in milliseconds.
    pub fn decide(&self, req: &RequestView<'_>, keys: &dyn KeyLookup, now_ms: u64) -> Decision {
        let cfg = &self.config;
        let policy = &cfg.policy;
        let mut fwd = Forward {
            remove_headers: cfg.owned_headers.clone(),
            ..Forward::default()
        };
        for ph in &cfg.peer_headers {
            if let Some(v) = req.peer.field(ph.field).filter(|v| header_safe(v)) {
                fwd.set_headers.push((ph.header.clone(), v));
            }
        }

        let Ok(path) = normalize(req.path, policy.case_sensitive_paths) else {
            let refusal = (Reason::InvalidRequest(RequestError::InvalidPath), None);
            return self.finish(fwd, Err(refusal), None, policy.mode);
        };
        let host = req.header(":authority").unwrap_or_default();
        let method = req.header(":method").unwrap_or_default();
        let Some(route) = policy.route_for(host, &path, method) else {
            let result = match policy.unmatched {
                Unmatched::Allow => Ok(()),
                Unmatched::Deny { status: 404 } => {
                    Err((Reason::Forbidden(Forbidden::NotFound), None))
                }
                Unmatched::Deny { .. } => Err((Reason::Forbidden(Forbidden::NoRoute), None)),
            };
            return self.finish(fwd, result, None, policy.mode);
        };
        let result = self.authorize(req, keys, now_ms, route, &mut fwd);
        self.finish(fwd, result, Some(route), route.mode.unwrap_or(policy.mode))
    }

    fn finish(
        &self,
        mut fwd: Forward,
        result: Result<(), Refusal>,
        route: Option<&Route>,
        mode: Mode,
    ) -> Decision {
        let Err((reason, scope)) = result else {
            return Decision::Allow(fwd);
        };
        let mut reply = LocalReply::new(reason, &self.config.realm, scope.as_deref());
        reply.route = route.map(|r| r.name.clone());
        match mode {
            Mode::Enforce => Decision::Deny(reply),
            Mode::DryRun => {
                fwd.dry_run = Some(reply);
                Decision::Allow(fwd)
            }
        }
    }

    /// Authentication as the route asks, then the route's requirements.
    fn authorize(
        &self,
        req: &RequestView<'_>,
        keys: &dyn KeyLookup,
        now_ms: u64,
        route: &Route,
        fwd: &mut Forward,
    ) -> Result<(), Refusal> {
        let claims = match route.token {
            TokenUse::None => None,
            TokenUse::Required | TokenUse::Optional => {
                match self.authenticate(req, keys, now_ms, fwd)? {
                    Some(claims) => Some(claims),
                    None if route.token == TokenUse::Required => {
                        return Err((Reason::MissingToken, None))
                    }
                    None => None,
                }
            }
        };
        route
            .require
            .check(claims.as_ref(), req.peer)
            .map_err(|d| match d {
                Denial::TokenRequired => (Reason::MissingToken, None),
                Denial::InsufficientScope(scope) => {
                    (Reason::Forbidden(Forbidden::InsufficientScope), Some(scope))
                }
                Denial::InsufficientPermissions => {
                    (Reason::Forbidden(Forbidden::InsufficientPermissions), None)
                }
                Denial::MtlsRequired => (Reason::Forbidden(Forbidden::MtlsRequired), None),
                Denial::PeerNotAllowed => (Reason::Forbidden(Forbidden::PeerNotAllowed), None),
            })
    }

    /// Verifies the request's token, if any, and adds the identity headers. `Ok(None)`: no
    /// credentials.
    fn authenticate(
        &self,
        req: &RequestView<'_>,
        keys: &dyn KeyLookup,
        now_ms: u64,
        fwd: &mut Forward,
    ) -> Result<Option<Claims>, Refusal> {
        let cfg = &self.config;
        let invalid = |e| (Reason::InvalidToken(e), None);
        let Some(credential) =
            extract(req, &cfg.token_sources).map_err(|e| (Reason::InvalidRequest(e), None))?
        else {
            return Ok(None);
        };
        // A cheap bound before any decoding; each provider applies its own after.
        if credential.token.len() > cfg.max_token_bytes {
            return Err(invalid(TokenError::TooLarge));
        }
        let verified = verify(
            &credential.token,
            &credential.sources,
            &cfg.providers,
            keys,
            now_ms / 1000,
        )
        .map_err(invalid)?;
        let provider = cfg.providers.get(verified.provider);
        let required = provider.is_some_and(|p| p.require_certificate_binding);
        let peer_digest = req
            .peer
            .certificate_sha256
            .as_deref()
            .filter(|_| req.peer.mtls);
        check_binding(&verified.claims, required, peer_digest).map_err(invalid)?;
        self.identity_headers(&verified, &credential.sources, fwd);
        Ok(Some(verified.claims))
    }

    /// Upstream header changes for an authenticated request.
    fn identity_headers(&self, token: &VerifiedToken, sources: &[usize], fwd: &mut Forward) {
        let cfg = &self.config;
        let Some(provider) = cfg.providers.get(token.provider) else {
            return;
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
