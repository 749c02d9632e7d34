//! The per-connection output queue: bytes the server owes a peer that its socket would not take
//! yet.
//!
//! This is where every blocking `Write` of the Go versions went. A Go handler that writes to a
//! peer whose receive window is full simply blocks; a single-threaded loop cannot, so what the
//! kernel refuses is kept here until the socket is writable again, and the connection stops
//! reading while the queue is over its limit (see `connection.rs`).
//!
//! The queue holds a list of chunks: bytes copied in (echo's leftovers, small broadcast lines)
//! or shared, reference-counted payloads (one large broadcast batch queued to many peers costs
//! a pointer each, not a copy). The writer takes them as `IoSlice`s for one vectored write. The
//! queue also knows what it costs in memory, for the per-client output limits and the
//! server-wide `--max-memory` budget. No I/O happens here.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

/// Bytes appended with [`OutQueue::push_copy`] are packed into owned chunks of up to this size,
/// so that many small leftovers do not become many tiny allocations and iovecs.
const OWNED_CHUNK: usize = 16 * 1024;

/// Shared payloads up to this size are copied into the queue instead of referenced. A
/// reference costs a queue slot (32 bytes) plus a reference count per recipient whatever the
/// payload's size, so a flood of one-byte lines would cost each recipient 32 bytes per byte —
/// Redis copies small replies into a per-client buffer for the same reason. Copying a line of
/// a few hundred bytes costs about as much as taking a reference; past that, sharing wins.
pub const COPY_BELOW: usize = 512;

/// The live bytes of every [`Payload`] of one server, counted once however many queues hold
/// them: part of what `--max-memory` bounds.
pub type Ledger = Rc<Cell<usize>>;

/// Bytes queued by reference to many peers (a broadcast batch). While any queue holds it, its
/// length is counted once in its [`Ledger`]; the last reference to go takes it off.
pub struct Payload {
    bytes: Rc<[u8]>,
    ledger: Ledger,
}

impl Payload {
    /// Account for `bytes` in `ledger` until the payload is dropped.
    pub fn new(bytes: Rc<[u8]>, ledger: &Ledger) -> Payload {
        ledger.set(ledger.get() + bytes.len());
        Payload {
            bytes,
            ledger: ledger.clone(),
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        self.ledger.set(self.ledger.get() - self.bytes.len());
    }
}

enum Chunk {
    Owned(Vec<u8>),
    Shared(Rc<Payload>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(p) => p.bytes(),
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
    /// Heap bytes the owned chunks hold (their capacity, not just their length).
    owned: usize,
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

    /// What the queue costs this peer, roughly: its bytes (shared ones included) plus one slot
    /// per chunk. Per-client output limits are checked against this, so a queue of many tiny
    /// shared pieces is bounded too.
    pub fn footprint(&self) -> usize {
        self.len + self.chunks.len() * std::mem::size_of::<Chunk>()
    }

    /// Heap memory this queue alone holds: owned chunks (by capacity) and its slots, but not
    /// shared payloads, which are counted once in their [`Ledger`]. What `--max-memory` adds
    /// up.
    pub fn pinned(&self) -> usize {
        self.owned + self.chunks.capacity() * std::mem::size_of::<Chunk>()
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
            let before = tail.capacity();
            tail.extend_from_slice(data);
            self.owned += tail.capacity() - before;
            return;
        }
        let chunk = data.to_vec();
        self.owned += chunk.capacity();
        self.chunks.push_back(Chunk::Owned(chunk));
    }

    /// Append a shared payload: by reference, or copied if it is small (see [`COPY_BELOW`]).
    pub fn push_shared(&mut self, payload: &Rc<Payload>) {
        let bytes = payload.bytes();
        if bytes.len() <= COPY_BELOW {
            self.push_copy(bytes);
            return;
        }
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Shared(payload.clone()));
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
            if let Some(Chunk::Owned(v)) = self.chunks.pop_front() {
                self.owned -= v.capacity();
            }
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

