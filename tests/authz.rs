//! Authorization through real Envoy (2 workers): scopes with the RFC 6750 `scope=` challenge,
//! mesh peers by SPIFFE pattern, mTLS required (plaintext refused), RFC 8705 certificate-bound
//! tokens, and dry-run.
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

const PAYMENTS: &str = "spiffe://cluster.local/ns/payments/sa/api";
const WEB: &str = "spiffe://cluster.local/ns/web/sa/frontend";

struct Setup {
    pki: Pki,
    signer: Signer,
    _idp: JwksServer,
    _upstream: TestServer,
    envoy: Envoy,
}

fn plugin() -> Value {
    json!({
        "realm": "bank",
        "providers": [{
            "issuer": ISSUER, "audiences": [AUDIENCE],
            "jwksUri": format!("http://idp.test{JWKS_PATH}"), "jwksCluster": "idp"
        }],
        "routes": [
            {"name": "reports", "match": {"pathPrefixes": ["/reports"]},
             "require": {"scopes": {"allOf": ["reports:read"], "anyOf": ["tenant:acme", "tenant:all"]}}},
            {"name": "payments", "match": {"pathPrefixes": ["/payments"]}, "token": "none",
             "require": {"peers": {"principals": ["spiffe://cluster.local/ns/payments/sa/*"]}}},
            {"name": "internal", "match": {"pathPrefixes": ["/internal"]}, "token": "none",
             "require": {"peers": {"requireMtls": true}}},
            {"name": "partner", "match": {"pathPrefixes": ["/partner"]},
             "require": {"peers": {"requireMtls": true}}},
            {"name": "beta", "match": {"pathPrefixes": ["/beta"]}, "mode": "dryRun",
             "require": {"roles": {"anyOf": ["beta-tester"]}}},
            {"name": "beta-enforced", "match": {"pathPrefixes": ["/gamma"]},
             "require": {"roles": {"anyOf": ["beta-tester"]}}}
        ]
    })
}

fn setup() -> Setup {
    let signer = Signer::es256("ec-1");
    let idp = JwksServer::start(jwks(&[&signer]));
    let Stack {
        envoy,
        pki,
        idp,
        upstream,
    } = Stack::start("authz", idp, &plugin(), false, 2);
    let s = Setup {
        pki,
        signer,
        _idp: idp,
        _upstream: upstream,
        envoy,
    };
    let c = s.client(None);
    let auth = s.bearer(json!({"scope": "reports:read tenant:acme"}));
    eventually("JWKS loaded", Duration::from_secs(20), || {
        c.get("/reports", &[("authorization", &auth)]).status == 200
    });
    s
}

impl Setup {
    fn client(&self, cert: Option<&ClientCert>) -> Client {
        Client::new(self.envoy.port("mtls"), &self.pki, cert)
    }
    fn bearer(&self, extra: Value) -> String {
        format!("Bearer {}", self.signer.sign(&claims(extra)))
    }
}

#[test]
fn missing_scopes_get_403_with_the_scope_challenge() {
    let s = setup();
    let c = s.client(None);
    for scopes in [
        json!({"scope": "reports:read tenant:all"}),
        json!({"scp": ["reports:read", "tenant:acme"]}),
    ] {
        assert_eq!(
            c.get(
                "/reports/q1",
                &[("authorization", &s.bearer(scopes.clone()))]
            )
            .status,
            200,
            "{scopes}"
        );
    }
    for scopes in [
        json!({"scope": "reports:read"}),
        json!({"scope": "tenant:acme"}),
        json!({"scope": 7}),
        json!({}),
    ] {
        let r = c.get(
            "/reports/q1",
            &[("authorization", &s.bearer(scopes.clone()))],
        );
        assert_eq!(r.status, 403, "{scopes}");
        let challenge = r.header("www-authenticate").unwrap();
        let params = challenge_params(challenge);
        assert_eq!(params["realm"], "bank");
        assert_eq!(params["error"], "insufficient_scope");
        assert_eq!(
            params["scope"], "reports:read tenant:acme tenant:all",
            "{challenge}"
        );
        assert_eq!(r.json()["error"], "insufficient_scope");
        assert_eq!(r.json()["scope"], "reports:read tenant:acme tenant:all");
    }
    // Without a token: 401 first (authenticate before authorize).
    assert_eq!(c.get("/reports/q1", &[]).status, 401);
}

