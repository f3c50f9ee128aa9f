//! One HTTP/2 DATA frame for whatever output of a stream is ready.
//!
//! A worker's generation hands its output to the response body one event at a time. When the model
//! runs at its usual speed each event is alone and goes out as it comes. When several are
//! already waiting (a fast model, a batch of completions, a reader that fell behind), a body
//! sends them in one frame instead of one frame each: the proxy's HTTP/2 bookkeeping per
//! received frame is most of its cost per relayed token at high rates (docs/performance.md).
//! Nothing waits to fill a frame: only what is already queued is gathered.

use bytes::{Bytes, BytesMut};

/// Bytes gathered into one frame at most (before the event that crosses it): HTTP/2's
/// default maximum frame size, so a gathered frame is still one frame on the wire.
pub const FRAME_TARGET: usize = 16 << 10;

/// `first`, followed by what `ready` yields (without waiting: it returns `None` when nothing
/// more is queued) while the frame is below [`FRAME_TARGET`].
pub fn gather(first: Bytes, mut ready: impl FnMut() -> Option<Bytes>) -> Bytes {
    if first.len() >= FRAME_TARGET {
        return first;
    }
    let Some(second) = ready() else {
        return first;
    };
    let mut buf = BytesMut::with_capacity((first.len() + second.len()).max(1024));
    buf.extend_from_slice(&first);
    buf.extend_from_slice(&second);
    while buf.len() < FRAME_TARGET {
        match ready() {
            Some(b) => buf.extend_from_slice(&b),
            None => break,
        }
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(parts: Vec<&'static [u8]>) -> impl FnMut() -> Option<Bytes> {
        let mut it = parts.into_iter();
        move || it.next().map(Bytes::from_static)
    }

    #[test]
    fn a_lone_event_is_passed_on_as_it_is() {
        let first = Bytes::from_static(b"data: 1\n\n");
        let out = gather(first.clone(), source(vec![]));
        assert_eq!(out, first);
        // The very buffer, not a copy.
        assert_eq!(out.as_ptr(), first.as_ptr());
    }

    #[test]
    fn ready_events_are_joined_in_order() {
        let out = gather(
            Bytes::from_static(b"a\n\n"),
            source(vec![b"b\n\n", b": keepalive\n\n", b"c\n\n"]),
        );
        assert_eq!(&out[..], b"a\n\nb\n\n: keepalive\n\nc\n\n");
    }

    #[test]
    fn gathering_stops_at_the_frame_target_and_leaves_the_rest_queued() {
        let part: &'static [u8] = &[b'x'; 1000];
        let mut calls = 0;
        let out = gather(Bytes::from_static(part), || {
            calls += 1;
            Some(Bytes::from_static(part))
        });
        // 17 parts cross 16 KiB; nothing beyond the crossing one was taken.
        assert_eq!(out.len(), 17_000);
        assert_eq!(calls, 16);
        let big = Bytes::from(vec![0u8; FRAME_TARGET]);
        let out = gather(big.clone(), || panic!("a full frame takes nothing more"));
        assert_eq!(out, big);
    }
}
