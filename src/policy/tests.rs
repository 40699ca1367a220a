//! Routes and requirements, built through the configuration parser as users write them.

use serde_json::{json, Value};

use super::*;
use crate::identity::PeerInfo;
use crate::testkit::{config_doc, parse_config, TestKeys, ISSUER};

fn policy(top: Value) -> Policy {
    parse_config(&config_doc(TestKeys::new().jwks(), json!({}), top))
        .unwrap()
        .policy
}

fn config_err(top: Value) -> String {
    parse_config(&config_doc(TestKeys::new().jwks(), json!({}), top))
        .unwrap_err()
        .to_string()
}

fn route_name<'a>(p: &'a Policy, host: &str, raw_path: &str, method: &str) -> Option<&'a str> {
    let path = path::normalize(raw_path, p.case_sensitive_paths).ok()?;
    p.route_for(host, &path, method)
        .map(|(_, r)| r.name.as_str())
}

fn claims(v: Value) -> Claims {
    Claims {
        iss: v["iss"].as_str().map(str::to_string),
        all: v.as_object().unwrap().clone(),
        ..Claims::default()
    }
}

fn saas() -> Policy {
    policy(json!({"rolesClaim": "role", "routes": [
        {"name": "status", "match": {"paths": ["/public/status"], "methods": ["GET"]}, "token": "none"},
        {"name": "list", "match": {"paths": ["/projects"], "methods": ["GET"]}},
        {"name": "create", "match": {"paths": ["/projects"], "methods": ["POST"]},
         "require": {"roles": {"anyOf": ["editor", "admin"]}}},
        {"name": "delete", "match": {"paths": ["/projects/{id}"], "methods": ["DELETE"]},
         "require": {"roles": {"anyOf": ["admin"]}}},
        {"name": "export", "match": {"paths": ["/api/*/export"]}},
        {"name": "docs", "match": {"pathPrefixes": ["/docs/"], "hosts": ["*.example.com"]}, "token": "optional"}
    ]}))
}

#[test]
fn first_match_wins_by_method_path_and_host() {
    let p = saas();
    assert_eq!(route_name(&p, "api", "/projects", "GET"), Some("list"));
    assert_eq!(route_name(&p, "api", "/projects", "POST"), Some("create"));
    assert_eq!(route_name(&p, "api", "/projects", "PUT"), None);
    assert_eq!(
        route_name(&p, "api", "/projects/7", "DELETE"),
        Some("delete")
    );
    assert_eq!(
        route_name(&p, "api", "/projects/7/x", "DELETE"),
        None,
        "{{id}} is one segment"
    );
    assert_eq!(
        route_name(&p, "api", "/api/v2/export", "GET"),
        Some("export")
    );
    assert_eq!(route_name(&p, "api", "/api/export", "GET"), None);
    assert_eq!(
        route_name(&p, "docs.example.com:8443", "/docs/a/b", "GET"),
        Some("docs")
    );
    assert_eq!(
        route_name(&p, "example.com", "/docs/a", "GET"),
        None,
        "*.example.com needs a subdomain"
    );
    assert_eq!(route_name(&p, "evil-example.com", "/docs/a", "GET"), None);
}

#[test]
fn normalisation_stops_paths_slipping_past_routes() {
    let p = saas();
    for raw in [
        "/public/../projects/7",
        "/public/%2e%2e/projects/7",
        "//projects//7",
        "/PROJECTS/7",
        "/projects/7/",
        "/projects/7?role=admin",
        "/projects/7#x",
        "/projects/./7",
    ] {
        assert_eq!(
            route_name(&p, "api", raw, "DELETE"),
            Some("delete"),
            "{raw}"
        );
    }
    assert_eq!(
        route_name(&p, "api", "/public/status/../../projects", "POST"),
        Some("create")
    );
    assert_eq!(
        route_name(&p, "api", "/public%2Fstatus", "GET"),
        None,
        "refused before matching"
    );
}

#[test]
fn case_sensitive_paths_when_configured() {
    let p = policy(
        json!({"caseSensitivePaths": true, "routes": [{"name": "a", "match": {"paths": ["/Admin"]}}]}),
    );
    assert_eq!(route_name(&p, "h", "/Admin", "GET"), Some("a"));
    assert_eq!(route_name(&p, "h", "/admin", "GET"), None);
}

