//! The shipped access-log format, read back from a real Envoy: the server sidecar of
//! `envoy/examples/sidecar-pair/` (as shipped, 2 workers, mTLS required) writes one JSON line per
//! request to stdout (the harness keeps it in `stdout.log`). For each decision — allowed,
//! expired, forged, wrong role, over the limit — the line carries Envoy's response code details
//! and meshguard's filter state (`wasm.meshguard.*`); a refused TLS handshake gets a line from the
//! listener with Envoy's reason. Expected values are written here, not taken from the filter.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use serde_json::{json, Map, Value};

const SAAS_ISSUER: &str = "https://idp.saas.local";
/// `login` policy of `server-sidecar.yaml`: 5 per 10 s per calling workload.
const LOGIN_BUDGET: usize = 5;

fn token(signer: &Signer, extra: Value) -> String {
    let mut c = claims(
        json!({"iss": SAAS_ISSUER, "aud": "saas-api", "sub": "alice",
        "client_id": "web-app", "role": "viewer", "plan": "free"}),
    );
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    format!("Bearer {}", signer.sign(&c))
}

/// The access-log lines of `envoy` so far, by `request_id` (and the listener's lines, which have
/// none), once `want` lines are there (Envoy flushes its log files on a timer).
fn access_log(envoy: &Envoy, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut lines = Vec::new();
    eventually("access log flushed", Duration::from_secs(30), || {
        let text = fs::read_to_string(envoy.dir.join("stdout.log")).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        want(&lines)
    });
    lines
}

fn line_for<'a>(lines: &'a [Value], request_id: &str) -> &'a Map<String, Value> {
    lines
        .iter()
        .find(|l| l["request_id"] == request_id)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no access-log line for {request_id} in {lines:#?}"))
}

/// The line's fields named here, as text (absent ones left out).
fn fields(line: &Map<String, Value>, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| {
            line.get(*n).map(|v| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (n.to_string(), text)
            })
        })
        .collect()
}

const CHECKED: [&str; 10] = [
    "response_code",
    "response_code_details",
    "meshguard_decision",
    "meshguard_reason",
    "meshguard_route",
    "meshguard_principal",
    "meshguard_client_id",
    "meshguard_spiffe_id",
    "meshguard_rate_limit_policy",
    "meshguard_rate_limit_remaining",
];

fn expected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort_by_key(|(k, _)| CHECKED.iter().position(|c| c == k));
    v
}

