//! cocoon-test-support: the simulated test network that the integration tests of the proxy,
//! the worker and the client share, so that each is set up once. A dev-dependency only (never
//! a dependency of a shipped crate); it may panic on setup failures, as tests do.
//!
//! * One simulated TDX platform ([`platform`], fixed seed) and its root ([`sim_root`]), with
//!   collateral issued for any time ([`collateral`]).
//! * The test TDs: [`worker_regs`], [`proxy_regs`], a debug worker and an unknown worker image;
//!   the policies that accept them ([`policy_for`], [`worker_policy`], [`proxy_policy`]).
//! * Their evidence: RA-TLS certificates ([`cert`], [`resolver`]), an opened simulated TEE
//!   ([`sim_tee`]) and a renewing [`ratls::Identity`] ([`identity`]).
//! * Files for service processes on the simulated TEE ([`write_sim_files`]).
//! * Raw HTTP/2 frames for attack tests that play a hostile peer ([`h2raw`]).
//! * The resident memory of a process ([`rss_kib`]), for tests that bound it.
//! * Time: [`NOW`] for tests on a fixed clock ([`fixed_clock`]), [`now`] for tests on the
//!   system clock, and [`wait_until`] for polling a condition.
//!
//! Everything here is accepted only under policies that name the simulated root; production
//! policy rejects it (`untrusted root`).

pub mod h2raw;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use attestation::config::OpenedTee;
use attestation::sim::{default_registers, SimPlatform, SimTdx};
use measurements::{Collateral, Policy, TdRegisters, TrustRoot};
use ratls::{CertResolver, Claims, Clock, FixedClock, Identity, IssuedCert, Role};

/// The fixed "now" of tests on a [`FixedClock`]: 2025-06-15T16:53:20Z.
pub const NOW: u64 = 1_750_000_000;
/// The name of the simulated root in test policies.
pub const SIM_ROOT_NAME: &str = "cocoon-simulated-root";
/// Lifetime of test certificates ([`ratls::cert::DEFAULT_LIFETIME`]).
pub const CERT_LIFETIME: Duration = ratls::cert::DEFAULT_LIFETIME;

/// The system time in Unix seconds (tests whose peers verify on the system clock).
pub fn now() -> u64 {
    ratls::SystemClock.now()
}

/// A settable clock at `now`.
pub fn fixed_clock(now: u64) -> Arc<FixedClock> {
    Arc::new(FixedClock::new(now))
}

/// The simulated platform (one per test process, from a fixed seed).
pub fn platform() -> Arc<SimPlatform> {
    static P: OnceLock<Arc<SimPlatform>> = OnceLock::new();
    P.get_or_init(|| Arc::new(SimPlatform::from_seed([7u8; 32]).expect("sim platform")))
        .clone()
}

/// The simulated root, as test policies pin it.
pub fn sim_root() -> TrustRoot {
    TrustRoot::new(SIM_ROOT_NAME, platform().root_ca_der().to_vec())
}

/// Collateral valid from an hour before `now` for 30 days.
pub fn collateral(now: u64) -> Collateral {
    Collateral::new(
        platform()
            .collateral(now.saturating_sub(3600), 30 * 86400)
            .expect("collateral"),
    )
    .expect("collateral parses")
}

/// Registers of a test TD whose image is named by `mrtd` (MRTD and RTMR1 differ).
pub fn regs(mrtd: u8) -> TdRegisters {
    let mut r = default_registers();
    r.mrtd = [mrtd; 48];
    r.rtmr[1] = [mrtd ^ 0x5a; 48];
    r
}

/// The test worker's TD.
pub fn worker_regs() -> TdRegisters {
    regs(0x11)
}

/// The test proxy's TD.
pub fn proxy_regs() -> TdRegisters {
    regs(0x22)
}

/// The worker's image with the DEBUG attribute set (refused by every policy).
pub fn debug_worker_regs() -> TdRegisters {
    let mut r = worker_regs();
    r.td_attributes[0] |= 1;
    r
}

/// A worker image no test policy allows.
pub fn unknown_worker_regs() -> TdRegisters {
    regs(0x33)
}

/// Accepts the image of `regs` on the simulated root.
pub fn policy_for(regs: &TdRegisters) -> Policy {
    Policy::simulated(sim_root()).with_images([regs.image_hash()])
}

/// What the proxy accepts from workers.
pub fn worker_policy() -> Policy {
    policy_for(&worker_regs())
}

/// What workers and clients accept from the proxy.
pub fn proxy_policy() -> Policy {
    policy_for(&proxy_regs())
}

/// The simulated TEE of a TD with `regs`, as a service opens it.
pub fn sim_tee(regs: TdRegisters) -> OpenedTee {
    OpenedTee {
        device: Arc::new(SimTdx::new(platform(), regs)),
        sim_platform: Some(platform()),
        collateral_source: None,
        gpu: None,
    }
}

/// A certificate for `role` (protocol version 1) from a TD with `regs`, issued at `now`, valid
/// for [`CERT_LIFETIME`], with collateral embedded.
pub fn cert(regs: TdRegisters, role: Role, now: u64) -> IssuedCert {
    ratls::issue(
        &SimTdx::new(platform(), regs),
        &Claims::new(role, 1),
        Some(&collateral(now)),
        now,
        CERT_LIFETIME,
    )
    .expect("issue")
}

/// [`cert`] with `claims` instead of the role's plain claims.
pub fn cert_with_claims(regs: TdRegisters, claims: &Claims, now: u64) -> IssuedCert {
    ratls::issue(
        &SimTdx::new(platform(), regs),
        claims,
        Some(&collateral(now)),
        now,
        CERT_LIFETIME,
    )
    .expect("issue")
}

/// A resolver serving [`cert`].
pub fn resolver(regs: TdRegisters, role: Role, now: u64) -> Arc<CertResolver> {
    Arc::new(CertResolver::new(&cert(regs, role, now)).expect("resolver"))
}

/// A service identity with `claims` from a TD with `regs`, on `clock`.
pub fn identity(
    regs: TdRegisters,
    claims: Claims,
    lifetime: Duration,
    clock: Arc<dyn Clock>,
) -> Arc<Identity> {
    Arc::new(Identity::issue(sim_tee(regs), claims, lifetime, clock).expect("identity"))
}

/// Writes what a service's `[tee] kind = "sim"` section and `[policy]` read into `dir`:
/// `sim-platform.json` (the platform), `registers_file` (`regs` as JSON) and `sim-root.der`.
pub fn write_sim_files(dir: &Path, registers_file: &str, regs: &TdRegisters) {
    std::fs::write(
        dir.join("sim-platform.json"),
        platform().export().to_json().expect("platform json"),
    )
    .expect("write sim-platform.json");
    std::fs::write(
        dir.join(registers_file),
        serde_json::to_string(regs).expect("registers json"),
    )
    .expect("write registers");
    std::fs::write(dir.join("sim-root.der"), platform().root_ca_der()).expect("write sim-root.der");
}

/// Polls `f` until it holds; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}
