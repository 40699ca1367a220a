//! meshguard's own bindings to the proxy-wasm ABI 0.2.1 host functions.
//!
//! The proxy-wasm Rust SDK panics on every host status it does not expect (by design), and a panic
//! kills the worker's VM. So meshguard does not use it: each host function it needs is declared
//! here and wrapped in a function that returns `Result<_, HostError>`, one error per status, for
//! the caller to decide about. Nothing in this file panics; buffers the host allocates in our
//! memory (through `proxy_on_memory_allocate`, in `dispatch`) are taken back as `Vec`s.

use crate::wire;

/// A host status other than `Ok`, mapped rather than flattened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    InvalidMemoryAccess,
    Empty,
    CasMismatch,
    InternalFailure,
    Unimplemented,
    /// A status this ABI version does not define.
    Other(u32),
}

pub type HostResult<T> = Result<T, HostError>;

fn check(status: u32) -> HostResult<()> {
    Err(match status {
        0 => return Ok(()),
        1 => HostError::NotFound,
        2 => HostError::BadArgument,
        3 => HostError::SerializationFailure,
        4 => HostError::ParseFailure,
        6 => HostError::InvalidMemoryAccess,
        7 => HostError::Empty,
        8 => HostError::CasMismatch,
        10 => HostError::InternalFailure,
        12 => HostError::Unimplemented,
        other => HostError::Other(other),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
/// Which header map: the request's, the response's, or an HTTP call's answer.
pub enum MapType {
    Request = 0,
    Response = 2,
    CallResponse = 6,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum BufferType {
    CallResponseBody = 4,
    GrpcReceive = 5,
    PluginConfiguration = 7,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            kind: u32,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            kind: u32,
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            kind: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(kind: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
            out_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            out_token: *mut u32,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_grpc_call(
            service: *const u8,
            service_size: usize,
            service_name: *const u8,
            service_name_size: usize,
            method_name: *const u8,
            method_name_size: usize,
            initial_metadata: *const u8,
            initial_metadata_size: usize,
            message: *const u8,
            message_size: usize,
            timeout_ms: u32,
            out_token: *mut u32,
        ) -> u32;
        pub fn proxy_call_foreign_function(
            name: *const u8,
            name_size: usize,
            args: *const u8,
            args_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            out_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_set_effective_context(id: u32) -> u32;
    }
}

/// Takes ownership of a buffer the host wrote into our memory through `proxy_on_memory_allocate`
/// (which hands out exactly `size` bytes). A null pointer or zero size is an empty buffer.
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host returns memory it obtained from `proxy_on_memory_allocate(size)`, which
    // allocates a boxed slice of exactly `size` bytes with the global allocator.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// A host call that returns a buffer: `Ok(None)` when the host says `NotFound` or `Empty`.
fn buffer_call(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> HostResult<Option<Vec<u8>>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let status = call(&mut data, &mut size);
    match check(status) {
        Ok(()) => Ok(Some(take(data, size))),
        Err(HostError::NotFound | HostError::Empty) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn log(level: LogLevel, message: &str) -> HostResult<()> {
    // SAFETY: pointer and length of a live `&str`.
    check(unsafe { raw::proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// Wall clock, ns since the Unix epoch.
pub fn now_ns() -> HostResult<u64> {
    let mut t = 0u64;
    // SAFETY: `t` is a live u64 the host writes.
    check(unsafe { raw::proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(ms: u32) -> HostResult<()> {
    // SAFETY: plain value.
    check(unsafe { raw::proxy_set_tick_period_milliseconds(ms) })
}

pub fn buffer(kind: BufferType, start: usize, max: usize) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: the out-pointers are live locals of `buffer_call`.
    buffer_call(|d, s| unsafe { raw::proxy_get_buffer_bytes(kind as u32, start, max, d, s) })
}

/// Every header of a map, in the ABI's encoding: decode it with `wire::decode_map` (which
/// borrows from it, so no copy per header).
pub fn headers(kind: MapType) -> HostResult<Vec<u8>> {
    // SAFETY: the out-pointers are live locals of `buffer_call`.
    let bytes = buffer_call(|d, s| unsafe { raw::proxy_get_header_map_pairs(kind as u32, d, s) })?;
    Ok(bytes.unwrap_or_default())
}

/// One header's first value; `Ok(None)` when absent.
pub fn header(kind: MapType, name: &str) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: pointer/length of a live `&str`; out-pointers are live locals of `buffer_call`.
    buffer_call(|d, s| unsafe {
        raw::proxy_get_header_map_value(kind as u32, name.as_ptr(), name.len(), d, s)
    })
}

pub fn set_header(kind: MapType, name: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointers/lengths of live slices.
    check(unsafe {
        raw::proxy_replace_header_map_value(
            kind as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(kind: MapType, name: &str) -> HostResult<()> {
    // SAFETY: pointer/length of a live `&str`.
    check(unsafe { raw::proxy_remove_header_map_value(kind as u32, name.as_ptr(), name.len()) })
}

/// An Envoy attribute (`["connection", "mtls"]`); `Ok(None)` when Envoy has no value for it.
pub fn property(path: &[&str]) -> HostResult<Option<Vec<u8>>> {
    let encoded = wire::encode_path(path);
    // SAFETY: pointer/length of a live Vec; out-pointers are live locals of `buffer_call`.
    buffer_call(|d, s| unsafe { raw::proxy_get_property(encoded.as_ptr(), encoded.len(), d, s) })
}

/// Sets a property of the current request. Envoy keeps it in the request's filter state under
/// `wasm.<path>` (bytes, mutable, for the filter chain's life): `%FILTER_STATE(wasm.<path>:PLAIN)%`
/// in an access log, `filter_state["wasm.<path>"]` in CEL. `NotFound`: no current request.
pub fn set_property(path: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointers/lengths of live slices.
    check(unsafe {
        raw::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
    })
}

/// A shared-data value and its CAS; `Ok(None)` when the key does not exist. An existing key with
/// an empty value is `Some((vec![], cas))`.
pub fn shared_get(key: &str) -> HostResult<Option<(Vec<u8>, u32)>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: pointer/length of a live `&str`; out-pointers are live locals.
    let status = unsafe {
        raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    };
    match check(status) {
        Ok(()) => Ok(Some((take(data, size), cas))),
        Err(HostError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a shared-data value. `cas` 0 overwrites unconditionally; a key that does not exist yet
/// is created whatever the `cas` (Envoy's semantics). `Err(CasMismatch)` when another writer won.
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> HostResult<()> {
    // SAFETY: pointers/lengths of live slices.
    check(unsafe {
        raw::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Resumes the current HTTP request after a `Pause`.
pub fn continue_request() -> HostResult<()> {
    // SAFETY: plain value (0: the HTTP request stream).
    check(unsafe { raw::proxy_continue_stream(0) })
}

/// Answers the current request locally.
pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> HostResult<()> {
    let map = wire::encode_map(headers);
    // SAFETY: pointers/lengths of live slices.
    check(unsafe {
        raw::proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Starts an HTTP call to an Envoy cluster; the answer arrives in `proxy_on_http_call_response`
/// of the calling context with the returned token. `BadArgument`: no such cluster.
pub fn http_call(cluster: &str, headers: &[(&str, &[u8])], timeout_ms: u32) -> HostResult<u32> {
    let map = wire::encode_map(headers);
    let no_trailers = wire::encode_map(&[]);
    let mut token = 0u32;
    // SAFETY: pointers/lengths of live slices; `token` is a live local.
    check(unsafe {
        raw::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            map.as_ptr(),
            map.len(),
            std::ptr::null(),
            0,
            no_trailers.as_ptr(),
            no_trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Starts a unary gRPC call through Envoy cluster `cluster` (Envoy parses the first argument as
/// a serialized `GrpcService` and, failing that, takes it as a cluster name). The answer arrives
/// in `proxy_on_grpc_receive` (the response message) or `proxy_on_grpc_close` (a gRPC status:
/// timeout, no connection…) of the root context, with the returned token. `BadArgument` /
/// `ParseFailure`: no such cluster.
/// `target`: an encoded `envoy.config.core.v3.GrpcService` (or a bare cluster name).
pub fn grpc_call(
    target: &[u8],
    service: &str,
    method: &str,
    message: &[u8],
    timeout_ms: u32,
) -> HostResult<u32> {
    let no_metadata = wire::encode_map(&[]);
    let mut token = 0u32;
    // SAFETY: pointers/lengths of live slices; `token` is a live local.
    check(unsafe {
        raw::proxy_grpc_call(
            target.as_ptr(),
            target.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            no_metadata.as_ptr(),
            no_metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Calls a foreign function the host registered (`verify_signature`).
pub fn foreign(name: &str, args: &[u8]) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: pointers/lengths of live slices; out-pointers are live locals of `buffer_call`.
    buffer_call(|d, s| unsafe {
        raw::proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), d, s)
    })
}

pub fn define_metric(kind: MetricType, name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: pointer/length of a live `&str`; `id` is a live local.
    check(unsafe { raw::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> HostResult<()> {
    // SAFETY: plain values.
    check(unsafe { raw::proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    // SAFETY: plain values.
    check(unsafe { raw::proxy_record_metric(id, value) })
}

/// Makes context `id` the one later host calls act on (a root resuming a waiting request).
/// `NotFound`/`BadArgument`: no such context any more.
pub fn set_effective_context(id: u32) -> HostResult<()> {
    // SAFETY: plain value.
    check(unsafe { raw::proxy_set_effective_context(id) })
}
