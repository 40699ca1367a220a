//! Verified-token cache (per worker): a token whose signature was checked once is not checked
//! again while its key set is unchanged. Bounded by entries and bytes (oldest out first); keyed by
//! a hash of the token's last bytes ([`token_hash`]) and confirmed by comparing the whole token. A hit still runs the
//! time and audience checks with the current clock, and the caller checks the key-set generation
//! (an entry dies with the key set that verified it).
//!
//! Beside it, two small per-worker memories for the failed-authentication budget
//! ([`crate::ratelimit::budget`]), keyed by a keyed hash of the whole token: tokens that failed
//! verification (refused again without signature work) and tokens the budget deferred (a token
//! seen again is an honest retry more likely than a flood, and gets the trickle).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::principal::Principal;
use super::TokenError;

pub const DEFAULT_MAX_ENTRIES: usize = 1000;
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Tokens that failed verification remembered per worker (about 40 bytes each).
pub const FAILED_ENTRIES: usize = 4096;
/// Tokens deferred by the failed-auth budget remembered per worker (about 40 bytes each). A
/// deferred token is recognised when retried before this many other deferrals on the worker.
pub const DEFERRED_ENTRIES: usize = 8192;

/// The cache key of a token: a hash of its last 32 bytes, the end of the signature. Only tokens
/// whose signature verified enter the cache, and a hit is confirmed by comparing the whole token,
/// so the signature's tail (192 bits of it for base64url) is key enough, and hashing it instead
/// of a whole token (hundreds of bytes) was the largest single cost of a cached decision.
pub fn token_hash(token: &str) -> u64 {
    use std::hash::Hasher;
    let bytes = token.as_bytes();
    let tail = bytes.get(bytes.len().saturating_sub(32)..).unwrap_or(bytes);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(tail);
    h.finish()
}

/// A token's id in the failed and deferred memories: SipHash-1-3 of the whole token, keyed
/// with the proxy's secret (so nobody can make a valid token collide with a forged one). Computed
/// only for tokens not in the verified-token cache.
pub fn whole_token_hash(secret: &[u8; 16], token: &str) -> u64 {
    siphasher::sip::SipHasher13::new_with_key(secret).hash(token.as_bytes())
}

#[derive(Debug, Clone)]
pub struct Cached {
    pub provider: usize,
    /// Generation of the provider's key set that verified the token.
    pub generation: u64,
    pub principal: Rc<Principal>,
}

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    cached: Cached,
    bytes: usize,
}

/// A token that failed verification, and against which key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub provider: usize,
    pub generation: u64,
    pub error: TokenError,
}

/// At most `capacity` keys, oldest (least recently touched) out first. Touching a key queues it
/// again; stale queue entries are skipped on eviction, so the queue is bounded too.
#[derive(Debug)]
struct Recent<V> {
    map: HashMap<u64, (V, u64)>,
    queue: VecDeque<(u64, u64)>,
    capacity: usize,
    stamp: u64,
}

impl<V> Recent<V> {
    fn new(capacity: usize) -> Recent<V> {
        Recent {
            map: HashMap::new(),
            queue: VecDeque::new(),
            capacity,
            stamp: 0,
        }
    }

    fn get(&self, key: u64) -> Option<&V> {
        self.map.get(&key).map(|(v, _)| v)
    }

