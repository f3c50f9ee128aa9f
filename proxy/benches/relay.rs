//! Relay benchmark (prints figures; not a timed assert), with nginx as a same-run baseline.
//!
//! 1. Added latency: sequential requests (8-token streams, upstream at max rate), timed from
//!    sending the request to the end of the stream, client → proxy → upstream versus
//!    client → upstream direct. cocoon: the upstream is the stub worker, both worker hops
//!    RA-TLS + HTTP/2; the client hop is TLS 1.3 + HTTP/2 with an account certificate. nginx:
//!    TLS 1.3 + HTTP/2 from the same client code (nginx presents the proxy's certificate),
//!    TLS 1.3 + HTTP/1.1 keep-alive, unbuffered, to an SSE server streaming the same events
//!    ([`nginx`]); its direct row is HTTP/2 to that server. Also printed: the proxy's CPU time
//!    per proxied request (the steadiest latency figure on a shared machine).
//! 2. Relay throughput: 64 concurrent streams of 4000 tokens from an upstream at max rate;
//!    tokens relayed per second of proxy CPU time. The cocoon proxy runs on its own tokio
//!    runtime with one worker thread, named `proxy-rt`; their CPU time is read from
//!    `/proc/self/task/<tid>/schedstat` (or `stat`), so client and upstream work is excluded.
//!    nginx runs as one process (`master_process off`); its CPU time is read from
//!    `/proc/<pid>/schedstat`. Also printed: the kernel's share of that time, DATA frames the
//!    client received and the proxy's write calls (`syscw`), per 1000 tokens.
//! 3. Paced: 200 streams at 1000 tokens/s each, one token per upstream write; same figures.
//!
//! nginx runs twice: `nginx` speaks HTTP/1.1 to the upstream, `nginx-h2` HTTP/2 (`grpc_pass`),
//! the shape of cocoon's worker hop. With `COCOON_BENCH_BARE=1` a diagnostic row `bare` relays
//! on cocoon's own stacks (hyper's HTTP/2 server, `proxy::link`, rustls) with none of the
//! proxy's logic ([`bare`]): cocoon minus bare is what the proxy's code costs. With
//! `COCOON_BENCH_BARE_SPIN_US=3,6` also rows `bare+3us`, `bare+6us`: the bare relay busy for
//! that long per request before it forwards — a stand-in for request logic, showing what each
//! microsecond of it costs in added latency on the machine (more than one where idle vCPUs
//! halt at once: see docs/performance.md). Each latency row
//! also prints the CPU of the bench's own threads (client and upstream) per request, direct and
//! proxied: an upstream that costs more when reached through a relay adds to that relay's
//! latency.
//!
//! All rounds alternate between the systems (which goes first alternates too), so all see the
//! same minute of a shared machine. Without an nginx binary
//! (`COCOON_BENCH_NGINX`, `/usr/sbin/nginx`, or `nginx` on `PATH`) the bench says so and runs
//! cocoon only.
//!
//! Run: `cargo bench -p cocoon-proxy --bench relay` (release profile; Debian:
//! `apt-get install nginx-light`). `COCOON_BENCH_ROWS=latency` (a comma list of `latency`,
//! `throughput`, `paced`) runs only those rows, e.g. to profile one shape;
//! `COCOON_BENCH_LATENCY_REQUESTS=N` sets the requests per latency round (default 100).

#[path = "support/bare.rs"]
mod bare;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/nginx.rs"]
mod nginx;

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

const LATENCY_ROUNDS: usize = 6;
const LATENCY_PER_ROUND: usize = 100;
const LATENCY_WARMUP: usize = 20;
const STREAM_TOKENS: u32 = 8;
const THROUGHPUT_STREAMS: usize = 64;
const THROUGHPUT_TOKENS: u32 = 4000;
const THROUGHPUT_ROUNDS: usize = 3;
const TPUT_MODEL: &str = "stub-throughput";
const PACED_MODEL: &str = "stub-paced";
const PACED_STREAMS: usize = 200;
const PACED_TOKENS: u32 = 2000;
const PACED_ROUNDS: usize = 2;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `a / b` as "1.23x" ("n/a" when `b` is not positive, e.g. an added p99 below zero).
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// User and system CPU time of the task or process at `/proc/...` `dir` (`stat`, in clock
/// ticks of 10 ms).
fn proc_user_sys(dir: &std::path::Path) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ = 100).
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    match f.get(11..13) {
        Some(&[u, s]) => (Duration::from_millis(u * 10), Duration::from_millis(s * 10)),
        _ => (Duration::ZERO, Duration::ZERO),
    }
}

