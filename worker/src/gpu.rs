//! GPU evidence from NVIDIA's management library (NVML), for a worker on confidential-computing
//! Hopper GPUs (H100).
//!
//! [`NvmlGpuSource`] is the worker's [`GpuSource`]. On every RA-TLS certificate issuance,
//! [`GpuSource::evidence`] for the certificate's nonce:
//!
//! 1. requires the system confidential-computing state (`nvmlSystemGetConfComputeState`): CC
//!    feature enabled, devtools mode off, production environment; and at least one GPU;
//! 2. takes each GPU's attestation report for the nonce
//!    (`nvmlDeviceGetConfComputeGpuAttestationReport`: the SPDM GET_MEASUREMENTS request and
//!    response) and its attestation certificate chain (`nvmlDeviceGetConfComputeGpuCertificate`,
//!    the five certificates that sign reports, leaf first), PEM as the driver gives it or
//!    concatenated DER converted to PEM;
//! 3. verifies that evidence with the verifier and policy peers use
//!    ([`measurements::gpu::verify_gpus`]), so it never offers evidence a peer would reject;
//! 4. only then marks the GPUs ready for confidential workloads
//!    (`nvmlSystemSetConfComputeGpusReadyState`); in CC mode the driver refuses CUDA work until
//!    this is set, so the GPUs do no inference before they have attested.
//!
//! Trust boundary: libnvidia-ml and the kernel driver are part of the measured guest image.
//! Reports and chains come from the GPU through them and are untrusted until step 3; sizes the
//! library reports are checked against its buffers ([`nvml`]).
//!
//! All NVML calls sit behind [`NvmlApi`]; [`nvml::NvmlLibrary`] is the real one and tests pass
//! a fake backed by the simulated NVIDIA PKI ([`measurements::gpu::sim`]). NVML is loaded at
//! run time with `dlopen`, so the worker builds without a driver, and a statically linked
//! worker (x86_64-unknown-linux-musl) builds too but cannot load it: the NVML source needs a
//! dynamically linked worker.

pub mod nvml;

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use attestation::gpu::{GpuSource, GpuSourceError, SimGpuSource};
use der::Reader;
use measurements::gpu::sim::SimNvidiaRoot;
use measurements::gpu::{chain, verify_gpus, GpuEvidence, GpuPolicy, GpuRejection};
use nvml_wrapper_sys::bindings::{
    NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF, NVML_CC_SYSTEM_ENVIRONMENT_PROD,
    NVML_CC_SYSTEM_FEATURE_ENABLED,
};
use ratls::gpu_ocsp::OcspGpuSource;
use ratls::Clock;

use crate::config::GpuSpec;

