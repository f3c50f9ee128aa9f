//! The real [`NvmlApi`]: libnvidia-ml, loaded at run time through `nvml-wrapper`.
//!
//! Through nvml-wrapper's safe API: `nvmlInit_v2` ([`NvmlLibrary::load`]),
//! `nvmlDeviceGetCount_v2`, `nvmlDeviceGetHandleByIndex_v2` and
//! `nvmlSystemSetConfComputeGpusReadyState` (which the wrapper hangs on a device; it is
//! system-wide). Through the raw bindings (`Nvml::lib`), the only `unsafe` of this crate:
//!
//! * `nvmlSystemGetConfComputeState`: the wrapper reads it only folded into one bool together
//!   with the ready state, and ignores the devtools mode;
//! * `nvmlDeviceGetConfComputeGpuAttestationReport` and `nvmlDeviceGetConfComputeGpuCertificate`:
//!   the wrapper slices their fixed buffers by the library's size fields unchecked, so a size
//!   beyond a buffer panics. Here it is an error ([`bounded`]).
//!
//! Each raw call gets a pointer to a struct built in safe code (every field zero but the
//! nonce) that lives across the call; nvml.h declares these structs with fixed-size arrays and
//! the bindings mirror that layout (`#[repr(C)]`), so the library writes only inside them.
#![allow(unsafe_code)]

use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings::{
    nvmlConfComputeGpuAttestationReport_t, nvmlConfComputeGpuCertificate_t,
    nvmlConfComputeSystemState_t, NVML_CC_GPU_ATTESTATION_REPORT_SIZE,
    NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE, NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE,
    NVML_GPU_CERT_CHAIN_SIZE,
};

use super::{CcState, NvmlApi};

/// The library [`super::NvmlGpuSource::open`] loads (the soname the driver installs).
pub const LIB_PATH: &str = "libnvidia-ml.so.1";

/// An initialised NVML (shut down on drop).
#[derive(Debug)]
pub struct NvmlLibrary {
    nvml: Nvml,
}

impl NvmlLibrary {
    /// Loads the library at `path` (a name `dlopen` searches, or a path) and initialises NVML.
    pub fn load(path: &str) -> Result<Self, String> {
        Nvml::builder()
            .lib_path(path.as_ref())
            .init()
            .map(|nvml| Self { nvml })
            .map_err(|e| match e {
                NvmlError::LibloadingError(e) => format!("cannot load {path}: {e}"),
                e => format!("cannot initialise nvml ({path}): {e}"),
            })
    }
}

/// The first `size` bytes of `buf`; a size beyond the buffer is an error, never trusted.
fn bounded(buf: &[u8], size: u32, what: &str) -> Result<Vec<u8>, String> {
    usize::try_from(size)
        .ok()
        .and_then(|n| buf.get(..n))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format!("{what} size {size} exceeds its {}-byte buffer", buf.len()))
}

/// A symbol the library may lack (older drivers), as an error naming it.
fn symbol<'a, T, E: std::fmt::Display>(
    sym: Result<&'a T, &E>,
    name: &str,
) -> Result<&'a T, String> {
    sym.map_err(|e| format!("{name}: symbol missing: {e}"))
}

impl NvmlApi for NvmlLibrary {
    fn cc_state(&self) -> Result<CcState, String> {
        const NAME: &str = "nvmlSystemGetConfComputeState";
        let get = symbol(self.nvml.lib().nvmlSystemGetConfComputeState.as_ref(), NAME)?;
        let mut state = nvmlConfComputeSystemState_t {
            environment: 0,
            ccFeature: 0,
            devToolsMode: 0,
        };
        // SAFETY: `get` is nvmlSystemGetConfComputeState of the library `self.nvml` loaded and
        // initialised and keeps loaded; its one argument points to a live, writable
        // nvmlConfComputeSystemState_t, the struct nvml.h declares for it.
        let code = unsafe { get(&mut state) };
        nvml_try(code).map_err(|e| format!("{NAME}: {e}"))?;
        Ok(CcState {
            feature: state.ccFeature,
            devtools: state.devToolsMode,
            environment: state.environment,
        })
    }

