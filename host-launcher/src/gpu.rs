//! GPU passthrough preparation: list display and NVIDIA PCI devices, hand them to `vfio-pci`,
//! give them back.
//!
//! Everything goes through a [`Sysfs`]: [`HostSysfs`] reads and writes files under a root path
//! (`/` on a host; a temporary tree in tests). Paths are relative to that root
//! (`sys/bus/pci/devices/0000:01:00.0/class`).
//!
//! # Binding (Linux PCI driver core, `Documentation/ABI/testing/sysfs-bus-pci`)
//!
//! For every device to bind, in order:
//! 1. `BDF` → `sys/bus/pci/drivers/<current driver>/unbind` (if bound to something else);
//! 2. `vfio-pci` → `sys/bus/pci/devices/BDF/driver_override`;
//! 3. `BDF` → `sys/bus/pci/drivers_probe`;
//! 4. verify that `sys/bus/pci/devices/BDF/driver` now points at `vfio-pci`.
//!
//! Unbinding reverses it: `BDF` → `drivers/vfio-pci/unbind`, an empty line →
//! `driver_override` (clears it), `BDF` → `drivers_probe`, then report what claimed the device
//! (possibly nothing, when no host driver is loaded).
//!
//! VFIO hands a guest a whole IOMMU group, so the other members of the device's group are
//! checked too: PCI bridges stay with their host driver; other functions of the same slot
//! (a GPU's audio function) are bound along with it; devices elsewhere in the group are bound
//! only when asked (`--group`), because a poorly isolated group can hold a host disk or NIC.
//!
//! # Trust boundary
//!
//! This is host administration; nothing here is evidence. A GPU's own attestation (NVIDIA
//! confidential computing mode) is checked inside the guest.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where PCI devices live, relative to the sysfs root.
pub const PCI_DEVICES: &str = "sys/bus/pci/devices";
/// Where PCI drivers live.
pub const PCI_DRIVERS: &str = "sys/bus/pci/drivers";
/// Writing a BDF here asks the driver core to probe the device again.
pub const DRIVERS_PROBE: &str = "sys/bus/pci/drivers_probe";
/// IOMMU groups.
pub const IOMMU_GROUPS: &str = "sys/kernel/iommu_groups";
/// The driver that hands devices to QEMU.
pub const VFIO_DRIVER: &str = "vfio-pci";
/// PCI vendor id of NVIDIA.
pub const NVIDIA_VENDOR: u16 = 0x10de;
/// PCI base class of display controllers.
pub const DISPLAY_CLASS: u8 = 0x03;
/// PCI class (base + subclass) of PCI-to-PCI bridges.
pub const BRIDGE_CLASS: u16 = 0x0604;

/// The file operations GPU binding needs, on paths relative to a root.
pub trait Sysfs {
    /// The contents of a file.
    fn read(&self, path: &str) -> io::Result<String>;
    /// The last component of a symlink's target; `None` if there is no such link.
    fn link_name(&self, path: &str) -> io::Result<Option<String>>;
    /// The names in a directory, sorted.
    fn list(&self, path: &str) -> io::Result<Vec<String>>;
    /// Whether a path exists.
    fn exists(&self, path: &str) -> bool;
    /// Writes `value` to an attribute file.
    fn write(&self, path: &str, value: &str) -> io::Result<()>;
}

/// [`Sysfs`] on the files under `root` (`/` on a host).
#[derive(Clone, Debug)]
pub struct HostSysfs {
    root: PathBuf,
}

impl HostSysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

