//! OCSP for GPU chains in RA-TLS certificates: the worker side ([`OcspGpuSource`] against the
//! simulated responder over real HTTP, healthy and failing) and the verifier side (a policy
//! that requires OCSP, its maximum age, and the memoized verdict expiring with the answers).

mod common;

use std::sync::Arc;
use std::time::Duration;

use attestation::{GpuSource, GpuSourceError, SimGpuSource};
use common::*;
use measurements::gpu::bundle::evidence_nonce;
use measurements::gpu::sim::{SimGpu, SimNvidiaRoot};
use measurements::gpu::{chain, GpuPolicy};
use measurements::{Policy, Rejection};
use ratls::cert::issue_with_gpu;
use ratls::clock::FixedClock;
use ratls::gpu_ocsp::{OcspGpuSource, SimOcspMode, SimOcspResponder};
use ratls::{verify_peer, Claims, PeerVerifier, RatlsError, Role};

const SEED: [u8; 32] = [5; 32];

fn gpus(n: u32) -> Vec<SimGpu> {
    SimGpu::machine(n, "550.127.05", "96.00.9F.00.01", "ratls-ocsp-test")
}

fn root() -> SimNvidiaRoot {
    SimNvidiaRoot::from_seed(SEED).unwrap()
}

fn gpu_policy() -> GpuPolicy {
    let mut p = GpuPolicy::new(
        vec![root().trust_root().unwrap()],
        gpus(1)[0].reference_values(),
    );
    p.require_ocsp = true;
    p
}

fn policy_with_gpu(max_age: Option<u64>) -> Policy {
    let mut p = policy();
    let mut g = gpu_policy();
    g.ocsp_max_age_secs = max_age;
    p.gpu = Some(g);
    p
}

/// A simulated responder on a loopback port, served by a runtime of its own.
struct Responder {
    sim: Arc<SimOcspResponder>,
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn responder(clock: Arc<FixedClock>) -> Responder {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sim = Arc::new(SimOcspResponder::new(root(), clock));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/ocsp", listener.local_addr().unwrap());
    rt.spawn(sim.clone().serve(listener));
    Responder { sim, url, _rt: rt }
}

fn source(n: u32, url: &str, clock: Arc<FixedClock>) -> OcspGpuSource {
    let inner = Arc::new(SimGpuSource::new(root(), gpus(n)));
    OcspGpuSource::new(inner, url, Duration::from_secs(2), clock).unwrap()
}

fn ocsp_error(r: Result<Vec<measurements::gpu::GpuEvidence>, GpuSourceError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn a_worker_fetches_checks_and_attaches_ocsp_for_every_gpu() {
    let clock = clock(NOW);
    let r = responder(clock.clone());
    let src = source(2, &r.url, clock.clone());
    let nonce = evidence_nonce(b"spki");
    let evidence = src.evidence(&nonce).unwrap();
    // Two device certificates and the two shared CA certificates: four requests.
    assert_eq!(r.sim.requests(), 4);
    for ev in &evidence {
        let ocsp = ev.ocsp.as_ref().unwrap();
        assert_eq!(ocsp.responses.len(), 3);
        assert_eq!(ocsp.at, NOW);
    }
    let v = measurements::gpu::verify_gpus(&evidence, &nonce, NOW, &gpu_policy()).unwrap();
    assert_eq!(v[0].ocsp.len(), 3);
    assert_eq!(v[0].ocsp_valid, (NOW - 3600, NOW - 3600 + 86_400));
}

#[test]
fn a_failing_responder_falls_back_to_kept_answers_and_names_itself_without_them() {
    let clock = clock(NOW);
    let r = responder(clock.clone());
    let nonce = evidence_nonce(b"spki");
    let kept = source(1, &r.url, clock.clone());
    kept.evidence(&nonce).unwrap();

    for (mode, needle) in [
        (SimOcspMode::ServerError, "HTTP 500"),
        (SimOcspMode::Stale, "stale"),
        (SimOcspMode::BadSignature, "signature"),
        (SimOcspMode::Silent, "no answer within 2 s"),
    ] {
        r.sim.set_mode(mode.clone());
        // A source that fetched before serves its kept answers.
        let ev = kept.evidence(&nonce).unwrap();
        assert_eq!(ev[0].ocsp.as_ref().unwrap().responses.len(), 3, "{mode:?}");
        // A fresh one has none and fails, naming the responder and the reason.
        let e = ocsp_error(source(1, &r.url, clock.clone()).evidence(&nonce));
        assert!(e.contains(needle), "{mode:?}: {e}");
        if !matches!(mode, SimOcspMode::Stale | SimOcspMode::BadSignature) {
            assert!(e.contains(&r.url), "{mode:?}: {e}");
        }
    }

    // Kept answers run out at their nextUpdate.
    r.sim.set_mode(SimOcspMode::ServerError);
    clock.advance(86_400);
    let e = ocsp_error(kept.evidence(&nonce));
    assert!(e.contains("HTTP 500"), "{e}");

    // A responder that is down.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let e = ocsp_error(source(1, &down, clock.clone()).evidence(&nonce));
    assert!(e.contains("connect") && e.contains(&down), "{e}");
}

#[test]
fn a_revoked_answer_fails_the_issuance_even_with_a_good_one_kept() {
    let clock = clock(NOW);
    let r = responder(clock.clone());
    let nonce = evidence_nonce(b"spki");
    let src = source(1, &r.url, clock.clone());
    let ev = src.evidence(&nonce).unwrap();
    let certs = chain::parse_pem_chain(&ev[0].chain_pem).unwrap();
    let device_serial = certs[1].tbs_certificate.serial_number.as_bytes().to_vec();
    r.sim.set_mode(SimOcspMode::Revoked(vec![device_serial]));
    match src.evidence(&nonce) {
        Err(GpuSourceError::SelfCheck(g)) => assert_eq!(g.code(), "ocsp_revoked"),
        other => panic!("expected ocsp_revoked, got {other:?}"),
    }
}

#[test]
fn a_bad_url_is_refused_at_construction() {
    let inner = Arc::new(SimGpuSource::new(root(), gpus(1)));
    for url in ["ftp://x", "not a url", "http://"] {
        let e = OcspGpuSource::new(inner.clone(), url, Duration::from_secs(1), clock(NOW))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("gpu ocsp"), "{url}: {e}");
    }
}

fn gpu_reason(err: RatlsError) -> &'static str {
    match err {
        RatlsError::Attestation(Rejection::Gpu(g)) => g.code(),
        other => panic!("expected a gpu rejection, got {other}"),
    }
}

