//! Signing keys and tokens, signed with `jsonwebtoken` (not jwt-simple, the library that
//! verifies), and the JWKS documents that publish them.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::*;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "orders";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Signer {
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    key: jsonwebtoken::EncodingKey,
    pub jwk: Value,
}

impl Signer {
    pub fn rsa(kid: &str) -> Signer {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let pem = fs::read_to_string(repo().join("tests/fixtures/rsa-2048.pem")).unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be())});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::RS256,
            key: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwk,
        }
    }

    pub fn es256(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::ES256,
            key: jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk,
        }
    }

    pub fn es384(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let raw = kp.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..49]), "y": URL_SAFE_NO_PAD.encode(&raw[49..97])});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::ES384,
            key: jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk,
        }
    }

    pub fn ed25519(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw())});
        Signer {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::EdDSA,
            key: jsonwebtoken::EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
            jwk,
        }
    }

    /// Signs `claims` with this key and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    /// The signature (base64url) of `message` with this key: for JWSs the test writes itself.
    pub fn sign_message(&self, message: &[u8]) -> String {
        jsonwebtoken::crypto::sign(message, &self.key, self.alg).unwrap()
    }

    pub fn sign_as(
        &self,
        alg: jsonwebtoken::Algorithm,
        kid: Option<&str>,
        claims: &Value,
    ) -> String {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

pub fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Claims valid now, with `extra` merged in (`null` removes a claim).
pub fn claims(extra: Value) -> Value {
    let n = now();
    let mut c =
        json!({"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": n - 5, "exp": n + 600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}
