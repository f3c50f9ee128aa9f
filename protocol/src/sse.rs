//! Server-sent events (the WHATWG `text/event-stream` format), as cocoon uses them: an encoder,
//! and an incremental decoder for untrusted byte streams with a bound on event size.

use crate::{ApiError, Usage};

pub mod gather;
pub mod split;
pub use gather::{gather, FRAME_TARGET};
pub use split::Splitter;

/// Event name of the final usage record.
pub const EVENT_USAGE: &str = "cocoon-usage";
/// Event name of a failure after the first byte.
pub const EVENT_ERROR: &str = "cocoon-error";
/// One encrypted response chunk, base64 ([`crate::e2e`]).
pub const EVENT_E2E: &str = "cocoon-e2e";
/// A worker-signed receipt, base64 ([`crate::e2e::Receipt`]).
pub const EVENT_RECEIPT: &str = "cocoon-receipt";
/// The OpenAI end-of-stream marker (`data: [DONE]`).
pub const DONE: &str = "[DONE]";
/// Largest event the decoder accepts by default.
pub const DEFAULT_MAX_EVENT: usize = 1 << 20;
/// The comment a stream sends while it has nothing else to say (prompt processing, a request
/// waiting): any byte resets a reader's idle timer, and SSE readers ignore comment lines.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `None` for plain `message` events.
    pub name: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl Event {
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            name: None,
            data: data.into(),
        }
    }

    pub fn named(name: &str, data: impl Into<String>) -> Self {
        Self {
            name: Some(name.to_string()),
            data: data.into(),
        }
    }

    /// The usage event.
    pub fn usage(usage: &Usage) -> Self {
        Self::named(
            EVENT_USAGE,
            serde_json::to_string(usage).unwrap_or_default(),
        )
    }

    /// The error event.
    pub fn error(err: &ApiError) -> Self {
        Self::named(
            EVENT_ERROR,
            String::from_utf8(err.to_json()).unwrap_or_default(),
        )
    }

    pub fn done() -> Self {
        Self::data(DONE)
    }

    pub fn is_done(&self) -> bool {
        self.name.is_none() && self.data == DONE
    }

    /// Encodes the event (each data line prefixed, blank line terminator).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 16);
        if let Some(n) = &self.name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(n.as_bytes());
            out.push(b'\n');
        }
        for line in self.data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out
    }
}

/// Decoder errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event stream: event larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("event stream: not utf-8")]
    NotUtf8,
}

/// Incremental decoder: feed bytes as they arrive, get complete events.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unconsumed part of `buf`.
    pos: usize,
    name: Option<String>,
    data: Option<String>,
    pending_bytes: usize,
    max_event: usize,
    /// A `\r` ended the previous chunk: a following `\n` belongs to it.
    skip_lf: bool,
    /// Comment lines seen since the last [`Decoder::take_comments`].
    comments: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT)
    }
}

impl Decoder {
    pub fn new(max_event: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            name: None,
            data: None,
            pending_bytes: 0,
            max_event,
            skip_lf: false,
            comments: 0,
        }
    }

    /// How many comment lines (`: …`) the stream carried since the last call, and resets the
    /// count. Comments produce no [`Event`] (the WHATWG format ignores them); a relay uses
    /// this to pass on that the stream is alive (e.g. one [`KEEPALIVE`] for any number of
    /// them) without copying their text.
    pub fn take_comments(&mut self) -> u32 {
        std::mem::take(&mut self.comments)
    }

    /// Feeds `chunk`; returns the events it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            if self.skip_lf && self.pos < self.buf.len() {
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                }
                self.skip_lf = false;
            }
            let rest = &self.buf[self.pos..];
            let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                break;
            };
            let line = std::str::from_utf8(&rest[..end]).map_err(|_| SseError::NotUtf8)?;
            let line = line.strip_prefix('\u{feff}').unwrap_or(line).to_string();
            let term = rest[end];
            self.pos += end + 1;
            if term == b'\r' {
                self.skip_lf = true;
            }
            if let Some(ev) = self.line(&line)? {
                events.push(ev);
            }
        }
        if self.buf.len() - self.pos + self.pending_bytes > self.max_event {
            return Err(SseError::TooLarge {
                limit: self.max_event,
            });
        }
        // Compact.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Result<Option<Event>, SseError> {
        if line.is_empty() {
            self.pending_bytes = 0;
            let name = self.name.take();
            return Ok(self.data.take().map(|data| Event { name, data }));
        }
        self.pending_bytes += line.len() + 1;
        if self.pending_bytes > self.max_event {
            return Err(SseError::TooLarge {
                limit: self.max_event,
            });
        }
        if line.starts_with(':') {
            self.comments = self.comments.saturating_add(1);
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.name = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        Ok(None)
    }
}

