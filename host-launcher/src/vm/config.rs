//! The launch config (`cocoon-host launch CONFIG.toml`): a TOML file parsed into [`RawConfig`]
//! (serde, unknown fields rejected) and validated into [`VmConfig`], the only type the rest of
//! the launcher uses. Every error names the field. Relative paths are relative to the config
//! file's directory. Validation reads no files: existence is checked when the launch is planned.
//!
//! See `docs/operator-guide.md` for the reference and examples.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::gpu::Bdf;

/// Default QEMU binary (looked up in `PATH`).
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Default host-port distance between instances.
pub const DEFAULT_PORT_STRIDE: u16 = 10;
/// Default vsock guest CID of instance 0.
pub const DEFAULT_VSOCK_CID_BASE: u32 = 100;
/// Default quote generation service (Intel QGS listening on host vsock port 4050).
pub const DEFAULT_QGS: QgsSocket = QgsSocket::Vsock { cid: 2, port: 4050 };
/// Default 64-bit PCI MMIO window (MiB) for OVMF when GPUs are passed through: large enough
/// for the BARs of several 80 GB GPUs.
pub const DEFAULT_PCI_MMIO64_MB: u64 = 262_144;
/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 256;
/// Largest config file accepted on the config disk (they are small TOML files; cocoon-init
/// refuses larger ones: the host–guest contract).
pub const MAX_GUEST_FILE: u64 = protocol::guest::CONFIG_MAX_FILE_SIZE;
/// Most files on the config disk (cocoon-init refuses more: the host–guest contract).
pub const MAX_GUEST_FILES: usize = protocol::guest::CONFIG_MAX_FILES;

/// `launch` config as written (see the module docs).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub name: Option<String>,
    pub role: Option<String>,
    pub image: Option<PathBuf>,
    pub tee: Option<String>,
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub gpus: Vec<String>,
    pub pci_mmio64_mb: Option<u64>,
    #[serde(default)]
    pub qemu: RawQemu,
    pub tdx: Option<RawTdx>,
    #[serde(default)]
    pub guest: RawGuest,
    #[serde(default)]
    pub disks: RawDisks,
    #[serde(default)]
    pub network: RawNetwork,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQemu {
    pub binary: Option<PathBuf>,
    pub bios_dir: Option<PathBuf>,
    pub ld_library_path: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTdx {
    pub firmware: Option<PathBuf>,
    pub quote_generation_socket: Option<String>,
    pub mrconfigid: Option<String>,
    pub mrowner: Option<String>,
    pub mrownerconfig: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuest {
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisks {
    pub model: Option<PathBuf>,
    pub model_verity: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    #[serde(default)]
    pub forwards: Vec<RawForward>,
    pub host_address: Option<String>,
    pub port_stride: Option<u16>,
    pub vsock_cid_base: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub name: String,
    pub host: u16,
    pub guest: u16,
}

/// What the guest runs (a guest role: worker or proxy; the one definition, in `protocol`).
pub use protocol::Role;

/// Which TEE the guest runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tee {
    /// Intel TDX under KVM (production).
    Tdx,
    /// QEMU TCG with the launcher playing a simulated TDX platform (development, CI).
    Sim,
}

impl Tee {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tdx => "tdx",
            Self::Sim => "sim",
        }
    }
}

/// Where QEMU forwards the guest's quote requests (the host's Quote Generation Service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QgsSocket {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
}

/// The QEMU to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuBinary {
    pub binary: PathBuf,
    /// `-L` (firmware and option ROM directory of an unpacked QEMU).
    pub bios_dir: Option<PathBuf>,
    /// `LD_LIBRARY_PATH` for an unpacked QEMU.
    pub ld_library_path: Option<PathBuf>,
}

/// The owner-chosen TD identity registers (48 bytes each, zero when unset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TdIds {
    pub mrconfigid: Option<[u8; 48]>,
    pub mrowner: Option<[u8; 48]>,
    pub mrownerconfig: Option<[u8; 48]>,
}

/// `[tdx]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxConfig {
    /// TDVF (`-bios`).
    pub firmware: PathBuf,
    /// `None`: the guest cannot get quotes (only for bring-up).
    pub qgs: Option<QgsSocket>,
}

/// Model disk and its dm-verity hash tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDisks {
    pub model: PathBuf,
    pub verity: PathBuf,
}

/// One host → guest TCP forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub name: String,
    /// Host port of instance 0.
    pub host: u16,
    pub guest: u16,
}

