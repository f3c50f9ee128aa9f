//! End-to-end encryption at the worker ([`worker::e2e`]) over a real RA-TLS connection: a
//! sealed request is answered with sealed chunks and a receipt that verifies; any edited byte
//! or bound header gets the one generic 400 with no engine call; replays and stale seal times
//! are refused.

mod service_support;

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use protocol::e2e::{self, Binding, Receipt, SealedRequest};
use protocol::sse::{Decoder, Event, EVENT_E2E, EVENT_RECEIPT, EVENT_USAGE};
use protocol::Usage;
use service_support::*;
use worker::e2e::{E2eKeys, DECRYPT_FAILED};

const PATH: &str = "/v1/chat/completions";

struct Rng(u64);

impl rand_core::RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        // splitmix64: deterministic test randomness.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for c in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}
impl rand_core::CryptoRng for Rng {}

fn binding(keys: &E2eKeys, request_id: &str, time: u64) -> Binding {
    Binding {
        path: PATH.into(),
        request_id: request_id.into(),
        model: MODEL.into(),
        max_tokens: 64,
        price_cap: None,
        time,
        recipients: vec![keys.public().key_config.key_hash()],
    }
}

fn seal(keys: &E2eKeys, b: &Binding, seed: u64) -> SealedRequest {
    e2e::seal_request(
        b,
        &[keys.public().key_config],
        &chat_body(serde_json::json!({})),
        &mut Rng(seed),
    )
    .expect("seal")
}

fn request(b: &Binding, envelope: Vec<u8>) -> Request<Full<Bytes>> {
    let mut req = completion_request(PATH, &b.model, b.max_tokens, envelope);
    let id = protocol::RequestId::parse(&b.request_id).unwrap();
    req.headers_mut()
        .insert(protocol::meta::H_REQUEST_ID, id.as_str().parse().unwrap());
    if let Some(cap) = b.price_cap {
        req.headers_mut().insert(
            protocol::meta::H_PRICE_CAP,
            cap.to_string().parse().unwrap(),
        );
    }
    e2e::write_headers(b, req.headers_mut());
    req
}

async fn harness() -> (Harness, Arc<E2eKeys>) {
    harness_with(Options::default()).await
}

/// A worker streaming 1000 tokens at 50 per second: time to act mid-stream.
async fn slow_harness() -> (Harness, Arc<E2eKeys>) {
    harness_with(Options {
        tokens: 1000,
        tokens_per_second: 50.0,
        ..Options::default()
    })
    .await
}