/// The data of the event that `block` begins with (its `data` lines joined by `\n`, by the
/// [`Decoder`]'s line rules), without decoding the whole stream: for the one event
/// [`split::Splitter`] hands over whole (usage, receipt), read on every relayed request.
/// Borrowed from `block` when the event has one data line. `None` if the first event ends
/// before any data line, or `block` ends before that event does, or is not UTF-8 up to there.
pub fn event_data(block: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let mut data: Option<Cow<'_, str>> = None;
    let mut rest = block;
    loop {
        let end = memchr::memchr2(b'\n', b'\r', rest)?;
        let line = std::str::from_utf8(&rest[..end]).ok()?;
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + 1 + usize::from(crlf)..];
        if line.is_empty() {
            return data;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            data = Some(match data {
                None => Cow::Borrowed(value),
                Some(d) => {
                    let mut d = d.into_owned();
                    d.push('\n');
                    d.push_str(value);
                    Cow::Owned(d)
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_reads_the_first_event_as_the_decoder_does() {
        let cases: [&[u8]; 9] = [
            b"event: cocoon-usage\ndata: {\"a\":1}\n\n",
            b"event: cocoon-usage\r\ndata:{\"a\":1}\r\n\r\n",
            b"event: x\rdata: one\rdata: two\r\r",
            b": comment\nevent: x\ndata\ndata:  two spaces\n\ndata: next\n\n",
            b"\xef\xbb\xbfdata: bom\n\n",
            b"event: x\nid: 1\n\n",
            b"data: unterminated\n",
            b"data: a\n\xff\n\n",
            b"",
        ];
        for raw in cases {
            let want = Decoder::new(1 << 20)
                .feed(raw)
                .ok()
                .and_then(|evs| evs.into_iter().next())
                .map(|e| e.data);
            let got = event_data(raw).map(|d| d.into_owned());
            if raw == b"data: a\n\xff\n\n" {
                // The decoder refuses the stream; so does this (no charge from such bytes).
                assert_eq!((want, got), (None, None));
                continue;
            }
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(raw));
        }
        // One data line: borrowed, not copied.
        let raw = b"event: cocoon-usage\ndata: {}\n\n";
        assert!(matches!(
            event_data(raw),
            Some(std::borrow::Cow::Borrowed("{}"))
        ));
    }

    #[test]
    fn encode_decode_round_trip_any_chunking() {
        let events = vec![
            Event::data("{\"a\":1}"),
            Event::named("cocoon-usage", "{\"prompt_tokens\":1}"),
            Event::data("multi\nline"),
            Event::done(),
        ];
        let bytes: Vec<u8> = events.iter().flat_map(Event::encode).collect();
        for chunk in [1, 2, 3, 7, 64, bytes.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                got.extend(d.feed(c).unwrap());
            }
            assert_eq!(got, events, "chunk {chunk}");
        }
    }

    #[test]
    fn crlf_comments_and_fields() {
        let mut d = Decoder::default();
        let got = d
            .feed(b": comment\r\nevent:x\r\ndata:1\r\ndata: 2\r\nid: 5\r\n\r\n")
            .unwrap();
        assert_eq!(got, vec![Event::named("x", "1\n2")]);
        let mut d = Decoder::default();
        assert!(d.feed(b"data: a\r").unwrap().is_empty());
        assert_eq!(d.feed(b"\n\r\n").unwrap(), vec![Event::data("a")]);
    }

    #[test]
    fn comments_are_counted_not_events() {
        let mut d = Decoder::default();
        assert_eq!(d.take_comments(), 0);
        let mut bytes = KEEPALIVE.to_vec();
        bytes.extend(Event::usage(&Usage::default()).encode());
        bytes.extend_from_slice(KEEPALIVE);
        bytes.extend_from_slice(b": partial");
        let got = d.feed(&bytes).unwrap();
        // The usage event is found as without comments; the unfinished line is not counted.
        assert_eq!(got, vec![Event::usage(&Usage::default())]);
        assert_eq!(d.take_comments(), 2);
        assert_eq!(d.take_comments(), 0);
        assert!(d.feed(b"\n").unwrap().is_empty());
        assert_eq!(d.take_comments(), 1);
        // A comment inside an event does not split it.
        let got = d.feed(b"data: a\n: c\ndata: b\n\n").unwrap();
        assert_eq!(got, vec![Event::data("a\nb")]);
        assert_eq!(d.take_comments(), 1);
    }

    #[test]
    fn limits_and_utf8() {
        let mut d = Decoder::new(16);
        assert!(matches!(
            d.feed(b"data: 0123456789012345678901234\n"),
            Err(SseError::TooLarge { .. })
        ));
        let mut d = Decoder::new(16);
        assert!(matches!(
            d.feed(&[b'x'; 40]),
            Err(SseError::TooLarge { .. })
        ));
        let mut d = Decoder::default();
        assert_eq!(d.feed(b"data: \xff\n"), Err(SseError::NotUtf8));
    }
}
