//! RA-TLS peer certificate parsing (bytes straight from a TLS peer): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = ratls::evidence::parse_cert(data) {
        let _ = ev.expected_report_data();
        let _ = ev.check_validity(1_760_000_000);
    }
});