    fn payload(bytes: &[u8], ledger: &Ledger) -> Rc<Payload> {
        Rc::new(Payload::new(Rc::from(bytes), ledger))
    }

    #[test]
    fn test_bytes_come_out_in_order_across_chunk_kinds() {
        let ledger = Ledger::default();
        let big = vec![b's'; COPY_BELOW + 1];
        let mut q = OutQueue::new();
        q.push_copy(b"hello ");
        q.push_shared(&payload(&big, &ledger));
        q.push_copy(b"world");
        assert_eq!(q.len(), 11 + big.len());
        let mut want = b"hello ".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"world");
        assert_eq!(drain(&mut q, 5), want);
        assert_eq!(q.chunks.capacity(), 0, "drained queue frees its buffer");
        assert_eq!(q.pinned(), 0);
        assert_eq!(
            ledger.get(),
            0,
            "the payload is gone with its last reference"
        );
    }

    #[test]
    fn test_small_shared_payloads_are_copied_not_referenced() {
        let ledger = Ledger::default();
        let mut q = OutQueue::new();
        for _ in 0..1000 {
            q.push_shared(&payload(b"\n", &ledger));
        }
        assert_eq!(
            q.chunks.len(),
            1,
            "a thousand one-byte lines cost one chunk, not 1000 slots"
        );
        assert_eq!(q.len(), 1000);
        assert_eq!(ledger.get(), 0, "nothing shared is kept");
        assert!(q.pinned() < 4096, "pinned {}", q.pinned());
    }

    #[test]
    fn test_a_large_payload_is_counted_once_however_many_queues_hold_it() {
        let ledger = Ledger::default();
        let p = payload(&vec![1; 10_000], &ledger);
        let mut queues: Vec<OutQueue> = (0..100).map(|_| OutQueue::new()).collect();
        for q in &mut queues {
            q.push_shared(&p);
        }
        drop(p);
        assert_eq!(ledger.get(), 10_000);
        for q in &queues {
            assert_eq!(q.footprint(), 10_000 + std::mem::size_of::<Chunk>());
            assert!(q.pinned() < 1000, "the payload is not pinned per queue");
        }
        for q in &mut queues[..99] {
            q.consume(10_000);
        }
        assert_eq!(ledger.get(), 10_000, "one queue still holds it");
        queues[99].consume(10_000);
        assert_eq!(ledger.get(), 0);
    }

    #[test]
    fn test_pinned_follows_owned_memory_up_and_down() {
        let mut q = OutQueue::new();
        q.push_copy(&[0; 40_000]);
        q.push_copy(&[0; 100]);
        assert!(q.pinned() >= 40_100);
        q.consume(40_000);
        assert!(q.pinned() >= 100 && q.pinned() < 40_000, "{}", q.pinned());
        q.consume(100);
        assert_eq!(q.pinned(), 0);
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
        let ledger = Ledger::default();
        let mut q = OutQueue::new();
        q.push_copy(&[1; 10]);
        q.push_shared(&payload(&[2u8; 1000], &ledger));
        q.consume(13);
        assert_eq!(q.len(), 997);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(q.io_slices(usize::MAX, &mut slices), 1);
        assert_eq!(&*slices[0], &[2; 997]);
    }

    #[test]
    fn test_io_slices_respect_the_byte_budget_and_slice_count() {
        let ledger = Ledger::default();
        let mut q = OutQueue::new();
        for i in 0..10u8 {
            q.push_shared(&payload(&[i; 1000], &ledger));
        }
        let mut slices = [IoSlice::new(&[]); 3];
        assert_eq!(q.io_slices(usize::MAX, &mut slices), 3);
        assert_eq!(q.io_slices(1500, &mut slices), 2);
        assert_eq!(slices[1].len(), 500);
        assert_eq!(q.io_slices(0, &mut slices), 0);
    }

    #[test]
    #[should_panic(expected = "consumed more than queued")]
    fn test_consuming_more_than_queued_is_a_bug() {
        let mut q = OutQueue::new();
        q.push_copy(b"ab");
        q.consume(3);
    }
}
