//! cocoon-attestation: guest-side TEE I/O behind one narrow trait.
//!
//! [`TeeDevice`] is everything a guest service needs from its TEE: a quote over 64 bytes of
//! report_data, extension of a runtime measurement register, and the current register values.
//! Implementations:
//! * [`linux_tdx::LinuxTdx`]: a Linux TDX guest (configfs-tsm reports, RTMR sysfs files), with
//!   the filesystem roots injectable so it is tested against fake trees.
//! * [`sim::SimTdx`]: the simulated TDX platform used in development and CI. Its quotes are
//!   real-format v4 quotes under a generated "cocoon simulated root CA", verified by the same
//!   code path as real quotes; production policy (Intel root only) rejects them.
//!
//! Trust boundary: this crate produces evidence, it never decides whether evidence passes
//! (that is `cocoon-measurements`).

pub mod config;
pub mod gpu;
pub mod linux_tdx;
pub mod sim;

pub use config::{CollateralSource, PccsConfig, StaticCollateral};
pub use gpu::{GpuSource, GpuSourceError, SimGpuSource};

use measurements::{Sha384, TdRegisters};

/// Errors from a TEE device.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("tee device not available: {0}")]
    Unavailable(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rtmr index {0} cannot be extended from the guest (only 2 and 3)")]
    RtmrIndex(u8),
    #[error("quote generation: {0}")]
    Quote(String),
    #[error("register read: {0}")]
    Registers(String),
    #[error("collateral for this TD: {0}")]
    Collateral(String),
}

/// A trusted execution environment as seen from inside the guest.
pub trait TeeDevice: Send + Sync + std::fmt::Debug {
    /// Returns a quote (TDX quote v4/v5 bytes) whose report_data is `report_data`.
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError>;

    /// Extends RTMR `index` with a SHA-384 `digest`. `event` is the event description that the
    /// caller also appends to its event log; devices that keep a log record it, others ignore it.
    fn extend_rtmr(&self, index: u8, digest: &Sha384, event: &[u8]) -> Result<(), TeeError>;

    /// Current measurement registers.
    fn registers(&self) -> Result<TdRegisters, TeeError>;
}
