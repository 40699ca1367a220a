//! The proxy-wasm ABI 0.2.1 entry points Envoy calls, and the table of live contexts.
//!
//! Only what meshguard handles is exported (the host treats a missing `proxy_on_*` as
//! "continue"): no `on_log`, `on_done`, response bodies or trailers. Request bodies and trailers
//! are exported so that they pass only once their request was allowed on.
//!
//! A context is taken out of the table while its callback runs and put back after, so a host call
//! that re-enters the VM (a local reply runs the response path at once) finds no context and gets
//! the neutral answer instead of a double borrow. Nothing here panics: an unknown context id is
//! answered like the SDK's defaults would, except a request whose filter context could not be made,
//! which is refused (fail closed).

use std::cell::RefCell;
use std::collections::HashMap;

use std::rc::Rc;

use super::abi::{self, BufferType, LogLevel};
use super::filter::{Filter, GrpcEnd, CONTINUE, STOP};
use super::root::Root;
use super::worker::Worker;

#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Root>,
    filters: HashMap<u32, Filter>,
    /// Contexts taken out for a callback right now (re-entry makes this at most a few).
    busy: Vec<u32>,
    /// Busy contexts the host deleted meanwhile: not put back.
    deleted: Vec<u32>,
    /// HTTP calls started by HTTP contexts: call token → context. The host delivers every answer
    /// to the root context; this routes it to the request that waits for it.
    callouts: HashMap<u32, u32>,
}

