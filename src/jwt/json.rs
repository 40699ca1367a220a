//! Strict JSON: a [`serde_json::Value`] built in one pass, refusing an object that names the same
//! member twice. serde_json's own `Value` keeps the last duplicate, which lets a token say
//! `"alg"` twice or a configuration give `realm` twice and mean whichever a reader picks
//! (RFC 7515 §5.2 and RFC 8259 §4 leave the choice to the parser; meshguard refuses).
//!
//! Used for the JOSE header and payload of every token ([`super::jws`]) and for the plugin
//! configuration. The cost over `serde_json::Value` is one map lookup per member: keys are
//! allocated once, as serde_json does. The duplicate is reported from inside the member's value,
//! so a path-tracking deserializer (`serde_path_to_error`) names the member itself
//! (`providers[0].issuer: duplicate field`).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// The message of a duplicate-member error.
pub const DUPLICATE: &str = "duplicate field";

/// A JSON value with no duplicate object members at any depth.
#[derive(Debug, Clone, PartialEq)]
pub struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// Parses JSON bytes into a value, refusing duplicate members and trailing characters.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                // Fails inside the member's value, so the error's path ends with the member.
                map.next_value_seed(Duplicate)?;
                return Err(de::Error::custom(DUPLICATE));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A "value" that is always an error: the member it belongs to was already given.
struct Duplicate;

impl<'de> DeserializeSeed<'de> for Duplicate {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _d: D) -> Result<(), D::Error> {
        Err(de::Error::custom(DUPLICATE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_like_serde_json() {
        let text = br#"{"a": [1, -2, 2.5, "x", true, null, {"b": {}}], "c": {"d": []}}"#;
        assert_eq!(
            from_slice(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        assert!(from_slice(b"{} x").is_err(), "trailing characters");
        assert!(from_slice(b"{").is_err());
    }

    #[test]
    fn a_duplicate_member_is_refused_at_any_depth() {
        for text in [
            r#"{"alg": "RS256", "alg": "none"}"#,
            r#"{"a": 1, "b": 2, "a": 1}"#,
            r#"{"x": {"sub": "a", "sub": "b"}}"#,
            r#"{"x": [{"k": 1}, {"k": 1, "k": 1}]}"#,
        ] {
            let e = from_slice(text.as_bytes()).unwrap_err();
            assert!(e.to_string().starts_with("duplicate field"), "{text}: {e}");
        }
        // The same name in different objects is not a duplicate.
        assert!(from_slice(br#"{"k": {"k": 1}, "l": [{"k": 1}, {"k": 2}]}"#).is_ok());
    }

    #[test]
    fn the_error_path_ends_with_the_duplicate_member() {
        let text = br#"{"providers": [{"issuer": "a", "name": "n", "issuer": "b"}]}"#;
        let mut de = serde_json::Deserializer::from_slice(text);
        let e = serde_path_to_error::deserialize::<_, Strict>(&mut de).unwrap_err();
        assert_eq!(e.path().to_string(), "providers[0].issuer");
        assert!(e.inner().to_string().starts_with(DUPLICATE), "{e}");
    }

    #[test]
    fn nesting_is_bounded_by_serde_json() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(from_slice(deep.as_bytes()).is_err());
    }
}
