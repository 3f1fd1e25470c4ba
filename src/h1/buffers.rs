//! Connection buffers, shared: a connection takes one when bytes arrive and gives it back as
//! soon as it is idle again, so an idle connection holds none (nginx's way; hyper keeps its
//! buffers for the connection's life). A lock-free queue; a buffer taken from an empty one is
//! allocated.

use std::sync::LazyLock;

use crossbeam_queue::ArrayQueue;

use super::head::Field;

/// A client connection's buffer (a head larger than this grows it, up to
/// `server.max_header_bytes`; a grown buffer is not kept).
pub const CLIENT: usize = 4 * 1024;

/// The buffer an upstream's answer is read into, and its body relayed through.
pub const UPSTREAM: usize = 16 * 1024;

/// Buffers kept for reuse, at most (each with its upstream buffer once it has forwarded).
const KEPT: usize = 64;

/// The buffer a large response body is read through, lent for the response (four times
/// [`UPSTREAM`]: fewer reads and writes a response).
pub const LARGE: usize = 4 * UPSTREAM;

/// Large buffers kept for reuse, at most: 1 MiB.
const LARGE_KEPT: usize = 16;

static LARGE_BUFS: LazyLock<ArrayQueue<Vec<u8>>> = LazyLock::new(|| ArrayQueue::new(LARGE_KEPT));

/// Buffers kept for the upstream exchanges of requests that came through hyper's server
/// (HTTP/2 streams, TLS clients), at most: one is in use per stream in flight, and an HTTP/2
/// client has many in flight at once. About 5.5 KB each, so at most 1.4 MB kept.
const STREAM_KEPT: usize = 256;

/// A read buffer, the spans of the head parsed from it, and a scratch for heads written.
pub struct Buf {
    pub data: Vec<u8>,
    /// Unconsumed bytes are `data[start..end]`.
    pub start: usize,
    pub end: usize,
    pub fields: Vec<Field>,
    pub out: Vec<u8>,
    /// The size it was made with (it is not kept if it grew).
    size: usize,
    /// The buffer the upstream's answer is read into, kept with this one (one pool round trip
    /// a request instead of two).
    upstream: Option<Box<Buf>>,
    /// Its own bytes while a large buffer is lent to it ([`Buf::lend_large`]).
    own: Option<Vec<u8>>,
}

impl Buf {
    fn new(size: usize) -> Self {
        Self {
            data: vec![0; size],
            size,
            start: 0,
            end: 0,
            fields: Vec::with_capacity(32),
            out: Vec::with_capacity(1024),
            upstream: None,
            own: None,
        }
    }

    /// The upstream buffer, empty.
    pub fn take_upstream(&mut self) -> Box<Buf> {
        self.upstream
            .take()
            .unwrap_or_else(|| Box::new(Buf::new(UPSTREAM)))
    }

    /// Gives the upstream buffer back (emptied; an outgrown one is dropped).
    pub fn give_upstream(&mut self, mut u: Box<Buf>) {
        if u.reset() {
            self.upstream = Some(u);
        }
    }

    /// Empties the buffer for reuse; false if it outgrew its size.
    fn reset(&mut self) -> bool {
        if let Some(own) = self.own.take() {
            let large = std::mem::replace(&mut self.data, own);
            let _ = LARGE_BUFS.push(large);
        }
        if self.data.len() != self.size
            || self.out.capacity() > 4 * UPSTREAM
            || self.fields.capacity() > 512
        {
            return false;
        }
        self.start = 0;
        self.end = 0;
        self.fields.clear();
        self.out.clear();
        true
    }

    /// The bytes read and not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Reads through a [`LARGE`] buffer from now on, if empty: one kept for reuse (no
    /// allocation, nothing zeroed) or a new one. It goes back when this buffer is given back.
    pub fn lend_large(&mut self) {
        if self.is_empty() && self.own.is_none() && self.data.len() < LARGE {
            let large = LARGE_BUFS.pop().unwrap_or_else(|| vec![0; LARGE]);
            self.own = Some(std::mem::replace(&mut self.data, large));
        }
    }

    /// Whether the last read filled the buffer to its end (the socket may hold more).
    pub fn is_full(&self) -> bool {
        self.end == self.data.len()
    }

    /// Consumes `n` pending bytes.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into, after moving pending bytes to the front when the room is short;
    /// grown up to `max` if there is none.
    pub fn room(&mut self, max: usize) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < max {
            let to = (self.data.len() * 2).min(max);
            self.data.resize(to, 0);
        }
        &mut self.data[self.end..]
    }

    /// `n` bytes were read into the room.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }
}

static KEPT_BUFS: LazyLock<ArrayQueue<Box<Buf>>> = LazyLock::new(|| ArrayQueue::new(KEPT));

/// A buffer, empty.
pub fn take() -> Box<Buf> {
    take_from(&KEPT_BUFS)
}

/// Gives a buffer back (an outgrown one is dropped).
pub fn give(b: Box<Buf>) {
    give_to(&KEPT_BUFS, b);
}

fn take_from(kept: &ArrayQueue<Box<Buf>>) -> Box<Buf> {
    kept.pop().unwrap_or_else(|| Box::new(Buf::new(CLIENT)))
}

fn give_to(kept: &ArrayQueue<Box<Buf>>, mut b: Box<Buf>) {
    if b.reset() {
        let _ = kept.push(b);
    }
}

static STREAM_BUFS: LazyLock<ArrayQueue<Box<Buf>>> = LazyLock::new(|| ArrayQueue::new(STREAM_KEPT));

/// A buffer for one stream's upstream exchange, empty.
pub fn take_for_stream() -> Box<Buf> {
    take_from(&STREAM_BUFS)
}

/// Gives a stream's buffer back (an outgrown one is dropped).
pub fn give_for_stream(b: Box<Buf>) {
    give_to(&STREAM_BUFS, b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_moves_pending_bytes_forward_then_grows() {
        const SIZE: usize = CLIENT;
        let mut b = Buf::new(SIZE);
        let n = b.room(SIZE).len();
        assert_eq!(n, SIZE);
        b.filled(SIZE);
        b.consume(10);
        assert_eq!(b.room(SIZE).len(), 10);
        assert_eq!(b.pending().len(), SIZE - 10);
        b.filled(10);
        assert_eq!(b.room(2 * SIZE).len(), SIZE);
        assert_eq!(b.room(2 * SIZE).len(), SIZE, "grown once");
        b.consume(usize::MAX);
        assert!(b.is_empty());
        assert_eq!((b.start, b.end), (0, 0));
    }

    #[test]
    fn a_large_buffer_is_lent_while_empty_and_goes_back_when_the_buffer_does() {
        let mut b = Buf::new(UPSTREAM);
        b.filled(5);
        b.lend_large();
        assert_eq!(b.data.len(), UPSTREAM, "not while bytes are pending");
        b.consume(5);
        b.lend_large();
        assert_eq!(b.room(UPSTREAM).len(), LARGE);
        b.filled(LARGE);
        assert!(b.is_full());
        // Given back: its own buffer again, kept for reuse (the large one goes to its pool).
        assert!(b.reset());
        assert_eq!((b.data.len(), b.pending().len()), (UPSTREAM, 0));
        assert!(b.own.is_none());
        b.lend_large();
        assert_eq!(b.data.len(), LARGE);
        assert!(b.reset());
        assert_eq!(b.data.len(), UPSTREAM);
    }
}
