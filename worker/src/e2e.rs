//! The worker's end of end-to-end encryption ([`protocol::e2e`]): keys generated at boot and
//! held only in memory, opening request envelopes, sealing the response stream and signing a
//! receipt for every completed request.
//!
//! Keys: one X25519 HPKE key and one Ed25519 receipt key per process, generated from the OS
//! RNG at start, published in the worker's attested claims, never written anywhere. A restart
//! makes new keys (clients fetch them again through the proxy's discovery route). Each RA-TLS
//! certificate renewal rotates them ([`E2eKeys`] is the identity's [`ratls::ClaimsRotation`]):
//! the new certificate publishes a new set, and the previous set keeps opening requests sealed
//! to it for a grace period ([`DEFAULT_GRACE_SECS`]), signing their receipts with its own
//! receipt key, which is what the proxy holds for the connection those requests came on.
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

/// How long a key stays usable after it was rotated out, by default: clients refetch the
/// directory every minute, and requests already routed to this worker's previous connection
/// finish on it.
pub const DEFAULT_GRACE_SECS: u64 = 600;

/// One generation of keys: the HPKE key, the receipt key and the hash of the claims they were
/// published in.
pub struct KeySet {
    recipient: RecipientKey,
    receipt: SigningKey,
    /// SHA-256 of the canonical claims these keys were published in (receipts name it); set
    /// once, when the claims are known.
    claims_hash: std::sync::OnceLock<[u8; 32]>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("key_hash", &self.recipient.config().key_hash().to_string())
            .finish_non_exhaustive()
    }
}

impl KeySet {
    fn generate(key_id: u8) -> Self {
        let mut rng = OsRng.unwrap_err();
        let recipient = RecipientKey::generate(key_id, &mut rng);
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let receipt = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Self {
            recipient,
            receipt,
            claims_hash: std::sync::OnceLock::new(),
        }
    }

    /// The public keys, as published.
    pub fn public(&self) -> WorkerKeys {
        WorkerKeys {
            key_config: self.recipient.config().clone(),
            receipt_key: self.receipt.verifying_key(),
        }
    }

    fn set_claims_hash(&self, claims: &ratls::Claims) {
        if let Ok(bytes) = claims.to_canonical_json() {
            let _ = self.claims_hash.set(Sha256::digest(bytes).into());
        }
    }

    fn sign(&self, receipt: &Receipt) -> Option<Vec<u8>> {
        receipt.sign(&self.receipt).ok()
    }

    /// The hash of the claims these keys were published in (zero until known).
    pub fn claims_hash(&self) -> [u8; 32] {
        self.claims_hash.get().copied().unwrap_or([0; 32])
    }
}

/// The keys in use: the current set, the previous one until its grace period ends, and a set
/// prepared for the next certificate.
struct Ring {
    current: Arc<KeySet>,
    previous: Option<(Arc<KeySet>, u64)>,
    pending: Option<KeySet>,
    /// Key id of the next generation (in the key config; wraps).
    next_id: u8,
}

/// The worker's end-to-end keys and replay memory (see the module docs). `Debug` shows
/// public parts only.
///
/// Rotation ([`ratls::ClaimsRotation`]): each certificate renewal publishes a new set; the
/// previous one still opens requests sealed to it for [`DEFAULT_GRACE_SECS`] (and signs their
/// receipts, so each receipt names the claims its key was published in), then it is dropped.
pub struct E2eKeys {
    ring: Mutex<Ring>,
    seen: Mutex<ReplayCache>,
    grace_secs: u64,
    clock: Arc<dyn ratls::Clock>,
}

