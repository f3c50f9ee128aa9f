//! Collateral JSON parsing (untrusted: it may come from any PCCS or the peer): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = measurements::Collateral::from_json(data) {
        let _ = c.expires_at();
        let _ = c.to_json();
    }
});
