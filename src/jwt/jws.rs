//! Strict parsing of a compact JWS (`header.payload.signature`): base64url without padding, a
//! JSON object header with a string `alg`, a JSON object payload, and registered claims of the
//! right types. Nothing here trusts the token: `alg` and `kid` are only hints for key lookup.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::TokenError;

/// Latest NumericDate accepted (2106-02-07): later values cannot be represented by the
/// verification library and no real token uses them.
pub const MAX_NUMERIC_DATE: u64 = u32::MAX as u64;

/// A syntactically valid token whose signature has not been checked yet.
#[derive(Debug, Clone, PartialEq)]
pub struct UnverifiedToken {
    /// `alg` exactly as the header gives it.
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Claims,
}

/// The payload: registered claims, type-checked, plus the whole object for policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub all: Map<String, Value>,
}

impl Claims {
    /// Looks up a claim by path (`["realm_access", "roles"]`).
    /// A claim whose name itself contains dots (`https://example.com/roles`) is found first.
    pub fn get_path(&self, path: &[String]) -> Option<&Value> {
        if path.len() > 1 {
            if let Some(v) = self.all.get(&path.join(".")) {
                return Some(v);
            }
        }
        let (first, rest) = path.split_first()?;
        let mut v = self.all.get(first)?;
        for seg in rest {
            v = v.as_object()?.get(seg)?;
        }
        Some(v)
    }
}

/// True for the characters a compact JWS may contain.
fn is_jws_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

pub fn parse(token: &str) -> Result<UnverifiedToken, TokenError> {
    parse_with_header(token).map(|(_, t)| t)
}

/// [`parse`], also returning the whole JOSE header (for members `parse` does not keep: a DPoP
/// proof's `typ` and `jwk`).
pub fn parse_with_header(token: &str) -> Result<(Map<String, Value>, UnverifiedToken), TokenError> {
    if !token.bytes().all(is_jws_char) {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed);
    }
    // The verification library refuses longer headers; say "malformed", not "bad signature".
    if h.len() > 8192 {
        return Err(TokenError::Malformed);
    }
    let header = decode_object(h)?;
    // The signature must at least be valid base64url; its bytes are checked later.
    URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| TokenError::Malformed)?;

    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(TokenError::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) => {
            let t = t.to_ascii_uppercase();
            if t != "JWT" && !t.ends_with("+JWT") {
                return Err(TokenError::Malformed);
            }
        }
        Some(_) => return Err(TokenError::Malformed),
    }
    // RFC 7515 §4.1.11: a recipient must reject critical extensions it does not understand.
    if header.contains_key("crit") {
        return Err(TokenError::Malformed);
    }

    let all = decode_object(p)?;
    let claims = Claims {
        iss: opt_string(&all, "iss")?,
        sub: opt_string(&all, "sub")?,
        aud: audiences(&all)?,
        exp: numeric_date(&all, "exp")?,
        nbf: numeric_date(&all, "nbf")?,
        iat: numeric_date(&all, "iat")?,
        all,
    };
    // Types the verification library also insists on.
    opt_string(&claims.all, "jti")?;
    opt_string(&claims.all, "nonce")?;
    Ok((header, UnverifiedToken { alg, kid, claims }))
}

fn decode_object(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.as_bytes())
        .map_err(|_| TokenError::Malformed)?;
    // A member given twice (`alg`, `sub`, …) is refused, not read last-wins.
    match super::json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed),
    }
}

fn opt_string(m: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match m.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::Malformed),
    }
}

fn audiences(m: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    match m.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(TokenError::Malformed))
            .collect(),
        Some(_) => Err(TokenError::Malformed),
    }
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional (truncated here).
fn numeric_date(m: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    let Some(v) = m.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = v else {
        return Err(TokenError::Malformed);
    };
    let secs = if let Some(u) = n.as_u64() {
        u
    } else {
        match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 && f <= MAX_NUMERIC_DATE as f64 => f as u64,
            _ => return Err(TokenError::Malformed),
        }
    };
    if secs > MAX_NUMERIC_DATE {
        return Err(TokenError::Malformed);
    }
    Ok(Some(secs))
}

#[cfg(test)]
mod tests;
