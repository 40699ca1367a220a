//! DPoP proofs: fixtures signed by Python's `cryptography` and RFC 9449's own example prove the
//! signature paths; proofs signed here with ed25519-compact walk each rule.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use std::cell::RefCell;

use super::*;

// Made by tools/dpop_fixtures.py with Python `cryptography` (fresh keys; thumbprints by
// hashlib). Each proof: jti "<ALG>-fixture-1", htm GET, htu https://api.example.com/orders,
// iat 1767225600, ath of the token "mg-test-access-token"; the ES256 one also nonce
// "fixture-nonce".
/// base64url(SHA-256("mg-test-access-token")), by hashlib.
const ATH: &str = "7nyzz-DqlaS2OTBfjoxapvKBrUyuEftqxzgGMHY2mlc";
const RS256_PROOF: &str = "eyJ0eXAiOiAiZHBvcCtqd3QiLCAiYWxnIjogIlJTMjU2IiwgImp3ayI6IHsia3R5IjogIlJTQSIsICJuIjogInZQa3BscVotWkpkYl92bFMxTTB6V1pWZ1g1Mjd6WnNBZUUyMGxXWXVLWGF1dGM4Zmh0anFEOXB5OTRud3NtX3FzVlBHYkJCMEFMbUpkNzVRZHVkSTU3VFVUOXprbDV6NUxRaGdXSjUxSGE2eGE1SDlXdFdtN1RwLUNLSnVhUEctMW1BV1diMFp1RDVlaVd5UG1ERjBMdDYzdDJidVhabnhvRzI2dUFFODQtMGVYZlV2ajhSdVlDTkh3MDFyZnF0YnA2ck53bmplS0JjeGJlMEx3U2dUUGZJclV6RXppMWdQM2pEbWlXNWYzTUlHWGpkZ0p0NV9ENWlfaTBpZFFFTGJmblBtX1p0M2dBbzRSejJRX3RxOC11NGFiVUExcWtURHB1MFBLQmF6TWxZUGY2SUk2dURnbU5lRWd3NWIwR0dTWUdyUUh5ZkJ0MG9raERId0RVS25JdyIsICJlIjogIkFRQUIifX0.eyJqdGkiOiAiUlMyNTYtZml4dHVyZS0xIiwgImh0bSI6ICJHRVQiLCAiaHR1IjogImh0dHBzOi8vYXBpLmV4YW1wbGUuY29tL29yZGVycyIsICJpYXQiOiAxNzY3MjI1NjAwLCAiYXRoIjogIjdueXp6LURxbGFTMk9UQmZqb3hhcHZLQnJVeXVFZnRxeHpnR01IWTJtbGMifQ.g6oqcTR-M_KI-gRH4PjpfUhwIPibWG6zYp-03rJGsYphcAJd9JqCDeQPttZ5u6pG9Pb8sC-rHVjeH3yT4_G-1u0TIdafQK0eMnXaeOTnTe6hk_2JIgv7CovTBfaBJ7DXqQu7llBklgKPkSGzM6Oht5O8op0uXPmBCkJRH16ir56uy4cgIzxTbw_vEm02k6xs3uyuKe4h09osqTD5FKRE4jfzlcnefZD7fT9rvwl23v1nKGiPQ8mLG9ZdRIcCiK31crgD10-CsTH_CEDHXul3vPiwgtapkv9q-yPiZ6MUwnW1UBFiG9yqhi6lrklD66RN9AzaPB5JgdAcYzR6eiydvA";
const RS256_JKT: &str = "ECPoEgpARPdC9EC66ARTYZYLgrWxx90e1Bry3j2BRzQ";
const PS256_PROOF: &str = "eyJ0eXAiOiAiZHBvcCtqd3QiLCAiYWxnIjogIlBTMjU2IiwgImp3ayI6IHsia3R5IjogIlJTQSIsICJuIjogInZQa3BscVotWkpkYl92bFMxTTB6V1pWZ1g1Mjd6WnNBZUUyMGxXWXVLWGF1dGM4Zmh0anFEOXB5OTRud3NtX3FzVlBHYkJCMEFMbUpkNzVRZHVkSTU3VFVUOXprbDV6NUxRaGdXSjUxSGE2eGE1SDlXdFdtN1RwLUNLSnVhUEctMW1BV1diMFp1RDVlaVd5UG1ERjBMdDYzdDJidVhabnhvRzI2dUFFODQtMGVYZlV2ajhSdVlDTkh3MDFyZnF0YnA2ck53bmplS0JjeGJlMEx3U2dUUGZJclV6RXppMWdQM2pEbWlXNWYzTUlHWGpkZ0p0NV9ENWlfaTBpZFFFTGJmblBtX1p0M2dBbzRSejJRX3RxOC11NGFiVUExcWtURHB1MFBLQmF6TWxZUGY2SUk2dURnbU5lRWd3NWIwR0dTWUdyUUh5ZkJ0MG9raERId0RVS25JdyIsICJlIjogIkFRQUIifX0.eyJqdGkiOiAiUFMyNTYtZml4dHVyZS0xIiwgImh0bSI6ICJHRVQiLCAiaHR1IjogImh0dHBzOi8vYXBpLmV4YW1wbGUuY29tL29yZGVycyIsICJpYXQiOiAxNzY3MjI1NjAwLCAiYXRoIjogIjdueXp6LURxbGFTMk9UQmZqb3hhcHZLQnJVeXVFZnRxeHpnR01IWTJtbGMifQ.b5sEu60XNXJg2Vnq1NLnkTJ8irUUEmFhcrOiyzzcX9sz18Ii-rtHEbom5GuzLmKlDDdixVpQKzL23uLB0J6widw1sUOdvoAUFmLy20nk-ctyoHkzzttCKPALheVrbxqd7a0YKmuFGQ7cn8SvMn-6x68i2p5I1JbhHqvBMgidxVx81Z2AaCoEGDOIas_hTWu6l0wpdJMSy06V2H2iMPQLMKhGw_xmmAYfu0C-1Bq7kjL5V62C3SkUf911uM87R4RP2UZBvUOlhcyF-BQXLi-f1EIaS5DkqmWCv274tNE49NC9nCg4cGDdANZelvOhC3wjzDEAs0OughzsZDOt_FuCXw";
const PS256_JKT: &str = "ECPoEgpARPdC9EC66ARTYZYLgrWxx90e1Bry3j2BRzQ";
const ES256_PROOF: &str = "eyJ0eXAiOiAiZHBvcCtqd3QiLCAiYWxnIjogIkVTMjU2IiwgImp3ayI6IHsia3R5IjogIkVDIiwgImNydiI6ICJQLTI1NiIsICJ4IjogIkkxc3BETWpoempWbTY3ODJyaUctX1laVUJyMzhidHNuNHpFMlBFVm1EU0EiLCAieSI6ICJRNmk5REkzNzJjbHBHQ3FlQWJUaFlRajlVUGhTR01hSlpLRl8wSndDckpjIn19.eyJqdGkiOiAiRVMyNTYtZml4dHVyZS0xIiwgImh0bSI6ICJHRVQiLCAiaHR1IjogImh0dHBzOi8vYXBpLmV4YW1wbGUuY29tL29yZGVycyIsICJpYXQiOiAxNzY3MjI1NjAwLCAiYXRoIjogIjdueXp6LURxbGFTMk9UQmZqb3hhcHZLQnJVeXVFZnRxeHpnR01IWTJtbGMiLCAibm9uY2UiOiAiZml4dHVyZS1ub25jZSJ9.YdifKk-hzqpDNgxn7PLHzMZLHi75IOu4wVk60MrR5HQuwtBHLNCweNACzbigDM-TsEOEa3KDW7RxlZiZK827sA";
const ES256_JKT: &str = "HfNiJR1n5_SuLHY0d-i5AWS2MF5z2nZNbG-xDxO-Xrc";
const ES384_PROOF: &str = "eyJ0eXAiOiAiZHBvcCtqd3QiLCAiYWxnIjogIkVTMzg0IiwgImp3ayI6IHsia3R5IjogIkVDIiwgImNydiI6ICJQLTM4NCIsICJ4IjogImQ0WEJWTGhEVVN4c0lxckFNdnJsR0g4c05pQW1EVWYxTGN3bnkzeXVPTmVkSUI1NThkV0xJWl91MXc0UTRfelUiLCAieSI6ICJZazVrSWQ5UHNnWmU0UDgwNEZlZXByS1UxLXJOSjVUSHNjdy1CY2l1M3BJSWJ0NkhzWnY3SGhJTmN2bGVWRmtLIn19.eyJqdGkiOiAiRVMzODQtZml4dHVyZS0xIiwgImh0bSI6ICJHRVQiLCAiaHR1IjogImh0dHBzOi8vYXBpLmV4YW1wbGUuY29tL29yZGVycyIsICJpYXQiOiAxNzY3MjI1NjAwLCAiYXRoIjogIjdueXp6LURxbGFTMk9UQmZqb3hhcHZLQnJVeXVFZnRxeHpnR01IWTJtbGMifQ.1StemtH9nGUc9GjiKGY9scCRYazQAM0w7u2YMBHG2rh5t6sDR5rh_2IlWxcgob0ToUb11h68n8FrE9UIJiBBdBz8UF8SZZLGlxZGFtFDnE48O_7aGZqswyh5jfUrIoNc";
const ES384_JKT: &str = "wqOihHOk5FfoC7p70YBCKZUvtQohXhCkCAqDcHbD-DQ";
const EDDSA_PROOF: &str = "eyJ0eXAiOiAiZHBvcCtqd3QiLCAiYWxnIjogIkVkRFNBIiwgImp3ayI6IHsia3R5IjogIk9LUCIsICJjcnYiOiAiRWQyNTUxOSIsICJ4IjogInNRcl9sYUxnVWJ1SVdOS2doclN6WlVCblVJMlgxNXR5VXRRdm90MWg2LWMifX0.eyJqdGkiOiAiRWREU0EtZml4dHVyZS0xIiwgImh0bSI6ICJHRVQiLCAiaHR1IjogImh0dHBzOi8vYXBpLmV4YW1wbGUuY29tL29yZGVycyIsICJpYXQiOiAxNzY3MjI1NjAwLCAiYXRoIjogIjdueXp6LURxbGFTMk9UQmZqb3hhcHZLQnJVeXVFZnRxeHpnR01IWTJtbGMifQ.m7-qfxMgL0Ev3tuvnSe3Ep-RP0QqE1sNw-yKpj10NfK2JcUEeBAyHl5bBQc4BtkCoC_m-hg6g263y6_ZXB4tDQ";
const EDDSA_JKT: &str = "WsnyyrbKvbefBZ7GBvrkCGFqLQ6XlOydR2hYEDrrfTk";