impl Sysfs for HostSysfs {
    fn read(&self, path: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(path))
    }

    fn link_name(&self, path: &str) -> io::Result<Option<String>> {
        match std::fs::read_link(self.path(path)) {
            Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, path: &str) -> io::Result<Vec<String>> {
        let mut names = std::fs::read_dir(self.path(path))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    fn write(&self, path: &str, value: &str) -> io::Result<()> {
        // Attribute files exist already; never create one on a real sysfs.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(path))?;
        f.write_all(value.as_bytes())
    }
}

/// A PCI address `domain:bus:device.function`, normalized to lowercase `0000:01:00.0`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf(String);

impl Bdf {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `domain:bus:device` without the function: functions of one slot share it.
    pub fn slot(&self) -> &str {
        self.0.rsplit_once('.').map_or(&self.0, |(s, _)| s)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A malformed PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a PCI address (expected domain:bus:device.function, e.g. 0000:01:00.0)")]
pub struct BdfError {
    pub value: String,
}

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BdfError {
            value: s.chars().take(64).collect(),
        };
        let (dbd, func) = s.split_once('.').ok_or_else(err)?;
        let parts: Vec<&str> = dbd.split(':').collect();
        let [domain, bus, dev] = parts.as_slice() else {
            return Err(err());
        };
        let hex = |p: &str, len: usize| p.len() == len && p.chars().all(|c| c.is_ascii_hexdigit());
        let dev_ok = hex(dev, 2) && u8::from_str_radix(dev, 16).is_ok_and(|d| d <= 0x1f);
        let func_ok = func.len() == 1 && matches!(func.as_bytes()[0], b'0'..=b'7');
        if !(hex(domain, 4) && hex(bus, 2) && dev_ok && func_ok) {
            return Err(err());
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

/// One PCI device as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// 24-bit class code (base class, subclass, programming interface).
    pub class: u32,
    /// The bound driver's name.
    pub driver: Option<String>,
    /// The IOMMU group number (`None`: the IOMMU is off).
    pub iommu_group: Option<String>,
    /// `driver_override`, if set.
    pub driver_override: Option<String>,
}

impl PciDevice {
    pub fn is_display(&self) -> bool {
        (self.class >> 16) as u8 == DISPLAY_CLASS
    }

    pub fn is_nvidia(&self) -> bool {
        self.vendor == NVIDIA_VENDOR
    }

    pub fn is_bridge(&self) -> bool {
        (self.class >> 8) as u16 == BRIDGE_CLASS
    }

    pub fn on_vfio(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_DRIVER)
    }
}

/// GPU operation failures; each names the device or file.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: unexpected contents {value:?} (expected {expected})")]
    Parse {
        path: String,
        value: String,
        expected: &'static str,
    },
    #[error("no PCI device {0} (not in /sys/bus/pci/devices)")]
    NoDevice(Bdf),
    #[error("{0} has no IOMMU group: the IOMMU is off; boot with intel_iommu=on iommu=pt")]
    NoIommuGroup(Bdf),
    #[error("the vfio-pci driver is not loaded: modprobe vfio-pci")]
    NoVfioDriver,
    #[error(
        "iommu group {group} of {bdf} also holds {other} (driver {}); VFIO passes whole groups: \
         bind them all with --group, or move the GPU to a slot with its own group (ACS)",
        driver.as_deref().unwrap_or("none")
    )]
    SharedGroup {
        bdf: Bdf,
        group: String,
        other: Bdf,
        driver: Option<String>,
    },
    #[error("{bdf} is bound to {} after probing, not {expected}", got.as_deref().unwrap_or("no driver"))]
    NotBound {
        bdf: Bdf,
        expected: &'static str,
        got: Option<String>,
    },
    #[error("{bdf} is bound to {}, not vfio-pci", driver.as_deref().unwrap_or("no driver"))]
    NotOnVfio { bdf: Bdf, driver: Option<String> },
    #[error("{bdf} is still bound to vfio-pci after unbinding")]
    StillOnVfio { bdf: Bdf },
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> GpuError + '_ {
    move |source| GpuError::Io {
        path: path.to_string(),
        source,
    }
}

fn read_hex(sysfs: &dyn Sysfs, path: &str, expected: &'static str) -> Result<u32, GpuError> {
    let text = sysfs.read(path).map_err(io_err(path))?;
    let t = text.trim();
    t.strip_prefix("0x")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| GpuError::Parse {
            path: path.to_string(),
            value: t.chars().take(32).collect(),
            expected,
        })
}

fn dev_path(bdf: &Bdf, attr: &str) -> String {
    format!("{PCI_DEVICES}/{bdf}/{attr}")
}

/// Reads one device.
pub fn device(sysfs: &dyn Sysfs, bdf: &Bdf) -> Result<PciDevice, GpuError> {
    if !sysfs.exists(&format!("{PCI_DEVICES}/{bdf}")) {
        return Err(GpuError::NoDevice(bdf.clone()));
    }
    let vendor = read_hex(sysfs, &dev_path(bdf, "vendor"), "0x and 4 hex digits")?;
    let device = read_hex(sysfs, &dev_path(bdf, "device"), "0x and 4 hex digits")?;
    let class = read_hex(sysfs, &dev_path(bdf, "class"), "0x and 6 hex digits")?;
    let link = |attr: &str| {
        let p = dev_path(bdf, attr);
        sysfs.link_name(&p).map_err(io_err(&p))
    };
    let override_path = dev_path(bdf, "driver_override");
    let driver_override = match sysfs.read(&override_path) {
        Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty() && s != "(null)"),
        Err(_) => None,
    };
    Ok(PciDevice {
        bdf: bdf.clone(),
        vendor: vendor as u16,
        device: device as u16,
        class,
        driver: link("driver")?,
        iommu_group: link("iommu_group")?,
        driver_override,
    })
}

