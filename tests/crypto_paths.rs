//! Host crypto (Envoy's BoringSSL `verify_signature`) and the pure-Rust path agree: the same
//! token set, every algorithm and forgeries of each, through Envoy with `hostCrypto` on and off
//! and the token cache off (every request is verified), gives the same answers. A second pass
//! with the cache on gives them again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm as A;
use serde_json::json;

fn tokens(rsa: &Signer, ec: &Signer, ec384: &Signer, ed: &Signer) -> Vec<(String, String, u16)> {
    let good = claims(json!({}));
    let mut out = Vec::new();
    let cases: [(&Signer, A); 9] = [
        (rsa, A::RS256),
        (rsa, A::RS384),
        (rsa, A::RS512),
        (rsa, A::PS256),
        (rsa, A::PS384),
        (rsa, A::PS512),
        (ec, A::ES256),
        (ec384, A::ES384),
        (ed, A::EdDSA),
    ];
    for (signer, alg) in cases {
        let token = signer.sign_as(alg, Some(&signer.kid), &good);
        // The same header and payload with the last signature byte changed, and with another
        // payload under the original signature.
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        let flipped = format!(
            "{input}.{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &bytes)
        );
        let (header, _) = input.split_once('.').unwrap();
        let other_payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims(json!({"sub": "mallory"})).to_string(),
        );
        let swapped = format!("{header}.{other_payload}.{sig}");
        out.push((format!("{alg:?} valid"), token, 200));
        out.push((format!("{alg:?} flipped signature"), flipped, 401));
        out.push((format!("{alg:?} swapped payload"), swapped, 401));
    }
    out
}

fn run(
    host_crypto: bool,
    cache: bool,
    signers: &[&Signer],
    set: &[(String, String, u16)],
) -> Vec<u16> {
    let plugin = json!({
        "hostCrypto": host_crypto,
        "tokenCache": {"maxEntries": if cache { 1000 } else { 0 }},
        "providers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks(signers)}]
    });
    let Stack {
        envoy,
        idp: _idp,
        upstream: _upstream,
        ..
    } = Stack::start(
        "crypto",
        JwksServer::start(String::new()),
        &plugin,
        false,
        2,
    );
    let mut c = KeepAlive::new(envoy.port("plain"));
    let statuses = set
        .iter()
        .chain(set.iter())
        .map(|(_, t, _)| {
            c.get("/", &[("authorization", &format!("Bearer {t}"))])
                .status
        })
        .collect::<Vec<u16>>();
    // Which path verified is in the log, once: the foreign function answered or it did not.
    let log = envoy.log_text();
    let (available, unavailable) = (
        log.contains("host crypto available"),
        log.contains("host crypto unavailable"),
    );
    if host_crypto {
        assert_eq!(
            (available, unavailable),
            (envoy_has_verify_signature(), !envoy_has_verify_signature()),
            "Envoy {:?}: verify_signature expected {}",
            envoy_version(),
            envoy_has_verify_signature()
        );
    } else {
        assert!(!available && !unavailable, "hostCrypto off never calls it");
    }
    // The hot counters reach Envoy's stats on the worker's timer: wait until every allowed
    // request is counted, so the cache counters are flushed too.
    let allowed = statuses.iter().filter(|s: &&u16| **s == 200).count() as u64;
    eventually("batched counters flushed", Duration::from_secs(5), || {
        envoy.meshguard_stat("allowed") == allowed
    });
    let stats = envoy.stats();
    let hits: u64 = stats
        .lines()
        .find_map(|l| {
            l.split_once("meshguard.meshguard.token_cache.hit: ")
                .map(|(_, v)| v.parse().unwrap())
        })
        .unwrap();
    assert_eq!(hits > 0, cache, "cache hits: {hits}");
    statuses
}

#[test]
fn host_crypto_and_pure_rust_give_the_same_answers() {
    let (rsa, ec, ec384, ed) = (
        Signer::rsa("r"),
        Signer::es256("e"),
        Signer::es384("e3"),
        Signer::ed25519("d"),
    );
    let signers = [&rsa, &ec, &ec384, &ed];
    let set = tokens(&rsa, &ec, &ec384, &ed);
    let expected: Vec<u16> = set.iter().chain(set.iter()).map(|(_, _, s)| *s).collect();
    let runs: Vec<(&str, Vec<u16>)> = vec![
        ("host crypto", run(true, false, &signers, &set)),
        ("pure Rust", run(false, false, &signers, &set)),
        ("host crypto + cache", run(true, true, &signers, &set)),
    ];
    for (name, got) in &runs {
        let wrong: Vec<&str> = set
            .iter()
            .chain(set.iter())
            .zip(got.iter().zip(&expected))
            .filter(|(_, (g, e))| g != e)
            .map(|((label, _, _), _)| label.as_str())
            .collect();
        assert!(wrong.is_empty(), "{name}: wrong answers for {wrong:?}");
    }
}
