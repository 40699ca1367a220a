//! The byte formats of the proxy-wasm ABI (0.2.1) that carry more than one value: header maps and
//! property paths. Plain functions over bytes, so they are unit-tested here; `host/abi` uses them
//! on what Envoy hands over. Decoding never panics: a map that does not add up is `None`.
//!
//! A header map is `count: u32`, then `count` pairs of `(name_len: u32, value_len: u32)`, then
//! each name and value followed by one NUL byte (all integers little-endian).

/// Decodes a header map into lines borrowed from `bytes` (no copy per header). A name that is not
/// UTF-8 (Envoy never hands one over) becomes "", which matches no header the core looks for.
pub fn decode_map(bytes: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = usize::try_from(read_u32(bytes, 0)?).ok()?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut map = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let name_len = usize::try_from(read_u32(bytes, at)?).ok()?;
        let value_len = usize::try_from(read_u32(bytes, at + 4)?).ok()?;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?.checked_add(1)?;
        map.push((std::str::from_utf8(name).unwrap_or(""), value));
    }
    (data <= bytes.len()).then_some(map)
}

/// Encodes a header map (names and values as given).
pub fn encode_map(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| n.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&len32(name.len()).to_le_bytes());
        out.extend_from_slice(&len32(value.len()).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// A property path (`["connection", "mtls"]`): segments joined by NUL.
pub fn encode_path(segments: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(segments.iter().map(|s| s.len() + 1).sum());
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Lengths handed to the host are u32; anything larger is clamped (the host then refuses it).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built by hand from the format description, not by `encode_map`.
    fn two_headers() -> Vec<u8> {
        let mut b = vec![2, 0, 0, 0];
        b.extend_from_slice(&[5, 0, 0, 0, 1, 0, 0, 0]); // ":path" "/"
        b.extend_from_slice(&[1, 0, 0, 0, 3, 0, 0, 0]); // "a" "xyz"
        b.extend_from_slice(b":path\0/\0a\0xyz\0");
        b
    }

    #[test]
    fn decodes_a_map_built_by_hand() {
        let bytes = two_headers();
        let map = decode_map(&bytes).unwrap();
        assert_eq!(map, vec![(":path", &b"/"[..]), ("a", &b"xyz"[..])]);
    }

    #[test]
    fn encodes_the_same_bytes() {
        assert_eq!(encode_map(&[(":path", b"/"), ("a", b"xyz")]), two_headers());
    }

    #[test]
    fn empty_buffer_is_an_empty_map() {
        assert!(decode_map(&[]).unwrap().is_empty());
        assert!(decode_map(&[0, 0, 0, 0]).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_is_refused_not_a_panic() {
        let full = two_headers();
        for cut in 1..full.len() - 1 {
            assert_eq!(decode_map(&full[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn absurd_counts_and_lengths_are_refused() {
        assert_eq!(decode_map(&[0xff, 0xff, 0xff, 0xff]), None);
        let mut b = vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        b.extend_from_slice(b"\0\0");
        assert_eq!(decode_map(&b), None);
    }

    #[test]
    fn non_utf8_names_do_not_panic() {
        let mut b = vec![1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0];
        b.extend_from_slice(&[0xff, 0, b'v', 0]);
        let map = decode_map(&b).unwrap();
        assert_eq!(map, vec![("", &b"v"[..])]);
    }

    #[test]
    fn paths_are_joined_by_nul() {
        assert_eq!(encode_path(&["connection", "mtls"]), b"connection\0mtls");
        assert_eq!(encode_path(&["plugin_name"]), b"plugin_name");
        assert_eq!(encode_path(&[]), b"");
    }
}
