//! Fleet limits in the pipeline. `decide` plans the call (the descriptors of the fleet policies
//! the request's local buckets admitted), the host sends it once the local charges are settled,
//! and [`Engine::fleet_settle`] turns the service's answer, or the lack of one, into the final
//! decision. A request a local bucket refuses never costs a call.

use std::rc::Rc;

use super::inputs::Events;
use super::plan::{overrule, route_name, Plan};
use super::Engine;
use crate::decision::{limit_headers, Decision, RateLimited, Reason};
use crate::identity::Peer;
use crate::jwt::principal::Principal;
use crate::policy::Mode;
use crate::ratelimit::apply::Charges;
use crate::ratelimit::fleet::{self, Code, Descriptor, EntryValue, Failure, Outcome, Status};
use crate::ratelimit::{Limit, LimitBy, Verdict};

/// A planned `ShouldRateLimit` call and what is needed to judge its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCall {
    /// The encoded `RateLimitRequest`.
    pub message: Vec<u8>,
    /// The policy of each descriptor, in order.
    policies: Vec<usize>,
    route: Option<usize>,
    mode: Mode,
    caller: Option<Rc<Principal>>,
}

/// The descriptors of the fleet policies among `charges` (`None`: no fleet policy charged).
/// Built from verified facts only: the policy's name, the caller's rate-limit identity, and the
/// entries the policy names (`route`: the matched route's name; claims of the verified token).
pub(super) fn plan(
    engine: &Engine,
    charges: &Charges,
    route: &str,
    peer: &Peer,
    principal: Option<&Principal>,
) -> Option<(Vec<u8>, Vec<usize>)> {
    let rl = engine.config.rate_limits.as_ref()?;
    let fleet = rl.fleet.as_ref()?;
    let mut identity = None;
    let descriptors: Vec<Descriptor> = charges
        .fleet_steps(fleet)
        .filter_map(|(policy, cost)| {
            let limit = rl.limits.get(policy)?;
            let who = match limit.by {
                LimitBy::Global => "global".to_string(),
                // Per source address, as the policy's local bucket counts it: never the
                // caller's token identity (rotating tokens must not escape a per-IP limit).
                LimitBy::SourceIp => engine.slots.fleet_source_ip(peer),
                LimitBy::Identity => identity
                    .get_or_insert_with(|| engine.slots.fleet_identity(rl, peer, principal))
                    .clone(),
            };
            let mut entries = vec![
                ("policy".to_string(), limit.name.clone()),
                ("identity".to_string(), who),
            ];
            for spec in fleet.entries(policy) {
                let value = match &spec.value {
                    EntryValue::Route => Some(route.to_string()),
                    EntryValue::Claim { path, default } => {
                        let claim = principal.and_then(|p| p.claims.get_path(path));
                        fleet::claim_entry_value(claim).or_else(|| default.clone())
                    }
                };
                // No value and no default: the entry is left out, and the service counts the
                // request under the shorter descriptor (README "Per proxy or fleet").
                if let Some(value) = value {
                    entries.push((spec.key.clone(), value));
                }
            }
            Some(Descriptor {
                policy,
                entries,
                cost,
            })
        })
        .collect();
    if descriptors.is_empty() {
        return None;
    }
    let message = fleet::encode_request(&fleet.service.domain, &descriptors);
    Some((message, descriptors.iter().map(|d| d.policy).collect()))
}

impl Plan {
    /// The fleet call the request needs after [`Engine::settle`]: `None` when it needs none,
    /// or is refused already (a locally refused request never costs a call).
    pub fn take_fleet(&mut self) -> Option<FleetCall> {
        let (message, policies) = self.debts.fleet.take()?;
        if self.refusal().is_some() {
            return None;
        }
        Some(FleetCall {
            message,
            policies,
            route: self.route,
            mode: self.mode,
            caller: self.debts.caller.clone(),
        })
    }
}

