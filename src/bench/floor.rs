//! The memory-bandwidth floor, measured in the same process as the kernels it bounds: a copy
//! (`dst = src`) and an in-place axpy (`y = a·x + y`) over f32 buffers, on one thread or split
//! over several, each returning the time it took. For buffers beyond the last-level cache an
//! optimizer step cannot beat `bytes it moves / bandwidth` (DESIGN, "Performance model").
//!
//! Axpy is the floor to compare in-place kernels with: like an optimizer step it reads
//! buffers and writes some of them back in place, with ordinary stores. Copy is the system's
//! `memcpy`, which may use non-temporal stores on large buffers and so skip the read that an
//! ordinary store incurs; its 8 B per element are the bytes the program asks for.
//!
//! ```
//! use optjit::bench::floor::{self, Floor};
//!
//! let (x, mut y) = (vec![2.0f32; 1000], vec![1.0f32; 1000]);
//! let time = floor::axpy(0.5, &x, &mut y, 2).unwrap();
//! assert!(y.iter().all(|&y| y == 2.0));
//! let bandwidth = Floor::Axpy.bytes_per_second(y.len(), time); // 12 B per element
//! assert!(bandwidth > 0.0);
//! ```

use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Elements per chunk boundary when a buffer is split over threads: 64 bytes of f32, so that no
/// two threads write the same cache line.
const CHUNK_ALIGN: usize = 16;

/// The floor kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Floor {
    /// `dst = src` ([`copy`]).
    Copy,
    /// `y = a·x + y` ([`axpy`]).
    Axpy,
    /// `Σ x²`, reading only ([`read`]): what an extra read-only pass over one stream costs,
    /// such as a gradient norm before the update.
    Read,
}

impl Floor {
    /// Every kernel.
    pub const ALL: [Floor; 3] = [Floor::Copy, Floor::Axpy, Floor::Read];

    /// `"copy"`, `"axpy"` or `"read"`.
    pub fn name(self) -> &'static str {
        match self {
            Floor::Copy => "copy",
            Floor::Axpy => "axpy",
            Floor::Read => "read",
        }
    }

    /// Bytes moved per f32 element: copy reads one and writes one (8 B); axpy reads `x` and
    /// `y` and writes `y` (12 B); read reads one (4 B).
    pub fn bytes_per_element(self) -> usize {
        match self {
            Floor::Copy => 8,
            Floor::Axpy => 12,
            Floor::Read => 4,
        }
    }

    /// The bandwidth achieved, in bytes per second, by a run over `n` elements that took
    /// `time` (infinite for a zero time).
    pub fn bytes_per_second(self, n: usize, time: Duration) -> f64 {
        (self.bytes_per_element() * n) as f64 / time.as_secs_f64()
    }
}

/// Copies `src` into `dst` on `threads` threads (1: the calling thread) and returns the time
/// taken.
///
/// Errors: `dst` and `src` of different lengths, or no thread.
pub fn copy(dst: &mut [f32], src: &[f32], threads: usize) -> Result<Duration> {
    check(dst.len(), src.len(), "src", threads)?;
    let chunk = chunk_len(dst.len(), threads);
    let pieces = dst.chunks_mut(chunk).zip(src.chunks(chunk));
    Ok(timed_split(pieces, |(d, s)| d.copy_from_slice(s)))
}

/// Computes `y = a·x + y` (rounded after the product and after the sum, never fused) on
/// `threads` threads (1: the calling thread) and returns the time taken.
///
/// Errors: `x` and `y` of different lengths, or no thread.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32], threads: usize) -> Result<Duration> {
    check(y.len(), x.len(), "x", threads)?;
    let chunk = chunk_len(y.len(), threads);
    Ok(timed_split(
        y.chunks_mut(chunk).zip(x.chunks(chunk)),
        |(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y += a * x;
            }
        },
    ))
}

/// Computes `Σ x²` on `threads` threads (1: the calling thread), with 16 accumulators per
/// thread as a reduction's lanes, and returns the time taken.
///
/// Errors: no thread.
pub fn read(x: &[f32], threads: usize) -> Result<Duration> {
    check(x.len(), x.len(), "x", threads)?;
    Ok(timed_split(x.chunks(chunk_len(x.len(), threads)), |x| {
        std::hint::black_box(sum_squares(x));
    }))
}

/// `Σ x²` as [`read`] computes each thread's share: element `j` into accumulator `j % 16`,
/// then the accumulators and the tail in order.
pub fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let blocks = x.chunks_exact(16);
    let tail: f32 = blocks.remainder().iter().map(|v| v * v).sum();
    for block in blocks {
        for (a, &v) in acc.iter_mut().zip(block) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Elements per thread when `len` is split over `threads`: whole 64-byte lines, at least one.
fn chunk_len(len: usize, threads: usize) -> usize {
    match threads {
        1 => len.max(1),
        _ => len
            .div_ceil(threads)
            .next_multiple_of(CHUNK_ALIGN)
            .max(CHUNK_ALIGN),
    }
}

/// The checks shared by the kernels: `other` (named `what`) as long as the written buffer,
/// at least one thread.
fn check(len: usize, other: usize, what: &str, threads: usize) -> Result<()> {
    if other != len {
        return Err(Error::LengthMismatch {
            what: what.into(),
            expected: len,
            actual: other,
        });
    }
    if threads == 0 {
        return Err(Error::InvalidOption {
            option: "threads",
            reason: "at least one thread is needed",
        });
    }
    Ok(())
}

/// Runs `work` on each of `pieces`, one thread per piece (the calling thread when there is
/// one), and returns the time from the first piece's start to the last one's end. The
/// threads are started first and released together by a spinning barrier, so neither their
/// start-up nor a sleeping thread's wake-up is counted.
fn timed_split<W: Send>(
    pieces: impl ExactSizeIterator<Item = W>,
    work: impl Fn(W) + Sync,
) -> Duration {
    if pieces.len() <= 1 {
        let start = Instant::now();
        pieces.for_each(&work);
        return start.elapsed();
    }
    let waiting = AtomicUsize::new(pieces.len());
    let (waiting, work) = (&waiting, &work);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .map(|piece| {
                scope.spawn(move || {
                    spin_barrier(waiting);
                    let start = Instant::now();
                    work(piece);
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let first = spans.iter().map(|s| s.0).min();
    let last = spans.iter().map(|s| s.1).max();
    match (first, last) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    }
}

/// Counts `waiting` down and returns once every thread has: spinning, so that all leave within
/// a fraction of a microsecond, and yielding after a while in case there are more threads than
/// cores.
fn spin_barrier(waiting: &AtomicUsize) {
    waiting.fetch_sub(1, Ordering::AcqRel);
    let mut spins = 0u32;
    while waiting.load(Ordering::Acquire) != 0 {
        if spins < 1 << 16 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
