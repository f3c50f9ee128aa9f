//! The worker's end of end-to-end encryption ([`protocol::e2e`]): keys generated at boot and
//! held only in memory, opening request envelopes, sealing the response stream and signing a
//! receipt for every completed request.
//!
//! Keys: one X25519 HPKE key and one Ed25519 receipt key per process, generated from the OS
//! RNG at start, published in the worker's attested claims, never written anywhere. A restart
//! makes new keys (clients fetch them again through the proxy's discovery route). The RA-TLS
//! certificate is renewed with the same claims, so the keys live as long as the process.
//!
//! Refusals that could tell an attacker something about a forged envelope all read the same:
//! [`DECRYPT_FAILED`]. A stale time or a replay is refused after the envelope opened (only
//! the holder of the content key can produce either), with its own message.
//!
//! After a request opened, everything the worker says about it — including validation errors
//! that might echo parts of the prompt and engine failures — goes inside the encrypted
//! stream; the proxy sees a 200 and the stream's sizes and timing, nothing else. Without a
//! receipt (a failed request) the proxy bills nothing.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body::{Body, Frame};
use protocol::e2e::{
    Binding, ChunkSealer, OpenedRequest, Receipt, RecipientKey, WorkerKeys, MAX_SKEW_SECS,
};
use protocol::sse::{Event, EVENT_E2E, EVENT_RECEIPT, KEEPALIVE};
use protocol::{ApiError, ErrorKind, Usage};
use rand_core::{OsRng, RngCore, TryRngCore};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::service::Out;

/// The one answer to an envelope that does not open (wrong recipient, edited bytes or
/// headers, malformed envelope).
pub const DECRYPT_FAILED: &str = "the encrypted request could not be opened";

/// Most request hashes remembered for replay protection (entries expire after twice the
/// allowed clock skew; at this size a worker would need over 300 requests a second to fill it).
const REPLAY_CAPACITY: usize = 200_000;

/// The worker's end-to-end keys and replay memory. `Debug` shows public parts only.
pub struct E2eKeys {
    recipient: RecipientKey,
    receipt: SigningKey,
    /// SHA-256 of the canonical claims these keys were published in (set by
    /// [`E2eKeys::claims`]'s caller through [`E2eKeys::with_claims_hash`]).
    claims_hash: [u8; 32],
    seen: Mutex<ReplayCache>,
}

impl std::fmt::Debug for E2eKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eKeys")
            .field("key_hash", &self.recipient.config().key_hash().to_string())
            .finish_non_exhaustive()
    }
}

impl E2eKeys {
    /// Fresh keys from the OS RNG.
    pub fn generate() -> Self {
        let mut rng = OsRng.unwrap_err();
        let recipient = RecipientKey::generate(0, &mut rng);
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let receipt = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Self {
            recipient,
            receipt,
            claims_hash: [0; 32],
            seen: Mutex::new(ReplayCache::default()),
        }
    }

    /// Keys from fixed material (tests).
    pub fn from_seed(seed: u8) -> Self {
        Self {
            recipient: RecipientKey::derive(0, &[seed; 32]),
            receipt: SigningKey::from_bytes(&[seed; 32]),
            claims_hash: [0; 32],
            seen: Mutex::new(ReplayCache::default()),
        }
    }

    /// The public keys, as published.
    pub fn public(&self) -> WorkerKeys {
        WorkerKeys {
            key_config: self.recipient.config().clone(),
            receipt_key: self.receipt.verifying_key(),
        }
    }

    /// `claims` with these keys added.
    pub fn claims(&self, claims: ratls::Claims) -> ratls::Claims {
        self.public()
            .claims()
            .into_iter()
            .fold(claims, |c, (k, v)| c.with_extra(k, v))
    }

    /// Records the hash of the canonical claims the keys were published in (receipts name it).
    pub fn with_claims_hash(mut self, claims: &ratls::Claims) -> Self {
        if let Ok(bytes) = claims.to_canonical_json() {
            self.claims_hash = Sha256::digest(bytes).into();
        }
        self
    }

    /// Opens an envelope received at `now` (Unix seconds). Every failure to open reads
    /// [`DECRYPT_FAILED`]; a time outside ±[`MAX_SKEW_SECS`] or a replay is refused after.
    pub fn open(
        &self,
        binding: &Binding,
        envelope: &[u8],
        now: u64,
    ) -> Result<OpenedRequest, ApiError> {
        let opened = protocol::e2e::open_request(binding, envelope, &self.recipient)
            .map_err(|_| ApiError::new(ErrorKind::InvalidRequest, DECRYPT_FAILED))?;
        if binding.time.abs_diff(now) > MAX_SKEW_SECS {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "the request was sealed at {} but this worker's time is {now}: more than {MAX_SKEW_SECS} s apart",
                    binding.time
                ),
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(opened.request_hash, now)?;
        Ok(opened)
    }

