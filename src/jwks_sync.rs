//! How remote JWKS are shared by all worker VMs of one proxy, as plain data and arithmetic.
//!
//! Per provider, three shared-data keys (a fixed number: Envoy never deletes keys):
//! - `…/meta`: [`JwksMeta`], 28 bytes: version, when fetched, when the next fetch is due, and
//!   the count of failures since the last success. Workers poll this small value and re-parse
//!   keys only when `version` changes.
//! - `…/doc`: the last good JWKS document (written before `meta`, so a version always has one).
//! - `…/lease`: [`Lease`], 8 bytes: until when one worker holds the right to fetch. Taken with
//!   compare-and-swap, so one fetch runs per proxy; it expires by itself if its holder hangs.
//! - `…/refetch`: 8 bytes, when a token with an unknown `kid` last caused a refetch (at most one
//!   per `kidMissRefetchSeconds`, so bogus kids cannot cause a fetch storm).

/// Extra time a lease outlives the fetch timeout before another worker may take over.
pub const LEASE_MARGIN_MS: u64 = 1_000;
/// First retry delay after a failed fetch; doubles per failure.
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest retry delay after failures.
pub const RETRY_MAX_MS: u64 = 60_000;

/// Shared-data key names for one provider of one plugin instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeys {
    pub meta: String,
    pub doc: String,
    pub lease: String,
    pub refetch: String,
}

impl SharedKeys {
    /// Keys of one provider. `source` identifies what is fetched (issuer, URI, cluster): two
    /// plugin instances or configuration versions share a document only when it is the same one.
    pub fn new(plugin: &str, provider: &str, source: &str) -> SharedKeys {
        let fingerprint = crate::ratelimit::stable_hash(source);
        let base = format!("meshguard/{plugin}/jwks/{provider}/{fingerprint:016x}");
        SharedKeys {
            meta: format!("{base}/meta"),
            doc: format!("{base}/doc"),
            lease: format!("{base}/lease"),
            refetch: format!("{base}/refetch"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JwksMeta {
    /// 0 until the first successful fetch; +1 per stored document.
    pub version: u64,
    pub fetched_at_ms: u64,
    pub next_due_ms: u64,
    pub failures: u32,
}

impl JwksMeta {
    pub const LEN: usize = 28;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..16].copy_from_slice(&self.fetched_at_ms.to_le_bytes());
        out[16..24].copy_from_slice(&self.next_due_ms.to_le_bytes());
        out[24..].copy_from_slice(&self.failures.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<JwksMeta> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        if bytes.len() != Self::LEN {
            return None;
        }
        Some(JwksMeta {
            version: u64_at(0)?,
            fetched_at_ms: u64_at(8)?,
            next_due_ms: u64_at(16)?,
            failures: u32::from_le_bytes(bytes.get(24..28)?.try_into().ok()?),
        })
    }

    /// A fetch is due when nothing was fetched yet or the due time has come.
    pub fn fetch_due(meta: Option<&JwksMeta>, now_ms: u64) -> bool {
        meta.is_none_or(|m| now_ms >= m.next_due_ms)
    }

    /// The state after a successful fetch at `now_ms`.
    pub fn after_success(prev: Option<&JwksMeta>, now_ms: u64, refresh_s: u64) -> JwksMeta {
        JwksMeta {
            version: prev.map_or(0, |m| m.version).saturating_add(1),
            fetched_at_ms: now_ms,
            next_due_ms: now_ms.saturating_add(refresh_s.saturating_mul(1000)),
            failures: 0,
        }
    }

    /// The state after a failed fetch: the document and version stay; the next try backs off
    /// exponentially, never later than one refresh interval.
    pub fn after_failure(prev: Option<&JwksMeta>, now_ms: u64, refresh_s: u64) -> JwksMeta {
        let prev = prev.copied().unwrap_or_default();
        let failures = prev.failures.saturating_add(1);
        let cap = RETRY_MAX_MS
            .min(refresh_s.saturating_mul(1000))
            .max(RETRY_BASE_MS);
        let delay = RETRY_BASE_MS
            .saturating_mul(1u64 << (failures - 1).min(20))
            .min(cap);
        JwksMeta {
            failures,
            next_due_ms: now_ms.saturating_add(delay),
            ..prev
        }
    }
}

/// Until when a worker may fetch (ms since the epoch); 0 means free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    pub expires_ms: u64,
}

impl Lease {
    pub const FREE: Lease = Lease { expires_ms: 0 };

    pub fn encode(&self) -> [u8; 8] {
        self.expires_ms.to_le_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        Some(Lease {
            expires_ms: u64::from_le_bytes(bytes.try_into().ok()?),
        })
    }

    pub fn is_free(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }

    /// A lease taken at `now_ms` for a fetch with this timeout.
    pub fn take(now_ms: u64, timeout_ms: u64) -> Lease {
        Lease {
            expires_ms: now_ms
                .saturating_add(timeout_ms)
                .saturating_add(LEASE_MARGIN_MS),
        }
    }
}

/// Why a JWKS fetch failed: each is counted (`jwks.<provider>.fetch_error.<code>`) and logged;
/// none of them touches the keys already held (stale-if-error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// Envoy refused to start the call (e.g. no such cluster).
    Dispatch,
    /// No response headers: connection refused or reset, timeout, a body cut short or larger
    /// than Envoy's buffer.
    NoResponse,
    /// A status other than 200 (redirects are not followed).
    Status,
    /// A `content-type` that is not JSON.
    ContentType,
    /// A body larger than `jwksMaxBytes`.
    TooLarge,
    /// Not JSON, or not a JWK set.
    Invalid,
    /// A JWK set without a key meshguard can use.
    NoUsableKey,
    /// The document could not be stored in shared data.
    Store,
}

impl FetchError {
    pub const ALL: [FetchError; 8] = [
        FetchError::Dispatch,
        FetchError::NoResponse,
        FetchError::Status,
        FetchError::ContentType,
        FetchError::TooLarge,
        FetchError::Invalid,
        FetchError::NoUsableKey,
        FetchError::Store,
    ];

