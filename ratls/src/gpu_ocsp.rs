//! OCSP for the GPU certificate chains a worker puts in its RA-TLS certificates:
//! [`OcspGpuSource`] wraps the worker's [`GpuSource`] and attaches, to each GPU's evidence,
//! NVIDIA's answers for every certificate of its chain except the leaf and the root
//! ([`measurements::gpu::ocsp`]). The bundle carries them (format version 2) and verifiers
//! judge them at their own time under `require_ocsp` / `ocsp_max_age_secs`.
//!
//! # Fetching
//!
//! At every certificate issuance, for every covered certificate (the two CA certificates all
//! GPUs of a machine share are asked once), the source POSTs a DER OCSPRequest
//! ([`measurements::gpu::ocsp::request_der`]: SHA-384 CertID, no nonce) to `url` as
//! `application/ocsp-request` and takes the DER answer. NVIDIA's service is
//! `https://ocsp.ndis.nvidia.com`; the static guest resolves no names, so a guest reaches it
//! through a forwarder on its host at an IP literal (see docs/operator-guide.md). Answers are
//! signed by NVIDIA's CAs, so the transport is not trusted for integrity.
//!
//! # Checking and fallback
//!
//! The GPU's answers are checked together ([`measurements::gpu::ocsp::check_chain_ocsp`]:
//! signed by the issuer in the verified chain or its delegated responder, status good, fresh
//! now) before they are attached, so the worker never offers answers a verifier would refuse
//! at issuance time. Checked answers are kept in memory; when a fetch fails (responder down,
//! HTTP error, answer malformed or refused), the kept answer for that certificate is used
//! while it is inside its window, and the failure is logged (never in place of an answer that
//! says revoked: that fails the issuance). Without one the issuance fails
//! with [`GpuSourceError::Ocsp`] naming the responder and the certificate: a worker
//! configured for OCSP never silently issues a certificate without it.
//!
//! # Blocking
//!
//! [`GpuSource::evidence`] is synchronous. The fetches of one issuance run concurrently on a
//! thread of their own with a current-thread runtime, each bounded by [`OcspGpuSource`]'s
//! timeout.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attestation::{GpuSource, GpuSourceError};
use bytes::Bytes;
use measurements::gpu::{chain, ocsp, GpuEvidence, OcspEvidence};

use crate::pccs::lock;
use crate::Clock;

/// Largest OCSP answer read (NVIDIA's are about 1 KB).
pub const MAX_OCSP_BODY: usize = 64 * 1024;
/// Default bound of one fetch.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a responder URL: `http://` or `https://` and a host (names are the operator's
/// business: the static guest resolves none). `Err` says what is wrong.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!("{url:?}: expected http:// or https:// and a host"));
    }
    Ok(())
}

/// A [`GpuSource`] whose evidence carries OCSP for each GPU's chain (see the module docs).
pub struct OcspGpuSource {
    inner: Arc<dyn GpuSource>,
    url: String,
    /// Mozilla's roots, for an `https://` responder (built once).
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// Checked answers by request (DER OCSPRequest).
    kept: Mutex<HashMap<Vec<u8>, Kept>>,
}

/// A checked answer and its nextUpdate.
#[derive(Clone, Debug)]
struct Kept {
    der: Vec<u8>,
    next_update: u64,
}

/// One question of an issuance: certificate `index` of GPU `gpu`'s chain.
struct Wanted {
    gpu: usize,
    index: usize,
    subject: String,
    request: Vec<u8>,
}

