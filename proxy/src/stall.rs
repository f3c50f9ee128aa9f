//! Clients that stop reading their stream (`client_stall_secs`).
//!
//! A relayed stream is polled only while its client takes data: hyper asks the relay for the
//! next frame when the client's HTTP/2 window (or, over HTTP/1.1, the socket) has room. A
//! client that stops reading therefore stops its relay altogether, and with it everything the
//! relay would otherwise notice: the worker's stream ending, the worker slot it holds in the
//! proxy's registry. A crowd of such clients holds every slot of a worker at the proxy even
//! after the worker has given their generations up (its `stream_stall_secs`), and new
//! requests queue for a worker that is idle.
//!
//! So each relay shares a [`Watch`] with a sweeper task ([`sweep`]): the relay stamps when it
//! handed its client a frame and clears the stamp when the client asks for the next. A stamp
//! older than the limit means the client took nothing for that long: the sweeper frees the
//! worker slot (queued requests may use it) and has the relay hand its worker stream over to
//! a task ([`Stalled::hand_over`]) that stops the generation at the worker and bills the work
//! done, as for a client that left ([`crate::relay`]'s settle); a stream with nothing to hand
//! over (already billed) is reset instead (`CANCEL`: the worker frees its generation at once),
//! and one whose relay is being polled at that instant is left alone (its client is reading
//! after all). The stream itself stays with its client: when the client reads again it gets
//! what was already queued, then the usage (encrypted: the receipt) it was billed on, then an
//! error event saying why; the worker is not blamed. A client that disconnects needs none of
//! this (dropping the relay stops the worker's generation and bills it). At the proxy's drain
//! deadline the same take-over ends the streams of clients taking nothing then
//! ([`Stalls::take_at_shutdown`]): their relays, not polled, cannot see the deadline.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::link::Canceller;
use crate::queue::Freer;
use crate::stats::Stats;

/// The relay of a stream, as the sweeper reaches it.
pub trait Stalled: Send + Sync {
    /// Hands the stream's worker side (stream, billing) over to a task that stops the
    /// generation and bills the work done, and records `cause` on the stream's [`Watch`]
    /// before the relay can be polled again.
    fn hand_over(&self, cause: Cause) -> HandOver;
}

/// What [`Stalled::hand_over`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// A task stops the generation and bills it.
    Taken,
    /// The relay is being polled at this instant: its client asked for more after all.
    Busy,
    /// Nothing to hand over: the stream is over or already billed, or the relay is gone.
    Nothing,
}

/// Why a stream was ended from outside its relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cause {
    /// Its client took nothing for `client_stall_secs`.
    Stalled = 1,
    /// Its client took nothing when the proxy's drain deadline passed
    /// ([`Stalls::take_at_shutdown`]).
    Shutdown = 2,
}

/// What the sweeper may do to one relayed stream.
#[derive(Default)]
pub struct Watch {
    /// When the last frame was handed to the client and not yet taken ([`stamp`]); 0 while
    /// the relay is not waiting on its client.
    handed: AtomicU64,
    /// Why the stream was ended from outside ([`Cause`]); 0 while it was not.
    cut: AtomicU8,
    /// The worker stream's reset handle and the worker slot, while the stream is live.
    parts: Mutex<Option<Parts>>,
    /// The relay, to hand its worker stream over when its client stalls ([`Stalled`]).
    relay: OnceLock<Weak<dyn Stalled>>,
    /// The end of a stream taken over from its relay, for its client if it reads again.
    ending: Mutex<Ending>,
}

/// The end of a stream taken over from its relay ([`Watch::begin_settle`]).
#[derive(Debug, Default)]
enum Ending {
    /// Not taken over.
    #[default]
    None,
    /// Being settled: the relay, polled meanwhile, waits.
    Settling(Option<Waker>),
    /// Settled: the usage (and, encrypted, the receipt) events that were billed, if any.
    Settled(Option<Bytes>),
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("handed", &self.handed)
            .field("cut", &self.cut)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Parts {
    cancel: Option<Canceller>,
    slot: Freer,
}

impl Watch {
    /// The relay handed its client a frame at `at`.
    pub fn handed(&self, at: Instant) {
        self.handed.store(stamp(at), Ordering::Relaxed);
    }

