//! Limits of the client port: the funds check before the body, the header, idle and body
//! deadlines, connection caps, the HTTP/2 stream cap and the body budget. Each refusal is
//! counted by reason in /jsonstats and /metrics.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::slow::*;
use common::*;
use http::StatusCode;
use proxy::Ledger;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const PROMPT: Duration = Duration::from_secs(5);

fn refusals(p: &TestProxy, reason: &str) -> u64 {
    p.stats()["client_refusals"][reason].as_u64().unwrap_or(0)
}

async fn with_worker(p: &TestProxy, spec: WorkerSpec) -> FakeWorker {
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    w
}

/// An unknown account (HTTP/1.1) and an account with too little money (HTTP/2) each declare
/// a 4 000 000-byte body and send none of it: both get 402 at once, so the proxy decided
/// before reading the body (the old proxy waited for the body and never answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfunded_accounts_are_refused_before_the_body_is_read() {
    let (funded, poor) = (account_of(2), account_of(3));
    let p = start_proxy(|c| {
        c.accounts.default_balance_nano = None;
        c.accounts.balances = [(funded.clone(), 1_000_000_000_000), (poor.clone(), 1)].into();
    })
    .await;
    let w = with_worker(&p, WorkerSpec::new("w")).await;
    let addr = p.running.client_addr;

    let mut tls = h1_raw(addr, 1).await;
    h1_send(&mut tls, 4_000_000, b"").await.unwrap();
    let started = Instant::now();
    let head = h1_read_head(&mut tls, PROMPT)
        .await
        .expect("an answer although no body byte was sent");
    assert_eq!(head.status, 402);
    println!("unknown account: 402 after {:?}", started.elapsed());

    let mut h2 = h2_streaming(addr, 3).await;
    let (req, _body_never_sent) = streaming_chat(Some(4_000_000));
    h2.ready().await.unwrap();
    let resp = tokio::time::timeout(PROMPT, h2.send_request(req))
        .await
        .expect("an answer although no body byte was sent")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let j = json_body(resp).await;
    assert_eq!(error_kind(&j), "insufficient_funds");
    assert!(j["error"]["message"].as_str().unwrap().contains(&poor));

    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 0);
    assert_eq!(refusals(&p, "insufficient_funds"), 2);
    let s = p.stats();
    assert_eq!(s["request_body_bytes"], 0);
    assert_eq!(p.ledger.balance(&poor).unwrap().reserved_nano, 0);
    let (_, metrics) = p.admin("/metrics").await;
    assert!(metrics.contains("cocoon_proxy_client_refusals_total{reason=\"insufficient_funds\"} 2"));

    // A funded account is served as before.
    let mut c = client(addr, 2).await;
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(usage_of(&events(resp.into_body()).await).is_some());
}

