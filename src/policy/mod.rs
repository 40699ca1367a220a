//! Authorization: routes (first match wins) and what each requires of the caller.

pub mod path;
pub mod scopes;

use serde_json::Value;

pub use crate::identity::PrincipalPattern;

use crate::identity::Peer;
use crate::jwt::jws::Claims;
use scopes::{ScopeIndex, ScopeMasks};

/// What happens when the policy says no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deny.
    Enforce,
    /// Let the request through, log and count what would have been denied.
    DryRun,
}

/// Whether a route uses the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// A valid token is needed (401 without one).
    Required,
    /// No token is fine; a token that is present must be valid.
    Optional,
    /// The token is neither read nor checked.
    None,
}

/// What unmatched requests get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Allow,
    /// Deny with 403 or 404.
    Deny {
        status: u16,
    },
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub routes: Vec<Route>,
    pub unmatched: Unmatched,
    pub mode: Mode,
    pub case_sensitive_paths: bool,
    /// The scopes the routes name, each with its bit (for [`Principal::scopes`]).
    ///
    /// [`Principal::scopes`]: crate::jwt::principal::Principal::scopes
    pub scopes: ScopeIndex,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathPattern>,
    /// Upper-case; empty matches any method.
    pub methods: Vec<String>,
    pub token: TokenUse,
    /// Overrides the policy's mode when set.
    pub mode: Option<Mode>,
    pub require: Requirements,
    /// Rate limits charged for this route (after the global ones).
    pub rate_limits: Vec<crate::ratelimit::RouteLimit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` → `.example.com`: any host ending with it (not the bare domain).
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// A normalised path and everything below it, by whole segments.
    Prefix(String),
    /// Segments; `None` is one wildcard segment (`*`, `{*}` or `{name}`), then what may follow.
    Template {
        segments: Vec<Option<String>>,
        rest: Rest,
    },
}

/// What a template matches after its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rest {
    /// Nothing: the path has exactly the template's segments.
    None,
    /// meshguard's final `**`: one or more segments.
    OneOrMore,
    /// Istio's final `{**}`: zero or more segments (`/files/{**}` matches `/files/`, which
    /// normalises to `/files`, so `/files` too).
    ZeroOrMore,
}

#[derive(Debug, Clone, Default)]
pub struct Requirements {
    pub scopes_all_of: Vec<String>,
    pub scopes_any_of: Vec<String>,
    /// The two scope lists as bits of [`Policy::scopes`]; `None` when one has no bit (then the
    /// claims are read).
    pub scope_masks: Option<ScopeMasks>,
    pub roles: Option<RoleRequirement>,
    pub claims: Vec<ClaimRequirement>,
    pub peers: PeerRequirement,
    pub issuers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RoleRequirement {
    pub claim: Vec<String>,
    pub any_of: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ClaimRequirement {
    pub claim: Vec<String>,
    /// Strings, numbers or booleans.
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, Default)]
pub struct PeerRequirement {
    pub require_mtls: bool,
    pub principals: Vec<PrincipalPattern>,
    pub namespaces: Vec<String>,
}

/// Why authorization failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A requirement needs a token and the request has none.
    TokenRequired,
    /// Missing scopes; the scopes the route needs, space-separated.
    InsufficientScope(String),
    /// Roles, claims or issuer.
    InsufficientPermissions,
    MtlsRequired,
    PeerNotAllowed,
}

impl Policy {
    /// The first route matching the request, with its index; `path` is already normalised.
    pub fn route_for(&self, host: &str, path: &str, method: &str) -> Option<(usize, &Route)> {
        let host = normalize_host(host);
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(&host, path, method))
    }
}

/// Lower-case, without port (`API.example.com:8443` → `api.example.com`; IPv6 brackets kept):
/// borrowed when nothing needs lower-casing.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = match authority.rfind(':') {
        Some(i)
            if !authority.ends_with(']')
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            authority.get(..i).unwrap_or(authority)
        }
        _ => authority,
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl Route {
    fn matches(&self, host: &str, path: &str, method: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            // Whole segments: `/api` matches `/api` and `/api/x`, not `/api-internal`.
            PathPattern::Prefix(p) => {
                p == "/"
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathPattern::Template { segments, rest } => {
                let mut parts = path.split('/').skip(1).filter(|s| !s.is_empty());
                for seg in segments {
                    match (seg, parts.next()) {
                        (_, None) => return false,
                        (None, Some(_)) => {}
                        (Some(lit), Some(got)) if lit == got => {}
                        _ => return false,
                    }
                }
                match rest {
                    Rest::None => parts.next().is_none(),
                    Rest::OneOrMore => parts.next().is_some(),
                    Rest::ZeroOrMore => true,
                }
            }
        }
    }
}

impl Requirements {
    /// True when a requirement can only be judged from a token.
    pub fn needs_token(&self) -> bool {
        !self.scopes_all_of.is_empty()
            || !self.scopes_any_of.is_empty()
            || self.roles.is_some()
            || !self.claims.is_empty()
            || !self.issuers.is_empty()
    }

    /// Checks every requirement: peer first (transport), then issuer, scopes, roles, claims.
    pub fn check(&self, claims: Option<&Claims>, peer: &Peer) -> Result<(), Denial> {
        self.check_granted(claims, None, peer)
    }

    /// [`Requirements::check`], with the scopes a verified token grants as bits of
    /// [`Policy::scopes`] when known (its principal's): the scope check is then a mask test.
    pub fn check_granted(
        &self,
        claims: Option<&Claims>,
        granted: Option<u128>,
        peer: &Peer,
    ) -> Result<(), Denial> {
        self.peers.check(peer)?;
        if !self.needs_token() {
            return Ok(());
        }
        let claims = claims.ok_or(Denial::TokenRequired)?;
        if !self.issuers.is_empty()
            && !claims
                .iss
                .as_ref()
                .is_some_and(|iss| self.issuers.contains(iss))
        {
            return Err(Denial::InsufficientPermissions);
        }
        if !self.scopes_all_of.is_empty() || !self.scopes_any_of.is_empty() {
            let allowed = match (self.scope_masks, granted) {
                (Some(masks), Some(granted)) => masks.allow(granted),
                _ => self.scopes_granted_by(claims),
            };
            if !allowed {
                let needed: Vec<&str> = self
                    .scopes_all_of
                    .iter()
                    .chain(&self.scopes_any_of)
                    .map(String::as_str)
                    .collect();
                return Err(Denial::InsufficientScope(needed.join(" ")));
            }
        }
        if let Some(roles) = &self.roles {
            let have = strings(claims.get_path(&roles.claim));
            if !roles.any_of.iter().any(|r| have.contains(&r.as_str())) {
                return Err(Denial::InsufficientPermissions);
            }
        }
        for c in &self.claims {
            if !claim_matches(claims.get_path(&c.claim), &c.values) {
                return Err(Denial::InsufficientPermissions);
            }
        }
        Ok(())
    }
}

impl Requirements {
    /// The scope requirement judged from the claims.
    fn scopes_granted_by(&self, claims: &Claims) -> bool {
        let have = scopes(claims);
        let all = self
            .scopes_all_of
            .iter()
            .all(|s| have.contains(&s.as_str()));
        let any = self.scopes_any_of.is_empty()
            || self
                .scopes_any_of
                .iter()
                .any(|s| have.contains(&s.as_str()));
        all && any
    }
}

impl PeerRequirement {
    fn check(&self, peer: &Peer) -> Result<(), Denial> {
        let needs_identity = !self.principals.is_empty() || !self.namespaces.is_empty();
        if (self.require_mtls || needs_identity) && !peer.mtls() {
            return Err(Denial::MtlsRequired);
        }
        if !needs_identity {
            return Ok(());
        }
        let id = peer.spiffe().ok_or(Denial::PeerNotAllowed)?;
        if !self.principals.is_empty() && !self.principals.iter().any(|p| p.matches(&id.uri)) {
            return Err(Denial::PeerNotAllowed);
        }
        if !self.namespaces.is_empty()
            && !id
                .namespace
                .as_ref()
                .is_some_and(|ns| self.namespaces.contains(ns))
        {
            return Err(Denial::PeerNotAllowed);
        }
        Ok(())
    }
}

/// Scopes from `scope` (space-delimited string, RFC 8693) and `scp` (array, or string, as Okta
/// and Entra send). Values of other types give no scopes.
pub fn scopes(claims: &Claims) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.all.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A string claim as one value, an array as its string elements; anything else as nothing.
fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn claim_matches(v: Option<&Value>, wanted: &[Value]) -> bool {
    match v {
        Some(Value::Array(items)) => items.iter().any(|i| wanted.iter().any(|w| scalar_eq(i, w))),
        Some(v) => wanted.iter().any(|w| scalar_eq(v, w)),
        None => false,
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64().zip(y.as_f64()).is_some_and(|(f, g)| f == g),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests;
