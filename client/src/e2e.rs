//! The client's end of end-to-end encryption ([`protocol::e2e`]).
//!
//! * **Discovery**: [`Recipients`] fetches the proxy's worker directory for a model
//!   (`GET /cocoon/v1/workers?model=`), verifies every worker certificate itself with the
//!   worker policy (the same ratls/measurements code as for the proxy; the attestation cache
//!   is keyed by quote hash) and keeps the keys of those that pass for [`DIRECTORY_TTL`]. A
//!   proxy can leave workers out; it cannot add a key, because the keys are in the quoted
//!   claims.
//! * **Request**: sealed to up to [`protocol::e2e::MAX_RECIPIENTS`] verified workers, chosen
//!   at random, so the proxy can still pick one and retry elsewhere before the first byte.
//! * **Response**: [`Decryption`] opens the chunks in order and hands on only what
//!   authenticated; `[DONE]` is held back until the final chunk opened and the receipt in it
//!   verified (worker's attested key, this request's hash and id, usage equal to the usage
//!   event), so a consumer that stops at `[DONE]` has seen a complete, receipted answer.
//!   Plaintext events from the proxy other than its own error events are refused (fail
//!   closed), and a stream that ends before the final chunk is a named truncation error.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use protocol::e2e::{Directory, Receipt, WorkerKeys};
use protocol::sse::{Decoder, Event, EVENT_E2E, EVENT_ERROR, EVENT_RECEIPT, EVENT_USAGE};
use protocol::{ApiError, ErrorKind, Usage};
use ratls::{Clock, PeerVerifier, Role};
use sha2::{Digest, Sha256};

/// How long a model's verified workers are reused before the directory is fetched again.
pub const DIRECTORY_TTL: Duration = Duration::from_secs(60);

/// A worker whose certificate passed the worker policy, with its published keys.
#[derive(Clone, Debug)]
pub struct Recipient {
    pub keys: WorkerKeys,
    /// SHA-256 of its canonical claims (its receipts name it).
    pub claims_hash: [u8; 32],
    /// Its verified image hash (hex).
    pub image_hash: String,
}

/// Verified workers per model (see the module docs).
#[derive(Debug)]
pub struct Recipients {
    verifier: PeerVerifier,
    cache: Mutex<HashMap<String, (Instant, Vec<Recipient>)>>,
}

fn e2e_error(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Attestation, message)
}

impl Recipients {
    /// Workers are verified with `policy` on `clock`.
    pub fn new(policy: measurements::Policy, clock: std::sync::Arc<dyn Clock>) -> Self {
        Self {
            verifier: PeerVerifier::new(policy, clock).with_roles([Role::Worker]),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The cached verified workers of `model`, if fresh.
    pub fn cached(&self, model: &str) -> Option<Vec<Recipient>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(model)
            .filter(|(at, _)| at.elapsed() < DIRECTORY_TTL)
            .map(|(_, r)| r.clone())
    }

    /// Forgets `model`'s workers (after the proxy said none of them is connected).
    pub fn forget(&self, model: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(model);
    }

    /// Verifies a directory the proxy sent for `model` and caches the workers that pass; an
    /// error when none does (naming the first rejection).
    pub fn accept(&self, model: &str, dir: Directory) -> Result<Vec<Recipient>, ApiError> {
        if dir.model != model {
            return Err(e2e_error(format!(
                "the proxy answered the worker directory of {:?} for {model:?}",
                dir.model
            )));
        }
        let mut out = Vec::new();
        let mut first_rejection = None;
        for entry in dir.workers.iter().take(protocol::e2e::MAX_DIRECTORY) {
            match self.verify(&entry.cert) {
                Ok(r) => {
                    if !out
                        .iter()
                        .any(|o: &Recipient| o.claims_hash == r.claims_hash)
                    {
                        out.push(r);
                    }
                }
                Err(e) => {
                    tracing::warn!(model, reason = %e, "worker certificate from the directory rejected");
                    first_rejection.get_or_insert(e);
                }
            }
        }
        if out.is_empty() {
            return Err(match first_rejection {
                Some(e) => e2e_error(format!(
                    "no worker of model {model:?} passed verification: {e}"
                )),
                None => ApiError::new(
                    ErrorKind::ModelNotFound,
                    format!("the proxy lists no worker with end-to-end keys for model {model:?}"),
                ),
            });
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_string(), (Instant::now(), out.clone()));
        Ok(out)
    }

    fn verify(&self, cert_b64: &str) -> Result<Recipient, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(cert_b64)
            .map_err(|_| "certificate is not base64".to_string())?;
        let peer = self.verifier.verify(&der).map_err(|e| e.to_string())?;
        let keys = WorkerKeys::from_claims(&peer.claims().extra)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the worker publishes no end-to-end keys".to_string())?;
        Ok(Recipient {
            keys,
            claims_hash: Sha256::digest(&peer.evidence.claims_bytes).into(),
            image_hash: peer.image_hash().to_string(),
        })
    }
}

