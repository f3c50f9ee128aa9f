//! SSE decoding of untrusted streams (worker → proxy, proxy → client, upstream → worker),
//! fed in arbitrary chunkings: never panics, never exceeds its event-size bound. The proxy's
//! relay splitter, fed the same chunks, passes on a prefix of the input that decodes to the
//! same events; each whole event it hands over for billing reads, by `sse::event_data`, as
//! the decoder reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::sse::split::Kind;
use protocol::sse::{event_data, Decoder, Splitter};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|b| *b as usize % 17 + 1).unwrap_or(1);
    let mut d = Decoder::new(4096);
    let mut decoded = Some(Vec::new());
    for chunk in data.chunks(split) {
        match d.feed(chunk) {
            Ok(events) => {
                for e in &events {
                    assert!(e.data.len() <= 4096 + 16);
                }
                if let Some(all) = decoded.as_mut() {
                    all.extend(events);
                }
            }
            Err(_) => {
                decoded = None;
                break;
            }
        }
    }
    let mut s = Splitter::new(4096);
    let mut relayed = Vec::new();
    let mut split_ok = true;
    for chunk in data.chunks(split) {
        let fed = s.feed(chunk, |kind, b| {
            relayed.extend_from_slice(b);
            if kind != Kind::Plain {
                // A whole event handed over for billing: its data as the decoder reads it.
                let want = Decoder::new(1 << 20)
                    .feed(b)
                    .ok()
                    .and_then(|evs| evs.into_iter().next())
                    .map(|e| e.data);
                assert_eq!(event_data(b).map(|d| d.into_owned()), want);
            }
        });
        if fed.is_err() {
            split_ok = false;
            break;
        }
    }
    assert!(data.starts_with(&relayed));
    if let (true, Some(want)) = (split_ok, decoded) {
        let got = Decoder::new(1 << 20).feed(&relayed).expect("relayed bytes decode");
        assert_eq!(got, want);
    }
});
