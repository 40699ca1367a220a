//! `htu` normalisation (RFC 9449 §4.3 → RFC 3986 §6.2.2–§6.2.3) and the expected URIs of a
//! request. Every expected string is written by hand from the RFC rules.

use super::*;

fn norm(uri: &str) -> String {
    normalise(uri).unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn scheme_and_host_are_lower_cased() {
    assert_eq!(
        norm("HTTPS://Api.Example.COM/Orders"),
        "https://api.example.com/Orders",
        "the path keeps its case"
    );
}

#[test]
fn default_ports_are_dropped_and_others_kept() {
    assert_eq!(norm("https://a.example:443/x"), "https://a.example/x");
    assert_eq!(norm("http://a.example:80/x"), "http://a.example/x");
    assert_eq!(norm("https://a.example:80/x"), "https://a.example:80/x");
    assert_eq!(norm("http://a.example:443/x"), "http://a.example:443/x");
    assert_eq!(norm("https://a.example:8443/x"), "https://a.example:8443/x");
    assert_eq!(
        norm("https://a.example:/x"),
        "https://a.example/x",
        "empty port"
    );
    assert_eq!(norm("https://a.example:0443/x"), "https://a.example/x");
    assert_eq!(norm("https://a.example:65536/x"), "error: bad port");
    assert_eq!(norm("https://a.example:+443/x"), "error: bad port");
}

#[test]
fn one_trailing_dot_of_a_name_is_dropped() {
    assert_eq!(
        norm("https://api.example.com./x"),
        "https://api.example.com/x"
    );
    assert_eq!(
        norm("https://api.example.com.:443/x"),
        "https://api.example.com/x"
    );
    assert_eq!(norm("https://api.example.com../x"), "error: bad host");
    assert_eq!(norm("https://./x"), "error: bad host");
}

#[test]
fn ipv6_literals_keep_their_brackets_and_lose_their_case() {
    assert_eq!(norm("https://[2001:DB8::1]/x"), "https://[2001:db8::1]/x");
    assert_eq!(
        norm("https://[2001:db8::1]:443/x"),
        "https://[2001:db8::1]/x"
    );
    assert_eq!(norm("http://[::1]:8080/x"), "http://[::1]:8080/x");
    assert_eq!(norm("http://[::1]x/"), "error: bad host");
    assert_eq!(norm("http://[::g]/"), "error: bad host");
    assert_eq!(norm("http://[::1/"), "error: bad host");
}

#[test]
fn percent_escapes_are_upper_cased_and_unreserved_ones_decoded() {
    assert_eq!(norm("https://a.example/a%2fb"), "https://a.example/a%2Fb");
    assert_eq!(norm("https://a.example/%7euser"), "https://a.example/~user");
    assert_eq!(
        norm("https://a.example/%41%62%2D%5F"),
        "https://a.example/Ab-_"
    );
    assert_eq!(
        norm("https://a.example/caf%c3%a9"),
        "https://a.example/caf%C3%A9"
    );
    assert_eq!(norm("https://a.example/a%2"), "error: bad path");
    assert_eq!(norm("https://a.example/a%zz"), "error: bad path");
    assert_eq!(norm("https://a.example/a b"), "error: bad path");
    assert_eq!(norm("https://a.example/café"), "error: bad path");
}

#[test]
fn dot_segments_are_removed() {
    assert_eq!(
        norm("https://a.example/a/b/../c/./d"),
        "https://a.example/a/c/d"
    );
    assert_eq!(norm("https://a.example/a/b/.."), "https://a.example/a/");
    assert_eq!(norm("https://a.example/a/."), "https://a.example/a/");
    assert_eq!(norm("https://a.example/../../x"), "https://a.example/x");
    // An escaped dot is a dot once decoded (§6.2.2.2 before §6.2.2.3).
    assert_eq!(norm("https://a.example/a/%2E%2e/b"), "https://a.example/b");
    // Empty segments are not dot segments.
    assert_eq!(norm("https://a.example//a//"), "https://a.example//a//");
}

#[test]
fn empty_path_is_slash_and_query_and_fragment_are_ignored() {
    assert_eq!(norm("https://a.example"), "https://a.example/");
    assert_eq!(norm("https://a.example?x=1"), "https://a.example/");
    assert_eq!(norm("https://a.example/p?x=1#f"), "https://a.example/p");
    assert_eq!(norm("https://a.example/p#f?x"), "https://a.example/p");
    assert_eq!(
        norm("https://a.example/p?x=%zz"),
        "https://a.example/p",
        "query is not read"
    );
}

#[test]
fn other_schemes_and_userinfo_are_refused() {
    assert_eq!(
        norm("ftp://a.example/x"),
        "error: not an absolute http(s) URI"
    );
    assert_eq!(norm("/x"), "error: not an absolute http(s) URI");
    assert_eq!(
        norm("https://user:pw@a.example/x"),
        "error: userinfo is not allowed in an http(s) target URI"
    );
}

#[test]
fn origins_parse_and_print_normalised() {
    let o = Origin::parse("HTTPS://API.example.com:443/").unwrap();
    assert_eq!(o.to_string(), "https://api.example.com");
    assert_eq!(
        Origin::parse("http://[::1]:8080").unwrap().to_string(),
        "http://[::1]:8080"
    );
    assert_eq!(
        Origin::parse("https://a.example/x"),
        Err(HtuError::NotAnOrigin)
    );
    assert_eq!(
        Origin::parse("https://a.example?x"),
        Err(HtuError::NotAnOrigin)
    );
    assert_eq!(Origin::parse("a.example"), Err(HtuError::Scheme));
}

fn sidecar_request() -> RequestUri<'static> {
    RequestUri {
        scheme: "http",
        authority: "orders.shop.svc.cluster.local:8080",
        path: "/v1/Orders/%7e42?page=2",
        forwarded_proto: Some("https"),
        forwarded_host: Some("API.example.com, evil.example"),
    }
}

