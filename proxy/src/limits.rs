//! Limits of the client port: what an unauthenticated, unfunded or slow peer can make the
//! proxy hold. Every value comes from [`crate::config::ClientLimits`] (defaults in
//! [`crate::config`]); docs/threat-model.md lists them.
//!
//! | stage | limit | on excess |
//! |---|---|---|
//! | `accept` | open connections in total and per peer IP ([`ConnLimiter`]) | closed at once |
//! | TLS handshake | `handshake_timeout_secs` | closed |
//! | HTTP/1.1 request head | `client_header_timeout_secs`, `client_max_header_bytes` | closed |
//! | HTTP/2 | `client_h2_max_streams`, windows, `client_max_header_bytes` | flow control / refused stream |
//! | no request in progress | `client_idle_timeout_secs` ([`Activity`]) | closed |
//! | metadata headers parsed | the account must cover the cheapest reservation ([`crate::admission::admit`]) | 402 before any body byte is read |
//! | body upload | `client_body_timeout_secs` for the whole body | 408 |
//! | body upload | bytes buffered across all requests ([`BodyBudget`]) | 503 + `Retry-After` |
//! | worker slot | `queue_max_per_model` requests waiting per model ([`crate::queue`]) | 429 + `Retry-After` |
//! | worker slot | `queue_timeout_secs` in that queue | 503 + `Retry-After` |
//! | shutdown | new requests while draining | 503 |
//! | before the funds check | streams the account abandoned before they were billed ([`Abandons`]: `client_abandon_burst`, one more per `client_abandon_interval_secs`) | 429 `rate_limit_exceeded` + `Retry-After` |
//!
//! Each refusal is counted by [`ClientRefusal::code`] (`/metrics`
//! `cocoon_proxy_client_refusals_total`, `/jsonstats` `client_refusals`) and logged at most
//! once per reason per log-limiter window. Nothing here reads or logs a request body's
//! content.
//!
//! While the body uploads, the request holds a reservation of the cheapest worker's price (so
//! an account cannot upload more bodies at once than it can pay for) but no worker slot; the
//! reservation is released before the worker is picked and the real reservation is made.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use protocol::ApiError;

use crate::config::ClientLimits;
use crate::response::{error_response, ResponseBody};
use crate::stats::Stats;

/// `Retry-After` seconds sent with a 503 for the body budget.
pub const BODY_BUDGET_RETRY_AFTER_SECS: u32 = 1;

/// Why the client port refused a connection or a request (the code is the metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRefusal {
    /// `client_max_connections` reached.
    ConnectionsGlobal,
    /// `client_max_connections_per_ip` reached for the peer's address.
    ConnectionsPerIp,
    /// The TLS handshake failed.
    TlsHandshake,
    /// The TLS handshake did not finish within `handshake_timeout_secs`.
    HandshakeTimeout,
    /// HTTP/1.1 request head not complete within `client_header_timeout_secs`.
    HeaderTimeout,
    /// No request in progress for `client_idle_timeout_secs`.
    IdleTimeout,
    /// The account cannot cover the cheapest reservation (refused before the body).
    InsufficientFunds,
    /// The body did not arrive within `client_body_timeout_secs`.
    BodyTimeout,
    /// Buffering the body would exceed `client_body_budget_bytes`.
    BodyBudget,
    /// No worker had room and the model's queue was full (or off) (429, [`crate::queue`]).
    QueueFull,
    /// No worker had room within `queue_timeout_secs` (503, [`crate::queue`]).
    QueueTimeout,
    /// The proxy is shutting down (503).
    ShuttingDown,
    /// The account abandoned too many streams before they were billed (429, [`Abandons`]).
    AbandonLimit,
}

