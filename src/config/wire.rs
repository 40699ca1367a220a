//! The configuration as Envoy hands it over, up to the raw serde types: JSON text or a
//! serialized `google.protobuf.Struct` becomes one JSON value, a member given twice is refused in
//! either form, every string and object key is bounded, and serde's errors are reduced to the
//! field path and message.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{explain, ConfigError};
use crate::jwt::json::Strict;

/// Longest `realm`: it is echoed in every `WWW-Authenticate` challenge.
pub const MAX_REALM_BYTES: usize = 256;
/// Longest `jwksUri`.
pub const MAX_URI_BYTES: usize = 2048;
/// Longest string of any field not listed in [`string_bound`], and of any object key.
pub const MAX_STRING_BYTES: usize = 256;

/// The most bytes a string in the member `field` may hold (the configuration reference lists
/// them). Checked over the whole configuration before anything else, so no field, present or
/// future, takes an unbounded string and no error message echoes one. Inline `jwks` documents
/// are bounded by their own size limit instead.
pub fn string_bound(field: &str) -> usize {
    match field {
        "realm" => MAX_REALM_BYTES,
        "jwksUri" | "principals" => MAX_URI_BYTES,
        "issuer" | "issuers" | "audiences" | "paths" | "pathPrefixes" | "values" => 1024,
        "hosts" => 255,
        "namespaces" => 253,
        "prefix" => 64,
        "methods" => 32,
        _ => MAX_STRING_BYTES,
    }
}

/// Applies [`string_bound`] to every string and [`MAX_STRING_BYTES`] to every object key.
fn check_string_bounds(value: &Value) -> Result<(), ConfigError> {
    fn walk(v: &Value, path: &str, field: &str, in_provider: bool) -> Result<(), ConfigError> {
        match v {
            Value::String(s) => {
                let max = string_bound(field);
                if s.len() > max {
                    return Err(ConfigError::new(
                        path,
                        format!("must be at most {max} bytes"),
                    ));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{path}[{i}]");
                    walk(item, &here, field, path == "providers")?;
                }
            }
            Value::Object(members) => {
                for (k, item) in members {
                    let here = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if k.len() > MAX_STRING_BYTES {
                        return Err(ConfigError::new(
                            path,
                            format!("a key longer than {MAX_STRING_BYTES} bytes"),
                        ));
                    }
                    if in_provider && k == "jwks" {
                        continue; // bounded by MAX_JWKS_BYTES when parsed
                    }
                    walk(item, &here, k, false)?;
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }
    walk(value, "", "", false)
}

/// The JSON value of a plugin configuration exactly as Envoy hands it over: JSON text (from a
/// `google.protobuf.StringValue`, which is also what Istio sends for a WasmPlugin's
/// `pluginConfig`) or a serialized `google.protobuf.Struct` (Envoy passes any other `Any` as its
/// protobuf bytes).
pub(super) fn plugin_value(bytes: &[u8]) -> Result<Value, ConfigError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_none_or(|b| *b == b'{' || *b == b'[' || *b == b'"') {
        return json_value(bytes);
    }
    protobuf_struct_to_json(bytes)
}

/// The JSON value of JSON text. A member given twice in any object is refused, naming its path
/// (`providers[0].issuer: duplicate field`).
pub(super) fn json_value(bytes: &[u8]) -> Result<Value, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, Strict>(&mut de)
        .map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "config".to_string()
            } else {
                path
            };
            ConfigError::new(path, strip_position(&e.inner().to_string()))
        })?
        .0;
    de.end()
        .map_err(|e| ConfigError::new("config", strip_position(&e.to_string())))?;
    Ok(value)
}

/// The raw configuration type `T` read from `value`, once `value` is known to be an object whose
/// strings and keys are within their bounds.
pub(super) fn raw<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    if !value.is_object() {
        return Err(ConfigError::new("config", "must be a JSON object"));
    }
    check_string_bounds(&value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = explain::serde_message(&path, &strip_position(&e.inner().to_string()));
        ConfigError::new(path, message)
    })
}

/// Decodes a serialized `google.protobuf.Struct` into the JSON value it stands for. Integral
/// numbers become JSON integers (a Struct only has doubles) so that counts and sizes parse. A key
/// given twice in one Struct is refused like a duplicate JSON member (protobuf's map decoding
/// would keep the last), so the wire is walked here rather than through `prost_types::Struct`.
fn protobuf_struct_to_json(bytes: &[u8]) -> Result<Value, ConfigError> {
    pb::object(bytes, "", 0)
}

