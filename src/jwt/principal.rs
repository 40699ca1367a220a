//! What a verified token means to meshguard, derived once when its signature is checked and kept
//! with it in the worker's verified-token cache: a warm request then looks up, checks time, and
//! reads these instead of re-deriving them from the claims. Also how claims become header values.

use std::rc::Rc;

use serde_json::Value;

use super::jws::Claims;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principal {
    pub claims: Rc<Claims>,
    /// The first claim-based rate-limit identity source (`rateLimits.identity`) the token has:
    /// its position in that list and the identity's slot hash.
    pub rate_identity: Option<(usize, u64)>,
    /// The scopes the token grants, as bits of the configuration's scope index (the scopes its
    /// routes name: `policy::Policy::scopes`).
    pub scopes: u128,
    /// Upstream headers from the token (`outputClaimToHeaders`, `principalHeader`), ready to set.
    pub upstream_headers: Vec<(String, String)>,
    /// `<iss>/<sub>` ([`istio_principal`]) and the client id (`client_id`, else `azp`), for the
    /// filter state.
    pub name: Option<String>,
    pub client_id: Option<String>,
}

/// Claims compare as JSON values; the derive needs `Eq` for `Decision`'s.
impl Eq for Principal {}

/// Istio's `request.auth.principal`: `<iss>/<sub>`.
pub fn istio_principal(claims: &Claims) -> Option<String> {
    principal_name(claims.iss.as_deref(), claims.sub.as_deref())
}

/// `<iss>/<sub>` when both are there and the result is header-safe.
pub fn principal_name(iss: Option<&str>, sub: Option<&str>) -> Option<String> {
    let v = format!("{}/{}", iss?, sub?);
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
pub fn header_safe(v: &str) -> bool {
    v.len() <= 4096 && !v.chars().any(char::is_control)
}
