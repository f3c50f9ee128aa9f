//! Linux TDX guest device: quotes through configfs-tsm, measurement registers through the TSM
//! measurement sysfs files of the `tdx_guest` driver.
//!
//! # Kernel ABI used
//!
//! **Quotes: configfs-tsm reports** (Linux >= 6.7; `Documentation/ABI/testing/configfs-tsm`,
//! renamed `configfs-tsm-report` in later kernels; `drivers/virt/coco/tsm.c`, later
//! `drivers/virt/coco/guest/report.c`). Root [`DEFAULT_REPORT_ROOT`]. One [`TeeDevice::quote`]:
//!
//! 1. `mkdir $root/cocoon-<pid>-<random>`: a report entry of our own. The kernel populates it with
//!    attribute files. `ENOENT` means configfs-tsm is not there (configfs not mounted, or no TSM
//!    core); `ENXIO` means no provider registered; both map to [`TeeError::Unavailable`].
//! 2. read `provider`, require `tdx_guest` (the outblob is then an Intel TDX DCAP quote).
//! 3. read `generation` (decimal text), write the 64 bytes of report_data to `inblob` in one
//!    write and close it (configfs commits a binary attribute on close), read `outblob`, read
//!    `generation` again. The ABI doc says generation increments on every write to `inblob` or
//!    an option; anything but exactly one increment means another writer raced us on this
//!    entry, and the outblob may not be ours: error.
//! 4. `rmdir` the entry, on success and on every error path (a drop guard).
//!
//! **Measurement registers: TSM measurement sysfs** (Linux >= 6.16;
//! `Documentation/ABI/testing/sysfs-devices-virtual-misc-tdx_guest`, `include/linux/tsm-mr.h`,
//! `drivers/virt/coco/guest/tsm-mr.c`). Root [`DEFAULT_MEASUREMENTS_ROOT`], a link to
//! `/sys/devices/virtual/misc/tdx_guest/measurements`. Files used, each a 48-byte binary
//! attribute: `mrtd:sha384` (read only) and `rtmr0:sha384` … `rtmr3:sha384` (read returns the
//! current value; a 48-byte write at offset 0 extends the RTMR, shorter writes fail with
//! `EINVAL`). The same directory also has `mrconfigid`, `mrowner` and `mrownerconfig`, which
//! this module does not read. Older kernels (e.g. 6.12) have no upstream RTMR ABI for user
//! space: there [`TeeDevice::extend_rtmr`] returns [`TeeError::Unavailable`].
//!
//! # Registers
//!
//! TD attributes and XFAM are not exposed in sysfs, so [`TeeDevice::registers`] takes all
//! registers from one fresh quote over all-zero report_data (one consistent snapshot, as signed
//! by the TDX module, at the cost of a quote generation). [`LinuxTdx::read_mrtd`] and
//! [`LinuxTdx::read_rtmr`] read single registers cheaply from sysfs.
//!
//! # What was tested
//!
//! Nothing here has run on real TDX hardware or a real kernel. The tests
//! (`tests/linux_tdx.rs`) run against fake trees in a temporary directory: a fake
//! [`ConfigFs`] plays the kernel's part of configfs-tsm (creates the attribute files on
//! `mkdir`, answers an `inblob` write with an outblob and a generation bump), and plain files
//! stand in for the sysfs registers (so extension there is a plain overwrite).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use measurements::quote::ParsedQuote;
use measurements::{Sha384, TdRegisters};

use crate::{TeeDevice, TeeError};

/// Where configfs-tsm report entries are created.
pub const DEFAULT_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// Where the `tdx_guest` driver exposes measurement registers (Linux >= 6.16).
pub const DEFAULT_MEASUREMENTS_ROOT: &str = "/sys/class/misc/tdx_guest/measurements";
/// The configfs-tsm `provider` of Intel TDX guests.
pub const TDX_PROVIDER: &str = "tdx_guest";

/// Linux `ENXIO`: configfs-tsm refuses `mkdir` while no provider is registered.
const ENXIO: i32 = 6;

/// The file-system operations of the configfs-tsm flow.
///
/// Production uses [`OsConfigFs`]. On real configfs the kernel acts on these operations
/// (`mkdir` creates attribute files, writing `inblob` prepares a report); a test substitutes
/// a fake that does the kernel's part on an ordinary directory.
pub trait ConfigFs: Send + Sync + std::fmt::Debug {
    /// Creates directory `path` (`mkdir`, not recursive).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes directory `path` (`rmdir`).
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Reads the whole file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Writes `data` to the existing file at `path` in one `write` and closes it.
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
}