/// RFC 9449 §4.1's example proof (its signature checked with Python `cryptography` too):
/// POST https://server.example.com/token at 1562262616, no access token.
const RFC9449_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";

const IAT: u64 = 1_767_225_600;
const NOW: u64 = IAT + 30;
const TOKEN: &str = "mg-test-access-token";
const HTU: &str = "https://api.example.com/orders";

fn cfg() -> Config {
    Config {
        algorithms: vec![
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::EdDSA,
        ],
        ..Config::default()
    }
}

fn expected_htu() -> Vec<String> {
    vec![HTU.to_string()]
}

fn run(
    proof: &str,
    token: Option<&str>,
    now: u64,
    host: Option<&dyn HostCrypto>,
) -> Result<Proof, ProofError> {
    let htu = expected_htu();
    let req = Request {
        method: "GET",
        htu: &htu,
        access_token: token,
        bound_to: None,
    };
    check(&[proof], &req, &cfg(), now, host)
}

fn fixtures() -> [(&'static str, &'static str, Algorithm); 5] {
    [
        (RS256_PROOF, RS256_JKT, Algorithm::RS256),
        (PS256_PROOF, PS256_JKT, Algorithm::PS256),
        (ES256_PROOF, ES256_JKT, Algorithm::ES256),
        (ES384_PROOF, ES384_JKT, Algorithm::ES384),
        (EDDSA_PROOF, EDDSA_JKT, Algorithm::EdDSA),
    ]
}

