//! A `POST /v1/infer` body as the server reads it (UTF-8, a JSON object,
//! the envelope, the built-in model's codec), with an optional priority
//! header: a request or an `ApiError` with a 4xx status, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

use convoy_server::{decode_body, Limits, ModelCodec};

fuzz_target!(|data: &[u8]| {
    let codec = ModelCodec {
        limits: Limits {
            max_body_bytes: 1 << 20,
            max_tokens: 64,
            vocab: 1000,
            dim: 8,
        },
    };
    // The first byte picks a header, the rest is the body.
    let (header, body) = match data.split_first() {
        Some((0, rest)) => (Some("critical"), rest),
        Some((1, rest)) => (Some("7"), rest),
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    if let Err(e) = decode_body(&codec, body, header, std::time::Instant::now()) {
        assert!(e.status().is_client_error(), "{e}");
        assert!(!e.message().is_empty());
    }
});
