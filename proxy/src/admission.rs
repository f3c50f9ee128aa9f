//! Admission of a client request before it reaches a worker: the funds check before any body
//! byte is read, then the bounded body read (size, deadline, global body budget), then a
//! worker slot — at once, or through the model's queue (`acquire`; the queue and its rules
//! are in [`crate::queue`]). The limits themselves and their refusal codes are in
//! [`crate::limits`].

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use protocol::{ApiError, ErrorKind, RequestMeta};
use tokio::sync::oneshot;

use crate::config::ProxyConfig;
use crate::funds::{affordable, ledger_refusal, reservation_at, Held};
use crate::limits::{count, BodyCharge, ClientRefusal, Rejection, BODY_BUDGET_RETRY_AFTER_SECS};
use crate::queue::{serve, Demand, Grant, Outcomes, Placed, Release, Waiter};
use crate::registry::{rank, Saturated, Worker};
use crate::state::State;

/// Checks, before any body byte is read, that `account` can pay for the request at the
/// cheapest worker serving `meta.model` (within the price cap), and holds that amount while
/// the body uploads. Unknown accounts are refused as the relay refuses them (402), unless
/// the ledger creates accounts on first use (development).
pub(crate) fn admit(
    state: &Arc<State>,
    account: &str,
    meta: &RequestMeta,
) -> Result<Held, Rejection> {
    let candidates = state.registry.candidates(&meta.model, &[]);
    let affordable = affordable(&state.config, meta, candidates)?;
    let cheapest = affordable
        .iter()
        .map(|w| reservation_at(&state.config, meta, w).1)
        .min()
        .unwrap_or(0);
    match state.ledger.reserve(account, cheapest) {
        Ok(r) => Ok(Held::new(state.clone(), r)),
        Err(e) => {
            let err = ledger_refusal(e);
            if err.kind == ErrorKind::InsufficientFunds {
                count(
                    &state.stats,
                    ClientRefusal::InsufficientFunds,
                    None,
                    &err.message,
                );
            }
            Err(err.into())
        }
    }
}

/// Reads the request body: at most `limit` bytes (`max_body_bytes`, or the envelope of a body
/// that size), within `client_body_timeout_secs`,
/// charged to the body budget (the charge lives as long as the returned guard).
pub(crate) async fn read_body(
    state: &State,
    req: Request<Incoming>,
    limit: usize,
) -> Result<(Bytes, BodyCharge), Rejection> {
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body larger than {limit} bytes"),
        )
    };
    let budget = &state.limits.body_budget;
    let over_budget = || {
        count(
            &state.stats,
            ClientRefusal::BodyBudget,
            None,
            "body budget exhausted",
        );
        Rejection {
            error: ApiError::new(
                ErrorKind::NoCapacity,
                format!(
                    "request bodies in memory would exceed client_body_budget_bytes ({} bytes); retry later",
                    state.config.client.body_budget_bytes
                ),
            ),
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
            retry_after_secs: Some(BODY_BUDGET_RETRY_AFTER_SECS),
        }
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large().into());
    }
    let declared = declared.unwrap_or(0);
    let mut charge = budget.charge(declared).ok_or_else(over_budget)?;
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                Rejection::from(ApiError::new(
                    ErrorKind::InvalidRequest,
                    "request body: connection failed while reading",
                ))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let total = buf.len() + data.len();
            if total > limit {
                return Err(too_large().into());
            }
            if !charge.grow_to(total as u64) {
                return Err(over_budget());
            }
            if buf.is_empty() {
                // usize: declared ≤ limit.
                buf.reserve(usize::try_from(declared).unwrap_or(0).max(data.len()));
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    let timeout = state.config.client.body_timeout;
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok((buf.freeze(), charge)),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let message = format!(
                "request body: {} of {} bytes received within client_body_timeout_secs ({}s)",
                buf.len(),
                if declared > 0 {
                    declared.to_string()
                } else {
                    "?".into()
                },
                timeout.as_secs()
            );
            count(&state.stats, ClientRefusal::BodyTimeout, None, &message);
            Err(Rejection {
                error: ApiError::new(ErrorKind::Timeout, message),
                status: Some(StatusCode::REQUEST_TIMEOUT),
                retry_after_secs: None,
            })
        }
    }
}

