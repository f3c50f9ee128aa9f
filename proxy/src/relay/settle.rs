//! Streams whose client left before their usage was billed.
//!
//! Resetting the worker's stream when the client goes (what HTTP/2 does when the relay is
//! dropped) stops the generation but leaves the work it did unbilled: a client that resets
//! every stream just before its end gets the work for free (docs/threat-model.md, the abort
//! free-ride). Instead, the exchange with the worker outlives the client's request:
//!
//! - during prompt processing (no response head yet) the attempt is handed to a task of its
//!   own when the client's request is dropped ([`Detached`]);
//! - once it streams, the relay hands the worker's stream to a task when it is dropped
//!   ([`Leftover`]).
//!
//! Either way the proxy then asks the worker to stop that generation
//! ([`protocol::paths::CANCEL`], naming it by the tag it was sent with, since request ids are
//! the clients' and need not be unique on one worker connection) and reads the stream's end
//! for at most [`SETTLE_LIMIT`]: a worker that stops it sends the usage of the work done (and,
//! encrypted, a receipt over it), which is billed like a completed request. Only a stream
//! that yields no usage in that time is reset and counted as abandoned
//! ([`crate::limits::Abandons`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use protocol::sse::split::Kind;
use protocol::sse::Splitter;
use protocol::{Endpoint, RequestMeta};

use super::deadline::{AtDeadline, Deadline};
use super::{
    abandoned, attempt, Attempt, Billing, Pick, ReceiptCheck, Registered, H_REQUEST_ID,
    H_STREAM_TAG, STOP_AT_CUT, WORKER_AUTHORITY,
};
use crate::ledger::durable::Ticket;
use crate::link::UpBody;
use crate::registry::Worker;
use crate::stall::Watch;
use crate::state::State;
use crate::stats::ActiveGuard;
use protocol::ErrorKind;

/// How long the proxy keeps a worker stream whose client left: time for the worker to stop
/// the generation and send the usage of the work done.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// How long it reads such a stream when the worker stopped nothing (the generation had just
/// ended, or the worker does not know the cancel route): the bytes already on their way.
const SETTLE_GRACE: Duration = Duration::from_millis(250);

/// The longest pause between two cancels of a generation the worker has not started yet.
const MAX_STOP_PAUSE: Duration = Duration::from_millis(500);

/// What a worker answered to a cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// It stopped the generation: its stream ends with the usage so far.
    Stopped,
    /// Nothing runs under that tag there (not yet, or no more; or no cancel route).
    NotRunning,
    /// No answer in time, or the link failed.
    Failed,
}

/// Asks `worker` to stop the generation of `request_id` it was sent with `tag`, waiting for
/// the answer until `deadline`.
async fn stop_at_worker(worker: &Worker, request_id: &str, tag: u64, deadline: Instant) -> Stop {
    let req = Request::post(format!(
        "https://{WORKER_AUTHORITY}{}",
        protocol::paths::CANCEL
    ))
    .header(H_STREAM_TAG, HeaderValue::from(tag))
    .header(H_REQUEST_ID, request_id)
    .body(Bytes::new());
    let Ok(req) = req else {
        return Stop::Failed;
    };
    match tokio::time::timeout_at(deadline.into(), worker.sender().send(req)).await {
        Ok(Ok(resp)) if resp.status() == StatusCode::OK => Stop::Stopped,
        Ok(Ok(resp)) if resp.status() == StatusCode::NOT_FOUND => Stop::NotRunning,
        _ => Stop::Failed,
    }
}

/// Asks the worker of `billing`'s stream to stop its generation, in a task of its own, for at
/// most `within` (the relay reads the stream's end meanwhile: the proxy's drain deadline).
pub(super) fn stop_in_background(billing: &Billing, within: Duration) {
    stop_later(
        billing.pick.worker().clone(),
        billing.request_id.clone(),
        billing.tag,
        within,
    );
}