/// CPU time of the task or process at `/proc/...` `dir`: `schedstat` (ns), else `stat`.
fn proc_cpu(dir: &std::path::Path) -> Duration {
    std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| {
            let (u, s) = proc_user_sys(dir);
            u + s
        })
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
    s.record = false;
    s
}

/// How a latency target is reached: the proxy's client, or a bare HTTP/2 connection.
enum Conn {
    Client(Client),
    Raw(SendRequest<Full<Bytes>>),
}

/// One latency row: a connection and the request it is sent.
struct Target {
    conn: Conn,
    request: fn() -> Request<Full<Bytes>>,
    times: Vec<Duration>,
}

impl Target {
    fn new(conn: Conn, request: fn() -> Request<Full<Bytes>>) -> Self {
        Self {
            conn,
            request,
            times: Vec::new(),
        }
    }

    /// Sends `n` requests one after another; records their times if `record`.
    async fn run(&mut self, n: usize, record: bool) {
        for _ in 0..n {
            let req = (self.request)();
            let t = Instant::now();
            let resp = match &mut self.conn {
                Conn::Client(c) => c.send(req).await,
                Conn::Raw(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await.unwrap()
                }
            };
            drain(resp.into_body()).await;
            if record {
                self.times.push(t.elapsed());
            }
        }
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut t = self.times.clone();
        t.sort();
        t
    }
}

/// A streaming chat request over HTTP/2 (`:authority`, no `host` header: nginx refuses both).
fn h2_chat(model: &str, max_tokens: u32) -> Request<Full<Bytes>> {
    let mut req = chat(model, max_tokens, None, BODY);
    req.headers_mut().remove(http::header::HOST);
    req
}

fn worker_request() -> Request<Full<Bytes>> {
    let mut req = h2_chat(MODEL, 64);
    *req.uri_mut() = "https://cocoon-worker/v1/chat/completions".parse().unwrap();
    req.headers_mut()
        .insert(H_MAX_PROMPT_TOKENS, http::HeaderValue::from(4096u32));
    req
}

fn proxy_request() -> Request<Full<Bytes>> {
    h2_chat(MODEL, 64)
}

/// For the SSE upstream, `max_tokens` is the stream's length.
fn upstream_request() -> Request<Full<Bytes>> {
    h2_chat(MODEL, STREAM_TOKENS)
}

/// One system's latency rows.
struct Latency {
    direct: Target,
    proxied: Target,
}

/// What a proxy used: CPU time (and its system part) and write system calls.
#[derive(Clone, Copy, Debug, Default)]
struct Used {
    cpu: Duration,
    sys: Duration,
    writes: u64,
}

impl std::ops::Sub for Used {
    type Output = Used;
    fn sub(self, o: Used) -> Used {
        Used {
            cpu: self.cpu.saturating_sub(o.cpu),
            sys: self.sys.saturating_sub(o.sys),
            writes: self.writes.saturating_sub(o.writes),
        }
    }
}

impl std::ops::AddAssign for Used {
    fn add_assign(&mut self, o: Used) {
        self.cpu += o.cpu;
        self.sys += o.sys;
        self.writes += o.writes;
    }
}

/// What the task or process at `/proc/...` `dir` used (`syscw` of `io` counts write and
/// writev calls; the reads of the two proxies go through different calls, not all counted).
fn proc_used(dir: &std::path::Path) -> Used {
    let io = std::fs::read_to_string(dir.join("io")).unwrap_or_default();
    let writes = io
        .lines()
        .find_map(|l| l.strip_prefix("syscw:")?.trim().parse().ok())
        .unwrap_or(0);
    Used {
        cpu: proc_cpu(dir),
        sys: proc_user_sys(dir).1,
        writes,
    }
}

/// What the threads of this process named `name` used.
fn threads_used(name: &str) -> Used {
    let mut used = Used::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return used;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            used += proc_used(&p);
        }
    }
    used
}