/// The tokens a request holds at worker `w`: its prompt estimate plus the completion tokens
/// reserved there, at most the model's context ([`crate::queue`]).
pub fn tokens_at(cfg: &ProxyConfig, demand: &Demand, w: &Worker) -> u64 {
    let (completion, _) = reservation_at(cfg, &demand.meta, w);
    let total = demand.prompt_tokens + u64::from(completion);
    match w.model(&demand.meta.model) {
        Some(m) if m.max_context > 0 => total.min(u64::from(m.max_context)),
        _ => total,
    }
}

impl Release for State {
    fn released(self: Arc<Self>, worker: &Arc<Worker>) {
        for m in &worker.info.models {
            dispatch(&self, &m.name);
        }
    }
}

/// Tries to give `demand` a slot of the best worker with room, except `exclude`.
fn place(state: &Arc<State>, demand: &Demand, exclude: &[u64]) -> Result<Placed, ApiError> {
    let cfg = &state.config;
    let mut candidates = state.registry.candidates(&demand.meta.model, exclude);
    candidates.retain(|w| demand.accepts(w));
    let affordable = affordable(cfg, &demand.meta, candidates)?;
    let mut random = [0u8; 64];
    if affordable.len() > 1 && getrandom::getrandom(&mut random).is_err() {
        tracing::warn!("system randomness unavailable; worker tie-break is deterministic");
    }
    let mut outcome = Placed::NoSlot;
    for w in rank(affordable, &random) {
        match w.try_acquire(tokens_at(cfg, demand, &w)) {
            Ok(slot) => {
                let release: Arc<dyn Release> = state.clone();
                let account = state.queues.in_flight.hold(&demand.account);
                return Ok(Placed::Granted(Grant::new(slot, account, release)));
            }
            Err(Saturated::Tokens) => outcome = Placed::NoRoom,
            Err(Saturated::Requests) => {}
        }
    }
    Ok(outcome)
}

/// Whether any worker serving the demand's model has a free request slot.
fn any_free_slot(state: &State, demand: &Demand) -> bool {
    state
        .registry
        .candidates(&demand.meta.model, &[])
        .iter()
        .any(|w| demand.accepts(w) && w.has_free_slot())
}

/// Serves the queue of `model` (after a slot was freed or a worker came or went).
pub(crate) fn dispatch(state: &Arc<State>, model: &str) {
    let mut dropped = Vec::new();
    {
        let mut models = state.queues.lock();
        if let Some(q) = models.get_mut(model) {
            if !q.is_empty() {
                serve(
                    q,
                    &state.queues.outcomes,
                    &state.queues.in_flight,
                    |d| place(state, d, &[]),
                    |d| any_free_slot(state, d),
                    &mut dropped,
                );
            }
        }
    }
    // Grants whose waiter left in the meantime: freed outside the lock (serving again).
    drop(dropped);
}

/// [`dispatch`] for each of `models`.
pub(crate) fn dispatch_models(state: &Arc<State>, models: &[String]) {
    for m in models {
        dispatch(state, m);
    }
}

/// A place in a queue; leaving (drop) removes it and serves the waiters behind it.
struct Ticket<'a> {
    state: &'a Arc<State>,
    model: &'a str,
    id: u64,
    /// Left because the deadline passed (else: the client went away).
    expired: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let removed = self
            .state
            .queues
            .lock()
            .get_mut(self.model)
            .is_some_and(|q| q.remove(self.id));
        if removed {
            if !self.expired {
                Outcomes::bump(&self.state.queues.outcomes.abandoned);
            }
            // It may have been the barrier.
            dispatch(self.state, self.model);
        }
    }
}

