//! The failed-authentication budget: it bounds signature work, not service.
//!
//! Only a token that needs verifying from scratch meets the budget: a token in the verified-token
//! cache is never refused by it, and a token that already failed is refused from the negative
//! cache without any signature work (both per worker, in [`TokenCache`]). Each failed-auth slot
//! (a fixed shared-data entry, chosen by the keyed hash of the source address) holds a
//! [`FailedAuthSlot`]:
//!
//! - the **budget**: the `failedAuth` policy's GCRA bucket, charged by each failed verification;
//! - the **trickle**: a second GCRA bucket, [`TRICKLE_BURST`] checks then one per
//!   [`TRICKLE_INTERVAL_NS`], spent only once the budget is;
//! - the fingerprints of the last [`RECENT_SOURCES`] sources that failed on this slot.
//!
//! While the budget has room every token is verified. Once it is spent, a token is verified on a
//! trickle credit when its source is not among the recent failures (a newcomer that merely shares
//! the slot) or when this worker deferred the same token before (honest clients retry the same
//! token; a flood of forged tokens is made of new ones). Any other token gets `429` unchecked
//! and is remembered as deferred, so its retry is the one the trickle serves.
//!
//! **Bound.** Per slot, signature checks of failing tokens are at most the budget (burst, then
//! its rate) plus the trickle (burst, then one per second); so per proxy at most
//! `slots × (requests/per + 1/s)` after the bursts, whatever the number of source addresses.
//!
//! [`TokenCache`]: crate::jwt::cache::TokenCache

use super::store::{BucketStore, Seen, MAX_CAS_ATTEMPTS};
use super::{Bucket, Limit, Verdict};

/// One trickle credit per second per slot once the budget is spent.
pub const TRICKLE_INTERVAL_NS: u64 = 1_000_000_000;
/// Trickle credits a slot holds at most (newcomers arriving together on one slot).
pub const TRICKLE_BURST: u64 = 3;
/// Fingerprints of recently failing sources kept per slot.
pub const RECENT_SOURCES: usize = 6;

/// The state of one failed-auth slot: 40 bytes in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailedAuthSlot {
    /// Theoretical arrival time of the budget (ns since the epoch).
    pub budget_tat_ns: u64,
    /// Theoretical arrival time of the trickle.
    pub trickle_tat_ns: u64,
    /// Fingerprints of the sources that failed last, newest first; 0 is an empty place.
    pub recent: [u32; RECENT_SOURCES],
}

impl FailedAuthSlot {
    pub const LEN: usize = 16 + 4 * RECENT_SOURCES;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(dst) = out.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
            at += bytes.len();
        };
        put(&self.budget_tat_ns.to_le_bytes());
        put(&self.trickle_tat_ns.to_le_bytes());
        for fp in self.recent {
            put(&fp.to_le_bytes());
        }
        out
    }

    /// Anything that is not a slot of this layout (an empty value, an older layout) reads as a
    /// fresh slot: full budget, full trickle, no recent failures.
    pub fn decode(bytes: &[u8]) -> FailedAuthSlot {
        if bytes.len() != Self::LEN {
            return FailedAuthSlot::default();
        }
        let u64_at = |i: usize| {
            bytes
                .get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let u32_at = |i: usize| {
            bytes
                .get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes)
        };
        let mut recent = [0u32; RECENT_SOURCES];
        for (i, fp) in recent.iter_mut().enumerate() {
            *fp = u32_at(16 + 4 * i);
        }
        FailedAuthSlot {
            budget_tat_ns: u64_at(0),
            trickle_tat_ns: u64_at(8),
            recent,
        }
    }

    /// The source failed on this slot recently.
    pub fn lists(&self, fingerprint: u32) -> bool {
        self.recent.contains(&fingerprint)
    }

    fn budget(&self) -> Bucket {
        Bucket {
            tat_ns: self.budget_tat_ns,
            owner: 0,
        }
    }

    /// After one failed verification: the budget charged (when it has room; a spent budget
    /// stays spent, it does not go deeper) and the source moved to the front of the recent list.
    pub fn with_failure(mut self, limit: &Limit, fingerprint: u32, now_ns: u64) -> FailedAuthSlot {
        if let (_, Some(next)) = limit.charge(self.budget(), 1, now_ns, 0) {
            self.budget_tat_ns = next.tat_ns;
        }
        let at = self
            .recent
            .iter()
            .position(|f| *f == fingerprint)
            .unwrap_or(RECENT_SOURCES - 1);
        if let Some(head) = self.recent.get_mut(..=at) {
            head.rotate_right(1);
            if let Some(first) = head.first_mut() {
                *first = fingerprint;
            }
        }
        self
    }

    /// Takes one trickle credit, or says how long until one is there.
    pub fn take_trickle(mut self, now_ns: u64) -> Result<FailedAuthSlot, u64> {
        let t = u128::from(TRICKLE_INTERVAL_NS);
        let now = u128::from(now_ns);
        let next = u128::from(self.trickle_tat_ns).max(now) + t;
        let capacity = t * u128::from(TRICKLE_BURST);
        if next - now <= capacity {
            self.trickle_tat_ns = u64::try_from(next).unwrap_or(u64::MAX);
            Ok(self)
        } else {
            Err(u64::try_from(next - now - capacity).unwrap_or(u64::MAX))
        }
    }
}

