//! Raw route configuration → validated [`Policy`]. Vocabulary follows Istio's
//! AuthorizationPolicy where the meaning is the same (`hosts`, `paths`, `methods`,
//! `principals`, `namespaces`).

use serde::Deserialize;
use serde_json::Value;

use super::validate::{claim_path, header_token, principal};
use super::ConfigError;
use crate::jwt::provider::Provider;
use crate::policy::path::normalize;
use crate::policy::scopes::ScopeIndex;
use crate::policy::{
    ClaimRequirement, HostPattern, Mode, PathPattern, PeerRequirement, Policy, Requirements, Rest,
    RoleRequirement, Route, TokenUse, Unmatched,
};
use crate::ratelimit::RateLimits;

pub const MAX_ROUTES: usize = 256;

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) enum RawMode {
    Enforce,
    DryRun,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) enum RawAction {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) enum RawTokenUse {
    Required,
    Optional,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRoute {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    #[serde(default)]
    token: Option<RawTokenUse>,
    #[serde(default)]
    mode: Option<RawMode>,
    #[serde(default)]
    require: RawRequire,
    #[serde(default)]
    rate_limit: Vec<super::ratelimits::RawRouteLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    path_prefixes: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRequire {
    #[serde(default)]
    scopes: Option<RawScopes>,
    #[serde(default)]
    roles: Option<RawRoles>,
    #[serde(default)]
    claims: Vec<RawClaimCondition>,
    #[serde(default)]
    peers: Option<RawPeers>,
    #[serde(default)]
    issuers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawScopes {
    #[serde(default)]
    all_of: Vec<String>,
    #[serde(default)]
    any_of: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoles {
    #[serde(default)]
    claim: Option<String>,
    any_of: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClaimCondition {
    claim: String,
    values: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeers {
    #[serde(default)]
    require_mtls: bool,
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
}

/// The policy-related top-level fields.
pub(super) struct RawPolicy {
    pub routes: Option<Vec<RawRoute>>,
    pub default_action: Option<RawAction>,
    pub default_deny_status: Option<u16>,
    pub mode: Option<RawMode>,
    pub roles_claim: Vec<String>,
    pub case_sensitive_paths: bool,
}

fn mode(m: RawMode) -> Mode {
    match m {
        RawMode::Enforce => Mode::Enforce,
        RawMode::DryRun => Mode::DryRun,
    }
}

pub(super) fn policy(
    raw: RawPolicy,
    providers: &[Provider],
    limits: Option<&RateLimits>,
) -> Result<Policy, ConfigError> {
    let case_sensitive = raw.case_sensitive_paths;
    let status = raw.default_deny_status.unwrap_or(403);
    if status != 403 && status != 404 {
        return Err(ConfigError::new("defaultDenyStatus", "must be 403 or 404"));
    }
    let unmatched = match raw.default_action.unwrap_or(RawAction::Deny) {
        RawAction::Allow => Unmatched::Allow,
        RawAction::Deny => Unmatched::Deny { status },
    };
    let roles_claim = raw.roles_claim;
    let mut routes: Vec<Route> = match raw.routes {
        // No routes: authentication only, a valid token required everywhere.
        None => vec![Route {
            name: "default".into(),
            hosts: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            token: TokenUse::Required,
            mode: None,
            require: Requirements::default(),
            rate_limits: Vec::new(),
        }],
        Some(list) => {
            if list.len() > MAX_ROUTES {
                return Err(ConfigError::new(
                    "routes",
                    format!("at most {MAX_ROUTES} routes"),
                ));
            }
            list.into_iter()
                .enumerate()
                .map(|(i, r)| route(i, r, providers, limits, &roles_claim, case_sensitive))
                .collect::<Result<_, _>>()?
        }
    };
    let scopes = ScopeIndex::compile(&mut routes);
    Ok(Policy {
        scopes,
        routes,
        unmatched,
        mode: mode(raw.mode.unwrap_or(RawMode::Enforce)),
        case_sensitive_paths: case_sensitive,
    })
}

fn route(
    i: usize,
    r: RawRoute,
    providers: &[Provider],
    limits: Option<&RateLimits>,
    roles_claim: &[String],
    case_sensitive: bool,
) -> Result<Route, ConfigError> {
    let at = |f: &str| format!("routes[{i}].{f}");
    let name = r.name.unwrap_or_else(|| format!("routes[{i}]"));
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            at("name"),
            "must be 1-64 printable characters",
        ));
    }

    let mut hosts = Vec::new();
    for (j, h) in r.matcher.hosts.iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        hosts.push(match lower.strip_prefix("*.") {
            Some(rest) if valid(rest) => {
                HostPattern::Suffix(format!(".{}", rest.trim_end_matches('.')))
            }
            None if valid(&lower) => HostPattern::Exact(lower.trim_end_matches('.').to_string()),
            _ => {
                return Err(ConfigError::new(
                    at(&format!("match.hosts[{j}]")),
                    format!("\"{h}\" is not a host name or *.suffix"),
                ))
            }
        });
    }

    let mut paths = Vec::new();
    for (j, p) in r.matcher.paths.iter().enumerate() {
        paths.push(path_pattern(
            &at(&format!("match.paths[{j}]")),
            p,
            case_sensitive,
        )?);
    }
    for (j, p) in r.matcher.path_prefixes.iter().enumerate() {
        if !p.starts_with('/') || p.contains(['?', '#', '%', '\\']) {
            return Err(ConfigError::new(
                at(&format!("match.pathPrefixes[{j}]")),
                "must start with / and contain no ?, #, % or \\",
            ));
        }
        // Normalised like request paths, so `/public/` and `/public` mean the same prefix.
        let p = normalize(p, case_sensitive).map_err(|_| {
            ConfigError::new(at(&format!("match.pathPrefixes[{j}]")), "not a valid path")
        })?;
        paths.push(PathPattern::Prefix(p));
    }

    let mut methods = Vec::new();
    for (j, m) in r.matcher.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(header_token) {
            return Err(ConfigError::new(
                at(&format!("match.methods[{j}]")),
                "not an HTTP method",
            ));
        }
        methods.push(m.to_ascii_uppercase());
    }

    let token = match r.token.unwrap_or(RawTokenUse::Required) {
        RawTokenUse::Required => TokenUse::Required,
        RawTokenUse::Optional => TokenUse::Optional,
        RawTokenUse::None => TokenUse::None,
    };
    let require = requirements(i, r.require, providers, roles_claim)?;
    if token == TokenUse::None && require.needs_token() {
        return Err(ConfigError::new(
            at("token"),
            "is none, but require lists scopes, roles, claims or issuers",
        ));
    }
    let rate_limits = super::ratelimits::route_limits(&at("rateLimit"), r.rate_limit, limits)?;
    Ok(Route {
        name,
        hosts,
        paths,
        methods,
        token,
        mode: r.mode.map(mode),
        require,
        rate_limits,
    })
}

/// One route path. Besides exact paths: `{name}`, `{*}` and `*` (one whole segment, `*` not last),
/// Istio's final `{**}` (zero or more segments) and meshguard's final `**` (one or more). Istio
/// forms that would mean something else here are refused with what to write instead: a final
/// `/*` (a prefix in Istio), `*` alone (presence), `*.png` (suffix), `/api*` (string prefix).
fn path_pattern(at: &str, p: &str, case_sensitive: bool) -> Result<PathPattern, ConfigError> {
    let bad = |m: &str| ConfigError::new(at, m.to_string());
    if p == "*" {
        return Err(bad(
            "Istio's presence match `*` (any path) is not a path here: leave \
             `match.paths` out, or write `pathPrefixes: [\"/\"]`",
        ));
    }
    if p.starts_with('*') {
        return Err(bad("Istio's suffix match (`*.png`) is not supported: \
             match whole segments (`/images/{**}`) instead"));
    }
    if !p.starts_with('/') || p.contains(['?', '#', '%', '\\']) {
        return Err(bad("must start with / and contain no ?, #, % or \\"));
    }
    let segments: Vec<&str> = p.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    let last = segments.len().saturating_sub(1);
    for (k, s) in segments.iter().enumerate() {
        let named = s.len() > 2
            && s.starts_with('{')
            && s.ends_with('}')
            && !s
                .get(1..s.len() - 1)
                .unwrap_or("*")
                .contains(['*', '{', '}', '=']);
        match *s {
            "*" if k == last => {
                return Err(bad(
                    "a final `*` is ambiguous: Istio reads `/api/*` as a prefix \
                     (any depth), meshguard as one segment; write `pathPrefixes: [\"/api\"]` \
                     (or `/api/{**}`) for the prefix, `/api/{*}` for exactly one segment",
                ));
            }
            "**" | "{**}" if k != last => {
                return Err(bad(&format!("{s} may only be the last segment")));
            }
            "*" | "**" | "{*}" | "{**}" => {}
            _ if named => {}
            _ if s.ends_with('*') && !s.starts_with('{') => {
                return Err(bad("a wildcard must be a whole segment: Istio's string \
                     prefix (`/api*`) is not supported; `pathPrefixes: [\"/api\"]` matches \
                     `/api` and below by whole segments"));
            }
            _ if s.contains(['*', '{', '}']) => {
                return Err(bad(
                    "a wildcard must be a whole segment: `{*}`, `*` or `{name}` \
                     (one segment), a final `{**}` (zero or more) or `**` (one or more)",
                ));
            }
            _ => {}
        }
    }
    let literal = |s: &str| !(s.contains(['*', '{']));
    if segments.iter().all(|s| literal(s)) {
        let exact = normalize(p, case_sensitive).map_err(|_| bad("not a valid path"))?;
        return Ok(PathPattern::Exact(exact));
    }
    let mut out = Vec::new();
    let mut rest = Rest::None;
    for s in &segments {
        match *s {
            "**" => rest = Rest::OneOrMore,
            "{**}" => rest = Rest::ZeroOrMore,
            "." | ".." => return Err(bad("dot segments are not allowed in a template")),
            s if !literal(s) => out.push(None),
            s if case_sensitive => out.push(Some(s.to_string())),
            s => out.push(Some(s.to_ascii_lowercase())),
        }
    }
    Ok(PathPattern::Template {
        segments: out,
        rest,
    })
}

fn requirements(
    i: usize,
    r: RawRequire,
    providers: &[Provider],
    roles_claim: &[String],
) -> Result<Requirements, ConfigError> {
    let at = |f: &str| format!("routes[{i}].require.{f}");
    let mut req = Requirements::default();
    if let Some(s) = r.scopes {
        for (name, list) in [("allOf", &s.all_of), ("anyOf", &s.any_of)] {
            for (j, scope) in list.iter().enumerate() {
                if scope.is_empty()
                    || !scope
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                {
                    return Err(ConfigError::new(
                        at(&format!("scopes.{name}[{j}]")),
                        "a scope is printable ASCII without spaces, \" or \\",
                    ));
                }
            }
        }
        if s.all_of.is_empty() && s.any_of.is_empty() {
            return Err(ConfigError::new(at("scopes"), "list allOf or anyOf"));
        }
        req.scopes_all_of = s.all_of;
        req.scopes_any_of = s.any_of;
    }
    if let Some(roles) = r.roles {
        if roles.any_of.is_empty() {
            return Err(ConfigError::new(
                at("roles.anyOf"),
                "must list at least one role",
            ));
        }
        let claim = match roles.claim {
            Some(c) => claim_path(&at("roles.claim"), &c)?,
            None => roles_claim.to_vec(),
        };
        req.roles = Some(RoleRequirement {
            claim,
            any_of: roles.any_of,
        });
    }
    for (j, c) in r.claims.into_iter().enumerate() {
        let claim = claim_path(&at(&format!("claims[{j}].claim")), &c.claim)?;
        if c.values.is_empty() {
            return Err(ConfigError::new(
                at(&format!("claims[{j}].values")),
                "must list a value",
            ));
        }
        for (k, v) in c.values.iter().enumerate() {
            if !(v.is_string() || v.is_number() || v.is_boolean()) {
                return Err(ConfigError::new(
                    at(&format!("claims[{j}].values[{k}]")),
                    "must be a string, number or boolean",
                ));
            }
        }
        req.claims.push(ClaimRequirement {
            claim,
            values: c.values,
        });
    }
    if let Some(p) = r.peers {
        let mut principals = Vec::new();
        for (j, s) in p.principals.iter().enumerate() {
            principals.push(principal(&at(&format!("peers.principals[{j}]")), s)?);
        }
        for (j, ns) in p.namespaces.iter().enumerate() {
            if ns.is_empty() || ns.contains('/') {
                return Err(ConfigError::new(
                    at(&format!("peers.namespaces[{j}]")),
                    "not a namespace",
                ));
            }
        }
        req.peers = PeerRequirement {
            require_mtls: p.require_mtls,
            principals,
            namespaces: p.namespaces,
        };
    }
    for (j, iss) in r.issuers.iter().enumerate() {
        if !providers.iter().any(|p| &p.issuer == iss) {
            return Err(ConfigError::new(
                at(&format!("issuers[{j}]")),
                format!("\"{iss}\" is not the issuer of any provider"),
            ));
        }
    }
    req.issuers = r.issuers;
    Ok(req)
}