/// Percent-encodes a query value (unreserved characters stay).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens an encrypted response stream (see the module docs).
#[derive(Debug)]
pub struct Decryption {
    opener: protocol::e2e::ChunkOpener,
    inner: Decoder,
    request_hash: [u8; 32],
    request_id: String,
    model: String,
    recipients: Vec<Recipient>,
    /// `[DONE]`, held until the final chunk.
    done: Option<Event>,
    usage: Option<Usage>,
    receipt: Option<Receipt>,
}

impl Decryption {
    pub fn new(
        sealed: &protocol::e2e::SealedRequest,
        request_id: &str,
        model: &str,
        recipients: Vec<Recipient>,
    ) -> Self {
        Self {
            opener: sealed.response.opener(),
            inner: Decoder::default(),
            request_hash: sealed.request_hash,
            request_id: request_id.to_string(),
            model: model.to_string(),
            recipients,
            done: None,
            usage: None,
            receipt: None,
        }
    }

    /// The verified receipt, once the final chunk carried one.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref()
    }

    /// Takes one event of the proxy's stream; appends what the caller may see to `out`.
    pub fn absorb(&mut self, ev: Event, out: &mut VecDeque<Event>) -> Result<(), ApiError> {
        match ev.name.as_deref() {
            Some(EVENT_E2E) => self.chunk(&ev.data, out),
            // The proxy's copy; the client checks the one inside the final chunk.
            Some(EVENT_RECEIPT) => Ok(()),
            // The proxy's own errors (worker gone, timeout) are plaintext by design.
            Some(EVENT_ERROR) => {
                out.push_back(ev);
                Ok(())
            }
            _ => Err(ApiError::new(
                ErrorKind::Upstream,
                "the proxy sent a plaintext event in an encrypted response: refused",
            )),
        }
    }

    fn chunk(&mut self, data: &str, out: &mut VecDeque<Event>) -> Result<(), ApiError> {
        let bad =
            |m: String| ApiError::new(ErrorKind::Upstream, format!("encrypted response: {m}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| bad(format!("chunk {} is not base64", self.opener.count())))?;
        let (plain, last) = self.opener.open(&bytes).map_err(|e| bad(e.to_string()))?;
        let events = self
            .inner
            .feed(&plain)
            .map_err(|e| bad(format!("inner stream: {e}")))?;
        for e in events {
            match e.name.as_deref() {
                Some(EVENT_RECEIPT) => self.receipt_event(&e.data)?,
                Some(EVENT_USAGE) => {
                    self.usage = serde_json::from_str(&e.data).ok();
                    out.push_back(e);
                }
                _ if e.is_done() => self.done = Some(e),
                _ => out.push_back(e),
            }
        }
        if last {
            if let Some(done) = self.done.take() {
                let receipt = self.receipt.as_ref().ok_or_else(|| {
                    bad("the worker completed the request without a receipt".into())
                })?;
                if let Some(u) = &self.usage {
                    if *u != receipt.usage {
                        return Err(bad(format!(
                            "the receipt's usage {:?} differs from the usage received {:?}",
                            receipt.usage, u
                        )));
                    }
                }
                out.push_back(done);
            }
        }
        Ok(())
    }

    fn receipt_event(&mut self, data: &str) -> Result<(), ApiError> {
        let bad = |m: String| ApiError::new(ErrorKind::Upstream, format!("receipt: {m}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| bad("not base64".into()))?;
        let (claimed, _) = Receipt::parse_unverified(&bytes).map_err(|e| bad(e.to_string()))?;
        let worker = self
            .recipients
            .iter()
            .find(|r| r.claims_hash == claimed.claims_hash)
            .ok_or_else(|| bad("it names a worker the request was not sealed to".into()))?;
        let r =
            Receipt::verify(&bytes, &worker.keys.receipt_key).map_err(|e| bad(e.to_string()))?;
        if r.request_hash != self.request_hash {
            return Err(bad("it is for another request (request hash)".into()));
        }
        if r.request_id != self.request_id || r.model != self.model {
            return Err(bad("it names another request id or model".into()));
        }
        self.receipt = Some(r);
        Ok(())
    }

    /// The stream ended: Ok only after the final chunk.
    pub fn finish(&self) -> Result<(), ApiError> {
        self.opener.finish().map_err(|e| {
            ApiError::new(
                ErrorKind::Upstream,
                format!("encrypted response truncated: {e}"),
            )
        })
    }
}
