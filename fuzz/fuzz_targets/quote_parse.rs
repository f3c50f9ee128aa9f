//! Quote parsing and the pre-verification steps on arbitrary bytes: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measurements::quote::{decode_quote_input, ParsedQuote};

fuzz_target!(|data: &[u8]| {
    let _ = ParsedQuote::parse(data);
    let _ = measurements::verify::embedded_chain(data);
    if let Ok(bytes) = decode_quote_input(data, true) {
        let _ = ParsedQuote::parse(&bytes);
    }
});
