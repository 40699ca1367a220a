//! Rate limits applied to one request: who the caller is (its identity, hashed to a slot), who
//! is exempt, which policies the request charges, in two phases. [`Slots::plan`] only reads
//! (the buckets through [`BucketStore::get`]) and says which charges the request needs and
//! whether one would refuse; [`Charges::settle`] makes them, once, for the request's final
//! decision. Re-planning a request (the host may decide twice) charges nothing.

use serde_json::Value;

use super::store::{charge_seen, BucketStore, Charge, Seen};
use super::{
    fleet, identity_hash, slot_name, slot_of, slot_prefix, Bucket, Fleet, IdentitySource, LimitBy,
    LimitChoice, RateLimits, RouteLimit, SlotKind, SlotSecret, Verdict,
};
use crate::identity::Peer;
use crate::jwt::jws::Claims;
use crate::jwt::principal::{claim_header_value, Principal};

/// One configuration's slots: the proxy's secret and, per policy, the prefixes of its slot names.
#[derive(Debug, Clone)]
pub struct Slots {
    /// Keys slot choice and the per-worker token memories (see [`identity_hash`]).
    secret: SlotSecret,
    /// Per policy: the prefix of its buckets' slot names and of its failed-auth slots'.
    prefixes: Vec<(String, String)>,
}

/// A source's failed-authentication slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The `failedAuth` policy's index in [`RateLimits::limits`].
    pub policy: usize,
    pub slot: String,
    pub fingerprint: u32,
}

/// The charges one request needs, in order, as [`Slots::plan`] read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Charges {
    steps: Vec<Step>,
    /// The policy that refuses as read (the last step): the request's answer, unless an earlier
    /// charge refuses when settled.
    pub refused: Option<Refusal>,
}

impl Charges {
    /// The planned charges of fleet policies: (policy, cost), in charge order.
    pub fn fleet_steps<'a>(&'a self, fleet: &'a Fleet) -> impl Iterator<Item = (usize, u64)> + 'a {
        self.steps
            .iter()
            .filter(|s| fleet.policies.contains(&s.policy))
            .map(|s| (s.policy, s.cost))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    policy: usize,
    slot: String,
    cost: u64,
    /// The caller's identity hash (the bucket's owner).
    owner: u64,
    /// The slot as read; `None` when it does not exist.
    seen: Option<Seen>,
}

/// Why a request is refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Policy `policy`'s bucket has no room.
    Limit { policy: usize, verdict: Verdict },
    /// A bucket could not be updated and `onContention` is `deny`.
    Contention,
}

/// What settling charges met, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Charges that ran out of CAS attempts (or found no slot).
    pub contention: u32,
    /// Charges that landed on a slot another identity was using.
    pub shared_slots: u32,
}

impl Slots {
    pub fn new(plugin: &str, secret: SlotSecret, rl: Option<&RateLimits>) -> Slots {
        let prefixes = rl.map_or_else(Vec::new, |rl| {
            rl.limits
                .iter()
                .map(|l| {
                    (
                        slot_prefix(plugin, SlotKind::Bucket, l),
                        slot_prefix(plugin, SlotKind::FailedAuth, l),
                    )
                })
                .collect()
        });
        Slots { secret, prefixes }
    }

    pub fn secret(&self) -> &SlotSecret {
        &self.secret
    }

