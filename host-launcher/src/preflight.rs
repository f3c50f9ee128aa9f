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
//! | `qgs` | Intel's QGS is reachable the way the config's `[tdx] quote_generation_socket` says |
//! | `pccs` | `etc/sgx_default_qcnl.conf` names the PCCS the QGS fetches PCK certificates from |
//! | `memory` | `MemAvailable` in `proc/meminfo` covers the guest memory plus QEMU's own |
//! | `gpu <BDF>` | (with a config naming GPUs) each is bound to `vfio-pci` |
//! | `gpu-cc <BDF>` | NVIDIA's gpu-admin-tools report the GPU's CC mode as `on` |
//!
//! The file formats read here are parsed by pure functions ([`qgs_conf_port`],
//! [`qcnl_pccs_url`], [`parse_meminfo`], [`parse_cc_mode`]) that accept any text and never
//! panic: they are the host's own files, but a half-edited config must give a clear line, not a
//! crash.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpu::{self, Bdf, HostSysfs};
use crate::vm::config::QgsSocket;

/// The QEMU release that has the `tdx-guest` object with quote generation.
pub const MIN_QEMU: (u32, u32) = (10, 1);

/// Where distributions put a TDX build of OVMF (TDVF); the first that exists is used.
pub const TDVF_CANDIDATES: &[&str] = &[
    "usr/share/ovmf/OVMF.inteltdx.fd",
    "usr/share/qemu/OVMF.inteltdx.fd",
    "usr/share/edk2/ovmf/OVMF.inteltdx.fd",
];

/// Intel QGS's unix socket: where it listens unless its config sets a vsock `port`.
pub const QGS_UNIX_SOCKET: &str = "/var/run/tdx-qgs/qgs.socket";
/// Intel QGS's config (`port = N`: listen on vsock port N instead of [`QGS_UNIX_SOCKET`]).
pub const QGS_CONF: &str = "/etc/qgs.conf";
/// The QGS process name (`/opt/intel/tdx-qgs/qgs`, systemd unit `qgsd`).
pub const QGS_PROCESS: &str = "qgs";
/// Intel's quote provider config (QCNL): `pccs_url` names the PCCS the QGS gets the platform's
/// PCK certificate from.
pub const QCNL_CONF: &str = "/etc/sgx_default_qcnl.conf";
/// Names of NVIDIA's gpu-admin-tools script looked up in `PATH`.
pub const GPU_ADMIN_TOOLS: &[&str] = &["nvidia_gpu_tools.py", "nvidia_gpu_tools"];
/// Host memory allowed for the QEMU process on top of the guest's (an estimate).
pub const QEMU_OVERHEAD_MIB: u64 = 512;

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

/// The vsock `port` of Intel QGS's config, read the way QGS reads it: whitespace removed, lines
/// starting with `#` skipped, `name=value`, the last `port` wins. `None`: no port, QGS listens
/// on [`QGS_UNIX_SOCKET`]; `Some(Err(value))`: a port QGS refuses to start with.
pub fn qgs_conf_port(text: &str) -> Option<Result<u16, String>> {
    let mut port = None;
    for line in text.lines() {
        let line: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if line.starts_with('#') {
            continue;
        }
        if let Some(("port", value)) = line.split_once('=') {
            let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                value.parse::<u16>().ok()
            } else {
                None
            };
            port = Some(parsed.ok_or_else(|| value.chars().take(40).collect()));
        }
    }
    port
}

/// Tokens of a JSON-with-comments text: strings (unescaped) and single punctuation characters;
/// `//` and `/* */` comments and whitespace are dropped. An unterminated string or comment ends
/// the stream.
#[derive(Debug, PartialEq, Eq)]
enum JsonToken {
    Str(String),
    Punct(char),
}