impl Debug for OcspGpuSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspGpuSource")
            .field("inner", &self.inner)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl OcspGpuSource {
    /// `inner`'s evidence with OCSP from the responder at `url` (`http://` or `https://`,
    /// Mozilla's roots), each fetch bounded by `timeout`, checked at `clock`'s time.
    pub fn new(
        inner: Arc<dyn GpuSource>,
        url: &str,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, GpuSourceError> {
        check_url(url).map_err(GpuSourceError::Ocsp)?;
        let tls = if url.starts_with("https://") {
            Some(
                crate::pccs::tls_config(None)
                    .map_err(|e| GpuSourceError::Ocsp(format!("{url}: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self {
            inner,
            url: url.to_string(),
            tls,
            timeout,
            clock,
            kept: Mutex::new(HashMap::new()),
        })
    }

    /// Fetches the answers to `requests` (deduplicated by the caller) on a thread of its own.
    fn fetch_all(&self, requests: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, String>> {
        let (url, tls, timeout) = (self.url.clone(), self.tls.clone(), self.timeout);
        let n = requests.len();
        crate::pccs::block_on_own_thread("gpu-ocsp-fetch", async move {
            // Concurrently: a machine of 8 GPUs asks 10 questions.
            let tasks: Vec<_> = requests
                .into_iter()
                .map(|req| {
                    let (url, tls) = (url.clone(), tls.clone());
                    tokio::spawn(async move {
                        tokio::time::timeout(timeout, fetch(&url, tls, req))
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!("no answer within {} s", timeout.as_secs()))
                            })
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(format!("fetch task: {e}"))));
            }
            out
        })
        .unwrap_or_else(|e| vec![Err(e); n])
    }
}

/// One POST of `request` to the responder.
async fn fetch(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    request: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let tls = |_: &hyper::Uri| tls.ok_or_else(|| "no tls configuration".to_string());
    let (status, _, body) = crate::pccs::http_request(
        url,
        hyper::Method::POST,
        Some("application/ocsp-request"),
        Bytes::from(request),
        MAX_OCSP_BODY,
        tls,
    )
    .await?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    Ok(body.to_vec())
}

impl GpuSource for OcspGpuSource {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn evidence(&self, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, GpuSourceError> {
        let mut evidence = self.inner.evidence(nonce)?;
        let chains = evidence
            .iter()
            .map(|ev| chain::parse_pem_chain(&ev.chain_pem))
            .collect::<Result<Vec<_>, _>>()?;
        let mut wanted = Vec::new();
        for (gpu, certs) in chains.iter().enumerate() {
            for (index, cert, issuer) in ocsp::covered(certs) {
                wanted.push(Wanted {
                    gpu,
                    index,
                    subject: chain::subject(cert),
                    request: ocsp::request_der(cert, issuer)?,
                });
            }
        }
        let mut unique: Vec<Vec<u8>> = Vec::new();
        for w in &wanted {
            if !unique.contains(&w.request) {
                unique.push(w.request.clone());
            }
        }
        let fetched: HashMap<Vec<u8>, Result<Vec<u8>, String>> = unique
            .iter()
            .cloned()
            .zip(self.fetch_all(unique.clone()))
            .collect();
        let now = self.clock.now();
        // Each GPU's answers: the fresh one, checked with the rest of its chain; where a fetch
        // failed or its answer is refused, the kept one while it is inside its window.
        for (g, ev) in evidence.iter_mut().enumerate() {
            let mine: Vec<&Wanted> = wanted.iter().filter(|w| w.gpu == g).collect();
            let mut responses = Vec::with_capacity(mine.len());
            for w in &mine {
                let (index, subject) = (w.index, &w.subject);
                let fresh = fetched
                    .get(&w.request)
                    .cloned()
                    .unwrap_or(Err("not asked".into()));
                let kept = self.kept_answer(&w.request, now);
                match (fresh, kept) {
                    (Ok(r), _) => responses.push(r),
                    (Err(e), Some(r)) => {
                        tracing::warn!(
                            url = %self.url, gpu = g, certificate = index, error = %e,
                            "gpu ocsp fetch failed; using the answer kept from an earlier fetch"
                        );
                        responses.push(r);
                    }
                    (Err(e), None) => {
                        return Err(GpuSourceError::Ocsp(format!(
                            "{}: gpu {g} certificate {index} ({subject}): {e}",
                            self.url
                        )))
                    }
                }
            }
            let candidate = OcspEvidence { responses, at: now };
            let checked = match ocsp::check_chain_ocsp(&chains[g], &candidate, None) {
                Ok(statuses) => (candidate, statuses),
                // A revocation is final: no older answer may stand in for it.
                Err(revoked @ measurements::gpu::GpuRejection::OcspRevoked { .. }) => {
                    return Err(GpuSourceError::SelfCheck(revoked))
                }
                Err(fresh_refused) => {
                    // Retry with the kept answers only (a responder serving a stale or
                    // wrongly signed answer must not cost a still-valid kept one).
                    let kept = self.kept_for(&mine, now).ok_or_else(|| {
                        GpuSourceError::Ocsp(format!(
                            "{}: gpu {g}: answer refused: {fresh_refused}",
                            self.url
                        ))
                    })?;
                    let statuses = ocsp::check_chain_ocsp(&chains[g], &kept, None)?;
                    tracing::warn!(
                        url = %self.url, gpu = g, reason = %fresh_refused,
                        "gpu ocsp answer refused; using the answers kept from an earlier fetch"
                    );
                    (kept, statuses)
                }
            };
            let (ev_ocsp, statuses) = checked;
            let mut kept = lock(&self.kept);
            for (w, (der, status)) in mine.iter().zip(ev_ocsp.responses.iter().zip(&statuses)) {
                kept.insert(
                    w.request.clone(),
                    Kept {
                        der: der.clone(),
                        next_update: status.next_update,
                    },
                );
            }
            drop(kept);
            ev.ocsp = Some(ev_ocsp);
        }
        Ok(evidence)
    }
}

impl OcspGpuSource {
    /// The kept answer to `request`, if inside its window at `now`.
    fn kept_answer(&self, request: &[u8], now: u64) -> Option<Vec<u8>> {
        lock(&self.kept)
            .get(request)
            .filter(|k| now <= k.next_update)
            .map(|k| k.der.clone())
    }

    /// The kept answers for all of `mine`, if every one is kept and inside its window.
    fn kept_for(&self, mine: &[&Wanted], now: u64) -> Option<OcspEvidence> {
        let responses = mine
            .iter()
            .map(|w| self.kept_answer(&w.request, now))
            .collect::<Option<Vec<_>>>()?;
        Some(OcspEvidence { responses, at: now })
    }
}

/// What [`SimOcspResponder`] answers (tests switch it to play a failing responder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimOcspMode {
    /// Good, valid from an hour ago for a day (NVIDIA's window).
    Good,
    /// Like `Good`, but these serials (as in the certificates) revoked.
    Revoked(Vec<Vec<u8>>),
    /// Good, but the window ended a day ago.
    Stale,
    /// Signed answers with one bit of the signature flipped.
    BadSignature,
    /// HTTP 500 without a body.
    ServerError,
    /// Accepts the request and never answers.
    Silent,
}

/// An OCSP responder for the simulated NVIDIA hierarchy over HTTP/1.1 POST, answering with
/// [`measurements::gpu::sim::SimNvidiaRoot::ocsp_response`] at its clock's time. It plays
/// NVIDIA's service where no GPU exists: `cocoon-host launch --local` runs one for the
/// simulated GPUs it gives the worker, and tests run it as healthy and as failing
/// ([`SimOcspMode`]). Trust: none, like the simulated root.
pub struct SimOcspResponder {
    root: measurements::gpu::sim::SimNvidiaRoot,
    clock: Arc<dyn Clock>,
    mode: Mutex<SimOcspMode>,
    requests: std::sync::atomic::AtomicU64,
}

impl Debug for SimOcspResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimOcspResponder")
            .field("mode", &*lock(&self.mode))
            .finish_non_exhaustive()
    }
}

impl SimOcspResponder {
    /// A healthy responder for `root`'s hierarchy.
    pub fn new(root: measurements::gpu::sim::SimNvidiaRoot, clock: Arc<dyn Clock>) -> Self {
        Self {
            root,
            clock,
            mode: Mutex::new(SimOcspMode::Good),
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Switches what it answers from the next request on.
    pub fn set_mode(&self, mode: SimOcspMode) {
        *lock(&self.mode) = mode;
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The answer (status, body) to one request body.
    fn answer(&self, body: &[u8]) -> (u16, Vec<u8>) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = self.clock.now();
        let mode = lock(&self.mode).clone();
        let hour_ago = now.saturating_sub(3600);
        let (from, until, revoked) = match &mode {
            SimOcspMode::Stale => (
                now.saturating_sub(2 * 86_400),
                now.saturating_sub(86_400),
                Vec::new(),
            ),
            SimOcspMode::Revoked(serials) => (hour_ago, hour_ago + 86_400, serials.clone()),
            SimOcspMode::ServerError => return (500, Vec::new()),
            _ => (hour_ago, hour_ago + 86_400, Vec::new()),
        };
        match self.root.ocsp_response(body, from, until, &revoked) {
            Ok(mut der) => {
                if mode == SimOcspMode::BadSignature {
                    if let Some(last) = der.last_mut() {
                        *last ^= 1;
                    }
                }
                (200, der)
            }
            Err(_) => (500, Vec::new()),
        }
    }

    /// Serves `listener` until the task is dropped; each connection on a task of its own.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        use http_body_util::{BodyExt, Full, Limited};
        use hyper::service::service_fn;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let me = me.clone();
                    async move {
                        let body = Limited::new(req.into_body(), MAX_OCSP_BODY)
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if *lock(&me.mode) == SimOcspMode::Silent {
                            me.requests
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            std::future::pending::<()>().await;
                        }
                        let (status, der) = me.answer(&body);
                        hyper::Response::builder()
                            .status(status)
                            .header(hyper::header::CONTENT_TYPE, "application/ocsp-response")
                            .body(Full::new(Bytes::from(der)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }
}
