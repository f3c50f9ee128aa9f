//! GPU evidence on arbitrary bytes (untrusted: the host relays it): the SPDM report parser, the
//! hex/raw input decoder, the PEM chain parser, OCSP responses, and full verification of a
//! fuzzed report against a fixed simulated chain. Never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use measurements::gpu::report::{decode_report_input, GpuReport};
use measurements::gpu::sim::{SimGpu, SimNvidiaRoot};
use measurements::gpu::{self, GpuEvidence, GpuPolicy, OcspEvidence};

struct Fixture {
    chain_pem: Vec<u8>,
    policy: GpuPolicy,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let sim = SimNvidiaRoot::from_seed([9; 32]).expect("simulated root");
        let gpu = SimGpu::new("570.133.20", "96.00.CF.00.01", "fuzz");
        let (_, pem) = sim.evidence(&gpu, &[0; 32]).expect("simulated evidence");
        let mut policy = GpuPolicy::production(gpu.reference_values());
        policy.roots = vec![sim.trust_root().expect("simulated root der")];
        Fixture {
            chain_pem: pem.into_bytes(),
            policy,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = GpuReport::parse(data) {
        let _ = r.opaque_text(gpu::report::opaque_type::PROJECT);
    }
    if let Ok(bytes) = decode_report_input(data) {
        let _ = GpuReport::parse(&bytes);
    }
    let _ = gpu::chain::parse_pem_chain(data);
    let f = fixture();
    // The fuzzed bytes as the report, then as an OCSP response, through the verifier.
    let ev = GpuEvidence {
        report: data.to_vec(),
        chain_pem: f.chain_pem.clone(),
        ocsp: None,
    };
    let _ = gpu::verify_gpu(&ev, &[0; 32], 1_800_000_000, &f.policy);
    if let Ok(certs) = gpu::chain::parse_pem_chain(&f.chain_pem) {
        let ocsp = OcspEvidence {
            responses: vec![data.to_vec()],
            at: 1_800_000_000,
        };
        let _ = gpu::ocsp::check_chain_ocsp(&certs, &ocsp, Some(86_400));
    }
});
