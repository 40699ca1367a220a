//! What `decide` returns: the decision it would give and what it owes (charges, memories), for
//! `settle` to pay once.

use std::rc::Rc;

use super::authn::Owed;
use super::Engine;
use crate::decision::{Caller, Decision, Forbidden, Forward, LocalReply, RateLimited, Reason};
use crate::jwt::principal::{header_safe, Principal};
use crate::policy::{Mode, Unmatched};
use crate::ratelimit::apply::{Charges, Refusal};
use crate::ratelimit::RateLimits;
use crate::request::RequestView;

/// One request's decision as read, and what settling it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The answer if every charge goes through as read.
    pub(super) decision: Decision,
    /// The matched route's index and mode (for an answer that settling changes).
    pub(super) route: Option<usize>,
    pub(super) mode: Mode,
    pub(super) debts: Debts,
}

/// What a plan owes, in the order `settle` pays it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Debts {
    /// The failed-auth budget's and the token memories'.
    pub(super) authn: Option<Owed>,
    /// The DPoP replay cache's (a valid proof's `jti`).
    pub(super) dpop: Option<super::dpop::Owed>,
    /// The rate limits' (present once the request reached them).
    pub(super) charges: Option<Charges>,
    /// The authenticated caller, for the log line of a refusal settling makes.
    pub(super) caller: Option<Rc<Principal>>,
    /// The fleet call the request needs once its local charges are paid: the message and the
    /// policy of each descriptor.
    pub(super) fleet: Option<(Vec<u8>, Vec<usize>)>,
}

impl Plan {
    /// The matched route's index (`None`: unmatched or unreadable), for metrics.
    pub fn route(&self) -> Option<usize> {
        self.route
    }

    /// The plan of a request routed to `route` (`None`: unmatched or unreadable) whose checks
    /// gave `result`.
    pub(super) fn new(
        engine: &Engine,
        mut fwd: Forward,
        route: Option<usize>,
        result: Result<(), LocalReply>,
        debts: Debts,
    ) -> Plan {
        let policy = &engine.config.policy;
        let mode = route
            .and_then(|i| policy.routes.get(i))
            .and_then(|r| r.mode)
            .unwrap_or(policy.mode);
        fwd.route = route;
        let decision = match result {
            Ok(()) => Decision::Allow(fwd),
            Err(reply) => {
                let route = route_name(engine, route);
                overrule(Decision::Allow(fwd), reply, route, mode, None)
            }
        };
        Plan {
            decision,
            route,
            mode,
            debts,
        }
    }

    /// The decision, were every charge to go through as read.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The refusal the plan holds, enforced or recorded in dry-run mode.
    pub fn refusal(&self) -> Option<&LocalReply> {
        match &self.decision {
            Decision::Deny(reply) => Some(reply),
            Decision::Allow(fwd) => fwd.dry_run.as_ref(),
        }
    }
}

/// `reply` (by `caller`, when given) replaces what `decision` answered: denied when enforcing,
/// recorded (and forwarded without quota headers) in dry-run mode.
pub(super) fn overrule(
    decision: Decision,
    mut reply: LocalReply,
    route: Option<String>,
    mode: Mode,
    caller: Option<&Principal>,
) -> Decision {
    reply.route = route;
    if let Some(p) = caller {
        reply.caller = Some(Box::new(Caller::from_claims(&p.claims)));
    }
    match (decision, mode) {
        (Decision::Allow(mut fwd), Mode::DryRun) => {
            fwd.response_headers.clear();
            fwd.dry_run = Some(reply);
            Decision::Allow(fwd)
        }
        _ => Decision::Deny(reply),
    }
}

/// What goes upstream whatever the token: client copies of the headers meshguard sets removed
/// (only those present, to spare host calls on the hot path), the peer's headers set.
pub(super) fn forward(engine: &Engine, req: &RequestView<'_>) -> Forward {
    let cfg = &engine.config;
    let present = |h: &&String| req.headers.iter().any(|(n, _)| *n == h.as_str());
    let mut fwd = Forward {
        remove_headers: cfg.owned_headers.iter().filter(present).cloned().collect(),
        ..Forward::default()
    };
    for ph in &cfg.peer_headers {
        if let Some(v) = req.peer.field(ph.field).filter(|v| header_safe(v)) {
            fwd.set_headers.push((ph.header.clone(), v));
        }
    }
    fwd
}

/// The answer to requests no route matches.
pub(super) fn unmatched(engine: &Engine) -> Result<(), LocalReply> {
    let refuse = |f| Err(engine.answers.refuse(Reason::Forbidden(f)));
    match engine.config.policy.unmatched {
        Unmatched::Allow => Ok(()),
        Unmatched::Deny { status: 404 } => refuse(Forbidden::NotFound),
        Unmatched::Deny { .. } => refuse(Forbidden::NoRoute),
    }
}

/// The 429 of a rate-limit refusal.
pub(super) fn rate_limited(engine: &Engine, rl: &RateLimits, refusal: Refusal) -> LocalReply {
    let answers = &engine.answers;
    match refusal {
        Refusal::Limit { policy, verdict } => rl
            .limits
            .get(policy)
            .map(|limit| answers.rate_limited(RateLimited::Limit, limit, &verdict)),
        Refusal::Contention => None,
    }
    .unwrap_or_else(|| answers.refuse(Reason::RateLimited(RateLimited::Contention)))
}

/// The name of route `route`, for logs.
pub(super) fn route_name(engine: &Engine, route: Option<usize>) -> Option<String> {
    let route = engine.config.policy.routes.get(route?)?;
    Some(route.name.clone())
}
