//! Request path normalisation before route matching, so that `..`, `%2e%2e`, `//`, a trailing
//! slash, a query or a fragment cannot make a request slip past a route:
//!
//! 1. the query (`?…`) and fragment (`#…`) are cut off;
//! 2. percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded (RFC 3986 §6.2.2.2),
//!    other escapes are kept with upper-case hex;
//! 3. an encoded slash or backslash (`%2F`, `%5C`), a raw backslash, a control character or a path
//!    that does not start with `/` is refused (the request gets `400 invalid_request`): upstreams
//!    disagree on what they mean;
//! 4. path parameters (`;…` in a segment, which Tomcat/Jetty/Spring drop) are cut off, and runs
//!    of `/` become one `/`;
//! 5. `.` and `..` segments are removed (RFC 3986 §5.2.4; `..` never climbs above `/`);
//! 6. a trailing `/` is removed (except for `/` itself);
//! 7. unless paths are configured case-sensitive, the result is lower-cased (route patterns are
//!    lower-cased the same way).

use std::borrow::Cow;

/// Why a path cannot be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPath;

pub fn normalize(raw: &str, case_sensitive: bool) -> Result<String, InvalidPath> {
    normalized(raw, case_sensitive).map(Cow::into_owned)
}

/// [`normalize`], borrowing the request's own path when it is already normal (the usual case:
/// nothing to decode, resolve or lower-case), so most requests copy nothing.
pub fn normalized(raw: &str, case_sensitive: bool) -> Result<Cow<'_, str>, InvalidPath> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let raw = raw.get(..end).unwrap_or_default();
    if is_normal(raw, case_sensitive) {
        return Ok(Cow::Borrowed(raw));
    }
    if !raw.starts_with('/') {
        return Err(InvalidPath);
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() {
        path.push('/');
    }
    if !case_sensitive {
        path.make_ascii_lowercase();
    }
    Ok(Cow::Owned(path))
}

/// True when `path` (without query) is its own normal form: starts with `/`; only bytes that
/// need no decoding or refusing (no `%`, `\\`, `;`, control characters, and no upper-case
/// ASCII unless case-sensitive); no empty, `.` or `..` segment; no trailing `/` but for `/`.
fn is_normal(path: &str, case_sensitive: bool) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    if bytes.len() == 1 {
        return true;
    }
    let clean = bytes.iter().all(|&b| {
        !(b == b'%' || b == b'\\' || b == b';' || b.is_ascii_control())
            && (case_sensitive || !b.is_ascii_uppercase())
    });
    clean
        && path
            .get(1..)
            .unwrap_or_default()
            .split('/')
            .all(|seg| !matches!(seg, "" | "." | ".."))
}

fn decode_unreserved(raw: &str) -> Result<String, InvalidPath> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' || b.is_ascii_control() {
            return Err(InvalidPath);
        }
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(InvalidPath)?;
            if v == b'/' || v == b'\\' || v.is_ascii_control() {
                return Err(InvalidPath);
            }
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                out.push(char::from(v));
            } else {
                out.push_str(&format!("%{v:02X}"));
            }
            i += 3;
            continue;
        }
        // Other bytes (including UTF-8 sequences) are kept as they are.
        let ch_len = utf8_len(b);
        let chunk = raw.get(i..i + ch_len).ok_or(InvalidPath)?;
        out.push_str(chunk);
        i += ch_len;
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, InvalidPath> {
        normalize(p, false)
    }

    #[test]
    fn paths_already_normal_are_borrowed_and_the_rest_are_not() {
        for (p, cs) in [
            ("/", false),
            ("/projects/42", false),
            ("/A/b", true),
            ("/x?q=1", false),
        ] {
            assert!(
                matches!(normalized(p, cs), Ok(Cow::Borrowed(_))),
                "{p} should be borrowed"
            );
        }
        for (p, want) in [
            ("/A", "/a"),
            ("/a/", "/a"),
            ("//a", "/a"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a;x=1", "/a"),
            ("/%61", "/a"),
            ("/a/..", "/"),
        ] {
            let got = normalized(p, false).unwrap();
            assert!(matches!(got, Cow::Owned(_)), "{p} needs work");
            assert_eq!(got, want, "{p}");
        }
        assert_eq!(normalized("x", false), Err(InvalidPath));
        assert_eq!(normalized("/a\\b", false), Err(InvalidPath));
    }

    #[test]
    fn dot_segments_encoded_or_not_are_resolved() {
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/a/./b/.").unwrap(), "/a/b");
        assert_eq!(n("/../../etc").unwrap(), "/etc", "never above the root");
    }

    #[test]
    fn slashes_case_query_and_fragment() {
        assert_eq!(n("//projects///1//").unwrap(), "/projects/1");
        assert_eq!(n("/Projects/ABC").unwrap(), "/projects/abc");
        assert_eq!(normalize("/Projects/ABC", true).unwrap(), "/Projects/ABC");
        assert_eq!(n("/projects/?admin=1").unwrap(), "/projects");
        assert_eq!(n("/projects#frag").unwrap(), "/projects");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/admin;x/users;jsessionid=1").unwrap(), "/admin/users");
        assert_eq!(n("/a/..;/admin").unwrap(), "/admin");
        assert_eq!(n("/?x").unwrap(), "/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        assert_eq!(n("/%70rojects").unwrap(), "/projects");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(
            n("/a%3ab").unwrap(),
            "/a%3ab",
            "kept upper-case, then lower-cased with the path"
        );
        assert_eq!(normalize("/a%3ab", true).unwrap(), "/a%3Ab");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00", "/a%zz", "/a%2", "projects", "", "*",
            "/a\tb",
        ] {
            assert_eq!(n(p), Err(InvalidPath), "{p:?}");
        }
    }
}