impl std::fmt::Debug for E2eKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eKeys")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl E2eKeys {
    fn with_set(set: KeySet) -> Self {
        Self {
            ring: Mutex::new(Ring {
                current: Arc::new(set),
                previous: None,
                pending: None,
                next_id: 1,
            }),
            seen: Mutex::new(ReplayCache::default()),
            grace_secs: DEFAULT_GRACE_SECS,
            clock: Arc::new(ratls::SystemClock),
        }
    }

    /// Fresh keys from the OS RNG.
    pub fn generate() -> Self {
        Self::with_set(KeySet::generate(0))
    }

    /// Keys from fixed material (tests).
    pub fn from_seed(seed: u8) -> Self {
        Self::with_set(KeySet {
            recipient: RecipientKey::derive(0, &[seed; 32]),
            receipt: SigningKey::from_bytes(&[seed; 32]),
            claims_hash: std::sync::OnceLock::new(),
        })
    }

    /// The same keys with grace period `grace_secs` on `clock` (whose time decides when a
    /// rotated-out key stops opening requests).
    pub fn with_grace(mut self, grace_secs: u64, clock: Arc<dyn ratls::Clock>) -> Self {
        self.grace_secs = grace_secs;
        self.clock = clock;
        self
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current set.
    pub fn current(&self) -> Arc<KeySet> {
        self.ring().current.clone()
    }

    /// The current public keys, as published.
    pub fn public(&self) -> WorkerKeys {
        self.current().public()
    }

    /// `claims` with the current keys added.
    pub fn claims(&self, claims: ratls::Claims) -> ratls::Claims {
        with_keys(claims, &self.public())
    }

    /// Records the hash of the canonical claims the current keys were published in (once:
    /// later calls change nothing).
    pub fn with_claims_hash(self, claims: &ratls::Claims) -> Self {
        self.published_in(claims);
        self
    }

    /// [`Self::with_claims_hash`] by reference: records the claims of the first certificate
    /// (as issued, which may add entries such as the GPU evidence hash).
    pub fn published_in(&self, claims: &ratls::Claims) {
        self.current().set_claims_hash(claims);
    }

    /// Opens an envelope received at `now` (Unix seconds) with the set it was sealed to (the
    /// current one, or the previous one within its grace period); returns that set, which
    /// signs the receipt. Every failure to open reads [`DECRYPT_FAILED`]; a time outside
    /// ±[`MAX_SKEW_SECS`] or a replay is refused after.
    pub fn open(
        &self,
        binding: &Binding,
        envelope: &[u8],
        now: u64,
    ) -> Result<(OpenedRequest, Arc<KeySet>), ApiError> {
        let failed = || ApiError::new(ErrorKind::InvalidRequest, DECRYPT_FAILED);
        let set = {
            let ring = self.ring();
            let previous = ring
                .previous
                .as_ref()
                .filter(|(_, until)| now < *until)
                .map(|(s, _)| s.clone());
            std::iter::once(ring.current.clone())
                .chain(previous)
                .find(|s| {
                    binding
                        .recipients
                        .contains(&s.recipient.config().key_hash())
                })
                .ok_or_else(failed)?
        };
        let opened =
            protocol::e2e::open_request(binding, envelope, &set.recipient).map_err(|_| failed())?;
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
        Ok((opened, set))
    }
}

/// `claims` with `keys` as its end-to-end entries (replacing any there).
fn with_keys(claims: ratls::Claims, keys: &WorkerKeys) -> ratls::Claims {
    keys.claims()
        .into_iter()
        .fold(claims, |c, (k, v)| c.with_extra(k, v))
}

impl ratls::ClaimsRotation for E2eKeys {
    fn next(&self, current: &ratls::Claims) -> ratls::Claims {
        let mut ring = self.ring();
        let id = ring.next_id;
        let set = KeySet::generate(id);
        let claims = with_keys(current.clone(), &set.public());
        ring.pending = Some(set);
        claims
    }