/// A different character in the middle of the signature.
fn tamper_signature(proof: &str) -> String {
    let at = proof.rfind('.').unwrap() + 6;
    let mut bytes = proof.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn ath_fixture_is_the_hash_of_the_token() {
    assert_eq!(super::super::ath(TOKEN), ATH);
}

#[test]
fn python_signed_proofs_verify_in_pure_rust() {
    for (proof, jkt, alg) in fixtures() {
        let p = run(proof, Some(TOKEN), NOW, None).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(p.jkt, jkt, "{alg:?}");
        assert_eq!(p.jti, format!("{}-fixture-1", alg.name()));
        assert_eq!(p.iat, IAT);
        assert_eq!(p.alg, alg);
        let nonce = (alg == Algorithm::ES256).then(|| "fixture-nonce".to_string());
        assert_eq!(p.nonce, nonce);
        assert_eq!(p.replay_until(&cfg()), IAT + 60 + 5);
    }
}

#[test]
fn a_changed_signature_is_refused() {
    for (proof, _, alg) in fixtures() {
        assert_eq!(
            run(&tamper_signature(proof), Some(TOKEN), NOW, None),
            Err(ProofError::BadSignature),
            "{alg:?}"
        );
    }
}

#[test]
fn rfc_9449_example_proof_verifies() {
    let htu = vec!["https://server.example.com/token".to_string()];
    let req = Request {
        method: "POST",
        htu: &htu,
        access_token: None,
        bound_to: None,
    };
    let p = check(&[RFC9449_PROOF], &req, &cfg(), 1_562_262_616 + 2, None).unwrap();
    assert_eq!(p.jkt, "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    assert_eq!(p.jti, "-BwC3ESc6acc2lTc");
    // The same proof presented with an access token lacks `ath`.
    let req = Request {
        access_token: Some("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        bound_to: None,
        ..req
    };
    assert_eq!(
        check(&[RFC9449_PROOF], &req, &cfg(), 1_562_262_616 + 2, None),
        Err(ProofError::MissingClaim("ath"))
    );
}

/// One call to the host: hash name, signature, message.
type HostCall = (String, Vec<u8>, Vec<u8>);

/// A host that answers a fixed value and records what it was asked.
struct FakeHost {
    answer: Option<bool>,
    calls: RefCell<Vec<HostCall>>,
}

impl FakeHost {
    fn new(answer: Option<bool>) -> FakeHost {
        FakeHost {
            answer,
            calls: RefCell::new(Vec::new()),
        }
    }
}

impl HostCrypto for FakeHost {
    fn verify(&self, hash: &str, _der: &[u8], signature: &[u8], message: &[u8]) -> Option<bool> {
        self.calls
            .borrow_mut()
            .push((hash.to_string(), signature.to_vec(), message.to_vec()));
        self.answer
    }
}

#[test]
fn the_host_checks_ecdsa_and_rsa_signatures_when_it_can() {
    // The host's "no" wins over a valid signature: its answer is the one used.
    for (proof, _, alg) in fixtures() {
        let host = FakeHost::new(Some(false));
        let got = run(proof, Some(TOKEN), NOW, Some(&host));
        if alg == Algorithm::EdDSA || alg == Algorithm::PS256 {
            assert!(
                got.is_ok(),
                "{alg:?}: not a host algorithm, checked in Rust"
            );
            assert!(host.calls.borrow().is_empty());
        } else {
            assert_eq!(got, Err(ProofError::BadSignature), "{alg:?}");
        }
    }
    // What it is asked for ES256: sha256, a DER ECDSA-Sig-Value, the signing input.
    let host = FakeHost::new(Some(true));
    let p = run(
        &tamper_signature(ES256_PROOF),
        Some(TOKEN),
        NOW,
        Some(&host),
    );
    assert!(p.is_ok(), "the host said yes");
    let calls = host.calls.borrow();
    let (hash, sig, message) = &calls[0];
    assert_eq!(hash, "sha256");
    assert_eq!(sig[0], 0x30, "DER SEQUENCE");
    assert_eq!(usize::from(sig[1]) + 2, sig.len());
    assert_eq!(
        message.as_slice(),
        ES256_PROOF.rsplit_once('.').unwrap().0.as_bytes()
    );
}

#[test]
fn without_a_host_answer_rust_checks_the_signature() {
    let host = FakeHost::new(None);
    assert!(run(ES256_PROOF, Some(TOKEN), NOW, Some(&host)).is_ok());
    assert_eq!(
        run(
            &tamper_signature(RS256_PROOF),
            Some(TOKEN),
            NOW,
            Some(&host)
        ),
        Err(ProofError::BadSignature)
    );
    assert_eq!(host.calls.borrow().len(), 2);
}

// Proofs for each rule, signed here with ed25519-compact.

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ed_key() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]))
}