/// What process `pid` used.
fn process_used(pid: u32) -> Used {
    proc_used(std::path::Path::new(&format!("/proc/{pid}")))
}

/// Totals of a kind of stream round.
#[derive(Debug, Default)]
struct Tally {
    tokens: u64,
    /// DATA frames the client received.
    frames: u64,
    wall: Duration,
    used: Used,
}

impl Tally {
    fn per_core(&self) -> f64 {
        self.tokens as f64 / self.used.cpu.as_secs_f64().max(1e-9)
    }

    fn print(&self, name: &str) {
        let k = self.tokens as f64 / 1000.0;
        println!(
            "  {name:<8} {} tokens in {:.3} s wall = {:.0} tok/s; proxy cpu {:.3} s = {:.0} tok/s per proxy core",
            self.tokens,
            self.wall.as_secs_f64(),
            self.tokens as f64 / self.wall.as_secs_f64().max(1e-9),
            self.used.cpu.as_secs_f64(),
            self.per_core(),
        );
        println!(
            "           {:.0}% of it in the kernel; per 1000 tokens: {:.1} frames to the client, {:.1} write calls",
            100.0 * self.used.sys.as_secs_f64() / self.used.cpu.as_secs_f64().max(1e-9),
            self.frames as f64 / k.max(1e-9),
            self.used.writes as f64 / k.max(1e-9),
        );
    }
}

/// A system under test: cocoon-proxy or nginx.
struct System {
    name: &'static str,
    latency: Latency,
    /// Connections for the stream rounds.
    clients: Vec<Client>,
    used: Box<dyn Fn() -> Used>,
    /// What the proxy used during the recorded proxied latency requests, and how many.
    latency_used: Used,
    latency_requests: usize,
    /// What the bench's own threads (client and upstream) used in the recorded latency rows.
    bench_direct: Used,
    bench_proxied: Used,
    throughput: Tally,
    paced: Tally,
}

impl System {
    fn new(
        name: &'static str,
        latency: Latency,
        clients: Vec<Client>,
        used: Box<dyn Fn() -> Used>,
    ) -> Self {
        Self {
            name,
            latency,
            clients,
            used,
            latency_used: Used::default(),
            latency_requests: 0,
            bench_direct: Used::default(),
            bench_proxied: Used::default(),
            throughput: Tally::default(),
            paced: Tally::default(),
        }
    }
}

/// `streams` concurrent streams of `tokens` tokens of `model` over `clients`, one token per
/// `interval` (zero: max rate). Returns the tokens the usage events report and the DATA frames
/// received.
async fn streams(
    clients: &[Client],
    model: &str,
    streams: usize,
    tokens: u32,
    interval: Duration,
) -> (u64, u64) {
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut c = clients[i % clients.len()].stream_handle().unwrap();
        let model = model.to_string();
        tasks.push(tokio::spawn(async move {
            let mut req = h2_chat(&model, tokens);
            req.headers_mut().insert(
                nginx::H_INTERVAL_US,
                http::HeaderValue::from(interval.as_micros() as u64),
            );
            let resp = c.send(req).await;
            let status = resp.status();
            let mut body = resp.into_body();
            let (mut d, mut frames) = (protocol::sse::Decoder::default(), 0u64);
            let mut evs = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("body frame").into_data() {
                    frames += 1;
                    evs.extend(d.feed(&data).expect("sse").into_iter().map(|e| (t0(), e)));
                }
            }
            if let Some((_, e)) = error_of(&evs) {
                eprintln!("stream error: {e}");
            }
            if !status.is_success() {
                eprintln!("status {status}");
            }
            (usage_of(&evs).map_or(0, |u| u.completion_tokens), frames)
        }));
    }
    let (mut relayed, mut frames) = (0, 0);
    for t in tasks {
        let (r, f) = t.await.unwrap();
        relayed += r;
        frames += f;
    }
    (relayed, frames)
}

/// A fixed instant (the event times of [`error_of`] and [`usage_of`] are not used here).
fn t0() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

