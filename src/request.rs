//! The plain data the core needs about one request. The host fills it once per request.

use crate::identity::Peer;

/// One header line: name (lower-case) and value, borrowed from the host's header map.
pub type Header<'a> = (&'a str, &'a [u8]);

/// Borrows owned header lines (tests, and hosts that hold them owned).
pub fn borrowed(owned: &[(String, Vec<u8>)]) -> Vec<Header<'_>> {
    owned
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect()
}

/// One request as the core sees it.
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    /// `:path` as received (path and query).
    pub path: &'a str,
    /// Every header line, names lower-case (Envoy's header map keeps them so), values as bytes.
    pub headers: &'a [Header<'a>],
    /// The TLS peer and the source address.
    pub peer: &'a Peer,
}

impl<'a> RequestView<'a> {
    /// The header lines named `name` (lower-case), with their position in the map.
    pub fn header_lines(&self, name: &'a str) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
        self.headers
            .iter()
            .enumerate()
            .filter(move |(_, (n, _))| *n == name)
            .map(|(i, (_, v))| (i, *v))
    }

    /// The first value of a header (pseudo-headers such as `:authority` included), as text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// A header that must be text when present (`:authority`, `:method`): `Ok("")` when absent,
    /// `Err` when its bytes are not UTF-8.
    pub fn text_header(&self, name: &str) -> Result<&'a str, std::str::Utf8Error> {
        match self.headers.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => std::str::from_utf8(v),
            None => Ok(""),
        }
    }

    /// The query string, without the fragment.
    pub fn query(&self) -> &'a str {
        let no_fragment = self.path.split('#').next().unwrap_or_default();
        no_fragment.split_once('?').map_or("", |(_, q)| q)
    }

    /// `:path` without the query parameters named in `names` (compared percent-decoded), or
    /// `None` when there is none of them. Other parameters keep their order and spelling.
    pub fn path_without_params(&self, names: &[&str]) -> Option<String> {
        let (no_fragment, fragment) = match self.path.split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (self.path, None),
        };
        let (path, query) = no_fragment.split_once('?')?;
        let named = |pair: &&str| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            names
                .iter()
                .any(|n| percent_decode(key.as_bytes()) == n.as_bytes())
        };
        let pairs: Vec<&str> = query.split('&').collect();
        if !pairs.iter().any(named) {
            return None;
        }
        let kept: Vec<&str> = pairs.into_iter().filter(|p| !named(p)).collect();
        let mut out = path.to_string();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        Some(out)
    }

    /// The percent-decoded values of query parameter `name`.
    pub fn query_params(&self, name: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
        self.query().split('&').filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k.as_bytes()) == name.as_bytes()).then(|| percent_decode(v.as_bytes()))
        })
    }
}

/// Decodes `%XX` escapes (and `+` as space, as forms do); bad escapes are kept as they are.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded_and_fragment_ignored() {
        let peer = Peer::default();
        let req = RequestView {
            path: "/a?x=1&access_token=ab%2Ec&y#access_token=zz",
            headers: &[],
            peer: &peer,
        };
        let got: Vec<_> = req.query_params("access_token").collect();
        assert_eq!(got, vec![b"ab.c".to_vec()]);
        assert_eq!(
            req.query_params("y").collect::<Vec<_>>(),
            vec![Vec::<u8>::new()]
        );
        assert_eq!(req.query_params("nope").count(), 0);
    }

    #[test]
    fn token_parameters_come_out_of_the_path() {
        let peer = Peer::default();
        let view = |path| RequestView {
            path,
            headers: &[],
            peer: &peer,
        };
        let strip = |path| view(path).path_without_params(&["access_token"]);
        assert_eq!(
            strip("/a?x=1&access_token=abc&y=2").as_deref(),
            Some("/a?x=1&y=2")
        );
        assert_eq!(strip("/a?access_token=abc").as_deref(), Some("/a"));
        assert_eq!(
            strip("/a?access%5Ftoken=abc&access_token&z").as_deref(),
            Some("/a?z")
        );
        assert_eq!(strip("/a?x=1#f").as_deref(), None);
        assert_eq!(strip("/a").as_deref(), None);
        assert_eq!(strip("/a?x=access_token").as_deref(), None);
    }

    #[test]
    fn percent_decode_keeps_bad_escapes() {
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4".to_vec());
        assert_eq!(percent_decode(b"a%20b+c"), b"a b c".to_vec());
    }
}
