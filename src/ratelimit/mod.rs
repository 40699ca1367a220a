//! Rate limiting: GCRA buckets kept in a compare-and-swap store (Envoy shared data in the host),
//! so a limit holds exactly across all worker VMs of a proxy.
//!
//! Each bucket is one 16-byte value: the theoretical arrival time (TAT, ns since the epoch) and
//! the 64-bit hash of the identity that last charged it. A bucket of capacity `burst` refilled at
//! `requests / per` admits a request of cost `c` at time `now` when
//! `max(TAT, now) + c·T − now ≤ burst·T` (with `T = per / requests`), and then stores the new TAT.
//! Refill is lazy arithmetic on `now`: no per-bucket timer work. A clock going backwards never grants
//! anything (`max(TAT, now)`).
//!
//! **Bounded slots.** Envoy never deletes shared-data keys, so each policy owns a fixed number of
//! slots (named shared-data entries); an identity is hashed (never stored raw) to one slot. Identities that collide share the
//! slot's bucket: a slot is never cleared, only time refills it, so no client can reset its own
//! bucket by churning identities and nobody can evict a victim's bucket to refill it. A collision
//! can only make limiting stricter (it is counted when the slot was still in use by another
//! identity).

pub mod apply;
pub mod budget;
pub mod fleet;
pub mod store;

use crate::identity::PrincipalPattern;

/// Where an identity comes from, in the configured order; the source IP is always the last resort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// `client_id`, else `azp`.
    ClientId,
    /// `iss` + `sub`.
    Subject,
    /// Any claim (e.g. a tenant).
    Claim(Vec<String>),
    SpiffeId,
    CertificateSha256,
    SourceIp,
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub identity: Vec<IdentitySource>,
    pub limits: Vec<Limit>,
    /// Indexes into `limits` applied to every routed request.
    pub global: Vec<usize>,
    pub exempt_roles: Vec<String>,
    /// Where exempt roles are read (the top-level `rolesClaim`).
    pub exempt_roles_claim: Vec<String>,
    pub exempt_principals: Vec<PrincipalPattern>,
    /// A source-IP limit charged by each failed authentication; when empty, tokens from that
    /// source are refused before any signature work.
    pub failed_auth: Option<usize>,
    pub deny_on_contention: bool,
    pub response_headers: bool,
    /// The rate-limit service and the policies it counts (`rateLimits.service`, `fleet: true`).
    pub fleet: Option<Fleet>,
}

/// Fleet-wide limits: the service to ask and which policies it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub service: fleet::Service,
    /// Indexes into `limits` of the fleet policies (their local bucket, if any, is charged
    /// first).
    pub policies: Vec<usize>,
    /// The entries fleet policies add to their descriptor (`fleet.entries`): policy index and
    /// its entries, for the policies that have some.
    pub entries: Vec<(usize, Vec<fleet::EntrySpec>)>,
}

impl Fleet {
    /// The entries policy `policy` adds to its descriptor (none for most).
    pub fn entries(&self, policy: usize) -> &[fleet::EntrySpec] {
        self.entries
            .iter()
            .find(|(p, _)| *p == policy)
            .map_or(&[], |(_, e)| e.as_slice())
    }
}

#[derive(Debug, Clone)]
pub struct RouteLimit {
    pub choice: LimitChoice,
    pub cost: u64,
}

#[derive(Debug, Clone)]
pub enum LimitChoice {
    Fixed(usize),
    Tier {
        claim: Vec<String>,
        by_value: Vec<(String, usize)>,
        default: usize,
    },
}

impl RateLimits {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.limits.iter().position(|l| l.name == name)
    }
}

/// A named limit: `requests` per `per_ns`, at most `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub name: String,
    pub requests: u64,
    pub per_ns: u64,
    pub burst: u64,
    /// What its buckets are per.
    pub by: LimitBy,
    /// Number of shared-data slots (buckets) for this limit; 0 for a fleet-only policy, which
    /// has no local bucket (`requests`, `per`, `burst` are then unused).
    pub slots: u32,
}

/// What a limit's buckets are per (the `key` field of a policy in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBy {
    /// The caller's identity (the configured identity order, falling back to source IP).
    Identity,
    /// The source IP address.
    SourceIp,
    /// One bucket shared by everybody.
    Global,
}

/// The state of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    pub tat_ns: u64,
    pub owner: u64,
}

impl Bucket {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.tat_ns.to_le_bytes());
        out[8..].copy_from_slice(&self.owner.to_le_bytes());
        out
    }

    /// Anything that is not a bucket (an empty value, another layout) reads as a full bucket.
    pub fn decode(bytes: &[u8]) -> Bucket {
        let word = |i: usize| {
            bytes
                .get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        if bytes.len() != Self::LEN {
            return Bucket::default();
        }
        Bucket {
            tat_ns: word(0),
            owner: word(8),
        }
    }
}