    fn installed(&self, claims: &ratls::Claims) {
        let now = self.clock.now();
        let mut ring = self.ring();
        let Some(set) = ring.pending.take() else {
            return;
        };
        set.set_claims_hash(claims);
        let set = Arc::new(set);
        let old = std::mem::replace(&mut ring.current, set);
        ring.previous = Some((old, now.saturating_add(self.grace_secs)));
        ring.next_id = ring.next_id.wrapping_add(1);
        tracing::info!(
            key_hash = %ring.current.recipient.config().key_hash(),
            grace_secs = self.grace_secs,
            "end-to-end keys rotated with the certificate"
        );
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
    /// The key set the request was opened with.
    pub keys: Arc<KeySet>,
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
                claims_hash: s.keys.claims_hash(),
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

    /// Seals what the generation has already queued, while the frame being gathered (`taken`
    /// bytes so far, then the queue) is below [`protocol::sse::FRAME_TARGET`] (never waits).
    fn pull_ready(&mut self, taken: usize) {
        let mut queued = taken + self.queue.iter().map(Bytes::len).sum::<usize>();
        while !self.done && queued < protocol::sse::FRAME_TARGET {
            let Some(rx) = self.rx.as_mut() else {
                return;
            };
            match rx.try_recv() {
                Ok(out) => {
                    if let Some(b) = self.take(out) {
                        queued += b.len();
                        self.queue.push_back(b);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => self.finish(),
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
            if let Some(first) = this.queue.pop_front() {
                // Everything ready goes out in one frame ([`protocol::sse::gather`]).
                this.pull_ready(first.len());
                let queue = &mut this.queue;
                let data = protocol::sse::gather(first, || queue.pop_front());
                return Poll::Ready(Some(Ok(Frame::data(data))));
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

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::e2e::{seal_request, KeyHash, SealedRequest};
    use ratls::ClaimsRotation;

    const T0: u64 = 1_800_000_000;

    fn binding(recipients: Vec<KeyHash>, id: &str) -> Binding {
        Binding {
            path: "/v1/chat/completions".into(),
            request_id: id.into(),
            model: "m".into(),
            max_tokens: 4,
            price_cap: None,
            time: T0,
            recipients,
        }
    }

    fn seal(keys: &WorkerKeys, id: &str) -> (Binding, SealedRequest) {
        let b = binding(vec![keys.key_config.key_hash()], id);
        let s = seal_request(
            &b,
            std::slice::from_ref(&keys.key_config),
            b"{}",
            &mut OsRng.unwrap_err(),
        )
        .unwrap();
        (b, s)
    }

    fn claims() -> ratls::Claims {
        ratls::Claims::new(ratls::Role::Worker, 1)
    }

    #[test]
    fn rotation_publishes_new_keys_and_the_old_ones_open_until_the_grace_ends() {
        let clock = Arc::new(ratls::FixedClock::new(T0));
        let keys = E2eKeys::generate().with_grace(100, clock.clone());
        let c0 = keys.claims(claims());
        let keys = keys.with_claims_hash(&c0);
        let old = keys.public();
        let old_hash = keys.current().claims_hash();
        assert_ne!(old_hash, [0; 32]);

        // Prepared but not installed (the renewal failed to issue): nothing changes.
        let c1 = keys.next(&c0);
        assert_ne!(c1, c0);
        assert_eq!(keys.public(), old);
        let (b, s) = seal(&old, "a");
        assert!(keys.open(&b, &s.envelope, T0).is_ok());

        // Installed: the new keys are current and named in the new claims.
        let c1 = keys.next(&c0);
        keys.installed(&c1);
        let new = keys.public();
        assert_ne!(new.key_config, old.key_config);
        assert_ne!(new.receipt_key, old.receipt_key);
        assert_eq!(
            WorkerKeys::from_claims(&c1.extra).unwrap(),
            Some(new.clone())
        );
        assert_eq!(c1.role, c0.role);
        let new_hash = keys.current().claims_hash();
        assert_eq!(
            new_hash,
            <[u8; 32]>::from(Sha256::digest(c1.to_canonical_json().unwrap()))
        );

        // A request sealed to the old key opens with the old set (its receipt names the old
        // claims and verifies with the old receipt key) within the grace period ...
        let (b, s) = seal(&old, "b");
        let (_, set) = keys.open(&b, &s.envelope, T0 + 99).unwrap();
        assert_eq!(set.public(), old);
        assert_eq!(set.claims_hash(), old_hash);
        // ... the new key opens with the new set ...
        let (b, s) = seal(&new, "c");
        let (_, set) = keys.open(&b, &s.envelope, T0 + 99).unwrap();
        assert_eq!(set.claims_hash(), new_hash);
        // ... and after the grace period the old key is gone.
        let (b, s) = seal(&old, "d");
        let e = keys.open(&b, &s.envelope, T0 + 100).unwrap_err();
        assert_eq!(e.message, DECRYPT_FAILED);

        // A second rotation drops the first set at once (only one previous set is kept).
        let c2 = keys.next(&c1);
        keys.installed(&c2);
        let (b, s) = seal(&old, "e");
        assert_eq!(
            keys.open(&b, &s.envelope, T0).unwrap_err().message,
            DECRYPT_FAILED
        );
        let (b, s) = seal(&new, "f");
        assert!(keys.open(&b, &s.envelope, T0).is_ok());
    }
}
