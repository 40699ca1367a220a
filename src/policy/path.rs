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

/// Why a path cannot be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPath;

pub fn normalize(raw: &str, case_sensitive: bool) -> Result<String, InvalidPath> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let raw = raw.get(..end).unwrap_or_default();
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
    Ok(path)
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
