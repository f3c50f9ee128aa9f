//! OpenAI's Responses API in the local client: the app's request body (`translate`) and the
//! proxy's untrusted chat stream (`ResponseStream`). Never panics; a translated request is a
//! JSON object whose metadata the client reads like any chat body; every stream, however
//! broken, comes out as well-formed Responses events — each named by its type, numbered from
//! 0 without gaps, at most one terminal event and nothing after it — and a stream that
//! completed has its response object.
#![no_main]

use client::openai::responses::{translate, ResponseStream};
use client::openai::{RequestFields, StreamOut};
use libfuzzer_sys::fuzz_target;
use protocol::sse::Decoder;

const TERMINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

fuzz_target!(|data: &[u8]| {
    // Two bytes (big-endian) give the request's length; the stream follows it.
    let (len, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let (request, stream) = rest.split_at(len.min(rest.len()));
    let echo = match translate(request) {
        Ok(t) => {
            let v: serde_json::Value = serde_json::from_slice(&t.chat).expect("chat body is json");
            assert!(v.is_object());
            // The same metadata path a chat body takes: a clean answer either way.
            let _ = RequestFields::parse(&t.chat);
            t.echo
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            translate(br#"{"model":"m","input":"x"}"#)
                .expect("fixed request")
                .echo
        }
    };

    let mut s = ResponseStream::new(echo, "fuzz", true);
    let mut out = Vec::new();
    let mut d = Decoder::new(64 << 10);
    let split = stream.first().map_or(1, |b| usize::from(*b) % 61 + 1);
    for chunk in stream.chunks(split) {
        match d.feed(chunk) {
            Ok(events) => {
                for ev in &events {
                    out.extend(s.on_event(ev));
                }
            }
            Err(_) => break,
        }
    }
    out.extend(s.on_end());
    assert!(s.is_finished());
    assert_eq!(s.error().is_none(), s.response().is_some());

    let mut d = Decoder::new(usize::MAX);
    let events = d.feed(&out).expect("output decodes");
    assert!(!events.is_empty());
    for (i, ev) in events.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(&ev.data).expect("event data is json");
        let kind = v["type"].as_str().expect("type");
        assert_eq!(ev.name.as_deref(), Some(kind));
        assert_eq!(v["sequence_number"].as_u64(), Some(i as u64));
        assert_eq!(
            TERMINAL.contains(&kind),
            i == events.len() - 1,
            "{kind} at {i}"
        );
    }
    assert_eq!(events[0].name.as_deref(), Some("response.created"));
});
