//! Test-only helpers: keys, JWKS documents and tokens with an explicit clock. Standard tokens are
//! signed with jwt-simple's signing half; tokens with arbitrary headers or payloads are signed
//! raw with Ed25519 (ed25519-compact), so malformed-but-signed tokens can be built.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::algorithms::{
    ECDSAP256KeyPairLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike, PS256KeyPair,
    RS256KeyPair, RSAKeyPairLike,
};
use jwt_simple::claims::JWTClaims;
use jwt_simple::prelude::UnixTimeStamp;
use serde_json::{json, Map, Value};

use crate::config::Config;

/// The fixed "now" of unit tests (2027-01-15), in seconds.
pub const NOW: u64 = 1_800_000_000;
pub const ISSUER: &str = "https://idp.example.com";
pub const AUDIENCE: &str = "api";

pub const RSA_2048_PEM: &str = include_str!("../tests/fixtures/rsa-2048.pem");

/// One key of each family, with kids `rsa1`, `ps1` (same RSA key, `alg: PS256`), `ec1`, `ed1`.
pub struct TestKeys {
    pub rsa: RS256KeyPair,
    pub ps: PS256KeyPair,
    pub ec: ES256KeyPair,
    pub ed: Ed25519KeyPair,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        TestKeys {
            rsa: RS256KeyPair::from_pem(RSA_2048_PEM)
                .unwrap()
                .with_key_id("rsa1"),
            ps: PS256KeyPair::from_pem(RSA_2048_PEM)
                .unwrap()
                .with_key_id("ps1"),
            ec: ES256KeyPair::generate().with_key_id("ec1"),
            ed: Ed25519KeyPair::generate().with_key_id("ed1"),
        }
    }

    /// JWKS with all four keys. The RSA key appears twice: `rsa1` without `alg`, `ps1` with
    /// `alg: PS256`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.rsa_jwk("rsa1", None), self.rsa_jwk("ps1", Some("PS256")),
                         self.ec_jwk(), self.ed_jwk()] })
    }

    pub fn rsa_jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let c = self.rsa.public_key().to_components();
        let mut jwk = json!({"kty": "RSA", "kid": kid, "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(c.n), "e": URL_SAFE_NO_PAD.encode(c.e)});
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }

    pub fn ec_jwk(&self) -> Value {
        let raw = self.ec.key_pair().public_key().to_bytes_uncompressed();
        json!({"kty": "EC", "crv": "P-256", "kid": "ec1",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])})
    }

    pub fn ed_jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed1",
            "x": URL_SAFE_NO_PAD.encode(self.ed.public_key().to_bytes())})
    }

    pub fn rs256(&self, claims: Value) -> String {
        self.rsa.sign(jwt_claims(claims)).unwrap()
    }

    pub fn ps256(&self, claims: Value) -> String {
        self.ps.sign(jwt_claims(claims)).unwrap()
    }

    pub fn es256(&self, claims: Value) -> String {
        self.ec.sign(jwt_claims(claims)).unwrap()
    }

    pub fn eddsa(&self, claims: Value) -> String {
        self.ed.sign(jwt_claims(claims)).unwrap()
    }

    /// Any header and payload, signed with the Ed25519 key.
    pub fn raw_ed(&self, header: Value, payload: Value) -> String {
        let input = format!("{}.{}", b64(&header.to_string()), b64(&payload.to_string()));
        let kp = ed25519_compact::KeyPair::from_slice(&self.ed.to_bytes()).unwrap();
        let sig = kp.sk.sign(input.as_bytes(), None);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

pub fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// Good claims at [`NOW`], with `extra` merged over them (`null` removes a claim).
pub fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "sub": "alice", "aud": AUDIENCE,
        "iat": NOW - 10, "exp": NOW + 600, "scope": "read"});
    if let (Some(obj), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                obj.remove(&k);
            } else {
                obj.insert(k, v);
            }
        }
    }
    c
}

/// jwt-simple's claims type from a JSON object (registered claims mapped, the rest custom).
fn jwt_claims(v: Value) -> JWTClaims<Map<String, Value>> {
    let mut m = v.as_object().cloned().unwrap();
    let time = |m: &mut Map<String, Value>, k: &str| {
        m.remove(k)
            .and_then(|v| v.as_u64())
            .map(UnixTimeStamp::from_secs)
    };
    let text = |m: &mut Map<String, Value>, k: &str| {
        m.remove(k).and_then(|v| v.as_str().map(str::to_string))
    };
    JWTClaims {
        issued_at: time(&mut m, "iat"),
        expires_at: time(&mut m, "exp"),
        invalid_before: time(&mut m, "nbf"),
        issuer: text(&mut m, "iss"),
        subject: text(&mut m, "sub"),
        audiences: text(&mut m, "aud").map(jwt_simple::claims::Audiences::AsString),
        jwt_id: text(&mut m, "jti"),
        nonce: text(&mut m, "nonce"),
        custom: m,
    }
}