fn json_tokens(text: &str) -> Vec<JsonToken> {
    let mut out = Vec::new();
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '"' => {
                let mut s = String::new();
                loop {
                    match it.next() {
                        None => return out,
                        Some('"') => break,
                        Some('\\') => match it.next() {
                            None => return out,
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some('b') => s.push('\u{8}'),
                            Some('f') => s.push('\u{c}'),
                            Some('u') => {
                                let hex: String = it.by_ref().take(4).collect();
                                let ch =
                                    u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                                s.push(ch.unwrap_or(char::REPLACEMENT_CHARACTER));
                            }
                            Some(other) => s.push(other),
                        },
                        Some(ch) => s.push(ch),
                    }
                }
                out.push(JsonToken::Str(s));
            }
            '/' if it.peek() == Some(&'/') => {
                for ch in it.by_ref() {
                    if ch == '\n' {
                        break;
                    }
                }
            }
            '/' if it.peek() == Some(&'*') => {
                it.next();
                let mut star = false;
                loop {
                    match it.next() {
                        None => return out,
                        Some('/') if star => break,
                        Some(ch) => star = ch == '*',
                    }
                }
            }
            c if c.is_whitespace() => {}
            c => out.push(JsonToken::Punct(c)),
        }
    }
    out
}

/// The `"pccs_url"` of Intel's QCNL config (JSON with `//` comments in current releases): the
/// first `"pccs_url": "…"` outside comments, whatever surrounds it. `None` when there is none
/// (a commented-out key, another format, garbage).
pub fn qcnl_pccs_url(text: &str) -> Option<String> {
    let tokens = json_tokens(text);
    tokens.windows(3).find_map(|w| match w {
        [JsonToken::Str(k), JsonToken::Punct(':'), JsonToken::Str(v)] if k == "pccs_url" => {
            Some(v.clone())
        }
        _ => None,
    })
}

/// The figures of `/proc/meminfo` the `memory` check uses (kB as the kernel writes them; huge
/// page counts are pages). A field that is missing or does not parse is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub mem_total_kib: Option<u64>,
    pub mem_available_kib: Option<u64>,
    pub hugepages_total: Option<u64>,
    pub hugepages_free: Option<u64>,
    pub hugepage_size_kib: Option<u64>,
}

/// Parses `/proc/meminfo` (`MemAvailable:   123456 kB` lines); unknown lines are ignored.
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let value = words.next().and_then(|v| v.parse::<u64>().ok());
        if !matches!(words.next(), None | Some("kB")) {
            continue;
        }
        let slot = match key.trim() {
            "MemTotal" => &mut m.mem_total_kib,
            "MemAvailable" => &mut m.mem_available_kib,
            "HugePages_Total" => &mut m.hugepages_total,
            "HugePages_Free" => &mut m.hugepages_free,
            "Hugepagesize" => &mut m.hugepage_size_kib,
            _ => continue,
        };
        *slot = value;
    }
    m
}

/// A GPU's confidential-computing mode as NVIDIA's gpu-admin-tools report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CcMode {
    On,
    Off,
    /// CC with the blocks on profiling and debugging lifted: not for production.
    DevTools,
    /// The tool says this device has no CC mode to query.
    NotSupported,
    /// Another word after `CC mode is` (e.g. `invalid-devtools-only-fix-by-setting-cc-mode`).
    Other(String),
}

/// The CC mode in the output of `nvidia_gpu_tools.py --gpu-bdf=BDF --query-cc-mode`, whose
/// answer is a log line ending in `GPU <BDF> <name> <id> BAR0 <addr> CC mode is <mode>` (or
/// `Querying CC mode is not supported on …`). The last such line counts; `None`: none.
pub fn parse_cc_mode(output: &str) -> Option<CcMode> {
    output.lines().rev().find_map(|line| {
        if line.contains("CC mode is not supported") {
            return Some(CcMode::NotSupported);
        }
        let (_, rest) = line.split_once("CC mode is ")?;
        let word = rest.split_whitespace().next()?.trim_end_matches(['.', ',']);
        Some(match word {
            "on" => CcMode::On,
            "off" => CcMode::Off,
            "devtools" => CcMode::DevTools,
            other => CcMode::Other(other.chars().take(64).collect()),
        })
    })
}

/// What running NVIDIA's gpu-admin-tools for one GPU gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CcProbe {
    /// The tool is not installed (where it was looked for).
    NoTool(String),
    /// It ran: its stdout followed by its stderr (it logs the answer to stderr).
    Ran {
        tool: String,
        success: bool,
        output: String,
    },
    /// It could not be started.
    Failed { tool: String, error: String },
}