fn all_devices(sysfs: &dyn Sysfs) -> Result<Vec<PciDevice>, GpuError> {
    let names = sysfs.list(PCI_DEVICES).map_err(io_err(PCI_DEVICES))?;
    let mut out = Vec::new();
    for name in names {
        // Skip anything that is not an address (there should be nothing else).
        if let Ok(bdf) = name.parse::<Bdf>() {
            out.push(device(sysfs, &bdf)?);
        }
    }
    Ok(out)
}

/// Display-class devices and NVIDIA devices (GPUs, their audio functions, NVSwitches),
/// sorted by address.
pub fn list(sysfs: &dyn Sysfs) -> Result<Vec<PciDevice>, GpuError> {
    let mut v: Vec<PciDevice> = all_devices(sysfs)?
        .into_iter()
        .filter(|d| d.is_display() || d.is_nvidia())
        .collect();
    v.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(v)
}

/// The devices in IOMMU group `group`, sorted by address.
pub fn group_members(sysfs: &dyn Sysfs, group: &str) -> Result<Vec<PciDevice>, GpuError> {
    let path = format!("{IOMMU_GROUPS}/{group}/devices");
    let names = sysfs.list(&path).map_err(io_err(&path))?;
    names
        .iter()
        .filter_map(|n| n.parse::<Bdf>().ok())
        .map(|b| device(sysfs, &b))
        .collect()
}

/// What happened to one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub bdf: Bdf,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |d: &Option<String>| d.clone().unwrap_or_else(|| "no driver".into());
        if self.before == self.after {
            write!(f, "{}: already {}", self.bdf, name(&self.after))
        } else {
            write!(
                f,
                "{}: {} -> {}",
                self.bdf,
                name(&self.before),
                name(&self.after)
            )
        }
    }
}

/// Which devices of the group an operation acts on: the device, the other functions of its
/// slot, and, with `whole_group`, every other non-bridge member.
fn targets(
    sysfs: &dyn Sysfs,
    dev: &PciDevice,
    whole_group: bool,
) -> Result<Vec<PciDevice>, GpuError> {
    let group = dev
        .iommu_group
        .clone()
        .ok_or_else(|| GpuError::NoIommuGroup(dev.bdf.clone()))?;
    let mut out = vec![dev.clone()];
    for m in group_members(sysfs, &group)? {
        if m.bdf == dev.bdf || m.is_bridge() {
            continue;
        }
        if whole_group || m.bdf.slot() == dev.bdf.slot() {
            out.push(m);
        } else if !m.on_vfio() && m.driver.is_some() {
            return Err(GpuError::SharedGroup {
                bdf: dev.bdf.clone(),
                group,
                other: m.bdf,
                driver: m.driver,
            });
        }
    }
    Ok(out)
}

fn write(sysfs: &dyn Sysfs, path: &str, value: &str) -> Result<(), GpuError> {
    sysfs.write(path, value).map_err(io_err(path))
}

/// Binds `bdf` (and the other functions of its slot; with `whole_group` its whole IOMMU
/// group) to `vfio-pci` and verifies the result. See the module docs for the sequence.
pub fn bind(sysfs: &dyn Sysfs, bdf: &Bdf, whole_group: bool) -> Result<Vec<Change>, GpuError> {
    let dev = device(sysfs, bdf)?;
    let targets = targets(sysfs, &dev, whole_group)?;
    if !sysfs.exists(&format!("{PCI_DRIVERS}/{VFIO_DRIVER}")) {
        return Err(GpuError::NoVfioDriver);
    }
    let mut changes = Vec::new();
    for t in targets {
        if t.on_vfio() {
            changes.push(Change {
                bdf: t.bdf.clone(),
                before: t.driver.clone(),
                after: t.driver.clone(),
            });
            continue;
        }
        if let Some(d) = &t.driver {
            write(sysfs, &format!("{PCI_DRIVERS}/{d}/unbind"), t.bdf.as_str())?;
        }
        write(sysfs, &dev_path(&t.bdf, "driver_override"), VFIO_DRIVER)?;
        write(sysfs, DRIVERS_PROBE, t.bdf.as_str())?;
        let now = device(sysfs, &t.bdf)?;
        if !now.on_vfio() {
            return Err(GpuError::NotBound {
                bdf: t.bdf,
                expected: VFIO_DRIVER,
                got: now.driver,
            });
        }
        changes.push(Change {
            bdf: t.bdf,
            before: t.driver,
            after: now.driver,
        });
    }
    Ok(changes)
}