/// Asks `worker` to stop the generation of `request_id` sent with `tag`, in a task of its own,
/// for at most `within`.
fn stop_later(worker: Arc<Worker>, request_id: protocol::RequestId, tag: u64, within: Duration) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            stop_at_worker(&worker, request_id.as_str(), tag, Instant::now() + within).await
        });
    }
}

/// One attempt at a worker, which outlives its client's request ([`Detached::attempt`]),
/// and what billing its stream needs ([`Detached::billing`]).
pub(super) struct Detached {
    /// Its entry among the account's running requests.
    registered: Registered,
    state: Arc<State>,
    account: Arc<str>,
    meta: Arc<RequestMeta>,
    endpoint: Endpoint,
    e2e: Option<protocol::e2e::Binding>,
    receipt: Option<ReceiptCheck>,
    /// The tag the request goes to the worker with ([`crate::link::Link::next_tag`]).
    tag: u64,
    started: Instant,
}

/// An attempt in flight: the worker's slot and reservation (in the [`Pick`]) and the outcome.
type InFlight = Pin<Box<dyn Future<Output = (Pick, Attempt)> + Send>>;

/// Polls an attempt for the client's request; dropped before the attempt ended (the client
/// left), it hands the attempt to a task that stops and settles it ([`Detached::after_left`]).
/// The happy path costs one allocation, not a task.
///
/// At the proxy's drain deadline an attempt still waiting for the worker's response head (the
/// prompt is being processed) is stopped at the worker: its stream, which then starts with the
/// usage of the prompt, is relayed and billed like any stream stopped then
/// ([`super::RelayBody`]); if no head comes within [`STOP_AT_CUT`], the client is answered 503
/// and the attempt is settled in the background.
struct Guard {
    run: Option<InFlight>,
    detached: Option<Detached>,
    worker: Arc<Worker>,
    /// The proxy's drain deadline.
    deadline: Deadline,
}

impl Future for Guard {
    type Output = Result<(Pick, Attempt, Detached), super::Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (Some(run), Some(detached)) = (this.run.as_mut(), this.detached.as_ref()) else {
            // Already answered.
            return Poll::Pending;
        };
        if let Poll::Ready((pick, attempted)) = run.as_mut().poll(cx) {
            this.run = None;
            return match this.detached.take() {
                Some(detached) => Poll::Ready(Ok((pick, attempted, detached))),
                None => Poll::Pending,
            };
        }
        match this.deadline.poll(cx) {
            AtDeadline::Running => Poll::Pending,
            AtDeadline::Passed => {
                let (id, tag) = (detached.meta.request_id.clone(), detached.tag);
                stop_later(this.worker.clone(), id, tag, STOP_AT_CUT);
                Poll::Pending
            }
            // Dropping the guard leaves the attempt to a task that settles it.
            AtDeadline::Expired => Poll::Ready(Err(super::shutting_down(&detached.state))),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let (Some(run), Some(detached)) = (self.run.take(), self.detached.take()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // Still a request in progress: a shutdown waits for it to be settled.
                let active = detached.state.stats.active();
                let worker = self.worker.clone();
                rt.spawn(async move {
                    detached.after_left(worker, run).await;
                    drop(active);
                });
            }
            // Without a runtime the attempt is dropped, which resets the worker's stream.
        }
    }
}

