//! Relay benchmark (prints figures; not a timed assert).
//!
//! 1. Added latency: sequential requests (8-token streams, stub worker at max rate), timed
//!    from sending the request to the end of the stream, client → proxy → worker versus
//!    client → worker direct. Both worker hops are RA-TLS + HTTP/2; the client hop is TLS 1.3
//!    with an account certificate.
//! 2. Relay throughput: many concurrent streams through the proxy from a stub worker at max
//!    rate; tokens relayed per second of proxy CPU time. The proxy runs on its own tokio
//!    runtime whose threads are named `proxy-rt`; their CPU time is read from
//!    `/proc/self/task/<tid>/schedstat` (or `stat`), so client and worker work is excluded.
//!
//! Run: `cargo bench -p cocoon-proxy --bench relay` (release profile).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::meta::H_MAX_PROMPT_TOKENS;
use ratls::{server_config, PeerVerifier, RaTlsClientVerifier, Role, SystemClock};

const LATENCY_REQUESTS: usize = 400;
const STREAM_TOKENS: u32 = 8;
const THROUGHPUT_STREAMS: usize = 64;
const THROUGHPUT_TOKENS: u32 = 4000;
const THROUGHPUT_ROUNDS: usize = 3;
const TPUT_MODEL: &str = "stub-throughput";
const PACED_MODEL: &str = "stub-paced";
const PACED_STREAMS: usize = 200;
const PACED_TOKENS: u32 = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time of this process's threads named `name`.
fn threads_cpu(name: &str) -> Duration {
    let mut total = Duration::ZERO;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        if let Some(ns) = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += Duration::from_nanos(ns);
        } else if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
            // utime and stime are fields 14 and 15, in clock ticks (USER_HZ = 100).
            let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<u64> = after
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            if f.len() > 13 {
                total += Duration::from_millis((f[11] + f[12]) * 10);
            }
        }
    }
    total
}

/// A stub worker dialing a bare RA-TLS listener: the bench is its HTTP/2 client directly.
async fn direct_worker(spec: WorkerSpec) -> (FakeWorker, SendRequest<Full<Bytes>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Arc::new(
        PeerVerifier::new(worker_policy(), Arc::new(SystemClock)).with_roles([Role::Worker]),
    );
    let resolver = resolver(proxy_regs(), Role::Proxy, now());
    let cfg = server_config(
        resolver,
        Some(Arc::new(RaTlsClientVerifier::new(verifier))),
        &[b"h2"],
    )
    .unwrap();
    let worker = FakeWorker::connect(addr, spec).await;
    let (tcp, _) = listener.accept().await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        .accept(tcp)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    (worker, send)
}

async fn drain(body: hyper::body::Incoming) -> usize {
    let mut body = body;
    let mut n = 0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
        }
    }
    n
}

fn bench_spec(tokens: u32) -> WorkerSpec {
    let mut s = WorkerSpec::new("bench");
    s.tokens = tokens;
    s.interval = Duration::ZERO;
    s.capacity = 1024;
    s
}

async fn latency(proxy: &TestProxy) -> (Vec<Duration>, Vec<Duration>) {
    // Direct.
    let (_w, mut direct) = direct_worker(bench_spec(STREAM_TOKENS)).await;
    let mut direct_times = Vec::new();
    for i in 0..LATENCY_REQUESTS + 20 {
        let mut req = chat(MODEL, 64, None, BODY);
        *req.uri_mut() = "https://cocoon-worker/v1/chat/completions".parse().unwrap();
        req.headers_mut()
            .insert(H_MAX_PROMPT_TOKENS, http::HeaderValue::from(4096u32));
        let t = Instant::now();
        direct.ready().await.unwrap();
        let resp = direct.send_request(req).await.unwrap();
        drain(resp.into_body()).await;
        if i >= 20 {
            direct_times.push(t.elapsed());
        }
    }
    // Through the proxy.
    let _pw = FakeWorker::connect(proxy.running.worker_addr, bench_spec(STREAM_TOKENS)).await;
    proxy.wait_workers(1).await;
    let mut c = client(proxy.running.client_addr, 1).await;
    let mut proxied = Vec::new();
    for i in 0..LATENCY_REQUESTS + 20 {
        let req: Request<Full<Bytes>> = chat(MODEL, 64, None, BODY);
        let t = Instant::now();
        let resp = c.send(req).await;
        drain(resp.into_body()).await;
        if i >= 20 {
            proxied.push(t.elapsed());
        }
    }
    direct_times.sort();
    proxied.sort();
    (direct_times, proxied)
}

