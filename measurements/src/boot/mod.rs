//! Expected RTMR1 and RTMR2 of a TD booted by QEMU direct kernel boot through TDVF (OVMF).
//!
//! Pure: digests and byte slices in, registers and event lists out. See `docs/measurements.md`
//! for what each register covers; in short, on this boot path:
//!
//! RTMR1 (PCR 4 and 5 mapped by TDVF, UEFI 2.10 §38.4.1: MR index 2):
//! 1. `EV_EFI_BOOT_SERVICES_APPLICATION`: Authenticode SHA-384 of the kernel file as OVMF's
//!    QemuKernelLoaderFsDxe serves it, i.e. after QEMU's setup-header edits ([`qemu`]);
//! 2. `EV_EFI_ACTION` "Calling EFI Application from Boot Option" (edk2 `OnReadyToBoot`);
//! 3. `EV_SEPARATOR` of four zero bytes, which current edk2 extends into RTMR1 right after
//!    (older TDVF builds extended this second separator into RTMR0: [`TdvfProfile`]);
//! 4. `EV_EFI_ACTION` "Exit Boot Services Invocation" and
//! 5. `EV_EFI_ACTION` "Exit Boot Services Returned with Success" (edk2 `OnExitBootServices`).
//!
//! RTMR2 (PCR 9: the Linux EFI stub measures through the CC measurement protocol):
//! 1. `EV_EVENT_TAG` "LOADED_IMAGE::LoadOptions" (tag 0x8f3b22ed): SHA-384 of the LoadOptions
//!    buffer OVMF builds from the QEMU `-append` string ([`load_options`]);
//! 2. `EV_EVENT_TAG` "Linux initrd" (tag 0x8f3b22ec): SHA-384 of the initrd bytes.
//!
//! The fixed events' digests are computed here from their event data (SHA-384 of the ASCII
//! string, without NUL, or of the separator's four bytes), exactly as the firmware hashes them.
//! Checked against a real quote and its event log in `tests/boot.rs`.
//!
//! Not derivable from boot artifacts, and therefore not here: RTMR0 (TD HOB, QEMU's ACPI tables
//! and UEFI variables) and RTMR3 (runtime).

pub mod authenticode;
pub mod qemu;

use sha2::{Digest, Sha384 as Sha384Hasher};

pub use authenticode::{authenticode_sha384, PeError};
pub use qemu::{qemu_patch_setup_header, HeaderPatching, QemuBootParams, QemuPatchError};

use crate::registers::Sha384;

/// TCG `EV_SEPARATOR`.
pub const EV_SEPARATOR: u32 = 0x4;
/// TCG `EV_EVENT_TAG`.
pub const EV_EVENT_TAG: u32 = 0x6;
/// TCG `EV_EFI_BOOT_SERVICES_APPLICATION`.
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// TCG `EV_EFI_ACTION`.
pub const EV_EFI_ACTION: u32 = 0x8000_0007;

/// edk2 `EFI_CALLING_EFI_APPLICATION`.
pub const CALLING_EFI_APPLICATION: &str = "Calling EFI Application from Boot Option";
/// edk2 `EFI_EXIT_BOOT_SERVICES_INVOCATION`.
pub const EXIT_BOOT_SERVICES_INVOCATION: &str = "Exit Boot Services Invocation";
/// edk2 `EFI_EXIT_BOOT_SERVICES_SUCCEEDED`.
pub const EXIT_BOOT_SERVICES_SUCCEEDED: &str = "Exit Boot Services Returned with Success";
/// The separator event's data (a 32-bit zero).
pub const SEPARATOR_DATA: [u8; 4] = [0; 4];
/// Linux EFI stub tag id of the "LOADED_IMAGE::LoadOptions" event.
pub const LOAD_OPTIONS_EVENT_TAG_ID: u32 = 0x8f3b_22ed;
/// Linux EFI stub tag id of the "Linux initrd" event.
pub const INITRD_EVENT_TAG_ID: u32 = 0x8f3b_22ec;

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> Sha384 {
    Sha384Hasher::digest(data).into()
}

/// `RTMR_new = SHA-384(RTMR_old || digest)`.
pub fn extend(register: &Sha384, digest: &Sha384) -> Sha384 {
    let mut h = Sha384Hasher::new();
    h.update(register);
    h.update(digest);
    h.finalize().into()
}

/// One expected event of the boot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEvent {
    /// RTMR index (1 or 2); the CC event log calls it MR index `rtmr + 1`.
    pub rtmr: u8,
    pub event_type: u32,
    pub digest: Sha384,
    /// What the event is and where its digest comes from.
    pub description: String,
}