fn ed_jwk() -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(ed_key().pk.as_ref())})
}

fn header() -> Value {
    json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": ed_jwk()})
}

fn claims() -> Value {
    json!({"jti": "j-1", "htm": "GET", "htu": HTU, "iat": IAT, "ath": ATH})
}

fn sign_text(header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = ed_key().sk.sign(input.as_bytes(), None);
    format!("{input}.{}", b64(sig.as_ref()))
}

fn sign(header: &Value, claims: &Value) -> String {
    sign_text(&header.to_string(), &claims.to_string())
}

fn with(mut v: Value, name: &str, value: Value) -> Value {
    v[name] = value;
    v
}

fn without(mut v: Value, name: &str) -> Value {
    v.as_object_mut().unwrap().remove(name);
    v
}

fn ed(header: &Value, claims: &Value) -> Result<Proof, ProofError> {
    run(&sign(header, claims), Some(TOKEN), NOW, None)
}

#[test]
fn a_locally_signed_proof_passes() {
    let p = ed(&header(), &claims()).unwrap();
    assert_eq!(p.jti, "j-1");
    assert_eq!(
        p.jkt,
        crate::dpop::sha256_b64(
            format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                b64(ed_key().pk.as_ref())
            )
            .as_bytes()
        )
    );
}

#[test]
fn exactly_one_header_value() {
    let proof = sign(&header(), &claims());
    let htu = expected_htu();
    let req = Request {
        method: "GET",
        htu: &htu,
        access_token: Some(TOKEN),
        bound_to: None,
    };
    assert_eq!(
        check(&[], &req, &cfg(), NOW, None),
        Err(ProofError::Missing)
    );
    assert_eq!(
        check(&[&proof, &proof], &req, &cfg(), NOW, None),
        Err(ProofError::Multiple(2))
    );
    let joined = format!("{proof},{proof}");
    assert_eq!(
        check(&[&joined], &req, &cfg(), NOW, None),
        Err(ProofError::Multiple(2)),
        "two headers joined by the proxy"
    );
}

