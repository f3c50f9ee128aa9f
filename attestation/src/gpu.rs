//! Where a service's GPU evidence comes from: a [`GpuSource`] answers a nonce with one
//! report and certificate chain per GPU ([`measurements::gpu::GpuEvidence`]).
//!
//! The RA-TLS issuer (`ratls::cert::issue`) asks the source of an [`crate::config::OpenedTee`]
//! for evidence over a nonce derived from the new certificate's key, so the evidence is bound
//! to that one certificate. Two sources exist:
//!
//! * the NVML source of the worker (`worker::gpu`), on a real confidential-computing GPU;
//! * [`SimGpuSource`]: synthetic Hopper-format reports signed under a
//!   [`SimNvidiaRoot`], for CI and local networks. Only a policy that names the simulated
//!   root accepts them, exactly like the simulated TDX platform.

use std::fmt::Debug;

use measurements::gpu::sim::{SimGpu, SimNvidiaRoot};
use measurements::gpu::{GpuEvidence, GpuRejection};

/// Why a source produced no evidence.
#[derive(Debug, thiserror::Error)]
pub enum GpuSourceError {
    /// The driver library could not be loaded or a call into it failed.
    #[error("gpu driver: {0}")]
    Driver(String),
    /// A GPU or the system is not in the state confidential computing requires (CC mode off,
    /// devtools mode on, no CC-capable GPU).
    #[error("gpu not ready for confidential computing: {0}")]
    NotConfidential(String),
    /// The evidence failed the service's own check before it was offered to anyone.
    #[error("own gpu evidence rejected: {0}")]
    SelfCheck(#[from] GpuRejection),
    /// The simulated source failed.
    #[error("simulated gpu: {0}")]
    Sim(String),
    /// No usable OCSP answer for a certificate of a GPU's chain (responder unreachable,
    /// an HTTP error or a malformed answer, and no earlier answer still fresh).
    #[error("gpu ocsp: {0}")]
    Ocsp(String),
}

/// A source of GPU evidence (see the module docs).
pub trait GpuSource: Send + Sync + Debug {
    /// A short name for logs ("nvml", "sim").
    fn kind(&self) -> &'static str;
    /// The evidence of every GPU, each report answering `nonce`.
    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, GpuSourceError>;
}

/// Simulated GPUs under a simulated NVIDIA root (see the module docs).
pub struct SimGpuSource {
    root: SimNvidiaRoot,
    gpus: Vec<SimGpu>,
}

impl Debug for SimGpuSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGpuSource")
            .field("gpus", &self.gpus.len())
            .finish_non_exhaustive()
    }
}

impl SimGpuSource {
    /// `gpus` under `root`.
    pub fn new(root: SimNvidiaRoot, gpus: Vec<SimGpu>) -> Self {
        Self { root, gpus }
    }

    /// The simulated GPUs.
    pub fn gpus(&self) -> &[SimGpu] {
        &self.gpus
    }
}

impl GpuSource for SimGpuSource {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, GpuSourceError> {
        self.root
            .machine_evidence(&self.gpus, nonce)
            .map_err(|e| GpuSourceError::Sim(e.to_string()))
    }
}
