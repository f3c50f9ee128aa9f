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
//! A real TD has no collateral of its own: with a `[tee.pccs]` table (see [`PccsConfig`]) the
//! service fetches it from a PCCS or Intel's PCS and embeds it in its certificates
//! (`ratls::pccs`); without one, verifiers need their own collateral source.
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
        /// Where the TD's quote collateral comes from (embedded in its certificates).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pccs: Option<PccsConfig>,
    },
    /// The simulated TDX platform.
    Sim {
        platform_file: PathBuf,
        registers_file: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runtime_log_file: Option<PathBuf>,
    },
}

/// A PCCS-compatible collateral service (Intel's PCS API v4: a PCCS, or Intel's PCS itself).
///
/// ```toml
/// [tee.pccs]                 # or [pccs] in a verifier's config (client, proxy)
/// url = "https://10.0.2.2:8081"   # base URL; /sgx|tdx/certification/v4/... is appended
/// ca_file = "pccs-ca.pem"         # optional: trust only this CA for https (default: Mozilla's roots)
/// cache_dir = "/var/cache/cocoon" # optional: keep fetched collateral across restarts
/// refresh_secs = 86400            # refetch copies older than this, or expiring within it
/// timeout_secs = 10               # per fetch (all four requests)
/// ```
/// The service is not trusted for integrity: everything it returns is checked against the
/// quote with the pinned Intel root before use. TLS protects only availability and freshness.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PccsConfig {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    #[serde(default = "PccsConfig::default_refresh_secs")]
    pub refresh_secs: u64,
    #[serde(default = "PccsConfig::default_timeout_secs")]
    pub timeout_secs: u64,
}

impl PccsConfig {
    /// One day: a TCB recovery published by Intel reaches the cache within a day.
    pub const DEFAULT_REFRESH_SECS: u64 = 86_400;
    pub const DEFAULT_TIMEOUT_SECS: u64 = 10;

    /// A config for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            cache_dir: None,
            refresh_secs: Self::DEFAULT_REFRESH_SECS,
            timeout_secs: Self::DEFAULT_TIMEOUT_SECS,
        }
    }

    fn default_refresh_secs() -> u64 {
        Self::DEFAULT_REFRESH_SECS
    }

    fn default_timeout_secs() -> u64 {
        Self::DEFAULT_TIMEOUT_SECS
    }
}

/// Where a party gets collateral for a quote that comes without it: files, a PCCS-compatible
/// service (`ratls::pccs`), a cache. Collateral from an untrusted source is fine: its
/// signatures chain to the roots the verifier pins.
pub trait CollateralSource: Send + Sync + std::fmt::Debug {
    /// Collateral for `quote` (the FMSPC and CA type are read from its PCK certificate).
    fn collateral_for(&self, quote: &[u8]) -> Result<Collateral, String>;
}

/// A fixed collateral document, whatever the quote (tests, single-platform deployments).
#[derive(Clone, Debug)]
pub struct StaticCollateral(pub Collateral);

impl CollateralSource for StaticCollateral {
    fn collateral_for(&self, _quote: &[u8]) -> Result<Collateral, String> {
        Ok(self.0.clone())
    }
}

/// An opened TEE: the device, and for the simulated platform the platform itself (which also
/// issues the matching collateral).
#[derive(Clone, Debug)]
pub struct OpenedTee {
    pub device: Arc<dyn TeeDevice>,
    pub sim_platform: Option<Arc<SimPlatform>>,
    /// For a real TD: where the collateral embedded in its certificates comes from (set by
    /// the service from `[tee.pccs]`, see `ratls::pccs::attach`).
    pub collateral_source: Option<Arc<dyn CollateralSource>>,
    /// The GPUs whose evidence goes into each certificate (set by a worker from `[gpu]`);
    /// `None`: certificates carry no GPU evidence.
    pub gpu: Option<Arc<dyn crate::gpu::GpuSource>>,
}

impl OpenedTee {
    /// Collateral to embed in certificates issued at `now`: the simulated platform issues its
    /// own (valid one hour back, seven days forward); a real TD asks its collateral source for
    /// the collateral of its platform (identified by a quote over zero report data). Without a
    /// source: `None`, and verifiers need a source of their own.
    pub fn collateral(&self, now: u64) -> Result<Option<Collateral>, TeeError> {
        let Some(p) = &self.sim_platform else {
            let Some(source) = &self.collateral_source else {
                return Ok(None);
            };
            let quote = self.device.quote(&[0u8; 64])?;
            return source
                .collateral_for(&quote)
                .map(Some)
                .map_err(TeeError::Collateral);
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
                pccs: _,
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
                    collateral_source: None,
                    gpu: None,
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
                    collateral_source: None,
                    gpu: None,
                })
            }
        }
    }
}