async fn harness_with(opts: Options) -> (Harness, Arc<E2eKeys>) {
    let h = Harness::start(opts).await;
    let keys = Arc::new(E2eKeys::from_seed(7));
    h.service.attach_e2e(keys.clone());
    (h, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_request_gets_sealed_chunks_and_a_verifying_receipt() {
    sealed_round_trip(Options::default(), false).await;
}

/// A reader that falls behind gets the sealed chunks already queued gathered into few frames
/// (`protocol::sse::gather`); they still open in order and the receipt still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sealed_chunks_are_gathered_and_still_open_in_order() {
    let frames = sealed_round_trip(
        Options {
            tokens: 40,
            ..Options::default()
        },
        true,
    )
    .await;
    // 40 text chunks, finish, usage, [DONE], the receipt and the final chunk: 45 events.
    assert!(
        frames < 20,
        "{frames} frames: queued chunks were not gathered"
    );
}

/// One sealed request answered and checked end to end; returns the number of non-empty DATA
/// frames the response came in. `slow`: wait before reading, so that the output queues up.
async fn sealed_round_trip(opts: Options, slow: bool) -> usize {
    use http_body_util::BodyExt;
    let (mut h, keys) = harness_with(opts).await;
    let mut conn = h.next_conn().await;
    let b = binding(&keys, "req-e2e-1", NOW);
    let sealed = seal(&keys, &b, 1);
    let resp = send(&mut conn, request(&b, sealed.envelope.clone())).await;
    assert_eq!(resp.status(), 200);
    if slow {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    let mut frames = 0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("frame").into_data() {
            frames += usize::from(!d.is_empty());
            bytes.extend_from_slice(&d);
        }
    }
    let (usage, r, count) = open_response(&bytes, &sealed, &keys);
    assert_eq!(r.request_hash, sealed.request_hash);
    assert_eq!(r.request_id, "req-e2e-1");
    assert_eq!(r.model, MODEL);
    assert_eq!(r.usage, usage);
    assert_eq!(r.finish_reason, "stop");
    assert_eq!(u64::from(r.chunks) + 1, count);
    assert_eq!(h.service.stats().snapshot().completed, 1);
    frames
}

/// Opens a sealed response's bytes: checks that only sealed chunks and the receipt copy are in
/// the clear, the chunks open in order to a final one holding `[DONE]`, the usage and the
/// receipt (the same as the copy), and the receipt verifies. Returns the usage inside, the
/// receipt and the number of chunks.
fn open_response(bytes: &[u8], sealed: &SealedRequest, keys: &E2eKeys) -> (Usage, Receipt, u64) {
    let (inner, r, count) = open_events(bytes, sealed, keys);
    assert!(inner.iter().any(Event::is_done));
    (usage_inside(&inner), r, count)
}

fn usage_inside(inner: &[Event]) -> Usage {
    inner
        .iter()
        .find(|e| e.name.as_deref() == Some(EVENT_USAGE))
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .expect("usage inside")
}

/// [`open_response`] without expecting `[DONE]`: the events inside, the receipt, the number
/// of chunks.
fn open_events(bytes: &[u8], sealed: &SealedRequest, keys: &E2eKeys) -> (Vec<Event>, Receipt, u64) {
    let outer = Decoder::default().feed(bytes).expect("sse");
    let mut opener = sealed.response.opener();
    let mut inner = Vec::new();
    let mut plain_receipt = None;
    for ev in &outer {
        match ev.name.as_deref() {
            Some(EVENT_E2E) => {
                let c = base64::engine::general_purpose::STANDARD
                    .decode(&ev.data)
                    .unwrap();
                let (pt, _) = opener.open(&c).expect("chunk opens in order");
                inner.extend(Decoder::default().feed(&pt).unwrap());
            }
            Some(EVENT_RECEIPT) => plain_receipt = Some(ev.data.clone()),
            other => panic!("plaintext event {other:?} in an encrypted response"),
        }
    }
    opener.finish().expect("final chunk received");
    let inside = inner
        .iter()
        .find(|e| e.name.as_deref() == Some(EVENT_RECEIPT))
        .expect("receipt inside the final chunk");
    assert_eq!(Some(&inside.data), plain_receipt.as_ref());
    let receipt = base64::engine::general_purpose::STANDARD
        .decode(&inside.data)
        .unwrap();
    let r = Receipt::verify(&receipt, &keys.public().receipt_key).expect("receipt verifies");
    let count = opener.count();
    (inner, r, count)
}

/// A sealed request stopped mid-stream (`POST /cocoon/v1/cancel`) ends with a final chunk and
/// a receipt over the work done so far, finish reason `cancelled`: what a proxy can bill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sealed_request_gets_a_receipt_for_its_work_so_far() {
    use http_body_util::BodyExt;
    let (mut h, keys) = slow_harness().await;
    let mut conn = h.next_conn().await;
    let b = binding(&keys, "req-e2e-stop", NOW);
    let sealed = seal(&keys, &b, 3);
    let resp = send(&mut conn, request(&b, sealed.envelope.clone())).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while bytes
        .windows(EVENT_E2E.len())
        .filter(|w| *w == EVENT_E2E.as_bytes())
        .count()
        < 3
    {
        let f = body.frame().await.expect("stream open").expect("frame");
        if let Ok(d) = f.into_data() {
            bytes.extend_from_slice(&d);
        }
    }
    let stop = http::Request::post(format!("http://worker{}", protocol::paths::CANCEL))
        .header(protocol::meta::H_REQUEST_ID, "req-e2e-stop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&mut conn, stop).await.status(), 200);
    let rest = body.collect().await.expect("body").to_bytes();
    bytes.extend_from_slice(&rest);
    let (usage, r, count) = open_response(&bytes, &sealed, &keys);
    assert_eq!(r.usage, usage);
    assert_eq!(r.finish_reason, "cancelled");
    assert_eq!(r.request_id, "req-e2e-stop");
    assert_eq!(r.request_hash, sealed.request_hash);
    assert_eq!(usage.prompt_tokens, 3);
    assert!((1..64).contains(&usage.completion_tokens), "{usage:?}");
    assert_eq!(u64::from(r.chunks) + 1, count);
    let s = h.service.stats().snapshot();
    assert_eq!((s.stopped, s.unbilled_completion_tokens), (1, 0));
}

/// A sealed stream still running at the worker's drain deadline ends with the work done so
/// far inside (usage, then the error event, no `[DONE]`) and a receipt over it, finish reason
/// `shutdown`: its proxy bills it, its client sees why it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_stream_ended_at_the_drain_deadline_gets_a_receipt_for_its_work() {
    use http_body_util::BodyExt;
    let (mut h, keys) = slow_harness().await;
    let mut conn = h.next_conn().await;
    let b = binding(&keys, "req-e2e-end", NOW);
    let sealed = seal(&keys, &b, 3);
    let resp = send(&mut conn, request(&b, sealed.envelope.clone())).await;
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(async move { resp.into_body().collect().await.unwrap().to_bytes() });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.service.end_streams();
    let bytes = reader.await.unwrap();
    let (inner, r, count) = open_events(&bytes, &sealed, &keys);
    assert!(!inner.iter().any(Event::is_done));
    let usage = usage_inside(&inner);
    let error = inner
        .iter()
        .position(|e| e.name.as_deref() == Some(protocol::sse::EVENT_ERROR))
        .expect("error event inside");
    let usage_at = inner
        .iter()
        .position(|e| e.name.as_deref() == Some(EVENT_USAGE))
        .unwrap();
    assert!(usage_at < error);
    assert_eq!(r.usage, usage);
    assert_eq!(r.finish_reason, "shutdown");
    assert_eq!(r.request_id, "req-e2e-end");
    assert_eq!(usage.prompt_tokens, 3);
    assert!((1..64).contains(&usage.completion_tokens), "{usage:?}");
    assert_eq!(u64::from(r.chunks) + 1, count);
    let s = h.service.stats().snapshot();
    assert_eq!(
        (s.unbilled_prompt_tokens, s.unbilled_completion_tokens),
        (0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_bytes_and_headers_get_one_generic_400_and_no_engine_call() {
    let (mut h, keys) = harness().await;
    let mut conn = h.next_conn().await;
    let b = binding(&keys, "req-e2e-2", NOW);
    let sealed = seal(&keys, &b, 2);
    let mut cases: Vec<(String, Request<Full<Bytes>>)> = Vec::new();
    for i in [
        2usize,
        10,
        2 + 8 + 5,
        2 + 88 - 1,
        2 + 88 + 3,
        sealed.envelope.len() - 1,
    ] {
        let mut e = sealed.envelope.clone();
        e[i] ^= 1;
        cases.push((format!("byte {i}"), request(&b, e)));
    }
    type Edit = (&'static str, fn(&mut Binding));
    let edits: [Edit; 4] = [
        ("max tokens", |b| b.max_tokens = 65),
        ("request id", |b| b.request_id = "req-other".into()),
        ("time", |b| b.time += 1),
        ("price cap", |b| b.price_cap = Some(5)),
    ];
    for (what, edit) in edits {
        let mut e = b.clone();
        edit(&mut e);
        cases.push((what.to_string(), request(&e, sealed.envelope.clone())));
    }
    for (what, req) in cases {
        let (status, err) = error_of(send(&mut conn, req).await).await;
        assert_eq!(status, 400, "{what}");
        assert_eq!(err.message, DECRYPT_FAILED, "{what}");
    }
    let s = h.service.stats().snapshot();
    assert_eq!(s.completed, 0);
    assert_eq!(s.active_generations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_stale_seal_times_are_refused() {
    let (mut h, keys) = harness().await;
    let mut conn = h.next_conn().await;
    let b = binding(&keys, "req-e2e-3", NOW);
    let sealed = seal(&keys, &b, 3);
    let first = send(&mut conn, request(&b, sealed.envelope.clone())).await;
    assert_eq!(first.status(), 200);
    let _ = events(first).await;
    let (status, err) = error_of(send(&mut conn, request(&b, sealed.envelope.clone())).await).await;
    assert_eq!(status, 400);
    assert!(err.message.contains("replayed"), "{}", err.message);

    let old = binding(&keys, "req-e2e-4", NOW - e2e::MAX_SKEW_SECS - 1);
    let sealed = seal(&keys, &old, 4);
    let (status, err) = error_of(send(&mut conn, request(&old, sealed.envelope)).await).await;
    assert_eq!(status, 400);
    assert!(err.message.contains("apart"), "{}", err.message);
    assert_eq!(h.service.stats().snapshot().completed, 1);
}
