//! Finding the credential in a request (RFC 6750 §2): configured headers with a prefix
//! (`Authorization: Bearer …` by default, scheme compared case-insensitively) and query
//! parameters. A request that carries more than one credential is malformed (RFC 6750 §3.1).

use crate::request::RequestView;

/// A place a credential may be found (the configuration lists them once over all providers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A request header (lower-case name) whose value starts with `prefix` (compared
    /// case-insensitively); the rest of the value is the token.
    Header { name: String, prefix: String },
    /// A query parameter.
    Param { name: String },
}

/// The token found, and every configured source that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub token: String,
    pub sources: Vec<usize>,
}

/// Why a request's credentials could not be read at all (answered 400 `invalid_request`; see
/// the decision table, [`crate::decision::Reason::row`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// More than one credential, or a token header repeated.
    MultipleCredentials,
    /// The scheme is present but carries no token (`Authorization: Bearer`).
    EmptyCredentials,
    /// The path cannot be normalised for route matching (encoded slash, backslash, …).
    InvalidPath,
}

/// Looks for the credential. `Ok(None)`: the request carries none.
pub fn extract(
    req: &RequestView<'_>,
    sources: &[TokenSource],
) -> Result<Option<Credential>, RequestError> {
    // Each occurrence (header line or query parameter) that holds a token, with its sources.
    let mut found: Vec<(Occurrence, Vec<u8>, Vec<usize>)> = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        match source {
            TokenSource::Header { name, prefix } => {
                let lines = req.header_lines(name);
                let mut count = 0;
                for (line, value) in lines {
                    count += 1;
                    // A repeated line, or repeated lines Envoy joined with commas (it does so
                    // for `authorization`): a JWS never contains a comma.
                    if count > 1 || value.contains(&b',') {
                        return Err(RequestError::MultipleCredentials);
                    }
                    let Some(token) = strip_prefix_ci(value, prefix.as_bytes()) else {
                        // A value for another scheme (`Basic …`) or a bare scheme name.
                        if !prefix.is_empty()
                            && trim(value).eq_ignore_ascii_case(prefix.trim().as_bytes())
                        {
                            return Err(RequestError::EmptyCredentials);
                        }
                        continue;
                    };
                    let token = trim(token);
                    if token.is_empty() {
                        return Err(RequestError::EmptyCredentials);
                    }
                    record(&mut found, Occurrence::Header(line), token.to_vec(), index);
                }
            }
            TokenSource::Param { name } => {
                let mut values = req.query_params(name);
                if let Some(first) = values.next() {
                    if values.next().is_some() {
                        return Err(RequestError::MultipleCredentials);
                    }
                    if first.is_empty() {
                        return Err(RequestError::EmptyCredentials);
                    }
                    record(&mut found, Occurrence::Param(name.clone()), first, index);
                }
            }
        }
    }
    let mut found = found.into_iter();
    let Some((_, token, sources)) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(RequestError::MultipleCredentials);
    }
    // Non-UTF-8 bytes cannot be a JWS; keep them (lossily) so the parser refuses them.
    let token = String::from_utf8(token)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Ok(Some(Credential { token, sources }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Occurrence {
    Header(usize),
    Param(String),
}

fn record(
    found: &mut Vec<(Occurrence, Vec<u8>, Vec<usize>)>,
    at: Occurrence,
    token: Vec<u8>,
    source: usize,
) {
    if let Some(entry) = found.iter_mut().find(|(o, _, _)| *o == at) {
        entry.2.push(source);
    } else {
        found.push((at, token, vec![source]));
    }
}

fn strip_prefix_ci<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if value.len() < prefix.len() {
        return None;
    }
    let (head, rest) = value.split_at(prefix.len());
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests;
