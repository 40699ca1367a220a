//! `make demo`: the seed bench-test plan through a local two-sidecar mesh.
//!
//! It lays out a dev PKI (mesh CA; SPIFFE certificates for the saas-api workload and two client
//! workloads, frontend and reports; an expired certificate; one from a foreign CA) and a dev
//! issuer (a signing key, its JWKS served to Envoy, tokens for viewer/editor/admin, free/paid
//! plans and one certificate-bound token), then starts the shipped sidecar pair
//! (`envoy/examples/sidecar-pair/`) as it is, 2 workers each: the client-side Envoy originates
//! mTLS with the workload certificates to the server-side Envoy running meshguard in front of an
//! upstream that echoes what it received. Each step of the plan is a row of the printed table
//! (step, expected, got, PASS/FAIL); any FAIL fails the run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SAAS_ISSUER: &str = "https://idp.saas.local";
/// `failedAuth` budget of `server-sidecar.yaml` (`forged`: 20 per minute per source).
const FAILED_AUTH_BUDGET: usize = 20;

/// The dev issuer: one RSA key (its JWKS is what the server sidecar fetches).
struct Issuer {
    key: Signer,
}

impl Issuer {
    fn token(&self, sub: &str, extra: Value) -> String {
        let mut c = claims(json!({"iss": SAAS_ISSUER, "aud": "saas-api", "sub": sub}));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        format!("Bearer {}", self.key.sign(&c))
    }
}