impl Engine {
    /// The final decision of a request whose local charges were settled into `decision` and
    /// whose fleet call gave `answer` (the response message), or failed.
    pub fn fleet_settle(
        &self,
        decision: Decision,
        call: FleetCall,
        answer: Result<&[u8], Failure>,
        events: &mut Events,
    ) -> Decision {
        let Some(rl) = &self.config.rate_limits else {
            return decision;
        };
        let Some(fleet) = &rl.fleet else {
            return decision;
        };
        let decoded =
            answer.and_then(|bytes| fleet::decode_response(bytes).ok_or(Failure::Malformed));
        let outcome = match &decoded {
            Err(f) => Outcome::Failed(*f),
            Ok(a) => match a.code {
                Code::Ok => Outcome::Ok,
                Code::OverLimit => Outcome::OverLimit,
                Code::Unknown => Outcome::Failed(Failure::Unknown),
            },
        };
        let route = route_name(self, call.route);
        let caller = call.caller.as_deref();
        let answer = match (outcome, decoded) {
            (Outcome::Failed(_), _) | (_, Err(_)) => {
                events.fleet = Some(outcome);
                if fleet.service.fail_open {
                    return decision;
                }
                let why = Reason::RateLimited(RateLimited::ServiceUnavailable);
                return overrule(decision, self.answers.refuse(why), route, call.mode, caller);
            }
            (_, Ok(answer)) => answer,
        };
        let numbers = answer
            .status
            .and_then(|(i, s)| Some((self.fleet_limit(call.policies.get(i)?, &s)?, s)));
        events.fleet = Some(match outcome {
            Outcome::Ok if numbers.is_none() => Outcome::OkNoLimit,
            other => other,
        });
        if outcome == Outcome::OverLimit {
            let mut reply = match &numbers {
                Some((limit, s)) => {
                    self.answers
                        .rate_limited(RateLimited::Fleet, limit, &verdict(s, false))
                }
                None => {
                    let mut r = self.answers.refuse(Reason::RateLimited(RateLimited::Fleet));
                    r.headers.push(("retry-after", "1".to_string()));
                    r
                }
            };
            extend(&mut reply.headers, answer.headers);
            return overrule(decision, reply, route, call.mode, caller);
        }
        let mut decision = decision;
        if let Decision::Allow(fwd) = &mut decision {
            if rl.response_headers {
                if let Some((limit, s)) = &numbers {
                    extend(
                        &mut fwd.response_headers,
                        limit_headers(limit, &verdict(s, true), false),
                    );
                }
                extend(&mut fwd.response_headers, answer.headers);
            }
        }
        decision
    }

    /// The limit a service's status describes, named after policy `policy`.
    fn fleet_limit(&self, policy: &usize, s: &Status) -> Option<Limit> {
        let local = self.config.rate_limits.as_ref()?.limits.get(*policy)?;
        let window_ns = match s.unit_seconds {
            0 => s.reset_ns.max(1_000_000_000),
            secs => secs.saturating_mul(1_000_000_000),
        };
        (s.limit > 0).then(|| Limit {
            name: local.name.clone(),
            requests: s.limit,
            per_ns: window_ns,
            burst: s.limit,
            by: local.by,
            slots: 0,
        })
    }
}

/// A service status as a verdict: it says when the window resets, which is also when a refused
/// request is next admitted.
fn verdict(s: &Status, allowed: bool) -> Verdict {
    Verdict {
        allowed,
        remaining: s.remaining,
        reset_ns: s.reset_ns,
        retry_after_ns: s.reset_ns,
    }
}

/// Adds `more`, replacing earlier values of the same names (the service's numbers are the
/// fleet's, more telling than a local bucket's).
fn extend(headers: &mut Vec<(&'static str, String)>, more: Vec<(&'static str, String)>) {
    for (name, value) in more {
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value));
    }
}

#[cfg(test)]
mod tests;