    /// The shared-data name of every slot (the host creates them once: Envoy can only
    /// compare-and-swap entries that exist). The `failedAuth` policy's slots have their own names
    /// (`…/fa/<policy>/<slot>`, another layout); its `rl/` slots exist only when `global` or a
    /// route (`routed`: every route's limits) charges it too.
    pub fn names<'r>(
        &self,
        rl: &RateLimits,
        routed: impl IntoIterator<Item = &'r RouteLimit>,
    ) -> Vec<String> {
        let mut charged: Vec<usize> = rl.global.clone();
        for r in routed {
            match &r.choice {
                LimitChoice::Fixed(i) => charged.push(*i),
                LimitChoice::Tier {
                    by_value, default, ..
                } => {
                    charged.push(*default);
                    charged.extend(by_value.iter().map(|(_, t)| *t));
                }
            }
        }
        let mut names = Vec::new();
        for (i, (l, (bucket, failed_auth))) in rl.limits.iter().zip(&self.prefixes).enumerate() {
            let slots = 0..u64::from(l.slots);
            if rl.failed_auth == Some(i) {
                names.extend(slots.clone().map(|s| slot_name(failed_auth, s)));
                if !charged.contains(&i) {
                    continue;
                }
            }
            names.extend(slots.map(|s| slot_name(bucket, s)));
        }
        names
    }

    /// A verified token's rate-limit identity: the first claim-based source it has, as its
    /// position in `rateLimits.identity` and its slot hash (kept in [`Principal::rate_identity`]).
    pub fn token_identity(&self, rl: &RateLimits, claims: &Claims) -> Option<(usize, u64)> {
        rl.identity.iter().enumerate().find_map(|(pos, source)| {
            claim_identity(source, claims).map(|id| (pos, identity_hash(&self.secret, &id)))
        })
    }

    /// The request source's failed-auth slot, when a `failedAuth` policy is configured.
    pub fn failed_auth_gate(&self, rl: &RateLimits, peer: &Peer) -> Option<Gate> {
        let policy = rl.failed_auth?;
        let limit = rl.limits.get(policy)?;
        let (_, prefix) = self.prefixes.get(policy)?;
        let hash = identity_hash(&self.secret, &source_ip_identity(peer));
        Some(Gate {
            policy,
            slot: slot_name(prefix, slot_of(limit, hash)),
            fingerprint: super::budget::fingerprint(hash),
        })
    }

    /// The charges of the global limits and then the route's (`routed`), in order, up to the
    /// first that would refuse. Exempt callers are charged nothing. Reads buckets, writes none.
    pub fn plan(
        &self,
        rl: &RateLimits,
        routed: &[RouteLimit],
        peer: &Peer,
        principal: Option<&Principal>,
        store: &dyn BucketStore,
        now_ns: u64,
    ) -> Charges {
        let claims = principal.map(|p| &*p.claims);
        if is_exempt(rl, peer, claims) {
            return Charges::default();
        }
        let global = rl.global.iter().map(|i| (*i, 1));
        let routed = routed
            .iter()
            .map(|r| (policy_for(&r.choice, claims), r.cost));
        let mut steps = Vec::new();
        for (policy, cost) in global.chain(routed) {
            let Some(limit) = rl.limits.get(policy) else {
                continue;
            };
            if !limit.has_local_bucket() {
                // Fleet-only: nothing to read or charge here; the step is the fleet call's.
                steps.push(Step {
                    policy,
                    slot: String::new(),
                    cost,
                    owner: 0,
                    seen: None,
                });
                continue;
            }
            let owner = match limit.by {
                LimitBy::Global => identity_hash(&self.secret, "global"),
                LimitBy::SourceIp => identity_hash(&self.secret, &source_ip_identity(peer)),
                LimitBy::Identity => self.identity(rl, peer, principal),
            };
            let prefix = self.prefixes.get(policy).map_or("", |(b, _)| b.as_str());
            let slot = slot_name(prefix, slot_of(limit, owner));
            let seen = store.get(&slot);
            let refused = match &seen {
                None => rl.deny_on_contention.then_some(Refusal::Contention),
                Some((bytes, _)) => {
                    let (verdict, _) = limit.charge(Bucket::decode(bytes), cost, now_ns, owner);
                    (!verdict.allowed).then_some(Refusal::Limit { policy, verdict })
                }
            };
            steps.push(Step {
                policy,
                slot,
                cost,
                owner,
                seen,
            });
            if refused.is_some() {
                return Charges { steps, refused };
            }
        }
        Charges {
            steps,
            refused: None,
        }
    }

    /// The caller's rate-limit identity as text, for a fleet descriptor: the same choice as
    /// [`Slots::identity`] (first configured source available, else the source IP), unhashed
    /// (the keyed hash differs per proxy), bounded by [`fleet::descriptor_value`].
    pub fn fleet_identity(
        &self,
        rl: &RateLimits,
        peer: &Peer,
        principal: Option<&Principal>,
    ) -> String {
        let claims = principal.map(|p| &*p.claims);
        let found = rl.identity.iter().find_map(|source| match source {
            IdentitySource::ClientId | IdentitySource::Subject | IdentitySource::Claim(_) => {
                claims.and_then(|c| claim_identity(source, c))
            }
            _ => peer_identity(source, peer),
        });
        fleet::descriptor_value(&found.unwrap_or_else(|| source_ip_identity(peer)))
    }

    /// The fleet descriptor value of the caller's source address (a `key: sourceIp` policy),
    /// as the local bucket of the same policy counts it.
    pub fn fleet_source_ip(&self, peer: &Peer) -> String {
        fleet::descriptor_value(&source_ip_identity(peer))
    }

    /// The slot hash of the caller's rate-limit identity: the first configured source that is
    /// available, else the source IP. A token's claim-based identity was hashed once, when it
    /// was verified ([`Principal::rate_identity`]); peer facts are read per request.
    fn identity(&self, rl: &RateLimits, peer: &Peer, principal: Option<&Principal>) -> u64 {
        let from_token = principal.and_then(|p| p.rate_identity);
        for (pos, source) in rl.identity.iter().enumerate() {
            let found = match source {
                IdentitySource::ClientId | IdentitySource::Subject | IdentitySource::Claim(_) => {
                    match from_token {
                        Some((at, hash)) if at == pos => return hash,
                        _ => None,
                    }
                }
                _ => peer_identity(source, peer),
            };
            if let Some(id) = found {
                return identity_hash(&self.secret, &id);
            }
        }
        identity_hash(&self.secret, &source_ip_identity(peer))
    }
}

