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
    /// Workers are verified with `policy` on `clock`, with collateral from `source` besides
    /// what their certificates embed.
    pub fn new(
        policy: measurements::Policy,
        clock: std::sync::Arc<dyn Clock>,
        source: Option<std::sync::Arc<dyn ratls::CollateralSource>>,
    ) -> Self {
        let mut verifier = PeerVerifier::new(policy, clock).with_roles([Role::Worker]);
        if let Some(source) = source {
            verifier = verifier.with_collateral_source(source);
        }
        Self {
            verifier,
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
    /// The verified receipt, its signed bytes and the key it verified with.
    receipt: Option<Verified>,
    /// The proxy's plaintext copy of the receipt, verified the same way: logged only if the
    /// stream ends without the final chunk (the proxy stopped a stream its client had stopped
    /// reading, and billed it on this receipt).
    copy: Option<Verified>,
    log: Option<std::sync::Arc<crate::receipts::ReceiptLog>>,
}

/// A receipt verified with its worker's key: the receipt, its signed bytes and the key.
type Verified = (Receipt, Vec<u8>, ed25519_dalek::VerifyingKey);

impl Decryption {
    pub fn new(
        sealed: &protocol::e2e::SealedRequest,
        request_id: &str,
        model: &str,
        recipients: Vec<Recipient>,
        log: Option<std::sync::Arc<crate::receipts::ReceiptLog>>,
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
            copy: None,
            log,
        }
    }

    /// The verified receipt, once the final chunk carried one.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref().map(|(r, _, _)| r)
    }

    /// Takes one event of the proxy's stream; appends what the caller may see to `out`.
    pub fn absorb(&mut self, ev: Event, out: &mut VecDeque<Event>) -> Result<(), ApiError> {
        match ev.name.as_deref() {
            Some(EVENT_E2E) => self.chunk(&ev.data, out),
            // The proxy's copy; the client checks the one inside the final chunk, and keeps
            // this one in case none comes ([`Self::end`]). A copy that does not verify is
            // no receipt: ignored.
            Some(EVENT_RECEIPT) => {
                if let Ok(v) = self.verify_receipt(&ev.data) {
                    self.copy = Some(v);
                }
                Ok(())
            }
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
                let (receipt, signed, key) = self.receipt.as_ref().ok_or_else(|| {
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
                if let Some(log) = &self.log {
                    log.append(receipt, signed, key);
                }
                out.push_back(done);
            }
        }
        Ok(())
    }

    fn receipt_event(&mut self, data: &str) -> Result<(), ApiError> {
        self.receipt = Some(self.verify_receipt(data)?);
        Ok(())
    }

    /// The stream's body ended. Without the final chunk, a verified copy of the receipt from
    /// the proxy (a stream stopped and billed while its client was not reading) is what the
    /// worker signed for the charge: it becomes the receipt and is logged.
    pub fn end(&mut self) {
        if self.receipt.is_some() {
            return;
        }
        if let Some((receipt, signed, key)) = self.copy.take() {
            tracing::info!(
                request_id = %receipt.request_id,
                "encrypted stream ended without its final chunk: the receipt it was billed on is the proxy's copy, verified with the worker's key"
            );
            if let Some(log) = &self.log {
                log.append(&receipt, &signed, &key);
            }
            self.receipt = Some((receipt, signed, key));
        }
    }

    /// Checks a receipt event's data: signed by one of the request's recipients, for this
    /// request.
    fn verify_receipt(&self, data: &str) -> Result<Verified, ApiError> {
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
        Ok((r, bytes, worker.keys.receipt_key))
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

#[cfg(test)]
mod tests {
    //! [`Decryption`] against a response sealed the way a worker seals it (`worker::e2e`):
    //! each inner event one chunk, then the final chunk carrying the signed receipt.

    use super::*;
    use ed25519_dalek::SigningKey;
    use protocol::e2e::{
        open_request, seal_request, Binding, KeyHash, RecipientKey, SealedRequest,
    };

    const PATH: &str = "/v1/chat/completions";
    const MODEL: &str = "m";
    const ID: &str = "req-1";

    fn rng() -> rand_core::UnwrapErr<rand_core::OsRng> {
        rand_core::UnwrapErr(rand_core::OsRng)
    }

    /// One worker's keys and what the client knows of it.
    struct Worker {
        key: RecipientKey,
        receipt: SigningKey,
        recipient: Recipient,
    }

    fn worker(seed: u8) -> Worker {
        let key = RecipientKey::generate(seed, &mut rng());
        let receipt = SigningKey::from_bytes(&[seed; 32]);
        let recipient = Recipient {
            keys: WorkerKeys {
                key_config: key.config().clone(),
                receipt_key: receipt.verifying_key(),
            },
            claims_hash: [seed; 32],
            image_hash: "00".repeat(32),
        };
        Worker {
            key,
            receipt,
            recipient,
        }
    }

    fn binding(recipients: Vec<KeyHash>) -> Binding {
        Binding {
            path: PATH.into(),
            request_id: ID.into(),
            model: MODEL.into(),
            max_tokens: 16,
            price_cap: None,
            time: 1_700_000_000,
            recipients,
        }
    }

    fn usage() -> Usage {
        Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
            ..Usage::default()
        }
    }

    /// The proxy's stream of a sealed answer: two content events, usage and `[DONE]` in
    /// their own chunks, then the receipt in the clear and the final chunk carrying it.
    struct Exchange {
        sealed: SealedRequest,
        events: Vec<Event>,
        client: Vec<Recipient>,
    }

    fn exchange_with(receipt_edit: impl FnOnce(&mut protocol::e2e::Receipt)) -> Exchange {
        let w = worker(7);
        let b = binding(vec![w.key.config().key_hash()]);
        let sealed = seal_request(&b, &[w.key.config().clone()], b"{}", &mut rng()).unwrap();
        let opened = open_request(&b, &sealed.envelope, &w.key).unwrap();
        assert_eq!(opened.request_hash, sealed.request_hash);
        let mut sealer = opened.response.sealer();
        let mut chunk = |plain: &[u8], last: bool| {
            let c = sealer.seal(plain, last).unwrap();
            Event::named(
                EVENT_E2E,
                base64::engine::general_purpose::STANDARD.encode(c),
            )
        };
        let mut events = vec![
            chunk(&Event::data(r#"{"n":1}"#).encode(), false),
            chunk(&Event::data(r#"{"n":2}"#).encode(), false),
            chunk(&Event::usage(&usage()).encode(), false),
            chunk(&Event::done().encode(), false),
        ];
        let mut r = protocol::e2e::Receipt {
            request_id: ID.into(),
            request_hash: opened.request_hash,
            claims_hash: w.recipient.claims_hash,
            model: MODEL.into(),
            model_digest: "d".into(),
            usage: usage(),
            price_coefficient_milli: 1000,
            finish_reason: "stop".into(),
            chunks: 4,
            time: 1_700_000_001,
        };
        receipt_edit(&mut r);
        let signed = r.sign(&w.receipt).unwrap();
        let receipt = Event::named(
            EVENT_RECEIPT,
            base64::engine::general_purpose::STANDARD.encode(&signed),
        );
        events.push(receipt.clone());
        events.push(chunk(&receipt.encode(), true));
        Exchange {
            sealed,
            events,
            client: vec![w.recipient],
        }
    }

    fn exchange() -> Exchange {
        exchange_with(|_| {})
    }

    /// Feeds `events`; returns what was released and the first error (or the finish result).
    fn run(x: &Exchange, events: &[Event]) -> (Vec<Event>, Result<(), ApiError>) {
        let mut d = Decryption::new(&x.sealed, ID, MODEL, x.client.clone(), None);
        let mut out = VecDeque::new();
        for ev in events {
            if let Err(e) = d.absorb(ev.clone(), &mut out) {
                return (out.into(), Err(e));
            }
        }
        let end = d.finish();
        if end.is_ok() {
            assert!(d.receipt().is_some());
        }
        (out.into(), end)
    }

    fn datas(evs: &[Event]) -> Vec<String> {
        evs.iter().map(|e| e.data.clone()).collect()
    }

    fn flip_chunk(ev: &Event, at: usize) -> Event {
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&ev.data)
            .unwrap();
        bytes[at] ^= 1;
        Event::named(
            EVENT_E2E,
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )
    }

    #[test]
    fn a_whole_stream_opens_and_done_follows_the_verified_receipt() {
        let x = exchange();
        let (out, end) = run(&x, &x.events);
        end.unwrap();
        assert_eq!(
            datas(&out),
            [
                r#"{"n":1}"#,
                r#"{"n":2}"#,
                &serde_json::to_string(&usage()).unwrap(),
                "[DONE]"
            ]
        );
        // [DONE] is held while the final chunk is missing.
        let (out, end) = run(&x, &x.events[..5]);
        assert!(!out.iter().any(Event::is_done));
        let e = end.unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
    }

    #[test]
    fn a_flipped_byte_in_any_chunk_stops_the_stream_at_that_chunk() {
        let x = exchange();
        let chunks: Vec<usize> = (0..x.events.len())
            .filter(|&i| x.events[i].name.as_deref() == Some(EVENT_E2E))
            .collect();
        for (n, &i) in chunks.iter().enumerate() {
            let len = base64::engine::general_purpose::STANDARD
                .decode(&x.events[i].data)
                .unwrap()
                .len();
            for at in [0, len / 2, len - 1] {
                let mut evs = x.events.clone();
                evs[i] = flip_chunk(&evs[i], at);
                let (out, end) = run(&x, &evs);
                let e = end.unwrap_err();
                assert_eq!(e.kind, ErrorKind::Upstream);
                assert!(e.message.starts_with("encrypted response:"), "{e}");
                // Only what came before the bad chunk was released, never [DONE] (held
                // until the final chunk).
                assert_eq!(out.len(), n.min(3), "chunk {n} byte {at}");
                assert!(!out.iter().any(Event::is_done));
            }
        }
    }

    #[test]
    fn dropped_swapped_and_duplicated_chunks_fail() {
        let x = exchange();
        let ev = &x.events;
        // The final chunk dropped: a named truncation error, no [DONE].
        let (out, end) = run(&x, &ev[..ev.len() - 1]);
        assert!(end.unwrap_err().message.contains("truncated"));
        assert!(!out.iter().any(Event::is_done));
        // A middle chunk dropped.
        let mut dropped = ev.clone();
        dropped.remove(1);
        let (out, end) = run(&x, &dropped);
        assert!(end.is_err());
        assert_eq!(datas(&out), [r#"{"n":1}"#]);
        // Two chunks swapped.
        let mut swapped = ev.clone();
        swapped.swap(0, 1);
        let (out, end) = run(&x, &swapped);
        assert!(end.is_err());
        assert!(out.is_empty());
        // A chunk repeated.
        let mut dup = ev.clone();
        dup.insert(1, ev[0].clone());
        let (out, end) = run(&x, &dup);
        assert!(end.is_err());
        assert_eq!(out.len(), 1);
        // Anything after the final chunk.
        let mut after = ev.clone();
        after.push(ev[0].clone());
        assert!(run(&x, &after).1.is_err());
    }

    #[test]
    fn plaintext_from_the_proxy_is_refused_but_its_errors_pass() {
        let x = exchange();
        let mut evs = x.events.clone();
        evs.insert(2, Event::data(r#"{"injected":true}"#));
        let (out, end) = run(&x, &evs);
        assert!(end.unwrap_err().message.contains("plaintext event"));
        assert_eq!(out.len(), 2);
        let mut evs = x.events[..2].to_vec();
        evs.push(Event::error(&ApiError::new(
            ErrorKind::Upstream,
            "worker gone",
        )));
        let (out, end) = run(&x, &evs);
        assert_eq!(out.last().unwrap().name.as_deref(), Some(EVENT_ERROR));
        assert!(end.unwrap_err().message.contains("truncated"));
    }

    /// A proxy stopping a stream at its drain deadline sends its error event between the
    /// receipt and the final chunk: the caller reads the error before `[DONE]`, and the
    /// receipt still verifies (what the proxy billed).
    #[test]
    fn a_proxy_error_before_the_final_chunk_comes_before_done_and_keeps_the_receipt() {
        let x = exchange();
        let mut evs = x.events.clone();
        let n = evs.len();
        evs.insert(
            n - 1,
            Event::error(&ApiError::new(ErrorKind::Unavailable, "shutting down")),
        );
        let (out, end) = run(&x, &evs);
        end.expect("complete: the final chunk arrived");
        let names: Vec<_> = out.iter().map(|e| e.name.as_deref()).collect();
        assert_eq!(
            names[names.len() - 3..],
            [Some(EVENT_USAGE), Some(EVENT_ERROR), None]
        );
        assert!(out.last().unwrap().is_done());
    }

    /// A stream the proxy stopped while its client was not reading: what was queued, the
    /// proxy's copy of the receipt it billed, its error event, and no final chunk. The copy,
    /// verified with the worker's key, becomes the receipt and is logged once; a copy signed
    /// by another key is ignored.
    #[test]
    fn without_the_final_chunk_the_proxys_verified_copy_is_the_receipt() {
        let x = exchange();
        let n = x.events.len();
        let stall = |copy: Event| {
            vec![
                x.events[0].clone(),
                x.events[1].clone(),
                copy,
                Event::error(&ApiError::new(ErrorKind::Timeout, "not reading")),
            ]
        };
        let dir = std::env::temp_dir().join(format!("cocoon-e2e-copy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("receipts.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = std::sync::Arc::new(
            crate::receipts::ReceiptLog::open(&path, protocol::usage::Prices::default()).unwrap(),
        );
        let mut d = Decryption::new(&x.sealed, ID, MODEL, x.client.clone(), Some(log));
        let mut out = VecDeque::new();
        for ev in stall(x.events[n - 2].clone()) {
            d.absorb(ev, &mut out).unwrap();
        }
        assert!(d.receipt().is_none(), "not before the body ends");
        d.end();
        d.end();
        assert_eq!(d.receipt().unwrap().usage, usage());
        assert!(d.finish().is_err(), "still a truncated stream");
        let logged = std::fs::read_to_string(&path).unwrap();
        assert_eq!(logged.lines().count(), 1, "{logged}");
        std::fs::remove_dir_all(&dir).unwrap();

        // Signed by a key that is not the worker's: no receipt.
        let mut other = exchange();
        other.client[0].keys.receipt_key = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let mut d = Decryption::new(&other.sealed, ID, MODEL, other.client.clone(), None);
        let mut out = VecDeque::new();
        for ev in stall(other.events[n - 2].clone()) {
            let _ = d.absorb(ev, &mut out);
        }
        d.end();
        assert!(d.receipt().is_none());

        // A whole stream: the receipt inside the final chunk, the copy never used.
        let mut d = Decryption::new(&x.sealed, ID, MODEL, x.client.clone(), None);
        for ev in x.events.clone() {
            d.absorb(ev, &mut out).unwrap();
        }
        d.end();
        assert!(d.copy.is_some() && d.receipt().is_some());
    }

    #[test]
    fn a_receipt_that_is_not_this_requests_fails_the_stream() {
        type Edit = fn(&mut protocol::e2e::Receipt);
        let cases: [(Edit, &str); 5] = [
            (|r| r.request_hash[0] ^= 1, "another request"),
            (|r| r.request_id = "req-2".into(), "another request id"),
            (|r| r.model = "other".into(), "another request id or model"),
            (|r| r.usage.completion_tokens += 1, "differs from the usage"),
            (|r| r.claims_hash = [9; 32], "not sealed to"),
        ];
        for (edit, why) in cases {
            let x = exchange_with(edit);
            let (out, end) = run(&x, &x.events);
            let e = end.unwrap_err();
            assert!(e.message.contains(why), "{why}: {e}");
            assert!(!out.iter().any(Event::is_done), "{why}");
        }
        // Signed by a key that is not the worker's.
        let mut x = exchange();
        x.client[0].keys.receipt_key = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let e = run(&x, &x.events).1.unwrap_err();
        assert!(e.message.starts_with("receipt:"), "{e}");
    }
}
