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

use common::process::rss_kib;
use common::real::{start_real_worker, BODY_STUB};
use common::*;
use http::StatusCode;
use proxy::Ledger as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use worker::engine::stub::StubEngine;
use worker::service::ServiceOptions;

const PING: u8 = 6;
const SETTINGS: u8 = 4;
const WINDOW_UPDATE: u8 = 8;
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

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Writes `FRAMES` frames of `kind` on a fresh connection (reading the proxy's answers or
/// not); returns whether all of them were written within [`WRITE_FOR`].
async fn flood(p: &TestProxy, kind: u8, payload: &[u8], read: bool) -> bool {
    let tcp = TcpStream::connect(p.running.client_addr).await.unwrap();
    let tls = client_tls(tcp, 3, false).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(async move {
        if !read {
            return std::future::pending().await;
        }
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let mut chunk = Vec::new();
    for _ in 0..1000 {
        chunk.extend(frame(kind, payload));
    }
    let written = tokio::time::timeout(WRITE_FOR, async {
        w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        w.write_all(&frame(SETTINGS, &[])).await?;
        for _ in 0..FRAMES / 1000 {
            w.write_all(&chunk).await?;
        }
        w.flush().await
    })
    .await;
    // A funded client meanwhile, the flooding connection still open.
    let waited = served(p, None, MODEL, BODY).await;
    assert!(
        waited < Duration::from_secs(5),
        "kind {kind}: a funded client waited {waited:?}"
    );
    reader.abort();
    matches!(written, Ok(Ok(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_floods_are_held_back_and_others_served() {
    let p = start_proxy(|_| {}).await;
    let _w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("w")).await;
    p.wait_workers(1).await;
    let before = rss_kib(std::process::id());

    // Not reading the PONGs / SETTINGS acks: the proxy stops reading the connection.
    assert!(
        !flood(&p, PING, &[0; 8], false).await,
        "2 M PINGs were all taken from a client that reads no PONG"
    );
    assert!(
        !flood(&p, SETTINGS, &[], false).await,
        "2 M SETTINGS were all taken from a client that reads no ack"
    );
    // Reading, or frames that need no answer: taken as fast as they come.
    flood(&p, PING, &[0; 8], true).await;
    flood(&p, WINDOW_UPDATE, &[0, 0, 0, 1], false).await;

    let grown = rss_kib(std::process::id()).saturating_sub(before);
    assert!(grown < 64 << 10, "memory grew by {grown} KiB");
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const GOAWAY: u8 = 7;
/// GOAWAY's ENHANCE_YOUR_CALM code.
const ENHANCE_YOUR_CALM: u32 = 0xb;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// RST_STREAM's CANCEL code.
const CANCEL: u32 = 0x8;

/// A frame of `kind` with `flags` on `stream`.
fn frame_on(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(kind, payload);
    f[4] = flags;
    f[5..9].copy_from_slice(&stream.to_be_bytes());
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1) after `first`'s high bits.
fn hpack_int(out: &mut Vec<u8>, n: u32, first: u8, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut v = v - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// `req`'s header block as HPACK literals without indexing (no table, no Huffman).
fn header_block(req: &http::Request<http_body_util::Full<bytes::Bytes>>) -> Vec<u8> {
    let mut block = Vec::new();
    let path = req.uri().path();
    let mut field = |name: &[u8], value: &[u8]| {
        block.push(0);
        hpack_int(&mut block, 7, 0, name.len());
        block.extend_from_slice(name);
        hpack_int(&mut block, 7, 0, value.len());
        block.extend_from_slice(value);
    };
    field(b":method", req.method().as_str().as_bytes());
    field(b":scheme", b"https");
    field(b":authority", b"proxy.invalid");
    field(b":path", path.as_bytes());
    for (name, value) in req.headers() {
        if name != http::header::HOST {
            field(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    block
}

/// What a raw HTTP/2 flood came to.
struct Flooded {
    /// Units written (all of them unless the proxy closed the connection first).
    written: usize,
    /// The error code of a GOAWAY the proxy sent.
    goaway: Option<u32>,
}

/// Opens an HTTP/2 connection with the account key of `seed` and writes the preface, an empty
/// SETTINGS and then `units` (each some frames) as fast as TLS carries them, reading what the
/// proxy sends; stops at the first failed write or after 20 s.
async fn raw_flood(p: &TestProxy, seed: u8, units: impl Iterator<Item = Vec<u8>>) -> Flooded {
    let tcp = TcpStream::connect(p.running.client_addr).await.unwrap();
    let tls = client_tls(tcp, seed, false).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut goaway = None;
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(20), r.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            // Walk whole frames; keep a partial one.
            let mut at = 0;
            while seen.len() - at >= 9 {
                let len = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
                if seen.len() - at < 9 + len {
                    break;
                }
                if seen[at + 3] == GOAWAY && len >= 8 {
                    let p = &seen[at + 9..at + 17];
                    goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                at += 9 + len;
            }
            seen.drain(..at);
        }
        goaway
    });
    let mut written = 0;
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        w.write_all(&frame(SETTINGS, &[])).await?;
        let (mut chunk, mut in_chunk) = (Vec::new(), 0);
        for unit in units {
            chunk.extend(unit);
            in_chunk += 1;
            if chunk.len() > 32 << 10 {
                w.write_all(&chunk).await?;
                chunk.clear();
                written += std::mem::take(&mut in_chunk);
            }
        }
        w.write_all(&chunk).await?;
        written += in_chunk;
        w.flush().await
    })
    .await;
    let goaway = reader.await.unwrap();
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
        let req = chat("stub", 64, None, BODY_STUB);
        let mut frames = frame_on(HEADERS, END_HEADERS, id, &header_block(&req));
        frames.extend(frame_on(DATA, END_STREAM, id, BODY_STUB));
        frames.extend(frame_on(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
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
    assert_eq!(flood.goaway, Some(ENHANCE_YOUR_CALM));
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
    const CONTINUATION: u8 = 9;
    const FRAMES: usize = 1_000_000;
    let p = start_proxy(|_| {}).await;
    let _w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("w")).await;
    p.wait_workers(1).await;
    let before = rss_kib(std::process::id());

    let block = header_block(&chat(MODEL, 8, None, BODY));
    let head = frame_on(HEADERS, 0, 1, &block[..block.len() / 2]);
    let units = std::iter::once(head)
        .chain(std::iter::repeat_with(|| frame_on(CONTINUATION, 0, 1, &[])).take(FRAMES));
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
    assert_eq!(flood.goaway, Some(ENHANCE_YOUR_CALM));
    assert!(flood.written < FRAMES, "all {FRAMES} frames were taken");
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    assert!(grown < 64 << 10, "memory grew by {grown} KiB");
}
