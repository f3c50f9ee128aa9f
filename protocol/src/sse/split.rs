//! Splitting an event stream into whole events without decoding them, for relays: the bytes
//! are passed on as they came, cut only at event boundaries, and only what a relay must act on
//! is recognised (the usage and error events). Same line and field rules as
//! [`super::Decoder`], so a reader decoding the relayed bytes sees exactly the events the
//! splitter classified.

use super::{SseError, EVENT_ERROR, EVENT_RECEIPT, EVENT_USAGE};

/// What a run of relayed bytes holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Whole events of any other name, comment lines, and lines that dispatch nothing.
    Plain,
    /// Exactly one event named [`EVENT_USAGE`] (with any comment lines of its block).
    Usage,
    /// Exactly one event named [`EVENT_ERROR`] (with any comment lines of its block).
    Error,
    /// Exactly one event named [`EVENT_RECEIPT`] (with any comment lines of its block).
    Receipt,
}

/// The block (lines since the last boundary) being scanned.
#[derive(Clone, Copy, Debug, Default)]
struct Block {
    /// A field line (not a comment) was seen: the block ends only at a blank line.
    started: bool,
    /// A `data` field was seen: the block dispatches an event.
    has_data: bool,
    /// Kind of the last `event` field.
    name: Option<Kind>,
}

/// Incremental splitter: feed chunks as they arrive; it hands back, in order, every byte that
/// ends on an event boundary, as runs of [`Kind::Plain`] bytes and single usage/error events.
/// Bytes of an incomplete event are kept (bounded by `max_event`) until it completes.
///
/// A boundary is the end of a blank line, or the end of a comment line outside an event, so
/// a relay can append an event of its own after any run it was given.
#[derive(Debug)]
pub struct Splitter {
    /// Bytes after the last boundary, when they did not complete within their chunk.
    carry: Vec<u8>,
    /// How much of `carry` has been scanned (whole lines).
    scanned: usize,
    block: Block,
    /// A `\r` ended the previous line: a `\n` right after it belongs to it.
    skip_lf: bool,
    max_event: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new(super::DEFAULT_MAX_EVENT)
    }
}

/// Where one scan of a buffer got to.
struct Scan {
    /// End of the last whole line.
    scanned: usize,
    /// End of the last boundary; everything before it has been emitted.
    boundary: usize,
}