    pub fn code(self) -> &'static str {
        match self {
            FetchError::Dispatch => "dispatch",
            FetchError::NoResponse => "no_response",
            FetchError::Status => "status",
            FetchError::ContentType => "content_type",
            FetchError::TooLarge => "too_large",
            FetchError::Invalid => "invalid",
            FetchError::NoUsableKey => "no_usable_key",
            FetchError::Store => "store",
        }
    }
}

/// What arrived in answer to a JWKS fetch, before the body is read.
#[derive(Debug, Clone, Copy)]
pub struct AnswerHead<'a> {
    /// Number of response headers the host reported (0: the call failed without a response).
    pub headers: usize,
    pub status: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub body_size: usize,
}

/// Judges an answer's status line and headers: `Ok` when its body is worth reading. A missing
/// `content-type` is tolerated (some IdPs omit it); a present one must be JSON
/// (`application/json`, `application/jwk-set+json` or another `+json` type).
pub fn judge_answer(head: &AnswerHead<'_>, max_bytes: usize) -> Result<(), FetchError> {
    if head.headers == 0 {
        return Err(FetchError::NoResponse);
    }
    match head.status {
        None => return Err(FetchError::NoResponse),
        Some(b"200") => {}
        Some(_) => return Err(FetchError::Status),
    }
    if let Some(ct) = head.content_type {
        let ct = String::from_utf8_lossy(ct);
        let media = ct.split(';').next().unwrap_or_default().trim();
        let json = media.eq_ignore_ascii_case("application/json")
            || (media.len() > "application/+json".len()
                && media
                    .get(..12)
                    .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
                && media
                    .get(media.len() - 5..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json")));
        if !json {
            return Err(FetchError::ContentType);
        }
    }
    if head.body_size > max_bytes {
        return Err(FetchError::TooLarge);
    }
    Ok(())
}

/// Whether a kid miss at `now_ms` may cause a refetch, given the last one (ms; 0 = never).
pub fn refetch_allowed(last_ms: u64, now_ms: u64, interval_s: u64) -> bool {
    last_ms == 0 || now_ms.saturating_sub(last_ms) >= interval_s.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(status: &'a [u8], ct: Option<&'a [u8]>, body: usize) -> AnswerHead<'a> {
        AnswerHead {
            headers: 3,
            status: Some(status),
            content_type: ct,
            body_size: body,
        }
    }

    #[test]
    fn answers_are_judged_before_the_body_is_read() {
        let json = Some(&b"application/json; charset=utf-8"[..]);
        assert_eq!(judge_answer(&head(b"200", json, 10), 100), Ok(()));
        assert_eq!(
            judge_answer(&head(b"200", Some(b"application/jwk-set+json"), 10), 100),
            Ok(())
        );
        assert_eq!(judge_answer(&head(b"200", None, 10), 100), Ok(()));
        let no_headers = AnswerHead {
            headers: 0,
            status: None,
            content_type: None,
            body_size: 0,
        };
        assert_eq!(judge_answer(&no_headers, 100), Err(FetchError::NoResponse));
        assert_eq!(
            judge_answer(&head(b"302", json, 0), 100),
            Err(FetchError::Status)
        );
        assert_eq!(
            judge_answer(&head(b"500", json, 0), 100),
            Err(FetchError::Status)
        );
        assert_eq!(
            judge_answer(&head(b"200", Some(b"text/html"), 10), 100),
            Err(FetchError::ContentType)
        );
        assert_eq!(
            judge_answer(&head(b"200", Some(b"application/+json"), 10), 100),
            Err(FetchError::ContentType)
        );
        assert_eq!(
            judge_answer(&head(b"200", json, 101), 100),
            Err(FetchError::TooLarge)
        );
    }

    #[test]
    fn every_fetch_error_has_its_own_code() {
        let mut codes: Vec<_> = FetchError::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), FetchError::ALL.len());
    }

    #[test]
    fn kid_miss_refetches_are_rate_limited() {
        assert!(refetch_allowed(0, 5, 30));
        assert!(!refetch_allowed(1_000, 30_999, 30));
        assert!(refetch_allowed(1_000, 31_000, 30));
        assert!(
            !refetch_allowed(50_000, 10_000, 30),
            "clock going back grants nothing"
        );
    }

    #[test]
    fn meta_round_trips() {
        let m = JwksMeta {
            version: 7,
            fetched_at_ms: 1,
            next_due_ms: u64::MAX,
            failures: 3,
        };
        assert_eq!(JwksMeta::decode(&m.encode()), Some(m));
        assert_eq!(JwksMeta::decode(&[0; 27]), None);
    }

    #[test]
    fn first_fetch_is_due_then_waits_for_refresh() {
        let now = 1_000_000;
        assert!(JwksMeta::fetch_due(None, now));
        let m = JwksMeta::after_success(None, now, 300);
        assert_eq!(m.version, 1);
        assert!(!JwksMeta::fetch_due(Some(&m), now + 299_999));
        assert!(JwksMeta::fetch_due(Some(&m), now + 300_000));
        assert_eq!(JwksMeta::after_success(Some(&m), now, 300).version, 2);
    }

    #[test]
    fn failures_back_off_exponentially_capped_by_refresh_and_keep_the_version() {
        let now = 5_000;
        let ok = JwksMeta::after_success(None, 0, 30);
        let f1 = JwksMeta::after_failure(Some(&ok), now, 30);
        assert_eq!(
            (f1.version, f1.failures, f1.next_due_ms - now),
            (1, 1, 1_000)
        );
        let f2 = JwksMeta::after_failure(Some(&f1), now, 30);
        assert_eq!(f2.next_due_ms - now, 2_000);
        let mut m = f2;
        for _ in 0..40 {
            m = JwksMeta::after_failure(Some(&m), now, 30);
        }
        assert_eq!(
            m.next_due_ms - now,
            30_000,
            "capped at the refresh interval"
        );
        assert_eq!(m.version, 1);
    }

    #[test]
    fn lease_expires_after_timeout_and_margin() {
        let l = Lease::take(10_000, 5_000);
        assert!(!l.is_free(10_000));
        assert!(!l.is_free(15_999));
        assert!(l.is_free(16_000));
        assert!(Lease::FREE.is_free(0));
        assert_eq!(Lease::decode(&l.encode()), Some(l));
    }
}