/// A validated launch config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub role: Role,
    /// Directory with `manifest.json`, `vmlinuz`, `initramfs.cpio.gz`, `cmdline`.
    pub image: PathBuf,
    pub tee: Tee,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Per-VM state: the simulated platform, and `instance-N/` directories.
    pub state_dir: PathBuf,
    pub qemu: QemuBinary,
    /// Present when `tee` is `tdx`.
    pub tdx: Option<TdxConfig>,
    pub td_ids: TdIds,
    /// Config disk entries: tar name → source file, sorted by name.
    pub guest_files: BTreeMap<String, PathBuf>,
    pub model: Option<ModelDisks>,
    pub forwards: Vec<Forward>,
    /// Host address the forwards listen on (`127.0.0.1` unless the service must be public).
    pub host_address: Ipv4Addr,
    pub port_stride: u16,
    pub vsock_cid_base: u32,
    pub gpus: Vec<Bdf>,
    /// OVMF's 64-bit MMIO window (`opt/ovmf/X-PciMmio64Mb`), set when GPUs are passed through.
    pub pci_mmio64_mb: Option<u64>,
}

/// A config error; `field` is the TOML key path (`tdx.firmware`, `network.forwards[1].host`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("{field}: missing ({why})")]
    Missing { field: String, why: &'static str },
    #[error("{field}: {value:?} is invalid (expected {expected})")]
    Invalid {
        field: String,
        value: String,
        expected: String,
    },
}

impl ConfigError {
    /// The field the error is about (`None` for TOML syntax errors).
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Toml { .. } => None,
            Self::Missing { field, .. } | Self::Invalid { field, .. } => Some(field),
        }
    }
}

fn missing(field: &str, why: &'static str) -> ConfigError {
    ConfigError::Missing {
        field: field.into(),
        why,
    }
}

fn invalid(field: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_string().chars().take(200).collect(),
        expected: expected.into(),
    }
}

/// Inputs that do not come from the file.
#[derive(Clone, Debug)]
pub struct Context {
    /// The config file's directory (relative paths are resolved against it).
    pub config_dir: PathBuf,
    /// `--tee`, overriding `tee`.
    pub tee_override: Option<Tee>,
    /// Parent of the default state dir (`<cache>/vm`); the default is `<this>/<name>`.
    pub state_root: PathBuf,
}

/// `p` relative to the config's directory (`.` components dropped).
fn resolve(ctx: &Context, p: &Path) -> PathBuf {
    let p: PathBuf = p
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if p.is_absolute() {
        p
    } else {
        ctx.config_dir.join(p)
    }
}

fn nonempty_path(field: &str, p: &Path) -> Result<(), ConfigError> {
    if p.as_os_str().is_empty() {
        Err(invalid(field, "", "a path"))
    } else {
        Ok(())
    }
}