#[test]
fn peers_allowed_by_spiffe_pattern_and_mtls_required() {
    let s = setup();
    let payments = s.pki.workload(PAYMENTS);
    let web = s.pki.workload(WEB);
    let r = s.client(Some(&payments)).get("/payments/charge", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let denied = s.client(Some(&web)).get("/payments/charge", &[]);
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"], "access_denied");
    assert_eq!(denied.json()["error_description"], "peer not allowed");
    assert_eq!(
        denied.header("www-authenticate"),
        None,
        "no Bearer challenge: no token would help"
    );
    let no_cert = s.client(None).get("/payments/charge", &[]);
    assert_eq!(
        (no_cert.status, no_cert.json()["error_description"].as_str()),
        (403, Some("mutual TLS required"))
    );

    // Plaintext HTTP (no TLS at all) where mTLS is required.
    let plain = Client::plain(s.envoy.port("plain"));
    let r = plain.get("/internal/health", &[]);
    assert_eq!(
        (r.status, r.json()["error_description"].as_str()),
        (403, Some("mutual TLS required"))
    );
    assert_eq!(
        s.client(Some(&web)).get("/internal/health", &[]).status,
        200
    );
}

#[test]
fn certificate_bound_tokens_follow_their_certificate() {
    let s = setup();
    let partner = s.pki.workload("spiffe://cluster.local/ns/partners/sa/acme");
    let other = s.pki.workload(WEB);
    let bound = s.bearer(json!({"cnf": {"x5t#S256": partner.x5t_s256()}}));
    let r = s
        .client(Some(&partner))
        .get("/partner/orders", &[("authorization", &bound)]);
    assert_eq!(r.status, 200, "{}", r.body);
    // Replayed from another workload's certificate.
    let r = s
        .client(Some(&other))
        .get("/partner/orders", &[("authorization", &bound)]);
    assert_eq!(r.status, 401);
    let params = challenge_params(r.header("www-authenticate").unwrap());
    assert_eq!(params["error"], "invalid_token");
    assert_eq!(params["error_description"], "certificate binding mismatch");
    // Without any client certificate, on a route that does not require mTLS.
    let r = s
        .client(None)
        .get("/reports/x", &[("authorization", &bound)]);
    assert_eq!(
        (r.status, r.json()["error_description"].as_str()),
        (401, Some("certificate binding mismatch"))
    );
}

#[test]
fn dry_run_passes_what_enforce_denies_and_logs_the_would_be_decision() {
    let s = setup();
    let c = s.client(None);
    let viewer = s.bearer(json!({"roles": ["viewer"]}));
    let enforced = c.get("/gamma/feature", &[("authorization", &viewer)]);
    assert_eq!(enforced.status, 403, "enforce mode denies");
    let dry = c.get("/beta/feature", &[("authorization", &viewer)]);
    assert_eq!(dry.status, 200, "dry-run lets it through: {}", dry.body);
    assert_eq!(
        dry.upstream_header("x-meshguard-principal"),
        Some(format!("{ISSUER}/alice"))
    );
    let tester = s.bearer(json!({"roles": ["beta-tester"]}));
    assert_eq!(
        c.get("/beta/feature", &[("authorization", &tester)]).status,
        200
    );

    eventually("dry-run log line", Duration::from_secs(5), || {
        s.envoy.log_text().contains("dry_run_would_deny")
    });
    let log = s.envoy.log_text();
    let lines = json_log_lines(&log, "dry_run_would_deny");
    assert_eq!(
        lines.len(),
        1,
        "one would-deny (the beta-tester request passes for real): {lines:?}"
    );
    assert_eq!(lines[0]["status"], 403);
    assert_eq!(lines[0]["reason"], "insufficient_permissions");
    assert_eq!(lines[0]["route"], "beta");
    assert!(!log.contains(&viewer[7..]), "no token in the log");
    let stats = s.envoy.stats();
    assert!(
        stats
            .lines()
            .any(|l| l.ends_with("meshguard.meshguard.dry_run_would_deny: 1")),
        "metric:\n{}",
        stats
            .lines()
            .filter(|l| l.contains("meshguard"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