/// Replays `events` from the zero register (all events must target the same RTMR).
pub fn replay(events: &[BootEvent]) -> Sha384 {
    events
        .iter()
        .fold([0u8; 48], |reg, e| extend(&reg, &e.digest))
}

/// Where OVMF puts the `initrd=initrd` argument it adds to the LoadOptions when QEMU has an
/// initrd (edk2 OvmfPkg/Library/X86QemuLoadImageLib `QemuLoadKernelImage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitrdArg {
    /// `"<cmdline> initrd=initrd"`: edk2 before QEMU `-shim` support (2025); the real vector's
    /// OVMF (dstack "pre202505").
    #[default]
    Append,
    /// `"initrd=initrd <cmdline>"`: edk2 with QEMU `-shim` support.
    Prefix,
}

/// TDVF behaviour that differs between edk2 versions and cannot be read from the artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvfProfile {
    /// Current edk2 extends the ReadyToBoot separator into RTMR1 (`CC_MR_INDEX_2_RTMR1`);
    /// older TDVF builds extended it into RTMR0 (seen in the trustee `CCEL_data_ovmf` log).
    /// Default: `true`, as in the real vector.
    pub separator_in_rtmr1: bool,
    /// Default: [`InitrdArg::Append`].
    pub initrd_arg: InitrdArg,
}

impl Default for TdvfProfile {
    fn default() -> Self {
        Self {
            separator_in_rtmr1: true,
            initrd_arg: InitrdArg::Append,
        }
    }
}

/// The EFI LoadOptions buffer OVMF hands the kernel for QEMU's `-append` string, `None` when
/// it is empty (no cmdline and no initrd: OVMF then sets no LoadOptions and the stub measures
/// nothing).
///
/// QEMU passes the cmdline as a NUL-terminated C string; OVMF drops the NUL, adds the initrd
/// argument ([`InitrdArg`]), and prints it with `UnicodeSPrintAsciiFormat`, which widens each
/// byte to a 16-bit code unit (UTF-16LE for ASCII), followed by a 16-bit NUL. The Linux stub
/// hashes all `LoadOptionsSize` bytes, terminator included.
pub fn load_options(cmdline: &str, has_initrd: bool, arg: InitrdArg) -> Option<Vec<u8>> {
    let c = cmdline.as_bytes();
    let c = &c[..c.iter().position(|&b| b == 0).unwrap_or(c.len())];
    let text: Vec<u8> = match (has_initrd, arg) {
        (false, _) => c.to_vec(),
        (true, InitrdArg::Append) => [c, b" initrd=initrd"].concat(),
        (true, InitrdArg::Prefix) => [b"initrd=initrd ", c].concat(),
    };
    if text.is_empty() {
        return None;
    }
    let mut out: Vec<u8> = text.iter().flat_map(|&b| [b, 0]).collect();
    out.extend_from_slice(&[0, 0]);
    Some(out)
}

/// The five RTMR1 events (four with `separator_in_rtmr1 = false`).
pub fn rtmr1_events(kernel_authenticode: &Sha384, tdvf: &TdvfProfile) -> Vec<BootEvent> {
    let action = |s: &str| BootEvent {
        rtmr: 1,
        event_type: EV_EFI_ACTION,
        digest: sha384(s.as_bytes()),
        description: format!("EV_EFI_ACTION {s:?}"),
    };
    let mut events = vec![
        BootEvent {
            rtmr: 1,
            event_type: EV_EFI_BOOT_SERVICES_APPLICATION,
            digest: *kernel_authenticode,
            description: "kernel: Authenticode SHA-384 of the (QEMU-patched) bzImage".into(),
        },
        action(CALLING_EFI_APPLICATION),
    ];
    if tdvf.separator_in_rtmr1 {
        events.push(BootEvent {
            rtmr: 1,
            event_type: EV_SEPARATOR,
            digest: sha384(&SEPARATOR_DATA),
            description: "EV_SEPARATOR 00000000".into(),
        });
    }
    events.push(action(EXIT_BOOT_SERVICES_INVOCATION));
    events.push(action(EXIT_BOOT_SERVICES_SUCCEEDED));
    events
}