#[test]
fn no_routes_means_one_catch_all_route_requiring_a_token() {
    let p = policy(json!({}));
    assert_eq!(p.routes.len(), 1);
    assert_eq!(p.routes[0].token, TokenUse::Required);
    assert_eq!(p.unmatched, Unmatched::Deny { status: 403 });
    let p = policy(json!({"routes": [], "defaultAction": "deny", "defaultDenyStatus": 404}));
    assert_eq!(p.unmatched, Unmatched::Deny { status: 404 });
}

#[test]
fn scopes_come_from_scope_and_scp() {
    let r = Requirements {
        scopes_all_of: vec!["a".into(), "b".into()],
        scopes_any_of: vec!["c".into(), "d".into()],
        ..Requirements::default()
    };
    let peer = Peer::default();
    assert_eq!(
        r.check(Some(&claims(json!({"scope": "a b d"}))), &peer),
        Ok(())
    );
    assert_eq!(
        r.check(
            Some(&claims(json!({"scope": "a", "scp": ["b", "c"]}))),
            &peer
        ),
        Ok(())
    );
    assert_eq!(
        r.check(Some(&claims(json!({"scp": "a b c"}))), &peer),
        Ok(())
    );
    let needed = Denial::InsufficientScope("a b c d".into());
    assert_eq!(
        r.check(Some(&claims(json!({"scope": "a b"}))), &peer),
        Err(needed.clone())
    );
    assert_eq!(
        r.check(Some(&claims(json!({"scope": "a c"}))), &peer),
        Err(needed.clone())
    );
    // Wrong types never grant anything.
    assert_eq!(
        r.check(Some(&claims(json!({"scope": 5, "scp": {"a": 1}}))), &peer),
        Err(needed)
    );
    assert_eq!(r.check(None, &peer), Err(Denial::TokenRequired));
}

#[test]
fn roles_from_a_claim_path_and_wrong_types_deny() {
    let p = policy(
        json!({"routes": [{"require": {"roles": {"claim": "realm_access.roles", "anyOf": ["admin"]}}}]}),
    );
    let r = &p.routes[0].require;
    let peer = Peer::default();
    assert_eq!(
        r.check(
            Some(&claims(
                json!({"realm_access": {"roles": ["viewer", "admin"]}})
            )),
            &peer
        ),
        Ok(())
    );
    assert_eq!(
        r.check(
            Some(&claims(json!({"realm_access": {"roles": "admin"}}))),
            &peer
        ),
        Ok(())
    );
    for bad in [
        json!({"realm_access": {"roles": ["viewer"]}}),
        json!({"realm_access": {"roles": {"admin": true}}}),
        json!({"realm_access": "admin"}),
        json!({"roles": ["admin"]}),
    ] {
        assert_eq!(
            r.check(Some(&claims(bad.clone())), &peer),
            Err(Denial::InsufficientPermissions),
            "{bad}"
        );
    }
}

#[test]
fn claim_conditions_match_scalars_and_array_members() {
    let p = policy(json!({"routes": [{"require": {"claims": [
        {"claim": "tenant", "values": ["acme", 42]}, {"claim": "mfa", "values": [true]}]}}]}));
    let r = &p.routes[0].require;
    let peer = Peer::default();
    assert_eq!(
        r.check(Some(&claims(json!({"tenant": "acme", "mfa": true}))), &peer),
        Ok(())
    );
    assert_eq!(
        r.check(Some(&claims(json!({"tenant": 42.0, "mfa": true}))), &peer),
        Ok(())
    );
    assert_eq!(
        r.check(
            Some(&claims(json!({"tenant": ["x", "acme"], "mfa": [true]}))),
            &peer
        ),
        Ok(())
    );
    assert_eq!(
        r.check(
            Some(&claims(json!({"tenant": "acme", "mfa": "true"}))),
            &peer
        ),
        Err(Denial::InsufficientPermissions)
    );
    assert_eq!(
        r.check(
            Some(&claims(json!({"tenant": {"id": "acme"}, "mfa": true}))),
            &peer
        ),
        Err(Denial::InsufficientPermissions)
    );
}

