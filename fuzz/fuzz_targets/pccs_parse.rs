//! What a PCCS answers (untrusted): issuer-chain headers are percent-decoded, signed members
//! are cut from response text, and the FMSPC is read from a quote's PCK certificate. None of
//! it may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ratls::pccs::percent_decode(data);
    let _ = ratls::pccs::crl_distribution_point(data);
    let _ = measurements::collateral::pck_identity(data);
    if let Ok(text) = std::str::from_utf8(data) {
        for key in ["tcbInfo", "enclaveIdentity", "signature", ""] {
            if let Some(raw) = ratls::pccs::raw_member(text, key) {
                assert!(text.contains(raw));
            }
        }
    }
});
