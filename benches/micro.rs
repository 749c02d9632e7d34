//! Micro-benchmarks of the hot pure functions: the server's output queue and the load
//! generator's per-message work (stream check, line codec, sequence check, histogram).
//!
//! `cargo bench --bench micro` (divan prints a table: fastest, slowest, median, mean per call).
//! These measure nanoseconds on a shared VM: read them as relative costs, and compare runs made
//! one after the other.

use std::io::IoSlice;
use std::time::Duration;

use divan::{Bencher, black_box};
use resound::bench::histogram::Latency;
use resound::bench::line::{self, Filler, SeqTrack};
use resound::bench::payload::{Pattern, phase_of};
use resound::outqueue::OutQueue;

fn main() {
    divan::main();
}

/// The server's write path when a socket refuses part of a write: queue the rest, build the
/// iovecs for `writev`, drop what was written.
#[divan::bench(args = [64, 1024, 16384])]
fn outqueue_push_slices_consume(bencher: Bencher, size: usize) {
    let data = vec![7u8; size];
    bencher.bench_local(|| {
        let mut q = OutQueue::new();
        for _ in 0..16 {
            q.push_copy(black_box(&data));
        }
        while !q.is_empty() {
            // A socket that takes half of what is offered each time.
            let offered = {
                let mut slices = [IoSlice::new(&[]); 64];
                let n = q.io_slices(64 * 1024, &mut slices);
                slices[..n].iter().map(|s| s.len()).sum::<usize>()
            };
            q.consume(offered / 2 + 1);
        }
        q
    });
}

/// Checking one echoed 64-byte message against the stream.
#[divan::bench]
fn echo_check_64(bencher: Bencher) {
    let p = Pattern::new();
    let base = phase_of(7);
    let got = p.slice(base, 1000, 64).to_vec();
    bencher.bench_local(|| p.matches(black_box(base), black_box(1000), black_box(&got)));
}

#[divan::bench]
fn line_encode_64(bencher: Bencher) {
    let f = Filler::new(&Pattern::new());
    let mut out = Vec::with_capacity(64);
    let mut seq = 0u64;
    bencher.bench_local(|| {
        out.clear();
        seq += 1;
        line::encode(&f, 1, black_box(seq), 123_456_789, 64, &mut out);
    });
}

#[divan::bench]
fn line_decode_64(bencher: Bencher) {
    let f = Filler::new(&Pattern::new());
    let mut l = Vec::new();
    line::encode(&f, 1, 42, 123_456_789, 64, &mut l);
    bencher.bench_local(|| line::decode(&f, black_box(&l[..63]), 64));
}

#[divan::bench]
fn seq_track_in_order(bencher: Bencher) {
    let mut t = SeqTrack::default();
    let mut seq = 0u64;
    bencher.bench_local(|| {
        let o = t.observe(black_box(seq));
        seq += 1;
        o
    });
}

#[divan::bench]
fn histogram_record(bencher: Bencher) {
    let mut h = Latency::new();
    let mut us = 0u64;
    bencher.bench_local(|| {
        us = (us + 37) % 5000;
        h.record(black_box(Duration::from_micros(us)));
    });
}

/// Merging one worker's histogram into the total (once per worker per second for progress).
#[divan::bench]
fn histogram_merge(bencher: Bencher) {
    let mut a = Latency::new();
    let mut b = Latency::new();
    for us in 0..10_000 {
        b.record(Duration::from_micros(us));
    }
    bencher.bench_local(|| a.merge(black_box(&b)));
}