/// The source a validated `[gpu]` section names: NVML ([`NvmlGpuSource::open`], self-checked
/// at `clock`'s time) or simulated GPUs ([`SimGpuSource`]); with `ocsp_url`, wrapped in an
/// [`OcspGpuSource`] that attaches the chains' OCSP answers.
pub fn open_source(
    spec: &GpuSpec,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn GpuSource>, GpuSourceError> {
    let source: Arc<dyn GpuSource> = match spec {
        GpuSpec::Nvml { policy, .. } => Arc::new(TimedGpuSource::new(
            Arc::new(NvmlGpuSource::open(policy.clone(), clock.clone())?),
            EVIDENCE_TIME_LIMIT,
        )),
        GpuSpec::Sim { seed, gpus, .. } => {
            let root =
                SimNvidiaRoot::from_seed(*seed).map_err(|e| GpuSourceError::Sim(e.to_string()))?;
            Arc::new(SimGpuSource::new(root, gpus.clone()))
        }
    };
    match spec.ocsp_url() {
        Some(url) => Ok(Arc::new(OcspGpuSource::new(
            source,
            url,
            ratls::gpu_ocsp::DEFAULT_TIMEOUT,
            clock,
        )?)),
        None => Ok(source),
    }
}

/// The longest the NVML source may take for the evidence of all GPUs. A report takes well under
/// a second per GPU on a healthy driver; a driver that does not answer would otherwise hang the
/// worker's start (it then exits 4) or its certificate renewal (which then fails and retries).
pub const EVIDENCE_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Bounds each [`GpuSource::evidence`] call of an inner source in time. The call runs on its
/// own thread; past the limit the caller gets [`GpuSourceError::Driver`] and the thread is left
/// behind (a call blocked in the driver cannot be cancelled). While it is still blocked, later
/// calls are refused at once instead of piling up more blocked threads.
pub struct TimedGpuSource {
    inner: Arc<dyn GpuSource>,
    limit: Duration,
    busy: Arc<AtomicBool>,
}

impl Debug for TimedGpuSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedGpuSource")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl TimedGpuSource {
    /// `inner`, with each call bounded by `limit`.
    pub fn new(inner: Arc<dyn GpuSource>, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Clears the busy flag when the evidence thread ends, however it ends.
struct Idle(Arc<AtomicBool>);

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl GpuSource for TimedGpuSource {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, GpuSourceError> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(GpuSourceError::Driver(
                "an earlier evidence call has not returned (driver not answering)".into(),
            ));
        }
        let idle = Idle(self.busy.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        let inner = self.inner.clone();
        let nonce = *nonce;
        std::thread::Builder::new()
            .name("gpu-evidence".into())
            .spawn(move || {
                let _idle = idle;
                let _ = tx.send(inner.evidence(&nonce));
            })
            .map_err(|e| GpuSourceError::Driver(format!("starting the evidence thread: {e}")))?;
        match rx.recv_timeout(self.limit) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(GpuSourceError::Driver(format!(
                "no evidence from the driver within {} s",
                self.limit.as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(GpuSourceError::Driver(
                "the evidence thread ended without an answer".into(),
            )),
        }
    }
}

/// The system confidential-computing state as NVML reports it (`nvmlConfComputeSystemState_t`,
/// raw values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CcState {
    /// `ccFeature`: 1 enabled.
    pub feature: u32,
    /// `devToolsMode`: 0 off.
    pub devtools: u32,
    /// `environment`: 1 simulation, 2 production.
    pub environment: u32,
}

/// The NVML calls the source makes. Errors are the library's message; the source adds which
/// call and which GPU.
pub trait NvmlApi: Send + Sync + Debug {
    /// `nvmlSystemGetConfComputeState`.
    fn cc_state(&self) -> Result<CcState, String>;
    /// `nvmlDeviceGetCount_v2`.
    fn device_count(&self) -> Result<u32, String>;
    /// `nvmlDeviceGetConfComputeGpuAttestationReport` of GPU `index` for `nonce`.
    fn attestation_report(&self, index: u32, nonce: &[u8; 32]) -> Result<Vec<u8>, String>;
    /// The attestation certificate chain of `nvmlDeviceGetConfComputeGpuCertificate` of GPU
    /// `index` (PEM or concatenated DER, leaf first).
    fn attestation_cert_chain(&self, index: u32) -> Result<Vec<u8>, String>;
    /// `nvmlSystemSetConfComputeGpusReadyState`.
    fn set_gpus_ready(&self, ready: bool) -> Result<(), String>;
}

/// GPU evidence from NVML, self-checked against a [`GpuPolicy`] (see the module docs).
pub struct NvmlGpuSource {
    api: Arc<dyn NvmlApi>,
    policy: GpuPolicy,
    clock: Arc<dyn Clock>,
}

impl Debug for NvmlGpuSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpuSource")
            .field("api", &self.api)
            .field("roots", &self.policy.roots.len())
            .finish_non_exhaustive()
    }
}

impl NvmlGpuSource {
    /// Loads libnvidia-ml ([`nvml::LIB_PATH`]) and initialises NVML. The self-check uses
    /// `policy` at `clock`'s time.
    pub fn open(policy: GpuPolicy, clock: Arc<dyn Clock>) -> Result<Self, GpuSourceError> {
        let library = nvml::NvmlLibrary::load(nvml::LIB_PATH).map_err(GpuSourceError::Driver)?;
        Ok(Self::new(Arc::new(library), policy, clock))
    }

    /// A source over any [`NvmlApi`].
    pub fn new(api: Arc<dyn NvmlApi>, policy: GpuPolicy, clock: Arc<dyn Clock>) -> Self {
        Self { api, policy, clock }
    }
}

