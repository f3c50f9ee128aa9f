//! Signed manifest parsing, canonicalization and verification: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measurements::manifest::SignedManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = SignedManifest::from_json(data) {
        let _ = m.signed_bytes();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&[
            0x3d, 0x40, 0x17, 0xc3, 0xe8, 0x43, 0x89, 0x5a, 0x92, 0xb7, 0x0a, 0xa7, 0x4d, 0x1b,
            0x7e, 0xbc, 0x9c, 0x98, 0x2c, 0xcf, 0x2e, 0xc4, 0x96, 0x8c, 0xc0, 0xcd, 0x55, 0xf1,
            0x2a, 0xf4, 0x66, 0x0c,
        ]);
        if let Ok(key) = key {
            let _ = m.verify(&[key]);
        }
    }
});
