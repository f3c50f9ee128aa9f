//! The proxy's HTTP/2 client on a worker's connection, driven with `h2` directly.
//!
//! The proxy is the HTTP/2 client of every worker link (the worker dials in; see
//! [`crate::workers`]). hyper's client connection puts a dispatch channel, a connection task
//! and a spawned task per request between the caller and `h2`, and records every received
//! DATA frame for its keepalive clock. On the relay's path that is a measurable share of the
//! proxy's CPU per request (docs/performance.md), so the link calls `h2` itself:
//!
//! - [`Link::send`] opens the stream from the caller's own task, hands the (already complete)
//!   request body to `h2`, and awaits the response head there: no channel, no extra task.
//! - [`UpBody`] is the response body: each DATA frame polled out gives its bytes back to the
//!   stream's receive window at once (what hyper does), so the worker's flow control sees the
//!   proxy's consumer exactly as before. Dropping it (client gone) resets the stream
//!   (`CANCEL`), which stops the worker's generation. [`UpBody::canceller`] hands out a
//!   handle that resets the stream from elsewhere (the relay's stall sweeper), while the body
//!   itself waits in a task that is not being polled.
//! - [`drive`] runs the connection and its keepalive: a PING every interval, and the link is
//!   closed when one goes unanswered for the keepalive timeout.
//!
//! Errors are `h2`'s; [`describe`] words them for logs and client errors (never payload bytes).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest header list the proxy accepts from a worker (hyper's client default).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// The most request bytes `h2` buffers per stream ahead of the worker's window (hyper's
/// client default).
const MAX_SEND_BUFFER: usize = 1 << 20;

/// Settings of a worker link.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The receive window of each stream (what a worker may send ahead of the relay).
    pub stream_window: u32,
    /// The connection's receive window.
    pub connection_window: u32,
    /// A PING this often.
    pub keepalive_interval: Duration,
    /// The link is closed when a PING goes unanswered this long.
    pub keepalive_timeout: Duration,
}

/// The sending side of a worker link (cheap to clone).
#[derive(Clone)]
pub struct Link {
    tx: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    /// The last stream tag handed out ([`Link::next_tag`]).
    tags: Arc<AtomicU64>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The connection half of a worker link: a future to poll for as long as the link is used
/// ([`drive`]).
pub struct Connection<T> {
    conn: h2::client::Connection<T, Bytes>,
    pings: Option<h2::PingPong>,
    closed: Arc<AtomicBool>,
}

impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// The HTTP/2 client handshake on an established (RA-TLS) connection to a worker.
pub async fn handshake<T>(io: T, settings: Settings) -> Result<(Link, Connection<T>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut conn) = h2::client::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        .handshake::<T, Bytes>(io)
        .await?;
    let pings = conn.ping_pong();
    let closed = Arc::new(AtomicBool::new(false));
    Ok((
        Link {
            tx,
            closed: closed.clone(),
            tags: Arc::default(),
        },
        Connection {
            conn,
            pings,
            closed,
        },
    ))
}

/// Why a worker link ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    #[error("{}", describe(.0))]
    Connection(h2::Error),
    #[error("keepalive ping not answered within {0:?}")]
    KeepaliveTimeout(Duration),
}

/// Runs the connection until it closes (the worker went away, a protocol error, or a PING
/// unanswered for the keepalive timeout). Dropping the returned future closes the link too:
/// streams still open then fail with an error.
pub async fn drive<T>(c: Connection<T>, settings: Settings) -> Result<(), Ended>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Connection {
        mut conn,
        pings,
        closed,
    } = c;
    // Marks the link closed however this future ends (including by being dropped).
    struct Mark(Arc<AtomicBool>);
    impl Drop for Mark {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _mark = Mark(closed);
    let keepalive = async move {
        let Some(mut pings) = pings else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(settings.keepalive_interval).await;
            match tokio::time::timeout(settings.keepalive_timeout, pings.ping(h2::Ping::opaque()))
                .await
            {
                Ok(Ok(_)) => {}
                // The connection itself failed: its own future reports why.
                Ok(Err(_)) => return std::future::pending().await,
                Err(_) => return Ended::KeepaliveTimeout(settings.keepalive_timeout),
            }
        }
    };
    tokio::select! {
        r = &mut conn => r.map_err(Ended::Connection),
        e = keepalive => Err(e),
    }
}

