//! The hash that confirms a file transfer, per byte: BLAKE3 (the `blake3` crate, SIMD) against
//! SHA-256 (the `sha2` crate, which uses the CPU's SHA extensions when it has them).
//!
//! `cargo bench --bench hash` prints, for each algorithm and slice size, the time per call and
//! the throughput. The slice sizes are the ones the two ends feed the hasher: the server's reads
//! (up to 64 KiB) and the sender's chunks (256 KiB).

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use resound::digest::{Algorithm, Hasher};

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [4 << 10, 64 << 10, 256 << 10];

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

/// Hash one slice into a running state (the per-read cost; finalisation excluded).
#[divan::bench(args = SIZES)]
fn blake3_update(bencher: Bencher, size: usize) {
    update(bencher, Algorithm::Blake3, size);
}

#[divan::bench(args = SIZES)]
fn sha256_update(bencher: Bencher, size: usize) {
    update(bencher, Algorithm::Sha256, size);
}

fn update(bencher: Bencher, algorithm: Algorithm, size: usize) {
    let buf = data(size);
    let mut h = Hasher::new(algorithm);
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| h.update(black_box(&buf)));
}
