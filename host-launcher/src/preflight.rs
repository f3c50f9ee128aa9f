//! `cocoon-host preflight`: can this host run a cocoon TD (and pass GPUs to it)?
//!
//! Each check reads files under a root path (`/` on a host, a temporary tree in tests) or the
//! output of the QEMU binary, gathered beforehand by [`probe_qemu`] into a [`QemuInfo`], so
//! [`run`] itself runs no processes. A failed check prints `missing <what>: <how to fix>`.
//!
//! | check | passes when |
//! |---|---|
//! | `tdx` | `sys/module/kvm_intel/parameters/tdx` is `Y` |
//! | `iommu` | `sys/kernel/iommu_groups` has at least one group |
//! | `kvm` | `dev/kvm` opens read-write |
//! | `vhost-vsock` | `dev/vhost-vsock` opens read-write |
//! | `qemu` | `qemu-system-x86_64 --version` is at least 10.1 |
//! | `qemu-tdx` | `qemu-system-x86_64 -object help` lists `tdx-guest` |
//! | `vfio` | `sys/module/{vfio,vfio_pci,iommufd}` exist (loaded or built in) |
//! | `tdvf` | the TDVF firmware file exists |
//! | `gpu <BDF>` | (with a config naming GPUs) each is bound to `vfio-pci` |

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpu::{self, Bdf, HostSysfs};

/// The QEMU release that has the `tdx-guest` object with quote generation.
pub const MIN_QEMU: (u32, u32) = (10, 1);

/// Where distributions put a TDX build of OVMF (TDVF); the first that exists is used.
pub const TDVF_CANDIDATES: &[&str] = &[
    "usr/share/ovmf/OVMF.inteltdx.fd",
    "usr/share/qemu/OVMF.inteltdx.fd",
    "usr/share/edk2/ovmf/OVMF.inteltdx.fd",
];

/// What the QEMU binary said (or why it could not be asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuInfo {
    pub binary: String,
    /// Output of `--version`.
    pub version: Result<String, String>,
    /// Output of `-object help`.
    pub objects: Result<String, String>,
}

/// Runs `qemu --version` and `qemu -object help` (with `LD_LIBRARY_PATH` and `-L` when an
/// unpacked QEMU needs them).
pub fn probe_qemu(
    binary: &Path,
    ld_library_path: Option<&Path>,
    bios_dir: Option<&Path>,
) -> QemuInfo {
    let run = |args: &[&str]| -> Result<String, String> {
        let mut c = Command::new(binary);
        if let Some(l) = bios_dir {
            c.arg("-L").arg(l);
        }
        c.args(args);
        if let Some(p) = ld_library_path {
            c.env("LD_LIBRARY_PATH", p);
        }
        match c.output() {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => Err(format!(
                "exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    };
    QemuInfo {
        binary: binary.display().to_string(),
        version: run(&["--version"]),
        objects: run(&["-machine", "none", "-object", "help"]),
    }
}

/// `(major, minor, patch)` from `QEMU emulator version 10.0.2 (Debian …)`.
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let v = rest.split(|c: char| c.is_whitespace() || c == '(').next()?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it
        .next()
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Some((major, minor, patch))
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    Missing { what: String, fix: String },
}

/// One named check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Ok(detail.into()),
        }
    }

    fn missing(name: &str, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Missing {
                what: what.into(),
                fix: fix.into(),
            },
        }
    }

    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }

    /// `ok   tdx: …` or `missing X: how to fix`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Ok(d) => format!("ok       {}: {d}", self.name),
            Outcome::Missing { what, fix } => format!("missing  {what}: {fix}"),
        }
    }
}

/// Inputs of [`run`].
#[derive(Clone, Debug)]
pub struct Inputs {
    /// `/` on a host.
    pub root: PathBuf,
    pub qemu: QemuInfo,
    /// The TDVF file to check; `None`: the first of [`TDVF_CANDIDATES`] under `root`.
    pub firmware: Option<PathBuf>,
    /// GPUs that must be bound to `vfio-pci`.
    pub gpus: Vec<Bdf>,
}

fn check_tdx(root: &Path) -> Check {
    let p = root.join("sys/module/kvm_intel/parameters/tdx");
    match std::fs::read_to_string(&p) {
        Ok(v) if matches!(v.trim(), "Y" | "y" | "1") => Check::ok("tdx", "kvm_intel tdx=Y"),
        Ok(v) => Check::missing(
            "tdx",
            format!("TDX ({} is {:?})", p.display(), v.trim()),
            "reload kvm_intel with tdx=1 (options kvm_intel tdx=1 in /etc/modprobe.d) on a host \
             whose BIOS enables TDX and whose kernel initialized the TDX module (dmesg | grep -i tdx)",
        ),
        Err(_) if !root.join("sys/module/kvm_intel").exists() => Check::missing(
            "tdx",
            "TDX (kvm_intel is not loaded; this is not an Intel KVM host)",
            "use an Intel Xeon (4th gen or later) host with TDX enabled in the BIOS and a TDX host kernel; \
             elsewhere run `cocoon-host launch CONFIG --tee sim`",
        ),
        Err(_) => Check::missing(
            "tdx",
            format!("TDX ({} does not exist)", p.display()),
            "the host kernel has no KVM TDX support: install a TDX-enabled host kernel (Linux 6.16 or later)",
        ),
    }
}

fn check_iommu(root: &Path) -> Check {
    let p = root.join("sys/kernel/iommu_groups");
    let n = std::fs::read_dir(&p).map(|d| d.count()).unwrap_or(0);
    if n > 0 {
        Check::ok("iommu", format!("{n} IOMMU groups"))
    } else {
        Check::missing(
            "iommu",
            format!("IOMMU ({} is empty)", p.display()),
            "enable VT-d in the BIOS and boot with intel_iommu=on iommu=pt",
        )
    }
}

