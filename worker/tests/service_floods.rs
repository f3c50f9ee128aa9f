//! HTTP/2 attacks on the worker's link by a proxy that passed attestation but does not behave
//! (a compromised or buggy proxy: the worker is the HTTP/2 server on the connection it dials).
//! The worker dials two proxies here, an honest one ([`TestProxy`]) and a hostile one
//! ([`RawProxy`]) that writes raw frames: the hostile connection is cut short or held back,
//! the worker's memory stays flat, every generation it started ends, and the honest proxy's
//! requests are served meanwhile. The worker then dials the hostile proxy again (its image is
//! still allowed); what it costs is bounded the same way each time.
//!
//! The same attacks on the proxy's client port are in `proxy/tests/floods.rs`.

mod service_support;

use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use service_support::*;
use test_support::h2raw::{self, RawConn};
use worker::service::StatsSnapshot;

const CHAT: &str = "/v1/chat/completions";

/// A worker of capacity 8 (stub engine: 64 tokens at 200 per second after 50 ms of prompt
/// processing) dialing an honest and a hostile proxy; both connections.
async fn two_proxies() -> (Harness, ProxyConn, ProxyTls) {
    let mut h = Harness::start(Options {
        tokens: 64,
        tokens_per_second: 200.0,
        capacity: 8,
        prefill_delay: Duration::from_millis(50),
        hostile_proxy: true,
        ..Options::default()
    })
    .await;
    let honest = h.next_conn().await;
    let hostile = h.hostile.as_mut().expect("hostile proxy").next_conn().await;
    (h, honest, hostile)
}

/// One streamed chat request of 8 tokens by the honest proxy, read to its end; how long it
/// took.
async fn served(conn: &mut ProxyConn) -> Duration {
    let asked = Instant::now();
    let resp = send(
        conn,
        completion_request(CHAT, MODEL, 8, chat_body(json!({"max_tokens": 8}))),
    )
    .await;
    assert_eq!(resp.status(), 200, "the honest proxy was refused");
    let evs = events(resp).await;
    assert!(
        evs.iter()
            .any(|e| e.name.as_deref() == Some(protocol::sse::EVENT_USAGE)),
        "no usage event"
    );
    asked.elapsed()
}

/// Waits until the worker runs no generation; its counters then.
async fn settled(h: &Harness) -> StatsSnapshot {
    let stats = h.service.stats();
    wait_until("the worker idle", Duration::from_secs(20), || {
        stats.snapshot().active_generations == 0
    })
    .await;
    stats.snapshot()
}

fn grown_kib(before: u64) -> u64 {
    rss_kib(std::process::id()).saturating_sub(before)
}

/// Asserts that this process's memory grew by less than 64 MiB since `before` KiB.
fn assert_memory_flat(before: u64) {
    let grown = grown_kib(before);
    assert!(grown < 64 << 10, "memory grew by {grown} KiB");
}

/// A streamed chat request's header block (no body sent with it).
fn chat_header_block() -> Vec<u8> {
    let req = completion_request(CHAT, MODEL, 8, chat_body(json!({})));
    h2raw::header_block(&req, "worker")
}

/// The HTTP/2 rapid reset (CVE-2023-44487) from a proxy: 20,000 complete generation requests,
/// each reset in the same write that opened it. The worker's HTTP/2 server closes the
/// connection with `ENHANCE_YOUR_CALM` once more than a few streams were reset before it took
/// them, so almost none reach the engine; every generation that started ends; the honest
/// proxy is served meanwhile and after; the worker dials the hostile proxy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_by_a_proxy_is_cut_short_and_the_other_proxy_served() {
    const STREAMS: u32 = 20_000;
    let (mut h, mut honest, hostile) = two_proxies().await;
    let before = rss_kib(std::process::id());

    let body = chat_body(json!({"max_tokens": 64}));
    let req = completion_request(CHAT, MODEL, 64, body.clone());
    let streams = (0..STREAMS).map(move |i| {
        let id = 1 + 2 * i;
        let mut frames = h2raw::request_frames(&req, &body, id);
        frames.extend(h2raw::frame_on(
            h2raw::RST_STREAM,
            0,
            id,
            &h2raw::CANCEL.to_be_bytes(),
        ));
        frames
    });
    let mut conn = RawConn::open(hostile, true).await.unwrap();
    let flood = tokio::spawn(async move {
        let written = conn.write_units(streams, Duration::from_secs(20)).await;
        (written, conn.goaway().await)
    });
    let during = served(&mut honest).await;
    let (written, goaway) = flood.await.unwrap();
    let after = served(&mut honest).await;
    let s = settled(&h).await;
    println!(
        "rapid reset by a proxy: {written} of {STREAMS} streams written, GOAWAY code {goaway:?}; \
         worker: {} generations, {} completed, {} cancelled, {} stopped; honest proxy served \
         in {during:?} during, {after:?} after; rss +{} KiB",
        s.requests,
        s.completed,
        s.cancelled,
        s.stopped,
        grown_kib(before),
    );
    assert_eq!(goaway, Some(h2raw::ENHANCE_YOUR_CALM));
    assert!(
        written < STREAMS as usize,
        "all {STREAMS} streams were taken"
    );
    // The honest proxy's two, and at most the few taken before the connection closed.
    assert!(s.requests <= 2 + 32, "{s:?}");
    assert_eq!(s.active_generations, 0);
    assert!(during < Duration::from_secs(5) && after < Duration::from_secs(5));
    assert_memory_flat(before);
    // Still attested, so the worker dials it again.
    h.hostile.as_mut().unwrap().next_conn().await;
    h.shutdown();
}