#[test]
fn size_is_bounded() {
    let padded = with(claims(), "pad", json!("x".repeat(4096)));
    assert_eq!(ed(&header(), &padded), Err(ProofError::TooLarge(4096)));
}

#[test]
fn malformed_jws_is_refused() {
    assert_eq!(
        run("abc", Some(TOKEN), NOW, None),
        Err(ProofError::Malformed)
    );
    assert_eq!(
        run("a.b.c.d", Some(TOKEN), NOW, None),
        Err(ProofError::Malformed)
    );
    let dup = r#"{"typ":"dpop+jwt","alg":"EdDSA","alg":"EdDSA","jwk":{}}"#;
    assert_eq!(
        run(
            &sign_text(dup, &claims().to_string()),
            Some(TOKEN),
            NOW,
            None
        ),
        Err(ProofError::Malformed),
        "duplicate header member"
    );
    let crit = with(header(), "crit", json!(["exp"]));
    assert_eq!(ed(&crit, &claims()), Err(ProofError::Malformed));
}

#[test]
fn typ_must_be_dpop_jwt() {
    assert_eq!(
        ed(&without(header(), "typ"), &claims()),
        Err(ProofError::Type)
    );
    assert_eq!(
        ed(&with(header(), "typ", json!("JWT")), &claims()),
        Err(ProofError::Type)
    );
    assert_eq!(
        ed(&with(header(), "typ", json!("at+jwt")), &claims()),
        Err(ProofError::Type)
    );
    for ok in ["DPoP+JWT", "application/dpop+jwt"] {
        assert!(
            ed(&with(header(), "typ", json!(ok)), &claims()).is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn alg_must_be_an_accepted_asymmetric_algorithm() {
    for alg in ["none", "HS256", "ES512", "eddsa"] {
        assert_eq!(
            ed(&with(header(), "alg", json!(alg)), &claims()),
            Err(ProofError::Algorithm(alg.to_string())),
            "{alg}"
        );
    }
    let htu = expected_htu();
    let req = Request {
        method: "GET",
        htu: &htu,
        access_token: Some(TOKEN),
        bound_to: None,
    };
    let only_es256 = Config {
        algorithms: vec![Algorithm::ES256],
        ..cfg()
    };
    assert_eq!(
        check(&[&sign(&header(), &claims())], &req, &only_es256, NOW, None),
        Err(ProofError::Algorithm("EdDSA".into()))
    );
}

#[test]
fn the_key_type_decides_the_algorithm() {
    assert_eq!(
        ed(&with(header(), "alg", json!("ES256")), &claims()),
        Err(ProofError::KeyAlgorithm("ES256"))
    );
    assert_eq!(
        ed(&with(header(), "alg", json!("RS256")), &claims()),
        Err(ProofError::KeyAlgorithm("RS256"))
    );
}

#[test]
fn jwk_must_be_a_usable_public_key() {
    assert_eq!(
        ed(&without(header(), "jwk"), &claims()),
        Err(ProofError::MissingKey)
    );
    assert_eq!(
        ed(&with(header(), "jwk", json!("not an object")), &claims()),
        Err(ProofError::MissingKey)
    );
    let private = with(ed_jwk(), "d", json!(b64(&[1; 32])));
    assert_eq!(
        ed(&with(header(), "jwk", private), &claims()),
        Err(ProofError::PrivateKey("d"))
    );
    let symmetric = json!({"kty": "oct", "k": "c2VjcmV0"});
    assert_eq!(
        ed(&with(header(), "jwk", symmetric), &claims()),
        Err(ProofError::PrivateKey("k"))
    );
    let rsa_private = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "p": "AQ"});
    assert_eq!(
        ed(&with(header(), "jwk", rsa_private), &claims()),
        Err(ProofError::PrivateKey("p"))
    );
    let short = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 16])});
    assert_eq!(
        ed(&with(header(), "jwk", short), &claims()),
        Err(ProofError::BadKey("Ed25519 key has the wrong length"))
    );
    // Another valid key than the signer's: the signature fails.
    let other = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([8; 32]));
    let other_jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(other.pk.as_ref())});
    assert_eq!(
        ed(&with(header(), "jwk", other_jwk), &claims()),
        Err(ProofError::BadSignature)
    );
}