impl Splitter {
    /// A splitter refusing events (and comment lines) longer than `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        Self {
            carry: Vec::new(),
            scanned: 0,
            block: Block::default(),
            skip_lf: false,
            max_event,
        }
    }

    /// Bytes held back: the part of an event (or line) not complete yet.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Feeds `chunk`; calls `emit` with each run of bytes the chunk completes, in order. On an
    /// error, the runs before the offending line have been emitted; feed nothing more.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut emit: impl FnMut(Kind, &[u8]),
    ) -> Result<(), SseError> {
        if self.carry.is_empty() {
            // Fast path: emit straight from the chunk, keep only its incomplete tail.
            let scan = self.scan(chunk, 0, &mut emit)?;
            let tail = &chunk[scan.boundary..];
            if tail.len() > self.max_event {
                return Err(self.too_large());
            }
            self.carry.extend_from_slice(tail);
            self.scanned = scan.scanned - scan.boundary;
            return Ok(());
        }
        let mut carry = std::mem::take(&mut self.carry);
        carry.extend_from_slice(chunk);
        let result = self.scan(&carry, self.scanned, &mut emit);
        let scan = match result {
            Ok(s) => s,
            Err(e) => {
                self.carry = carry;
                return Err(e);
            }
        };
        carry.drain(..scan.boundary);
        self.scanned = scan.scanned - scan.boundary;
        self.carry = carry;
        if self.carry.len() > self.max_event {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&self) -> SseError {
        SseError::TooLarge {
            limit: self.max_event,
        }
    }

    /// Scans the whole lines of `buf` from `from` (a line start; `buf` starts on a boundary),
    /// emitting everything up to the last boundary.
    fn scan(
        &mut self,
        buf: &[u8],
        from: usize,
        emit: &mut impl FnMut(Kind, &[u8]),
    ) -> Result<Scan, SseError> {
        let mut i = from;
        // Start of the plain bytes not emitted yet, and of the current block.
        let mut run = 0;
        let mut block_start = 0;
        // The whole lines are checked for UTF-8 at once (their terminators are ASCII, so that
        // is the same as line by line); only if that fails is each line checked, to find it.
        let lines_end = memchr::memrchr2(b'\n', b'\r', &buf[from..]).map_or(from, |p| from + p);
        let all_utf8 = std::str::from_utf8(&buf[from..lines_end]).is_ok();
        loop {
            if self.skip_lf {
                let Some(&b) = buf.get(i) else { break };
                self.skip_lf = false;
                if b == b'\n' {
                    i += 1;
                    if !self.block.started {
                        block_start = i;
                    }
                    continue;
                }
            }
            let Some(len) = memchr::memchr2(b'\n', b'\r', &buf[i..]) else {
                break;
            };
            let line = &buf[i..i + len];
            self.skip_lf = buf[i + len] == b'\r';
            let end = i + len + 1;
            if !all_utf8 && std::str::from_utf8(line).is_err() {
                emit_plain(emit, &buf[run..block_start]);
                return Err(SseError::NotUtf8);
            }
            if len > 0 && end - block_start > self.max_event {
                emit_plain(emit, &buf[run..block_start]);
                return Err(self.too_large());
            }
            let line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
            i = end;
            if line.is_empty() {
                let block = std::mem::take(&mut self.block);
                if let Some(kind @ (Kind::Usage | Kind::Error | Kind::Receipt)) =
                    block.name.filter(|_| block.has_data)
                {
                    emit_plain(emit, &buf[run..block_start]);
                    emit(kind, &buf[block_start..end]);
                    run = end;
                }
                block_start = end;
            } else if line[0] == b':' {
                if !self.block.started {
                    block_start = end;
                }
            } else {
                self.block.started = true;
                let (field, value) = match memchr::memchr(b':', line) {
                    Some(c) => {
                        let v = &line[c + 1..];
                        (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                    }
                    None => (line, &[][..]),
                };
                match field {
                    b"data" => self.block.has_data = true,
                    b"event" => {
                        self.block.name = Some(if value == EVENT_USAGE.as_bytes() {
                            Kind::Usage
                        } else if value == EVENT_ERROR.as_bytes() {
                            Kind::Error
                        } else if value == EVENT_RECEIPT.as_bytes() {
                            Kind::Receipt
                        } else {
                            Kind::Plain
                        })
                    }
                    _ => {}
                }
            }
        }
        emit_plain(emit, &buf[run..block_start]);
        Ok(Scan {
            scanned: i,
            boundary: block_start,
        })
    }
}

fn emit_plain(emit: &mut impl FnMut(Kind, &[u8]), bytes: &[u8]) {
    if !bytes.is_empty() {
        emit(Kind::Plain, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Decoder, Event};
    use super::*;

    /// Feeds `chunks`; returns the runs emitted (or the error).
    fn split(s: &mut Splitter, chunks: &[&[u8]]) -> Result<Vec<(Kind, Vec<u8>)>, SseError> {
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |k, b| out.push((k, b.to_vec())))?;
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Vec<Event> {
        Decoder::default().feed(bytes).expect("decodes")
    }

    /// Runs of the same kind merged (the chunking decides where plain runs are cut).
    fn merged(runs: &[(Kind, Vec<u8>)]) -> Vec<(Kind, Vec<u8>)> {
        let mut out: Vec<(Kind, Vec<u8>)> = Vec::new();
        for (k, b) in runs {
            match out.last_mut() {
                Some((Kind::Plain, last)) if *k == Kind::Plain => last.extend_from_slice(b),
                _ => out.push((*k, b.clone())),
            }
        }
        out
    }

    const USAGE: &[u8] = b"event: cocoon-usage\ndata: {\"prompt_tokens\":3}\n\n";
    /// Ends at the `\r` of its blank line: the `\n` after it starts the next run.
    const ERROR: &[u8] = b"event:cocoon-error\r\ndata: {\"error\":1}\r\n\r";

    fn stream() -> Vec<u8> {
        [
            &b": hello\n\n"[..],
            b"data: {\"a\":1}\n\n",
            b"\xef\xbb\xbfdata: bom\n\n",
            b"event: other\ndata: x\nid: 7\n\n",
            b": keepalive\n",
            b"data: multi\ndata: line\r\n\r\n",
            // Named but without data: dispatches nothing.
            b"event: cocoon-usage\n\n",
            b"event: cocoon-usage \ndata: trailing space is another name\n\n",
            ERROR,
            b"\ndata: {\"b\":2}\r\r",
            USAGE,
            b"data: [DONE]\n\n",
        ]
        .concat()
    }

    fn expected() -> Vec<(Kind, Vec<u8>)> {
        let s = stream();
        let err_at = s.windows(ERROR.len()).position(|w| w == ERROR).unwrap();
        let usage_at = s.windows(USAGE.len()).position(|w| w == USAGE).unwrap();
        vec![
            (Kind::Plain, s[..err_at].to_vec()),
            (Kind::Error, ERROR.to_vec()),
            (Kind::Plain, s[err_at + ERROR.len()..usage_at].to_vec()),
            (Kind::Usage, USAGE.to_vec()),
            (Kind::Plain, s[usage_at + USAGE.len()..].to_vec()),
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let s = stream();
        let mut sp = Splitter::default();
        assert_eq!(split(&mut sp, &[&s]).unwrap(), expected());
        assert_eq!(sp.pending(), 0);
    }

    #[test]
    fn every_split_in_two_and_three_chunks_and_byte_by_byte() {
        let s = stream();
        let want = expected();
        for a in 0..=s.len() {
            let mut sp = Splitter::default();
            let got = split(&mut sp, &[&s[..a], &s[a..]]).unwrap();
            assert_eq!(merged(&got), want, "split at {a}");
            for b in (a..=s.len()).step_by(7) {
                let mut sp = Splitter::default();
                let got = split(&mut sp, &[&s[..a], &s[a..b], &s[b..]]).unwrap();
                assert_eq!(merged(&got), want, "split at {a}, {b}");
            }
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        let got = split(&mut Splitter::default(), &bytes).unwrap();
        assert_eq!(merged(&got), want);
    }

    #[test]
    fn runs_decode_like_the_stream() {
        let s = stream();
        let runs = split(&mut Splitter::default(), &[&s]).unwrap();
        let mut all = Vec::new();
        for (kind, bytes) in &runs {
            let evs = decode(bytes);
            let names: Vec<Option<&str>> = evs.iter().map(|e| e.name.as_deref()).collect();
            match kind {
                Kind::Usage => {
                    assert_eq!(
                        evs,
                        vec![Event::named("cocoon-usage", "{\"prompt_tokens\":3}")]
                    )
                }
                Kind::Error => assert_eq!(evs, vec![Event::named("cocoon-error", "{\"error\":1}")]),
                Kind::Receipt => assert_eq!(evs.len(), 1),
                Kind::Plain => {
                    assert!(!names.contains(&Some("cocoon-usage")), "{names:?}");
                    assert!(!names.contains(&Some("cocoon-error")), "{names:?}");
                }
            }
            all.extend(evs);
        }
        assert_eq!(all, decode(&s));
    }

    /// After any prefix of the runs, an appended event is decoded intact and alone.
    #[test]
    fn appended_event_starts_on_a_boundary_after_any_prefix() {
        let s = stream();
        let error = Event::named("cocoon-error", "{\"proxy\":1}");
        for cut in 0..=s.len() {
            let mut relayed = Vec::new();
            Splitter::default()
                .feed(&s[..cut], |_, b| relayed.extend_from_slice(b))
                .unwrap();
            assert!(s.starts_with(&relayed));
            let before = decode(&relayed);
            relayed.extend_from_slice(&error.encode());
            let mut after = decode(&relayed);
            assert_eq!(after.pop(), Some(error.clone()), "cut at {cut}");
            assert_eq!(after, before, "cut at {cut}");
        }
    }

    /// Differential check against the decoder on generated streams and chunkings.
    #[test]
    fn agrees_with_the_decoder_on_generated_streams() {
        let parts: [&[u8]; 14] = [
            b"data: x",
            b"data",
            b"event: cocoon-usage",
            b"event:cocoon-error",
            b"event: y",
            b": c",
            b"id: 1",
            b"\xef\xbb\xbf",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\n",
            b"data: \xc3\xa9",
            b"",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..2000 {
            let mut s = Vec::new();
            for _ in 0..next(40) {
                s.extend_from_slice(parts[next(parts.len())]);
            }
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < s.len() {
                let n = (1 + next(9)).min(s.len() - at);
                chunks.push(&s[at..at + n]);
                at += n;
            }
            let runs = split(&mut Splitter::default(), &chunks).unwrap();
            let relayed: Vec<u8> = runs.iter().flat_map(|(_, b)| b.clone()).collect();
            assert!(s.starts_with(&relayed));
            let want = decode(&s);
            assert_eq!(decode(&relayed), want, "{s:?}");
            let count = |name: &str| {
                want.iter()
                    .filter(|e| e.name.as_deref() == Some(name))
                    .count()
            };
            let kinds = |k: Kind| runs.iter().filter(|(x, _)| *x == k).count();
            assert_eq!(kinds(Kind::Usage), count("cocoon-usage"), "{s:?}");
            assert_eq!(kinds(Kind::Error), count("cocoon-error"), "{s:?}");
            for (k, b) in &runs {
                if *k != Kind::Plain {
                    assert_eq!(decode(b).len(), 1, "{s:?}");
                }
            }
        }
    }

    /// The property `fuzz/fuzz_targets/sse_decode.rs` checks, on a few fixed inputs.
    #[test]
    fn fuzz_property_on_fixed_inputs() {
        let inputs: [&[u8]; 4] = [
            &stream(),
            b"\x05data: a\r\n\r\nevent: cocoon-usage\ndata: {}\n\ndata: b",
            b"\x00data: \xff\n\n",
            b"\x03: only a comment\n:another\r",
        ];
        for data in inputs {
            let split = data.first().map(|b| *b as usize % 17 + 1).unwrap_or(1);
            let mut d = Decoder::new(4096);
            let decoded: Result<Vec<Event>, SseError> =
                data.chunks(split).try_fold(Vec::new(), |mut all, c| {
                    all.extend(d.feed(c)?);
                    Ok(all)
                });
            let mut s = Splitter::new(4096);
            let mut relayed = Vec::new();
            let split_ok = data
                .chunks(split)
                .all(|c| s.feed(c, |_, b| relayed.extend_from_slice(b)).is_ok());
            assert!(data.starts_with(&relayed));
            assert_eq!(split_ok, decoded.is_ok());
            if let (true, Ok(want)) = (split_ok, decoded) {
                assert_eq!(Decoder::new(1 << 20).feed(&relayed).unwrap(), want);
            }
        }
    }

    #[test]
    fn refuses_oversized_events_and_lines_and_bad_utf8() {
        // An event over the bound, whole in one chunk or carried across chunks.
        let mut sp = Splitter::new(16);
        let r = split(&mut sp, &[b"data: 0\n\ndata: 0123456789\ndata: 0123\n\n"]);
        assert_eq!(r, Err(SseError::TooLarge { limit: 16 }));
        let mut sp = Splitter::new(16);
        let mut got = Vec::new();
        let r = sp.feed(b"data: 0\n\ndata: 0123456", |_, b| got.extend_from_slice(b));
        assert_eq!(r, Ok(()));
        assert_eq!(got, b"data: 0\n\n");
        assert_eq!(sp.pending(), 13);
        assert_eq!(
            sp.feed(b"789\n", |_, _| unreachable!()),
            Err(SseError::TooLarge { limit: 16 })
        );
        // A line that never ends.
        let mut sp = Splitter::new(16);
        assert_eq!(
            sp.feed(&[b'x'; 17], |_, _| unreachable!()),
            Err(SseError::TooLarge { limit: 16 })
        );
        // Exactly at the bound is fine.
        let mut sp = Splitter::new(16);
        let mut got = Vec::new();
        sp.feed(b"data: 012345678\n\n", |_, b| got.extend_from_slice(b))
            .unwrap();
        assert_eq!(got, b"data: 012345678\n\n");
        // Not UTF-8: what came before is delivered, then the error.
        let mut sp = Splitter::default();
        let mut got = Vec::new();
        let r = sp.feed(b"data: a\n\ndata: \xff\n\n", |_, b| {
            got.extend_from_slice(b)
        });
        assert_eq!(r, Err(SseError::NotUtf8));
        assert_eq!(got, b"data: a\n\n");
    }
}
