//! What a verified token means to meshguard, derived once when its signature is checked and kept
//! with it in the worker's verified-token cache: a warm request then looks up, checks time, and
//! reads these instead of re-deriving them from the claims.

use std::rc::Rc;

use super::jws::Claims;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principal {
    pub claims: Rc<Claims>,
    /// The first claim-based rate-limit identity source (`rateLimits.identity`) the token has:
    /// its position in that list and the identity's slot hash.
    pub rate_identity: Option<(usize, u64)>,
    /// Upstream headers from the token (`outputClaimToHeaders`, `principalHeader`), ready to set.
    pub upstream_headers: Vec<(String, String)>,
}

/// Claims compare as JSON values; the derive needs `Eq` for `Decision`'s.
impl Eq for Principal {}
