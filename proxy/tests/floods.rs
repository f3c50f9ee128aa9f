//! HTTP/2 control-frame floods from a client with a valid account (PING, SETTINGS,
//! WINDOW_UPDATE), written as raw frames after the TLS handshake: the proxy answers what it
//! must, stops reading a peer that does not read its answers (so nothing piles up in memory),
//! and keeps serving other clients meanwhile.
//!
//! Measured when this test was written (release build): a non-reading PING flood was stopped
//! after ~0.5 M frames (8.5 MB, what the socket buffers absorb), a SETTINGS one after ~0.9 M;
//! a reading PING flood of 2 M frames and a WINDOW_UPDATE flood of 2 M frames went through in
//! ~0.3 s each; the test process's resident memory grew by under 1 MiB in all; a funded
//! client's request took ~10 ms during each.
//!
//! And the HTTP/2 rapid reset (CVE-2023-44487), as raw frames (streams reset before the proxy
//! took them) and through a client library (streams reset once answered), and the
//! CONTINUATION flood (a header block that never ends).

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::real::{start_real_worker, BODY_STUB};
use common::*;
use http::StatusCode;
use proxy::Ledger as _;
use test_support::h2raw::{self, RawConn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use worker::engine::stub::StubEngine;
use worker::service::ServiceOptions;

const FRAMES: usize = 2_000_000;
/// How long a flood may write before it counts as held back by the proxy.
const WRITE_FOR: Duration = Duration::from_secs(3);

/// One streaming request of account 1 for `model` on `c` (a connection of its own when
/// `None`), read to its usage event; how long it took.
async fn served(p: &TestProxy, c: Option<&mut Client>, model: &str, body: &[u8]) -> Duration {
    let asked = Instant::now();
    let mut own;
    let c = match c {
        Some(c) => c,
        None => {
            own = client(p.running.client_addr, 1).await;
            &mut own
        }
    };
    let resp = c.send(chat(model, 8, None, body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(usage_of(&events(resp.into_body()).await).is_some());
    asked.elapsed()
}

/// A proxy and the real worker service registered with it (stub engine: 64 tokens at 200 per
/// second after 50 ms of prompt processing; capacity 8).
async fn with_stub_worker() -> (TestProxy, worker::RunningWorker) {
    let p = start_proxy(|_| {}).await;
    let worker = start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 64, 200.0).with_prefill_delay(Duration::from_millis(50)),
        ServiceOptions::default(),
    );
    p.wait_workers(1).await;
    (p, worker)
}

/// Waits until `worker` runs no generation and the account of `seed` has nothing reserved;
/// then the worker's counters.
async fn settled(
    p: &TestProxy,
    worker: &worker::RunningWorker,
    seed: u8,
) -> worker::service::StatsSnapshot {
    let stats = worker.service().stats();
    wait_until("the worker idle", Duration::from_secs(20), || {
        stats.snapshot().active_generations == 0
    })
    .await;
    let account = account_of(seed);
    wait_until(
        "the account's reservations released",
        Duration::from_secs(20),
        || {
            p.ledger
                .balance(&account)
                .is_none_or(|b| b.reserved_nano == 0)
        },
    )
    .await;
    stats.snapshot()
}

/// A raw HTTP/2 connection with the account key of `seed`, reading what the proxy sends if
/// `read`.
async fn raw(
    p: &TestProxy,
    seed: u8,
    read: bool,
) -> RawConn<impl AsyncRead + AsyncWrite + Send + 'static> {
    let tcp = TcpStream::connect(p.running.client_addr).await.unwrap();
    let tls = client_tls(tcp, seed, false).await.unwrap();
    RawConn::open(tls, read).await.unwrap()
}