/// Gives `bdf` (and the other functions of its slot; with `whole_group` its whole IOMMU
/// group) back to the host: leaves `vfio-pci`, clears `driver_override`, probes again.
pub fn unbind(sysfs: &dyn Sysfs, bdf: &Bdf, whole_group: bool) -> Result<Vec<Change>, GpuError> {
    let dev = device(sysfs, bdf)?;
    let targets = match targets(sysfs, &dev, whole_group) {
        Ok(t) => t,
        // Giving back a device never needs the group to be clean.
        Err(GpuError::SharedGroup { .. }) | Err(GpuError::NoIommuGroup(_)) => vec![dev],
        Err(e) => return Err(e),
    };
    let mut changes = Vec::new();
    for t in targets {
        let ours = t.on_vfio() || t.driver_override.as_deref() == Some(VFIO_DRIVER);
        if !ours {
            continue;
        }
        if t.on_vfio() {
            write(
                sysfs,
                &format!("{PCI_DRIVERS}/{VFIO_DRIVER}/unbind"),
                t.bdf.as_str(),
            )?;
        }
        write(sysfs, &dev_path(&t.bdf, "driver_override"), "\n")?;
        write(sysfs, DRIVERS_PROBE, t.bdf.as_str())?;
        let now = device(sysfs, &t.bdf)?;
        if now.on_vfio() {
            return Err(GpuError::StillOnVfio { bdf: t.bdf });
        }
        changes.push(Change {
            bdf: t.bdf,
            before: t.driver,
            after: now.driver,
        });
    }
    Ok(changes)
}

/// Checks that each of `gpus` is bound to `vfio-pci` (what `launch` needs before QEMU starts).
pub fn check_bound(sysfs: &dyn Sysfs, gpus: &[Bdf]) -> Result<(), GpuError> {
    for bdf in gpus {
        let d = device(sysfs, bdf)?;
        if !d.on_vfio() {
            return Err(GpuError::NotOnVfio {
                bdf: bdf.clone(),
                driver: d.driver,
            });
        }
    }
    Ok(())
}

/// The `gpu list` table.
pub fn render_list(sysfs: &dyn Sysfs, devices: &[PciDevice]) -> String {
    let mut out = format!(
        "{:<14}{:<11}{:<8}{:<12}{}\n",
        "ADDRESS", "ID", "CLASS", "DRIVER", "IOMMU GROUP"
    );
    for d in devices {
        let group = match &d.iommu_group {
            None => "none (IOMMU off)".to_string(),
            Some(g) => {
                let peers: BTreeSet<String> = group_members(sysfs, g)
                    .map(|m| {
                        m.into_iter()
                            .filter(|m| m.bdf != d.bdf)
                            .map(|m| {
                                format!(
                                    "{} ({})",
                                    m.bdf,
                                    m.driver.as_deref().unwrap_or("no driver")
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if peers.is_empty() {
                    g.clone()
                } else {
                    format!(
                        "{g} with {}",
                        peers.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }
            }
        };
        out.push_str(&format!(
            "{:<14}{:<11}{:<8}{:<12}{}\n",
            d.bdf.as_str(),
            format!("{:04x}:{:04x}", d.vendor, d.device),
            format!("{:06x}", d.class),
            d.driver.as_deref().unwrap_or("-"),
            group
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parsing() {
        let b: Bdf = "0000:1A:00.1".parse().unwrap();
        assert_eq!(b.as_str(), "0000:1a:00.1");
        assert_eq!(b.slot(), "0000:1a:00");
        for bad in [
            "",
            "01:00.0",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000:0g:00.0",
            "00000:01:00.0",
            "0000:01:00.0.1",
            "0000:01:00.0/../x",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }
}
