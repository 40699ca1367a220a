//! Signature checks through the host's crypto (Envoy's BoringSSL `verify_signature` foreign
//! function) for RS256/384/512 and ES256/384, with the message formats it needs; jwt-simple's
//! pure-Rust code stays the fallback (PS*, EdDSA, hosts without the function).
//!
//! The foreign function takes a protobuf message: 1 `hash_function` (string), 2 `public_key`
//! (DER SubjectPublicKeyInfo), 3 `signature`, 4 `text`; it answers 1 `result` (bool), 2 `error`.
//! JWS ECDSA signatures are raw `r‖s`; BoringSSL wants a DER `ECDSA-Sig-Value`.

use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

use super::Algorithm;

/// The host's signature check. `None`: not available (the caller falls back to pure Rust).
pub trait HostCrypto {
    fn verify(
        &self,
        hash: &str,
        public_key_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool>;
}

/// The hash name the host expects, for the algorithms it verifies.
pub fn host_hash(alg: Algorithm) -> Option<&'static str> {
    match alg {
        Algorithm::RS256 | Algorithm::ES256 => Some("sha256"),
        Algorithm::RS384 | Algorithm::ES384 => Some("sha384"),
        Algorithm::RS512 => Some("sha512"),
        _ => None,
    }
}

/// The foreign function's argument message.
pub fn encode_args(hash: &str, public_key_der: &[u8], signature: &[u8], message: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 + public_key_der.len() + signature.len() + message.len());
    prost::encoding::string::encode(1, &hash.to_string(), &mut buf);
    prost::encoding::bytes::encode(2, &public_key_der.to_vec(), &mut buf);
    prost::encoding::bytes::encode(3, &signature.to_vec(), &mut buf);
    prost::encoding::bytes::encode(4, &message.to_vec(), &mut buf);
    buf
}

/// The foreign function's `result` field (false when absent, as protobuf defaults).
pub fn decode_result(mut bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    while !bytes.is_empty() {
        let (tag, wire) = decode_key(&mut bytes).ok()?;
        if tag == 1 && wire == WireType::Varint {
            result = decode_varint(&mut bytes).ok()? != 0;
        } else {
            skip_field(wire, tag, &mut bytes, DecodeContext::default()).ok()?;
        }
    }
    Some(result)
}

/// JOSE `r‖s` (each `len` bytes) → DER `SEQUENCE { INTEGER r, INTEGER s }`.
pub fn ecdsa_jose_to_der(sig: &[u8], len: usize) -> Option<Vec<u8>> {
    if sig.len() != 2 * len {
        return None;
    }
    let (r, s) = sig.split_at(len);
    let int = |v: &[u8]| {
        let start = v
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(v.len().saturating_sub(1));
        let v = v.get(start..).unwrap_or(v);
        let mut out = vec![0x02];
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(u8::try_from(v.len() + usize::from(pad)).unwrap_or(0));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() < 0x80 {
        out.push(u8::try_from(body.len()).ok()?);
    } else {
        out.push(0x81);
        out.push(u8::try_from(body.len()).ok()?);
    }
    out.extend(body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_result_round_trip_the_protobuf_layout() {
        let args = encode_args("sha256", b"key", b"sig", b"text");
        assert_eq!(
            args,
            b"\x0a\x06sha256\x12\x03key\x1a\x03sig\x22\x04text".to_vec()
        );
        assert_eq!(decode_result(b"\x08\x01"), Some(true));
        assert_eq!(decode_result(b"\x08\x00\x12\x03bad"), Some(false));
        assert_eq!(decode_result(b""), Some(false));
        assert_eq!(decode_result(b"\x08"), None, "truncated");
    }

    #[test]
    fn ecdsa_signatures_become_der() {
        let mut raw = vec![0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its top bit set: needs a leading zero
        let der = ecdsa_jose_to_der(&raw, 32).unwrap();
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert_eq!(ecdsa_jose_to_der(&raw, 48), None, "wrong length");
        // P-384, both integers with their top bit set: 2 × (2 + 49) bytes.
        let raw = vec![0xffu8; 96];
        let der = ecdsa_jose_to_der(&raw, 48).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 * 51, 0x02, 49]);
    }
}