/// Writes `FRAMES` frames of `kind` on a fresh connection (reading the proxy's answers or
/// not); returns whether all of them were written within [`WRITE_FOR`].
async fn flood(p: &TestProxy, kind: u8, payload: &[u8], read: bool) -> bool {
    let mut conn = raw(p, 3, read).await;
    let one = h2raw::frame(kind, payload);
    let written = conn
        .write_units(std::iter::repeat_n(one, FRAMES), WRITE_FOR)
        .await;
    // A funded client meanwhile, the flooding connection still open.
    let waited = served(p, None, MODEL, BODY).await;
    assert!(
        waited < Duration::from_secs(5),
        "kind {kind}: a funded client waited {waited:?}"
    );
    written == FRAMES
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_floods_are_held_back_and_others_served() {
    let p = start_proxy(|_| {}).await;
    let _w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("w")).await;
    p.wait_workers(1).await;
    let before = rss_kib(std::process::id());

    // Not reading the PONGs / SETTINGS acks: the proxy stops reading the connection.
    assert!(
        !flood(&p, h2raw::PING, &[0; 8], false).await,
        "2 M PINGs were all taken from a client that reads no PONG"
    );
    assert!(
        !flood(&p, h2raw::SETTINGS, &[], false).await,
        "2 M SETTINGS were all taken from a client that reads no ack"
    );
    // Reading, or frames that need no answer: taken as fast as they come.
    flood(&p, h2raw::PING, &[0; 8], true).await;
    flood(&p, h2raw::WINDOW_UPDATE, &[0, 0, 0, 1], false).await;

    let grown = rss_kib(std::process::id()).saturating_sub(before);
    assert!(grown < 64 << 10, "memory grew by {grown} KiB");
}

/// What a raw HTTP/2 flood came to.
struct Flooded {
    /// Units written (all of them unless the proxy closed the connection first).
    written: usize,
    /// The error code of a GOAWAY the proxy sent.
    goaway: Option<u32>,
}

/// Writes `units` (each some frames) on a raw connection with the account key of `seed`, as
/// fast as TLS carries them, reading what the proxy sends; stops at the first failed write or
/// after 20 s.
async fn raw_flood(p: &TestProxy, seed: u8, units: impl Iterator<Item = Vec<u8>>) -> Flooded {
    let mut conn = raw(p, seed, true).await;
    let written = conn.write_units(units, Duration::from_secs(20)).await;
    let goaway = conn.goaway().await;
    Flooded { written, goaway }
}

/// The HTTP/2 rapid-reset attack (CVE-2023-44487) by a funded client: 20,000 complete
/// streaming requests, each cancelled (RST_STREAM) in the same write that sent it, as fast as
/// TLS carries them. The proxy's HTTP/2 server closes the connection once more than a few
/// streams were reset before it took them, so the flood does almost no work: few
/// generations reach the worker, every one of them is stopped or completed and billed (none
/// left unbilled at the worker), the account has nothing left reserved, and a funded client
/// on another connection is served meanwhile. Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_short_and_what_ran_is_billed() {
    const STREAMS: u32 = 20_000;
    let (p, worker) = with_stub_worker().await;
    let before = rss_kib(std::process::id());

    let streams = (0..STREAMS).map(|i| {
        let id = 1 + 2 * i;
        let mut frames = h2raw::request_frames(&chat("stub", 64, None, BODY_STUB), BODY_STUB, id);
        frames.extend(h2raw::frame_on(
            h2raw::RST_STREAM,
            0,
            id,
            &h2raw::CANCEL.to_be_bytes(),
        ));
        frames
    });
    let flood = raw_flood(&p, 3, streams).await;

    // A funded client meanwhile.
    let served_in = served(&p, None, "stub", BODY_STUB).await;
    let s = settled(&p, &worker, 3).await;
    let j = p.stats();
    println!(
        "rapid reset: {} of {STREAMS} streams written, GOAWAY code {:?}; \
         worker: {} generations, {} stopped, {} completed; proxy: {} abandoned; \
         another client served in {served_in:?}; rss +{} KiB",
        flood.written,
        flood.goaway,
        s.requests,
        s.stopped,
        s.completed,
        j["requests"]["abandoned"],
        rss_kib(std::process::id()).saturating_sub(before),
    );
    assert_eq!(flood.goaway, Some(h2raw::ENHANCE_YOUR_CALM));
    assert!(
        flood.written < STREAMS as usize,
        "all {STREAMS} streams were taken"
    );
    // The funded client's one, and at most the few the proxy took before it closed.
    assert!(s.requests <= 1 + 20, "{s:?}");
    assert_eq!(s.requests, s.completed + s.stopped, "{s:?}");
    assert_eq!(
        (s.unbilled_prompt_tokens, s.unbilled_completion_tokens),
        (0, 0),
        "{s:?}"
    );
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    let grown = rss_kib(std::process::id()).saturating_sub(before);
    assert!(grown < 64 << 10, "memory grew by {grown} KiB");
}