/// [`ConfigFs`] over the real file system (`std::fs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct OsConfigFs;

impl ConfigFs for OsConfigFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        write_once(path, data)
    }
}

/// Opens the existing file `path` for writing (no create, no truncate), writes `data` with a
/// single `write` and closes the file. Kernel attributes take their value in one piece, so a
/// short write is an error rather than something to continue.
fn write_once(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let written = file.write(data)?;
    if written != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {written} of {} bytes", data.len()),
        ));
    }
    Ok(())
}

/// A Linux TDX guest: quotes from configfs-tsm, RTMRs from the `tdx_guest` sysfs files.
///
/// Both roots are injectable so the device can be pointed at fake trees; see the module docs
/// for the kernel ABI.
#[derive(Debug)]
pub struct LinuxTdx {
    report_root: PathBuf,
    measurements_root: PathBuf,
    configfs: Box<dyn ConfigFs>,
}

impl Default for LinuxTdx {
    fn default() -> Self {
        Self::new()
    }
}

impl LinuxTdx {
    /// The device at the kernel's default paths ([`DEFAULT_REPORT_ROOT`],
    /// [`DEFAULT_MEASUREMENTS_ROOT`]). Nothing is opened until first use.
    pub fn new() -> Self {
        Self::with_roots(DEFAULT_REPORT_ROOT, DEFAULT_MEASUREMENTS_ROOT)
    }

    /// The device with configfs-tsm report entries under `report_root` and measurement
    /// register files under `measurements_root`.
    pub fn with_roots(
        report_root: impl Into<PathBuf>,
        measurements_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            report_root: report_root.into(),
            measurements_root: measurements_root.into(),
            configfs: Box::new(OsConfigFs),
        }
    }

    /// Replaces the file-system operations of the configfs-tsm flow (tests: a fake kernel).
    pub fn with_configfs(mut self, configfs: impl ConfigFs + 'static) -> Self {
        self.configfs = Box::new(configfs);
        self
    }

    /// The configfs-tsm report root.
    pub fn report_root(&self) -> &Path {
        &self.report_root
    }

    /// The measurement register directory.
    pub fn measurements_root(&self) -> &Path {
        &self.measurements_root
    }

    /// Reads MRTD from `mrtd:sha384`.
    pub fn read_mrtd(&self) -> Result<Sha384, TeeError> {
        self.read_register("mrtd:sha384")
    }

    /// Reads RTMR `index` (0..=3) from `rtmr<index>:sha384`.
    pub fn read_rtmr(&self, index: u8) -> Result<Sha384, TeeError> {
        if index > 3 {
            return Err(TeeError::Registers(format!(
                "rtmr index {index} out of range (0..=3)"
            )));
        }
        self.read_register(&rtmr_file(index))
    }

    fn read_register(&self, file: &str) -> Result<Sha384, TeeError> {
        let path = self.measurements_root.join(file);
        let bytes = std::fs::read(&path).map_err(|e| self.sysfs_error("read", &path, e))?;
        Sha384::try_from(bytes.as_slice()).map_err(|_| {
            TeeError::Registers(format!(
                "{}: expected 48 bytes, got {}",
                path.display(),
                bytes.len()
            ))
        })
    }

    fn sysfs_error(&self, op: &'static str, path: &Path, source: io::Error) -> TeeError {
        if source.kind() == io::ErrorKind::NotFound && !self.measurements_root.is_dir() {
            return TeeError::Unavailable(format!(
                "tdx measurement registers not found at {}: they need Linux >= 6.16 with the \
                 tdx_guest module loaded",
                self.measurements_root.display()
            ));
        }
        TeeError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Creates a uniquely named report entry; it is removed when the guard is dropped.
    fn create_entry(&self) -> Result<ReportEntry<'_>, TeeError> {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random)
            .map_err(|e| TeeError::Quote(format!("report entry name: getrandom: {e}")))?;
        let name = format!("cocoon-{}-{}", std::process::id(), hex::encode(random));
        let path = self.report_root.join(name);
        match self.configfs.create_dir(&path) {
            Ok(()) => Ok(ReportEntry {
                configfs: self.configfs.as_ref(),
                path,
                removed: false,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TeeError::Unavailable(format!(
                "configfs-tsm not mounted at {}: is configfs mounted and the tdx_guest module \
                 loaded?",
                self.report_root.display()
            ))),
            Err(e) if e.raw_os_error() == Some(ENXIO) => Err(TeeError::Unavailable(format!(
                "no configfs-tsm provider registered at {}: is the tdx_guest module loaded?",
                self.report_root.display()
            ))),
            Err(source) => Err(TeeError::Io {
                op: "mkdir",
                path,
                source,
            }),
        }
    }

    /// Steps 2 and 3 of the flow in the module docs, on an entry of our own.
    fn generate(
        &self,
        entry: &ReportEntry<'_>,
        report_data: &[u8; 64],
    ) -> Result<Vec<u8>, TeeError> {
        let provider = entry.read("provider")?;
        let provider = String::from_utf8_lossy(&provider);
        let provider = provider.trim_end_matches('\n');
        if provider != TDX_PROVIDER {
            return Err(TeeError::Quote(format!(
                "configfs-tsm provider at {} is {provider:?}, expected {TDX_PROVIDER:?}",
                self.report_root.display()
            )));
        }
        let before = entry.generation()?;
        entry.write("inblob", report_data)?;
        let outblob = entry.read("outblob")?;
        let after = entry.generation()?;
        if before.checked_add(1) != Some(after) {
            return Err(TeeError::Quote(format!(
                "report entry {} changed concurrently: generation {before} before writing inblob, \
                 {after} after reading outblob (expected one write)",
                entry.path.display()
            )));
        }
        if outblob.is_empty() {
            return Err(TeeError::Quote(format!(
                "empty outblob in {}",
                entry.path.display()
            )));
        }
        Ok(outblob)
    }
}