impl Link {
    /// A tag for the next request on this connection, unique on it: it names the request in
    /// a cancel ([`protocol::meta::H_STREAM_TAG`]), where request ids (the clients') need not be.
    pub fn next_tag(&self) -> u64 {
        self.tags.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the connection has closed ([`drive`] returned or was dropped).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends a request with a complete body and waits for the response head. Dropping the
    /// future before the head arrives resets the stream.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<UpBody>, h2::Error> {
        let (mut head, body) = {
            let (parts, body) = req.into_parts();
            (Request::from_parts(parts, ()), body)
        };
        if !head.headers().contains_key(CONTENT_LENGTH) {
            head.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut tx = self.tx.clone();
        poll_fn(|cx| tx.poll_ready(cx)).await?;
        let end = body.is_empty();
        let (response, mut send) = tx.send_request(head, end)?;
        if !end {
            // Bounded by the proxy's request body limit; h2 sends it as the worker's window
            // opens (the stream lives on in h2 until then).
            send.send_data(body, true)?;
        }
        let resp = response.await?;
        Ok(resp.map(|recv| UpBody {
            recv,
            send: Some(send),
        }))
    }
}

/// A worker's response body.
pub struct UpBody {
    recv: h2::RecvStream,
    /// The stream's sending half, kept until [`UpBody::canceller`] takes it (dropping both
    /// halves of an open stream resets it).
    send: Option<h2::SendStream<Bytes>>,
}

impl UpBody {
    /// A handle that resets the stream (`CANCEL`) when told to. While it lives, dropping the
    /// body alone no longer resets an open stream: its holder cancels or drops it.
    pub fn canceller(&mut self) -> Option<Canceller> {
        self.send.take().map(Canceller)
    }
}

/// Resets a worker stream on demand ([`UpBody::canceller`]).
pub struct Canceller(h2::SendStream<Bytes>);

impl Canceller {
    /// Resets the stream with `CANCEL` (nothing if it has already ended).
    pub fn cancel(mut self) {
        self.0.send_reset(h2::Reason::CANCEL);
    }
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Canceller")
            .field(&self.0.stream_id().as_u32())
            .finish()
    }
}