/// A funded client that trickles its body gets 408 when the body deadline passes (HTTP/1.1
/// and HTTP/2); the HTTP/1.1 connection is closed, and no reservation, body bytes or worker
/// slot stays held. (The old proxy had no deadline: no answer at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_frees_the_connection_and_the_funds() {
    let p = start_proxy(|c| c.client.body_timeout = Duration::from_secs(1)).await;
    let w = with_worker(&p, WorkerSpec::new("w")).await;
    let addr = p.running.client_addr;
    let account = account_of(1);

    let mut tls = h1_raw(addr, 1).await;
    h1_send(&mut tls, 1000, b"{\"model\":").await.unwrap();
    let started = Instant::now();
    let head = h1_read_head(&mut tls, PROMPT).await.expect("408 in time");
    assert_eq!(head.status, 408);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(closed_within(&mut tls, PROMPT).await, "connection closed");

    let mut h2 = h2_streaming(addr, 1).await;
    let (req, tx) = streaming_chat(None);
    let trickle = tokio::spawn(async move {
        while tx.send(Bytes::from_static(b" ")).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    h2.ready().await.unwrap();
    let resp = tokio::time::timeout(PROMPT, h2.send_request(req))
        .await
        .expect("408 in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    let j = json_body(resp).await;
    assert_eq!(error_kind(&j), "timeout");
    assert!(j["error"]["message"]
        .as_str()
        .unwrap()
        .contains("client_body_timeout_secs"));
    trickle.abort();

    wait_until("everything freed", PROMPT, || {
        let s = p.stats();
        s["requests"]["active"] == 0
            && s["request_body_bytes"] == 0
            && s["client_connections"] == 1 // the HTTP/2 connection, still open
            && s["workers"][0]["in_flight"] == 0
    })
    .await;
    assert_eq!(p.ledger.balance(&account).unwrap().reserved_nano, 0);
    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 0);
    assert_eq!(refusals(&p, "body_timeout"), 2);
    let s = p.stats();
    assert_eq!(s["requests"]["by_status"]["408"], 2);
}

/// An HTTP/1.1 request head that never completes and connections that never send a request
/// are closed at their deadlines and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_at_their_deadlines() {
    let p = start_proxy(|c| {
        c.client.header_timeout = Duration::from_secs(1);
        c.client.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let _w = with_worker(&p, WorkerSpec::new("w")).await;
    let addr = p.running.client_addr;

    let mut partial = h1_raw(addr, 1).await;
    let head = h1_head(10);
    partial.write_all(&head[..head.len() / 2]).await.unwrap();
    partial.flush().await.unwrap();
    // TLS done, nothing sent: HTTP/2 vs HTTP/1.1 is not even known yet.
    let mut silent = h1_raw(addr, 1).await;
    // An HTTP/2 connection that served one request and then stays idle.
    let mut c = client(addr, 1).await;
    assert_eq!(c.get("/v1/models").await.status(), StatusCode::OK);

    let started = Instant::now();
    assert!(closed_within(&mut partial, PROMPT).await);
    assert!(closed_within(&mut silent, PROMPT).await);
    println!("closed after {:?}", started.elapsed());
    wait_until("all closed", PROMPT, || {
        p.stats()["client_connections"] == 0
    })
    .await;
    assert_eq!(refusals(&p, "header_timeout"), 1);
    assert_eq!(refusals(&p, "idle_timeout"), 2);
}

async fn connect_from(ip: [u8; 4], to: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Connections beyond the per-IP and the global cap are closed at accept (the TLS handshake
/// fails) and counted; freeing a slot lets a new connection in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_global_and_per_ip_are_enforced_and_counted() {
    let p = start_proxy(|c| {
        c.client.max_connections = 3;
        c.client.max_connections_per_ip = 2;
    })
    .await;
    let addr = p.running.client_addr;
    let mut a1 = client_on(connect_from([127, 0, 0, 1], addr).await, 1, false)
        .await
        .unwrap();
    let a2 = client_on(connect_from([127, 0, 0, 1], addr).await, 1, false)
        .await
        .unwrap();
    assert!(
        client_on(connect_from([127, 0, 0, 1], addr).await, 1, false)
            .await
            .is_err(),
        "a third connection from 127.0.0.1 is refused"
    );
    let _b1 = client_on(connect_from([127, 0, 0, 2], addr).await, 1, true)
        .await
        .unwrap();
    assert!(
        client_on(connect_from([127, 0, 0, 3], addr).await, 1, false)
            .await
            .is_err(),
        "a fourth connection in total is refused"
    );
    assert_eq!(a1.get("/v1/models").await.status(), StatusCode::OK);

    let (_, metrics) = p.admin("/metrics").await;
    println!(
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("client"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("cocoon_proxy_client_refusals_total{reason=\"connections_per_ip\"} 1"));
    assert!(metrics.contains("cocoon_proxy_client_refusals_total{reason=\"connections_global\"} 1"));
    assert!(metrics.contains("cocoon_proxy_client_connections 3"));
    assert_eq!(p.stats()["client_refusals"]["connections_per_ip"], 1);

    drop(a2);
    wait_until("slot freed", PROMPT, || {
        p.stats()["client_connections"] == 2
    })
    .await;
    let mut again = client_on(connect_from([127, 0, 0, 1], addr).await, 1, false)
        .await
        .unwrap();
    assert_eq!(again.get("/v1/models").await.status(), StatusCode::OK);
}

/// One HTTP/2 connection gets at most 32 (the default) concurrent streams: of 40 requests to
/// a worker that never answers, 32 reach the proxy and the worker (the old default was 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_per_connection_are_capped() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("hang");
    spec.behavior = Behavior::Hang;
    spec.capacity = 64;
    let w = with_worker(&p, spec).await;
    let c = client(p.running.client_addr, 1).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mut c = c.stream_handle().unwrap();
        tasks.push(tokio::spawn(async move {
            c.send(chat(MODEL, 16, None, BODY)).await;
        }));
    }
    wait_until("32 requests at the worker", PROMPT, || {
        w.obs.requests.load(Ordering::SeqCst) >= 32
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 32);
    assert_eq!(p.stats()["requests"]["active"], 32);
    for t in tasks {
        t.abort();
    }
}

/// Bodies in memory are bounded across all requests: with a 4 MiB budget and 3 MiB held by
/// one upload, a request declaring 2 MiB, and one streaming 2 MiB without a length, get 503
/// with Retry-After; once the first upload ends the budget is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_budget_refuses_with_503_and_retry_after() {
    let p = start_proxy(|c| c.client.body_budget_bytes = 4 << 20).await;
    let _w = with_worker(&p, WorkerSpec::new("w")).await;
    let addr = p.running.client_addr;

    let mut h2a = h2_streaming(addr, 1).await;
    let (req_a, tx_a) = streaming_chat(Some(3 << 20));
    h2a.ready().await.unwrap();
    let resp_a = tokio::spawn(h2a.send_request(req_a));
    tx_a.send(Bytes::from(vec![b' '; 1 << 20])).await.unwrap();
    wait_until("the first upload under way", PROMPT, || {
        p.stats()["request_body_bytes"].as_u64().unwrap_or(0) >= 1 << 20
    })
    .await;

    let mut b = client(addr, 2).await;
    let resp = b.send(chat(MODEL, 16, None, &vec![b' '; 2 << 20])).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_kind(&json_body(resp).await), "no_capacity");

    let mut h2c = h2_streaming(addr, 3).await;
    let (req_c, tx_c) = streaming_chat(None);
    let feed = tokio::spawn(async move {
        for _ in 0..32 {
            if tx_c.send(Bytes::from(vec![b' '; 64 << 10])).await.is_err() {
                break;
            }
        }
        // Keep the body open: the proxy must answer on the bytes so far.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    h2c.ready().await.unwrap();
    let resp = tokio::time::timeout(PROMPT, h2c.send_request(req_c))
        .await
        .expect("503 in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    feed.abort();
    assert_eq!(refusals(&p, "body_budget"), 2);

    tx_a.send(Bytes::from(vec![b' '; 2 << 20])).await.unwrap();
    drop(tx_a);
    let resp = resp_a.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(usage_of(&events(resp.into_body()).await).is_some());
    wait_until("budget free", PROMPT, || {
        p.stats()["request_body_bytes"] == 0
    })
    .await;

    let resp = b.send(chat(MODEL, 16, None, &vec![b' '; 2 << 20])).await;
    assert_eq!(resp.status(), StatusCode::OK, "the retry is served");
    let (_, metrics) = p.admin("/metrics").await;
    assert!(metrics.contains("cocoon_proxy_client_refusals_total{reason=\"body_budget\"} 2"));
    assert!(metrics.contains("cocoon_proxy_request_body_bytes 0"));
}
