//! The request pipeline, in two phases. [`Engine::decide`] reads (caches, keys, buckets) and
//! writes no shared state: it returns a [`Plan`], the decision it would give and the charges it
//! needs, so the host may run it again (after catching up with shared keys) at no cost.
//! [`Engine::settle`] pays the plan once, for the request's final decision: CAS charges of
//! buckets and of the failed-auth budget, token memories; a charge refused there turns the
//! decision into a 429.
//!
//! normalise path → route (first match wins) → authenticate ([`authn`]) → rate limits by
//! identity ([`crate::ratelimit::apply`]) → authorize (peer, issuer, scopes, roles, claims) →
//! upstream headers. In dry-run mode a refusal is recorded in the decision and the request
//! goes on.

mod authn;
mod dpop;
mod fleet;
mod inputs;
mod plan;

pub use fleet::FleetCall;
pub use inputs::{Events, Inputs};
pub use plan::Plan;

use crate::config::{Config, FilterState};
use crate::decision::{
    limit_headers, Answers, Caller, Decision, DpopOffer, Forward, LocalReply, RateLimitFact, Reason,
};
use crate::jwt::extract::RequestError;
use crate::policy::path::normalized;
use crate::policy::{Route, TokenUse};
use crate::ratelimit::apply::{Slots, Tally};
use crate::ratelimit::SlotSecret;
use crate::request::RequestView;
use plan::{overrule, Debts};

/// Validated configuration plus the pipeline over it. Built once per configuration.
#[derive(Debug, Clone)]
pub struct Engine {
    pub config: Config,
    /// The plugin's name: the prefix of its slot names in shared data.
    pub plugin: String,
    /// The proxy's secret and every policy's slot-name prefixes.
    slots: Slots,
    /// Every refusal's answer, built with the configured realm.
    answers: Answers,
    /// Per provider: its DPoP replay cache (`None`: DPoP off).
    replay: Vec<Option<crate::dpop::replay::ReplayCache>>,
}

impl Engine {
    /// `secret`: 128 random bits, the same in every worker of the proxy (it keys slot choice and
    /// the per-worker token memories; see [`crate::ratelimit::identity_hash`]).
    pub fn new(config: Config, plugin: &str, secret: SlotSecret) -> Engine {
        Engine {
            slots: Slots::new(plugin, secret, config.rate_limits.as_ref()),
            answers: Answers::new(
                &config.realm,
                DpopOffer::of(config.dpop.iter().map(Option::as_ref)),
            ),
            replay: dpop::replay_caches(plugin, &config),
            config,
            plugin: plugin.to_string(),
        }
    }

    /// The shared-data name of every rate-limit slot and DPoP replay shard, for the host to
    /// create once.
    pub fn slot_names(&self) -> Vec<String> {
        let routed = self
            .config
            .policy
            .routes
            .iter()
            .flat_map(|r| &r.rate_limits);
        let mut names = (self.config.rate_limits.as_ref())
            .map_or_else(Vec::new, |rl| self.slots.names(rl, routed));
        for cache in self.replay.iter().flatten() {
            names.extend(cache.slot_names());
        }
        names
    }

    /// Decides one request, reading only: the plan to [`Engine::settle`].
    pub fn decide(&self, req: &RequestView<'_>, inputs: &Inputs<'_>, events: &mut Events) -> Plan {
        let policy = &self.config.policy;
        let mut fwd = plan::forward(self, req);
        let mut debts = Debts::default();
        let path = normalized(req.path, policy.case_sensitive_paths);
        let (host, method) = (req.text_header(":authority"), req.text_header(":method"));
        let (Ok(path), Ok(host), Ok(method)) = (path, host, method) else {
            let bad = Reason::InvalidRequest(RequestError::InvalidPath);
            return Plan::new(self, fwd, None, Err(self.answers.refuse(bad)), debts);
        };
        let Some((index, route)) = policy.route_for(host, &path, method) else {
            return Plan::new(self, fwd, None, plan::unmatched(self), debts);
        };
        let result = self.authorize(req, inputs, route, &mut fwd, &mut debts, events);
        Plan::new(self, fwd, Some(index), result, debts)
    }