    /// The client asked for the next frame: how long after the last one was handed over
    /// (`None` when none was waiting).
    pub fn taken(&self) -> Option<Duration> {
        let at = self.handed.swap(0, Ordering::Relaxed);
        (at != 0).then(|| Duration::from_millis(stamp(Instant::now()).saturating_sub(at)))
    }

    /// Names the stream's relay ([`Stalled`]); a second call is ignored.
    pub fn set_relay(&self, relay: Weak<dyn Stalled>) {
        let _ = self.relay.set(relay);
    }

    /// Whether the stream was ended from outside its relay.
    pub fn is_cut(&self) -> bool {
        self.cause().is_some()
    }

    /// Why the stream was ended from outside its relay, if it was.
    pub fn cause(&self) -> Option<Cause> {
        match self.cut.load(Ordering::Acquire) {
            1 => Some(Cause::Stalled),
            2 => Some(Cause::Shutdown),
            _ => None,
        }
    }

    /// Records why the stream was ended (by [`Stalled::hand_over`], with the relay held).
    pub fn mark_cut(&self, cause: Cause) {
        self.cut.store(cause as u8, Ordering::Release);
    }

    /// The stream's worker side was handed to a task that settles it ([`Self::settled`]).
    pub fn begin_settle(&self) {
        *self.ending() = Ending::Settling(None);
    }

    /// The task settling a stream taken over is done: `billed` holds the usage (and receipt)
    /// events it billed, which the client gets if it reads again.
    pub fn settled(&self, billed: Option<Bytes>) {
        let was = std::mem::replace(&mut *self.ending(), Ending::Settled(billed));
        if let Ending::Settling(Some(waker)) = was {
            waker.wake();
        }
    }