/// The first of [`GPU_ADMIN_TOOLS`] in a `PATH`-style list of directories.
pub fn find_gpu_admin_tools(path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let dirs = std::env::split_paths(path_var?).collect::<Vec<_>>();
    dirs.iter()
        .flat_map(|d| GPU_ADMIN_TOOLS.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs `TOOL --gpu-bdf=BDF --query-cc-mode` (reads the GPU's registers; the GPU may be on
/// `vfio-pci`, where `nvidia-smi` cannot see it).
pub fn probe_cc_mode(tool: Option<&Path>, bdf: &Bdf) -> CcProbe {
    let Some(tool) = tool else {
        return CcProbe::NoTool(format!("no {} on PATH", GPU_ADMIN_TOOLS.join(" or ")));
    };
    let name = tool.display().to_string();
    match Command::new(tool)
        .arg(format!("--gpu-bdf={bdf}"))
        .arg("--query-cc-mode")
        .output()
    {
        Ok(o) => {
            let mut output = String::from_utf8_lossy(&o.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&o.stderr));
            CcProbe::Ran {
                tool: name,
                success: o.status.success(),
                output,
            }
        }
        Err(e) => CcProbe::Failed {
            tool: name,
            error: e.to_string(),
        },
    }
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
    /// Where QEMU sends the guest's quote requests: the config's `[tdx]
    /// quote_generation_socket`, else the launcher's default; `None`: the config turns quotes
    /// off.
    pub qgs: Option<QgsSocket>,
    /// The guest memory (MiB) the host must have free; `None` (no config): only reported.
    pub memory_mib: Option<u64>,
    /// What NVIDIA's gpu-admin-tools said about each GPU's CC mode ([`probe_cc_mode`]).
    pub gpu_cc: Vec<(Bdf, CcProbe)>,
}

/// `abs` (an absolute host path) under `root`.
fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
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

const QGS_INSTALL: &str = "install Intel's QGS (package tdx-qgs from Intel's SGX/DCAP package \
    repository, e.g. apt install tdx-qgs) and start it: systemctl enable --now qgsd; it gets the \
    platform's PCK certificate through the PCCS in /etc/sgx_default_qcnl.conf (see the pccs check)";

fn check_qgs(root: &Path, qgs: Option<&QgsSocket>) -> Check {
    match qgs {
        None => Check::ok(
            "qgs",
            "not used: [tdx] quote_generation_socket = \"none\" (the guest cannot get quotes)",
        ),
        Some(QgsSocket::Unix(path)) => check_qgs_unix(root, path),
        Some(QgsSocket::Vsock { cid, port }) if *cid != 2 => Check::ok(
            "qgs",
            format!("vsock CID {cid} port {port} (a QGS outside this host's: not checked)"),
        ),
        Some(QgsSocket::Vsock { port, .. }) => check_qgs_vsock(root, *port),
    }
}

fn read_lossy(p: &Path) -> std::io::Result<String> {
    std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// PIDs of running QGS processes (`proc/<pid>/comm` is `qgs`).
fn qgs_pids(root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(root.join("proc")) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let comm = read_lossy(&e.path().join("comm")).ok()?;
            (comm.trim_end() == QGS_PROCESS).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn check_qgs_unix(root: &Path, path: &Path) -> Check {
    let p = under(root, path);
    let shown = path.display();
    let vsock_port = read_lossy(&under(root, Path::new(QGS_CONF)))
        .ok()
        .and_then(|t| qgs_conf_port(&t));
    let install = match vsock_port {
        Some(Ok(port)) if path == Path::new(QGS_UNIX_SOCKET) => format!(
            "{QGS_CONF} sets port = {port}, so QGS listens on vsock instead: remove that line and \
             systemctl restart qgsd, or set [tdx] quote_generation_socket = \"vsock:2:{port}\""
        ),
        _ => QGS_INSTALL.to_string(),
    };
    match std::fs::metadata(&p) {
        Err(_) => Check::missing(
            "qgs",
            format!("QGS socket ({shown} does not exist)"),
            install,
        ),
        Ok(m) if !m.file_type().is_socket() => Check::missing(
            "qgs",
            format!("QGS socket ({shown} is not a socket)"),
            format!("remove {shown} and restart the QGS (systemctl restart qgsd)"),
        ),
        Ok(_) => match std::os::unix::net::UnixStream::connect(&p) {
            Ok(_) => Check::ok("qgs", format!("{shown} accepts connections")),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::missing(
                "qgs",
                format!("access to the QGS socket {shown} ({e})"),
                "run QEMU as root or as a member of the socket's group (qgsd for Intel's package)",
            ),
            Err(e) => Check::missing(
                "qgs",
                format!("a QGS listening on {shown} ({e})"),
                "start the QGS: systemctl restart qgsd (journalctl -u qgsd says why it stopped)",
            ),
        },
    }
}

fn check_qgs_vsock(root: &Path, port: u32) -> Check {
    let conf = under(root, Path::new(QGS_CONF));
    let unix = format!("or set [tdx] quote_generation_socket = \"unix:{QGS_UNIX_SOCKET}\"");
    let configured = match read_lossy(&conf) {
        Err(_) => {
            return Check::missing(
                "qgs",
                format!("QGS ({} does not exist)", conf.display()),
                format!(
                    "{QGS_INSTALL}; for vsock set port = {port} in {QGS_CONF} (newer packages \
                     ship it commented out: QGS then listens on {QGS_UNIX_SOCKET})"
                ),
            )
        }
        Ok(text) => qgs_conf_port(&text),
    };
    match configured {
        Some(Ok(p)) if u32::from(p) == port => {}
        Some(Ok(p)) => {
            return Check::missing(
                "qgs",
                format!("QGS on vsock port {port} ({QGS_CONF} sets port = {p})"),
                format!(
                    "set port = {port} in {QGS_CONF} and systemctl restart qgsd, or set [tdx] \
                     quote_generation_socket = \"vsock:2:{p}\""
                ),
            )
        }
        Some(Err(v)) => {
            return Check::missing(
                "qgs",
                format!("QGS on vsock port {port} ({QGS_CONF} has port = {v:?}, refused by QGS)"),
                format!("set port = {port} in {QGS_CONF} and systemctl restart qgsd"),
            )
        }
        None => {
            return Check::missing(
                "qgs",
                format!(
                    "QGS on vsock port {port} ({QGS_CONF} sets no port: QGS listens on \
                     {QGS_UNIX_SOCKET})"
                ),
                format!("set port = {port} in {QGS_CONF} and systemctl restart qgsd, {unix}"),
            )
        }
    }
    match qgs_pids(root).first() {
        Some(pid) => Check::ok(
            "qgs",
            format!("QGS (pid {pid}) on vsock port {port} ({QGS_CONF})"),
        ),
        None => Check::missing(
            "qgs",
            format!("a running QGS (no {QGS_PROCESS} process; {QGS_CONF} sets port = {port})"),
            "systemctl enable --now qgsd (journalctl -u qgsd says why it stopped)",
        ),
    }
}

fn check_pccs(root: &Path) -> Check {
    let p = under(root, Path::new(QCNL_CONF));
    let fix = format!(
        "set \"pccs_url\": \"https://<PCCS>:8081/sgx/certification/v4/\" in {QCNL_CONF} (a JSON \
         file; package libsgx-dcap-default-qpl) and systemctl restart qgsd; cocoon's TDX \
         services need their own [tee.pccs] too (docs/operator-guide.md, \"Collateral for a \
         real TD: a PCCS\")"
    );
    let text = match read_lossy(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let what = format!("QCNL config ({} does not exist)", p.display());
            return Check::missing("pccs", what, fix);
        }
        Err(e) => {
            return Check::missing("pccs", format!("QCNL config ({}: {e})", p.display()), fix)
        }
    };
    match qcnl_pccs_url(&text) {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Check::ok("pccs", format!("{QCNL_CONF} pccs_url {url}"))
        }
        Some(url) => Check::missing(
            "pccs",
            format!(
                "a PCCS URL ({QCNL_CONF} pccs_url is {:?})",
                url.chars().take(100).collect::<String>()
            ),
            fix,
        ),
        None => Check::missing(
            "pccs",
            format!("a PCCS URL (no \"pccs_url\" in {})", p.display()),
            fix,
        ),
    }
}

fn check_memory(root: &Path, memory_mib: Option<u64>) -> Check {
    let p = root.join("proc/meminfo");
    let info = read_lossy(&p)
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default();
    let Some(available) = info.mem_available_kib.map(|k| k / 1024) else {
        return Check::missing(
            "memory",
            format!(
                "the free memory figure (no MemAvailable in {})",
                p.display()
            ),
            "run on a Linux host (3.14 or later) with /proc mounted",
        );
    };
    let reserved = match (info.hugepages_total, info.hugepage_size_kib) {
        (Some(n), Some(size)) if n > 0 => n.saturating_mul(size) / 1024,
        _ => 0,
    };
    let huge = if reserved > 0 {
        format!("; {reserved} MiB are reserved as huge pages, which the guest does not use")
    } else {
        String::new()
    };
    let Some(guest) = memory_mib else {
        return Check::ok(
            "memory",
            format!("{available} MiB available{huge} (no --config: guest memory not checked)"),
        );
    };
    let needed = guest.saturating_add(QEMU_OVERHEAD_MIB);
    if available >= needed {
        let detail = format!(
            "{available} MiB available for {guest} MiB guest memory + {QEMU_OVERHEAD_MIB} MiB \
             for QEMU"
        );
        return Check::ok("memory", detail);
    }
    let mut fix = format!(
        "free {} MiB (stop other VMs or services) or lower memory in the config (and build the \
         image with the same --memory)",
        needed - available
    );
    if reserved > 0 {
        fix.push_str(&format!(
            ", or release the {reserved} MiB of reserved huge pages (sysctl vm.nr_hugepages=0): \
             cocoon guests use ordinary memory"
        ));
    }
    Check::missing(
        "memory",
        format!(
            "memory for the guest ({guest} MiB + {QEMU_OVERHEAD_MIB} MiB for QEMU = {needed} MiB; \
             {available} MiB available{huge})"
        ),
        fix,
    )
}

fn check_gpu_cc(bdf: &Bdf, probe: &CcProbe) -> Check {
    let name = format!("gpu-cc {bdf}");
    let set_on = |tool: &str| {
        format!("sudo {tool} --gpu-bdf={bdf} --set-cc-mode=on --reset-after-cc-mode-switch")
    };
    let (tool, success, output) = match probe {
        CcProbe::NoTool(why) => {
            return Check::missing(
                &name,
                format!("GPU {bdf} CC mode (NVIDIA's gpu-admin-tools: {why})"),
                format!(
                    "git clone https://github.com/NVIDIA/gpu-admin-tools and pass \
                     --gpu-admin-tools …/nvidia_gpu_tools.py (or put it on PATH); it also \
                     switches the mode: {}",
                    set_on("nvidia_gpu_tools.py")
                ),
            )
        }
        CcProbe::Failed { tool, error } => {
            return Check::missing(
                &name,
                format!("GPU {bdf} CC mode ({tool}: {error})"),
                "run preflight as root, with python3 installed (the tool is a python3 script)",
            )
        }
        CcProbe::Ran {
            tool,
            success,
            output,
        } => (tool, success, output),
    };
    let not_on = |is: &str| format!("GPU {bdf} in CC mode on (it is {is})");
    match parse_cc_mode(output) {
        Some(CcMode::On) => Check::ok(&name, "CC mode on"),
        Some(CcMode::Off) => Check::missing(&name, not_on("off"), set_on(tool)),
        Some(CcMode::DevTools) => Check::missing(
            &name,
            not_on("devtools, which lifts the blocks on profiling and debugging"),
            set_on(tool),
        ),
        Some(CcMode::NotSupported) => Check::missing(
            &name,
            format!("GPU {bdf} CC mode ({tool}: this GPU has no CC mode)"),
            "use a GPU with confidential computing (H100 or later) or remove it from gpus",
        ),
        Some(CcMode::Other(word)) => {
            Check::missing(&name, not_on(&format!("{word:?}")), set_on(tool))
        }
        None => {
            let lines: Vec<&str> = output
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let last = lines
                .iter()
                .rev()
                .find(|l| l.contains("ERROR"))
                .or(lines.last())
                .map(|l| l.chars().take(200).collect::<String>())
                .unwrap_or_else(|| "no output".into());
            let status = if *success { "" } else { ", failed" };
            Check::missing(
                &name,
                format!("GPU {bdf} CC mode (unexpected answer from {tool}{status}: {last})"),
                format!(
                    "run sudo {tool} --gpu-bdf={bdf} --query-cc-mode by hand; the GPU must not be \
                     on the nvidia driver (cocoon-host gpu bind {bdf})"
                ),
            )
        }
    }
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
    out.push(check_qgs(root, inputs.qgs.as_ref()));
    out.push(check_pccs(root));
    out.push(check_memory(root, inputs.memory_mib));
    out.extend(check_gpus(root, &inputs.gpus));
    out.extend(inputs.gpu_cc.iter().map(|(b, p)| check_gpu_cc(b, p)));
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
