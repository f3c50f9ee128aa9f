//! The worker's validation of OpenAI request bodies (client bytes, checked inside the TEE;
//! `worker::validate`): never panics, and what it accepts stays inside the request's bounds:
//! at most the request's `max_tokens` (the proxy's reservation), a valid JSON object without
//! duplicate keys, the model it was asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Endpoint, ModelAdvert, RequestId, RequestMeta};
use worker::validate::validate;

const MAX_TOKENS: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let meta = RequestMeta {
        version: 1,
        request_id: RequestId::parse("fuzz-1").expect("id"),
        model: "m".into(),
        max_tokens: MAX_TOKENS,
        price_cap: None,
    };
    let models = [ModelAdvert {
        name: "m".into(),
        model_hash: "00".repeat(32),
        max_context: 2048,
        max_completion_tokens: 1024,
    }];
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions] {
        if let Ok(v) = validate(endpoint, &meta, data, &models) {
            assert!(v.request.sampling.max_tokens <= MAX_TOKENS);
            assert_eq!(v.request.model, "m");
            assert_eq!(v.endpoint, endpoint);
            let parsed: serde_json::Value =
                serde_json::from_slice(data).expect("accepted bodies are JSON");
            assert!(parsed.is_object());
        }
    }
});