/// RTMR2 events from the LoadOptions and initrd digests (each event is absent when the stub
/// has nothing to measure).
pub fn rtmr2_events(
    load_options_sha384: Option<&Sha384>,
    initrd_sha384: Option<&Sha384>,
) -> Vec<BootEvent> {
    let mut events = Vec::new();
    if let Some(d) = load_options_sha384 {
        events.push(BootEvent {
            rtmr: 2,
            event_type: EV_EVENT_TAG,
            digest: *d,
            description: "EV_EVENT_TAG LOADED_IMAGE::LoadOptions: SHA-384 of the UTF-16 cmdline"
                .into(),
        });
    }
    if let Some(d) = initrd_sha384 {
        events.push(BootEvent {
            rtmr: 2,
            event_type: EV_EVENT_TAG,
            digest: *d,
            description: "EV_EVENT_TAG Linux initrd: SHA-384 of the initrd".into(),
        });
    }
    events
}

/// Expected RTMR1 for a kernel Authenticode digest.
pub fn rtmr1(kernel_authenticode: &Sha384, tdvf: &TdvfProfile) -> Sha384 {
    replay(&rtmr1_events(kernel_authenticode, tdvf))
}

/// Expected RTMR2 for a QEMU `-append` string and an initrd, with the default
/// [`TdvfProfile`] (initrd argument appended).
pub fn rtmr2(cmdline: &str, initrd_sha384: &Sha384) -> Sha384 {
    let opts = load_options(cmdline, true, InitrdArg::default()).map(|o| sha384(&o));
    replay(&rtmr2_events(opts.as_ref(), Some(initrd_sha384)))
}

/// A kernel that cannot be measured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("qemu direct boot: {0}")]
    Qemu(#[from] QemuPatchError),
    #[error("kernel pe image: {0}")]
    Pe(#[from] PeError),
}

/// The RTMR1 digest of `kernel` booted with `params`: Authenticode SHA-384 of the image after
/// [`qemu_patch_setup_header`].
pub fn kernel_measurement(kernel: &[u8], params: &QemuBootParams) -> Result<Sha384, KernelError> {
    let mut patched = kernel.to_vec();
    qemu_patch_setup_header(&mut patched, params)?;
    Ok(authenticode_sha384(&patched)?)
}

/// How the cmdline is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineInput {
    /// The QEMU `-append` string.
    Text(String),
    /// The published digest of the LoadOptions event, `None` when the boot has no such event.
    LoadOptionsSha384(Option<Sha384>),
}

/// Everything RTMR1 and RTMR2 depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedBoot {
    /// RTMR1's application event ([`kernel_measurement`]).
    pub kernel_authenticode: Sha384,
    pub cmdline: CmdlineInput,
    /// `None` without `-initrd`.
    pub initrd_sha384: Option<Sha384>,
    pub tdvf: TdvfProfile,
}

impl ExpectedBoot {
    /// From the files given to QEMU (`-kernel`, `-initrd`, `-append`, `-m`).
    pub fn from_artifacts(
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: &str,
        memory_size: u64,
        header_patching: HeaderPatching,
        tdvf: TdvfProfile,
    ) -> Result<Self, KernelError> {
        let mut params = QemuBootParams::new(memory_size, initrd.map(|i| i.len() as u64), cmdline);
        params.header_patching = header_patching;
        Ok(Self {
            kernel_authenticode: kernel_measurement(kernel, &params)?,
            cmdline: CmdlineInput::Text(cmdline.to_string()),
            initrd_sha384: initrd.map(sha384),
            tdvf,
        })
    }

    /// The LoadOptions digest this boot's RTMR2 starts with, if any.
    pub fn load_options_sha384(&self) -> Option<Sha384> {
        match &self.cmdline {
            CmdlineInput::Text(t) => {
                load_options(t, self.initrd_sha384.is_some(), self.tdvf.initrd_arg)
                    .map(|o| sha384(&o))
            }
            CmdlineInput::LoadOptionsSha384(d) => *d,
        }
    }

    /// RTMR1 events then RTMR2 events, in measurement order per register.
    pub fn events(&self) -> Vec<BootEvent> {
        let mut e = rtmr1_events(&self.kernel_authenticode, &self.tdvf);
        e.extend(rtmr2_events(
            self.load_options_sha384().as_ref(),
            self.initrd_sha384.as_ref(),
        ));
        e
    }

    pub fn rtmr1(&self) -> Sha384 {
        rtmr1(&self.kernel_authenticode, &self.tdvf)
    }

    pub fn rtmr2(&self) -> Sha384 {
        replay(&rtmr2_events(
            self.load_options_sha384().as_ref(),
            self.initrd_sha384.as_ref(),
        ))
    }
}