impl Detached {
    /// An attempt of `account`'s request at `worker`: takes the request's tag on the worker's
    /// link and registers it for clients' cancels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: &Arc<State>,
        account: &Arc<str>,
        meta: &Arc<RequestMeta>,
        endpoint: Endpoint,
        e2e: Option<&protocol::e2e::Binding>,
        receipt: Option<&ReceiptCheck>,
        worker: &Arc<Worker>,
        started: Instant,
    ) -> Self {
        let tag = worker.sender().next_tag();
        let account = account.clone();
        Self {
            registered: Registered::new(&state.running, &account, &meta.request_id, worker, tag),
            state: state.clone(),
            account,
            meta: meta.clone(),
            endpoint,
            e2e: e2e.cloned(),
            receipt: receipt.cloned(),
            tag,
            started,
        }
    }

    /// The billing of the attempt's stream, holding `pick`'s slot and reservation.
    pub fn billing(self, pick: Pick) -> Billing {
        Billing {
            state: self.state,
            account: self.account,
            pick,
            started: self.started,
            first_byte: false,
            worker_error: false,
            receipt: self.receipt,
            request_id: self.meta.request_id.clone(),
            tag: self.tag,
            _registered: self.registered,
        }
    }

    /// Sends the request to `pick`'s worker and waits for the outcome. Dropping this future
    /// (the client left) leaves the attempt running in a task of its own, which stops the
    /// generation and bills the work done ([`Detached::after_left`]). `Err`: the proxy's drain
    /// deadline passed and the worker did not answer its stop in time ([`Guard`]).
    pub async fn attempt(
        self,
        pick: Pick,
        body: Bytes,
    ) -> Result<(Pick, Attempt, Detached), super::Rejection> {
        let worker = pick.worker().clone();
        let (state, meta, e2e) = (self.state.clone(), self.meta.clone(), self.e2e.clone());
        let (endpoint, tag) = (self.endpoint, self.tag);
        let run: InFlight = Box::pin(async move {
            let a = attempt(&state, &pick, &meta, endpoint, e2e.as_ref(), body, tag).await;
            (pick, a)
        });
        let deadline = Deadline::new(&self.state.shutdown);
        Guard {
            run: Some(run),
            detached: Some(self),
            worker,
            deadline,
        }
        .await
    }

    /// The client left while `run` waited for the worker's answer: stops the generation and
    /// settles the attempt.
    async fn after_left(self, worker: Arc<Worker>, run: InFlight) {
        let mut run = run;
        match self.wait_out(&worker, run.as_mut()).await {
            Some(((pick, attempted), stopped)) => self.left(pick, attempted, stopped).await,
            None => {
                // No answer in time: the attempt is dropped, which resets the stream.
                drop(run);
                abandoned(&self.state, &self.account);
            }
        }
    }

    /// The client left while `run` (the attempt) waits for the worker's response head: asks
    /// the worker to stop the generation — again after a growing pause while the worker has
    /// not started it yet — and waits for the head, for at most [`SETTLE_LIMIT`]. Returns the
    /// attempt's outcome and whether the worker said it stopped the generation; `None` if
    /// there was none in time.
    async fn wait_out(
        &self,
        worker: &Worker,
        mut run: Pin<&mut (dyn Future<Output = (Pick, Attempt)> + Send)>,
    ) -> Option<((Pick, Attempt), bool)> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut pause = Duration::from_millis(10);
        loop {
            let asked = tokio::select! {
                a = &mut run => return Some((a, false)),
                s = stop_at_worker(worker, self.meta.request_id.as_str(), self.tag, deadline) => s,
            };
            match asked {
                Stop::Stopped => break,
                Stop::NotRunning => {}
                Stop::Failed => return None,
            }
            let until = (Instant::now() + pause).min(deadline);
            tokio::select! {
                a = &mut run => return Some((a, false)),
                () = tokio::time::sleep_until(until.into()) => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            pause = (pause * 2).min(MAX_STOP_PAUSE);
        }
        tokio::time::timeout_at(deadline.into(), run)
            .await
            .ok()
            .map(|a| (a, true))
    }

    /// Settles an attempt whose client left: a stream is stopped (unless `stopped` already)
    /// and billed; any other outcome bills nothing.
    async fn left(self, pick: Pick, attempted: Attempt, stopped: bool) {
        let worker = pick.worker().clone();
        match attempted {
            Attempt::Stream(resp) => {
                let leftover = Leftover {
                    upstream: resp.into_body(),
                    watch: None,
                    _active: None,
                    splitter: Splitter::default(),
                    billing: self.billing(pick),
                };
                leftover.settle(stopped).await;
            }
            Attempt::Retryable(_) => worker.record_outcome(false),
            Attempt::Final(_) => worker.record_outcome(true),
            Attempt::Busy(_) => {}
        }
    }
}