#[test]
fn peers_by_spiffe_pattern_namespace_and_mtls() {
    let p = policy(json!({"routes": [
        {"require": {"peers": {"principals": ["spiffe://cluster.local/ns/payments/sa/*", "cluster.local/ns/ops/sa/admin"]}}},
        {"require": {"peers": {"namespaces": ["web"]}}},
        {"require": {"peers": {"requireMtls": true}}},
        {"require": {"peers": {"principals": ["spiffe://cluster.local/ns/payments/**"]}}}
    ]}));
    let peer = |id: &str| {
        Peer::from(PeerInfo {
            mtls: true,
            uri_san: Some(id.into()),
            ..PeerInfo::default()
        })
    };
    let [by_principal, by_ns, mtls, by_prefix] = [0, 1, 2, 3].map(|i| &p.routes[i].require);
    assert_eq!(
        by_principal.check(None, &peer("spiffe://cluster.local/ns/payments/sa/api")),
        Ok(())
    );
    assert_eq!(
        by_principal.check(None, &peer("spiffe://cluster.local/ns/ops/sa/admin")),
        Ok(())
    );
    assert_eq!(
        by_principal.check(None, &peer("spiffe://cluster.local/ns/payments/sa/api/x")),
        Err(Denial::PeerNotAllowed)
    );
    assert_eq!(
        by_principal.check(None, &peer("spiffe://other.td/ns/payments/sa/api")),
        Err(Denial::PeerNotAllowed)
    );
    assert_eq!(
        by_principal.check(None, &Peer::default()),
        Err(Denial::MtlsRequired)
    );
    assert_eq!(
        by_ns.check(None, &peer("spiffe://cluster.local/ns/web/sa/frontend")),
        Ok(())
    );
    assert_eq!(
        by_ns.check(None, &peer("spiffe://cluster.local/ns/webx/sa/frontend")),
        Err(Denial::PeerNotAllowed)
    );
    assert_eq!(
        mtls.check(None, &Peer::default()),
        Err(Denial::MtlsRequired)
    );
    assert_eq!(
        mtls.check(
            None,
            &Peer::from(PeerInfo {
                mtls: true,
                ..PeerInfo::default()
            })
        ),
        Ok(())
    );
    assert_eq!(
        by_prefix.check(None, &peer("spiffe://cluster.local/ns/payments/sa/api")),
        Ok(())
    );
    assert_eq!(
        by_prefix.check(None, &peer("spiffe://cluster.local/ns/payments")),
        Err(Denial::PeerNotAllowed)
    );
}

#[test]
fn issuers_allowed_per_route() {
    let p = policy(json!({"routes": [{"require": {"issuers": [ISSUER]}}]}));
    let r = &p.routes[0].require;
    assert_eq!(
        r.check(Some(&claims(json!({"iss": ISSUER}))), &Peer::default()),
        Ok(())
    );
    assert!(
        config_err(json!({"routes": [{"require": {"issuers": ["https://nope"]}}]})).starts_with(
            "routes[0].require.issuers[0]: \"https://nope\" is not the issuer of any provider"
        )
    );
}

/// Istio's path templates (istio/api `security/v1beta1/authorization.proto`, `Operation.paths`):
/// `{*}` is one segment, a final `{**}` zero or more. meshguard's own `*` (not last) and final
/// `**` (one or more) keep their meaning.
#[test]
fn istio_path_templates_mean_what_they_mean_in_istio() {
    let p = policy(json!({"routes": [
        {"name": "one", "match": {"paths": ["/foo/{*}"]}},
        {"name": "any-below", "match": {"paths": ["/files/{**}"]}},
        {"name": "mixed", "match": {"paths": ["/a/{*}/bar/{**}"]}},
        {"name": "one-or-more", "match": {"paths": ["/blobs/**"]}},
        {"name": "middle", "match": {"paths": ["/api/*/export"]}}
    ]}));
    let cases: [(&str, Option<&str>); 16] = [
        ("/foo/bar", Some("one")),
        ("/foo/bar/baz", None),
        ("/foo", None),
        ("/files", Some("any-below")),
        ("/files/", Some("any-below")),
        ("/files/a", Some("any-below")),
        ("/files/a/b/c.txt", Some("any-below")),
        ("/filesystem", None),
        ("/a/buzz/bar", Some("mixed")),
        ("/a/buzz/bar/", Some("mixed")),
        ("/a/buzz/bar/baz/q", Some("mixed")),
        ("/a/bar", None),
        ("/blobs", None),
        ("/blobs/x/y", Some("one-or-more")),
        ("/api/v1/export", Some("middle")),
        ("/api/v1/v2/export", None),
    ];
    for (path, want) in cases {
        assert_eq!(route_name(&p, "api", path, "GET"), want, "{path}");
    }
}

