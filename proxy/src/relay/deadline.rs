//! The proxy's drain deadline as one request in flight sees it: the guard of an attempt that
//! awaits its response head ([`super::settle`]) and the relay of a stream
//! ([`super::RelayBody`]) both ask the worker to stop the generation when it passes, and give
//! it [`STOP_AT_CUT`] to end with the usage of the work done.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::time::Sleep;

use super::STOP_AT_CUT;
use crate::state::Shutdown;

/// Resolves at the proxy's drain deadline ([`Shutdown::when_cut`]).
type CutSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a request stands with respect to the drain deadline.
pub(super) struct Deadline {
    /// Fires at the deadline; `None` once it did.
    cut: Option<CutSignal>,
    /// Once it passed: when the generation's time to end runs out.
    until: Option<Pin<Box<Sleep>>>,
}

/// What [`Deadline::poll`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AtDeadline {
    /// Not passed, or passed and the generation still has time to end.
    Running,
    /// Just passed (reported once): stop the generation now; its time to end has started.
    Passed,
    /// The generation's time to end ran out.
    Expired,
}

impl Deadline {
    pub fn new(shutdown: &Shutdown) -> Self {
        Self {
            cut: Some(Box::pin(shutdown.when_cut())),
            until: None,
        }
    }

    /// Whether the deadline has passed and not been reported yet, without waiting: for a
    /// stream too busy relaying to come back to [`Self::poll`].
    pub fn passed_unreported(&self, shutdown: &Shutdown) -> bool {
        self.cut.is_some() && shutdown.is_cut()
    }

    /// Reports the deadline as passed ([`AtDeadline::Passed`]) and starts the generation's
    /// time to end.
    pub fn pass(&mut self) {
        self.cut = None;
        self.until = Some(Box::pin(tokio::time::sleep(STOP_AT_CUT)));
    }

    /// The generation's end arrived (or the stream ended otherwise): no time limit left.
    pub fn ended(&mut self) {
        self.until = None;
    }

    /// Polls both (registering the task to be woken by either).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> AtDeadline {
        if self
            .cut
            .as_mut()
            .is_some_and(|c| c.as_mut().poll(cx).is_ready())
        {
            self.pass();
            // Registers the new timer (it runs for a second: not ready yet).
            let _ = self.poll_until(cx);
            return AtDeadline::Passed;
        }
        if self.poll_until(cx) {
            self.until = None;
            return AtDeadline::Expired;
        }
        AtDeadline::Running
    }

    fn poll_until(&mut self, cx: &mut Context<'_>) -> bool {
        self.until
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Instant;

    /// The next [`Deadline::poll`] that is not `Running`, waiting for the wake-ups it
    /// registered.
    async fn next(d: &mut Deadline) -> AtDeadline {
        std::future::poll_fn(|cx| match d.poll(cx) {
            AtDeadline::Running => Poll::Pending,
            at => Poll::Ready(at),
        })
        .await
    }

    fn now(d: &mut Deadline) -> AtDeadline {
        let waker = std::task::Waker::noop();
        d.poll(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn passed_once_then_expired_after_stop_at_cut() {
        let shutdown = Shutdown::default();
        let mut d = Deadline::new(&shutdown);
        assert_eq!(now(&mut d), AtDeadline::Running);
        assert!(!d.passed_unreported(&shutdown));
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), next(&mut d));
        assert!(waiting.await.is_err(), "nothing before the deadline");
        shutdown.cut();
        assert!(d.passed_unreported(&shutdown));
        let at = Instant::now();
        // Woken by the cut signal, reported once.
        assert_eq!(next(&mut d).await, AtDeadline::Passed);
        assert!(!d.passed_unreported(&shutdown));
        assert_eq!(now(&mut d), AtDeadline::Running);
        // Woken by the timer the report started.
        assert_eq!(next(&mut d).await, AtDeadline::Expired);
        assert!(at.elapsed() >= STOP_AT_CUT);
        assert_eq!(now(&mut d), AtDeadline::Running, "reported once");
    }

    #[tokio::test]
    async fn an_end_before_the_limit_leaves_nothing_to_expire() {
        let shutdown = Shutdown::default();
        let mut d = Deadline::new(&shutdown);
        shutdown.cut();
        assert!(d.passed_unreported(&shutdown));
        d.pass();
        d.ended();
        let waiting = tokio::time::timeout(STOP_AT_CUT * 2, next(&mut d));
        assert!(waiting.await.is_err(), "ended: no expiry");
    }
}
