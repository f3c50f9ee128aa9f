//! The `[tee]` section of a service config: which TEE device the service uses.
//!
//! ```toml
//! [tee]
//! kind = "tdx"                            # Linux TDX guest (configfs-tsm, RTMR sysfs)
//! # or, in development and CI:
//! kind = "sim"
//! platform_file = "sim-platform.json"     # SimPlatformSeed JSON (written by cocoon-host)
//! registers_file = "worker-registers.json" # TdRegisters JSON: what this "TD" measures as
//! runtime_log_file = "/run/cocoon/rtmr3-log.json" # optional: RTMR3 starts as this log's replay
//! ```
//! In a guest under `cocoon-host launch --tee sim`, cocoon-init extends RTMR3 with the config
//! digest before the service starts and writes the RTMR3 event log; the service's simulated
//! device starts from that log's replay (`runtime_log_file`), which is what a real TD's RTMR3
//! would hold at that point.
//!
//! A service running as a plain process on the simulated platform (no `runtime_log_file`, as
//! under `cocoon-host launch --local`) has nothing that measured its config before it started,
//! so [`TeeConfig::open_for_config`] plays cocoon-init's part: RTMR3 starts as the replay of a
//! runtime log whose one `config` event is the SHA-256 of the service's config file. Verifiers
//! then pin a process's configuration exactly as they pin a guest's
//! (`cocoon-measure eventlog expect-config --config-sha256`).
//! Relative paths are resolved against the config file's directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use measurements::{Collateral, TdRegisters};
use serde::{Deserialize, Serialize};

use crate::linux_tdx::LinuxTdx;
use crate::sim::{SimPlatform, SimPlatformSeed, SimTdx};
use crate::{TeeDevice, TeeError};

/// The `[tee]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TeeConfig {
    /// A Linux TDX guest.
    Tdx {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report_root: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        measurements_root: Option<PathBuf>,
    },
    /// The simulated TDX platform.
    Sim {
        platform_file: PathBuf,
        registers_file: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runtime_log_file: Option<PathBuf>,
    },
}

/// An opened TEE: the device, and for the simulated platform the platform itself (which also
/// issues the matching collateral).
#[derive(Clone, Debug)]
pub struct OpenedTee {
    pub device: Arc<dyn TeeDevice>,
    pub sim_platform: Option<Arc<SimPlatform>>,
}

impl OpenedTee {
    /// Collateral to embed in certificates issued at `now`: the simulated platform issues its
    /// own (valid one hour back, seven days forward); a real TDX guest gets collateral from a
    /// PCCS, which is not wired yet (`None`: verifiers then need a collateral source).
    pub fn collateral(&self, now: u64) -> Result<Option<Collateral>, TeeError> {
        let Some(p) = &self.sim_platform else {
            return Ok(None);
        };
        let raw = p
            .collateral(now.saturating_sub(3600), 7 * 24 * 3600)
            .map_err(|e| TeeError::Quote(e.to_string()))?;
        Collateral::new(raw)
            .map(Some)
            .map_err(|e| TeeError::Quote(e.to_string()))
    }
}

fn read(path: &Path) -> Result<String, TeeError> {
    std::fs::read_to_string(path).map_err(|source| TeeError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

impl TeeConfig {
    /// Opens the device; relative paths are resolved against `base`. Nothing is measured:
    /// services use [`TeeConfig::open_for_config`].
    pub fn open(&self, base: &Path) -> Result<OpenedTee, TeeError> {
        self.open_inner(base, None)
    }

    /// Opens the device of a service whose config file's bytes hash (SHA-256) to
    /// `config_sha256` (see the module docs: only a simulated process without a runtime log
    /// uses the digest; in a guest cocoon-init measured the config disk already).
    pub fn open_for_config(
        &self,
        base: &Path,
        config_sha256: [u8; 32],
    ) -> Result<OpenedTee, TeeError> {
        self.open_inner(base, Some(config_sha256))
    }

    fn open_inner(&self, base: &Path, config: Option<[u8; 32]>) -> Result<OpenedTee, TeeError> {
        match self {
            Self::Tdx {
                report_root,
                measurements_root,
            } => {
                let dev = match (report_root, measurements_root) {
                    (None, None) => LinuxTdx::new(),
                    (r, m) => LinuxTdx::with_roots(
                        r.clone()
                            .unwrap_or_else(|| crate::linux_tdx::DEFAULT_REPORT_ROOT.into()),
                        m.clone()
                            .unwrap_or_else(|| crate::linux_tdx::DEFAULT_MEASUREMENTS_ROOT.into()),
                    ),
                };
                Ok(OpenedTee {
                    device: Arc::new(dev),
                    sim_platform: None,
                })
            }
            Self::Sim {
                platform_file,
                registers_file,
                runtime_log_file,
            } => {
                let seed = SimPlatformSeed::from_json(&read(&base.join(platform_file))?)
                    .map_err(|e| TeeError::Unavailable(format!("sim platform: {e}")))?;
                let platform = Arc::new(
                    SimPlatform::from_export(&seed)
                        .map_err(|e| TeeError::Unavailable(format!("sim platform: {e}")))?,
                );
                let regs: TdRegisters = serde_json::from_str(&read(&base.join(registers_file))?)
                    .map_err(|e| {
                        TeeError::Registers(format!("{}: {e}", registers_file.display()))
                    })?;
                let mut regs = regs;
                if let Some(log_file) = runtime_log_file {
                    let path = base.join(log_file);
                    let text = read(&path)?;
                    let log = measurements::runtime_log::RuntimeLog::from_json(text.as_bytes())
                        .map_err(|e| TeeError::Registers(format!("{}: {e}", path.display())))?;
                    regs.rtmr[3] = log.replay();
                } else if let Some(sha) = config {
                    regs.rtmr[3] = measurements::runtime_log::RuntimeLog::for_config(sha).replay();
                }
                Ok(OpenedTee {
                    device: Arc::new(SimTdx::new(platform.clone(), regs)),
                    sim_platform: Some(platform),
                })
            }
        }
    }
}