/// The outcome of charging a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Whole requests (cost 1) left right after this one.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
    /// When denied: nanoseconds until this request's cost would be admitted.
    pub retry_after_ns: u64,
}

impl Limit {
    /// False for a fleet-only policy: nothing is charged locally, only the service counts.
    pub fn has_local_bucket(&self) -> bool {
        self.slots > 0
    }

    /// Emission interval `T` in ns (at least 1).
    fn interval_ns(&self) -> u128 {
        (u128::from(self.per_ns) / u128::from(self.requests.max(1))).max(1)
    }

    /// Charges `cost` to `bucket` at `now_ns`. Returns the verdict and, when allowed, the new state.
    pub fn charge(
        &self,
        bucket: Bucket,
        cost: u64,
        now_ns: u64,
        owner: u64,
    ) -> (Verdict, Option<Bucket>) {
        let t = self.interval_ns();
        let capacity = t * u128::from(self.burst);
        let now = u128::from(now_ns);
        let start = u128::from(bucket.tat_ns).max(now);
        let new_tat = start + t * u128::from(cost);
        let used_after = new_tat - now;
        if used_after <= capacity {
            let remaining = (capacity - used_after) / t;
            let verdict = Verdict {
                allowed: true,
                remaining: clamp(remaining),
                reset_ns: clamp(used_after),
                retry_after_ns: 0,
            };
            (
                verdict,
                Some(Bucket {
                    tat_ns: clamp(new_tat),
                    owner,
                }),
            )
        } else {
            let used_now = start - now;
            let verdict = Verdict {
                allowed: false,
                remaining: clamp(capacity.saturating_sub(used_now) / t),
                reset_ns: clamp(used_now),
                retry_after_ns: clamp(used_after - capacity),
            };
            (verdict, None)
        }
    }

    /// Whether a bucket is empty (no request of cost 1 would pass), without charging it.
    pub fn exhausted(&self, bucket: Bucket, now_ns: u64) -> Option<Verdict> {
        let (v, _) = self.charge(bucket, 1, now_ns, bucket.owner);
        (!v.allowed).then_some(v)
    }

    /// Seconds in the policy window, for the RateLimit-Policy `w` parameter.
    pub fn window_seconds(&self) -> u64 {
        self.per_ns.div_ceil(1_000_000_000).max(1)
    }
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// A 128-bit key for [`identity_hash`]: random per proxy (shared by its workers), so that nobody
/// outside the proxy can tell which identities share a slot or aim at a chosen one.
pub type SlotSecret = [u8; 16];

/// The 64-bit hash of an identity string that chooses its slot: SipHash-2-4 keyed with the
/// proxy's secret over the identity's bytes (the same in every worker VM of the proxy, since they
/// share the secret). Identities are never used raw in slot names.
pub fn identity_hash(secret: &SlotSecret, identity: &str) -> u64 {
    siphasher::sip::SipHasher24::new_with_key(secret).hash(identity.as_bytes())
}

/// A stable 64-bit hash with fixed, public keys, for names that must be the same in every proxy
/// and are not chosen by clients (the shared-data names of a JWKS source). Equal to what
/// `std::hash::SipHasher` with these keys gave for a `&str`, so existing names do not move.
pub fn stable_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h =
        siphasher::sip::SipHasher24::new_with_keys(0x6d65_7368_6775_6172, 0x7261_7465_6c69_6d74);
    text.hash(&mut h);
    h.finish()
}

/// The two families of a policy's slots in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// Its GCRA buckets (`rl`).
    Bucket,
    /// Its failed-authentication slots (`fa`, [`budget`]'s layout).
    FailedAuth,
}

/// The prefix of a policy's slot names: `meshguard/<plugin>/<rl|fa>/<policy>/` (built once per
/// configuration; a slot's name is this plus the slot number, see [`slot_name`]).
pub fn slot_prefix(plugin: &str, kind: SlotKind, limit: &Limit) -> String {
    let family = match kind {
        SlotKind::Bucket => "rl",
        SlotKind::FailedAuth => "fa",
    };
    format!("meshguard/{plugin}/{family}/{}/", limit.name)
}

/// The slot an identity hash falls in.
pub fn slot_of(limit: &Limit, hash: u64) -> u64 {
    hash % u64::from(limit.slots.max(1))
}

/// The shared-data name of slot `slot` under `prefix` (from [`slot_prefix`]).
pub fn slot_name(prefix: &str, slot: u64) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(prefix.len() + 10);
    name.push_str(prefix);
    let _ = write!(name, "{slot}");
    name
}

#[cfg(test)]
mod tests;