/// `rounds` x `streams` concurrent streams of `tokens` tokens from a stub emitting one token
/// every `interval` per stream (zero: max rate). Returns (tokens, wall, proxy cpu).
async fn throughput(
    proxy: &TestProxy,
    model: &str,
    rounds: usize,
    streams: usize,
    tokens: u32,
    interval: Duration,
) -> (u64, Duration, Duration) {
    let mut spec = bench_spec(tokens);
    spec.model = model.into();
    spec.interval = interval;
    let _w = FakeWorker::connect(proxy.running.worker_addr, spec).await;
    while !proxy.running.state().registry.serves(model) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut clients = Vec::new();
    for seed in 0..8u8 {
        clients.push(client(proxy.running.client_addr, 10 + seed).await);
    }
    let cpu0 = threads_cpu("proxy-rt");
    let t0 = Instant::now();
    let mut relayed = 0u64;
    for _ in 0..rounds {
        let mut tasks = Vec::new();
        for i in 0..streams {
            let mut c = clients[i % clients.len()].stream_handle().unwrap();
            let model = model.to_string();
            tasks.push(tokio::spawn(async move {
                let resp = c.send(chat(&model, tokens, None, BODY)).await;
                let status = resp.status();
                let evs = events(resp.into_body()).await;
                if let Some((_, e)) = error_of(&evs) {
                    eprintln!("stream error: {e}");
                }
                if !status.is_success() {
                    eprintln!("status {status}");
                }
                usage_of(&evs).map_or(0, |u| u.completion_tokens)
            }));
        }
        for t in tasks {
            relayed += t.await.unwrap();
        }
    }
    (relayed, t0.elapsed(), threads_cpu("proxy-rt") - cpu0)
}

fn main() {
    ratls::logging::init_tracing("warn");
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("proxy-rt")
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-rt")
        .enable_all()
        .build()
        .unwrap();
    let proxy = proxy_rt
        .block_on(async { tokio::spawn(start_proxy(|_| {})).await })
        .unwrap();
    // Warm up the proxy runtime's CPU accounting baseline (certificate checks etc.).
    let (direct, proxied) = rt.block_on(latency(&proxy));
    let (tokens, wall, cpu) = rt.block_on(throughput(
        &proxy,
        TPUT_MODEL,
        THROUGHPUT_ROUNDS,
        THROUGHPUT_STREAMS,
        THROUGHPUT_TOKENS,
        Duration::ZERO,
    ));
    let paced = rt.block_on(throughput(
        &proxy,
        PACED_MODEL,
        1,
        PACED_STREAMS,
        PACED_TOKENS,
        Duration::from_millis(1),
    ));

    println!(
        "cocoon-proxy relay benchmark ({} cpus)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "latency, {LATENCY_REQUESTS} sequential requests of {STREAM_TOKENS}-token streams (request sent -> stream end):"
    );
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (p50, p99) = (percentile(&proxied, 0.5), percentile(&proxied, 0.99));
    println!(
        "  direct  client->worker        p50 {:7.3} ms  p99 {:7.3} ms",
        ms(d50),
        ms(d99)
    );
    println!(
        "  proxied client->proxy->worker p50 {:7.3} ms  p99 {:7.3} ms",
        ms(p50),
        ms(p99)
    );
    println!(
        "  added by the proxy            p50 {:7.3} ms  p99 {:7.3} ms",
        ms(p50.saturating_sub(d50)),
        ms(p99.saturating_sub(d99))
    );
    println!(
        "throughput, {THROUGHPUT_ROUNDS} x {THROUGHPUT_STREAMS} concurrent streams of {THROUGHPUT_TOKENS} tokens (stub at max rate):"
    );
    println!(
        "  relayed {tokens} tokens in {:.3} s wall = {:.0} tok/s; proxy cpu {:.3} s = {:.0} tok/s per proxy core",
        wall.as_secs_f64(),
        tokens as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        tokens as f64 / cpu.as_secs_f64().max(1e-9)
    );
    let (ptokens, pwall, pcpu) = paced;
    println!(
        "paced, {PACED_STREAMS} concurrent streams of {PACED_TOKENS} tokens at 1000 tok/s each (one token per frame):"
    );
    println!(
        "  relayed {ptokens} tokens in {:.3} s wall = {:.0} tok/s; proxy cpu {:.3} s = {:.0} tok/s per proxy core",
        pwall.as_secs_f64(),
        ptokens as f64 / pwall.as_secs_f64(),
        pcpu.as_secs_f64(),
        ptokens as f64 / pcpu.as_secs_f64().max(1e-9)
    );
    drop(proxy);
}
