//! The worker's verification keys. Inline key sets are fixed at configure time; remote ones are
//! re-parsed from Envoy shared data only when the provider's 28-byte meta version changes, and
//! dropped once older than the provider's maximum staleness (tokens then fail closed).

use crate::config::{Config, KeySource};
use crate::jwks_sync::{JwksMeta, SharedKeys};
use crate::jwt::jwks::KeySet;
use crate::jwt::verify::KeyLookup;

use super::abi::{self, LogLevel};
use super::log;
use super::metrics::Metrics;

pub struct WorkerKeys {
    sets: Vec<Option<KeySet>>,
    /// Per provider: shared-data keys and the version last loaded (remote providers only).
    remote: Vec<Option<(SharedKeys, u64)>>,
}

impl KeyLookup for WorkerKeys {
    fn keys(&self, index: usize) -> Option<&KeySet> {
        self.sets.get(index)?.as_ref()
    }

    /// The loaded shared version (inline key sets never change: 0).
    fn generation(&self, index: usize) -> u64 {
        self.remote
            .get(index)
            .and_then(|r| r.as_ref())
            .map_or(0, |(_, v)| *v)
    }
}

impl WorkerKeys {
    pub fn new(config: &Config, plugin: &str) -> WorkerKeys {
        let remote = config
            .providers
            .iter()
            .map(|p| match &p.keys {
                KeySource::Inline(_) => None,
                KeySource::Remote(r) => {
                    let source = format!("{}\n{}\n{}", p.issuer, r.uri, r.cluster);
                    Some((SharedKeys::new(plugin, &p.name, &source), 0))
                }
            })
            .collect();
        WorkerKeys {
            sets: config.inline_keys(),
            remote,
        }
    }

    pub fn shared_keys(&self, index: usize) -> Option<&SharedKeys> {
        self.remote.get(index)?.as_ref().map(|(k, _)| k)
    }

    /// True when provider `index` is remote and its first fetch for the proxy is still to come:
    /// no keys stored yet and no fetch failed yet.
    pub fn first_fetch_pending(&self, index: usize) -> bool {
        self.shared_keys(index)
            .is_some_and(|k| read_meta(&k.meta).is_none_or(|m| m.version == 0 && m.failures == 0))
    }

    /// True when every remote provider has keys loaded.
    pub fn all_loaded(&self) -> bool {
        self.remote
            .iter()
            .zip(&self.sets)
            .all(|(r, s)| r.is_none() || s.as_ref().is_some_and(|s| !s.is_empty()))
    }

    /// Loads newer key sets from shared data and drops key sets past their maximum staleness.
    /// Returns true when any set changed.
    pub fn sync(&mut self, config: &Config, metrics: &Metrics, now_ms: u64) -> bool {
        let mut changed = false;
        for (i, p) in config.providers.iter().enumerate() {
            let KeySource::Remote(remote) = &p.keys else {
                continue;
            };
            let Some(Some((keys, loaded))) = self.remote.get_mut(i) else {
                continue;
            };
            let Some(slot) = self.sets.get_mut(i) else {
                continue;
            };
            let Some(meta) = read_meta(&keys.meta) else {
                continue;
            };
            let stale = meta.version > 0
                && now_ms.saturating_sub(meta.fetched_at_ms)
                    > remote.max_staleness_seconds.saturating_mul(1000);
            if stale {
                if slot.take().is_some() {
                    // A new generation: cached verifications by the dropped keys die too.
                    *loaded = 0;
                    changed = true;
                    log(
                        LogLevel::Error,
                        &format!(
                            "meshguard: provider {}: keys older than jwksMaxStalenessSeconds ({} s): dropped, tokens fail closed until a fetch succeeds",
                            p.name, remote.max_staleness_seconds
                        ),
                    );
                }
            } else if meta.version != 0 && meta.version != *loaded {
                let Ok(Some((doc, _))) = abi::shared_get(&keys.doc) else {
                    continue;
                };
                match KeySet::from_jwks(&doc, &p.algorithms) {
                    Ok(set) if !set.is_empty() => {
                        *slot = Some(set);
                        *loaded = meta.version;
                        changed = true;
                    }
                    // The fetcher stores only documents with usable keys; keep what we have.
                    _ => log(
                        LogLevel::Error,
                        &format!("meshguard: provider {}: shared JWKS unusable", p.name),
                    ),
                }
            }
            if let Some(m) = metrics.provider(i) {
                m.keys_loaded(slot.as_ref().map_or(0, KeySet::len));
                let age = if meta.version == 0 {
                    0
                } else {
                    now_ms.saturating_sub(meta.fetched_at_ms) / 1000
                };
                m.age(age);
            }
        }
        changed
    }
}

pub fn read_meta(key: &str) -> Option<JwksMeta> {
    match abi::shared_get(key) {
        Ok(Some((bytes, _))) => JwksMeta::decode(&bytes),
        _ => None,
    }
}