/// Istio forms that would silently mean something else here are refused, each error saying what
/// to write instead.
#[test]
fn istio_path_forms_with_another_meaning_here_are_refused_with_a_pointer() {
    let cases = [
        ("/api/*", "a final `*` is ambiguous", "`/api/{*}`"),
        ("*", "presence match", "pathPrefixes"),
        ("*.png", "suffix match", "/images/{**}"),
        ("/api*", "string prefix", "pathPrefixes"),
        ("/{**}/foo/{*}", "{**} may only be the last segment", ""),
        ("/foo/{*}.txt", "a wildcard must be a whole segment", "{*}"),
        ("/foo/{id=**}", "a wildcard must be a whole segment", "{**}"),
        ("/foo/{}", "a wildcard must be a whole segment", ""),
    ];
    for (path, what, pointer) in cases {
        let err = config_err(json!({"routes": [{"match": {"paths": [path]}}]}));
        assert!(
            err.starts_with("routes[0].match.paths[0]: ") && err.contains(what),
            "{path}: {err}"
        );
        assert!(err.contains(pointer), "{path}: {err} lacks {pointer}");
    }
}

#[test]
fn route_configuration_errors_name_the_field() {
    let cases = [
        (
            json!({"routes": [{"match": {"paths": ["projects"]}}]}),
            "routes[0].match.paths[0]: must start with /",
        ),
        (
            json!({"routes": [{"match": {"paths": ["/a/**/b"]}}]}),
            "routes[0].match.paths[0]: ** may only be the last segment",
        ),
        (
            json!({"routes": [{"match": {"paths": ["/a/x*"]}}]}),
            "routes[0].match.paths[0]: a wildcard must be a whole segment",
        ),
        (
            json!({"routes": [{"match": {"hosts": ["a b"]}}]}),
            "routes[0].match.hosts[0]: \"a b\" is not a host name",
        ),
        (
            json!({"routes": [{"token": "maybe"}]}),
            "routes[0].token: unknown variant `maybe`",
        ),
        (
            json!({"routes": [{"token": "none", "require": {"scopes": {"allOf": ["a"]}}}]}),
            "routes[0].token: is none, but require",
        ),
        (
            json!({"routes": [{"require": {"roles": {"anyOf": []}}}]}),
            "routes[0].require.roles.anyOf: must list at least one role",
        ),
        (
            json!({"routes": [{"require": {"claims": [{"claim": "a", "values": [{}]}]}}]}),
            "routes[0].require.claims[0].values[0]: must be a string",
        ),
        (
            json!({"routes": [{"require": {"peers": {"principals": ["spiffe://td/ns/a*"]}}}]}),
            "routes[0].require.peers.principals[0]: a wildcard",
        ),
        (
            json!({"routes": [{"require": {"scopes": {"allOf": ["a b"]}}}]}),
            "routes[0].require.scopes.allOf[0]: a scope is printable",
        ),
        (
            json!({"routes": [{"mtach": {}}]}),
            "routes[0].mtach: unknown field `mtach`",
        ),
        (
            json!({"defaultDenyStatus": 401}),
            "defaultDenyStatus: must be 403 or 404",
        ),
        (json!({"mode": "audit"}), "mode: unknown variant `audit`"),
    ];
    for (cfg, want) in cases {
        let e = config_err(cfg);
        assert!(e.starts_with(want), "want {want:?}, got {e:?}");
    }
}

#[test]
fn prefixes_match_whole_segments_after_normalisation() {
    let p = policy(
        json!({"routes": [{"name": "api", "match": {"pathPrefixes": ["/api/"]}},
                                     {"name": "all", "match": {"pathPrefixes": ["/"]}}]}),
    );
    assert_eq!(route_name(&p, "h", "/api", "GET"), Some("api"));
    assert_eq!(route_name(&p, "h", "/api/v1/x", "GET"), Some("api"));
    assert_eq!(route_name(&p, "h", "/api-internal", "GET"), Some("all"));
    assert_eq!(
        route_name(&p, "h", "/api;jsessionid=1/x", "GET"),
        Some("api")
    );
    let hosts = policy(json!({"routes": [{"name": "x", "match": {"hosts": ["*.Example.com."]}}]}));
    assert_eq!(route_name(&hosts, "a.example.com", "/", "GET"), Some("x"));
}

#[test]
fn claim_names_with_dots_are_found_whole_first() {
    let c = claims(json!({"https://example.com/roles": ["admin"], "a": {"b": 1}}));
    let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        c.get_path(&path("https://example.com/roles")),
        Some(&json!(["admin"]))
    );
    assert_eq!(c.get_path(&path("a.b")), Some(&json!(1)));
}