impl ClientRefusal {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::ConnectionsGlobal => "connections_global",
            Self::ConnectionsPerIp => "connections_per_ip",
            Self::TlsHandshake => "tls_handshake",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::InsufficientFunds => "insufficient_funds",
            Self::BodyTimeout => "body_timeout",
            Self::BodyBudget => "body_budget",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::AbandonLimit => "abandon_limit",
        }
    }

    /// The log limiter's key (distinct from the worker port's keys).
    fn log_key(self) -> &'static str {
        match self {
            Self::ConnectionsGlobal => "client refused: connections_global",
            Self::ConnectionsPerIp => "client refused: connections_per_ip",
            Self::TlsHandshake => "client refused: tls_handshake",
            Self::HandshakeTimeout => "client refused: handshake_timeout",
            Self::HeaderTimeout => "client refused: header_timeout",
            Self::IdleTimeout => "client refused: idle_timeout",
            Self::InsufficientFunds => "client refused: insufficient_funds",
            Self::BodyTimeout => "client refused: body_timeout",
            Self::BodyBudget => "client refused: body_budget",
            Self::QueueFull => "client refused: queue_full",
            Self::QueueTimeout => "client refused: queue_timeout",
            Self::ShuttingDown => "client refused: shutting_down",
            Self::AbandonLimit => "client refused: abandon_limit",
        }
    }
}

/// Counts `refusal` and logs it (rate-limited per reason; never a payload).
pub(crate) fn count(stats: &Stats, refusal: ClientRefusal, peer: Option<SocketAddr>, detail: &str) {
    stats.count_client_refusal(refusal.code());
    if let Some(suppressed) = stats.log_limiter.allow(refusal.log_key(), Instant::now()) {
        tracing::info!(
            peer = ?peer,
            reason = refusal.code(),
            detail,
            suppressed_since_last = suppressed,
            "client refused"
        );
    }
}

/// The shared limit state of the client port.
#[derive(Debug)]
pub struct Limits {
    pub connections: Arc<ConnLimiter>,
    pub body_budget: Arc<BodyBudget>,
    pub abandons: Abandons,
}

impl Limits {
    pub fn new(cfg: &ClientLimits) -> Self {
        Self {
            connections: Arc::new(ConnLimiter::new(
                cfg.max_connections,
                cfg.max_connections_per_ip,
            )),
            body_budget: Arc::new(BodyBudget::new(cfg.body_budget_bytes)),
            abandons: Abandons::new(cfg.abandon_burst, cfg.abandon_interval),
        }
    }
}

/// Most an account can owe [`Abandons`]: this long without requests.
pub const MAX_ABANDON_LOCKOUT: Duration = Duration::from_secs(3600);
/// Accounts tracked before the ones back at a full allowance are forgotten.
const ABANDON_PRUNE_AT: usize = 4096;

/// Streams each account abandoned before they were billed: its client reset the stream (or
/// left during prompt processing, or stopped reading until `client_stall_secs`) before the
/// worker's usage report reached the proxy, so the work it got was not charged (the abort
/// free-ride, docs/threat-model.md). A token bucket per account: `burst` such streams, one
/// more per `interval`; past that, the account's new requests get 429 `rate_limit_exceeded`
/// until the allowance is back to one. Streams abandoned while more of them were in flight
/// at once go into debt (an account can hold only as many streams as its funds reserve),
/// repaid one per interval, at most [`MAX_ABANDON_LOCKOUT`]. Honest clients that cancel now
/// and then (a stop button, a closed page) stay far below the defaults (32, one per 2 s).
/// `burst` 0 turns the limit off. Time is a parameter.
#[derive(Debug)]
pub struct Abandons {
    burst: u32,
    interval: Duration,
    accounts: Mutex<HashMap<String, Bucket>>,
}

/// One account's allowance.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Abandons allowed as of `at` (negative: owed).
    left: f64,
    at: Instant,
}

impl Abandons {
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            accounts: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `b` refilled up to `now`.
    fn refill(&self, b: &mut Bucket, now: Instant) {
        let earned =
            now.saturating_duration_since(b.at).as_secs_f64() / self.interval.as_secs_f64();
        b.left = (b.left + earned).min(f64::from(self.burst));
        b.at = now;
    }