impl System {
    /// One latency round: `n` direct then `n` proxied requests; the proxy's CPU is counted
    /// over the proxied ones.
    async fn latency_round(&mut self, n: usize, record: bool) {
        let bench0 = threads_used("bench-rt");
        self.latency.direct.run(n, record).await;
        let bench1 = threads_used("bench-rt");
        let used0 = (self.used)();
        self.latency.proxied.run(n, record).await;
        if record {
            self.latency_used += (self.used)() - used0;
            self.latency_requests += n;
            self.bench_direct += bench1 - bench0;
            self.bench_proxied += threads_used("bench-rt") - bench1;
        }
    }

    /// Proxy CPU time per proxied latency request.
    fn cpu_per_request(&self) -> Duration {
        self.latency_used
            .cpu
            .checked_div(self.latency_requests.max(1) as u32)
            .unwrap_or_default()
    }

    /// One round of `n` streams of `tokens` tokens of `model`, one token per `interval`.
    async fn round(&mut self, paced: bool) {
        let (model, n, tokens, interval) = if paced {
            (
                PACED_MODEL,
                PACED_STREAMS,
                PACED_TOKENS,
                Duration::from_millis(1),
            )
        } else {
            (
                TPUT_MODEL,
                THROUGHPUT_STREAMS,
                THROUGHPUT_TOKENS,
                Duration::ZERO,
            )
        };
        let used0 = (self.used)();
        let t0 = Instant::now();
        let (relayed, frames) = streams(&self.clients, model, n, tokens, interval).await;
        let tally = if paced {
            &mut self.paced
        } else {
            &mut self.throughput
        };
        tally.wall += t0.elapsed();
        tally.used += (self.used)() - used0;
        tally.tokens += relayed;
        tally.frames += frames;
    }

    /// (added p50, added p99).
    fn added(&self) -> (Duration, Duration) {
        let (d, p) = (self.latency.direct.sorted(), self.latency.proxied.sorted());
        (
            percentile(&p, 0.5).saturating_sub(percentile(&d, 0.5)),
            percentile(&p, 0.99).saturating_sub(percentile(&d, 0.99)),
        )
    }

    fn print(&self) {
        let (d, p) = (self.latency.direct.sorted(), self.latency.proxied.sorted());
        let (a50, a99) = self.added();
        println!(
            "  {:<8} direct p50 {:7.3} p99 {:7.3} | proxied p50 {:7.3} p99 {:7.3} | added p50 {:6.3} p99 {:6.3} ms",
            self.name,
            ms(percentile(&d, 0.5)),
            ms(percentile(&d, 0.99)),
            ms(percentile(&p, 0.5)),
            ms(percentile(&p, 0.99)),
            ms(a50),
            ms(a99),
        );
        println!(
            "           proxy cpu per request {:.1} us ({:.0}% in the kernel), {:.1} write calls",
            self.cpu_per_request().as_secs_f64() * 1e6,
            100.0 * self.latency_used.sys.as_secs_f64()
                / self.latency_used.cpu.as_secs_f64().max(1e-9),
            self.latency_used.writes as f64 / self.latency_requests.max(1) as f64,
        );
        let per = |u: Used| u.cpu.as_secs_f64() * 1e6 / self.latency_requests.max(1) as f64;
        println!(
            "           client + upstream cpu per request: direct {:.1} us, proxied {:.1} us",
            per(self.bench_direct),
            per(self.bench_proxied),
        );
    }
}

/// How this machine's idle CPUs wait (it decides the latency rows: an idle vCPU that halts
/// costs a VM exit to wake, on the request's path; see docs/performance.md, session 19).
fn idle_note() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let driver = read("/sys/devices/system/cpu/cpuidle/current_driver");
    let poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns");
    match (driver, poll) {
        (Some(d), Some(ns)) => format!(
            "cpuidle: {d}, guest halt polling {ns} ns{}",
            if ns == "0" {
                " (an idle vCPU halts at once: every cross-CPU wake-up is a VM exit)"
            } else {
                ""
            }
        ),
        (Some(d), None) => format!("cpuidle: {d}"),
        _ => "cpuidle: unknown".into(),
    }
}

