//! The worker's verification keys. Inline key sets are fixed at configure time; remote ones are
//! re-parsed from Envoy shared data only when the provider's 28-byte meta version changes.

use proxy_wasm::hostcalls;

use crate::config::{Config, KeySource};
use crate::jwks_sync::{JwksMeta, SharedKeys};
use crate::jwt::jwks::KeySet;
use crate::jwt::verify::KeyLookup;

use super::log;
use proxy_wasm::types::LogLevel;

pub struct WorkerKeys {
    sets: Vec<Option<KeySet>>,
    /// Per provider: shared-data keys and the version last loaded (remote providers only).
    remote: Vec<Option<(SharedKeys, u64)>>,
}

impl KeyLookup for WorkerKeys {
    fn keys(&self, index: usize) -> Option<&KeySet> {
        self.sets.get(index)?.as_ref()
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

    /// True when every remote provider has keys loaded.
    pub fn all_loaded(&self) -> bool {
        self.remote
            .iter()
            .zip(&self.sets)
            .all(|(r, s)| r.is_none() || s.as_ref().is_some_and(|s| !s.is_empty()))
    }

    /// Loads newer key sets from shared data. Returns true when any set changed.
    pub fn sync(&mut self, config: &Config) -> bool {
        let mut changed = false;
        for (i, p) in config.providers.iter().enumerate() {
            let Some(Some((keys, loaded))) = self.remote.get_mut(i) else {
                continue;
            };
            let Some(meta) = read_meta(&keys.meta) else {
                continue;
            };
            if meta.version == 0 || meta.version == *loaded {
                continue;
            }
            let Ok((Some(doc), _)) = hostcalls::get_shared_data(&keys.doc) else {
                continue;
            };
            match KeySet::from_jwks(&doc, &p.algorithms) {
                Ok(set) if !set.is_empty() => {
                    if let Some(slot) = self.sets.get_mut(i) {
                        *slot = Some(set);
                    }
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
        changed
    }
}

pub fn read_meta(key: &str) -> Option<JwksMeta> {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), _)) => JwksMeta::decode(&bytes),
        _ => None,
    }
}
