//! A decision as the facts Envoy keeps in the request's filter state: what an access log prints
//! with `%FILTER_STATE(wasm.meshguard.<fact>:PLAIN)%` and later filters (RBAC, Lua, ext_proc)
//! read. The host sets each one with `proxy_set_property("meshguard.<fact>", value)`, which Envoy
//! stores under `wasm.meshguard.<fact>`.
//!
//! Only facts that exist are given (absent facts stay absent), and each is one host call, so the
//! configuration's `filterState` says which requests get them ([`FilterState`]).

use super::{Caller, Decision, Forward, RateLimitFact};
use crate::config::{Config, FilterState};
use crate::jwt::principal::principal_name;

/// Every fact's key, as the host sets it (Envoy prefixes `wasm.`), in the README's order.
pub const FACTS: [&str; 8] = [
    DECISION,
    REASON,
    ROUTE,
    PRINCIPAL,
    CLIENT_ID,
    SPIFFE_ID,
    RATE_LIMIT_POLICY,
    RATE_LIMIT_REMAINING,
];

pub const DECISION: &str = "meshguard.decision";
pub const REASON: &str = "meshguard.reason";
pub const ROUTE: &str = "meshguard.route";
pub const PRINCIPAL: &str = "meshguard.principal";
pub const CLIENT_ID: &str = "meshguard.client_id";
pub const SPIFFE_ID: &str = "meshguard.spiffe_id";
pub const RATE_LIMIT_POLICY: &str = "meshguard.rate_limit_policy";
pub const RATE_LIMIT_REMAINING: &str = "meshguard.rate_limit_remaining";

/// Calls `set(key, value)` for each fact of `decision` that exists, as `config.filterState`
/// allows. `spiffe`: the client certificate's SPIFFE ID, when the host has it at no extra cost.
pub fn each(
    decision: &Decision,
    config: &Config,
    spiffe: Option<&str>,
    mut set: impl FnMut(&'static str, &str),
) {
    let (verdict, refusal, fwd) = match decision {
        Decision::Deny(reply) => ("deny", Some(reply), None),
        Decision::Allow(fwd) => match &fwd.dry_run {
            Some(reply) => ("dry_run_deny", Some(reply), Some(fwd)),
            None => ("allow", None, Some(fwd)),
        },
    };
    match (config.filter_state, refusal) {
        (FilterState::Off, _) | (FilterState::Denials, None) => return,
        (FilterState::All | FilterState::Denials, _) => {}
    }
    set(DECISION, verdict);
    if let Some(reply) = refusal {
        set(REASON, reply.reason.code());
    }
    let route = (refusal.and_then(|r| r.route.as_deref())).or_else(|| {
        let index = fwd?.route?;
        Some(config.policy.routes.get(index)?.name.as_str())
    });
    if let Some(route) = route {
        set(ROUTE, route);
    }
    identity(fwd, refusal.and_then(|r| r.caller.as_deref()), &mut set);
    if let Some(spiffe) = spiffe {
        set(SPIFFE_ID, spiffe);
    }
    let limit =
        (refusal.and_then(|r| r.rate_limit.as_deref())).or(fwd.and_then(|f| f.rate_limit.as_ref()));
    if let Some(RateLimitFact { policy, remaining }) = limit {
        set(RATE_LIMIT_POLICY, policy);
        set(RATE_LIMIT_REMAINING, &remaining.to_string());
    }
}

/// The caller's principal and client id: from the verified token forwarded (derived once per
/// token), else from the identity keys a refusal carries.
fn identity(
    fwd: Option<&Forward>,
    caller: Option<&Caller>,
    set: &mut impl FnMut(&'static str, &str),
) {
    if let Some(p) = fwd.and_then(|f| f.principal.as_deref()) {
        if let Some(name) = &p.name {
            set(PRINCIPAL, name);
        }
        if let Some(id) = &p.client_id {
            set(CLIENT_ID, id);
        }
        return;
    }
    let Some(caller) = caller else {
        return;
    };
    if let Some(name) = principal_name(caller.iss.as_deref(), caller.sub.as_deref()) {
        set(PRINCIPAL, &name);
    }
    if let Some(id) = &caller.client_id {
        set(CLIENT_ID, id);
    }
}

#[cfg(test)]
mod tests {
    /// The README's filter-state table: one row per key, `| \`wasm.<key>\` | …`.
    #[test]
    fn the_readme_filter_state_table_lists_every_fact() {
        let listed = crate::testkit::readme_table_keys(None, "\n| filter-state key |");
        let want: Vec<String> = super::FACTS.iter().map(|k| format!("wasm.{k}")).collect();
        assert_eq!(listed, want);
    }
}
