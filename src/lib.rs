//! meshguard: a proxy-wasm HTTP filter for Envoy and Istio sidecars that authenticates the
//! caller (mTLS peer identity and a JWT validated against JWKS shared by all workers) in one
//! pass, answering per RFC 6750.
//!
//! The rule of this crate: **the core is pure, `host/` is glue.** Every module except `host`
//! is plain Rust that never calls the proxy and never reads a clock (`now` is an argument),
//! so it is unit-tested on the host and inside a wasm engine. `host/` (compiled for wasm32
//! only; meshguard's own ABI bindings, no SDK) reads the request, calls
//! [`engine::Engine::decide`] (read-only; again after catching up with shared keys on a key
//! miss), pays the final plan once with [`engine::Engine::settle`], and applies the decision.
//!
//! | module | what it holds |
//! |---|---|
//! | `check` | offline configuration check (host only; `meshguard-check`) |
//! | [`config`] | JSON plugin configuration → validated [`config::Config`], errors naming the field |
//! | [`request`] | [`request::RequestView`]: the plain data of one request |
//! | [`identity`] | the mTLS peer and its SPIFFE ID |
//! | [`jwt`] | credential extraction, JWS parsing, JWKS keys, verification, a verified token's principal |
//! | [`policy`] | routes (first match wins), path normalisation, requirements, scopes as bits |
//! | [`ratelimit`] | GCRA buckets in bounded slots, the failed-auth budget, a request's charges (`apply`) |
//! | [`decision`] | the one table reason → status, challenge, body, log code, metric slot, 429 headers; answers prebuilt per configuration |
//! | [`engine`] | the pipeline: `decide` (reads only) → a plan, `settle` (pays it once); authentication in `engine::authn` |
//! | [`dpop`] | DPoP (RFC 9449) building blocks: proofs, thumbprints, `htu`, replay cache, nonces (used by `engine::dpop`) |
//! | [`metrics`] | metric families, label sets and values, the Envoy/Istio tag rules that make them Prometheus labels |
//! | [`jwks_sync`] | shared-data layout and schedule of remote JWKS fetches, fetch answers judged |
//! | [`wire`] | the proxy-wasm ABI's byte formats (header maps, property paths) |

#[cfg(not(target_arch = "wasm32"))]
pub mod check;
pub mod config;
pub mod decision;
pub mod dpop;
pub mod engine;
pub mod identity;
pub mod jwks_sync;
pub mod jwt;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod request;
pub mod wire;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod module_graph;
#[cfg(test)]
mod testkit;

// The glue needs a proxy-wasm host; unit tests compiled to wasm run without one.
#[cfg(all(target_arch = "wasm32", not(test)))]
mod host;
