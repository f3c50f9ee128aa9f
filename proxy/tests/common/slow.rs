//! Clients that misbehave on purpose: raw HTTP/1.1 over TLS (write a request head, then
//! withhold or trickle the body) and HTTP/2 requests whose body comes from a channel.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{chat, client_tls, ChannelBody, MODEL};

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to the client port with the account key of `seed`, ALPN http/1.1.
pub async fn h1_raw(proxy: SocketAddr, seed: u8) -> Tls {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    client_tls(tcp, seed, true).await.expect("client handshake")
}

/// The head of a chat request (valid metadata headers) declaring `content_length` bytes.
pub fn h1_head(content_length: u64) -> Vec<u8> {
    let req = chat(MODEL, 16, None, b"");
    let mut head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy.invalid\r\n\
         content-type: application/json\r\ncontent-length: {content_length}\r\n"
    );
    for (name, value) in req.headers() {
        if name == http::header::HOST || name == http::header::CONTENT_TYPE {
            continue;
        }
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Writes a request head declaring `content_length` bytes and then `body_prefix` of the body.
pub async fn h1_send(tls: &mut Tls, content_length: u64, body_prefix: &[u8]) -> io::Result<()> {
    tls.write_all(&h1_head(content_length)).await?;
    tls.write_all(body_prefix).await?;
    tls.flush().await
}

/// A response head: status and lowercase headers.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head from `tls`, waiting at most `timeout` (`None`: nothing in time or
/// the connection closed first).
pub async fn h1_read_head<R: AsyncRead + Unpin>(tls: &mut R, timeout: Duration) -> Option<Head> {
    let read = async {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if tls.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let text = String::from_utf8(buf).ok()?;
        let mut lines = text.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Head { status, headers })
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// Whether the proxy closes `tls` (EOF or error) within `timeout`, discarding what it sends.
pub async fn closed_within<R: AsyncRead + Unpin>(tls: &mut R, timeout: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, drain).await.is_ok()
}

/// An HTTP/2 connection to the client port for requests with channel-fed bodies.
pub async fn h2_streaming(proxy: SocketAddr, seed: u8) -> SendRequest<ChannelBody> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let tls = client_tls(tcp, seed, false)
        .await
        .expect("client handshake");
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A chat request whose body is fed through the returned sender (it ends when the sender is
/// dropped), optionally declaring `content_length`.
pub fn streaming_chat(content_length: Option<u64>) -> (Request<ChannelBody>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(4);
    let template = chat(MODEL, 16, None, b"");
    let mut req = Request::post("https://proxy.invalid/v1/chat/completions")
        .body(ChannelBody(rx))
        .unwrap();
    *req.headers_mut() = template.headers().clone();
    if let Some(n) = content_length {
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    (req, tx)
}
