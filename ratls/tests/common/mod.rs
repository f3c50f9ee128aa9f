//! Shared fixtures: a simulated platform, TDs on it, certificates and policies.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use attestation::sim::{default_registers, SimPlatform, SimTdx};
use attestation::TeeDevice;
use measurements::{Collateral, ImageHash, Policy, TdRegisters, TrustRoot};
use ratls::cert::{assemble, CertKey};
use ratls::{
    client_config, issue, server_config, CertResolver, Claims, Clock, FixedClock, IssuedCert,
    PeerVerifier, RaTlsClientVerifier, RaTlsServerVerifier, Role,
};

/// The fixed "now" of every test: 2025-06-15T16:53:20Z.
pub const NOW: u64 = 1_750_000_000;

pub struct Fixture {
    pub platform: Arc<SimPlatform>,
    /// Collateral valid from an hour before `NOW` for 30 days.
    pub collateral: Collateral,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let platform = Arc::new(SimPlatform::from_seed([42u8; 32]).expect("sim platform"));
        let collateral = collateral_window(&platform, NOW - 3600, 30 * 86400);
        Fixture {
            platform,
            collateral,
        }
    })
}

pub fn collateral_window(platform: &SimPlatform, issued_at: u64, valid_for: u64) -> Collateral {
    Collateral::new(
        platform
            .collateral(issued_at, valid_for)
            .expect("collateral"),
    )
    .expect("collateral parses")
}

/// Registers of a well-formed production-like TD (no debug).
pub fn registers() -> TdRegisters {
    let mut r = default_registers();
    r.mrtd = [0x11; 48];
    r.rtmr[0] = [0x22; 48];
    r.rtmr[1] = [0x33; 48];
    r.rtmr[2] = [0x44; 48];
    r
}

/// The same TD with the DEBUG attribute set.
pub fn debug_registers() -> TdRegisters {
    let mut r = registers();
    r.td_attributes[0] |= 1;
    r
}

pub fn tee(regs: TdRegisters) -> SimTdx {
    SimTdx::new(fixture().platform.clone(), regs)
}

pub fn sim_root() -> TrustRoot {
    TrustRoot::new("sim", fixture().platform.root_ca_der().to_vec())
}

/// The policy that accepts [`registers`] on the simulated platform.
pub fn policy() -> Policy {
    Policy::simulated(sim_root()).with_images([registers().image_hash()])
}

pub fn other_image_policy() -> Policy {
    Policy::simulated(sim_root()).with_images([ImageHash([0x99; 32])])
}

/// A certificate for `role` from a TD with `regs`, collateral embedded.
pub fn cert(regs: TdRegisters, role: Role) -> IssuedCert {
    cert_with(regs, role, Some(&fixture().collateral))
}

pub fn cert_with(regs: TdRegisters, role: Role, collateral: Option<&Collateral>) -> IssuedCert {
    let claims = Claims::new(role, 1).with_extra("test", "yes");
    issue(
        &tee(regs),
        &claims,
        collateral,
        NOW,
        Duration::from_secs(6 * 3600),
    )
    .expect("issue")
}

/// A certificate whose quote was made for a different key (a quote lifted from another cert).
pub fn lifted_quote_cert(role: Role) -> IssuedCert {
    let claims_bytes = Claims::new(role, 1).to_canonical_json().unwrap();
    let original = CertKey::generate().unwrap();
    let quote = tee(registers())
        .quote(&original.report_data(&claims_bytes))
        .unwrap();
    let thief = CertKey::generate().unwrap();
    let json = fixture().collateral.to_json();
    assemble(
        &thief,
        &quote,
        &claims_bytes,
        Some(&json),
        NOW,
        Duration::from_secs(3600),
    )
    .unwrap()
}

pub fn clock(now: u64) -> Arc<FixedClock> {
    Arc::new(FixedClock::new(now))
}

pub fn verifier(policy: Policy, clock: Arc<dyn Clock>) -> Arc<PeerVerifier> {
    Arc::new(PeerVerifier::new(policy, clock))
}

/// Both ends of a mutual RA-TLS connection.
pub struct Ends {
    pub client: rustls::ClientConfig,
    pub server: rustls::ServerConfig,
    /// Verifies the server (used by the client).
    pub client_side: Arc<PeerVerifier>,
    /// Verifies the client (used by the server).
    pub server_side: Arc<PeerVerifier>,
    pub client_resolver: Arc<CertResolver>,
    pub server_resolver: Arc<CertResolver>,
}

/// Mutual configs: the client presents `client_cert` and checks the server with
/// `client_policy`; the server presents `server_cert` and checks the client with
/// `server_policy`. Both verifiers read `clock`.
pub fn ends(
    client_cert: &IssuedCert,
    server_cert: &IssuedCert,
    client_policy: Policy,
    server_policy: Policy,
    clock: Arc<dyn Clock>,
) -> Ends {
    let client_side = verifier(client_policy, clock.clone());
    let server_side = verifier(server_policy, clock);
    let client_resolver = Arc::new(CertResolver::new(client_cert).unwrap());
    let server_resolver = Arc::new(CertResolver::new(server_cert).unwrap());
    let client = client_config(
        Some(client_resolver.clone()),
        Arc::new(RaTlsServerVerifier::new(client_side.clone())),
        &[b"h2"],
    )
    .unwrap();
    let server = server_config(
        server_resolver.clone(),
        Some(Arc::new(RaTlsClientVerifier::new(server_side.clone()))),
        &[b"h2"],
    )
    .unwrap();
    Ends {
        client,
        server,
        client_side,
        server_side,
        client_resolver,
        server_resolver,
    }
}