    /// Pays what `plan` owes, once, and gives the request's final decision: a charge refused
    /// now (another worker took the last credit since `decide` read it) turns it into a 429.
    pub fn settle(&self, plan: Plan, inputs: &Inputs<'_>, events: &mut Events) -> Decision {
        let Plan {
            mut decision,
            route,
            mode,
            debts,
        } = plan;
        let route_name = || plan::route_name(self, route);
        if let Some(owed) = debts.authn {
            let fwd = match &mut decision {
                Decision::Allow(fwd) => Some(fwd),
                Decision::Deny(_) => None,
            };
            if let Some(reply) = authn::settle(self, owed, inputs, fwd, events) {
                return overrule(decision, reply, route_name(), mode, None);
            }
        }
        if let Some(owed) = &debts.dpop {
            let refused = dpop::settle(self, owed, inputs, events);
            if let (Some(reply), Decision::Allow(_)) = (refused, &decision) {
                return overrule(decision, reply, route_name(), mode, debts.caller.as_deref());
            }
        }
        let (Some(charges), Some(rl)) = (debts.charges, &self.config.rate_limits) else {
            return decision;
        };
        let mut tally = Tally::default();
        let settled = charges.settle(rl, inputs.buckets, inputs.now_ns, &mut tally);
        events.cas_contention += tally.contention;
        events.shared_slots += tally.shared_slots;
        match (settled, &mut decision) {
            (Err(refusal), _) => {
                let reply = plan::rate_limited(self, rl, refusal);
                overrule(decision, reply, route_name(), mode, debts.caller.as_deref())
            }
            (Ok(Some((policy, verdict))), Decision::Allow(fwd)) => {
                if let Some(limit) = rl.limits.get(policy) {
                    if rl.response_headers {
                        fwd.response_headers
                            .extend(limit_headers(limit, &verdict, false));
                    }
                    if self.config.filter_state == FilterState::All {
                        fwd.rate_limit = Some(RateLimitFact {
                            policy: limit.name.clone(),
                            remaining: verdict.remaining,
                        });
                    }
                }
                decision
            }
            (Ok(_), _) => decision,
        }
    }

    /// Authentication as the route asks, rate limits (planned), then the route's requirements.
    fn authorize(
        &self,
        req: &RequestView<'_>,
        inputs: &Inputs<'_>,
        route: &Route,
        fwd: &mut Forward,
        debts: &mut Debts,
        events: &mut Events,
    ) -> Result<(), LocalReply> {
        let principal = match route.token {
            TokenUse::None => None,
            TokenUse::Required | TokenUse::Optional => {
                match authn::authenticate(
                    self,
                    req,
                    inputs,
                    fwd,
                    &mut debts.authn,
                    &mut debts.dpop,
                    events,
                )? {
                    Some(principal) => Some(principal),
                    None if route.token == TokenUse::Required => {
                        return Err(self.answers.refuse(Reason::MissingToken))
                    }
                    None => None,
                }
            }
        };
        if debts.dpop.is_some() {
            // For the log line of a replay refusal, which only settling can make.
            debts.caller = principal.clone();
        }
        let claims = principal.as_deref().map(|p| &*p.claims);
        // The caller's identity keys are copied only when a refusal is logged.
        let with_caller = |mut r: LocalReply| {
            r.caller = claims.map(|c| Box::new(Caller::from_claims(c)));
            r
        };
        if let Some(rl) = &self.config.rate_limits {
            let charges = self.slots.plan(
                rl,
                &route.rate_limits,
                req.peer,
                principal.as_deref(),
                inputs.buckets,
                inputs.now_ns,
            );
            let refused = charges.refused;
            if refused.is_none() {
                debts.fleet =
                    fleet::plan(self, &charges, &route.name, req.peer, principal.as_deref());
            }
            debts.charges = Some(charges);
            debts.caller = principal.clone();
            if let Some(refusal) = refused {
                return Err(with_caller(plan::rate_limited(self, rl, refusal)));
            }
        }
        let granted = principal.as_deref().map(|p| p.scopes);
        // A proof was judged valid: the token came with the DPoP scheme.
        let via_dpop = debts.dpop.is_some();
        route
            .require
            .check_granted(claims, granted, req.peer)
            .map_err(|d| with_caller(self.answers.denied(&d, via_dpop)))
    }
}

#[cfg(test)]
mod tests;
