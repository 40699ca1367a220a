//! The URI a DPoP proof signs (`htu`) and the URI meshguard expects, compared after RFC 9449
//! §4.3's normalisation: syntax-based (RFC 3986 §6.2.2: case of scheme, host and percent-escape
//! hex digits; percent-encoded unreserved characters decoded; dot segments removed) and
//! scheme-based (§6.2.3: default port dropped, empty path is `/`). Query and fragment are
//! ignored (RFC 9449 §4.2). A host's one trailing dot is dropped (`api.example.com.` is the same
//! name). Userinfo is refused: a target URI has none (RFC 9110 §7.1).
//!
//! **The public origin question.** A sidecar sees the mesh-internal authority and often plain
//! HTTP, not the URI the client signed. So the origins clients use are configured
//! ([`Origin`]s), or named by `X-Forwarded-Proto`/`X-Forwarded-Host` when the user trusts them
//! (only safe when the edge proxy overwrites them: a client that can set them picks the `htu`
//! meshguard expects, which weakens the binding of a proof to this service to "any origin the
//! client names"). With neither, the request's own scheme and `:authority` are used.

use std::fmt::Write as _;

/// Longest `htu` text shown in an error (it comes from the client).
const SHOWN_MAX: usize = 200;
/// Most candidates one request yields (origins are bounded by the configuration).
pub const MAX_CANDIDATES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HtuError {
    #[error("not an absolute http(s) URI")]
    Scheme,
    #[error("userinfo is not allowed in an http(s) target URI")]
    Userinfo,
    #[error("bad host")]
    Host,
    #[error("bad port")]
    Port,
    #[error("bad path")]
    Path,
    #[error("an origin has no path, query or fragment")]
    NotAnOrigin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Result<Scheme, HtuError> {
        if s.eq_ignore_ascii_case("http") {
            Ok(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Ok(Scheme::Https)
        } else {
            Err(HtuError::Scheme)
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A normalised origin: scheme, lower-case host, and the port when it is not the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// `https://api.example.com`, `http://[::1]:8080`; a trailing `/` is allowed, nothing else
    /// after the authority.
    pub fn parse(text: &str) -> Result<Origin, HtuError> {
        let (scheme, rest) = text.split_once("://").ok_or(HtuError::Scheme)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(HtuError::NotAnOrigin);
        }
        Origin::from_parts(scheme, rest)
    }

    /// From a scheme and an authority (`host[:port]`), as a request's `:scheme` and
    /// `:authority`.
    pub fn from_parts(scheme: &str, authority: &str) -> Result<Origin, HtuError> {
        let scheme = Scheme::parse(scheme)?;
        if authority.contains('@') {
            return Err(HtuError::Userinfo);
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None | Some("") => None,
            Some(p) => {
                if !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HtuError::Port);
                }
                let n: u16 = p.parse().map_err(|_| HtuError::Port)?;
                (n != scheme.default_port()).then_some(n)
            }
        };
        Ok(Origin {
            scheme,
            host: normalise_host(host)?,
            port,
        })
    }

    fn write(&self, out: &mut String) {
        out.push_str(self.scheme.name());
        out.push_str("://");
        out.push_str(&self.host);
        if let Some(p) = self.port {
            let _ = write!(out, ":{p}");
        }
    }

    /// This origin followed by a normalised path (from a request's `:path`, whose query and
    /// fragment are dropped).
    pub fn with_path(&self, path: &str) -> Result<String, HtuError> {
        let path = strip_query(path);
        let mut out = String::with_capacity(self.host.len() + path.len() + 16);
        self.write(&mut out);
        normalise_path(path, &mut out)?;
        Ok(out)
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write(&mut s);
        f.write_str(&s)
    }
}

/// `host` and the text after its `:`, for reg-names, IPv4 and bracketed IPv6 literals.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), HtuError> {
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or(HtuError::Host)?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(HtuError::Host),
            },
        };
    }
    Ok(match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    })
}

/// Lower case; one trailing dot dropped from a name; no empty label; only the characters DNS
/// names, IPv4 and IPv6 literals use.
fn normalise_host(host: &str) -> Result<String, HtuError> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(HtuError::Host)?;
        let ok = !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        return if ok {
            Ok(format!("[{}]", inner.to_ascii_lowercase()))
        } else {
            Err(HtuError::Host)
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let ok = !name.split('.').any(str::is_empty)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(HtuError::Host)
    }
}

fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => path.get(..i).unwrap_or(path),
        None => path,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` (handled apart), plus `/`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends the normalised form of an absolute path (no query) to `out`.
fn normalise_path(path: &str, out: &mut String) -> Result<(), HtuError> {
    if path.is_empty() {
        out.push('/');
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(HtuError::Path);
    }
    // Percent-escapes: unreserved characters decoded, the others' hex digits upper-cased.
    let bytes = path.as_bytes();
    let mut text = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(HtuError::Path);
            };
            let v = hi * 16 + lo;
            if is_unreserved(v) {
                text.push(char::from(v));
            } else {
                let _ = write!(text, "%{v:02X}");
            }
            i += 3;
        } else if is_path_char(b) {
            text.push(char::from(b));
            i += 1;
        } else {
            return Err(HtuError::Path);
        }
    }
    // Dot segments (RFC 3986 §5.2.4), on the absolute path's segments.
    let segments: Vec<&str> = text.get(1..).unwrap_or("").split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (n, seg) in segments.into_iter().enumerate() {
        match seg {
            "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
        if n == last && (seg == "." || seg == "..") {
            kept.push("");
        }
    }
    out.push('/');
    out.push_str(&kept.join("/"));
    Ok(())
}

/// An absolute `http(s)` URI normalised for comparison, without its query and fragment.
pub fn normalise(uri: &str) -> Result<String, HtuError> {
    let (scheme, rest) = uri.split_once("://").ok_or(HtuError::Scheme)?;
    let rest = strip_query(rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Origin::from_parts(scheme, authority)?.with_path(path)
}

/// The facts of a request that decide its expected `htu`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestUri<'a> {
    /// `:scheme`.
    pub scheme: &'a str,
    /// `:authority` (`Host`).
    pub authority: &'a str,
    /// `:path`, with its query if any.
    pub path: &'a str,
    /// `X-Forwarded-Proto`, if present.
    pub forwarded_proto: Option<&'a str>,
    /// `X-Forwarded-Host`, if present.
    pub forwarded_host: Option<&'a str>,
}

/// The normalised URIs a proof for this request may sign, in order: the configured public
/// origins; the forwarded one (when trusted and present); the request's own origin when
/// neither applies. Origins that do not form a URI with this path are left out.
pub fn expected(origins: &[Origin], trust_forwarded: bool, req: &RequestUri<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |uri: Result<String, HtuError>| {
        if let Ok(uri) = uri {
            if !out.contains(&uri) && out.len() < MAX_CANDIDATES {
                out.push(uri);
            }
        }
    };
    for origin in origins {
        add(origin.with_path(req.path));
    }
    let forwarded =
        trust_forwarded && (req.forwarded_proto.is_some() || req.forwarded_host.is_some());
    if forwarded {
        let scheme = req.forwarded_proto.map_or(req.scheme, first_element);
        let authority = req.forwarded_host.map_or(req.authority, first_element);
        add(Origin::from_parts(scheme, authority).and_then(|o| o.with_path(req.path)));
    }
    if origins.is_empty() && !forwarded {
        add(Origin::from_parts(req.scheme, req.authority).and_then(|o| o.with_path(req.path)));
    }
    out
}

/// The first element of a comma-separated header: the one the edge proxy (closest to the
/// client) wrote.
fn first_element(v: &str) -> &str {
    v.split(',').next().unwrap_or("").trim()
}

/// A proof's `htu` that is none of the expected URIs: what was compared, for the log line (the
/// client's text shortened; never token material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtuMismatch {
    pub expected: Vec<String>,
    /// The claim normalised, or as sent (shortened) when it is not a valid URI.
    pub got: String,
    /// Why the claim could not be normalised, if it could not.
    pub invalid: Option<HtuError>,
}

impl std::fmt::Display for HtuMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "htu {:?}", self.got)?;
        if let Some(e) = self.invalid {
            write!(f, " ({e})")?;
        }
        write!(f, " is not the request's URI; expected ")?;
        match self.expected.as_slice() {
            [] => write!(f, "none (the request's own URI is not valid)"),
            [one] => write!(f, "{one:?}"),
            many => write!(f, "one of {many:?}"),
        }
    }
}

/// Compares a proof's `htu` claim with the expected URIs.
pub fn check(claim: &str, expected: &[String]) -> Result<(), HtuMismatch> {
    match normalise(claim) {
        Ok(got) if expected.contains(&got) => Ok(()),
        Ok(got) => Err(HtuMismatch {
            expected: expected.to_vec(),
            got,
            invalid: None,
        }),
        Err(e) => Err(HtuMismatch {
            expected: expected.to_vec(),
            got: claim.chars().take(SHOWN_MAX).collect(),
            invalid: Some(e),
        }),
    }
}

#[cfg(test)]
mod tests;
