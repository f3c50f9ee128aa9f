//! SSE decoding of untrusted streams (worker → proxy, proxy → client, upstream → worker),
//! fed in arbitrary chunkings: never panics, never exceeds its event-size bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::sse::Decoder;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|b| *b as usize % 17 + 1).unwrap_or(1);
    let mut d = Decoder::new(4096);
    for chunk in data.chunks(split) {
        match d.feed(chunk) {
            Ok(events) => {
                for e in events {
                    assert!(e.data.len() <= 4096 + 16);
                }
            }
            Err(_) => break,
        }
    }
});