/// Rapid reset past HTTP/2's guard: an account resets each of its streams as soon as the
/// proxy answered it (taken, admitted, placed or queued), 4 connections × 32 streams at a
/// time, for 3 s, against the real worker service (capacity 8, 50 ms of prompt processing).
/// Another account meanwhile sends one request every 200 ms: each is served (the queue is fair
/// between accounts, the storm's generations are stopped at the worker), and afterwards the
/// worker is idle with nothing left unbilled, nothing is abandoned and the storming account
/// has nothing left reserved. Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_storm_after_admission_is_billed_and_starves_no_one() {
    const RUN: Duration = Duration::from_secs(3);
    let (p, worker) = with_stub_worker().await;
    let end = Instant::now() + RUN;
    // Streams reset after a 200, requests answered otherwise.
    let resets = std::sync::Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut storm = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..4 {
        let c = client(p.running.client_addr, 3).await;
        for _ in 0..32 {
            let mut h = c.stream_handle().unwrap();
            let resets = resets.clone();
            storm.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let Some(resp) = h.try_send(chat("stub", 64, None, BODY_STUB)).await else {
                        return;
                    };
                    // A 429 (the queue full) is an answer, not a reset stream.
                    let counter = if resp.status() == StatusCode::OK {
                        &resets.0
                    } else {
                        &resets.1
                    };
                    drop(resp);
                    counter.fetch_add(1, Relaxed);
                }
            }));
        }
        conns.push(c);
    }
    let mut victim = client(p.running.client_addr, 1).await;
    let mut waits = Vec::new();
    while Instant::now() < end {
        waits.push(served(&p, Some(&mut victim), "stub", BODY_STUB).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in storm {
        t.await.unwrap();
    }

    let s = settled(&p, &worker, 3).await;
    let j = p.stats();
    let abandoned = j["requests"]["abandoned"].as_u64().unwrap();
    waits.sort();
    println!(
        "reset storm: {} streams reset after a 200 in {RUN:?}, {} other answers; worker: {} generations, {} stopped, {} \
         completed; proxy: {} stopped and billed, {abandoned} abandoned, queue {}; the other \
         account's {} requests: median {:?}, slowest {:?}",
        resets.0.load(Relaxed),
        resets.1.load(Relaxed),
        s.requests,
        s.stopped,
        s.completed,
        j["requests"]["stopped"],
        j["queue_outcomes"],
        waits.len(),
        waits[waits.len() / 2],
        waits[waits.len() - 1],
    );
    assert!(resets.0.load(Relaxed) > 128, "the storm ran");
    assert_eq!(
        (s.unbilled_prompt_tokens, s.unbilled_completion_tokens),
        (0, 0),
        "{s:?}"
    );
    assert_eq!(abandoned, 0);
    assert!(waits.len() >= 5, "{waits:?}");
    assert!(
        waits[waits.len() - 1] < Duration::from_secs(2),
        "the other account waited {waits:?}"
    );
}

/// The CONTINUATION flood (the 2024 family of HTTP/2 header-continuation attacks): a request's
/// HEADERS without END_HEADERS, then 1,000,000 empty CONTINUATION frames. The proxy's HTTP/2
/// server gives up on the header block after a handful of them (h2 allows ~1.25 × what the
/// header list limit needs) with GOAWAY `ENHANCE_YOUR_CALM`; memory stays flat and a funded
/// client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_short() {
    const FRAMES: usize = 1_000_000;
    let p = start_proxy(|_| {}).await;
    let _w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("w")).await;
    p.wait_workers(1).await;
    let before = rss_kib(std::process::id());

    let block = h2raw::header_block(&chat(MODEL, 8, None, BODY), "proxy.invalid");
    let head = h2raw::frame_on(h2raw::HEADERS, 0, 1, &block[..block.len() / 2]);
    let units = std::iter::once(head).chain(std::iter::repeat_n(
        h2raw::frame_on(h2raw::CONTINUATION, 0, 1, &[]),
        FRAMES,
    ));
    let flood = raw_flood(&p, 3, units).await;

    let served_in = served(&p, None, MODEL, BODY).await;
    let grown = rss_kib(std::process::id()).saturating_sub(before);
    println!(
        "continuation flood: {} of {} frames written, GOAWAY code {:?}; another client served \
         in {served_in:?}; rss +{grown} KiB",
        flood.written,
        FRAMES + 1,
        flood.goaway
    );
    assert_eq!(flood.goaway, Some(h2raw::ENHANCE_YOUR_CALM));
    assert!(flood.written < FRAMES, "all {FRAMES} frames were taken");
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    assert!(grown < 64 << 10, "memory grew by {grown} KiB");
}
