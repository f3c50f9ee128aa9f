//! Raw HTTP/2 for attack tests: frames written byte by byte after a TLS handshake, so a test
//! can play a peer that no HTTP/2 library would be — one that floods control frames, resets
//! streams as it opens them, or never ends a header block. Used against the proxy's client
//! port (a hostile client) and against the worker's link (a hostile proxy, the worker being
//! the HTTP/2 server there).
//!
//! Only what the attacks need: frame headers (RFC 9113, 4.1), header blocks as HPACK literals
//! without indexing and without Huffman coding (RFC 7541, 6.2.2), and a reader that notes the
//! peer's GOAWAY code.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// RST_STREAM's CANCEL code.
pub const CANCEL: u32 = 0x8;
/// GOAWAY's ENHANCE_YOUR_CALM code.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A frame of `kind` on stream 0, no flags.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    frame_on(kind, 0, 0, payload)
}

/// A frame of `kind` with `flags` on `stream`.
pub fn frame_on(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1) after `first`'s high bits.
fn hpack_int(out: &mut Vec<u8>, n: u32, first: u8, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut v = v - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// `req`'s header block (method, `https`, `authority`, the path, its headers but `host`) as
/// HPACK literals without indexing.
pub fn header_block<B>(req: &http::Request<B>, authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    let mut field = |name: &[u8], value: &[u8]| {
        block.push(0);
        hpack_int(&mut block, 7, 0, name.len());
        block.extend_from_slice(name);
        hpack_int(&mut block, 7, 0, value.len());
        block.extend_from_slice(value);
    };
    field(b":method", req.method().as_str().as_bytes());
    field(b":scheme", b"https");
    field(b":authority", authority.as_bytes());
    field(b":path", req.uri().path().as_bytes());
    for (name, value) in req.headers() {
        if name != http::header::HOST {
            field(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    block
}

/// `req` (its body `body`) as one stream `id`: HEADERS, then DATA with END_STREAM.
pub fn request_frames<B>(req: &http::Request<B>, body: &[u8], id: u32) -> Vec<u8> {
    let mut frames = frame_on(HEADERS, END_HEADERS, id, &header_block(req, "peer.invalid"));
    frames.extend(frame_on(DATA, END_STREAM, id, body));
    frames
}

/// An HTTP/2 connection a test writes raw frames on, the preface and an empty SETTINGS
/// already sent. Reading the peer (to note its GOAWAY) or not (a peer that reads no answer).
pub struct RawConn<S> {
    w: WriteHalf<S>,
    reader: Option<JoinHandle<Option<u32>>>,
    /// Kept open, unread, when the connection does not read.
    _unread: Option<ReadHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> RawConn<S> {
    /// Starts HTTP/2 on `stream`; reads (and discards) what the peer sends if `read`.
    pub async fn open(stream: S, read: bool) -> std::io::Result<Self> {
        let (r, mut w) = tokio::io::split(stream);
        w.write_all(PREFACE).await?;
        w.write_all(&frame(SETTINGS, &[])).await?;
        let (reader, unread) = if read {
            (Some(tokio::spawn(goaway_of(r))), None)
        } else {
            (None, Some(r))
        };
        Ok(Self {
            w,
            reader,
            _unread: unread,
        })
    }

    /// Writes `units` (each some frames) as fast as the stream carries them, batched into
    /// writes of ~32 KiB, for at most `within`; how many were written before the first failed
    /// write or the time ran out.
    pub async fn write_units(
        &mut self,
        units: impl Iterator<Item = Vec<u8>>,
        within: Duration,
    ) -> usize {
        let mut written = 0;
        let w = &mut self.w;
        let _ = tokio::time::timeout(within, async {
            let (mut chunk, mut in_chunk) = (Vec::new(), 0);
            for unit in units {
                chunk.extend(unit);
                in_chunk += 1;
                if chunk.len() > 32 << 10 {
                    w.write_all(&chunk).await?;
                    chunk.clear();
                    written += std::mem::take(&mut in_chunk);
                }
            }
            w.write_all(&chunk).await?;
            w.flush().await?;
            written += in_chunk;
            Ok::<_, std::io::Error>(())
        })
        .await;
        written
    }

    /// The error code of the GOAWAY the peer sent, once it closed the connection or was quiet
    /// for 20 s; `None` for a connection that does not read.
    pub async fn goaway(mut self) -> Option<u32> {
        match self.reader.take() {
            Some(reader) => reader.await.unwrap_or(None),
            None => None,
        }
    }
}

impl<S> std::fmt::Debug for RawConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn")
            .field("reading", &self.reader.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Drop for RawConn<S> {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// Reads frames until the peer closes or is quiet for 20 s; the last GOAWAY's code.
async fn goaway_of<R: AsyncRead>(r: R) -> Option<u32> {
    let mut r = std::pin::pin!(r);
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut goaway = None;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(20), r.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        // Walk whole frames; keep a partial one.
        let mut at = 0;
        while seen.len() - at >= 9 {
            let len = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
            if seen.len() - at < 9 + len {
                break;
            }
            if seen[at + 3] == GOAWAY && len >= 8 {
                let p = &seen[at + 9..at + 17];
                goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            at += 9 + len;
        }
        seen.drain(..at);
    }
    goaway
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_integers_are_encoded_as_the_rfcs_say() {
        assert_eq!(
            frame_on(RST_STREAM, 0, 3, &CANCEL.to_be_bytes()),
            [0, 0, 4, 3, 0, 0, 0, 0, 3, 0, 0, 0, 8]
        );
        // RFC 7541, C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        hpack_int(&mut out, 5, 0, 1337);
        assert_eq!(out, [31, 154, 10]);
        let req = http::Request::post("http://h/p").body(()).unwrap();
        let block = header_block(&req, "a");
        assert_eq!(&block[..9], b"\x00\x07:method");
    }
}
