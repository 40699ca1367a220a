//! `make run`: the shipped standalone example (`envoy/examples/standalone/envoy.yaml`) running in
//! the foreground for manual `curl`: a real Envoy (2 workers) with meshguard, a dev PKI, a dev
//! issuer serving its JWKS, and an upstream that echoes what it received. It prints ready-made
//! commands (DPoP ones with a key made by `tools/dpop-proof.py`) and runs until Ctrl-C (or
//! SIGTERM), which stops Envoy and removes its directories (`/tmp/meshguard-run-*`, Envoy's
//! `/tmp/meshguard-envoy-*`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

const ISSUER: &str = "https://idp.meshguard.local";

/// Removes the run's directory when dropped: at the end, and when setup fails (a panic unwinds).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn main() {
    // Ctrl-C reaches Envoy too (one process group); this process stops by itself, cleaning up.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).unwrap();

    let key = Signer::rsa("dev-rsa");
    let idp = JwksServer::start(jwks(&[&key]));
    let upstream = echo_upstream();
    let (mut envoy, pki, shipped) = start_shipped(
        "envoy/examples/standalone/envoy.yaml",
        "run",
        upstream.port(),
        idp.server.port(),
    );
    let dir = pki.dir.parent().unwrap().to_path_buf();
    let _remove = RemoveOnDrop(dir.clone());
    let port = envoy.port("mtls");

    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens).unwrap();
    let n = now();
    for (name, extra) in [
        ("alice", json!({"sub": "alice", "exp": n + 3600})),
        (
            "expired",
            json!({"sub": "bob", "iat": n - 7200, "exp": n - 3600}),
        ),
        (
            "wrong-audience",
            json!({"sub": "carol", "aud": "billing", "exp": n + 3600}),
        ),
    ] {
        let mut c = claims(json!({"iss": ISSUER, "aud": "demo-api"}));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        fs::write(tokens.join(format!("{name}.jwt")), key.sign(&c)).unwrap();
    }

    // DPoP (RFC 9449): a client key made by tools/dpop-proof.py and a token bound to it.
    let dpop_key = dir.join("dpop-key.pem");
    let jkt = dpop_tool(&["keygen", dpop_key.to_str().unwrap()]);
    let mut c = claims(json!({"iss": ISSUER, "aud": "demo-api", "sub": "dave", "exp": n + 3600}));
    c["cnf"] = json!({"jkt": jkt});
    fs::write(tokens.join("dave-dpop.jwt"), key.sign(&c)).unwrap();

    let alice = fs::read_to_string(tokens.join("alice.jwt")).unwrap();
    let probe = Client::new(port, &pki, None);
    eventually("JWKS fetched", Duration::from_secs(20), || {
        probe
            .get("/", &[("authorization", &format!("Bearer {alice}"))])
            .status
            == 200
    });

    let d = dir.display();
    let url = format!("https://localhost:{port}");
    let curl = format!("curl -s --cacert {d}/pki/ca.pem");
    println!(
        "\nmeshguard (standalone example, {}) is running: {url} (admin http://{})\n\
         Envoy log: {}\n\nTry:\n\
         \n  # no token: 401 with the Bearer and DPoP challenges\n  {curl} -i {url}/orders\
         \n  # a valid token (1 hour): 200, the upstream echoes what it received (x-user, no authorization)\n  \
         {curl} -H \"authorization: Bearer $(cat {d}/tokens/alice.jwt)\" {url}/orders\
         \n  # the same with the frontend workload's client certificate: x-peer-spiffe upstream\n  \
         {curl} --cert {d}/pki/frontend.pem --key {d}/pki/frontend-key.pem \
         -H \"authorization: Bearer $(cat {d}/tokens/alice.jwt)\" {url}/orders\
         \n  # expired token / wrong audience: 401 with error_description\n  \
         {curl} -H \"authorization: Bearer $(cat {d}/tokens/expired.jwt)\" {url}/orders\n  \
         {curl} -H \"authorization: Bearer $(cat {d}/tokens/wrong-audience.jwt)\" {url}/orders\
         \n  # DPoP: a token bound to {d}/dpop-key.pem, a fresh proof per request (from the repository)\n  \
         AT=$(cat {d}/tokens/dave-dpop.jwt)\n  \
         PROOF=$(.venv/bin/python tools/dpop-proof.py proof {d}/dpop-key.pem GET {url}/orders --token \"$AT\")\n  \
         {curl} -H \"authorization: DPoP $AT\" -H \"dpop: $PROOF\" {url}/orders\
         \n  # the same proof again: 401 DPoP proof replayed\n  \
         {curl} -i -H \"authorization: DPoP $AT\" -H \"dpop: $PROOF\" {url}/orders\
         \n  # metrics\n  curl -s http://{}/stats/prometheus | grep meshguard_\n\n\
         Ctrl-C stops it and removes {d}.",
        shipped.path.display(),
        envoy.admin,
        envoy.log.display(),
        envoy.admin,
    );
    loop {
        let exited = envoy.try_wait();
        // Checked after Envoy: the Ctrl-C that stopped it set the flag first.
        if stop.load(Ordering::SeqCst) {
            drop(envoy); // stops Envoy and removes its directory
            eprintln!("\nstopped; removed {}", dir.display());
            return;
        }
        if let Some(status) = exited {
            eprintln!("Envoy exited ({status}); its log:\n{}", envoy.log_text());
            drop(envoy);
            drop(_remove);
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