/// Issued with OCSP, the certificate passes a policy that requires it until the answers age
/// past the policy's maximum; the memoized verdict of a long-lived verifier expires with them.
/// Issued without, it is refused by name.
#[test]
fn ra_tls_peers_require_fresh_ocsp_and_stop_trusting_it_when_it_ages() {
    let clock = clock(NOW);
    let r = responder(clock.clone());
    let src = source(2, &r.url, clock.clone());
    let claims = Claims::new(Role::Worker, 1).with_extra("name", "gpu-worker");
    let issue = |gpu: &dyn GpuSource| {
        issue_with_gpu(
            &tee(registers()),
            &claims,
            Some(&fixture().collateral),
            Some(gpu),
            NOW,
            Duration::from_secs(6 * 3600),
        )
        .unwrap()
    };
    let cert = issue(&src);
    let v = verify_peer(&cert.cert_der, NOW, &policy_with_gpu(None), None, None).unwrap();
    assert_eq!(v.gpus.len(), 2);
    assert!(v.gpus.iter().all(|g| g.ocsp.len() == 3));

    // Answers from an hour ago under a 90-minute maximum age: good for 30 more minutes.
    let policy = policy_with_gpu(Some(5400));
    let verifier = PeerVerifier::new(policy.clone(), clock.clone());
    verifier.verify(&cert.cert_der).unwrap();
    clock.advance(1800);
    verifier.verify(&cert.cert_der).unwrap();
    clock.advance(1);
    assert_eq!(
        gpu_reason(verifier.verify(&cert.cert_der).unwrap_err()),
        "ocsp_stale"
    );

    // Without OCSP in the certificate.
    let plain = SimGpuSource::new(root(), gpus(2));
    let cert = issue(&plain);
    assert_eq!(
        gpu_reason(
            verify_peer(&cert.cert_der, NOW, &policy_with_gpu(None), None, None).unwrap_err()
        ),
        "ocsp_required"
    );
    // A policy that does not require OCSP accepts it.
    let mut lenient = policy_with_gpu(None);
    lenient.gpu.as_mut().unwrap().require_ocsp = false;
    verify_peer(&cert.cert_der, NOW, &lenient, None, None).unwrap();
}
