//! A panic in a verification that a peer triggers must end that peer's task, never the service:
//! the shipped profiles unwind (so tokio catches a panicking task), and the verifier's shared
//! state stays usable after a panic inside it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use measurements::Collateral;
use ratls::verify::CollateralSource;
use ratls::{PeerVerifier, Role};

/// A collateral source that panics on its first use, as a parser bug reachable by a peer would.
#[derive(Debug)]
struct PanicsOnce {
    fired: AtomicBool,
    then: Collateral,
}

impl CollateralSource for PanicsOnce {
    fn collateral_for(&self, _quote: &[u8]) -> Result<Collateral, String> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            panic!("simulated parser bug reached by a peer");
        }
        Ok(self.then.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_verification_ends_only_its_task() {
    let verifier = Arc::new(
        PeerVerifier::new(policy(), clock(NOW)).with_collateral_source(Arc::new(PanicsOnce {
            fired: AtomicBool::new(false),
            then: fixture().collateral.clone(),
        })),
    );
    let cert = cert_with(registers(), Role::Worker, None).cert_der;
    let v = verifier.clone();
    let c = cert.clone();
    let first = tokio::spawn(async move { v.verify(&c).map(|_| ()) }).await;
    assert!(
        first.unwrap_err().is_panic(),
        "the task panicked and was caught"
    );
    // The same verifier (its cache and memo mutexes included) serves the next peer.
    let v = verifier.clone();
    let second = tokio::spawn(async move { v.verify(&cert).map(|p| p.image_hash()) }).await;
    assert_eq!(second.unwrap().unwrap(), registers().image_hash());
}

/// The shipped profiles must unwind: with `panic = "abort"` the panic above would kill the
/// whole process (and cocoon-init would power the guest off after its restart budget).
#[test]
fn shipped_profiles_unwind() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .expect("workspace manifest");
    let doc: toml::Table = manifest.parse().expect("workspace manifest parses");
    let profiles = doc["profile"].as_table().expect("[profile]");
    for name in ["release", "dist"] {
        let p = profiles[name].as_table().expect(name);
        assert_eq!(
            p.get("panic").and_then(|v| v.as_str()),
            Some("unwind"),
            "profile {name} must set panic = \"unwind\""
        );
    }
}

/// Regression: secrets in memory (account seed, certificate private keys) were not zeroized on
/// drop. The marker trait is implemented only by types whose `Drop` overwrites them.
#[test]
fn secret_holders_zeroize_on_drop() {
    fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroizes_on_drop::<ratls::account::AccountKey>();
    zeroizes_on_drop::<ratls::IssuedCert>();
}