    fn device_count(&self) -> Result<u32, String> {
        self.nvml.device_count().map_err(|e| e.to_string())
    }

    fn attestation_report(&self, index: u32, nonce: &[u8; 32]) -> Result<Vec<u8>, String> {
        const NAME: &str = "nvmlDeviceGetConfComputeGpuAttestationReport";
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(|e| format!("device handle: {e}"))?;
        let get = symbol(
            self.nvml
                .lib()
                .nvmlDeviceGetConfComputeGpuAttestationReport
                .as_ref(),
            NAME,
        )?;
        let mut report = nvmlConfComputeGpuAttestationReport_t {
            isCecAttestationReportPresent: 0,
            attestationReportSize: 0,
            cecAttestationReportSize: 0,
            nonce: *nonce,
            attestationReport: [0; NVML_CC_GPU_ATTESTATION_REPORT_SIZE as usize],
            cecAttestationReport: [0; NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE as usize],
        };
        // SAFETY: `get` is nvmlDeviceGetConfComputeGpuAttestationReport of the library
        // `self.nvml` keeps loaded; the handle comes from nvmlDeviceGetHandleByIndex_v2 of that
        // library and `device` (which borrows `self.nvml`) outlives the call; the second
        // argument points to a live, writable nvmlConfComputeGpuAttestationReport_t, the struct
        // nvml.h declares for it, with the nonce set and its size fields zero.
        let code = unsafe { get(device.handle(), &mut report) };
        nvml_try(code).map_err(|e| format!("{NAME}: {e}"))?;
        bounded(
            &report.attestationReport,
            report.attestationReportSize,
            "attestation report",
        )
    }

    fn attestation_cert_chain(&self, index: u32) -> Result<Vec<u8>, String> {
        const NAME: &str = "nvmlDeviceGetConfComputeGpuCertificate";
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(|e| format!("device handle: {e}"))?;
        let get = symbol(
            self.nvml
                .lib()
                .nvmlDeviceGetConfComputeGpuCertificate
                .as_ref(),
            NAME,
        )?;
        let mut certs = nvmlConfComputeGpuCertificate_t {
            certChainSize: 0,
            attestationCertChainSize: 0,
            certChain: [0; NVML_GPU_CERT_CHAIN_SIZE as usize],
            attestationCertChain: [0; NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE as usize],
        };
        // SAFETY: `get` is nvmlDeviceGetConfComputeGpuCertificate of the library `self.nvml`
        // keeps loaded; the handle comes from nvmlDeviceGetHandleByIndex_v2 of that library and
        // `device` (which borrows `self.nvml`) outlives the call; the second argument points to
        // a live, writable nvmlConfComputeGpuCertificate_t, the struct nvml.h declares for it.
        let code = unsafe { get(device.handle(), &mut certs) };
        nvml_try(code).map_err(|e| format!("{NAME}: {e}"))?;
        bounded(
            &certs.attestationCertChain,
            certs.attestationCertChainSize,
            "attestation certificate chain",
        )
    }

    fn set_gpus_ready(&self, ready: bool) -> Result<(), String> {
        // The wrapper takes the system-wide call through a device handle; any device will do.
        self.nvml
            .device_by_index(0)
            .and_then(|device| device.set_confidential_compute_state(ready))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_nvml_size_fields_are_bounded() {
        let buf = [1u8, 2, 3, 4];
        assert_eq!(bounded(&buf, 0, "report").unwrap(), Vec::<u8>::new());
        assert_eq!(bounded(&buf, 3, "report").unwrap(), vec![1, 2, 3]);
        assert_eq!(bounded(&buf, 4, "report").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(
            bounded(&buf, 5, "report").unwrap_err(),
            "report size 5 exceeds its 4-byte buffer"
        );
        assert!(bounded(&buf, u32::MAX, "report").is_err());
    }
}