fn rtmr_file(index: u8) -> String {
    format!("rtmr{index}:sha384")
}

impl TeeDevice for LinuxTdx {
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError> {
        let entry = self.create_entry()?;
        // On error the guard removes the entry; on success remove it here and report failure.
        let quote = self.generate(&entry, report_data)?;
        entry.remove()?;
        Ok(quote)
    }

    /// Writes `digest` to `rtmr<index>:sha384`. `event` is not recorded: the caller keeps the
    /// event log.
    fn extend_rtmr(&self, index: u8, digest: &Sha384, _event: &[u8]) -> Result<(), TeeError> {
        if !(2..=3).contains(&index) {
            return Err(TeeError::RtmrIndex(index));
        }
        let path = self.measurements_root.join(rtmr_file(index));
        write_once(&path, digest).map_err(|e| self.sysfs_error("write", &path, e))
    }

    /// All registers from one fresh quote over zero report_data (see the module docs).
    fn registers(&self) -> Result<TdRegisters, TeeError> {
        let report_data = [0u8; 64];
        let quote = self.quote(&report_data)?;
        let parsed = ParsedQuote::parse(&quote)
            .map_err(|e| TeeError::Registers(format!("quote from configfs-tsm: {e}")))?;
        if parsed.report.report_data != report_data {
            return Err(TeeError::Registers(
                "quote from configfs-tsm carries report_data other than the requested zeros"
                    .to_string(),
            ));
        }
        Ok(parsed.report.registers)
    }
}

/// A configfs-tsm report entry of ours; dropping it removes the directory.
struct ReportEntry<'a> {
    configfs: &'a dyn ConfigFs,
    path: PathBuf,
    removed: bool,
}

impl ReportEntry<'_> {
    fn read(&self, attribute: &str) -> Result<Vec<u8>, TeeError> {
        let path = self.path.join(attribute);
        self.configfs.read(&path).map_err(|source| TeeError::Io {
            op: "read",
            path,
            source,
        })
    }

    fn write(&self, attribute: &str, data: &[u8]) -> Result<(), TeeError> {
        let path = self.path.join(attribute);
        self.configfs
            .write(&path, data)
            .map_err(|source| TeeError::Io {
                op: "write",
                path,
                source,
            })
    }

    fn generation(&self) -> Result<u64, TeeError> {
        let bytes = self.read("generation")?;
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                TeeError::Quote(format!(
                    "{}: generation is not a decimal number: {:?}",
                    self.path.join("generation").display(),
                    String::from_utf8_lossy(&bytes)
                ))
            })
    }

    /// Removes the entry now, reporting failure (the drop path can only ignore it).
    fn remove(mut self) -> Result<(), TeeError> {
        self.removed = true;
        self.configfs
            .remove_dir(&self.path)
            .map_err(|source| TeeError::Io {
                op: "rmdir",
                path: self.path.clone(),
                source,
            })
    }
}

impl Drop for ReportEntry<'_> {
    fn drop(&mut self) {
        if !self.removed {
            // Already on an error path: the first error is the one worth returning.
            let _ = self.configfs.remove_dir(&self.path);
        }
    }
}