#[test]
fn configured_origins_replace_the_mesh_authority() {
    let origins = [
        Origin::parse("https://api.example.com").unwrap(),
        Origin::parse("https://api.example.com:8443").unwrap(),
    ];
    assert_eq!(
        expected(&origins, false, &sidecar_request()),
        vec![
            "https://api.example.com/v1/Orders/~42".to_string(),
            "https://api.example.com:8443/v1/Orders/~42".to_string(),
        ]
    );
}

#[test]
fn forwarded_headers_count_only_when_trusted() {
    let req = sidecar_request();
    assert_eq!(
        expected(&[], true, &req),
        vec!["https://api.example.com/v1/Orders/~42".to_string()],
        "the first element: what the edge wrote"
    );
    assert_eq!(
        expected(&[], false, &req),
        vec!["http://orders.shop.svc.cluster.local:8080/v1/Orders/~42".to_string()],
        "untrusted: the request's own origin"
    );
    let only_proto = RequestUri {
        forwarded_host: None,
        ..req
    };
    assert_eq!(
        expected(&[], true, &only_proto),
        vec!["https://orders.shop.svc.cluster.local:8080/v1/Orders/~42".to_string()]
    );
    // Configured origins and a trusted forwarded origin are both candidates, without repeats.
    let origins = [Origin::parse("https://api.example.com").unwrap()];
    assert_eq!(expected(&origins, true, &req).len(), 1);
}

#[test]
fn a_mismatch_says_what_was_compared() {
    let want = vec!["https://api.example.com/v1/orders".to_string()];
    assert_eq!(
        check("HTTPS://api.example.com:443/v1/orders?x#y", &want),
        Ok(())
    );
    let e = check("http://orders.shop:8080/v1/orders", &want).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"htu "http://orders.shop:8080/v1/orders" is not the request's URI; expected "https://api.example.com/v1/orders""#
    );
    let e = check("https://user@api.example.com/v1/orders", &want).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"htu "https://user@api.example.com/v1/orders" (userinfo is not allowed in an http(s) target URI) is not the request's URI; expected "https://api.example.com/v1/orders""#
    );
    let long = format!("https://a.example/{}", "x".repeat(500));
    let e = check(&format!("{long} "), &want).unwrap_err();
    assert_eq!(e.got.len(), SHOWN_MAX, "the client's text is shortened");
}