/// Lowercase letters, digits, `-`; starts with a letter or digit; 1..=max characters.
fn is_simple_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// A config-disk entry name: a plain file name the guest can look up.
pub fn valid_guest_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 100
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A memory size in whole MiB (`512M`, `4G`, `4096MiB`; the one syntax of
/// [`measurements::memory::parse_memory_size`]); `None` if it does not parse or is not a whole
/// number of MiB.
pub fn parse_memory(s: &str) -> Option<u64> {
    let bytes = measurements::memory::parse_memory_size(s).ok()?;
    (bytes % (1 << 20) == 0).then_some(bytes >> 20)
}

fn parse_qgs(s: &str) -> Option<Option<QgsSocket>> {
    if s == "none" {
        return Some(None);
    }
    if let Some(rest) = s.strip_prefix("vsock:") {
        let (cid, port) = rest.split_once(':')?;
        return Some(Some(QgsSocket::Vsock {
            cid: cid.parse().ok()?,
            port: port.parse().ok()?,
        }));
    }
    let path = s.strip_prefix("unix:")?;
    if !path.starts_with('/') {
        return None;
    }
    Some(Some(QgsSocket::Unix(PathBuf::from(path))))
}

fn parse_id(field: &str, s: &str) -> Result<[u8; 48], ConfigError> {
    let bytes = hex::decode(s).map_err(|_| invalid(field, s, "96 hex digits (a SHA-384 value)"))?;
    bytes
        .try_into()
        .map_err(|_| invalid(field, s, "96 hex digits (a SHA-384 value)"))
}

impl VmConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, ctx: &Context) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: "config".into(),
            message: e.to_string().trim().to_string(),
        })?;
        Self::validate(raw, ctx)
    }

    /// Reads, parses and validates a config file (errors name the file).
    pub fn load(
        path: &Path,
        tee_override: Option<Tee>,
        state_root: &Path,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Toml {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let config_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let config_dir = std::path::absolute(&config_dir).unwrap_or(config_dir);
        let ctx = Context {
            config_dir,
            tee_override,
            state_root: state_root.to_path_buf(),
        };
        Self::from_toml(&text, &ctx).map_err(|e| match e {
            ConfigError::Toml { message, .. } => ConfigError::Toml {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Validates a parsed config.
    pub fn validate(raw: RawConfig, ctx: &Context) -> Result<Self, ConfigError> {
        let name = raw
            .name
            .ok_or_else(|| missing("name", "names the VM and its state directory"))?;
        if !is_simple_name(&name, 32) {
            return Err(invalid("name", &name, "1-32 characters of a-z, 0-9 and -"));
        }
        let role = match raw.role.as_deref() {
            None => return Err(missing("role", "worker or proxy")),
            Some("worker") => Role::Worker,
            Some("proxy") => Role::Proxy,
            Some(other) => return Err(invalid("role", other, "\"worker\" or \"proxy\"")),
        };
        let image = raw
            .image
            .ok_or_else(|| missing("image", "the directory `cocoon-image build --out` wrote"))?;
        nonempty_path("image", &image)?;
        let tee = match (ctx.tee_override, raw.tee.as_deref()) {
            (Some(t), _) => t,
            (None, None) => return Err(missing("tee", "\"tdx\" or \"sim\" (or pass --tee)")),
            (None, Some("tdx")) => Tee::Tdx,
            (None, Some("sim")) => Tee::Sim,
            (None, Some(other)) => return Err(invalid("tee", other, "\"tdx\" or \"sim\"")),
        };
        let cpus = raw.cpus.ok_or_else(|| missing("cpus", "number of vCPUs"))?;
        if !(1..=512).contains(&cpus) {
            return Err(invalid("cpus", cpus, "1 to 512"));
        }
        let memory = raw
            .memory
            .ok_or_else(|| missing("memory", "e.g. \"4G\" or \"512M\""))?;
        let memory_mib = parse_memory(&memory)
            .ok_or_else(|| invalid("memory", &memory, "a size like \"512M\" or \"32G\""))?;
        if memory_mib < MIN_MEMORY_MIB {
            return Err(invalid(
                "memory",
                &memory,
                format!("at least {MIN_MEMORY_MIB}M"),
            ));
        }
        let state_dir = match raw.state_dir {
            Some(p) => {
                nonempty_path("state_dir", &p)?;
                resolve(ctx, &p)
            }
            None => ctx.state_root.join(&name),
        };
        if state_dir.to_str().is_none() {
            return Err(invalid("state_dir", state_dir.display(), "a UTF-8 path"));
        }

        let qemu = QemuBinary {
            binary: match raw.qemu.binary {
                // A bare name is looked up in PATH, like a shell would.
                Some(b) if b.components().count() > 1 => resolve(ctx, &b),
                Some(b) => {
                    nonempty_path("qemu.binary", &b)?;
                    b
                }
                None => PathBuf::from(DEFAULT_QEMU),
            },
            bios_dir: raw.qemu.bios_dir.map(|p| resolve(ctx, &p)),
            ld_library_path: raw.qemu.ld_library_path.map(|p| resolve(ctx, &p)),
        };

        let raw_tdx = raw.tdx.unwrap_or_default();
        let td_ids = TdIds {
            mrconfigid: raw_tdx
                .mrconfigid
                .as_deref()
                .map(|s| parse_id("tdx.mrconfigid", s))
                .transpose()?,
            mrowner: raw_tdx
                .mrowner
                .as_deref()
                .map(|s| parse_id("tdx.mrowner", s))
                .transpose()?,
            mrownerconfig: raw_tdx
                .mrownerconfig
                .as_deref()
                .map(|s| parse_id("tdx.mrownerconfig", s))
                .transpose()?,
        };
        let qgs = match raw_tdx.quote_generation_socket.as_deref() {
            None => Some(DEFAULT_QGS),
            Some(s) => parse_qgs(s).ok_or_else(|| {
                invalid(
                    "tdx.quote_generation_socket",
                    s,
                    "\"vsock:CID:PORT\", \"unix:/absolute/path\" or \"none\"",
                )
            })?,
        };
        let tdx = match tee {
            Tee::Sim => None,
            Tee::Tdx => {
                let fw = raw_tdx.firmware.ok_or_else(|| {
                    missing(
                        "tdx.firmware",
                        "the TDVF (OVMF.inteltdx.fd) path, required when tee = \"tdx\"",
                    )
                })?;
                nonempty_path("tdx.firmware", &fw)?;
                Some(TdxConfig {
                    firmware: resolve(ctx, &fw),
                    qgs,
                })
            }
        };

        let mut guest_files = BTreeMap::new();
        for (name, path) in raw.guest.files {
            let field = format!("guest.files.{name:?}");
            if !valid_guest_file_name(&name) {
                return Err(invalid(
                    &field,
                    &name,
                    "a plain file name of A-Z, a-z, 0-9, '.', '_', '-' (not starting with '.'), under 100 bytes",
                ));
            }
            nonempty_path(&field, &path)?;
            guest_files.insert(name, resolve(ctx, &path));
        }
        if guest_files.len() > MAX_GUEST_FILES {
            return Err(invalid(
                "guest.files",
                format!("{} files", guest_files.len()),
                format!("at most {MAX_GUEST_FILES} files"),
            ));
        }
        if guest_files.is_empty() {
            return Err(missing(
                "guest.files",
                "at least one file for the config disk, e.g. \"init.toml\" = \"init.toml\"",
            ));
        }

        let model = match (raw.disks.model, raw.disks.model_verity) {
            (None, None) => None,
            (Some(m), Some(v)) => {
                nonempty_path("disks.model", &m)?;
                nonempty_path("disks.model_verity", &v)?;
                Some(ModelDisks {
                    model: resolve(ctx, &m),
                    verity: resolve(ctx, &v),
                })
            }
            (Some(_), None) => {
                return Err(missing(
                    "disks.model_verity",
                    "the model disk is only usable with its dm-verity hash tree",
                ))
            }
            (None, Some(_)) => {
                return Err(missing(
                    "disks.model",
                    "disks.model_verity is set without a model disk",
                ))
            }
        };

        let port_stride = raw.network.port_stride.unwrap_or(DEFAULT_PORT_STRIDE);
        if port_stride == 0 {
            return Err(invalid("network.port_stride", 0, "at least 1"));
        }
        let mut names = BTreeSet::new();
        let mut hosts = BTreeSet::new();
        let mut guests = BTreeSet::new();
        let mut forwards = Vec::new();
        for (i, f) in raw.network.forwards.into_iter().enumerate() {
            let field = |k: &str| format!("network.forwards[{i}].{k}");
            if !is_simple_name(&f.name, 32) {
                return Err(invalid(
                    &field("name"),
                    &f.name,
                    "1-32 characters of a-z, 0-9 and -",
                ));
            }
            if !names.insert(f.name.clone()) {
                return Err(invalid(
                    &field("name"),
                    &f.name,
                    "a name not used by another forward",
                ));
            }
            if f.host == 0 || !hosts.insert(f.host) {
                return Err(invalid(
                    &field("host"),
                    f.host,
                    "a port 1-65535 not used by another forward",
                ));
            }
            if f.guest == 0 || !guests.insert(f.guest) {
                return Err(invalid(
                    &field("guest"),
                    f.guest,
                    "a port 1-65535 not used by another forward",
                ));
            }
            forwards.push(Forward {
                name: f.name,
                host: f.host,
                guest: f.guest,
            });
        }
        if let (Some(lo), Some(hi)) = (hosts.first(), hosts.last()) {
            if hi - lo >= port_stride {
                return Err(invalid(
                    "network.port_stride",
                    port_stride,
                    format!(
                        "more than {} (the forwards' host ports {lo}..={hi} would overlap the next instance's)",
                        hi - lo
                    ),
                ));
            }
        }
        let host_address = match raw.network.host_address.as_deref() {
            None => Ipv4Addr::LOCALHOST,
            Some(s) => s.parse().map_err(|_| {
                invalid(
                    "network.host_address",
                    s,
                    "an IPv4 address like \"127.0.0.1\" or \"0.0.0.0\"",
                )
            })?,
        };
        let vsock_cid_base = raw.network.vsock_cid_base.unwrap_or(DEFAULT_VSOCK_CID_BASE);
        if !(3..u32::MAX).contains(&vsock_cid_base) {
            return Err(invalid(
                "network.vsock_cid_base",
                vsock_cid_base,
                "3 or more (0-2 are reserved for the hypervisor and host)",
            ));
        }

        let mut gpus = Vec::new();
        for (i, g) in raw.gpus.iter().enumerate() {
            let field = format!("gpus[{i}]");
            let bdf: Bdf = g
                .parse()
                .map_err(|_| invalid(&field, g, "a PCI address like \"0000:01:00.0\""))?;
            if gpus.contains(&bdf) {
                return Err(invalid(&field, g, "a GPU not listed twice"));
            }
            gpus.push(bdf);
        }
        if !gpus.is_empty() && tee == Tee::Sim {
            return Err(invalid(
                "gpus",
                raw.gpus.join(", "),
                "no GPUs with tee = \"sim\" (passthrough needs KVM; use --tee tdx)",
            ));
        }
        let pci_mmio64_mb = match (raw.pci_mmio64_mb, gpus.is_empty()) {
            (Some(0), _) => return Err(invalid("pci_mmio64_mb", 0, "a window size in MiB")),
            (Some(v), _) => Some(v),
            (None, false) => Some(DEFAULT_PCI_MMIO64_MB),
            (None, true) => None,
        };

        Ok(Self {
            name,
            role,
            image: resolve(ctx, &image),
            tee,
            cpus,
            memory_mib,
            state_dir,
            qemu,
            tdx,
            td_ids,
            guest_files,
            model,
            forwards,
            host_address,
            port_stride,
            vsock_cid_base,
            gpus,
            pci_mmio64_mb,
        })
    }

    /// The numbers of instance `index` (see [`Instance`]).
    pub fn instance(&self, index: u32) -> Result<Instance, ConfigError> {
        let mut forwards = Vec::new();
        for f in &self.forwards {
            let port = u32::from(f.host) + index.saturating_mul(u32::from(self.port_stride));
            let host = u16::try_from(port).map_err(|_| {
                invalid(
                    "--instance",
                    index,
                    format!(
                        "an index whose host port for {} ({} + {index} * {}) is at most 65535",
                        f.name, f.host, self.port_stride
                    ),
                )
            })?;
            forwards.push(Forward {
                name: f.name.clone(),
                host,
                guest: f.guest,
            });
        }
        let guest_cid = self
            .vsock_cid_base
            .checked_add(index)
            .filter(|c| *c < u32::MAX)
            .ok_or_else(|| {
                invalid(
                    "--instance",
                    index,
                    "an index whose vsock CID fits in 32 bits",
                )
            })?;
        Ok(Instance {
            index,
            forwards,
            guest_cid,
            dir: self.state_dir.join(format!("instance-{index}")),
        })
    }
}

/// What differs between instances of one config:
///
/// ```text
/// host port  = forwards[i].host + index * network.port_stride
/// guest CID  = network.vsock_cid_base + index
/// state      = state_dir/instance-<index>/
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub index: u32,
    /// Forwards with this instance's host ports.
    pub forwards: Vec<Forward>,
    pub guest_cid: u32,
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Some(512));
        assert_eq!(parse_memory("4G"), Some(4096));
        assert_eq!(parse_memory("2GiB"), Some(2048));
        assert_eq!(parse_memory("100MiB"), Some(100));
        assert_eq!(parse_memory("4g"), Some(4096));
        assert_eq!(parse_memory("1T"), Some(1 << 20));
        for bad in ["", "4", "G", "1536K", "-1G", "4 G", "99999999999999999999G"] {
            assert_eq!(parse_memory(bad), None, "{bad}");
        }
    }

    #[test]
    fn qgs_forms() {
        assert_eq!(
            parse_qgs("vsock:2:4050"),
            Some(Some(QgsSocket::Vsock { cid: 2, port: 4050 }))
        );
        assert_eq!(
            parse_qgs("unix:/var/run/tdx-qgs/qgs.socket"),
            Some(Some(QgsSocket::Unix("/var/run/tdx-qgs/qgs.socket".into())))
        );
        assert_eq!(parse_qgs("none"), Some(None));
        for bad in ["vsock:2", "vsock:x:1", "unix:rel", "tcp:1:2", ""] {
            assert_eq!(parse_qgs(bad), None, "{bad}");
        }
    }

    #[test]
    fn guest_file_names() {
        assert!(valid_guest_file_name("init.toml"));
        assert!(valid_guest_file_name("service_2-b.json"));
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(100)] {
            assert!(!valid_guest_file_name(bad), "{bad}");
        }
    }
}
