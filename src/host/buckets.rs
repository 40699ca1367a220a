//! Rate-limit buckets in Envoy shared data (one lock, compare-and-swap per slot).

use crate::ratelimit::store::{BucketStore, CasMismatch};

use super::abi;

pub struct SharedData;

impl BucketStore for SharedData {
    fn get(&self, slot: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_get(slot).ok().flatten()
    }

    fn set(&self, slot: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        // Any refusal (not only a lost race) means the charge did not happen: the caller retries
        // and, out of attempts, applies `onContention`.
        abi::shared_set(slot, value, cas).map_err(|_| CasMismatch)
    }
}

/// Creates every slot that does not exist yet, with an empty value (a full bucket). Envoy can
/// only compare-and-swap keys that exist; creating them at configure time, before traffic,
/// means no two workers ever race to create one.
pub fn create_slots(names: &[String]) {
    for name in names {
        if SharedData.get(name).is_none() {
            let _ = abi::shared_set(name, &[], 0);
        }
    }
}