/// The one configuration builder of unit tests: a document with one provider (issuer [`ISSUER`],
/// `jwks` inline, as an object or a string) with `provider` merged into it, and `top` merged into
/// the document. [`parse_config`] parses it as a plugin configuration.
pub fn config_doc(jwks: Value, provider: Value, top: Value) -> Value {
    let mut p = json!({"issuer": ISSUER, "jwks": jwks});
    if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), provider) {
        p.extend(extra);
    }
    config_doc_providers(vec![p], top)
}

/// [`config_doc`] with several providers, each written out.
pub fn config_doc_providers(providers: Vec<Value>, top: Value) -> Value {
    let mut doc = json!({ "providers": providers });
    if let (Some(d), Value::Object(top)) = (doc.as_object_mut(), top) {
        d.extend(top);
    }
    doc
}

pub fn parse_config(doc: &Value) -> Result<Config, crate::config::ConfigError> {
    Config::from_json(doc.to_string().as_bytes())
}

/// A configuration with one provider holding `jwks` inline, plus `extra` provider fields.
pub fn config_with(jwks: &Value, extra: Value) -> Config {
    let mut provider = json!({"audiences": [AUDIENCE]});
    if let (Some(p), Value::Object(extra)) = (provider.as_object_mut(), extra) {
        p.extend(extra);
    }
    parse_config(&config_doc(
        Value::String(jwks.to_string()),
        provider,
        json!({}),
    ))
    .unwrap()
}

/// The token with its header edited (the signature no longer matches: for checks made before
/// the signature).
pub fn rewrite_header(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let (h, rest) = token.split_once('.').unwrap();
    let mut header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
    edit(&mut header);
    format!("{}.{rest}", b64(&header.to_string()))
}

/// The one fake bucket store of unit tests: an in-memory compare-and-swap map whose writes can be
/// made to lose the race a number of times (`lose`: each lost write is someone else's write).
pub struct MemStore {
    map: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
    pub lose: std::cell::RefCell<usize>,
}

impl MemStore {
    pub fn with_slots(names: impl IntoIterator<Item = String>) -> MemStore {
        MemStore {
            map: std::cell::RefCell::new(names.into_iter().map(|n| (n, (Vec::new(), 1))).collect()),
            lose: std::cell::RefCell::new(0),
        }
    }

    /// Every slot of `engine` created.
    pub fn for_engine(engine: &crate::engine::Engine) -> MemStore {
        MemStore::with_slots(engine.slot_names())
    }

    /// One slot, `name`, created.
    pub fn with_slot(name: &str) -> MemStore {
        MemStore::with_slots([name.to_string()])
    }
}

impl crate::ratelimit::store::BucketStore for MemStore {
    fn get(&self, slot: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(slot).cloned()
    }

    fn set(
        &self,
        slot: &str,
        value: &[u8],
        cas: u32,
    ) -> Result<(), crate::ratelimit::store::CasMismatch> {
        let mut lose = self.lose.borrow_mut();
        let mut map = self.map.borrow_mut();
        let entry = map
            .get_mut(slot)
            .ok_or(crate::ratelimit::store::CasMismatch)?;
        if *lose > 0 {
            *lose -= 1;
            entry.1 += 1; // someone else wrote
            return Err(crate::ratelimit::store::CasMismatch);
        }
        if entry.1 != cas {
            return Err(crate::ratelimit::store::CasMismatch);
        }
        *entry = (value.to_vec(), cas + 1);
        Ok(())
    }
}

/// Bytes from a hex string (expected messages written out in tests).
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The first backticked word of each row of a README table: the table whose header row starts
/// with `header`, after `section` (a heading line) when given.
pub fn readme_table_keys(section: Option<&str>, header: &str) -> Vec<&'static str> {
    let readme: &'static str = include_str!("../README.md");
    let after = match section {
        Some(heading) => readme
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("README has {heading:?}")),
        None => readme,
    };
    let table = after
        .split(header)
        .nth(1)
        .unwrap_or_else(|| panic!("README has a table headed {header:?}"));
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect()
}