/// A worker slot for `demand`, except at workers in `exclude`: at once if one has room;
/// otherwise, with `wait`, through the model's queue ([`crate::queue`]); without, 429.
pub(crate) async fn acquire(
    state: &Arc<State>,
    demand: &Arc<Demand>,
    exclude: &[u64],
    wait: bool,
) -> Result<Grant, Rejection> {
    let model = demand.meta.model.as_str();
    let limits = &state.config.queue;
    let (rx, id) = {
        let mut dropped = Vec::new();
        let mut models = state.queues.lock();
        // The model's queue, made on its first request (a lookup, not a key copy, after).
        let q = match models.get_mut(model) {
            Some(q) => q,
            None => models.entry(model.to_owned()).or_default(),
        };
        if q.is_empty() || !wait {
            match place(state, demand, exclude)? {
                Placed::Granted(g) => return Ok(g),
                Placed::NoSlot | Placed::NoRoom => {}
            }
        }
        let retry_after = q.retry_after_secs();
        if !wait {
            return Err(ApiError::new(
                ErrorKind::NoCapacity,
                format!("all other workers serving {model} are at capacity"),
            )
            .into());
        }
        if limits.max_per_model == 0 {
            drop(models);
            return Err(no_capacity(state, model, None, retry_after));
        }
        let id = state.queues.next_id();
        let (tx, rx) = oneshot::channel();
        q.push(Waiter {
            id,
            demand: demand.clone(),
            tx,
            overtaken: 0,
            since: std::time::Instant::now(),
        });
        // Behind waiters that do not fit, this one may (the overtaking rule).
        serve(
            q,
            &state.queues.outcomes,
            &state.queues.in_flight,
            |d| place(state, d, &[]),
            |d| any_free_slot(state, d),
            &mut dropped,
        );
        let waiting = q.contains(id);
        if !waiting {
            // Served at once: it did not wait.
            drop(models);
            drop(dropped);
            let mut rx = rx;
            return match rx.try_recv() {
                Ok(Ok(grant)) => Ok(grant),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    Err(ApiError::new(ErrorKind::Internal, "request dropped from the queue").into())
                }
            };
        }
        if q.len() > limits.max_per_model as usize {
            let ahead = q.len() - 1;
            // A less loaded account's request takes the place of the most loaded one's
            // newest (crate::queue, "Order").
            match q.displace_for(id, &state.queues.in_flight) {
                Some(victim) => {
                    Outcomes::bump(&state.queues.outcomes.displaced);
                    let message = format!(
                        "all workers serving {model} are at capacity and its queue is full ({ahead} waiting, queue_max_per_model); this request gave its place to one of an account with fewer requests in flight"
                    );
                    count(&state.stats, ClientRefusal::QueueFull, None, &message);
                    let _ = victim.tx.send(Err(Rejection {
                        error: ApiError::new(ErrorKind::NoCapacity, message),
                        status: None,
                        retry_after_secs: Some(retry_after),
                    }));
                }
                None => {
                    q.remove(id);
                    drop(models);
                    drop(dropped);
                    Outcomes::bump(&state.queues.outcomes.full);
                    return Err(no_capacity(state, model, Some(ahead), retry_after));
                }
            }
        }
        drop(models);
        drop(dropped);
        (rx, id)
    };
    // A dropped future (client gone) drops the ticket and, with it, the place in the queue.
    let mut ticket = Ticket {
        state,
        model,
        id,
        expired: false,
    };
    match tokio::time::timeout(limits.timeout, rx).await {
        Ok(Ok(Ok(grant))) => {
            Outcomes::bump(&state.queues.outcomes.admitted);
            Ok(grant)
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => {
            Err(ApiError::new(ErrorKind::Internal, "request dropped from the queue").into())
        }
        Err(_) => {
            ticket.expired = true;
            drop(ticket);
            Outcomes::bump(&state.queues.outcomes.expired);
            let (queued, retry_after) = state
                .queues
                .lock()
                .get(model)
                .map_or((0, 1), |q| (q.len(), q.retry_after_secs()));
            let message = format!(
                "no worker serving {model} had room within queue_timeout_secs ({}s); {queued} requests still queued",
                limits.timeout.as_secs()
            );
            count(&state.stats, ClientRefusal::QueueTimeout, None, &message);
            Err(Rejection {
                error: ApiError::new(ErrorKind::Unavailable, message),
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                retry_after_secs: Some(retry_after),
            })
        }
    }
}

/// The 429 for a request that found no room; `queued`: the requests waiting ahead of it
/// when the queue was full (`None`: there is no queue).
fn no_capacity(state: &State, model: &str, queued: Option<usize>, retry_after: u32) -> Rejection {
    let message = match queued {
        Some(n) => format!(
            "all workers serving {model} are at capacity and its queue is full ({n} waiting, queue_max_per_model)"
        ),
        None => format!("all workers serving {model} are at capacity"),
    };
    count(&state.stats, ClientRefusal::QueueFull, None, &message);
    Rejection {
        error: ApiError::new(ErrorKind::NoCapacity, message),
        status: None,
        retry_after_secs: Some(retry_after),
    }
}
