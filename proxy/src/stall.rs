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
//! done, as for a client that left ([`crate::relay`]'s settle); a stream it cannot hand over
//! (already billed, or being relayed at that instant) is reset instead (`CANCEL`: the worker
//! frees its generation at once). The stream itself stays with its client: when the client
//! reads again it gets what was already queued and then an error event saying why; the
//! worker is not blamed. A client that disconnects needs none of this (dropping the relay
//! stops the worker's generation and bills it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::link::Canceller;
use crate::queue::Freer;
use crate::stats::Stats;

/// The relay of a stream, as the sweeper reaches it.
pub trait Stalled: Send + Sync {
    /// Hands the stream's worker side (stream, billing) over to a task that stops the
    /// generation and bills the work done. `false` if there is nothing to hand over, or the
    /// relay is busy at this instant: the sweeper then resets the worker's stream.
    fn hand_over(&self) -> bool;
}

/// What the sweeper may do to one relayed stream.
#[derive(Default)]
pub struct Watch {
    /// When the last frame was handed to the client and not yet taken ([`stamp`]); 0 while
    /// the relay is not waiting on its client.
    handed: AtomicU64,
    /// The sweeper ended the stream.
    cut: AtomicBool,
    /// The worker stream's reset handle and the worker slot, while the stream is live.
    parts: Mutex<Option<Parts>>,
    /// The relay, to hand its worker stream over when its client stalls ([`Stalled`]).
    relay: OnceLock<Weak<dyn Stalled>>,
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

    /// Whether the sweeper ended the stream.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
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
    fn cut(&self) -> bool {
        let Some(parts) = self.lock().take() else {
            return false;
        };
        // Before the hand-over: the relay, when its client reads again, sees the cut.
        self.cut.store(true, Ordering::Release);
        let handed = self
            .relay
            .get()
            .and_then(Weak::upgrade)
            .is_some_and(|r| r.hand_over());
        if !handed {
            if let Some(cancel) = parts.cancel {
                cancel.cancel();
            }
        }
        parts.slot.free();
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
