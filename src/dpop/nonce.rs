//! Stateless `DPoP-Nonce` values (RFC 9449 §8–§9), verifiable by every worker of the proxy
//! without per-nonce state: base64url of the time step (u64, big-endian) and the first 16 bytes
//! of HMAC-SHA256(secret, label ‖ step). A nonce is accepted during its step and the next one,
//! so its life is between one and two steps.
//!
//! The secret is the proxy's (shared by its workers): another replica issues nonces this one
//! refuses (the client then gets this replica's nonce and retries).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::ratelimit::SlotSecret;

/// Characters of every nonce meshguard issues.
pub const NONCE_LEN: usize = 32;
/// Bytes of MAC kept.
const MAC_LEN: usize = 16;
/// Domain separation: the same secret keys other hashes.
const LABEL: &[u8] = b"meshguard dpop nonce v1\0";

/// Why a nonce was not accepted. Either way the answer is `use_dpop_nonce` with a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("DPoP proof has no nonce")]
    Missing,
    #[error("DPoP nonce was not issued by this proxy")]
    Invalid,
    #[error("DPoP nonce is stale")]
    Stale,
}

fn step_of(now: u64, step_secs: u64) -> u64 {
    now / step_secs.max(1)
}

fn mac(secret: &SlotSecret, step: u64) -> [u8; 32] {
    let mut h = hmac_sha256::HMAC::new(secret);
    h.update(LABEL);
    h.update(step.to_be_bytes());
    h.finalize()
}

fn encode(secret: &SlotSecret, step: u64) -> String {
    let mut bytes = [0u8; 8 + MAC_LEN];
    let (s, m) = bytes.split_at_mut(8);
    s.copy_from_slice(&step.to_be_bytes());
    m.copy_from_slice(mac(secret, step).get(..MAC_LEN).unwrap_or(&[0; MAC_LEN]));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The nonce to hand out at `now` (seconds).
pub fn issue(secret: &SlotSecret, step_secs: u64, now: u64) -> String {
    encode(secret, step_of(now, step_secs))
}

/// Checks a proof's `nonce` claim at `now`.
pub fn check(
    secret: &SlotSecret,
    step_secs: u64,
    nonce: Option<&str>,
    now: u64,
) -> Result<(), NonceError> {
    let nonce = nonce.ok_or(NonceError::Missing)?;
    if nonce.len() != NONCE_LEN {
        return Err(NonceError::Invalid);
    }
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce.as_bytes()) else {
        return Err(NonceError::Invalid);
    };
    let (Some(step), Some(got)) = (bytes.get(..8), bytes.get(8..)) else {
        return Err(NonceError::Invalid);
    };
    let mut s = [0u8; 8];
    s.copy_from_slice(step);
    let step = u64::from_be_bytes(s);
    let want = mac(secret, step);
    let want = want.get(..MAC_LEN).unwrap_or(&[]);
    // Constant time: the MAC is the secret's only witness.
    let diff = want
        .iter()
        .zip(got)
        .fold(u8::from(want.len() != got.len()), |d, (a, b)| d | (a ^ b));
    if diff != 0 {
        return Err(NonceError::Invalid);
    }
    let current = step_of(now, step_secs);
    if step == current || step.checked_add(1) == Some(current) {
        Ok(())
    } else {
        Err(NonceError::Stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: SlotSecret = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    const NOW: u64 = 1_767_225_600; // step 29453760 of 60 s

    #[test]
    fn hmac_sha256_is_rfc_4231() {
        // RFC 4231 test case 2.
        let mut h = hmac_sha256::HMAC::new(b"Jefe");
        h.update(b"what do ya want for nothing?");
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn issued_nonces_match_python() {
        // Python: base64url(step.to_bytes(8) + hmac.new(KEY, LABEL + step.to_bytes(8),
        // sha256).digest()[:16]) for steps 29453760 and 29453759.
        assert_eq!(issue(&KEY, 60, NOW), "AAAAAAHBbcDYXDrS-au1ZXnOD2bqPbv8");
        assert_eq!(
            issue(&KEY, 60, NOW + 59),
            "AAAAAAHBbcDYXDrS-au1ZXnOD2bqPbv8"
        );
        assert_eq!(issue(&KEY, 60, NOW - 1), "AAAAAAHBbb9RPY0HexD7E5btH8LVe3uJ");
        assert_eq!(issue(&KEY, 60, NOW).len(), NONCE_LEN);
    }

    #[test]
    fn a_nonce_lives_its_step_and_the_next() {
        let n = "AAAAAAHBbcDYXDrS-au1ZXnOD2bqPbv8"; // issued in [NOW, NOW + 60)
        assert_eq!(check(&KEY, 60, Some(n), NOW), Ok(()));
        assert_eq!(check(&KEY, 60, Some(n), NOW + 119), Ok(()));
        assert_eq!(check(&KEY, 60, Some(n), NOW + 120), Err(NonceError::Stale));
        assert_eq!(
            check(&KEY, 60, Some(n), NOW - 1),
            Err(NonceError::Stale),
            "future step"
        );
    }

    #[test]
    fn forged_and_foreign_nonces_are_invalid() {
        let n = "AAAAAAHBbcDYXDrS-au1ZXnOD2bqPbv8";
        assert_eq!(check(&KEY, 60, None, NOW), Err(NonceError::Missing));
        let other: SlotSecret = [9; 16];
        assert_eq!(check(&other, 60, Some(n), NOW), Err(NonceError::Invalid));
        // The next step with the old MAC.
        let forged = "AAAAAAHBbcHYXDrS-au1ZXnOD2bqPbv8";
        assert_eq!(check(&KEY, 60, Some(forged), NOW), Err(NonceError::Invalid));
        for bad in [
            "",
            "short",
            "AAAAAAHBbcDYXDrS-au1ZXnOD2bqPbv8A",
            "AAAAAAHBbcDYXDrS-au1ZXnOD2bqPb+8",
        ] {
            assert_eq!(
                check(&KEY, 60, Some(bad), NOW),
                Err(NonceError::Invalid),
                "{bad}"
            );
        }
    }
}