impl GpuSource for NvmlGpuSource {
    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, GpuSourceError> {
        let state = self
            .api
            .cc_state()
            .map_err(|e| GpuSourceError::Driver(format!("confidential compute state: {e}")))?;
        check_cc_state(&state)?;
        let count = self
            .api
            .device_count()
            .map_err(|e| GpuSourceError::Driver(format!("device count: {e}")))?;
        if count == 0 {
            return Err(GpuSourceError::NotConfidential(
                "no gpu: nvml reports 0 devices".into(),
            ));
        }
        let evidence = (0..count)
            .map(|index| self.gpu_evidence(index, nonce))
            .collect::<Result<Vec<_>, _>>()?;
        verify_gpus(&evidence, nonce, self.clock.now(), &self.policy)?;
        self.api.set_gpus_ready(true).map_err(|e| {
            GpuSourceError::Driver(format!("set gpus ready for confidential compute: {e}"))
        })?;
        tracing::debug!(gpus = count, "gpu evidence self-checked, gpus ready");
        Ok(evidence)
    }
}

impl NvmlGpuSource {
    fn gpu_evidence(&self, index: u32, nonce: &[u8; 32]) -> Result<GpuEvidence, GpuSourceError> {
        let report = self
            .api
            .attestation_report(index, nonce)
            .map_err(|e| GpuSourceError::Driver(format!("gpu {index}: attestation report: {e}")))?;
        let chain = self.api.attestation_cert_chain(index).map_err(|e| {
            GpuSourceError::Driver(format!("gpu {index}: attestation certificate chain: {e}"))
        })?;
        let chain_pem = attestation_chain_pem(&chain).map_err(|detail| {
            GpuRejection::MalformedChain(format!(
                "gpu {index} attestation certificate chain: {detail}"
            ))
        })?;
        Ok(GpuEvidence {
            report,
            chain_pem,
            ocsp: None,
        })
    }
}

/// CC feature enabled, devtools off, production environment.
fn check_cc_state(state: &CcState) -> Result<(), GpuSourceError> {
    let not = |what: &str, got: u32, expected: u32| {
        Err(GpuSourceError::NotConfidential(format!(
            "{what} (nvml value {got}, expected {expected})"
        )))
    };
    if state.feature != NVML_CC_SYSTEM_FEATURE_ENABLED {
        return not(
            "cc feature not enabled",
            state.feature,
            NVML_CC_SYSTEM_FEATURE_ENABLED,
        );
    }
    if state.devtools != NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF {
        return not(
            "devtools mode not off",
            state.devtools,
            NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF,
        );
    }
    if state.environment != NVML_CC_SYSTEM_ENVIRONMENT_PROD {
        return not(
            "cc environment not production",
            state.environment,
            NVML_CC_SYSTEM_ENVIRONMENT_PROD,
        );
    }
    Ok(())
}

