//! Field validators shared by the configuration's parts: each takes the field's path and its
//! raw value and returns the value in its validated form, or the error naming that path.

use super::ConfigError;
use crate::identity::PrincipalPattern;
use crate::jwt::Algorithm;

/// `value` if it lies in `min..=max`, else an error naming the field.
pub(super) fn within(at: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            at,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// `value` if it lies in `min..=max`, else an error naming the field and the bounds' unit
/// (`must be between 1 and 600 seconds`).
pub(super) fn within_unit(
    at: &str,
    value: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<u64, ConfigError> {
    within(at, value, min, max)
        .map_err(|_| ConfigError::new(at, format!("must be between {min} and {max} {unit}")))
}

/// A list of JWS algorithm names (`at` is the list's path): at least one, each one meshguard
/// verifies (`none` and `HS*` have no name here), repeats dropped, order kept.
pub(super) fn algorithms(at: &str, list: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(at, "must list at least one algorithm"));
    }
    let mut algs = Vec::new();
    for (j, a) in list.iter().enumerate() {
        let alg = Algorithm::parse(a).ok_or_else(|| {
            ConfigError::new(
                format!("{at}[{j}]"),
                format!(
                    "unsupported algorithm \"{a}\", expected one of: {}",
                    Algorithm::ALL
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        if !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    Ok(algs)
}

/// Names used in shared-data keys and metrics: 1-32 characters of `[a-z0-9_-]`.
pub(super) fn is_short_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// RFC 9110 `tchar`: the characters of header names and methods.
pub(super) fn header_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A claim name or dotted path (`realm_access.roles`), split on dots.
pub(super) fn claim_path(at: &str, c: &str) -> Result<Vec<String>, ConfigError> {
    if c.is_empty() || c.split('.').any(str::is_empty) {
        return Err(ConfigError::new(
            at,
            "must be a claim name or dotted path such as realm_access.roles",
        ));
    }
    Ok(c.split('.').map(str::to_string).collect())
}

/// Safe inside an HTTP quoted-string (RFC 9110): printable ASCII without `"` or `\`.
pub(super) fn is_quoted_string_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `https://host:port/path?q` → (`host:port`, `/path?q`), or why the URI is refused. The scheme
/// is `http` or `https`; the host a DNS name, an IPv4 address or a bracketed, well-formed IPv6
/// address; the port, when given, 1–65535; no userinfo and no fragment. The authority is kept as
/// written (it becomes the fetch's `:authority`); a missing path is `/`.
pub(super) fn split_uri(uri: &str) -> Result<(String, String), &'static str> {
    const ABSOLUTE: &str = "must be an absolute http:// or https:// URI";
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or(ABSOLUTE)?;
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces");
    }
    if uri.contains('#') {
        return Err("must not have a fragment (#)");
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err("must not carry userinfo (user@host)");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address must be in brackets and well-formed: [::1]")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("an IPv6 address must be in brackets and well-formed: [::1]");
        }
        match after {
            "" => (addr, None),
            p => (
                addr,
                Some(
                    p.strip_prefix(':')
                        .ok_or("must be host[:port] after the scheme")?,
                ),
            ),
        }
    } else if authority.matches(':').count() > 1 {
        return Err("an IPv6 address must be in brackets and well-formed: [::1]");
    } else {
        match authority.split_once(':') {
            None => (authority, None),
            Some((h, p)) => (h, Some(p)),
        }
    };
    if host.is_empty() {
        return Err("must name a host");
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err("the host must be a DNS name, an IPv4 address or a bracketed IPv6 address");
    }
    if let Some(p) = port {
        let valid = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n));
        if !valid {
            return Err("the port must be between 1 and 65535");
        }
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Ok((authority.to_string(), path))
}

/// The duration forms accepted, for error messages.
pub const DURATION_FORMS: &str =
    "a duration: one or more <number><unit> with unit ns, us, ms, s, m, h or d, \
     the number a whole or decimal (at most 9 decimals), e.g. \"1s\", \"15m\", \"1m30s\" \
     (Go/Istio), \"1.5s\" (protobuf JSON), \"500ms\", \"2h\", \"1d\"";

/// Parses a duration into nanoseconds: one or more `<number><unit>` terms, as Go's
/// `time.ParseDuration` (Istio) writes them (`1m30s`, `1.5h`, `500ms`), which includes the
/// protobuf JSON form of `google.protobuf.Duration` (`1.5s`, `30s`), plus meshguard's `d` (day).
/// Signs, spaces, empty or unit-less numbers and more than 9 decimals are refused; `None` also
/// when the total does not fit in a `u64` of nanoseconds.
pub(super) fn duration_ns(s: &str) -> Option<u64> {
    let mut rest = s;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                if n == 0 {
                    return None; // "1.s": a dot without decimals
                }
                a.split_at(n)
            }
            None => ("", after),
        };
        if (int.is_empty() && frac.is_empty()) || frac.len() > 9 || int.len() > 20 {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return None,
        };
        let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut part = whole.checked_mul(unit_ns)?;
        if !frac.is_empty() {
            let digits: u128 = frac.parse().ok()?;
            let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
            part = part.checked_add(digits.checked_mul(unit_ns)? / scale)?;
        }
        total = total.checked_add(part)?;
        if total > u128::from(u64::MAX) {
            return None;
        }
        rest = next;
    }
    u64::try_from(total).ok()
}