/// A worker stream whose client left before it was billed, with what the relay had of it.
pub(super) struct Leftover {
    pub upstream: UpBody,
    /// The relay's stall watch (holding the stream's reset handle), if it had one.
    pub watch: Option<Arc<Watch>>,
    /// Holds the part of an event the relay had already read.
    pub splitter: Splitter,
    pub billing: Billing,
    /// Counts the stream as a request in progress until it is settled (a shutdown waits).
    pub _active: Option<ActiveGuard>,
}

impl Drop for Leftover {
    /// A settle that did not finish (its task was dropped): a relay waiting for the end
    /// stops waiting.
    fn drop(&mut self) {
        if let Some(w) = &self.watch {
            w.settle_dropped();
        }
    }
}

impl Leftover {
    /// Stops the generation at the worker (unless it is `stopped` already), reads the rest
    /// of its stream and bills its usage; a stream that yields none in time is reset and
    /// counted as abandoned.
    pub async fn settle(mut self, stopped: bool) {
        let begun = Instant::now();
        if let Some(w) = &self.watch {
            // Its client is gone, not stalled: the sweeper leaves it alone.
            let _ = w.taken();
        }
        let worker = self.billing.pick.worker().clone();
        let stopped = stopped
            || stop_at_worker(
                &worker,
                self.billing.request_id.as_str(),
                self.billing.tag,
                begun + SETTLE_LIMIT,
            )
            .await
                == Stop::Stopped;
        let deadline = if stopped {
            begun + SETTLE_LIMIT
        } else {
            Instant::now() + SETTLE_GRACE
        };
        let (rest, ending, charge) = self.read_rest(deadline).await;
        let billed = self.billing.pick.held.is_committed();
        if let Some(w) = &self.watch {
            // Taken over from a client that stopped reading: the end it was billed, should
            // it read again, once the charge is on disk (as on a relayed stream).
            w.settled(billed_end(ending.filter(|_| billed), charge).await);
        }
        let b = &mut self.billing;
        if billed {
            b.state.stats.stopped.fetch_add(1, Ordering::Relaxed);
            b.finish(true);
        } else if !b.worker_error {
            if rest == Rest::Broken {
                // The worker's connection failed or it sent bytes that are no event stream:
                // its fault (counted against it as on any relayed stream that breaks).
                b.finish(false);
            }
            // Unbilled work all the same: bounded per account ([`crate::limits::Abandons`]).
            abandoned(&b.state, &b.account);
        }
        if let Some(w) = &self.watch {
            if rest == Rest::Ended {
                w.finished();
            } else {
                w.cancel_upstream();
            }
        }
        // Dropping the stream resets it, if it is still open.
    }