    /// The task settling a stream taken over is gone: a relay still waiting for its end
    /// ends its stream without it.
    pub fn settle_dropped(&self) {
        let mut ending = self.ending();
        if let Ending::Settling(waker) = &mut *ending {
            let waker = waker.take();
            *ending = Ending::Settled(None);
            drop(ending);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// For the relay of a stream taken over: `Pending` while it is being settled, then the
    /// events billed (once).
    pub fn poll_ending(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut ending = self.ending();
        match &mut *ending {
            Ending::None => Poll::Ready(None),
            Ending::Settling(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Ending::Settled(billed) => Poll::Ready(billed.take()),
        }
    }

    fn ending(&self) -> std::sync::MutexGuard<'_, Ending> {
        self.ending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relay no longer reads the worker's stream (it failed, timed out, or the proxy
    /// ended it): resets it so the worker stops generating.
    pub fn cancel_upstream(&self) {
        if let Some(cancel) = self.lock().as_mut().and_then(|p| p.cancel.take()) {
            cancel.cancel();
        }
    }

    /// The worker's stream ended normally: nothing left to do.
    pub fn finished(&self) {
        drop(self.lock().take());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Parts>> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the client has taken nothing since a frame handed over at least `limit` ago.
    fn stalled(&self, now: u64, limit: Duration) -> bool {
        let at = self.handed.load(Ordering::Relaxed);
        at != 0 && now.saturating_sub(at) >= limit.as_millis() as u64
    }

    /// Ends the stream for its stalled client: hands the worker stream over to be stopped
    /// and billed, or resets it; frees the slot. `false` if there was nothing left to end.
    ///
    /// A client that resumes reading at that very instant (its relay is being polled) is
    /// left alone: it is served on.
    fn cut(&self) -> bool {
        // Held across the hand-over, which only try-locks the relay: a relay being polled
        // may wait here briefly, never the other way round.
        let mut parts = self.lock();
        if parts.is_none() {
            return false;
        }
        match self.hand_over(Cause::Stalled) {
            HandOver::Busy => return false,
            HandOver::Taken => {}
            HandOver::Nothing => {
                // The relay, when its client reads again, sees the cut and ends the stream.
                self.mark_cut(Cause::Stalled);
                if let Some(cancel) = parts.as_mut().and_then(|p| p.cancel.take()) {
                    cancel.cancel();
                }
            }
        }
        if let Some(p) = parts.take() {
            p.slot.free();
        }
        true
    }

    fn hand_over(&self, cause: Cause) -> HandOver {
        match self.relay.get().and_then(Weak::upgrade) {
            Some(r) => r.hand_over(cause),
            None => HandOver::Nothing,
        }
    }

    /// At the drain deadline: hands the worker stream over to be stopped and billed if the
    /// client has taken nothing since a frame handed over at least `mark` ago, and frees the
    /// slot. A stream that cannot be handed over is left to its relay (which ends it at the
    /// deadline itself when polled). `false` if nothing was taken.
    fn take_at_shutdown(&self, now: u64, mark: Duration) -> bool {
        if !self.stalled(now, mark) {
            return false;
        }
        let mut parts = self.lock();
        if parts.is_none() || self.hand_over(Cause::Shutdown) != HandOver::Taken {
            return false;
        }
        if let Some(p) = parts.take() {
            p.slot.free();
        }
        true
    }
}

/// Milliseconds since the process's first stamp, plus one (0 means "none").
fn stamp(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    at.saturating_duration_since(epoch).as_millis() as u64 + 1
}

/// The watches of the proxy's live streams.
#[derive(Debug)]
pub struct Stalls {
    limit: Duration,
    watches: Mutex<Vec<Weak<Watch>>>,
}

impl Stalls {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            watches: Mutex::new(Vec::new()),
        }
    }

    /// The configured limit (`client_stall_secs`).
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// A watch for a new stream with its worker stream's reset handle and its slot.
    pub fn watch(&self, cancel: Option<Canceller>, slot: Freer) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            parts: Mutex::new(Some(Parts { cancel, slot })),
            ..Watch::default()
        });
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&watch));
        watch
    }

    /// Ends the streams whose clients took nothing for the limit; returns how many. Forgets
    /// the watches of streams that are gone.
    pub fn sweep(&self, now: Instant) -> usize {
        let now = stamp(now);
        let stalled: Vec<Arc<Watch>> = {
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            watches.retain(|w| w.strong_count() > 0);
            watches
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|w| w.stalled(now, self.limit))
                .collect()
        };
        stalled.iter().filter(|w| w.cut()).count()
    }

    /// At the proxy's drain deadline: takes over the worker streams of clients that have taken
    /// nothing for `mark` (their relays are not polled, so they cannot see the deadline): each
    /// generation is stopped at its worker and the work done billed by a task that shutdown
    /// waits for. Returns how many.
    pub fn take_at_shutdown(&self, now: Instant, mark: Duration) -> usize {
        let now = stamp(now);
        let watches: Vec<Arc<Watch>> = {
            let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            watches.iter().filter_map(Weak::upgrade).collect()
        };
        watches
            .iter()
            .filter(|w| w.take_at_shutdown(now, mark))
            .count()
    }
}

/// Sweeps `stalls` every quarter of its limit (between 100 ms and 1 s), for as long as the
/// proxy runs, counting what it ends in `stats`.
pub async fn sweep(stalls: &Stalls, stats: &Stats) {
    let every = (stalls.limit() / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cut = stalls.sweep(Instant::now());
        if cut > 0 {
            stats.client_stalls.fetch_add(cut as u64, Ordering::Relaxed);
            let what =
                "streams ended: their clients took nothing for client_stall_secs (workers freed)";
            if let Some(suppressed) = stats.log_limiter.allow(what, Instant::now()) {
                tracing::warn!(
                    streams = cut,
                    limit_secs = stalls.limit().as_secs_f64(),
                    suppressed_since_last = suppressed,
                    "{what}"
                );
            }
        }
    }
}
