//! An HTTP filter that does nothing: the cost of being a proxy-wasm filter at all.

use proxy_wasm::traits::{Context, HttpContext};

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Pass) });
}}

struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {}
