//! The registers a built image is expected to measure to, per platform.
//!
//! * `tdx`: the TDVF direct-kernel boot path. MRTD from the firmware file
//!   (`measurements::tdvf`), RTMR0 pinned from a real boot's event log (ACPI tables and TD HOB
//!   are QEMU's), RTMR1 from the kernel (Authenticode of the image as QEMU patches it) and the
//!   fixed firmware events, RTMR2 from the command line and the initrd (`measurements::boot`).
//! * `sim` (QEMU TCG, no TDVF): MRTD and RTMR0 are fixed, documented constants of the simulated
//!   platform (SHA-384 of a domain tag); RTMR1 and RTMR2 are computed exactly as for `tdx`, so
//!   the kernel, initrd and command line are covered the same way. TD attributes and XFAM are the
//!   simulated platform's defaults (SEPT_VE_DISABLE set, debug clear).

use std::collections::BTreeMap;

use measurements::boot::qemu::HeaderPatching;
use measurements::boot::{ExpectedBoot, TdvfProfile};
use measurements::registers::Sha384;
use measurements::TdRegisters;
use sha2::Digest;

/// cocoon requires QEMU >= 10.1 on TDX hosts, which hands a confidential guest's kernel to the
/// firmware unpatched: RTMR1 covers the kernel file as built, independent of guest memory.
pub const HEADER_PATCHING: HeaderPatching = HeaderPatching::Unpatched;

/// Which platform the registers are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    Sim,
    Tdx,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sim => "sim",
            Self::Tdx => "tdx",
        }
    }
}

/// The VM parameters that reach the measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmShape {
    /// Guest memory in bytes.
    pub memory: u64,
}

/// Domain tag of the simulated platform's MRTD.
pub const SIM_MRTD_TAG: &[u8] = b"cocoon/sim-tcg/mrtd/v1\0";
/// Domain tag of the simulated platform's RTMR0.
pub const SIM_RTMR0_TAG: &[u8] = b"cocoon/sim-tcg/rtmr0/v1\0";

fn tag_digest(tag: &[u8]) -> Sha384 {
    sha2::Sha384::digest(tag).into()
}

/// Parses a guest memory size (`2G`, `512M`; [`measurements::memory::parse_memory_size`])
/// into bytes, at least 64 MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = measurements::memory::parse_memory_size(s).map_err(|e| e.to_string())?;
    if bytes < 64 << 20 {
        return Err(format!("memory size {s:?}: at least 64M"));
    }
    Ok(bytes)
}

/// Expected registers and, per register, where its value comes from.
pub fn expected(
    platform: Platform,
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
    shape: &VmShape,
    firmware: Option<&[u8]>,
    rtmr0: Option<&str>,
) -> anyhow::Result<(TdRegisters, BTreeMap<String, String>)> {
    let mut sources = BTreeMap::new();
    let mut regs = TdRegisters {
        td_attributes: attestation::sim::DEFAULT_TD_ATTRIBUTES,
        xfam: attestation::sim::DEFAULT_XFAM,
        ..TdRegisters::ZERO
    };
    let (rtmr1, rtmr2) = boot_registers(kernel, initrd, cmdline, shape)?;
    regs.rtmr[1] = rtmr1;
    regs.rtmr[2] = rtmr2;
    sources.insert(
        "rtmr1".into(),
        "computed: kernel (as QEMU patches it) + TDVF boot events".into(),
    );
    sources.insert(
        "rtmr2".into(),
        "computed: kernel command line + initrd".into(),
    );
    sources.insert(
        "rtmr3".into(),
        "runtime: config events, checked by replaying the RTMR3 log".into(),
    );
    match platform {
        Platform::Sim => {
            regs.mrtd = tag_digest(SIM_MRTD_TAG);
            regs.rtmr[0] = tag_digest(SIM_RTMR0_TAG);
            sources.insert(
                "mrtd".into(),
                "sim constant: SHA-384(\"cocoon/sim-tcg/mrtd/v1\\0\")".into(),
            );
            sources.insert(
                "rtmr0".into(),
                "sim constant: SHA-384(\"cocoon/sim-tcg/rtmr0/v1\\0\")".into(),
            );
        }
        Platform::Tdx => {
            let fw = firmware.ok_or_else(|| anyhow::anyhow!("--platform tdx needs --firmware"))?;
            regs.mrtd =
                measurements::tdvf::compute_mrtd(fw, measurements::tdvf::PageAddOrder::SinglePass)
                    .map_err(|e| anyhow::anyhow!("firmware: {e}"))?;
            sources.insert(
                "mrtd".into(),
                "computed: TDVF metadata, single-pass page add (upstream QEMU/KVM TDX, QEMU >= 10.1)".into(),
            );
            let r0 = rtmr0.ok_or_else(|| {
                anyhow::anyhow!("--platform tdx needs --rtmr0 (pin it from `cocoon-measure eventlog replay` of a real boot)")
            })?;
            regs.rtmr[0] = measurements::parse_hex_array::<48>(r0, "rtmr0")?;
            sources.insert(
                "rtmr0".into(),
                "pinned: event-log replay of a real boot".into(),
            );
        }
    }
    Ok((regs, sources))
}

/// RTMR1 and RTMR2 of the TDVF direct-kernel boot of these artifacts.
pub fn boot_registers(
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
    shape: &VmShape,
) -> anyhow::Result<(Sha384, Sha384)> {
    let boot = ExpectedBoot::from_artifacts(
        kernel,
        Some(initrd),
        cmdline,
        shape.memory,
        HEADER_PATCHING,
        TdvfProfile::default(),
    )
    .map_err(|e| anyhow::anyhow!("kernel: {e}"))?;
    Ok((boot.rtmr1(), boot.rtmr2()))
}
