//! Scopes as bits. The scopes the configuration's routes name are numbered once, when it is
//! parsed (at most [`MAX_SCOPE_BITS`]); each route's scope requirement becomes two masks; a
//! verified token's scopes become one mask, once, in its [`Principal`] (kept in the token cache).
//! A warm request's scope check is then a mask test.
//!
//! Past [`MAX_SCOPE_BITS`] distinct scopes, the scopes beyond have no bit; a route that names
//! one has no masks and is judged from the claims, as a request without a principal is: the
//! same answers, more slowly.
//!
//! [`Principal`]: crate::jwt::principal::Principal

use std::collections::HashMap;

use super::Route;
use crate::jwt::jws::Claims;

/// Scopes that get a bit (one `u128`).
pub const MAX_SCOPE_BITS: usize = 128;

/// The scopes the routes name, each with its bit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeIndex {
    bits: HashMap<String, u32>,
}

/// A route's scope requirement as bits: every scope of `all`, and one of `any` unless it is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeMasks {
    pub all: u128,
    pub any: u128,
}

impl ScopeMasks {
    /// The requirement holds for a token granted `granted`.
    pub fn allow(&self, granted: u128) -> bool {
        granted & self.all == self.all && (self.any == 0 || granted & self.any != 0)
    }
}

impl ScopeIndex {
    /// Numbers the scopes `routes` name, in order of appearance, and compiles each route's
    /// masks (left `None` for a route naming a scope beyond [`MAX_SCOPE_BITS`]).
    pub fn compile(routes: &mut [Route]) -> ScopeIndex {
        let mut index = ScopeIndex::default();
        for route in routes.iter() {
            let req = &route.require;
            for scope in req.scopes_all_of.iter().chain(&req.scopes_any_of) {
                let next = index.bits.len();
                if next < MAX_SCOPE_BITS && !index.bits.contains_key(scope) {
                    index.bits.insert(scope.clone(), next as u32);
                }
            }
        }
        for route in routes.iter_mut() {
            let req = &mut route.require;
            req.scope_masks = index
                .mask(&req.scopes_all_of)
                .zip(index.mask(&req.scopes_any_of))
                .map(|(all, any)| ScopeMasks { all, any });
        }
        index
    }

    /// The bits of `scopes`; `None` when one has no bit.
    fn mask(&self, scopes: &[String]) -> Option<u128> {
        scopes
            .iter()
            .try_fold(0u128, |m, s| self.bits.get(s).map(|bit| m | 1u128 << bit))
    }

    /// The bits of the scopes a token grants (see [`super::scopes`]); scopes no route names
    /// are left out.
    pub fn granted_mask(&self, claims: &Claims) -> u128 {
        super::scopes(claims)
            .into_iter()
            .filter_map(|s| self.bits.get(s))
            .fold(0, |m, bit| m | 1u128 << bit)
    }
}

#[cfg(test)]
mod tests;