/// A source's fingerprint in a slot's recent list: 32 bits of its identity hash that do not
/// choose the slot (never 0, the empty place).
pub fn fingerprint(identity_hash: u64) -> u32 {
    ((identity_hash >> 32) as u32).max(1)
}

/// What the gate decides for a token that needs verifying from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The budget has room (or the slot is missing: nothing to hold against the source).
    Budget,
    /// The budget is spent; verified on a trickle credit.
    Trickle,
    /// Refused without verification; `verdict` is the budget's, with `retry_after_ns` the time
    /// until the trickle has a credit again.
    Deferred { verdict: Verdict },
    /// Every compare-and-swap attempt lost: refused, the caller counts contention.
    Contended { verdict: Verdict },
}

/// What [`assess`] reads in a slot, without writing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// The budget has room (or the slot is missing): verify, nothing to take.
    Budget,
    /// The budget is spent and a trickle credit is there: verify, then take it ([`admit_seen`]
    /// with `seen`, which may still find it gone).
    Trickle { seen: Seen },
    /// Refused without verification (see [`Admission::Deferred`]).
    Deferred { verdict: Verdict },
}

/// What [`admit`] would decide, read only: the pure phase of a request asks this, and the
/// settling phase takes the trickle credit.
pub fn assess(
    store: &dyn BucketStore,
    slot: &str,
    limit: &Limit,
    fingerprint: u32,
    retried: bool,
    now_ns: u64,
) -> Assessment {
    let Some((bytes, cas)) = store.get(slot) else {
        return Assessment::Budget;
    };
    let state = FailedAuthSlot::decode(&bytes);
    let Some(spent) = limit.exhausted(state.budget(), now_ns) else {
        return Assessment::Budget;
    };
    let newcomer = retried || !state.lists(fingerprint);
    match state.take_trickle(now_ns) {
        Ok(_) if newcomer => Assessment::Trickle { seen: (bytes, cas) },
        Ok(_) => Assessment::Deferred {
            verdict: deferred(spent, 0),
        },
        Err(wait_ns) => Assessment::Deferred {
            verdict: deferred(spent, wait_ns),
        },
    }
}

/// The budget's verdict on a deferred token: retry once the trickle has a credit (at least one
/// trickle interval).
fn deferred(spent: Verdict, wait_ns: u64) -> Verdict {
    Verdict {
        retry_after_ns: wait_ns.max(TRICKLE_INTERVAL_NS),
        ..spent
    }
}

/// Decides whether a token from the source with `fingerprint` is verified. `retried`: this
/// worker deferred the same token before (or it cannot tell, having no memory of deferrals).
pub fn admit(
    store: &dyn BucketStore,
    slot: &str,
    limit: &Limit,
    fingerprint: u32,
    retried: bool,
    now_ns: u64,
) -> Admission {
    admit_seen(store, slot, limit, fingerprint, retried, now_ns, None)
}

/// [`admit`], whose first attempt starts from `seen` (the slot as [`assess`] read it).
pub fn admit_seen(
    store: &dyn BucketStore,
    slot: &str,
    limit: &Limit,
    fingerprint: u32,
    retried: bool,
    now_ns: u64,
    mut seen: Option<Seen>,
) -> Admission {
    let mut last = None;
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((bytes, cas)) = seen.take().or_else(|| store.get(slot)) else {
            return Admission::Budget;
        };
        let state = FailedAuthSlot::decode(&bytes);
        let Some(spent) = limit.exhausted(state.budget(), now_ns) else {
            return Admission::Budget;
        };
        let defer = |wait_ns: u64| Admission::Deferred {
            verdict: deferred(spent, wait_ns),
        };
        if !retried && state.lists(fingerprint) {
            // A new token from a source that failed here recently: not verified now; its retry
            // is, once the trickle has a credit.
            return defer(state.take_trickle(now_ns).err().unwrap_or(0));
        }
        match state.take_trickle(now_ns) {
            Ok(next) => {
                if store.set(slot, &next.encode(), cas).is_ok() {
                    return Admission::Trickle;
                }
                last = Some(spent);
            }
            Err(wait_ns) => return defer(wait_ns),
        }
    }
    let verdict = last.map_or(
        Verdict {
            allowed: false,
            remaining: 0,
            reset_ns: 0,
            retry_after_ns: TRICKLE_INTERVAL_NS,
        },
        |v| Verdict {
            retry_after_ns: TRICKLE_INTERVAL_NS,
            ..v
        },
    );
    Admission::Contended { verdict }
}

/// Records one failed verification from the source with `fingerprint`. `false` when every
/// compare-and-swap attempt lost (or the slot is missing).
pub fn record_failure(
    store: &dyn BucketStore,
    slot: &str,
    limit: &Limit,
    fingerprint: u32,
    now_ns: u64,
) -> bool {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((bytes, cas)) = store.get(slot) else {
            return false;
        };
        let next = FailedAuthSlot::decode(&bytes).with_failure(limit, fingerprint, now_ns);
        if store.set(slot, &next.encode(), cas).is_ok() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