/// The attestation chain as PEM: PEM input is kept (less trailing NUL bytes of a C buffer),
/// anything else must be whole DER certificates back to back, each re-wrapped unchanged.
fn attestation_chain_pem(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(b"-----BEGIN") {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        return Ok(bytes[..end].to_vec());
    }
    if bytes.is_empty() {
        return Err("empty".into());
    }
    let mut reader = der::SliceReader::new(bytes).map_err(|e| format!("der: {e}"))?;
    let mut pem = String::new();
    let mut index = 0usize;
    while !reader.is_finished() {
        let cert = reader
            .tlv_bytes()
            .map_err(|e| format!("der certificate {index}: {e}"))?;
        chain::parse_der_cert(cert).map_err(|e| format!("certificate {index}: {e}"))?;
        let block = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, cert)
            .map_err(|e| format!("certificate {index}: pem: {e}"))?;
        pem.push_str(&block);
        index += 1;
    }
    Ok(pem.into_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use der::Encode;
    use measurements::gpu::sim::{SimGpu, SimNvidiaRoot, SIM_GPU_CERT_NOT_BEFORE};
    use measurements::gpu::HOPPER_CHAIN_LEN;
    use ratls::FixedClock;

    use super::*;

    const NOW: u64 = SIM_GPU_CERT_NOT_BEFORE + 365 * 86_400;
    const NONCE: [u8; 32] = [0x42; 32];
    const GOOD: CcState = CcState {
        feature: 1,
        devtools: 0,
        environment: 2,
    };

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Call {
        State,
        Count,
        Report(u32),
        Chain(u32),
        Ready(bool),
    }

    /// NVML over simulated GPUs; records every call in order.
    #[derive(Debug)]
    struct FakeNvml {
        root: SimNvidiaRoot,
        gpus: Vec<SimGpu>,
        state: CcState,
        /// Chains as concatenated DER instead of PEM.
        der_chain: bool,
        /// Reports answer this nonce instead of the caller's.
        answer_nonce: Option<[u8; 32]>,
        /// The report call of this GPU fails.
        fail_report: Option<u32>,
        calls: Mutex<Vec<Call>>,
    }

    impl FakeNvml {
        fn new(gpus: usize) -> Self {
            Self {
                root: sim_root(),
                gpus: (1..=gpus as u32).map(sim_gpu).collect(),
                state: GOOD,
                der_chain: false,
                answer_nonce: None,
                fail_report: None,
                calls: Mutex::new(Vec::new()),
            }
        }

        fn record(&self, call: Call) {
            self.calls.lock().unwrap().push(call);
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn gpu(&self, index: u32) -> Result<&SimGpu, String> {
            self.gpus
                .get(index as usize)
                .ok_or_else(|| format!("no device {index}"))
        }
    }

    impl NvmlApi for FakeNvml {
        fn cc_state(&self) -> Result<CcState, String> {
            self.record(Call::State);
            Ok(self.state)
        }

        fn device_count(&self) -> Result<u32, String> {
            self.record(Call::Count);
            Ok(self.gpus.len() as u32)
        }

        fn attestation_report(&self, index: u32, nonce: &[u8; 32]) -> Result<Vec<u8>, String> {
            self.record(Call::Report(index));
            if self.fail_report == Some(index) {
                return Err("NVML_ERROR_GPU_IS_LOST".into());
            }
            let nonce = self.answer_nonce.as_ref().unwrap_or(nonce);
            let (report, _) = self
                .root
                .evidence(self.gpu(index)?, nonce)
                .map_err(|e| e.to_string())?;
            Ok(report)
        }

        fn attestation_cert_chain(&self, index: u32) -> Result<Vec<u8>, String> {
            self.record(Call::Chain(index));
            let (_, pem) = self
                .root
                .evidence(self.gpu(index)?, &[0; 32])
                .map_err(|e| e.to_string())?;
            if !self.der_chain {
                return Ok(pem.into_bytes());
            }
            let certs = chain::parse_pem_chain(pem.as_bytes()).map_err(|e| e.to_string())?;
            let mut der = Vec::new();
            for cert in certs {
                der.extend(cert.to_der().map_err(|e| e.to_string())?);
            }
            Ok(der)
        }

        fn set_gpus_ready(&self, ready: bool) -> Result<(), String> {
            self.record(Call::Ready(ready));
            Ok(())
        }
    }

    fn sim_root() -> SimNvidiaRoot {
        SimNvidiaRoot::from_seed([7; 32]).unwrap()
    }

    fn sim_gpu(device_id: u32) -> SimGpu {
        SimGpu {
            device_id,
            ..SimGpu::new("550.54.15", "96.00.9F.00.01", "cocoon-test-h100")
        }
    }

    fn policy() -> GpuPolicy {
        GpuPolicy {
            roots: vec![sim_root().trust_root().unwrap()],
            chain_len: HOPPER_CHAIN_LEN,
            references: Some(sim_gpu(1).reference_values()),
            min_driver: None,
            gpu_count: None,
            require_ocsp: false,
            ocsp_max_age_secs: None,
        }
    }

    fn source(fake: &Arc<FakeNvml>) -> NvmlGpuSource {
        NvmlGpuSource::new(fake.clone(), policy(), Arc::new(FixedClock::new(NOW)))
    }

    fn assert_not_confidential(fake: FakeNvml, needle: &str) {
        let fake = Arc::new(fake);
        match source(&fake).evidence(&NONCE) {
            Err(GpuSourceError::NotConfidential(m)) => {
                assert!(m.contains(needle), "{m:?} does not name {needle:?}")
            }
            other => panic!("expected NotConfidential, got {other:?}"),
        }
        assert!(!fake.calls().contains(&Call::Ready(true)));
    }

    #[test]
    fn gpu_two_devices_verify_and_ready_set_once_after_reports() {
        let fake = Arc::new(FakeNvml::new(2));
        let src = source(&fake);
        assert_eq!(src.kind(), "nvml");
        let evidence = src.evidence(&NONCE).unwrap();
        assert_eq!(evidence.len(), 2);
        let verified = verify_gpus(&evidence, &NONCE, NOW, &policy()).unwrap();
        assert_ne!(verified[0].device_serial, verified[1].device_serial);
        assert!(evidence.iter().all(|e| e.ocsp.is_none()));
        assert_eq!(
            fake.calls(),
            [
                Call::State,
                Call::Count,
                Call::Report(0),
                Call::Chain(0),
                Call::Report(1),
                Call::Chain(1),
                Call::Ready(true),
            ]
        );
    }

    #[test]
    fn gpu_cc_feature_off_is_not_confidential() {
        let mut fake = FakeNvml::new(1);
        fake.state.feature = 0;
        assert_not_confidential(fake, "cc feature not enabled (nvml value 0, expected 1)");
    }

    #[test]
    fn gpu_devtools_on_is_not_confidential() {
        let mut fake = FakeNvml::new(1);
        fake.state.devtools = 1;
        assert_not_confidential(fake, "devtools mode not off (nvml value 1, expected 0)");
    }

    #[test]
    fn gpu_simulation_environment_is_not_confidential() {
        let mut fake = FakeNvml::new(1);
        fake.state.environment = 1;
        assert_not_confidential(fake, "cc environment not production");
    }

    #[test]
    fn gpu_no_devices_is_not_confidential() {
        assert_not_confidential(FakeNvml::new(0), "0 devices");
    }

    #[test]
    fn gpu_report_for_another_nonce_fails_self_check() {
        let mut fake = FakeNvml::new(2);
        fake.answer_nonce = Some([0x13; 32]);
        let fake = Arc::new(fake);
        match source(&fake).evidence(&NONCE) {
            Err(GpuSourceError::SelfCheck(GpuRejection::NonceMismatch { expected, got })) => {
                assert_eq!(expected, hex::encode(NONCE));
                assert_eq!(got, hex::encode([0x13; 32]));
            }
            other => panic!("expected SelfCheck(NonceMismatch), got {other:?}"),
        }
        assert!(!fake.calls().contains(&Call::Ready(true)));
    }

    #[test]
    fn gpu_der_chain_is_converted_and_verifies() {
        let mut fake = FakeNvml::new(1);
        fake.der_chain = true;
        let fake = Arc::new(fake);
        let evidence = source(&fake).evidence(&NONCE).unwrap();
        let (_, pem) = sim_root().evidence(&sim_gpu(1), &NONCE).unwrap();
        assert_eq!(evidence[0].chain_pem, pem.into_bytes());
        assert_eq!(fake.calls().last(), Some(&Call::Ready(true)));
    }

    #[test]
    fn gpu_pem_chain_trailing_nul_is_dropped() {
        let (_, pem) = sim_root().evidence(&sim_gpu(1), &NONCE).unwrap();
        let mut padded = pem.clone().into_bytes();
        padded.extend([0; 3]);
        assert_eq!(attestation_chain_pem(&padded).unwrap(), pem.into_bytes());
    }

    #[test]
    fn gpu_malformed_chain_fails_self_check() {
        assert_eq!(attestation_chain_pem(b"").unwrap_err(), "empty");
        let (_, pem) = sim_root().evidence(&sim_gpu(1), &NONCE).unwrap();
        let der = chain::parse_pem_chain(pem.as_bytes()).unwrap()[0]
            .to_der()
            .unwrap();
        // A truncated second certificate, and trailing garbage after a whole one.
        let mut truncated = der.clone();
        truncated.extend(&der[..der.len() / 2]);
        let err = attestation_chain_pem(&truncated).unwrap_err();
        assert!(err.starts_with("der certificate 1"), "{err}");
        let mut garbage = der.clone();
        garbage.extend([0x04, 0x01, 0xAA]);
        let err = attestation_chain_pem(&garbage).unwrap_err();
        assert!(err.starts_with("certificate 1"), "{err}");
    }

    #[test]
    fn gpu_driver_error_names_the_device() {
        let mut fake = FakeNvml::new(2);
        fake.fail_report = Some(1);
        let fake = Arc::new(fake);
        match source(&fake).evidence(&NONCE) {
            Err(GpuSourceError::Driver(m)) => {
                assert_eq!(m, "gpu 1: attestation report: NVML_ERROR_GPU_IS_LOST")
            }
            other => panic!("expected Driver, got {other:?}"),
        }
        assert!(!fake.calls().contains(&Call::Ready(true)));
    }

    /// A source that blocks in `evidence` until released, like a driver that does not answer.
    #[derive(Debug)]
    struct Stalling {
        inner: SimGpuSource,
        gate: Mutex<mpsc::Receiver<()>>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl GpuSource for Stalling {
        fn kind(&self) -> &'static str {
            "stalling"
        }
        fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, GpuSourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.gate.lock().unwrap().recv();
            self.inner.evidence(nonce)
        }
    }

    #[test]
    fn timed_source_bounds_a_driver_that_does_not_answer() {
        let (release, gate) = mpsc::channel();
        let stalling = Arc::new(Stalling {
            inner: SimGpuSource::new(sim_root(), vec![sim_gpu(1)]),
            gate: Mutex::new(gate),
            calls: Default::default(),
        });
        let timed = TimedGpuSource::new(stalling.clone(), Duration::from_millis(200));
        assert_eq!(timed.kind(), "stalling");

        // A call that hangs ends at the limit with a named reason.
        let t = std::time::Instant::now();
        match timed.evidence(&NONCE) {
            Err(GpuSourceError::Driver(m)) => assert!(m.contains("within 0.2 s"), "{m}"),
            other => panic!("expected a time-out, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // While it is still blocked, another call is refused at once, without a new thread.
        let t = std::time::Instant::now();
        match timed.evidence(&NONCE) {
            Err(GpuSourceError::Driver(m)) => assert!(m.contains("has not returned"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(stalling.calls.load(Ordering::SeqCst), 1);

        // Once the driver answers, calls work again and return the inner evidence.
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while timed.busy.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "thread never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        release.send(()).unwrap();
        let evidence = timed.evidence(&NONCE).expect("evidence after recovery");
        assert_eq!(evidence.len(), 1);
        assert_eq!(stalling.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn timed_source_passes_errors_through_and_survives_a_panic() {
        #[derive(Debug)]
        struct Panics;
        impl GpuSource for Panics {
            fn kind(&self) -> &'static str {
                "panics"
            }
            fn evidence(&self, _: &[u8; 32]) -> Result<Vec<GpuEvidence>, GpuSourceError> {
                panic!("driver bug")
            }
        }
        let timed = TimedGpuSource::new(Arc::new(Panics), Duration::from_secs(5));
        for _ in 0..2 {
            match timed.evidence(&NONCE) {
                Err(GpuSourceError::Driver(m)) => assert!(m.contains("without an answer"), "{m}"),
                other => panic!("expected an error, got {other:?}"),
            }
        }
        let mut fake = FakeNvml::new(1);
        fake.state.devtools = 1;
        let nvml = Arc::new(source(&Arc::new(fake)));
        match TimedGpuSource::new(nvml, Duration::from_secs(5)).evidence(&NONCE) {
            Err(GpuSourceError::NotConfidential(m)) => assert!(m.contains("devtools"), "{m}"),
            other => panic!("expected NotConfidential, got {other:?}"),
        }
    }

    #[test]
    fn gpu_open_source_sim() {
        let spec = GpuSpec::Sim {
            seed: [7; 32],
            gpus: vec![sim_gpu(1), sim_gpu(2)],
            ocsp_url: None,
        };
        let src = open_source(&spec, Arc::new(FixedClock::new(NOW))).unwrap();
        assert_eq!(src.kind(), "sim");
        let evidence = src.evidence(&NONCE).unwrap();
        assert_eq!(
            verify_gpus(&evidence, &NONCE, NOW, &policy())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn gpu_open_without_driver_is_driver_error() {
        // No NVIDIA driver on development machines and CI; on a GPU machine `open` may succeed.
        match NvmlGpuSource::open(policy(), Arc::new(FixedClock::new(NOW))) {
            Ok(src) => assert_eq!(src.kind(), "nvml"),
            Err(GpuSourceError::Driver(m)) => assert!(m.contains("libnvidia-ml"), "{m}"),
            Err(other) => panic!("expected Driver, got {other:?}"),
        }
        match nvml::NvmlLibrary::load("/nonexistent/libnvidia-ml.so.1") {
            Err(m) => assert!(
                m.starts_with("cannot load /nonexistent/libnvidia-ml.so.1: "),
                "{m}"
            ),
            Ok(lib) => panic!("loaded a library that does not exist: {lib:?}"),
        }
    }
}