#[test]
fn required_claims() {
    for name in ["jti", "htm", "htu", "iat"] {
        assert_eq!(
            ed(&header(), &without(claims(), name)),
            Err(ProofError::MissingClaim(name)),
            "{name}"
        );
    }
    assert_eq!(
        ed(&header(), &with(claims(), "jti", json!(""))),
        Err(ProofError::MissingClaim("jti"))
    );
    assert_eq!(
        ed(&header(), &with(claims(), "htm", json!(1))),
        Err(ProofError::ClaimType("htm"))
    );
    assert_eq!(
        ed(&header(), &with(claims(), "ath", json!([]))),
        Err(ProofError::ClaimType("ath"))
    );
    assert_eq!(
        ed(&header(), &with(claims(), "iat", json!("1"))),
        Err(ProofError::Malformed)
    );
}

#[test]
fn jti_and_nonce_are_bounded() {
    let jti = "j".repeat(MAX_JTI_BYTES);
    assert!(ed(&header(), &with(claims(), "jti", json!(jti))).is_ok());
    let jti = "j".repeat(MAX_JTI_BYTES + 1);
    assert_eq!(
        ed(&header(), &with(claims(), "jti", json!(jti))),
        Err(ProofError::JtiTooLong)
    );
    let nonce = "n".repeat(MAX_NONCE_BYTES + 1);
    assert_eq!(
        ed(&header(), &with(claims(), "nonce", json!(nonce))),
        Err(ProofError::NonceTooLong)
    );
    let p = ed(&header(), &with(claims(), "nonce", json!("abc"))).unwrap();
    assert_eq!(p.nonce.as_deref(), Some("abc"));
}

