//! The seed scenario shipped as `envoy/examples/saas-api/envoy.yaml`, through real Envoy with
//! 2 workers: the full role matrix, the 401/403 descriptions, and path tricks that must not slip
//! past a route.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SAAS_ISSUER: &str = "https://idp.saas.local";

struct Saas {
    idp: JwksServer,
    signer: Signer,
    _upstream: TestServer,
    envoy: Envoy,
    client: Client,
}

fn saas_claims(extra: Value) -> Value {
    let mut c = claims(json!({"iss": SAAS_ISSUER, "aud": "saas-api"}));
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn start() -> Saas {
    let signer = Signer::rsa("saas-1");
    let idp = JwksServer::start(jwks(&[&signer]));
    let upstream = echo_upstream();
    let (envoy, pki, _) = start_shipped(
        "envoy/examples/saas-api/envoy.yaml",
        "saas",
        upstream.port(),
        idp.server.port(),
    );
    let client = Client::new(envoy.port("mtls"), &pki, None);
    let s = Saas {
        idp,
        signer,
        _upstream: upstream,
        envoy,
        client,
    };
    let probe = format!(
        "Bearer {}",
        s.signer.sign(&saas_claims(json!({"role": "viewer"})))
    );
    eventually("JWKS loaded", Duration::from_secs(20), || {
        s.client
            .get("/projects", &[("authorization", &probe)])
            .status
            == 200
    });
    s
}

impl Saas {
    fn call(&self, method: &str, path: &str, role: Option<&str>) -> Response {
        let auth = role.map(|r| {
            format!(
                "Bearer {}",
                self.signer
                    .sign(&saas_claims(json!({"sub": format!("{r}-user"), "role": r})))
            )
        });
        let headers: Vec<(&str, &[u8])> = auth
            .iter()
            .map(|a| ("authorization", a.as_bytes()))
            .collect();
        self.client.request(method, path, &headers)
    }
}

#[test]
fn role_matrix() {
    let s = start();
    let routes = [
        ("GET", "/public/status"),
        ("GET", "/projects"),
        ("POST", "/projects"),
        ("DELETE", "/projects/42"),
        ("GET", "/analytics"),
    ];
    // Rows: no token, viewer, editor, admin. Columns: the routes above.
    let expected: [(Option<&str>, [u16; 5]); 4] = [
        (None, [200, 401, 401, 401, 401]),
        (Some("viewer"), [200, 200, 403, 403, 403]),
        (Some("editor"), [200, 200, 200, 403, 403]),
        (Some("admin"), [200, 200, 200, 200, 200]),
    ];
    let mut failures = Vec::new();
    for (role, statuses) in expected {
        for ((method, path), want) in routes.iter().zip(statuses) {
            let r = s.call(method, path, role);
            if r.status != want {
                failures.push(format!(
                    "{role:?} {method} {path}: want {want}, got {} {}",
                    r.status, r.body
                ));
            }
            match r.status {
                401 => {
                    assert_eq!(r.json()["error_description"], "authentication required");
                    assert_eq!(
                        r.header("www-authenticate"),
                        Some("Bearer realm=\"saas-api\"")
                    );
                }
                403 => {
                    assert_eq!(r.json()["error_description"], "insufficient permissions");
                    assert_eq!(
                        r.header("www-authenticate"),
                        Some("Bearer realm=\"saas-api\", error=\"insufficient_scope\", error_description=\"insufficient permissions\"")
                    );
                }
                200 => {
                    assert_eq!(r.json()["method"], *method);
                    if let Some(role) = role.filter(|_| *path != "/public/status") {
                        assert_eq!(r.upstream_header("x-role").as_deref(), Some(role));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "role matrix mismatches:\n{}",
        failures.join("\n")
    );

    // Expired token: 401 "token expired". Unmatched route: 403, no challenge.
    let n = now();
    let expired = format!(
        "Bearer {}",
        s.signer.sign(&saas_claims(
            json!({"role": "admin", "iat": n - 7200, "exp": n - 3600})
        ))
    );
    let r = s.client.get("/projects", &[("authorization", &expired)]);
    assert_eq!(
        (r.status, r.json()["error_description"].as_str()),
        (401, Some("token expired"))
    );
    let r = s.call("GET", "/admin", Some("admin"));
    assert_eq!(
        (r.status, r.json()["error_description"].as_str()),
        (403, Some("no matching route"))
    );
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(s.idp.fetches(), 1);
}

#[test]
fn path_tricks_do_not_slip_past_routes() {
    let s = start();
    // A viewer tries to reach admin-only routes, or to dress them up as the public route.
    let cases: [(&str, &str, u16); 14] = [
        ("DELETE", "/projects;jsessionid=1/42", 403),
        ("GET", "/analytics;x", 403),
        ("GET", "/public/../analytics", 403),
        ("GET", "/public/%2e%2e/analytics", 403),
        ("GET", "/public/%2E%2E/analytics", 403),
        ("GET", "//analytics", 403),
        ("GET", "/ANALYTICS", 403),
        ("GET", "/Analytics/", 403),
        ("GET", "/analytics?role=admin", 403),
        ("GET", "/analytics/", 403),
        ("DELETE", "/projects/42/", 403),
        ("DELETE", "/PROJECTS//42", 403),
        ("GET", "/public%2Fstatus", 400),
        ("GET", "/public/status/../../analytics", 403),
    ];
    for (method, path, want) in cases {
        let r = s.call(method, path, Some("viewer"));
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        if want == 403 {
            assert_eq!(
                r.json()["error_description"],
                "insufficient permissions",
                "{path}"
            );
        }
    }
    // And the same normalised forms still reach the routes they mean.
    assert_eq!(s.call("GET", "/Public/Status/", None).status, 200);
    assert_eq!(
        s.call("GET", "/projects?page=2", Some("viewer")).status,
        200
    );
    assert_eq!(
        s.call("DELETE", "//projects/42/", Some("admin")).status,
        200
    );
    // A fragment never reaches the filter as part of the path: Envoy refuses it first.
    let r = s.call("GET", "/analytics#x", Some("viewer"));
    assert!(r.status == 400 || r.status == 403, "fragment: {}", r.status);
    assert!(!s.envoy.log_text().contains("panic"));
}
