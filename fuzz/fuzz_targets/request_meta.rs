//! The request metadata a client sends in headers ([`protocol::RequestMeta::from_headers`],
//! read by the proxy and the worker) and the end-to-end binding read beside it
//! ([`protocol::e2e::binding_from_headers`]), from arbitrary header lists: neither may panic;
//! metadata that parses writes back to headers that parse to the same metadata, and an id
//! and model that parsed are valid header values as they are.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use protocol::{e2e, Endpoint, RequestMeta};

/// `name: value` lines; lines that are not a valid header are skipped.
fn headers(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let h = headers(data);
    let _ = protocol::meta::check_version(&h);
    let Ok(meta) = RequestMeta::from_headers(&h) else {
        return;
    };
    let mut written = HeaderMap::new();
    meta.write_headers(&mut written);
    assert_eq!(RequestMeta::from_headers(&written).unwrap(), meta);
    assert!(HeaderValue::from_str(meta.request_id.as_str()).is_ok());
    assert!(HeaderValue::from_str(&meta.model).is_ok());
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions] {
        if let Ok(b) = e2e::binding_from_headers(endpoint, &meta, &h) {
            assert!(!b.recipients.is_empty() && b.recipients.len() <= e2e::MAX_RECIPIENTS);
            assert_eq!(b.request_id, meta.request_id.as_str());
            assert_eq!(b.model, meta.model);
        }
    }
});
