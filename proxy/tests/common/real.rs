//! The real worker service (`cocoon-worker` with the stub engine) as a test worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ratls::SystemClock;
use worker::dial::{worker_claims, LinkOptions};
use worker::engine::stub::StubEngine;
use worker::service::{ServedModel, ServiceOptions, WorkerInfo};
use worker::{RunningWorker, Worker};

use super::{proxy_policy, sim_tee, worker_regs};

/// A streaming chat request for the stub engine's model `stub`.
pub const BODY_STUB: &[u8] =
    br#"{"model":"stub","messages":[{"role":"user","content":"one two three"}],"stream":true}"#;

/// Starts the real worker service serving `engine` (capacity 8) dialing the proxy's worker
/// port `proxy`, with `options`.
pub fn start_real_worker(
    proxy: SocketAddr,
    engine: StubEngine,
    options: ServiceOptions,
) -> RunningWorker {
    start_paid_worker(proxy, engine, options, None)
}

/// The real worker service streaming up to 100,000 tokens of model `stub` as fast as it can
/// (capacity 8): long enough to fill any window a stalled client leaves.
pub fn start_long_stub_worker(proxy: SocketAddr) -> RunningWorker {
    start_real_worker(
        proxy,
        StubEngine::new("stub", 100_000, 0.0).with_max_context(200_000),
        ServiceOptions::default(),
    )
}

/// Asserts that `worker` stopped `stopped` generations on the proxy's cancel and left no work
/// unbilled.
pub fn assert_stopped_and_billed(worker: &RunningWorker, stopped: u64) {
    let ws = worker.service().stats().snapshot();
    assert_eq!(ws.stopped, stopped, "{ws:?}");
    assert_eq!(
        (ws.unbilled_prompt_tokens, ws.unbilled_completion_tokens),
        (0, 0),
        "{ws:?}"
    );
}

/// [`start_real_worker`] with payouts on (`Some`).
pub fn start_paid_worker(
    proxy: SocketAddr,
    engine: StubEngine,
    options: ServiceOptions,
    payouts: Option<Arc<worker::payout::Payouts>>,
) -> RunningWorker {
    start_worker_with(proxy, engine, options, payouts, LinkOptions::default())
}

/// [`start_paid_worker`] with the dial loop's `links` options (e.g. a fast reconnect).
pub fn start_worker_with(
    proxy: SocketAddr,
    engine: StubEngine,
    options: ServiceOptions,
    payouts: Option<Arc<worker::payout::Payouts>>,
    links: LinkOptions,
) -> RunningWorker {
    let clock = Arc::new(SystemClock);
    let keys = worker::e2e::E2eKeys::generate();
    let claims = keys.claims(worker_claims());
    let keys = Arc::new(keys.with_claims_hash(&claims));
    // Renewals rotate the end-to-end keys, as in the worker binary.
    let identity = Arc::new(
        ratls::Identity::issue(
            sim_tee(worker_regs()),
            claims,
            Duration::from_secs(3600),
            clock.clone(),
        )
        .expect("identity")
        .with_rotation(keys.clone()),
    );
    Worker {
        info: WorkerInfo {
            name: "real-worker".into(),
            capacity: 8,
            price_coefficient_milli: 1000,
        },
        models: ServedModel::all_of(Arc::new(engine)),
        proxies: vec![proxy],
        identity,
        proxy_policy: proxy_policy(),
        clock,
        links,
        options,
        payouts,
        e2e: Some(keys),
    }
    .start()
    .expect("worker starts")
}