    /// Whether `account` may start a request at `now`; `Err(secs)`: not before `secs` seconds.
    pub fn check(&self, account: &str, now: Instant) -> Result<(), u64> {
        if self.burst == 0 {
            return Ok(());
        }
        let mut accounts = self.lock();
        let Some(b) = accounts.get_mut(account) else {
            return Ok(());
        };
        self.refill(b, now);
        if b.left >= 1.0 {
            return Ok(());
        }
        let wait = (1.0 - b.left) * self.interval.as_secs_f64();
        Err((wait.ceil() as u64).max(1))
    }

    /// Counts one stream `account` abandoned before it was billed, at `now`.
    pub fn record(&self, account: &str, now: Instant) {
        if self.burst == 0 {
            return;
        }
        let mut accounts = self.lock();
        if accounts.len() >= ABANDON_PRUNE_AT && !accounts.contains_key(account) {
            let full = f64::from(self.burst);
            accounts.retain(|_, b| {
                self.refill(b, now);
                b.left < full
            });
        }
        let b = accounts.entry(account.to_string()).or_insert(Bucket {
            left: f64::from(self.burst),
            at: now,
        });
        self.refill(b, now);
        let most_owed = MAX_ABANDON_LOCKOUT.as_secs_f64() / self.interval.as_secs_f64();
        b.left = (b.left - 1.0).max(-most_owed);
    }

    /// Accounts with a reduced allowance now (tracked).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// Counts open client connections, in total and per peer IP address.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: u32,
    max_per_ip: u32,
    /// (open in total, open by address; addresses with none open are removed).
    open: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

impl ConnLimiter {
    pub fn new(max_total: u32, max_per_ip: u32) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, HashMap<IpAddr, u32>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot for `ip`, or says which limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, ClientRefusal> {
        let mut open = self.lock();
        if open.0 >= self.max_total {
            return Err(ClientRefusal::ConnectionsGlobal);
        }
        let per_ip = open.1.entry(ip).or_insert(0);
        if *per_ip >= self.max_per_ip {
            return Err(ClientRefusal::ConnectionsPerIp);
        }
        *per_ip += 1;
        open.0 += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Open client connections.
    pub fn open(&self) -> u32 {
        self.lock().0
    }
}

/// One open client connection; frees its slot on drop.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// The request-body bytes all requests may buffer at once.
#[derive(Debug)]
pub struct BodyBudget {
    limit: u64,
    used: AtomicU64,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Bytes currently charged.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    /// Charges `n` bytes, if they fit.
    pub fn charge(self: &Arc<Self>, n: u64) -> Option<BodyCharge> {
        self.take(n).then(|| BodyCharge {
            budget: self.clone(),
            bytes: n,
        })
    }
}

/// Bytes charged to the [`BodyBudget`] for one request; returned on drop.
#[derive(Debug)]
pub struct BodyCharge {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyCharge {
    /// Grows the charge to `total` bytes; `false` (charge unchanged) if that does not fit.
    pub fn grow_to(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        if self.budget.take(total - self.bytes) {
            self.bytes = total;
            true
        } else {
            false
        }
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Requests in progress on one client connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<(u32, Instant)>,
}

impl Activity {
    pub fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((0, now)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, Instant)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a request in progress until the guard (kept with the response body) drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.lock().0 += 1;
        InFlight {
            activity: self.clone(),
        }
    }