#[test]
fn htm_is_the_request_method() {
    let e = ed(&header(), &with(claims(), "htm", json!("POST"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"DPoP proof htm "POST" is not the request method "GET""#
    );
    assert!(
        ed(&header(), &with(claims(), "htm", json!("get"))).is_err(),
        "methods are case-sensitive"
    );
}

#[test]
fn htu_is_compared_after_normalisation() {
    let same = "HTTPS://API.example.com:443/orders?page=2#top";
    assert!(ed(&header(), &with(claims(), "htu", json!(same))).is_ok());
    let e = ed(
        &header(),
        &with(claims(), "htu", json!("http://orders.svc:8080/orders")),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"DPoP proof htu "http://orders.svc:8080/orders" is not the request's URI; expected "https://api.example.com/orders""#
    );
}

#[test]
fn iat_is_within_the_window() {
    // Default window: 60 s old, 5 s skew either way.
    let at = |iat: u64| ed(&header(), &with(claims(), "iat", json!(iat)));
    assert!(at(NOW + 5).is_ok());
    assert_eq!(at(NOW + 6), Err(ProofError::IssuedInFuture(6)));
    assert!(at(NOW - 65).is_ok());
    assert_eq!(at(NOW - 66), Err(ProofError::TooOld(66)));
    assert!(at(NOW).is_ok());
}

#[test]
fn ath_binds_the_access_token() {
    assert_eq!(
        ed(
            &header(),
            &with(claims(), "ath", json!(crate::dpop::ath("another token")))
        ),
        Err(ProofError::TokenHash)
    );
    assert_eq!(
        ed(&header(), &without(claims(), "ath")),
        Err(ProofError::MissingClaim("ath"))
    );
    // Without an access token (a token request), `ath` is not required.
    let proof = sign(&header(), &without(claims(), "ath"));
    assert!(run(&proof, None, NOW, None).is_ok());
}

#[test]
fn a_proof_by_another_key_than_the_bound_one_costs_no_signature_check() {
    let htu = expected_htu();
    for (proof, jkt, alg) in fixtures() {
        let host = FakeHost::new(Some(true));
        let req = |bound_to| Request {
            method: "GET",
            htu: &htu,
            access_token: Some(TOKEN),
            bound_to,
        };
        let other = check(
            &[proof],
            &req(Some("another-thumbprint")),
            &cfg(),
            NOW,
            Some(&host),
        );
        assert_eq!(other, Err(ProofError::KeyMismatch), "{alg:?}");
        assert!(host.calls.borrow().is_empty(), "{alg:?}: no signature work");
        let bound = check(&[proof], &req(Some(jkt)), &cfg(), NOW, Some(&host));
        assert!(bound.is_ok(), "{alg:?}: {bound:?}");
    }
}
