//! The GPU evidence bundle of an RA-TLS certificate on arbitrary bytes (untrusted: any peer
//! writes it): the canonical binary parser, then the certificate-level check (claims hash,
//! nonce of the key, every GPU's chain, signature and measurements) against a fixed simulated
//! root (OCSP responses in a version 2 bundle judged at the same time). Never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use measurements::gpu::bundle::{digest_hex, verify_certificate_bundle, GpuBundle};
use measurements::gpu::sim::{SimGpu, SimNvidiaRoot};
use measurements::gpu::GpuPolicy;

fn policy() -> &'static GpuPolicy {
    static P: OnceLock<GpuPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let sim = SimNvidiaRoot::from_seed([9; 32]).expect("simulated root");
        let gpu = SimGpu::new("550.127.05", "96.00.9F.00.01", "fuzz-bundle");
        GpuPolicy::new(
            vec![sim.trust_root().expect("simulated root der")],
            gpu.reference_values(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = GpuBundle::parse(data) {
        // Canonical: what parses re-encodes to the same bytes.
        assert_eq!(bundle.encode().ok().as_deref(), Some(data));
    }
    let claimed = digest_hex(data);
    let _ = verify_certificate_bundle(
        Some(data),
        Some(&claimed),
        b"fuzz spki",
        1_800_000_000,
        policy(),
    );
});