    /// Resolves once the connection has had no request in progress for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let (in_flight, since) = *self.lock();
            let wait = if in_flight == 0 {
                let deadline = since + timeout;
                let now = Instant::now();
                if now >= deadline {
                    return;
                }
                deadline - now
            } else {
                timeout
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A request in progress on a connection (see [`Activity::start`]).
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.activity.lock();
        s.0 = s.0.saturating_sub(1);
        if s.0 == 0 {
            s.1 = Instant::now();
        }
    }
}

/// A response body that keeps its request counted as in progress until it is dropped.
#[derive(Debug)]
pub struct Tracked {
    inner: ResponseBody,
    _in_flight: InFlight,
}

impl Tracked {
    pub fn new(inner: ResponseBody, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A refused request: the error, and the HTTP status and `Retry-After` when they differ from
/// the error kind's own (408 and 503 have no [`ErrorKind`] of their own).
#[derive(Debug)]
pub struct Rejection {
    pub error: ApiError,
    pub status: Option<StatusCode>,
    pub retry_after_secs: Option<u32>,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            status: None,
            retry_after_secs: None,
        }
    }
}

impl Rejection {
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut resp = error_response(&self.error);
        if let Some(status) = self.status {
            *resp.status_mut() = status;
        }
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_global_and_per_ip() {
        let l = Arc::new(ConnLimiter::new(3, 2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert_eq!(
            l.try_acquire(a).unwrap_err(),
            ClientRefusal::ConnectionsPerIp
        );
        let _b1 = l.try_acquire(b).unwrap();
        assert_eq!(
            l.try_acquire(b).unwrap_err(),
            ClientRefusal::ConnectionsGlobal
        );
        drop(a1);
        assert_eq!(l.open(), 2);
        let _b2 = l.try_acquire(b).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn body_budget_charges_and_returns() {
        let b = Arc::new(BodyBudget::new(100));
        let mut c1 = b.charge(60).unwrap();
        assert!(b.charge(41).is_none());
        assert!(c1.grow_to(90));
        assert!(!c1.grow_to(101));
        assert_eq!(b.used(), 90);
        let c2 = b.charge(10).unwrap();
        drop(c1);
        assert_eq!(b.used(), 10);
        drop(c2);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn idle_waits_for_requests_to_end() {
        let a = Activity::new(Instant::now());
        let t = Duration::from_millis(30);
        let guard = a.start();
        let idle = tokio::time::timeout(Duration::from_millis(80), a.idle(t)).await;
        assert!(idle.is_err(), "a request is in progress");
        drop(guard);
        let started = Instant::now();
        a.idle(t).await;
        assert!(started.elapsed() >= t);
    }
}

#[cfg(test)]
mod abandon_tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_one_per_interval() {
        let a = Abandons::new(3, 2 * SEC);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(a.check("x", t0), Ok(()));
            a.record("x", t0);
        }
        assert_eq!(
            a.check("x", t0),
            Err(2),
            "allowance spent: wait one interval"
        );
        assert_eq!(a.check("y", t0), Ok(()), "other accounts are not affected");
        assert_eq!(a.check("x", t0 + SEC), Err(1));
        assert_eq!(a.check("x", t0 + 2 * SEC), Ok(()));
        a.record("x", t0 + 2 * SEC);
        assert_eq!(a.check("x", t0 + 2 * SEC), Err(2));
        // Back to the full burst after 3 intervals, not more.
        let later = t0 + 100 * SEC;
        for _ in 0..3 {
            assert_eq!(a.check("x", later), Ok(()));
            a.record("x", later);
        }
        assert!(a.check("x", later).is_err());
    }

    #[test]
    fn concurrent_abandons_go_into_debt_up_to_the_lockout() {
        let a = Abandons::new(2, SEC);
        let t0 = Instant::now();
        for _ in 0..12 {
            a.record("x", t0);
        }
        // 2 allowed, 10 owed: 11 s until one is allowed again.
        assert_eq!(a.check("x", t0), Err(11));
        assert_eq!(a.check("x", t0 + 11 * SEC), Ok(()));
        for _ in 0..100_000 {
            a.record("z", t0);
        }
        assert_eq!(a.check("z", t0), Err(MAX_ABANDON_LOCKOUT.as_secs() + 1));
    }

    #[test]
    fn zero_burst_is_off_and_full_buckets_are_forgotten() {
        let off = Abandons::new(0, SEC);
        let t0 = Instant::now();
        for _ in 0..10 {
            off.record("x", t0);
        }
        assert_eq!(off.check("x", t0), Ok(()));
        assert_eq!(off.tracked(), 0);

        let a = Abandons::new(1, SEC);
        for i in 0..ABANDON_PRUNE_AT {
            a.record(&format!("acct{i}"), t0);
        }
        assert_eq!(a.tracked(), ABANDON_PRUNE_AT);
        // A second later they are all back to a full allowance: the next new account prunes.
        a.record("new", t0 + SEC);
        assert_eq!(a.tracked(), 1);
        assert!(a.check("new", t0 + SEC).is_err());
    }
}
