//! Measurement registers of the local (process-based) network, derived from the role binaries.
//!
//! With `launch --local` the launcher plays the TDX module: each role runs as a plain process on
//! the simulated platform, and its "TD" registers are derived from the binary it runs, so that
//! rebuilding a binary changes its image hash (and a peer pinning the old hash refuses it):
//!
//! ```text
//! MRTD    = SHA-384("cocoon-local-mrtd/v1\0"  || role || SHA-256(binary bytes))
//! RTMR[i] = SHA-384("cocoon-local-rtmr<i>/v1\0" || role || SHA-256(binary bytes))   i = 0, 1, 2
//! RTMR3   = 0 (runtime events), TD attributes and XFAM = attestation::sim::default_registers()
//! ```
//! `role` is `proxy` or `worker`; the digest has a fixed length, so the encoding is injective.
//! These are *not* the registers of a real TD image (those come from the image builder); they
//! only give the local network distinct, binary-bound identities. Pure: bytes in, registers out.

use attestation::sim::default_registers;
use measurements::{ImageHash, TdRegisters};
use sha2::{Digest, Sha256, Sha384};

/// Domain tag of the derived MRTD.
pub const MRTD_TAG: &[u8] = b"cocoon-local-mrtd/v1\0";

/// The role of a process of the local network that runs as a simulated TD (worker or proxy;
/// the one definition, in `protocol`).
pub use protocol::Role;

/// Domain tag of derived RTMR `i`.
pub fn rtmr_tag(i: usize) -> Vec<u8> {
    format!("cocoon-local-rtmr{i}/v1\0").into_bytes()
}

fn measure(tag: &[u8], role: Role, binary_sha256: &[u8; 32]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(tag);
    h.update(role.as_str().as_bytes());
    h.update(binary_sha256);
    h.finalize().into()
}

/// The SHA-256 of a binary's bytes.
pub fn binary_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The registers of `role` running the binary whose SHA-256 is `binary_sha256`.
pub fn derive(role: Role, binary_sha256: &[u8; 32]) -> TdRegisters {
    let mut r = default_registers();
    r.mrtd = measure(MRTD_TAG, role, binary_sha256);
    for (i, rtmr) in r.rtmr.iter_mut().take(3).enumerate() {
        *rtmr = measure(&rtmr_tag(i), role, binary_sha256);
    }
    r
}

/// Registers and image hash of one role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleMeasurement {
    pub role: Role,
    pub binary_sha256: [u8; 32],
    pub registers: TdRegisters,
    pub image_hash: ImageHash,
}

impl RoleMeasurement {
    pub fn new(role: Role, binary_sha256: [u8; 32]) -> Self {
        let registers = derive(role, &binary_sha256);
        Self {
            role,
            binary_sha256,
            image_hash: registers.image_hash(),
            registers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bound_to_role_and_binary() {
        let a = binary_digest(b"binary a");
        let b = binary_digest(b"binary b");
        assert_eq!(derive(Role::Worker, &a), derive(Role::Worker, &a));
        let w = RoleMeasurement::new(Role::Worker, a);
        let p = RoleMeasurement::new(Role::Proxy, a);
        let w2 = RoleMeasurement::new(Role::Worker, b);
        assert_ne!(w.image_hash, p.image_hash);
        assert_ne!(w.image_hash, w2.image_hash);
        assert_ne!(w.registers.mrtd, w2.registers.mrtd);
        for i in 0..3 {
            assert_ne!(w.registers.rtmr[i], p.registers.rtmr[i]);
            assert_ne!(w.registers.rtmr[i], w.registers.mrtd);
        }
        assert_eq!(w.registers.rtmr[3], [0u8; 48]);
        assert_eq!(w.registers.td_attributes, default_registers().td_attributes);
        assert_eq!(w.registers.xfam, default_registers().xfam);
    }

    #[test]
    fn mrtd_matches_the_documented_formula() {
        let d = binary_digest(b"x");
        let mut pre = b"cocoon-local-mrtd/v1\0proxy".to_vec();
        pre.extend_from_slice(&d);
        let expected: [u8; 48] = Sha384::digest(&pre).into();
        assert_eq!(derive(Role::Proxy, &d).mrtd, expected);
        let mut pre = b"cocoon-local-rtmr2/v1\0worker".to_vec();
        pre.extend_from_slice(&d);
        let expected: [u8; 48] = Sha384::digest(&pre).into();
        assert_eq!(derive(Role::Worker, &d).rtmr[2], expected);
    }

    #[test]
    fn debug_bit_is_clear() {
        let r = derive(Role::Proxy, &[0; 32]);
        assert_eq!(
            r.td_attributes_u64() & measurements::registers::TD_ATTR_DEBUG,
            0
        );
    }
}