    fn sign(&self, receipt: &Receipt) -> Option<Vec<u8>> {
        receipt.sign(&self.receipt).ok()
    }
}

/// Request hashes seen within the replay window.
#[derive(Default)]
struct ReplayCache {
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayCache {
    fn insert(&mut self, hash: [u8; 32], now: u64) -> Result<(), ApiError> {
        let window = 2 * MAX_SKEW_SECS;
        while let Some(&(h, at)) = self.order.front() {
            if at.saturating_add(window) > now && self.order.len() < REPLAY_CAPACITY {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&h) == Some(&at) {
                self.seen.remove(&h);
            }
        }
        if self.seen.contains_key(&hash) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "replayed request: this worker already served a request with these exact bytes",
            ));
        }
        self.seen.insert(hash, now);
        self.order.push_back((hash, now));
        Ok(())
    }
}

/// What a sealed response needs to sign its receipt.
pub(crate) struct Sealing {
    pub keys: Arc<E2eKeys>,
    pub sealer: ChunkSealer,
    pub request_id: String,
    pub request_hash: [u8; 32],
    pub model: String,
    pub model_digest: String,
    pub price_coefficient_milli: u32,
    pub clock: Arc<dyn ratls::Clock>,
}

/// The encrypted response body: each output of the generation becomes one sealed chunk
/// (keepalive comments stay in the clear); at the end, the receipt (when the request
/// completed) in the clear for the proxy, then the final chunk carrying it for the client.
pub(crate) struct E2eBody {
    first: Option<Out>,
    rx: Option<mpsc::Receiver<Out>>,
    sealing: Sealing,
    summary: Option<(Usage, String)>,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl E2eBody {
    pub(crate) fn new(first: Out, rx: Option<mpsc::Receiver<Out>>, sealing: Sealing) -> Self {
        Self {
            first: Some(first),
            rx,
            sealing,
            summary: None,
            queue: VecDeque::new(),
            done: false,
        }
    }

    fn chunk_event(&mut self, plaintext: &[u8], last: bool) -> Bytes {
        match self.sealing.sealer.seal(plaintext, last) {
            Ok(c) => Bytes::from(
                Event::named(
                    EVENT_E2E,
                    base64::engine::general_purpose::STANDARD.encode(c),
                )
                .encode(),
            ),
            // Only after the final chunk, which is never sealed twice.
            Err(_) => Bytes::new(),
        }
    }

    fn finish(&mut self) {
        let mut last = Vec::new();
        if let Some((usage, finish_reason)) = self.summary.take() {
            let s = &self.sealing;
            let receipt = Receipt {
                request_id: s.request_id.clone(),
                request_hash: s.request_hash,
                claims_hash: s.keys.claims_hash,
                model: s.model.clone(),
                model_digest: s.model_digest.clone(),
                usage,
                price_coefficient_milli: s.price_coefficient_milli,
                finish_reason,
                chunks: u32::try_from(s.sealer.count()).unwrap_or(u32::MAX),
                time: s.clock.now(),
            };
            if let Some(signed) = s.keys.sign(&receipt) {
                let event = Event::named(
                    EVENT_RECEIPT,
                    base64::engine::general_purpose::STANDARD.encode(signed),
                )
                .encode();
                self.queue.push_back(Bytes::from(event.clone()));
                last = event;
            }
        }
        let chunk = self.chunk_event(&last, true);
        self.queue.push_back(chunk);
        self.done = true;
    }

    fn take(&mut self, out: Out) -> Option<Bytes> {
        match out {
            Out::Data(b) if b.as_ref() == KEEPALIVE => Some(b),
            Out::Data(b) => Some(self.chunk_event(&b, false)),
            Out::Fail(e) => Some(self.chunk_event(&Event::error(&e).encode(), false)),
            Out::Summary(usage, reason) => {
                self.summary = Some((usage, reason));
                None
            }
        }
    }
}

impl Body for E2eBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let next = match this.first.take() {
                Some(out) => Some(out),
                None => match this.rx.as_mut() {
                    Some(rx) => match rx.poll_recv(cx) {
                        Poll::Ready(v) => v,
                        Poll::Pending => return Poll::Pending,
                    },
                    None => None,
                },
            };
            match next {
                Some(out) => {
                    if let Some(b) = this.take(out) {
                        this.queue.push_back(b);
                    }
                }
                None => this.finish(),
            }
        }
    }
}