/// The wire format of `google.protobuf.{Struct, Value, ListValue}` (struct.proto).
mod pb {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    use serde_json::{Map, Value};

    use super::ConfigError;
    use crate::jwt::json::DUPLICATE;

    /// Deeper nesting is refused (prost's own limit is 100).
    const MAX_DEPTH: usize = 64;

    fn bad() -> ConfigError {
        ConfigError::new("config", "neither JSON nor a google.protobuf.Struct")
    }

    fn key(buf: &mut &[u8]) -> Result<(u32, WireType), ConfigError> {
        decode_key(buf).map_err(|_| bad())
    }

    /// The bytes of a length-delimited field.
    fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ConfigError> {
        let len = usize::try_from(decode_varint(buf).map_err(|_| bad())?).map_err(|_| bad())?;
        let body = buf.get(..len).ok_or_else(bad)?;
        *buf = buf.get(len..).ok_or_else(bad)?;
        Ok(body)
    }

    fn skip(wire: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), ConfigError> {
        skip_field(wire, tag, buf, DecodeContext::default()).map_err(|_| bad())
    }

    /// `Struct { map<string, Value> fields = 1; }`: a map is a repeated entry `{key = 1; value = 2}`.
    pub(super) fn object(mut buf: &[u8], path: &str, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(path, "nested too deeply"));
        }
        let mut out = Map::new();
        while !buf.is_empty() {
            let (tag, wire) = key(&mut buf)?;
            if tag != 1 || wire != WireType::LengthDelimited {
                skip(wire, tag, &mut buf)?;
                continue;
            }
            let mut entry = delimited(&mut buf)?;
            let (mut name, mut value) = (String::new(), None);
            while !entry.is_empty() {
                match key(&mut entry)? {
                    (1, WireType::LengthDelimited) => {
                        name = String::from_utf8(delimited(&mut entry)?.to_vec())
                            .map_err(|_| bad())?;
                    }
                    (2, WireType::LengthDelimited) => value = Some(delimited(&mut entry)?),
                    (tag, wire) => skip(wire, tag, &mut entry)?,
                }
            }
            let here = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if out.contains_key(&name) {
                return Err(ConfigError::new(here, DUPLICATE));
            }
            let v = match value {
                Some(v) => self::value(v, &here, depth + 1)?,
                None => Value::Null,
            };
            out.insert(name, v);
        }
        Ok(Value::Object(out))
    }

    /// `Value { oneof kind { null_value = 1; number_value = 2; string_value = 3; bool_value = 4;
    /// struct_value = 5; list_value = 6; } }`: the last kind on the wire wins, as in protobuf.
    fn value(mut buf: &[u8], path: &str, depth: usize) -> Result<Value, ConfigError> {
        let mut out = Value::Null;
        while !buf.is_empty() {
            out = match key(&mut buf)? {
                (1, WireType::Varint) => {
                    decode_varint(&mut buf).map_err(|_| bad())?;
                    Value::Null
                }
                (2, WireType::SixtyFourBit) => {
                    let bytes: [u8; 8] = buf
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(bad)?;
                    buf = buf.get(8..).ok_or_else(bad)?;
                    number(f64::from_le_bytes(bytes))
                }
                (3, WireType::LengthDelimited) => Value::String(
                    String::from_utf8(delimited(&mut buf)?.to_vec()).map_err(|_| bad())?,
                ),
                (4, WireType::Varint) => {
                    Value::Bool(decode_varint(&mut buf).map_err(|_| bad())? != 0)
                }
                (5, WireType::LengthDelimited) => object(delimited(&mut buf)?, path, depth)?,
                (6, WireType::LengthDelimited) => list(delimited(&mut buf)?, path, depth)?,
                (tag, wire) => {
                    skip(wire, tag, &mut buf)?;
                    continue;
                }
            };
        }
        Ok(out)
    }

    /// `ListValue { repeated Value values = 1; }`.
    fn list(mut buf: &[u8], path: &str, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(path, "nested too deeply"));
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            match key(&mut buf)? {
                (1, WireType::LengthDelimited) => {
                    let here = format!("{path}[{}]", out.len());
                    out.push(value(delimited(&mut buf)?, &here, depth + 1)?);
                }
                (tag, wire) => skip(wire, tag, &mut buf)?,
            }
        }
        Ok(Value::Array(out))
    }

    fn number(n: f64) -> Value {
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            (n as i64).into()
        } else {
            serde_json::Number::from_f64(n).map_or(Value::Null, Into::into)
        }
    }
}

/// serde_json appends " at line L column C"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