fn check_device(root: &Path, name: &str, rel: &str, fix: &str) -> Check {
    let p = root.join(rel);
    match std::fs::OpenOptions::new().read(true).write(true).open(&p) {
        Ok(_) => Check::ok(name, format!("{} opens read-write", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Check::missing(name, format!("{} (no such device)", p.display()), fix)
        }
        Err(e) => Check::missing(
            name,
            format!("{} ({e})", p.display()),
            "run as root or add the user to the group that owns it (usually kvm)",
        ),
    }
}

fn check_qemu(q: &QemuInfo) -> Vec<Check> {
    let version = match &q.version {
        Err(e) => Check::missing(
            "qemu",
            format!("QEMU ({}: {e})", q.binary),
            format!(
                "install QEMU {}.{} or later, or set [qemu] binary in the config",
                MIN_QEMU.0, MIN_QEMU.1
            ),
        ),
        Ok(text) => match parse_qemu_version(text) {
            None => Check::missing(
                "qemu",
                format!(
                    "QEMU version (cannot parse {:?})",
                    text.lines().next().unwrap_or("")
                ),
                "check that the binary is qemu-system-x86_64",
            ),
            Some((a, b, c)) if (a, b) >= MIN_QEMU => {
                Check::ok("qemu", format!("{} is {a}.{b}.{c}", q.binary))
            }
            Some((a, b, c)) => Check::missing(
                "qemu",
                format!(
                    "QEMU {}.{} for TDX ({} is {a}.{b}.{c})",
                    MIN_QEMU.0, MIN_QEMU.1, q.binary
                ),
                "install QEMU 10.1 or later (tdx-guest with quote-generation-socket) and point [qemu] binary at it",
            ),
        },
    };
    let tdx_object = match &q.objects {
        Ok(t) if t.lines().any(|l| l.trim() == "tdx-guest") => {
            Check::ok("qemu-tdx", "QEMU has the tdx-guest object")
        }
        Ok(_) => Check::missing(
            "qemu-tdx",
            format!("tdx-guest object in {}", q.binary),
            "this QEMU was built without TDX (Debian's is): use a TDX-enabled QEMU 10.1+ build",
        ),
        Err(e) => Check::missing(
            "qemu-tdx",
            format!("tdx-guest object ({} -object help: {e})", q.binary),
            "install a TDX-enabled QEMU 10.1+",
        ),
    };
    vec![version, tdx_object]
}

fn check_vfio(root: &Path) -> Check {
    let missing: Vec<&str> = ["vfio", "vfio_pci", "iommufd"]
        .into_iter()
        .filter(|m| !root.join("sys/module").join(m).exists())
        .collect();
    if missing.is_empty() {
        Check::ok("vfio", "vfio, vfio_pci and iommufd are loaded")
    } else {
        Check::missing(
            "vfio",
            format!("kernel modules {}", missing.join(", ")),
            "modprobe vfio-pci iommufd (and list them in /etc/modules-load.d/ to keep them)",
        )
    }
}

fn check_tdvf(root: &Path, firmware: Option<&Path>) -> Check {
    let path = match firmware {
        Some(p) => Some(p.to_path_buf()),
        None => TDVF_CANDIDATES
            .iter()
            .map(|c| root.join(c))
            .find(|p| p.is_file()),
    };
    match path {
        Some(p) if p.is_file() => Check::ok("tdvf", format!("{}", p.display())),
        Some(p) => Check::missing(
            "tdvf",
            format!("TDVF firmware {}", p.display()),
            "install a TDX build of OVMF (OVMF.inteltdx.fd) and set [tdx] firmware",
        ),
        None => Check::missing(
            "tdvf",
            format!(
                "TDVF firmware (none of {} under {})",
                TDVF_CANDIDATES.join(", "),
                root.display()
            ),
            "install a TDX build of OVMF (OVMF.inteltdx.fd) and set [tdx] firmware",
        ),
    }
}

fn check_gpus(root: &Path, gpus: &[Bdf]) -> Vec<Check> {
    let sysfs = HostSysfs::new(root);
    gpus.iter()
        .map(|b| {
            let name = format!("gpu {b}");
            match gpu::check_bound(&sysfs, std::slice::from_ref(b)) {
                Ok(()) => Check::ok(&name, "bound to vfio-pci"),
                Err(e) => Check::missing(
                    &name,
                    format!("GPU {b} on vfio-pci ({e})"),
                    format!("cocoon-host gpu bind {b}"),
                ),
            }
        })
        .collect()
}

/// Runs every check.
pub fn run(inputs: &Inputs) -> Vec<Check> {
    let root = inputs.root.as_path();
    let mut out = vec![
        check_tdx(root),
        check_iommu(root),
        check_device(
            root,
            "kvm",
            "dev/kvm",
            "load kvm_intel (modprobe kvm_intel) with VT-x enabled in the BIOS",
        ),
        check_device(
            root,
            "vhost-vsock",
            "dev/vhost-vsock",
            "modprobe vhost_vsock (the guest's vsock device needs it)",
        ),
    ];
    out.extend(check_qemu(&inputs.qemu));
    out.push(check_vfio(root));
    out.push(check_tdvf(root, inputs.firmware.as_deref()));
    out.extend(check_gpus(root, &inputs.gpus));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"
            ),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.1.0\n"),
            Some((10, 1, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.2.90"),
            Some((9, 2, 90))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.1"),
            Some((10, 1, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 11.0.0-rc1"),
            Some((11, 0, 0))
        );
        for bad in ["", "version", "QEMU emulator version x.y", "qemu 10.1"] {
            assert_eq!(parse_qemu_version(bad), None, "{bad}");
        }
    }
}