/// `spiffe://td/ns/x/sa/*` or Istio's `td/ns/x/sa/*`; `*` alone matches any SPIFFE ID.
pub(super) fn principal(at: &str, s: &str) -> Result<PrincipalPattern, ConfigError> {
    if s == "*" {
        return Ok(PrincipalPattern {
            segments: Vec::new(),
            rest: true,
        });
    }
    let body = s.strip_prefix("spiffe://").unwrap_or(s);
    let parts: Vec<&str> = body.split('/').collect();
    let mut segments = Vec::new();
    let mut rest = false;
    for (k, p) in parts.iter().enumerate() {
        match *p {
            "" => return Err(ConfigError::new(at, "empty segment")),
            "**" if k + 1 == parts.len() => rest = true,
            "*" => segments.push(None),
            p if p.contains('*') => {
                return Err(ConfigError::new(
                    at,
                    "a wildcard must be a whole segment: * or a final **",
                ))
            }
            p => segments.push(Some(p.to_string())),
        }
    }
    Ok(PrincipalPattern { segments, rest })
}

#[cfg(test)]
mod tests {
    use super::duration_ns;

    const S: u64 = 1_000_000_000;

    #[test]
    fn durations_in_the_forms_used_until_now() {
        assert_eq!(duration_ns("15m"), Some(900 * S));
        assert_eq!(duration_ns("1s"), Some(S));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("2h"), Some(7_200 * S));
        assert_eq!(duration_ns("1d"), Some(86_400 * S));
    }

    #[test]
    fn durations_in_go_istio_and_protobuf_json_forms() {
        let cases = [
            ("1m30s", 90 * S),
            ("1h30m", 5_400 * S),
            ("2h45m30s", 9_930 * S),
            ("1d12h", 129_600 * S),
            ("1.5s", 1_500_000_000),
            ("0.25s", 250_000_000),
            (".5s", 500_000_000),
            ("1.5h", 5_400 * S),
            ("30.000000001s", 30 * S + 1),
            ("1s500ms", 1_500_000_000),
            ("100us", 100_000),
            ("100\u{b5}s", 100_000),
            ("7ns", 7),
            ("0.000001ms", 1),
        ];
        for (text, ns) in cases {
            assert_eq!(duration_ns(text), Some(ns), "{text}");
        }
    }

    #[test]
    fn malformed_or_overflowing_durations_are_refused() {
        for bad in [
            "",
            "m",
            "1",
            "1w",
            "-1s",
            "+1s",
            "1 s",
            " 1s",
            "1s ",
            "1.s",
            ".s",
            "1..5s",
            "1.5",
            "1m30",
            "1.0000000001s",
            "1S",
            "1sec",
            "99999999999999999999d",
            "213504d",
            "18446744073709551616ns",
            "18446744073s18446744073s",
        ] {
            assert_eq!(duration_ns(bad), None, "{bad:?}");
        }
        // The largest that fits: u64::MAX ns.
        assert_eq!(duration_ns("18446744073709551615ns"), Some(u64::MAX));
    }
}
