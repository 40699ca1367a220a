//! The expected bytes were produced by Python `protobuf` (grpcio-tools' protoc) from
//! `tests/fixtures/rls/rls.proto` (the messages of Envoy's `rls.proto`, trimmed, field numbers
//! unchanged) by `tests/fixtures/rls/gen.py`: an encoder independent of this one.

use super::*;
use crate::testkit::hex;

fn descriptor(policy: usize, name: &str, identity: &str, cost: u64) -> Descriptor {
    Descriptor {
        policy,
        entries: vec![
            ("policy".into(), name.into()),
            ("identity".into(), identity.into()),
        ],
        cost,
    }
}

#[test]
fn one_descriptor_carries_the_cost_as_the_requests_hits_addend() {
    let bytes = encode_request(
        "saas-api",
        &[descriptor(
            0,
            "fleet-free",
            "client:https://issuer|app-1",
            3,
        )],
    );
    assert_eq!(
        bytes,
        hex("0a08736161732d617069123f0a140a06706f6c696379120a666c6565742d667265650a270a086964656e74697479121b636c69656e743a68747470733a2f2f6973737565727c6170702d311803")
    );
}

#[test]
fn a_descriptor_with_another_cost_carries_its_own() {
    let bytes = encode_request(
        "d",
        &[
            descriptor(0, "a", "ip:10.0.0.1", 5),
            descriptor(1, "all", "global", 1),
        ],
    );
    assert_eq!(
        bytes,
        hex("0a016412260a0b0a06706f6c6963791201610a170a086964656e74697479120b69703a31302e302e302e3112270a0d0a06706f6c6963791203616c6c0a120a086964656e746974791206676c6f62616c1a0208011805")
    );
}

#[test]
fn over_limit_reports_the_refusing_status_and_only_rate_limit_headers() {
    let answer = decode_response(&hex("0802120d08011207086410021a01781828121208021204080a1002220808111080cab5ee011a170a11582d526174654c696d69742d4c696d6974120231301a110a0a7365742d636f6f6b69651203613d622a027a7a")).unwrap();
    assert_eq!(answer.code, Code::OverLimit);
    assert_eq!(
        answer.status,
        Some((
            1,
            Status {
                limit: 10,
                unit_seconds: 60,
                remaining: 0,
                reset_ns: 17_500_000_000,
            }
        ))
    );
    // `set-cookie` is not a rate-limit header: dropped.
    assert_eq!(
        answer.headers,
        vec![("x-ratelimit-limit", "10".to_string())]
    );
}

#[test]
fn ok_reports_the_status_with_the_least_remaining() {
    let answer = decode_response(&hex("0801120e0801120408051001180422020801")).unwrap();
    assert_eq!(answer.code, Code::Ok);
    assert_eq!(
        answer.status,
        Some((
            0,
            Status {
                limit: 5,
                unit_seconds: 1,
                remaining: 4,
                reset_ns: 1_000_000_000,
            }
        ))
    );
}

#[test]
fn an_empty_message_is_unknown_and_garbage_is_not_an_answer() {
    let answer = decode_response(&[]).unwrap();
    assert_eq!(answer.code, Code::Unknown);
    assert_eq!(answer.status, None);
    // Field 1 as a length-delimited field with a length past the end.
    assert_eq!(decode_response(&[0x0a, 0x05, 0x01]), None);
}

#[test]
fn a_long_identity_is_sent_as_a_hash() {
    assert_eq!(descriptor_value("sub:i|u"), "sub:i|u");
    let long = "x".repeat(MAX_VALUE_LEN + 1);
    let v = descriptor_value(&long);
    assert!(v.starts_with("hash:") && v.len() == 21, "{v}");
}

#[test]
fn a_call_closed_after_its_timeout_is_a_timeout_whatever_its_status() {
    assert_eq!(failure_of_close(4, 10, 100), Failure::Timeout);
    assert_eq!(failure_of_close(14, 100, 100), Failure::Timeout);
    assert_eq!(failure_of_close(14, 90, 100), Failure::Timeout);
    assert_eq!(failure_of_close(14, 89, 100), Failure::Unavailable);
    assert_eq!(failure_of_close(2, 0, 100), Failure::Unavailable);
}

#[test]
fn the_call_target_is_a_grpc_service_naming_cluster_and_authority() {
    // GrpcService { envoy_grpc (1) { cluster_name (1): "rls", authority (2): "rls.svc" } },
    // written out by hand from envoy/config/core/v3/grpc_service.proto's field numbers.
    let expected: Vec<u8> = [
        &[0x0a, 0x0e, 0x0a, 0x03][..],
        b"rls",
        &[0x12, 0x07],
        b"rls.svc",
    ]
    .concat();
    assert_eq!(grpc_target("rls", "rls.svc"), expected);
}

#[test]
fn an_istio_cluster_name_gives_its_host_as_the_authority() {
    assert_eq!(
        default_authority("outbound|8081||ratelimit.infra.svc.cluster.local"),
        "ratelimit.infra.svc.cluster.local"
    );
    assert_eq!(default_authority("outbound|8081|v1|rls.svc"), "rls.svc");
    assert_eq!(default_authority("ratelimit"), "ratelimit");
    assert_eq!(default_authority("outbound|8081||"), "outbound|8081||");
    assert_eq!(default_authority("a|b|c|d|e"), "a|b|c|d|e");
}

/// 5 lines per 10 s: the 6th and 7th are left out, and the first line of the next window says
/// so; a window with nothing left out says 0.
#[test]
fn failure_lines_are_bounded_per_window_and_count_what_was_left_out() {
    let mut b = LogBudget::default();
    let at = |b: &mut LogBudget, ms: u64, n: usize| (0..n).map(|_| b.admit(ms)).collect::<Vec<_>>();
    assert_eq!(at(&mut b, 1_000, 5), vec![Some(0); 5]);
    assert_eq!(at(&mut b, 10_999, 2), vec![None, None]);
    assert_eq!(at(&mut b, 11_000, 2), vec![Some(2), Some(0)]);
    assert_eq!(at(&mut b, 20_999, 3), vec![Some(0), Some(0), Some(0)]);
    assert_eq!(b.admit(20_999), None);
    // A clock that goes back starts a new window rather than muting the log.
    assert_eq!(b.admit(5_000), Some(1));
}

/// Timeout 100 ms from t = 1000 ms: due at 1350 (the 250 ms margin), not before; a call that
/// ended is never due; a root going away ends every wait.
#[test]
fn a_wait_is_due_after_its_timeout_and_the_margin() {
    let mut w = Waits::default();
    w.start(7, 70, 1_000, 100);
    w.start(8, 80, 1_000, 2_000);
    w.start(9, 90, 1_000, 100);
    w.end(9);
    assert_eq!(w.waiter(7), Some(70));
    assert_eq!(w.waiter(9), None);
    assert_eq!(w.expire(Some(1_349)), vec![]);
    assert_eq!(w.expire(Some(1_350)), vec![(7, 70)]);
    assert_eq!(w.waiter(7), None);
    assert_eq!(w.expire(Some(1_350)), vec![]);
    assert_eq!(w.expire(None), vec![(8, 80)]);
}
