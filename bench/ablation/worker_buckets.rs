//! ABLATION ONLY (`make bench`): replaces `src/host/buckets.rs` in a copy of the tree to measure
//! what Envoy shared data costs on the warm path. Buckets live in a per-worker map: no host call
//! per request, and limits are per worker, NOT exact across workers. Never shipped.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::ratelimit::store::{BucketStore, CasMismatch};

pub struct SharedData;

thread_local! {
    static SLOTS: RefCell<HashMap<String, (Vec<u8>, u32)>> = RefCell::new(HashMap::new());
}

impl BucketStore for SharedData {
    fn get(&self, slot: &str) -> Option<(Vec<u8>, u32)> {
        SLOTS.with(|s| s.borrow().get(slot).cloned())
    }

    fn set(&self, slot: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        SLOTS.with(|s| {
            let mut slots = s.borrow_mut();
            let entry = slots.entry(slot.to_string()).or_insert((Vec::new(), 1));
            if cas != 0 && entry.1 != cas {
                return Err(CasMismatch);
            }
            entry.0 = value.to_vec();
            entry.1 = entry.1.wrapping_add(1).max(1);
            Ok(())
        })
    }
}

pub fn create_slots(names: &[String]) {
    for name in names {
        let _ = SharedData.set(name, &[], 0);
    }
}