impl Contexts {
    /// Ends a callback on `id`: true when the context is to be put back.
    fn release(&mut self, id: u32) -> bool {
        if let Some(i) = self.busy.iter().position(|b| *b == id) {
            self.busy.swap_remove(i);
        }
        match self.deleted.iter().position(|d| *d == id) {
            Some(i) => {
                self.deleted.swap_remove(i);
                false
            }
            None => true,
        }
    }
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

fn with_table<R>(f: impl FnOnce(&mut Contexts) -> R) -> Option<R> {
    CONTEXTS.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

/// Runs `f` on root context `id`, taken out of the table meanwhile; `None` if there is none.
fn with_root<R>(id: u32, f: impl FnOnce(&mut Root) -> R) -> Option<R> {
    let mut root = with_table(|t| {
        let root = t.roots.remove(&id)?;
        t.busy.push(id);
        Some(root)
    })
    .flatten()?;
    let result = f(&mut root);
    with_table(|t| {
        if t.release(id) {
            t.roots.insert(id, root);
        }
    });
    Some(result)
}

/// Runs `f` on HTTP context `id`, taken out of the table meanwhile; `None` if there is none.
fn with_filter<R>(id: u32, f: impl FnOnce(&mut Filter) -> R) -> Option<R> {
    let mut filter = with_table(|t| {
        let filter = t.filters.remove(&id)?;
        t.busy.push(id);
        Some(filter)
    })
    .flatten()?;
    let result = f(&mut filter);
    let keep = with_table(|t| t.release(id)).unwrap_or(false);
    if keep {
        with_table(|t| t.filters.insert(id, filter));
    } else {
        filter.on_delete();
    }
    Some(result)
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory for data the host hands over (headers, bodies, shared data…): a boxed slice of exactly
/// `size` bytes, taken back by `abi::take`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let slice: Box<[std::mem::MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(slice).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(id: u32, parent: u32) {
    with_table(|t| {
        if parent == 0 {
            t.roots.insert(id, Root::new());
        } else if let Some(worker) = t.roots.get(&parent).and_then(Root::worker) {
            t.filters.insert(id, Filter::new(worker, id));
        }
        // Otherwise no context: the request is refused in `proxy_on_request_headers`.
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
    u32::from(with_root(root, |r| r.on_configure(size)).unwrap_or(false))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    if let Some((worker, now)) = with_root(root, Root::on_tick).flatten() {
        expire_fleet_calls(root, &worker, Some(now));
        retry_waiting(root, &worker, now);
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, _headers: usize, _end: u32) -> u32 {
    let judged = with_filter(id, |f| (f.on_request_headers(), f.pending_call()));
    match judged {
        Some((status, call)) => {
            if let Some(token) = call {
                // The host delivers the answer to the root context: route it to this request.
                with_table(|t| t.callouts.insert(token, id));
            }
            status
        }
        None => {
            // A request meshguard cannot judge is refused, never passed.
            super::log(
                LogLevel::Error,
                "meshguard: no configured filter context for this request: refused",
            );
            let _ = abi::send_local_response(503, "meshguard_unavailable", &[], b"");
            STOP
        }
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(id: u32, _size: usize, _end: u32) -> u32 {
    body_or_trailers(id)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(id: u32, _trailers: usize) -> u32 {
    body_or_trailers(id)
}

/// A request's body and trailers pass only once the request was allowed on: while it waits for
/// keys, or was refused (even if its local reply failed), or has no context, a `Continue` here
/// would let Envoy forward it unjudged.
fn body_or_trailers(id: u32) -> u32 {
    if with_filter(id, |f| f.passes_body()) == Some(true) {
        CONTINUE
    } else {
        STOP
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(id: u32, _headers: usize, _end: u32) -> u32 {
    with_filter(id, Filter::on_response_headers);
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    id: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    let answer = super::jwks::Answer {
        token,
        headers,
        body_size,
    };
    match with_table(|t| t.callouts.remove(&token)).flatten() {
        Some(filter) => {
            if abi::set_effective_context(filter).is_ok() {
                with_filter(filter, |f| f.on_http_call_response(&answer));
            }
        }
        None => {
            if let Some((worker, now)) =
                with_root(id, |r| r.on_http_call_response(&answer)).flatten()
            {
                retry_waiting(id, &worker, now);
            }
        }
    }
}

/// The HTTP context waiting for gRPC call `token` of root context `root`'s worker. The entry
/// stays until the request takes the answer: an answer that cannot be delivered leaves it to
/// the deadline ([`expire_fleet_calls`]).
fn fleet_waiter(root: u32, token: u32) -> Option<u32> {
    let worker = with_table(|t| t.roots.get(&root).and_then(Root::worker)).flatten()?;
    let calls = worker.fleet_calls.try_borrow().ok()?;
    calls.waiter(token)
}

/// Ends the wait of every request whose fleet call is past its deadline (`now_ms`; all of them
/// when `None`: the root is going away) as [`GrpcEnd::Deadline`]: its `failureMode` decides.
/// Envoy's own timeout normally ends a call first; this covers a call whose end Envoy never
/// reports to this root (or that could not be delivered), so no request waits forever.
fn expire_fleet_calls(root: u32, worker: &Rc<Worker>, now_ms: Option<u64>) {
    let expired = match worker.fleet_calls.try_borrow_mut() {
        Ok(mut calls) => calls.expire(now_ms),
        Err(_) => return,
    };
    if expired.is_empty() {
        return;
    }
    for (token, id) in expired {
        if abi::set_effective_context(id).is_ok() {
            with_filter(id, |f| f.on_grpc_answer(token, Err(GrpcEnd::Deadline)));
        }
    }
    let _ = abi::set_effective_context(root);
}

/// Largest rate-limit service answer read (bytes).
const MAX_RLS_ANSWER_BYTES: usize = 16 * 1024;

/// A gRPC call's response message: to the request that waits for it.
#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(id: u32, token: u32, size: usize) {
    let Some(filter) = fleet_waiter(id, token) else {
        return; // its request is gone
    };
    // A `ShouldRateLimitResponse` meshguard uses is a few hundred bytes: a larger one is
    // refused unread (as unreadable), so a faulty service cannot fill the VM's memory.
    let message = if size > MAX_RLS_ANSWER_BYTES {
        Err(GrpcEnd::Unreadable)
    } else {
        abi::buffer(BufferType::GrpcReceive, 0, size)
            .map(Option::unwrap_or_default)
            .map_err(|_| GrpcEnd::Unreadable)
    };
    if abi::set_effective_context(filter).is_ok() {
        with_filter(filter, |f| f.on_grpc_answer(token, message));
    }
}

/// A gRPC call ended without a message: `status` is its gRPC status (`DEADLINE_EXCEEDED` on
/// timeout, `UNAVAILABLE` without a connection).
#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(id: u32, token: u32, status: u32) {
    let Some(filter) = fleet_waiter(id, token) else {
        return;
    };
    if abi::set_effective_context(filter).is_ok() {
        with_filter(filter, |f| {
            f.on_grpc_answer(token, Err(GrpcEnd::Closed(status)))
        });
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(id: u32) {
    // A root going away: requests still waiting for its fleet calls would never hear of them.
    let root_worker = with_table(|t| t.roots.get(&id).and_then(Root::worker)).flatten();
    let gone = with_table(|t| {
        if t.busy.contains(&id) {
            // Taken out for a callback right now: not put back when it returns.
            t.deleted.push(id);
        }
        t.roots.remove(&id);
        t.callouts.retain(|_, c| *c != id);
        t.filters.remove(&id)
    })
    .flatten();
    if let Some(mut filter) = gone {
        filter.on_delete();
    }
    if let Some(worker) = root_worker {
        expire_fleet_calls(id, &worker, None);
    }
}

/// After root context `root`'s timer or fetch answer: gives each request waiting for first keys
/// another look, acting on that request's stream, then makes the root current again and lets it
/// set its timer for the requests still waiting.
fn retry_waiting(root: u32, worker: &Rc<Worker>, now_ms: u64) {
    let waiting = std::mem::take(&mut *worker.waiting.borrow_mut());
    if waiting.is_empty() {
        return;
    }
    let mut still = Vec::new();
    for id in waiting {
        if abi::set_effective_context(id).is_err() {
            continue; // the request is gone
        }
        if with_filter(id, |f| f.retry(now_ms)) == Some(true) {
            still.push(id);
        }
    }
    let _ = abi::set_effective_context(root);
    worker.waiting.borrow_mut().extend(still);
    with_root(root, Root::adjust_tick);
}