/// Waits until the proxy's registry serves `model`.
async fn serves(proxy: &TestProxy, model: &str) {
    while !proxy.running.state().registry.serves(model) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// cocoon: a direct connection to a stub worker, and stub workers behind the proxy.
async fn cocoon(proxy: &TestProxy) -> (System, Vec<FakeWorker>) {
    let (direct_w, direct) = direct_worker(bench_spec(STREAM_TOKENS)).await;
    let mut workers = vec![direct_w];
    workers.push(FakeWorker::connect(proxy.running.worker_addr, bench_spec(STREAM_TOKENS)).await);
    for (model, tokens, interval) in [
        (TPUT_MODEL, THROUGHPUT_TOKENS, Duration::ZERO),
        (PACED_MODEL, PACED_TOKENS, Duration::from_millis(1)),
    ] {
        let mut spec = bench_spec(tokens);
        spec.model = model.into();
        spec.interval = interval;
        workers.push(FakeWorker::connect(proxy.running.worker_addr, spec).await);
    }
    for model in [MODEL, TPUT_MODEL, PACED_MODEL] {
        serves(proxy, model).await;
    }
    let mut clients = Vec::new();
    for seed in 0..8u8 {
        clients.push(client(proxy.running.client_addr, 10 + seed).await);
    }
    let system = System::new(
        "cocoon",
        Latency {
            direct: Target::new(Conn::Raw(direct), worker_request),
            proxied: Target::new(
                Conn::Client(client(proxy.running.client_addr, 1).await),
                proxy_request,
            ),
        },
        clients,
        Box::new(|| threads_used("proxy-rt")),
    );
    (system, workers)
}

/// nginx in front of the SSE upstream, or why not.
async fn nginx(to: nginx::Upstream) -> Result<(System, nginx::Nginx), String> {
    let bin = nginx::binary().ok_or("no nginx binary found")?;
    let upstream = nginx::sse_upstream().await;
    let server = nginx::Nginx::start(&bin, upstream, to).await?;
    let connect = |seed: u8| {
        let addr = server.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            client_on(tcp, seed, false)
                .await
                .map_err(|e| format!("client handshake: {e}"))
        }
    };
    // A probe stream: nginx must relay a whole stream before it is measured.
    let probe = connect(1).await?;
    let (got, _) = streams(
        std::slice::from_ref(&probe),
        TPUT_MODEL,
        1,
        16,
        Duration::ZERO,
    )
    .await;
    if got != 16 {
        return Err(format!("probe stream relayed {got} tokens, expected 16"));
    }
    let mut clients = Vec::new();
    for seed in 0..8u8 {
        clients.push(connect(10 + seed).await?);
    }
    let pid = server.pid();
    let system = System::new(
        match to {
            nginx::Upstream::Http1 => "nginx",
            nginx::Upstream::Http2 => "nginx-h2",
        },
        Latency {
            direct: Target::new(
                Conn::Raw(nginx::upstream_client(upstream).await),
                upstream_request,
            ),
            proxied: Target::new(Conn::Client(probe), upstream_request),
        },
        clients,
        Box::new(move || process_used(pid)),
    );
    Ok((system, server))
}