    /// Reads the worker's stream until it ends, breaks or `deadline` passes, billing what it
    /// reports; returns how it went, the usage and receipt events read (as sent) and the
    /// durability ticket of the last charge.
    async fn read_rest(&mut self, deadline: Instant) -> (Rest, Option<Bytes>, Option<Ticket>) {
        let mut ending: Vec<u8> = Vec::new();
        let mut charge = None;
        let rest = loop {
            let frame = match tokio::time::timeout_at(deadline.into(), self.upstream.frame()).await
            {
                Ok(Some(Ok(f))) => f,
                Ok(None) => break Rest::Ended,
                Ok(Some(Err(_))) => break Rest::Broken,
                Err(_) => break Rest::TimedOut,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let billing = &mut self.billing;
            let fed = self.splitter.feed(&data, |kind, raw| {
                // The charge is written by the ledger's next group commit; only a client that
                // reads again waits for it ([`billed_end`]).
                if let Some(ticket) = billing.on_event(kind, raw) {
                    charge = Some(ticket);
                }
                if matches!(kind, Kind::Usage | Kind::Receipt) {
                    ending.extend_from_slice(raw);
                }
            });
            if fed.is_err() {
                break Rest::Broken;
            }
        };
        (
            rest,
            (!ending.is_empty()).then(|| Bytes::from(ending)),
            charge,
        )
    }
}

/// The billed end of a stream taken over, released to its client only once its charge is on
/// disk: a client must not see a charge the ledger could forget. A failed write withholds it
/// (the client then gets only the error event).
async fn billed_end(ending: Option<Bytes>, charge: Option<Ticket>) -> Option<Bytes> {
    let ending = ending?;
    match charge {
        Some(ticket) if !ticket.is_durable() => match ticket.wait().await {
            Ok(()) => Some(ending),
            Err(e) => {
                tracing::error!(error = %e, "ledger write failed; billed end withheld");
                None
            }
        },
        _ => Some(ending),
    }
}

/// How the rest of a left stream went ([`Leftover::read_rest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rest {
    /// The stream ended.
    Ended,
    /// The worker's stream failed, or it sent bytes that are no event stream.
    Broken,
    /// Still open at the deadline.
    TimedOut,
}

/// Handles a client's `POST /cocoon/v1/cancel` for `account` ([`super::Running`]): passes it
/// on to each worker running the account's request of that id; 200 `{"stopped": n}` once
/// they answered, 404 if none stopped anything.
pub async fn cancel(
    state: &Arc<State>,
    account: &str,
    headers: &http::HeaderMap,
) -> http::Response<crate::response::ResponseBody> {
    use crate::response::{error_response, json_response};
    let id = match protocol::meta::request_id(headers) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut stopped = 0u32;
    for found in state.running.of(account, id.as_str()) {
        if found.stopped {
            // Stopped on an earlier cancel; its stream is ending.
            stopped += 1;
        } else if stop_at_worker(&found.worker, id.as_str(), found.tag, deadline).await
            == Stop::Stopped
        {
            state.running.mark_stopped(account, id.as_str(), found.id);
            state.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            stopped += 1;
        }
    }
    if stopped == 0 {
        return error_response(&protocol::ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no request {} of this account is running at a worker",
                id.as_str()
            ),
        ));
    }
    json_response(
        StatusCode::OK,
        serde_json::json!({ "stopped": stopped })
            .to_string()
            .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> Bytes {
        Bytes::from_static(b"event: cocoon.usage\ndata: {\"prompt_tokens\":3}\n\n")
    }

    #[tokio::test]
    async fn a_billed_end_waits_for_its_charge_on_disk() {
        let (ticket, writer) = Ticket::pending();
        let mut release = Box::pin(billed_end(Some(end()), Some(ticket)));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut release)
                .await
                .is_err(),
            "released before the charge was written"
        );
        writer.written();
        assert_eq!(release.await, Some(end()));
    }

    #[tokio::test]
    async fn a_failed_write_withholds_the_billed_end() {
        let (ticket, writer) = Ticket::pending();
        let release = tokio::spawn(billed_end(Some(end()), Some(ticket)));
        writer.failed();
        assert_eq!(release.await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_end_without_a_pending_charge_goes_at_once() {
        assert_eq!(billed_end(Some(end()), None).await, Some(end()));
        let (ticket, writer) = Ticket::pending();
        writer.written();
        assert_eq!(billed_end(Some(end()), Some(ticket)).await, Some(end()));
        // Nothing billed: nothing to hand over, whatever the ticket.
        let (ticket, _writer) = Ticket::pending();
        assert_eq!(billed_end(None, Some(ticket)).await, None);
    }
}
