//! A well-formed, correctly self-signed RA-TLS certificate around fuzzer-chosen claims,
//! collateral JSON and quote bytes, through the verifier the TLS stack calls
//! (`PeerVerifier::verify`, as in `RaTlsServerVerifier` / `RaTlsClientVerifier`), under a
//! policy trusting the simulated root at a fixed time. Input format and quote modes:
//! `cocoon_fuzz::ratls_verify`. Never panics; a peer that passes carries exactly the input's
//! claims and collateral, and passes again from the attestation cache with the same evidence.
#![no_main]

use std::sync::OnceLock;

use cocoon_fuzz::ratls_verify::{Harness, Input};
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let h = HARNESS.get_or_init(Harness::new);
    let input = Input::parse(data);
    let Some(der) = h.certificate(&input) else {
        return;
    };
    let verifier = h.verifier();
    match verifier.verify(&der) {
        Ok(peer) => {
            assert_eq!(peer.evidence.claims_bytes, input.claims);
            let embedded = peer.evidence.collateral.as_ref().map(|(json, _)| json);
            assert_eq!(embedded, input.collateral.as_ref());
            assert!(!peer.cache_hit);
            let again = verifier.verify(&der).expect("passes again from the cache");
            assert!(again.cache_hit);
            assert_eq!(again.attestation, peer.attestation);
        }
        Err(e) => {
            let _ = (e.to_string(), e.rejection().map(|r| r.code()));
        }
    }
});