/// The bare relay ([`bare`]) in front of an SSE upstream of its own.
async fn bare_system(
    name: &'static str,
    relay: &bare::Bare,
    upstream: std::net::SocketAddr,
) -> System {
    let connect = |seed: u8| async move {
        let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        client_on(tcp, seed, false).await.expect("client handshake")
    };
    let mut clients = Vec::new();
    for seed in 0..8u8 {
        clients.push(connect(10 + seed).await);
    }
    let thread = relay.thread.clone();
    System::new(
        name,
        Latency {
            direct: Target::new(
                Conn::Raw(nginx::upstream_client(upstream).await),
                upstream_request,
            ),
            proxied: Target::new(Conn::Client(connect(1).await), upstream_request),
        },
        clients,
        Box::new(move || threads_used(&thread)),
    )
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
    let (cocoon, _workers) = rt.block_on(cocoon(&proxy));
    let mut systems = vec![cocoon];
    let mut nginx_servers = Vec::new();
    let mut notes = Vec::new();
    for to in [nginx::Upstream::Http1, nginx::Upstream::Http2] {
        match rt.block_on(nginx(to)) {
            Ok((system, server)) => {
                notes.push(format!(
                    "{} {} (pid {})",
                    system.name,
                    server.version,
                    server.pid()
                ));
                systems.push(system);
                nginx_servers.push(server);
            }
            Err(e) => notes.push(format!("nginx ({to:?} upstream) not available: {e}")),
        }
    }
    let mut bare_relays = Vec::new();
    if std::env::var("COCOON_BENCH_BARE").is_ok_and(|v| v == "1") {
        // The bare relay, then one per CPU stand-in asked for.
        let spins = std::env::var("COCOON_BENCH_BARE_SPIN_US").unwrap_or_default();
        let spins = std::iter::once(0).chain(
            spins
                .split(',')
                .filter_map(|us| us.trim().parse::<u64>().ok())
                .filter(|&us| us > 0),
        );
        let upstream = rt.block_on(nginx::sse_upstream());
        for us in spins {
            match bare::start(upstream, Duration::from_micros(us)) {
                Ok(relay) => {
                    let name: &'static str = if us == 0 {
                        notes.push("bare (cocoon's stacks without the proxy's logic)".into());
                        "bare"
                    } else {
                        // A few rows of a bench process: leaking their names is fine.
                        Box::leak(format!("bare+{us}us").into_boxed_str())
                    };
                    systems.push(rt.block_on(bare_system(name, &relay, upstream)));
                    bare_relays.push(relay);
                }
                Err(e) => notes.push(format!("bare relay not available: {e}")),
            }
        }
    }
    let nginx_note = notes.join("; ");
    let rows = std::env::var("COCOON_BENCH_ROWS").unwrap_or_default();
    let row = |name: &str| rows.is_empty() || rows.split(',').any(|r| r.trim() == name);
    let (latency, throughput, paced) = (row("latency"), row("throughput"), row("paced"));
    let per_round = std::env::var("COCOON_BENCH_LATENCY_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(LATENCY_PER_ROUND);
    rt.block_on(async {
        for s in systems.iter_mut() {
            s.latency_round(LATENCY_WARMUP, false).await;
        }
        let rounds = LATENCY_ROUNDS.max(THROUGHPUT_ROUNDS).max(PACED_ROUNDS);
        for round in 0..rounds {
            // Alternate which system goes first.
            let mut order: Vec<usize> = (0..systems.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for &i in &order {
                if latency && round < LATENCY_ROUNDS {
                    systems[i].latency_round(per_round, true).await;
                }
                if throughput && round < THROUGHPUT_ROUNDS {
                    systems[i].round(false).await;
                }
                if paced && round < PACED_ROUNDS {
                    systems[i].round(true).await;
                }
            }
        }
    });
    drop(nginx_servers);
    drop(bare_relays);

    println!(
        "relay benchmark ({} cpus); baseline: {nginx_note}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{}", idle_note());
    println!(
        "latency, {LATENCY_ROUNDS} alternating rounds of {per_round} sequential {STREAM_TOKENS}-token streams per row (request sent -> stream end):"
    );
    for s in &systems {
        s.print();
    }
    println!(
        "throughput, {THROUGHPUT_ROUNDS} alternating rounds of {THROUGHPUT_STREAMS} concurrent streams x {THROUGHPUT_TOKENS} tokens (upstream at max rate):"
    );
    for s in &systems {
        s.throughput.print(s.name);
    }
    println!(
        "paced, {PACED_ROUNDS} alternating rounds of {PACED_STREAMS} concurrent streams x {PACED_TOKENS} tokens at 1000 tok/s each (one token per upstream write):"
    );
    for s in &systems {
        s.paced.print(s.name);
    }
    let (c, others) = systems.split_first().expect("cocoon is measured");
    for n in others {
        let (c50, c99) = c.added();
        let (n50, n99) = n.added();
        println!(
            "cocoon / {}: tokens per proxy core {} (paced {}); added latency p50 {}, p99 {}; proxy cpu per request {}",
            n.name,
            ratio(c.throughput.per_core(), n.throughput.per_core()),
            ratio(c.paced.per_core(), n.paced.per_core()),
            ratio(c50.as_secs_f64(), n50.as_secs_f64()),
            ratio(c99.as_secs_f64(), n99.as_secs_f64()),
            ratio(
                c.cpu_per_request().as_secs_f64(),
                n.cpu_per_request().as_secs_f64()
            ),
        );
    }
    drop(proxy);
}