#[test]
fn the_shipped_access_log_shows_each_decision() {
    let signer = Signer::rsa("saas-idp-1");
    let idp = JwksServer::start(jwks(&[&signer]));
    let upstream = echo_upstream();
    let (dir, pki) = example_dir("access-log");
    let envoy = start_server_sidecar(&dir, upstream.port(), idp.server.port());
    let inbound = envoy.port("inbound");
    let frontend = Client::new(inbound, &pki, Some(&pki.workload(FRONTEND)));

    let probe = token(&signer, json!({"sub": "probe", "client_id": "probe"}));
    eventually("JWKS fetched", Duration::from_secs(20), || {
        frontend
            .get("/projects", &[("authorization", &probe)])
            .status
            == 200
    });

    let call = |id: &str, method: &str, path: &str, auth: Option<&str>| {
        let mut h: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes())];
        if let Some(a) = auth {
            h.push(("authorization", a.as_bytes()));
        }
        frontend.request(method, path, &h)
    };
    let valid = token(&signer, json!({}));
    let expired = token(&signer, json!({"iat": now() - 7200, "exp": now() - 3600}));
    // Forged: another caller's claims under the valid token's header and signature.
    let forged = {
        let other = token(&signer, json!({"sub": "mallory"}));
        let parts: Vec<&str> = valid.split('.').collect();
        let payload = other.split('.').nth(1).unwrap();
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    assert_eq!(call("valid", "GET", "/projects", Some(&valid)).status, 200);
    assert_eq!(
        call("expired", "GET", "/projects", Some(&expired)).status,
        401
    );
    assert_eq!(
        call("forged", "GET", "/projects", Some(&forged)).status,
        401
    );
    assert_eq!(
        call("wrong-role", "POST", "/projects", Some(&valid)).status,
        403
    );
    for i in 0..LOGIN_BUDGET {
        assert_eq!(
            call(&format!("login-{i}"), "POST", "/login", None).status,
            200
        );
    }
    let over = call("over-limit", "POST", "/login", None);
    assert_eq!(over.status, 429);
    assert_eq!(over.header("x-envoy-ratelimited"), Some("true"));
    // A workload without a client certificate never gets an HTTP answer.
    let refused = Client::new(inbound, &pki, None).try_request("GET", "/public/status", &[]);
    assert!(refused.is_err(), "{refused:?}");

    let lines = access_log(&envoy, |lines| {
        lines.iter().any(|l| l["request_id"] == "over-limit")
            && lines
                .iter()
                .any(|l| l.get("downstream_transport_failure_reason").is_some())
    });
    let spiffe = ("meshguard_spiffe_id", FRONTEND);
    let alice = ("meshguard_principal", "https://idp.saas.local/alice");
    let web_app = ("meshguard_client_id", "web-app");
    let cases: [(&str, Vec<(&str, &str)>); 7] = [
        (
            "valid",
            vec![
                ("response_code", "200"),
                ("response_code_details", "via_upstream"),
                ("meshguard_decision", "allow"),
                ("meshguard_route", "list-projects"),
                alice,
                web_app,
                // Read for `outputPeerToHeaders`, so known at no extra cost.
                spiffe,
                ("meshguard_rate_limit_policy", "free"),
                ("meshguard_rate_limit_remaining", "9"),
            ],
        ),
        (
            "expired",
            vec![
                ("response_code", "401"),
                ("response_code_details", "meshguard_invalid_token_expired"),
                ("meshguard_decision", "deny"),
                ("meshguard_reason", "invalid_token.expired"),
                ("meshguard_route", "list-projects"),
                spiffe,
            ],
        ),
        (
            "forged",
            vec![
                ("response_code", "401"),
                (
                    "response_code_details",
                    "meshguard_invalid_token_bad_signature",
                ),
                ("meshguard_decision", "deny"),
                ("meshguard_reason", "invalid_token.bad_signature"),
                ("meshguard_route", "list-projects"),
                spiffe,
            ],
        ),
        (
            "wrong-role",
            vec![
                ("response_code", "403"),
                (
                    "response_code_details",
                    "meshguard_insufficient_permissions",
                ),
                ("meshguard_decision", "deny"),
                ("meshguard_reason", "insufficient_permissions"),
                ("meshguard_route", "create-project"),
                alice,
                web_app,
                spiffe,
            ],
        ),
        (
            "login-0",
            vec![
                ("response_code", "200"),
                ("response_code_details", "via_upstream"),
                ("meshguard_decision", "allow"),
                ("meshguard_route", "login"),
                // The login bucket is per calling workload: its SPIFFE ID was read for it.
                spiffe,
                ("meshguard_rate_limit_policy", "login"),
                ("meshguard_rate_limit_remaining", "4"),
            ],
        ),
        (
            "login-4",
            vec![
                ("response_code", "200"),
                ("response_code_details", "via_upstream"),
                ("meshguard_decision", "allow"),
                ("meshguard_route", "login"),
                spiffe,
                ("meshguard_rate_limit_policy", "login"),
                ("meshguard_rate_limit_remaining", "0"),
            ],
        ),
        (
            "over-limit",
            vec![
                ("response_code", "429"),
                ("response_code_details", "meshguard_rate_limited"),
                ("meshguard_decision", "deny"),
                ("meshguard_reason", "rate_limited"),
                ("meshguard_route", "login"),
                spiffe,
                ("meshguard_rate_limit_policy", "login"),
                ("meshguard_rate_limit_remaining", "0"),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (id, want) in &cases {
        let line = line_for(&lines, id);
        let got = fields(line, &CHECKED);
        if got != expected(want) {
            failures.push(format!(
                "{id}:\n  want {:?}\n  got  {got:?}",
                expected(want)
            ));
        }
        assert_eq!(line["downstream_peer_uri_san"], FRONTEND, "{id}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let handshake = lines
        .iter()
        .find_map(|l| l["downstream_transport_failure_reason"].as_str())
        .unwrap();
    assert!(
        handshake.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        "{handshake}"
    );
    // Token material never reaches the access log.
    let text = fs::read_to_string(envoy.dir.join("stdout.log")).unwrap();
    for t in [&valid, &expired, &forged] {
        let jws = t.trim_start_matches("Bearer ");
        let signature = jws.rsplit('.').next().unwrap();
        assert!(
            !text.contains(signature),
            "a token signature is in the access log"
        );
    }
    drop(idp);
}

/// Later filters see the facts: RBAC matches `wasm.meshguard.route` as a string (it lets
/// through only what meshguard routed to `open`), and Lua reads it on the response.
#[test]
fn rbac_and_lua_after_meshguard_read_its_filter_state() {
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: x
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:
          - name: meshguard
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: meshguard
                root_id: meshguard
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{"filterState": "all", "providers": [{{"name": "p", "issuer": "https://idp.test", "jwksUri": "http://idp.test/jwks", "jwksCluster": "idp"}}], "routes": [{{"name": "open", "token": "none", "match": {{"pathPrefixes": ["/open"]}}}}, {{"name": "elsewhere", "token": "none", "match": {{"pathPrefixes": ["/elsewhere"]}}}}]}}'
                vm_config:
                  vm_id: meshguard
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  routed-open:
                    permissions: [{{any: true}}]
                    principals:
                    - filter_state: {{key: wasm.meshguard.route, string_match: {{exact: open}}}}
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_response(handle)
                    local route = handle:streamInfo():filterState():get("wasm.meshguard.route")
                    handle:headers():add("x-meshguard-route-seen", tostring(route))
                  end
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: idp
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: idp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#,
        wasm = wasm_path().display()
    );
    let envoy = Envoy::start(&yaml, 2);
    let client = Client::plain(envoy.port("plain"));
    let open = client.get("/open/x", &[]);
    assert_eq!(open.status, 200, "{}", open.body);
    assert_eq!(open.header("x-meshguard-route-seen"), Some("open"));
    let elsewhere = client.get("/elsewhere", &[]);
    assert_eq!(
        (elsewhere.status, elsewhere.body.as_str()),
        (403, "RBAC: access denied")
    );
    assert_eq!(
        elsewhere.header("x-meshguard-route-seen"),
        Some("elsewhere")
    );
}
