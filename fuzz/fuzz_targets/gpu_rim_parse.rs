//! NVIDIA RIM XML (untrusted): the strict XML reader, the RIM parser, the reference-set builder
//! and the XML signature verifier (canonicalization, digest, signature, chain). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measurements::gpu::rim::{self, Rim};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = measurements::gpu::xml::parse(text);
        let roots = [measurements::gpu::xmldsig::nvidia_corim_root()];
        let _ = measurements::gpu::xmldsig::verify_rim_signature(text, 1_758_412_800, &roots);
        if let Ok(r) = Rim::parse(text) {
            let _ = rim::reference_set(&[r.clone(), r]);
        }
    }
});
