//! Rate-limit buckets in Envoy shared data (one lock, compare-and-swap per key).

use proxy_wasm::hostcalls;

use crate::ratelimit::store::{BucketStore, CasMismatch};

pub struct SharedData;

impl BucketStore for SharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            // An existing key written with an empty value comes back as `None`.
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        hostcalls::set_shared_data(key, Some(value), Some(cas)).map_err(|_| CasMismatch)
    }
}

/// Creates every slot that does not exist yet, with an empty value (a full bucket). Envoy can
/// only compare-and-swap keys that exist; creating them at configure time, before traffic,
/// means no two workers ever race to create one.
pub fn create_slots(keys: &[String]) {
    for key in keys {
        if SharedData.get(key).is_none() {
            let _ = hostcalls::set_shared_data(key, Some(&[]), None);
        }
    }
}
