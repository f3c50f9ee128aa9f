//! Relayed bytes waiting for the client connection: a frame made of one piece goes out as the
//! buffer it arrived in, without a copy; several are copied into one frame.

use bytes::{Bytes, BytesMut};

/// Room reserved when pieces start being joined (frames grow by events of a few hundred
/// bytes; what a frame leaves unused serves the next one).
const JOIN_CAPACITY: usize = 4 << 10;

/// Pieces of whole events, in order: the first as received, later ones copied after it.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    /// The only piece so far, not copied.
    first: Option<Bytes>,
    /// Two or more pieces, joined.
    joined: BytesMut,
}

impl Chunks {
    /// Total bytes queued.
    pub(super) fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        if self.is_empty() {
            self.first = Some(piece);
        } else {
            self.extend(&piece);
        }
    }

    /// Queues `part`: a slice of `chunk` without a copy when it is the first piece or
    /// continues the first piece within `chunk` (the usage event right after the events
    /// before it), else copied after the others.
    pub(super) fn push_from(&mut self, chunk: &Bytes, part: &[u8]) {
        if part.is_empty() {
            return;
        }
        let start = chunk.as_ptr() as usize;
        let within = |at: usize, len: usize| at >= start && at + len <= start + chunk.len();
        let at = part.as_ptr() as usize;
        if !within(at, part.len()) {
            return self.extend(part);
        }
        match &self.first {
            None if self.joined.is_empty() => self.first = Some(chunk.slice_ref(part)),
            // The first piece lies in `chunk` and ends where `part` begins: one longer slice.
            Some(first)
                if within(first.as_ptr() as usize, first.len())
                    && first.as_ptr() as usize + first.len() == at =>
            {
                let from = first.as_ptr() as usize - start;
                self.first = Some(chunk.slice(from..at - start + part.len()));
            }
            _ => self.extend(part),
        }
    }

    fn extend(&mut self, part: &[u8]) {
        if let Some(first) = self.first.take() {
            self.joined
                .reserve(JOIN_CAPACITY.max(first.len() + part.len()));
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(part);
    }

    /// Moves everything queued in `other` to the end of this queue.
    pub(super) fn append(&mut self, other: &mut Chunks) {
        if let Some(b) = other.take() {
            self.push(b);
        }
    }

    pub(super) fn clear(&mut self) {
        self.first = None;
        self.joined.clear();
    }

    /// Everything queued, as one buffer (`None` when empty).
    pub(super) fn take(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        (!self.joined.is_empty()).then(|| self.joined.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_piece_is_not_copied_several_are_joined() {
        let chunk = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let mut q = Chunks::default();
        assert_eq!(q.take(), None);
        q.push_from(&chunk, &chunk[..9]);
        assert_eq!(q.len(), 9);
        let one = q.take().unwrap();
        assert_eq!(one.as_ptr(), chunk.as_ptr());
        assert_eq!(&one[..], b"data: a\n\n");
        assert!(q.is_empty());

        let elsewhere = b"data: c\n\n".to_vec();
        q.push_from(&chunk, &chunk[9..]);
        q.push_from(&chunk, &elsewhere);
        q.push(Bytes::new());
        assert_eq!(q.len(), 18);
        let mut other = Chunks::default();
        other.push(Bytes::from_static(b"data: d\n\n"));
        q.append(&mut other);
        assert!(other.is_empty());
        assert_eq!(&q.take().unwrap()[..], b"data: b\n\ndata: c\n\ndata: d\n\n");
        assert_eq!(q.len(), 0);
        q.push(Bytes::from_static(b"x"));
        q.clear();
        assert_eq!(q.take(), None);

        // A first piece from outside the chunk (completed from earlier chunks) is copied.
        q.push_from(&chunk, &elsewhere);
        let copied = q.take().unwrap();
        assert_ne!(copied.as_ptr(), elsewhere.as_ptr());
        assert_eq!(&copied[..], b"data: c\n\n");
        assert_eq!(q.take(), None);
    }

    #[test]
    fn adjacent_pieces_of_one_chunk_stay_one_slice() {
        let chunk = Bytes::from_static(b"data: a\n\nevent: u\ndata: 1\n\ndata: b\n\n");
        let mut q = Chunks::default();
        q.push_from(&chunk, &chunk[..9]);
        q.push_from(&chunk, &chunk[9..27]);
        let joined = q.take().unwrap();
        assert_eq!(joined.as_ptr(), chunk.as_ptr(), "not copied");
        assert_eq!(&joined[..], &chunk[..27]);

        // Not adjacent (a piece skipped): copied, in order.
        q.push_from(&chunk, &chunk[..9]);
        q.push_from(&chunk, &chunk[27..]);
        assert_eq!(&q.take().unwrap()[..], b"data: a\n\ndata: b\n\n");

        // The same bytes in another chunk are not adjacent to the first piece.
        let other = chunk.clone().slice(9..);
        let copy = Bytes::copy_from_slice(&other);
        q.push_from(&chunk, &chunk[..9]);
        q.push_from(&copy, &copy[..18]);
        let joined = q.take().unwrap();
        assert_ne!(joined.as_ptr(), chunk.as_ptr());
        assert_eq!(&joined[..], &chunk[..27]);

        // After a copy, later adjacent pieces are appended to the copy.
        q.push_from(&chunk, &chunk[..9]);
        q.push_from(&copy, &copy[..18]);
        q.push_from(&chunk, &chunk[27..]);
        assert_eq!(
            &q.take().unwrap()[..],
            &[&chunk[..27], &chunk[27..]].concat()[..]
        );
    }
}