/// The CONTINUATION flood from a proxy: a request's HEADERS without END_HEADERS, then a
/// million empty CONTINUATION frames. The worker's HTTP/2 server gives up on the header block
/// after a handful (GOAWAY `ENHANCE_YOUR_CALM`); memory stays flat; the honest proxy is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_by_a_proxy_is_cut_short() {
    const FRAMES: usize = 1_000_000;
    let (h, mut honest, hostile) = two_proxies().await;
    let before = rss_kib(std::process::id());

    let block = chat_header_block();
    let head = h2raw::frame_on(h2raw::HEADERS, 0, 1, &block[..block.len() / 2]);
    let units = std::iter::once(head).chain(std::iter::repeat_n(
        h2raw::frame_on(h2raw::CONTINUATION, 0, 1, &[]),
        FRAMES,
    ));
    let mut conn = RawConn::open(hostile, true).await.unwrap();
    let written = conn.write_units(units, Duration::from_secs(20)).await;
    let goaway = conn.goaway().await;
    let served_in = served(&mut honest).await;
    println!(
        "continuation flood by a proxy: {written} of {} frames written, GOAWAY code \
         {goaway:?}; honest proxy served in {served_in:?}; rss +{} KiB",
        FRAMES + 1,
        grown_kib(before)
    );
    assert_eq!(goaway, Some(h2raw::ENHANCE_YOUR_CALM));
    assert!(written < FRAMES, "all {FRAMES} frames were taken");
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    assert_memory_flat(before);
    assert_eq!(settled(&h).await.requests, 1);
    h.shutdown();
}

/// Control-frame floods from a proxy: 2 M PINGs or SETTINGS whose answers it never reads are
/// held back (the worker stops reading a peer that does not read); 2 M PINGs read, or
/// WINDOW_UPDATEs (no answer), go through. The honest proxy is served during each; memory
/// stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_floods_by_a_proxy_are_held_back() {
    const FRAMES: usize = 2_000_000;
    let (mut h, mut honest, first) = two_proxies().await;
    let before = rss_kib(std::process::id());
    let floods = [
        (h2raw::PING, &[0u8; 8][..], false),
        (h2raw::SETTINGS, &[][..], false),
        (h2raw::PING, &[0u8; 8][..], true),
        (h2raw::WINDOW_UPDATE, &[0, 0, 0, 1][..], false),
    ];
    let mut tls = Some(first);
    for (kind, payload, read) in floods {
        // Each flood on a connection of its own: the one before may have been closed.
        let hostile = match tls.take() {
            Some(t) => t,
            None => h.hostile.as_mut().unwrap().next_conn().await,
        };
        let mut conn = RawConn::open(hostile, read).await.unwrap();
        let one = h2raw::frame(kind, payload);
        let flood = tokio::spawn(async move {
            let written = conn
                .write_units(std::iter::repeat_n(one, FRAMES), Duration::from_secs(3))
                .await;
            (written, conn)
        });
        let waited = served(&mut honest).await;
        let (written, conn) = flood.await.unwrap();
        println!(
            "frame kind {kind} by a proxy (answers read: {read}): {written} of {FRAMES} \
             written; honest proxy served in {waited:?}; rss +{} KiB",
            grown_kib(before)
        );
        assert!(waited < Duration::from_secs(5), "kind {kind}: {waited:?}");
        if !read && kind != h2raw::WINDOW_UPDATE {
            assert!(
                written < FRAMES,
                "kind {kind}: {FRAMES} frames taken from a proxy that reads no answer"
            );
        }
        drop(conn);
    }
    assert_memory_flat(before);
    h.shutdown();
}

