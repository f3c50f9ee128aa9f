//! `cocoon-measure compute`: expected registers from boot artifacts.
//!
//! Reads the files, then hands bytes and digests to `measurements::boot` (RTMR1, RTMR2) and
//! `measurements::tdvf` (MRTD). Prints what it can compute and names what it cannot and why.
//! Exit codes: 0 printed, 2 unusable input.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use measurements::boot::qemu::SetupPatch;
use measurements::boot::{
    self, sha384, BootEvent, CmdlineInput, HeaderPatching, InitrdArg, QemuBootParams, TdvfProfile,
};
use measurements::tdvf::{self, PageAddOrder};
use measurements::Sha384;

use crate::{read, Exit, Unusable};

const RTMR0_REASON: &str = "depends on QEMU's ACPI tables, the TD HOB (memory map, vCPUs) and \
     UEFI variables; pin it by replaying the CCEL event log of a reference boot";
const RTMR3_REASON: &str =
    "runtime register (cocoon-init config events): checked by replaying the RTMR3 log";

/// Compute the expected MRTD, RTMR1 and RTMR2 of a TD that QEMU boots with -kernel/-initrd/
/// -append through TDVF. RTMR0 is never computed (it depends on QEMU's ACPI tables and the TD
/// HOB).
#[derive(Args, Debug)]
pub struct ComputeArgs {
    /// TDVF/OVMF firmware image (QEMU -bios): gives MRTD.
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Page-add order of the VMM for MRTD: two-pass (QEMU 8.2 TDX builds) or single-pass
    /// (upstream QEMU/KVM).
    #[arg(long, default_value = "two-pass", value_parser = |s: &str| s.parse::<PageAddOrder>())]
    page_add_order: PageAddOrder,
    /// Kernel bzImage (QEMU -kernel): gives RTMR1's application event.
    #[arg(long, conflicts_with = "kernel_authenticode")]
    kernel: Option<PathBuf>,
    /// Published kernel Authenticode SHA-384 (hex), instead of --kernel.
    #[arg(long, value_parser = hex48)]
    kernel_authenticode: Option<Sha384>,
    /// Initrd (QEMU -initrd).
    #[arg(long, conflicts_with_all = ["initrd_sha384", "no_initrd"])]
    initrd: Option<PathBuf>,
    /// Published initrd SHA-384 (hex), instead of --initrd.
    #[arg(long, value_parser = hex48, conflicts_with = "no_initrd")]
    initrd_sha384: Option<Sha384>,
    /// The guest boots without an initrd.
    #[arg(long)]
    no_initrd: bool,
    /// Kernel command line (QEMU -append).
    #[arg(long, conflicts_with = "cmdline_sha384")]
    cmdline: Option<String>,
    /// Published SHA-384 (hex) of the LoadOptions event, instead of --cmdline.
    #[arg(long, value_parser = hex48)]
    cmdline_sha384: Option<Sha384>,
    /// Number of vCPUs (QEMU -smp). Recorded only: it changes RTMR0, which is not computed.
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest memory as for QEMU -m: a number with an optional K, M, G or T suffix (binary
    /// units); a bare number means MiB, a B suffix bytes. Needed with --kernel, because the
    /// initrd address QEMU writes into the kernel depends on it.
    #[arg(long, value_parser = parse_memory)]
    memory: Option<u64>,
    /// Whether QEMU patches the kernel setup header of a TDX guest: patched (TDX QEMU 8.x/9.x
    /// trees, e.g. 8.2.2) or unpatched (upstream QEMU 10.1 and later).
    #[arg(long, value_enum, default_value_t = QemuHeader::Patched)]
    qemu_header: QemuHeader,
    /// Where OVMF adds "initrd=initrd" to the kernel's LoadOptions: append (edk2 before QEMU
    /// -shim support) or prefix.
    #[arg(long, value_enum, default_value_t = OvmfInitrdArg::Append)]
    ovmf_initrd_arg: OvmfInitrdArg,
    /// Older TDVF builds extend the ReadyToBoot separator into RTMR0 instead of RTMR1.
    #[arg(long)]
    separator_in_rtmr0: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum QemuHeader {
    Patched,
    Unpatched,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OvmfInitrdArg {
    Append,
    Prefix,
}

fn hex48(s: &str) -> Result<Sha384, measurements::HexError> {
    measurements::parse_hex_array(s, "sha-384 digest")
}

/// A guest memory size ([`measurements::memory::parse_memory_size`]: a unit is required).
fn parse_memory(s: &str) -> Result<u64, String> {
    measurements::memory::parse_memory_size(s).map_err(|e| e.to_string())
}

/// What is known about the initrd.
enum Initrd {
    File(Vec<u8>),
    Digest(Sha384),
    Absent,
    Unknown,
}

impl Initrd {
    fn digest(&self) -> Result<Option<Sha384>, &'static str> {
        match self {
            Initrd::File(b) => Ok(Some(sha384(b))),
            Initrd::Digest(d) => Ok(Some(*d)),
            Initrd::Absent => Ok(None),
            Initrd::Unknown => Err("initrd unknown: pass --initrd, --initrd-sha384 or --no-initrd"),
        }
    }
}

struct Computed {
    mrtd: Option<Sha384>,
    rtmr1: Option<Sha384>,
    rtmr2: Option<Sha384>,
    events: Vec<BootEvent>,
    kernel_patch: Option<SetupPatch>,
    not_computed: BTreeMap<&'static str, String>,
}

fn mrtd(
    args: &ComputeArgs,
    not_computed: &mut BTreeMap<&'static str, String>,
) -> Result<Option<Sha384>, Unusable> {
    let Some(path) = &args.firmware else {
        not_computed.insert("mrtd", "no --firmware given".into());
        return Ok(None);
    };
    let firmware = read(path)?;
    let mrtd = tdvf::compute_mrtd(&firmware, args.page_add_order)
        .map_err(|e| Unusable(format!("{}: {e}", path.display())))?;
    Ok(Some(mrtd))
}

fn kernel_authenticode(
    args: &ComputeArgs,
    initrd: &Initrd,
) -> Result<Result<(Sha384, Option<SetupPatch>), String>, Unusable> {
    if let Some(d) = args.kernel_authenticode {
        return Ok(Ok((d, None)));
    }
    let Some(path) = &args.kernel else {
        return Ok(Err("no --kernel or --kernel-authenticode given".into()));
    };
    let kernel = read(path)?;
    let header_patching = match args.qemu_header {
        QemuHeader::Patched => HeaderPatching::Patched,
        QemuHeader::Unpatched => HeaderPatching::Unpatched,
    };
    let initrd_size =
        match initrd {
            Initrd::File(b) => Some(b.len() as u64),
            Initrd::Absent => None,
            _ if header_patching == HeaderPatching::Unpatched => None,
            _ => return Err(Unusable(
                "--kernel: qemu writes the initrd size and address into the kernel; pass --initrd \
                 (the file) or --no-initrd"
                    .into(),
            )),
        };
    let memory = match (args.memory, header_patching) {
        (Some(m), _) => m,
        (None, HeaderPatching::Unpatched) => 0,
        (None, HeaderPatching::Patched) => return Err(Unusable(
            "--kernel needs --memory: the initrd address qemu writes into the kernel depends on it"
                .into(),
        )),
    };
    let mut params = QemuBootParams::new(
        memory,
        initrd_size,
        args.cmdline.clone().unwrap_or_default(),
    );
    params.header_patching = header_patching;
    let mut patched = kernel;
    let patch = boot::qemu_patch_setup_header(&mut patched, &params)
        .map_err(|e| Unusable(format!("{}: {e}", path.display())))?;
    let digest = boot::authenticode_sha384(&patched)
        .map_err(|e| Unusable(format!("{}: {e}", path.display())))?;
    Ok(Ok((digest, Some(patch))))
}

fn compute(args: &ComputeArgs) -> Result<Computed, Unusable> {
    let mut not_computed = BTreeMap::new();
    not_computed.insert("rtmr0", RTMR0_REASON.to_string());
    not_computed.insert("rtmr3", RTMR3_REASON.to_string());
    let mrtd = mrtd(args, &mut not_computed)?;

    let initrd = match (&args.initrd, args.initrd_sha384, args.no_initrd) {
        (Some(p), _, _) => Initrd::File(read(p)?),
        (None, Some(d), _) => Initrd::Digest(d),
        (None, None, true) => Initrd::Absent,
        (None, None, false) => Initrd::Unknown,
    };
    let tdvf = TdvfProfile {
        separator_in_rtmr1: !args.separator_in_rtmr0,
        initrd_arg: match args.ovmf_initrd_arg {
            OvmfInitrdArg::Append => InitrdArg::Append,
            OvmfInitrdArg::Prefix => InitrdArg::Prefix,
        },
    };
    let cmdline = match (&args.cmdline, args.cmdline_sha384) {
        (Some(t), _) => Some(CmdlineInput::Text(t.clone())),
        (None, Some(d)) => Some(CmdlineInput::LoadOptionsSha384(Some(d))),
        (None, None) => None,
    };

    let mut events = Vec::new();
    let (rtmr1, kernel_patch) = match kernel_authenticode(args, &initrd)? {
        Ok((digest, patch)) => {
            let e = boot::rtmr1_events(&digest, &tdvf);
            let r = boot::replay(&e);
            events.extend(e);
            (Some(r), patch)
        }
        Err(reason) => {
            not_computed.insert("rtmr1", reason);
            (None, None)
        }
    };

    let rtmr2 = match (cmdline, initrd.digest()) {
        (Some(cmdline), Ok(initrd_sha384)) => {
            let load_options = match cmdline {
                CmdlineInput::Text(t) => {
                    boot::load_options(&t, initrd_sha384.is_some(), tdvf.initrd_arg)
                        .map(|o| sha384(&o))
                }
                CmdlineInput::LoadOptionsSha384(d) => d,
            };
            let e = boot::rtmr2_events(load_options.as_ref(), initrd_sha384.as_ref());
            let r = boot::replay(&e);
            events.extend(e);
            Some(r)
        }
        (None, _) => {
            not_computed.insert("rtmr2", "no --cmdline or --cmdline-sha384 given".into());
            None
        }
        (_, Err(reason)) => {
            not_computed.insert("rtmr2", reason.into());
            None
        }
    };
    Ok(Computed {
        mrtd,
        rtmr1,
        rtmr2,
        events,
        kernel_patch,
        not_computed,
    })
}

fn event_type_name(t: u32) -> &'static str {
    match t {
        boot::EV_SEPARATOR => "EV_SEPARATOR",
        boot::EV_EVENT_TAG => "EV_EVENT_TAG",
        boot::EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
        boot::EV_EFI_ACTION => "EV_EFI_ACTION",
        _ => "unknown",
    }
}

pub fn run(args: &ComputeArgs) -> Result<Exit, Unusable> {
    let c = compute(args)?;
    let hex_opt = |d: &Option<Sha384>| d.map(hex::encode);
    if args.json {
        let out = json!({
            "mrtd": hex_opt(&c.mrtd),
            "rtmr1": hex_opt(&c.rtmr1),
            "rtmr2": hex_opt(&c.rtmr2),
            "not_computed": c.not_computed,
            "events": c.events.iter().map(|e| json!({
                "rtmr": e.rtmr,
                "event_type": format!("{:#x}", e.event_type),
                "event_type_name": event_type_name(e.event_type),
                "digest": hex::encode(e.digest),
                "description": e.description,
            })).collect::<Vec<_>>(),
            "qemu_header_fields": c.kernel_patch.as_ref().map(|p| p.fields.iter().map(|f| json!({
                "name": f.name, "offset": format!("{:#x}", f.offset), "bytes": hex::encode(&f.bytes),
            })).collect::<Vec<_>>()),
            "inputs": {
                "cpus": args.cpus,
                "memory": args.memory,
                "qemu_header": format!("{:?}", args.qemu_header).to_lowercase(),
                "ovmf_initrd_arg": format!("{:?}", args.ovmf_initrd_arg).to_lowercase(),
                "separator_rtmr": if args.separator_in_rtmr0 { 0 } else { 1 },
                "page_add_order": args.page_add_order.as_str(),
            },
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(Exit::Accepted);
    }
    let line = |name: &str, key: &str, v: &Option<Sha384>| match v {
        Some(d) => println!("{name}: {}", hex::encode(d)),
        None => println!(
            "{name}: not computed: {}",
            c.not_computed.get(key).map(String::as_str).unwrap_or("")
        ),
    };
    line("MRTD ", "mrtd", &c.mrtd);
    line("RTMR0", "rtmr0", &None);
    for (name, key, reg, idx) in [
        ("RTMR1", "rtmr1", &c.rtmr1, 1u8),
        ("RTMR2", "rtmr2", &c.rtmr2, 2),
    ] {
        line(name, key, reg);
        for e in c.events.iter().filter(|e| e.rtmr == idx) {
            println!(
                "  {:<34} {}  {}",
                event_type_name(e.event_type),
                hex::encode(e.digest),
                e.description
            );
        }
    }
    line("RTMR3", "rtmr3", &None);
    Ok(Exit::Accepted)
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn memory_sizes_need_a_unit() {
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert!(
            parse_memory("2048").is_err(),
            "ambiguous: QEMU reads MiB, others bytes"
        );
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("4096b"), Ok(4096));
        assert_eq!(parse_memory("1T"), Ok(1 << 40));
        assert!(parse_memory("2X").is_err());
        assert!(parse_memory("G").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("99999999999999T").is_err());
    }
}