impl std::fmt::Debug for UpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpBody")
            .field("stream", &self.recv.stream_id())
            .finish_non_exhaustive()
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        match this.recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                // Gives the bytes back to the window as they leave h2's buffer; an error
                // here means the stream is already gone, which the next poll reports.
                let _ = this.recv.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => match this.recv.poll_trailers(cx) {
                Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Poll::Ready(Ok(None)) => Poll::Ready(None),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A short description of a link error (never payload bytes).
pub fn describe(e: &h2::Error) -> String {
    if let Some(io) = e.get_io() {
        format!("connection error: {io}")
    } else if e.is_go_away() {
        match e.reason() {
            Some(h2::Reason::NO_ERROR) => "connection closing".into(),
            Some(r) => format!("connection closed by the worker: {r}"),
            None => "connection closing".into(),
        }
    } else if e.is_reset() {
        match e.reason() {
            Some(r) => format!("stream reset: {r}"),
            None => "stream reset".into(),
        }
    } else {
        format!("connection error: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        stream_window: 64 << 10,
        connection_window: 1 << 20,
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(200),
    };

    /// A link to an in-memory h2 server whose connection `serve` handles.
    async fn pair<F, Fut>(serve: F) -> (Link, tokio::task::JoinHandle<Result<(), Ended>>)
    where
        F: FnOnce(h2::server::Connection<tokio::io::DuplexStream, Bytes>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let conn = h2::server::handshake(b).await.expect("server handshake");
            serve(conn).await;
        });
        let (link, conn) = handshake(a, SETTINGS).await.expect("client handshake");
        let driver = tokio::spawn(drive(conn, SETTINGS));
        (link, driver)
    }

    fn post(body: &'static [u8]) -> Request<Bytes> {
        Request::post("https://worker/v1/x")
            .body(Bytes::from_static(body))
            .unwrap()
    }

    #[tokio::test]
    async fn a_body_larger_than_the_window_arrives_whole_and_the_request_body_is_sent() {
        let (link, _driver) = pair(|mut conn| async move {
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let (head, mut body) = req.into_parts();
                    assert_eq!(head.headers[CONTENT_LENGTH], "5");
                    let mut got = Vec::new();
                    while let Some(d) = body.data().await {
                        let d = d.unwrap();
                        body.flow_control().release_capacity(d.len()).unwrap();
                        got.extend_from_slice(&d);
                    }
                    assert_eq!(got, b"hello");
                    let mut send = respond.send_response(Response::new(()), false).unwrap();
                    // 1 MiB in 16 KiB pieces through a 64 KiB stream window: arrives only if
                    // the body gives capacity back as it is read.
                    for _ in 0..64 {
                        send.reserve_capacity(16 << 10);
                        loop {
                            let cap = poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
                            if cap >= 16 << 10 {
                                break;
                            }
                        }
                        send.send_data(Bytes::from(vec![7u8; 16 << 10]), false)
                            .unwrap();
                    }
                    send.send_data(Bytes::new(), true).unwrap();
                });
            }
        })
        .await;
        let resp = link.send(post(b"hello")).await.unwrap();
        let mut body = resp.into_body();
        let mut n = 0;
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(f) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                n += f.unwrap().into_data().unwrap().len();
            }
        });
        assert!(
            read.await.is_ok(),
            "stuck after {n} bytes: window not given back"
        );
        assert_eq!(n, 1 << 20);
        assert!(body.is_end_stream());
        assert!(!link.is_closed());
    }

    #[tokio::test]
    async fn a_request_body_larger_than_the_workers_window_is_sent_whole() {
        // 3 MiB against the server's default 64 KiB stream window: h2 sends it as the window
        // opens.
        const LEN: usize = 3 << 20;
        let (link, _driver) = pair(|mut conn| async move {
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut n = 0;
                    while let Some(d) = body.data().await {
                        let d = d.unwrap();
                        body.flow_control().release_capacity(d.len()).unwrap();
                        assert!(d.iter().all(|b| *b == 5));
                        n += d.len();
                    }
                    let mut send = respond.send_response(Response::new(()), false).unwrap();
                    send.send_data(Bytes::from(n.to_string()), true).unwrap();
                });
            }
        })
        .await;
        let req = Request::post("https://worker/v1/x")
            .body(Bytes::from(vec![5u8; LEN]))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), link.send(req))
            .await
            .expect("answered")
            .unwrap();
        let mut body = resp.into_body();
        let got = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(got, LEN.to_string());
    }

    #[tokio::test]
    async fn dropping_the_body_resets_the_stream() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (link, _driver) = pair(|mut conn| async move {
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            let mut send = respond.send_response(Response::new(()), false).unwrap();
            send.send_data(Bytes::from_static(b"first"), false).unwrap();
            tokio::spawn(async move {
                let reason = poll_fn(|cx| send.poll_reset(cx)).await.unwrap();
                let _ = tx.send(reason);
            });
            // Keeps the connection polled.
            while conn.accept().await.is_some() {}
        })
        .await;
        let resp = link.send(post(b"")).await.unwrap();
        let mut body = resp.into_body();
        let first = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        drop(body);
        let reason = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the worker sees the reset")
            .unwrap();
        assert_eq!(reason, h2::Reason::CANCEL);
    }

    #[tokio::test]
    async fn an_unanswered_ping_closes_the_link() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (link, driver) = pair(|conn| async move {
            // Answers the handshake, then stops reading (a frozen worker): no PONG comes.
            let _conn = conn;
            let _ = stopped.await;
        })
        .await;
        let ended = tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .expect("the link gives up")
            .unwrap();
        assert!(
            matches!(ended, Err(Ended::KeepaliveTimeout(t)) if t == SETTINGS.keepalive_timeout),
            "{ended:?}"
        );
        assert!(link.is_closed());
        let err = link.send(post(b"x")).await.unwrap_err();
        assert!(!describe(&err).is_empty());
        drop(stop);
    }

    #[tokio::test]
    async fn a_worker_that_goes_away_ends_the_link_and_fails_its_streams() {
        let (link, driver) = pair(|mut conn| async move {
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            let mut send = respond.send_response(Response::new(()), false).unwrap();
            send.send_data(Bytes::from_static(b"partial"), false)
                .unwrap();
            // Flushes, then drops the connection mid-stream.
            let _ = tokio::time::timeout(Duration::from_millis(100), conn.accept()).await;
        })
        .await;
        let resp = link.send(post(b"")).await.unwrap();
        let mut body = resp.into_body();
        let mut saw_error = false;
        while let Some(f) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if f.is_err() {
                saw_error = true;
                break;
            }
        }
        assert!(saw_error, "a cut stream must not look complete");
        let _ = tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .expect("the link ends");
        assert!(link.is_closed());
    }
}
