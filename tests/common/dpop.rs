//! DPoP proofs (RFC 9449) signed with `jsonwebtoken` (not the code that verifies them), and the
//! RFC 7638 thumbprints of their keys, computed here from the JWK members with `sha2`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::*;

/// A client's proof key: a `Signer` whose public JWK goes into each proof's header.
pub struct ProofKey {
    pub signer: Signer,
}

impl ProofKey {
    pub fn es256() -> ProofKey {
        ProofKey {
            signer: Signer::es256("unused"),
        }
    }

    pub fn ed25519() -> ProofKey {
        ProofKey {
            signer: Signer::ed25519("unused"),
        }
    }

    /// The public JWK without `kid`/`use` (what a client puts in the proof header).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.signer.jwk.clone();
        let o = jwk.as_object_mut().unwrap();
        o.remove("kid");
        o.remove("use");
        jwk
    }

    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    pub fn jkt(&self) -> String {
        let j = self.public_jwk();
        let canonical = match j["kty"].as_str().unwrap() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                j["crv"].as_str().unwrap(),
                j["x"].as_str().unwrap(),
                j["y"].as_str().unwrap()
            ),
            "OKP" => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                j["crv"].as_str().unwrap(),
                j["x"].as_str().unwrap()
            ),
            "RSA" => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                j["e"].as_str().unwrap(),
                j["n"].as_str().unwrap()
            ),
            other => panic!("no thumbprint for {other}"),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A proof for `method` and `htu`, bound to `token` (`ath`), with `extra` merged into the
    /// claims (`null` removes one).
    pub fn proof(&self, method: &str, htu: &str, token: Option<&str>, extra: Value) -> String {
        self.proof_with(method, htu, token, extra, |_| {})
    }

    /// As `proof`, with the header edited by `edit` (typ, jwk, …) before signing.
    pub fn proof_with(
        &self,
        method: &str,
        htu: &str,
        token: Option<&str>,
        extra: Value,
        edit: impl FnOnce(&mut Value),
    ) -> String {
        let mut claims = json!({
            "jti": format!("{:032x}", rand_u128()),
            "htm": method,
            "htu": htu,
            "iat": now(),
        });
        if let Some(t) = token {
            claims["ath"] = Value::String(ath(t));
        }
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        let mut header = json!({
            "typ": "dpop+jwt",
            "alg": alg_name(self.signer.alg),
            "jwk": self.public_jwk(),
        });
        edit(&mut header);
        sign_raw(&self.signer, &header, &claims)
    }
}

/// Runs `tools/dpop-proof.py` (the README's DPoP client, Python `cryptography`) with the project
/// venv's Python; its output, trimmed.
pub fn dpop_tool(args: &[&str]) -> String {
    let python = repo().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(repo().join("tools/dpop-proof.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", python.display()));
    assert!(
        out.status.success(),
        "tools/dpop-proof.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `ath`: base64url(SHA-256(access token)).
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn alg_name(alg: jsonwebtoken::Algorithm) -> &'static str {
    match alg {
        jsonwebtoken::Algorithm::ES256 => "ES256",
        jsonwebtoken::Algorithm::ES384 => "ES384",
        jsonwebtoken::Algorithm::RS256 => "RS256",
        jsonwebtoken::Algorithm::EdDSA => "EdDSA",
        other => panic!("no name for {other:?}"),
    }
}

/// Signs an arbitrary header (jsonwebtoken's `Header` type cannot carry every edit a test
/// needs, e.g. a private member in `jwk`): `jsonwebtoken::crypto::sign` over our own encoding.
fn sign_raw(signer: &Signer, header: &Value, claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let message = format!("{h}.{c}");
    let sig = signer.sign_message(message.as_bytes());
    format!("{message}.{sig}")
}

fn rand_u128() -> u128 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    let a = h.finish();
    let mut h2 = RandomState::new().build_hasher();
    h2.write_u64(a);
    (u128::from(a) << 64) | u128::from(h2.finish())
}
