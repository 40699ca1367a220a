//! Where credentials are found, and requests whose credentials cannot be read.

use super::*;
use crate::identity::Peer;

fn sources() -> Vec<TokenSource> {
    vec![
        TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        },
        TokenSource::Header {
            name: "x-api-token".into(),
            prefix: String::new(),
        },
        TokenSource::Param {
            name: "access_token".into(),
        },
    ]
}

fn run(path: &str, headers: &[(&str, &[u8])]) -> Result<Option<Credential>, RequestError> {
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    let peer = Peer::default();
    let req = RequestView {
        path,
        headers: &crate::request::borrowed(&headers),
        peer: &peer,
    };
    extract(&req, &sources())
}

fn token(r: Result<Option<Credential>, RequestError>) -> (String, Vec<usize>) {
    let c = r.unwrap().unwrap();
    (c.token, c.sources)
}

#[test]
fn bearer_scheme_is_case_insensitive_and_whitespace_trimmed() {
    for v in [&b"Bearer abc"[..], b"bearer abc", b"BEARER   abc  "] {
        assert_eq!(
            token(run("/", &[("authorization", v)])),
            ("abc".into(), vec![0])
        );
    }
}

#[test]
fn other_schemes_and_no_header_mean_no_credentials() {
    assert_eq!(
        run("/", &[("authorization", b"Basic dXNlcjpwYXNz")]),
        Ok(None)
    );
    assert_eq!(run("/x?other=1", &[("accept", b"*/*")]), Ok(None));
}

#[test]
fn bare_scheme_is_an_invalid_request() {
    assert_eq!(
        run("/", &[("authorization", b"Bearer")]),
        Err(RequestError::EmptyCredentials)
    );
    assert_eq!(
        run("/", &[("authorization", b"Bearer    ")]),
        Err(RequestError::EmptyCredentials)
    );
    assert_eq!(
        run("/?access_token=", &[]),
        Err(RequestError::EmptyCredentials)
    );
}

#[test]
fn custom_header_and_query_param_sources() {
    assert_eq!(
        token(run("/", &[("x-api-token", b"t1")])),
        ("t1".into(), vec![1])
    );
    assert_eq!(
        token(run("/p?a=1&access_token=t2", &[])),
        ("t2".into(), vec![2])
    );
}

#[test]
fn two_credentials_are_an_invalid_request() {
    type Headers<'a> = &'a [(&'a str, &'a [u8])];
    let cases: [(&str, Headers); 4] = [
        (
            "/",
            &[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b"),
            ],
        ),
        (
            "/",
            &[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer a"),
            ],
        ),
        ("/?access_token=b", &[("authorization", b"Bearer a")]),
        (
            "/",
            &[("authorization", b"Bearer a"), ("x-api-token", b"b")],
        ),
    ];
    for (path, headers) in cases {
        assert_eq!(
            run(path, headers),
            Err(RequestError::MultipleCredentials),
            "{path} {headers:?}"
        );
    }
    assert_eq!(
        run("/?access_token=a&access_token=b", &[]),
        Err(RequestError::MultipleCredentials)
    );
    // Envoy joins repeated `authorization` lines into one value with commas.
    assert_eq!(
        run("/", &[("authorization", b"Bearer a,Bearer b")]),
        Err(RequestError::MultipleCredentials)
    );
}

#[test]
fn non_utf8_bytes_reach_the_parser_as_replacement_characters() {
    let (t, _) = token(run("/", &[("authorization", b"Bearer a\xffb")]));
    assert!(!t.is_ascii(), "the JWS parser will refuse it");
}
