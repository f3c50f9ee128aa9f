//! Write coalescing for client connections: what the HTTP layer writes while the runtime has
//! other ready tasks goes to the socket in one write, not one write (and one TLS record) per
//! frame.
//!
//! HTTP/2 flushes its codec after every large DATA frame, so a connection carrying many
//! streams would otherwise cost a system call per relayed frame. [`Coalesced`] buffers writes;
//! a flush asked for in the same poll of the connection task in which the bytes were written
//! is answered at once but deferred: the task wakes itself, so it runs again after the tasks
//! already queued (which add their frames), and the next flush of a later poll — the
//! connection polls its codec's flush on every poll — writes everything. The connection's
//! future is wrapped in [`Polls`], which counts its polls. Nothing waits on a timer: the delay
//! is one pass of the runtime's queue.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes beyond which a write goes out before more is accepted.
const HIGH_WATER: usize = 16 << 10;
/// Capacity of the buffer, allocated on the first write and kept for the connection's life
/// (the HTTP/2 codec writes at most 16 KiB plus one frame at a time). Kept below glibc's
/// 64 KiB free-consolidation threshold: freeing a chunk that large walks every fast bin.
const CAPACITY: usize = 32 << 10;

/// Wraps `io` for coalescing; poll the connection's future inside the returned [`Polls`]
/// maker.
pub(crate) fn coalesced<T>(io: T) -> (Coalesced<T>, PollCount) {
    let polls = PollCount(Arc::new(AtomicU64::new(0)));
    let io = Coalesced {
        inner: io,
        buf: Vec::new(),
        pos: 0,
        since: 0,
        woken: u64::MAX,
        polls: polls.clone(),
    };
    (io, polls)
}

/// How often the connection's future has been polled.
#[derive(Clone, Debug)]
pub(crate) struct PollCount(Arc<AtomicU64>);

impl PollCount {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// `future`, counting its polls here.
    pub(crate) fn count<F: Future + Unpin>(self, future: F) -> Polls<F> {
        Polls {
            inner: future,
            count: self,
        }
    }
}

/// A future whose polls are counted (see [`PollCount::count`]).
#[derive(Debug)]
pub(crate) struct Polls<F> {
    inner: F,
    count: PollCount,
}

impl<F> Polls<F> {
    /// The counted future itself (e.g. to start a connection's graceful shutdown).
    pub(crate) fn inner_mut(&mut self) -> &mut F {
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for Polls<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.count.0.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// An I/O stream whose writes are coalesced (see the module docs).
#[derive(Debug)]
pub(crate) struct Coalesced<T> {
    inner: T,
    /// Bytes accepted and not yet written; `buf[pos..]` is left.
    buf: Vec<u8>,
    pos: usize,
    /// Poll in which the oldest buffered byte was accepted.
    since: u64,
    /// Poll in which the task last woke itself.
    woken: u64,
    polls: PollCount,
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.buf.clear();
        self.pos = 0;
        if self.buf.capacity() > CAPACITY {
            // An unusually large write grew it.
            self.buf = Vec::with_capacity(CAPACITY);
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room, then notes when the buffer started filling.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        if self.pending() == 0 {
            self.since = self.polls.get();
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(CAPACITY);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_accept(cx))?;
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_accept(cx))?;
        let mut n = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending() > 0 {
            let now = this.polls.get();
            if this.since == now {
                // Written during this poll: let the queued tasks add theirs first.
                if this.woken != now {
                    this.woken = now;
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink recording each write call.
    #[derive(Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(b.to_vec());
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Wakes(AtomicU64);
    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn writes_of_one_poll_go_out_together_on_the_next() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (mut io, polls) = coalesced(Sink(writes.clone()));
        let wakes = Arc::new(Wakes(AtomicU64::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = Pin::new(&mut io);
        polls.0.fetch_add(1, Ordering::Relaxed); // poll 1
        for part in [&b"ab"[..], b"cd"] {
            assert!(matches!(
                io.as_mut().poll_write(&mut cx, part),
                Poll::Ready(Ok(2))
            ));
            // A flush in the same poll is deferred: nothing written, one self-wake.
            assert!(matches!(
                io.as_mut().poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert!(writes.lock().unwrap().is_empty());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        polls.0.fetch_add(1, Ordering::Relaxed); // poll 2
        let v = [io::IoSlice::new(b"e"), io::IoSlice::new(b"f")];
        assert!(matches!(
            io.as_mut().poll_write_vectored(&mut cx, &v),
            Poll::Ready(Ok(2))
        ));
        assert!(matches!(
            io.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(*writes.lock().unwrap(), vec![b"abcdef".to_vec()]);
        // Bytes of a new poll, then shutdown: written before the stream closes.
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, b"g"),
            Poll::Ready(Ok(1))
        ));
        assert!(matches!(
            io.as_mut().poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes.lock().unwrap().len(), 2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_full_buffer_is_written_before_more_is_accepted() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (mut io, _polls) = coalesced(Sink(writes.clone()));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let big = vec![7u8; HIGH_WATER];
        let mut io = Pin::new(&mut io);
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, &big),
            Poll::Ready(Ok(_))
        ));
        assert!(writes.lock().unwrap().is_empty());
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, b"x"),
            Poll::Ready(Ok(1))
        ));
        assert_eq!(writes.lock().unwrap().len(), 1);
        assert_eq!(writes.lock().unwrap()[0].len(), HIGH_WATER);
    }
}