impl Charges {
    /// Makes the planned charges, in order, stopping at the first that refuses; the tightest
    /// verdict (fewest requests left) when none does. A charge the plan read as refusing still
    /// refuses (buckets only fill up at one `now`).
    pub fn settle(
        self,
        rl: &RateLimits,
        store: &dyn BucketStore,
        now_ns: u64,
        tally: &mut Tally,
    ) -> Result<Option<(usize, Verdict)>, Refusal> {
        let mut tightest: Option<(usize, Verdict)> = None;
        for step in self.steps {
            let Some(limit) = rl.limits.get(step.policy).filter(|l| l.has_local_bucket()) else {
                continue;
            };
            let Step {
                policy,
                slot,
                cost,
                owner,
                seen,
            } = step;
            match charge_seen(store, &slot, limit, cost, now_ns, owner, seen) {
                Charge::Done { verdict, shared } => {
                    if shared {
                        tally.shared_slots += 1;
                    }
                    if !verdict.allowed {
                        return Err(Refusal::Limit { policy, verdict });
                    }
                    if tightest.is_none_or(|(_, t)| verdict.remaining < t.remaining) {
                        tightest = Some((policy, verdict));
                    }
                }
                Charge::Contended => {
                    tally.contention += 1;
                    if rl.deny_on_contention {
                        return Err(Refusal::Contention);
                    }
                }
            }
        }
        match self.refused {
            Some(refusal) => Err(refusal),
            None => Ok(tightest),
        }
    }
}

/// The policy a route's limit charges: fixed, or the tier the caller's claim names.
fn policy_for(choice: &LimitChoice, claims: Option<&Claims>) -> usize {
    match choice {
        LimitChoice::Fixed(i) => *i,
        LimitChoice::Tier {
            claim,
            by_value,
            default,
        } => {
            let value = claims
                .and_then(|c| c.get_path(claim))
                .and_then(Value::as_str);
            by_value
                .iter()
                .find(|(v, _)| Some(v.as_str()) == value)
                .map_or(*default, |(_, i)| *i)
        }
    }
}

/// A token's rate-limit identity from one claim-based source, if it has that claim. Prefixed by
/// kind so that different kinds never share a bucket by accident.
fn claim_identity(source: &IdentitySource, claims: &Claims) -> Option<String> {
    let iss = claims.iss.as_deref().unwrap_or_default();
    let claim_str = |name: &str| claims.all.get(name).and_then(Value::as_str);
    match source {
        IdentitySource::ClientId => claim_str("client_id")
            .or_else(|| claim_str("azp"))
            .map(|v| format!("client:{iss}|{v}")),
        IdentitySource::Subject => claim_str("sub").map(|v| format!("sub:{iss}|{v}")),
        IdentitySource::Claim(path) => claims
            .get_path(path)
            .and_then(claim_header_value)
            .map(|v| format!("claim:{}:{iss}|{v}", path.join("."))),
        IdentitySource::SpiffeId | IdentitySource::CertificateSha256 | IdentitySource::SourceIp => {
            None
        }
    }
}

/// An identity read from the connection (`None` for the token's sources).
fn peer_identity(source: &IdentitySource, peer: &Peer) -> Option<String> {
    match source {
        IdentitySource::SpiffeId => peer.spiffe().map(|id| format!("spiffe:{}", id.uri)),
        IdentitySource::CertificateSha256 => peer.certificate_sha256().map(|d| format!("cert:{d}")),
        IdentitySource::SourceIp => Some(source_ip_identity(peer)),
        IdentitySource::ClientId | IdentitySource::Subject | IdentitySource::Claim(_) => None,
    }
}

/// `ip:<address without port>`.
fn source_ip_identity(peer: &Peer) -> String {
    let addr = peer.source_address().unwrap_or("unknown");
    let ip = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => addr,
    };
    format!("ip:{ip}")
}

/// Exempt: a role in `exempt.roles` (read from the roles claim), or a peer whose SPIFFE ID
/// matches `exempt.principals`.
fn is_exempt(rl: &RateLimits, peer: &Peer, claims: Option<&Claims>) -> bool {
    if !rl.exempt_roles.is_empty() {
        let roles = claims.and_then(|c| c.get_path(&rl.exempt_roles_claim));
        let has = |r: &String| match roles {
            Some(Value::String(s)) => s == r,
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(r.as_str())),
            _ => false,
        };
        if rl.exempt_roles.iter().any(has) {
            return true;
        }
    }
    !rl.exempt_principals.is_empty()
        && peer
            .spiffe()
            .is_some_and(|id| rl.exempt_principals.iter().any(|p| p.matches(&id.uri)))
}