/// A proxy that opens streams and never sends their bodies: past the connection's stream
/// limit (2 × capacity + 16) each is refused, and after ~1,000 refusals the worker closes
/// the connection (GOAWAY `ENHANCE_YOUR_CALM`). The open ones held nothing of the engine
/// (a generation starts only once its body is read): none started, and the honest proxy is
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_bodies_past_the_limit_are_refused() {
    const STREAMS: u32 = 10_000;
    let (h, mut honest, hostile) = two_proxies().await;
    let before = rss_kib(std::process::id());

    let block = chat_header_block();
    let streams = (0..STREAMS)
        .map(|i| h2raw::frame_on(h2raw::HEADERS, h2raw::END_HEADERS, 1 + 2 * i, &block));
    let mut conn = RawConn::open(hostile, true).await.unwrap();
    let written = conn.write_units(streams, Duration::from_secs(20)).await;
    let served_in = served(&mut honest).await;
    let goaway = conn.goaway().await;
    let s = settled(&h).await;
    println!(
        "stream flood by a proxy: {written} of {STREAMS} streams opened, GOAWAY code \
         {goaway:?}; worker: {} requests, {} completed, {} rejected; honest proxy served in \
         {served_in:?}; rss +{} KiB",
        s.requests,
        s.completed,
        s.rejected,
        grown_kib(before)
    );
    assert_eq!(goaway, Some(h2raw::ENHANCE_YOUR_CALM));
    // The honest proxy's request is the only generation; an open stream whose body was cut
    // by the close may count as a rejected request.
    assert_eq!(
        (s.completed, s.cancelled, s.stopped, s.failed),
        (1, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.requests, s.completed + s.rejected, "{s:?}");
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    assert_memory_flat(before);
    h.shutdown();
}

/// Rapid reset past HTTP/2's guard: a proxy resets each of its streams as soon as the worker
/// answered it (the generation admitted and its prompt processed), 32 streams at a time (the
/// connection's limit at capacity 8) for 3 s. The honest proxy meanwhile sends one request
/// every 200 ms: each is served about as fast as alone — a slot given back goes to the
/// connection holding the fewest, so the honest request does not wait behind the storm's
/// queued streams — and the storm's generations are stopped as their streams reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_storm_after_admission_starves_no_other_proxy() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    const RUN: Duration = Duration::from_secs(3);
    let (h, mut honest, hostile) = two_proxies().await;
    // The honest proxy's request alone: the fastest of three (the first warms the connection).
    let mut alone = Duration::MAX;
    for _ in 0..3 {
        alone = alone.min(served(&mut honest).await);
    }
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(hostile))
            .await
            .unwrap();
    tokio::spawn(conn);
    let end = Instant::now() + RUN;
    let (reset, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let storm: Vec<_> = (0..32)
        .map(|_| {
            let mut send = send.clone();
            let (reset, refused) = (reset.clone(), refused.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let req = completion_request(CHAT, MODEL, 64, chat_body(json!({})));
                    if send.ready().await.is_err() {
                        return;
                    }
                    let Ok(resp) = send.send_request(req).await else {
                        return;
                    };
                    let counter = if resp.status() == 200 {
                        &reset
                    } else {
                        &refused
                    };
                    counter.fetch_add(1, Relaxed);
                    drop(resp);
                }
            })
        })
        .collect();
    let mut waits = Vec::new();
    while Instant::now() < end {
        waits.push(served(&mut honest).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in storm {
        t.await.unwrap();
    }
    let s = settled(&h).await;
    waits.sort();
    println!(
        "reset storm by a proxy: {} streams reset after a 200 in {RUN:?}, {} other answers; \
         worker: {} requests, {} completed, {} cancelled, {} stopped, {} no capacity; the \
         honest proxy's {} requests: median {:?}, slowest {:?} ({alone:?} alone)",
        reset.load(Relaxed),
        refused.load(Relaxed),
        s.requests,
        s.completed,
        s.cancelled,
        s.stopped,
        s.no_capacity,
        waits.len(),
        waits[waits.len() / 2],
        waits[waits.len() - 1],
    );
    assert!(reset.load(Relaxed) > 64, "the storm ran");
    assert!(waits.len() >= 5, "{waits:?}");
    assert!(
        waits[waits.len() - 1] < worker::service::CAPACITY_WAIT,
        "the honest proxy waited {waits:?}"
    );
    // A slot given back goes to the proxy holding fewer, so the honest one does not queue
    // behind the storm's waiting streams (first come, first served: a median of ~2.8× alone).
    assert!(
        waits[waits.len() / 2] < alone * 2,
        "the honest proxy's median {:?} against {alone:?} alone",
        waits[waits.len() / 2]
    );
    h.shutdown();
}

/// Bytes that are not HTTP/2 after the handshake: the worker drops that connection (after a
/// GOAWAY or a plain close), serves the honest proxy on, and dials the hostile one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_proxy_closes_only_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut h, mut honest, mut hostile) = two_proxies().await;
    hostile.write_all(&[0xff; 4096]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match hostile.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the worker kept a connection that sent garbage"
    );
    served(&mut honest).await;
    h.hostile.as_mut().unwrap().next_conn().await;
    h.shutdown();
}