    fn touch(&mut self, key: u64, value: V) {
        if self.capacity == 0 {
            return;
        }
        while self.queue.len() >= self.capacity {
            let Some((old, stamp)) = self.queue.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(_, s)| *s == stamp) {
                self.map.remove(&old);
            }
        }
        self.stamp += 1;
        self.map.insert(key, (value, self.stamp));
        self.queue.push_back((key, self.stamp));
    }

    fn remove(&mut self, key: u64) {
        self.map.remove(&key);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<u64, Entry>,
    order: VecDeque<u64>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    failed: Recent<Failed>,
    deferred: Recent<()>,
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            max_entries,
            max_bytes,
            bytes: 0,
            failed: Recent::new(FAILED_ENTRIES),
            deferred: Recent::new(DEFERRED_ENTRIES),
        }
    }

    /// How this token failed verification, if it did recently (`id`: its [`whole_token_hash`]).
    pub fn failed(&self, id: u64) -> Option<&Failed> {
        self.failed.get(id)
    }

    /// Remembers a token that failed verification for reasons that time cannot undo.
    pub fn remember_failed(&mut self, id: u64, failed: Failed) {
        self.deferred.remove(id);
        self.failed.touch(id, failed);
    }

    /// The failed-auth budget deferred this token before.
    pub fn was_deferred(&self, id: u64) -> bool {
        self.deferred.get(id).is_some()
    }

    /// Remembers (again) that the budget deferred this token.
    pub fn defer(&mut self, id: u64) {
        self.deferred.touch(id, ());
    }

    /// The token is being verified: no longer waiting.
    pub fn undefer(&mut self, id: u64) {
        self.deferred.remove(id);
    }

    /// Entries of the failed and deferred memories.
    pub fn remembered(&self) -> (usize, usize) {
        (self.failed.len(), self.deferred.len())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The cached verification of exactly this token.
    pub fn get(&self, token: &str, hash: u64) -> Option<&Cached> {
        self.entries
            .get(&hash)
            .filter(|e| &*e.token == token)
            .map(|e| &e.cached)
    }

    /// Remembers a verified token, evicting the oldest entries to stay within both bounds.
    pub fn insert(&mut self, token: &str, hash: u64, cached: Cached) {
        // The claims are about the size of the decoded payload; count the token twice.
        let bytes = token.len() * 2 + 128;
        if self.max_entries == 0 || bytes > self.max_bytes {
            return;
        }
        self.remove(hash);
        while self.entries.len() >= self.max_entries || self.bytes + bytes > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(oldest);
        }
        self.entries.insert(
            hash,
            Entry {
                token: token.into(),
                cached,
                bytes,
            },
        );
        self.order.push_back(hash);
        self.bytes += bytes;
    }

    fn remove(&mut self, hash: u64) {
        if let Some(e) = self.entries.remove(&hash) {
            self.bytes -= e.bytes;
            self.order.retain(|h| *h != hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(provider: usize) -> Cached {
        Cached {
            provider,
            generation: 1,
            principal: Rc::new(Principal::default()),
        }
    }

    #[test]
    fn the_key_is_the_signature_tail() {
        let sig = "A".repeat(31) + "B";
        assert_eq!(
            token_hash(&format!("h.p1.{sig}")),
            token_hash(&format!("h.p2.{sig}"))
        );
        assert_ne!(token_hash(&format!("h.p.{sig}")), token_hash("h.p.AAAA"));
        // Short tokens are hashed whole; the cut is on bytes, even inside a multi-byte character
        // (80 bytes of `é`: the last 32 are 16 `é`, whatever comes before).
        assert_ne!(token_hash("x"), token_hash("y"));
        assert_eq!(
            token_hash(&"é".repeat(40)),
            token_hash(&format!("a{}", "é".repeat(16)))
        );
        assert_ne!(token_hash(&"é".repeat(40)), token_hash(&"é".repeat(15)));
    }

    /// Known answers from an independent SipHash-1-3 (the reference algorithm written in Python,
    /// checked against the SipHash paper's 2-4 vector; with a zero key it agrees with CPython's
    /// `hash(b"h.p.s")` under `PYTHONHASHSEED=0`).
    #[test]
    fn whole_token_hash_is_keyed_siphash_1_3() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(whole_token_hash(&key, ""), 0xabac_0158_050f_c4dc);
        let message: String = (0u8..15).map(char::from).collect();
        assert_eq!(whole_token_hash(&key, &message), 0xd320_d86d_2a51_9956);
        assert_eq!(whole_token_hash(&key, "h.p.s"), 0x80fa_7a10_8b9c_6077);
        assert_eq!(whole_token_hash(&[0; 16], "h.p.s"), 0xf5dc_974a_73a8_d5c1);
        assert_eq!(
            whole_token_hash(&[7; 16], "eyJhbGciOiJFZERTQSJ9.e30.c2ln"),
            0x247f_48db_c89b_1f54
        );
    }

    #[test]
    fn hits_need_the_same_token_not_just_the_same_hash() {
        let mut c = TokenCache::new(10, 1 << 20);
        c.insert("a.b.c", 7, cached(0));
        assert_eq!(c.get("a.b.c", 7).map(|e| e.provider), Some(0));
        assert!(c.get("x.y.z", 7).is_none(), "a hash collision is a miss");
        assert!(c.get("a.b.c", 8).is_none());
    }

    #[test]
    fn bounded_by_entries_and_bytes_oldest_out_first() {
        let mut c = TokenCache::new(3, 1 << 20);
        for i in 0..5u64 {
            c.insert(&format!("t{i}"), i, cached(0));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("t0", 0).is_none() && c.get("t1", 1).is_none());
        assert!(c.get("t4", 4).is_some());
        let mut small = TokenCache::new(100, 1000);
        for i in 0..20u64 {
            small.insert(&"x".repeat(100 + i as usize), i, cached(0));
        }
        assert!(small.bytes() <= 1000, "{}", small.bytes());
        assert!(small.len() < 20);
        let mut off = TokenCache::new(0, 1000);
        off.insert("t", 1, cached(0));
        assert!(off.is_empty());
    }
}