/// `"5×200, 15×429"`: how many of each status, in order of first appearance.
fn tally(statuses: &[u16]) -> String {
    let mut seen: Vec<(u16, usize)> = Vec::new();
    for s in statuses {
        match seen.iter_mut().find(|(k, _)| k == s) {
            Some((_, n)) => *n += 1,
            None => seen.push((*s, 1)),
        }
    }
    seen.iter()
        .map(|(s, n)| format!("{n}×{s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// A TLS client that talks to the server sidecar directly, presenting `cert`: what a workload
/// with a bad certificate (or none) would get.
fn direct_tls(port: u16, pki: &Pki, cert: Option<&ClientCert>) -> String {
    match Client::new(port, pki, cert).try_request("GET", "/public/status", &[]) {
        Ok(r) => format!("HTTP {}", r.status),
        Err(e) => format!("TLS refused: {e}"),
    }
}

#[test]
fn demo() {
    let started = Instant::now();
    // Kept after the run, for `docker compose` (envoy/examples/sidecar-pair/README.md).
    let dir = repo().join("target/meshguard-demo");
    let _ = fs::remove_dir_all(&dir);

    // Dev PKI: the mesh CA and the workload certificates the sidecar pair reads (pki/), plus
    // the frontend's certificate here (for its bound token), an expired one and a foreign one.
    let pki = example_layout(&dir);
    let frontend = pki.workload(FRONTEND);
    frontend.write(&dir.join("pki"), "frontend");
    let expired = pki.expired_workload(FRONTEND);
    let foreign =
        Pki::with_ca_name(&temp_dir("demo-foreign-ca"), "some other CA").workload(FRONTEND);

    // Dev issuer and the workload behind the server sidecar.
    let issuer = Issuer {
        key: Signer::rsa("saas-idp-2026"),
    };
    let jwks_doc = jwks(&[&issuer.key]);
    fs::create_dir_all(dir.join("idp/.well-known")).unwrap();
    fs::write(
        dir.join("idp").join(JWKS_PATH.trim_start_matches('/')),
        &jwks_doc,
    )
    .unwrap();
    let idp = JwksServer::start(jwks_doc);
    let upstream = echo_upstream();

    // The sidecar pair, as shipped.
    let server = start_shipped_in(
        "envoy/examples/sidecar-pair/server-sidecar.yaml",
        &dir,
        &[
            (15006, 0),
            (15000, 0),
            (8080, u64::from(upstream.port())),
            (8081, u64::from(idp.server.port())),
        ],
    );
    let inbound = server.port("inbound");
    let client = start_shipped_in(
        "envoy/examples/sidecar-pair/client-sidecar.yaml",
        &dir,
        &[
            (15001, 0),
            (15002, 0),
            (15100, 0),
            (15006, u64::from(inbound)),
        ],
    );
    let as_frontend = Client::plain(client.port("frontend"));
    let as_reports = Client::plain(client.port("reports"));

    let probe = issuer.token("probe", json!({"role": "viewer", "plan": "paid"}));
    eventually("JWKS fetched", Duration::from_secs(20), || {
        as_frontend
            .get("/projects", &[("authorization", &probe)])
            .status
            == 200
    });

    println!(
        "\nmeshguard demo: sidecar pair (envoy/examples/sidecar-pair/, 2 workers each)\n  \
         frontend app -> http://127.0.0.1:{} (client sidecar, cert {FRONTEND})\n  \
         reports app  -> http://127.0.0.1:{} (client sidecar, cert {REPORTS})\n  \
         server sidecar with meshguard: https://127.0.0.1:{inbound} (mTLS required) -> echo upstream",
        as_frontend.port, as_reports.port
    );
    let mut t = Table::default();

    // mTLS: only mesh workloads with valid certificates get an HTTP answer at all.
    let refused = "TLS handshake failure";
    for (step, cert, expected) in [
        ("client cert from a foreign CA", Some(&foreign), refused),
        ("expired client cert", Some(&expired), refused),
        ("no client cert", None, refused),
        (
            "mesh cert (frontend), GET /public/status",
            Some(&frontend),
            "HTTP 200",
        ),
    ] {
        let got = direct_tls(inbound, &pki, cert);
        let pass = if expected == refused {
            got.starts_with("TLS refused")
        } else {
            got == expected
        };
        t.check(step, expected, got, pass);
    }

    // Authentication and roles, through the frontend's sidecar.
    let call = |c: &Client, method: &str, path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &[u8])> = auth
            .iter()
            .map(|a| ("authorization", a.as_bytes()))
            .collect();
        c.request(method, path, &headers)
    };
    let r = call(&as_frontend, "GET", "/projects", None);
    t.expect("no token", "401 authentication required", &r);
    let n = now();
    let stale = issuer.token(
        "bob",
        json!({"role": "viewer", "iat": n - 7200, "exp": n - 3600}),
    );
    let r = call(&as_frontend, "GET", "/projects", Some(&stale));
    t.expect("expired token", "401 token expired", &r);
    let viewer = issuer.token("vera", json!({"role": "viewer"}));
    let r = call(&as_frontend, "POST", "/projects", Some(&viewer));
    t.expect("viewer POST /projects", "403 insufficient permissions", &r);
    let editor = issuer.token("eddie", json!({"role": "editor"}));
    let r = call(&as_frontend, "POST", "/projects", Some(&editor));
    t.expect("editor POST /projects", "200", &r);
    let admin = issuer.token("ada", json!({"role": "admin", "plan": "free"}));
    let r = call(&as_frontend, "DELETE", "/projects/42", Some(&admin));
    t.expect("admin DELETE /projects/42", "200", &r);
    t.upstream("  upstream saw x-user", &r, "x-user", Some("ada"));
    t.upstream(
        "  upstream saw x-peer-spiffe",
        &r,
        "x-peer-spiffe",
        Some(FRONTEND),
    );
    t.upstream("  upstream saw authorization", &r, "authorization", None);

    // Login: 5 per 10 s per calling workload.
    let logins: Vec<Response> = (0..20)
        .map(|_| call(&as_frontend, "POST", "/login", None))
        .collect();
    let statuses: Vec<u16> = logins.iter().map(|r| r.status).collect();
    t.check(
        "POST /login ×20, fast",
        "5×200, 15×429",
        tally(&statuses),
        count(&statuses, 200) == 5 && count(&statuses, 429) == 15,
    );
    let limited = logins.iter().find(|r| r.status == 429);
    let headers = limited.map(|r| {
        ["retry-after", "ratelimit"]
            .iter()
            .map(|h| format!("{h}: {}", r.header(h).unwrap_or("(missing)")))
            .collect::<Vec<_>>()
            .join(", ")
    });
    t.check(
        "  429 headers",
        "Retry-After, RateLimit(-Policy)",
        headers.clone().unwrap_or_default(),
        limited.is_some_and(|r| {
            r.header("retry-after").is_some()
                && r.header("ratelimit").is_some()
                && r.header("ratelimit-policy").is_some()
        }),
    );
    let r = call(&as_reports, "POST", "/login", None);
    t.expect("  meanwhile reports POST /login (own bucket)", "200", &r);
    let retry_after: u64 = limited
        .and_then(|r| r.header("retry-after"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    std::thread::sleep(Duration::from_secs(retry_after));
    let r = call(&as_frontend, "POST", "/login", None);
    t.expect(
        &format!("  after waiting Retry-After ({retry_after} s)"),
        "200",
        &r,
    );

    // Plans: free 10/min, paid 100/min, admins exempt.
    let burst = |token: &str| -> Vec<u16> {
        (0..30)
            .map(|_| call(&as_frontend, "GET", "/projects", Some(token)).status)
            .collect()
    };
    let free = burst(&issuer.token("fred", json!({"role": "viewer", "plan": "free"})));
    t.check(
        "free plan GET /projects ×30",
        "10×200, 20×429",
        tally(&free),
        count(&free, 200) == 10 && count(&free, 429) == 20,
    );
    let paid = burst(&issuer.token("paula", json!({"role": "viewer", "plan": "paid"})));
    t.check(
        "paid plan GET /projects ×30",
        "30×200",
        tally(&paid),
        count(&paid, 200) == 30,
    );
    let exempt = burst(&admin);
    t.check(
        "admin (free plan) GET /projects ×30",
        "30×200 (exempt)",
        tally(&exempt),
        count(&exempt, 200) == 30,
    );

    // RFC 8705: a token bound to the frontend's certificate.
    let bound = issuer.token(
        "frontend-svc",
        json!({"plan": "paid", "cnf": {"x5t#S256": frontend.x5t_s256()}}),
    );
    let r = call(&as_frontend, "GET", "/projects", Some(&bound));
    t.expect("cert-bound token from its workload", "200", &r);
    let r = call(&as_reports, "GET", "/projects", Some(&bound));
    t.expect(
        "  replayed from the reports workload",
        "401 certificate binding mismatch",
        &r,
    );

    // RFC 9449: a token bound to a client key (DPoP), presented with a proof signed by that
    // key for this request (`htu` under the public origin the shipped config names).
    let app_key = ProofKey::es256();
    let dpop_token = issuer.token(
        "mobile-app",
        json!({"plan": "paid", "cnf": {"jkt": app_key.jkt()}}),
    );
    let dpop_token = dpop_token.trim_start_matches("Bearer ");
    let htu = "https://api.saas.local/projects";
    let with_proof = |scheme: &str, proof: &str| {
        let auth = format!("{scheme} {dpop_token}");
        as_frontend.request(
            "GET",
            "/projects",
            &[
                ("authorization", auth.as_bytes()),
                ("dpop", proof.as_bytes()),
            ],
        )
    };
    let proof = app_key.proof("GET", htu, Some(dpop_token), json!({}));
    t.expect(
        "DPoP-bound token with its proof",
        "200",
        &with_proof("DPoP", &proof),
    );
    t.expect(
        "  the same proof replayed",
        "401 DPoP proof replayed",
        &with_proof("DPoP", &proof),
    );
    let thief = ProofKey::es256();
    let stolen = thief.proof("GET", htu, Some(dpop_token), json!({}));
    t.expect(
        "  stolen token, thief's own proof",
        "401 DPoP key mismatch",
        &with_proof("DPoP", &stolen),
    );
    let r = as_frontend.get(
        "/projects",
        &[("authorization", &format!("Bearer {dpop_token}"))],
    );
    t.expect(
        "  stolen token sent as Bearer",
        "401 DPoP-bound token sent as bearer",
        &r,
    );

    // A flood of forged tokens (the issuer's header and signature on other claims): the
    // failed-auth budget answers 429 before any signature work once it is spent.
    let genuine = issuer.token("mallory", json!({}));
    let (signed, signature) = genuine
        .trim_start_matches("Bearer ")
        .rsplit_once('.')
        .unwrap();
    let header = signed.split('.').next().unwrap().to_string();
    let signature = signature.to_string();
    let checks_before = server.meshguard_stat("denied.invalid_token.bad_signature");
    let refused_before = server.meshguard_stat("denied.rate_limited.failed_auth");
    let flood: Vec<u16> = (0..200)
        .map(|i| {
            let c = claims(json!({"iss": SAAS_ISSUER, "aud": "saas-api",
                                   "sub": format!("forged-{i}"), "role": "admin"}));
            let payload = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                c.to_string(),
            );
            let forged = format!("Bearer {header}.{payload}.{signature}");
            call(&as_frontend, "GET", "/projects", Some(&forged)).status
        })
        .collect();
    let checked = server.meshguard_stat("denied.invalid_token.bad_signature") - checks_before;
    let refused = server.meshguard_stat("denied.rate_limited.failed_auth") - refused_before;
    t.check(
        "forged tokens ×200",
        &format!("≤{FAILED_AUTH_BUDGET}×401 (budget), then 429"),
        tally(&flood),
        count(&flood, 401) <= FAILED_AUTH_BUDGET
            && count(&flood, 429) == 200 - count(&flood, 401)
            && flood.iter().skip_while(|s| **s == 401).all(|s| *s == 429),
    );
    t.check(
        "  signatures checked / refused unchecked",
        &format!("{} / {}", count(&flood, 401), count(&flood, 429)),
        format!("{checked} / {refused}"),
        checked == count(&flood, 401) as u64 && refused == count(&flood, 429) as u64,
    );

    let fetches = idp.fetches();
    t.check(
        "JWKS fetches (one proxy, 2 workers)",
        "1",
        fetches.to_string(),
        fetches == 1,
    );

    t.print();
    println!(
        "Metrics: http://{}/stats/prometheus on the server sidecar (stops with the demo; \
         `make run` keeps an Envoy running). Some of them now:",
        server.admin
    );
    let (_, prom) = http_get(server.admin, "/stats/prometheus").unwrap();
    for name in [
        "allowed",
        "denied_missing_token",
        "denied_invalid_token_expired",
        "denied_invalid_token_bad_signature",
        "denied_invalid_token_binding",
        "denied_insufficient_permissions",
        "denied_rate_limited",
        "denied_rate_limited_failed_auth",
        "jwks_saas_idp_fetch_ok",
        "jwks_saas_idp_keys_loaded",
    ] {
        let metric = format!("meshguard_meshguard_{name}");
        if let Some(line) = prom.lines().find(|l| {
            l.split([' ', '{'])
                .next()
                .is_some_and(|m| m == metric || m == format!("envoy_{metric}"))
        }) {
            println!("  {line}");
        }
    }
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens).unwrap();
    for (name, extra) in [
        ("viewer", json!({"role": "viewer", "plan": "free"})),
        ("editor", json!({"role": "editor", "plan": "paid"})),
        ("admin", json!({"role": "admin"})),
    ] {
        let mut extra = extra;
        extra["exp"] = json!(now() + 3600);
        let token = issuer.token(&format!("{name}-1"), extra);
        fs::write(
            tokens.join(format!("{name}.jwt")),
            token.trim_start_matches("Bearer "),
        )
        .unwrap();
    }
    println!(
        "\nThe dev PKI, the issuer's JWKS and 1-hour tokens (viewer, editor, admin) are in {}\n\
         (for docker compose: envoy/examples/sidecar-pair/README.md).",
        dir.display()
    );
    println!(
        "\ndemo finished in {:.1} s (after the build)",
        started.elapsed().as_secs_f64()
    );
    t.assert_all_pass();
}
