//! The per-connection output queue: bytes the server owes a peer that its socket would not take
//! yet.
//!
//! This is where every blocking `Write` of the Go versions went. A Go handler that writes to a
//! peer whose receive window is full simply blocks; a single-threaded loop cannot, so what the
//! kernel refuses is kept here until the socket is writable again, and the connection stops
//! reading while the queue is over its limit (see `connection.rs`).
//!
//! The queue holds a list of chunks: bytes copied in (echo's leftovers) or shared,
//! reference-counted pieces (one broadcast line queued to many peers costs a pointer each, not a
//! copy). The writer takes them as `IoSlice`s for one vectored write. No I/O happens here.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

/// Bytes appended with [`OutQueue::push_copy`] are packed into owned chunks of up to this size,
/// so that many small leftovers do not become many tiny allocations and iovecs.
const OWNED_CHUNK: usize = 16 * 1024;

enum Chunk {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(r) => r,
        }
    }
}

/// FIFO of unsent bytes. An empty queue owns no heap memory.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// How much of the front chunk has already been written.
    front_sent: usize,
    /// Unsent bytes in total (what the `--max-buffer` limit is checked against).
    len: usize,
}

impl OutQueue {
    /// An empty queue (no allocation).
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Is nothing owed?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the queue costs in memory, roughly: its bytes plus one slot per chunk. Output limits
    /// are checked against this, so a queue of many tiny shared pieces (each of which costs a
    /// slot even though its bytes are shared) is bounded too.
    pub fn footprint(&self) -> usize {
        self.len + self.chunks.len() * std::mem::size_of::<Chunk>()
    }

    /// Append a copy of `data`.
    pub fn push_copy(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(Chunk::Owned(tail)) = self.chunks.back_mut()
            && tail.len() + data.len() <= OWNED_CHUNK
        {
            tail.extend_from_slice(data);
            return;
        }
        self.chunks.push_back(Chunk::Owned(data.to_vec()));
    }

    /// Append a shared piece without copying it.
    pub fn push_shared(&mut self, data: Rc<[u8]>) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        self.chunks.push_back(Chunk::Shared(data));
    }

    /// Fill `out` with slices of the queue's head, at most `max_bytes` in total, for one
    /// vectored write. Returns how many slices were filled (0 only if the queue is empty or
    /// `max_bytes` is 0).
    pub fn io_slices<'a>(&'a self, max_bytes: usize, out: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        let mut budget = max_bytes;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if filled == out.len() || budget == 0 {
                break;
            }
            let mut bytes = chunk.bytes();
            if i == 0 {
                bytes = &bytes[self.front_sent..];
            }
            let take = bytes.len().min(budget);
            out[filled] = IoSlice::new(&bytes[..take]);
            filled += 1;
            budget -= take;
        }
        filled
    }

    /// Drop `n` bytes from the head: the kernel accepted them.
    pub fn consume(&mut self, mut n: usize) {
        assert!(n <= self.len, "consumed more than queued");
        self.len -= n;
        while n > 0 {
            let front_left = self.chunks[0].bytes().len() - self.front_sent;
            if n < front_left {
                self.front_sent += n;
                return;
            }
            n -= front_left;
            self.chunks.pop_front();
            self.front_sent = 0;
        }
        if self.len == 0 {
            // Give the deque's buffer back: an idle connection owns no buffers.
            self.chunks = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the queue would write, in order, by draining it through `io_slices`.
    fn drain(q: &mut OutQueue, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !q.is_empty() {
            let mut slices = [IoSlice::new(&[]); 4];
            let n = q.io_slices(step, &mut slices);
            assert!(n > 0);
            let mut taken = 0;
            for s in &slices[..n] {
                out.extend_from_slice(s);
                taken += s.len();
            }
            assert!(taken <= step);
            q.consume(taken);
        }
        out
    }

    #[test]
    fn test_empty_queue_owns_nothing() {
        let q = OutQueue::new();
        assert!(q.is_empty());
        assert_eq!(q.chunks.capacity(), 0);
    }

    #[test]
    fn test_bytes_come_out_in_order_across_chunk_kinds() {
        let mut q = OutQueue::new();
        q.push_copy(b"hello ");
        q.push_shared(Rc::from(&b"shared "[..]));
        q.push_copy(b"world");
        assert_eq!(q.len(), 18);
        assert_eq!(drain(&mut q, 5), b"hello shared world");
        assert_eq!(q.chunks.capacity(), 0, "drained queue frees its buffer");
    }

    #[test]
    fn test_small_copies_are_packed_into_one_chunk() {
        let mut q = OutQueue::new();
        for _ in 0..100 {
            q.push_copy(b"0123456789");
        }
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.len(), 1000);
    }

    #[test]
    fn test_partial_consume_keeps_the_rest() {
        let mut q = OutQueue::new();
        q.push_copy(&[1; 10]);
        q.push_shared(Rc::from(&[2u8; 10][..]));
        q.consume(13);
        assert_eq!(q.len(), 7);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(q.io_slices(usize::MAX, &mut slices), 1);
        assert_eq!(&*slices[0], &[2; 7]);
    }

    #[test]
    fn test_io_slices_respect_the_byte_budget_and_slice_count() {
        let mut q = OutQueue::new();
        for i in 0..10u8 {
            q.push_shared(Rc::from(&[i; 100][..]));
        }
        let mut slices = [IoSlice::new(&[]); 3];
        assert_eq!(q.io_slices(usize::MAX, &mut slices), 3);
        assert_eq!(q.io_slices(150, &mut slices), 2);
        assert_eq!(slices[1].len(), 50);
        assert_eq!(q.io_slices(0, &mut slices), 0);
    }

    #[test]
    fn test_shared_pieces_are_not_copied() {
        let line: Rc<[u8]> = Rc::from(&b"line\n"[..]);
        let mut a = OutQueue::new();
        let mut b = OutQueue::new();
        a.push_shared(line.clone());
        b.push_shared(line.clone());
        assert_eq!(Rc::strong_count(&line), 3);
        a.consume(5);
        assert_eq!(Rc::strong_count(&line), 2);
    }

    #[test]
    #[should_panic(expected = "consumed more than queued")]
    fn test_consuming_more_than_queued_is_a_bug() {
        let mut q = OutQueue::new();
        q.push_copy(b"ab");
        q.consume(3);
    }
}
