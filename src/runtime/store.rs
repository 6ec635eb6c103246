//! Flat, aligned storage for the parameters, gradients and element state of one
//! (group, dtype): every tensor is a range of one buffer per stream, each range starting on a
//! 64-byte boundary, so a whole group is a few long streams.

use crate::Float;

/// Bytes every range starts on.
pub(crate) const ALIGN: usize = 64;

/// Bytes between the starts of consecutive streams, modulo the page size: 25 cache lines,
/// not a power of two.
pub(crate) const STAGGER: usize = 25 * ALIGN;

/// A buffer whose element `0` sits on an [`ALIGN`]-byte boundary (a `Vec` with a skipped
/// prefix; no custom allocation).
#[derive(Clone, Debug, Default)]
pub(crate) struct AlignedBuf<T> {
    data: Vec<T>,
    start: usize,
    len: usize,
    /// Which stream of its store it is (sets the stagger).
    stream: usize,
}

impl<T: Float> AlignedBuf<T> {
    /// `len` copies of `value`, starting [`STAGGER`] bytes times `stream` after an aligned
    /// address, so that the streams of one kernel do not all sit at the same offset within
    /// a page (large allocations all start on a page boundary, and streams a power of two
    /// apart contend for the same cache sets: up to 9× slower at 2^26 elements).
    pub(crate) fn filled(len: usize, value: T, stream: usize) -> Self {
        let size = std::mem::size_of::<T>();
        let pad = ALIGN / size + stream * STAGGER / size;
        let data = vec![value; len + pad];
        let misalign = (data.as_ptr() as usize % ALIGN) / size;
        let start = (ALIGN / size - misalign) % (ALIGN / size) + stream * STAGGER / size;
        AlignedBuf {
            data,
            start,
            len,
            stream,
        }
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        &self.data[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data[self.start..self.start + self.len]
    }

    /// Grows (or shrinks) to `len` elements, keeping the content and the alignment; new
    /// elements are `value`. Growth doubles the capacity, so adding parameters one by one
    /// costs amortised constant time per element.
    pub(crate) fn resize(&mut self, len: usize, value: T) {
        if self.start + len > self.data.len() {
            let mut grown = AlignedBuf::filled(len.max(2 * self.len), value, self.stream);
            grown.as_mut_slice()[..self.len].copy_from_slice(self.as_slice());
            *self = grown;
        }
        let old = self.len;
        self.len = len;
        if len > old {
            self.as_mut_slice()[old..].fill(value);
        }
    }
}

/// Elements per [`ALIGN`] bytes.
pub(crate) fn align_elems<T>() -> usize {
    ALIGN / std::mem::size_of::<T>()
}

/// `n` rounded up to a whole number of aligned blocks.
pub(crate) fn round_up<T>(n: usize) -> usize {
    n.div_ceil(align_elems::<T>()) * align_elems::<T>()
}

/// Splits `buf` into the mutable sub-slices `ranges` (sorted by offset, disjoint).
pub(crate) fn split_ranges_mut<'a, T>(
    mut buf: &'a mut [T],
    ranges: &[(usize, usize)],
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut consumed = 0;
    for &(offset, len) in ranges {
        let rest = std::mem::take(&mut buf);
        let (_, rest) = rest.split_at_mut(offset - consumed);
        let (range, rest) = rest.split_at_mut(len);
        out.push(range);
        buf = rest;
        consumed = offset + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_keep_content_when_resized() {
        let mut b = AlignedBuf::filled(5, 1.0f32, 3);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_slice(), &[1.0; 5]);
        b.as_mut_slice()[4] = 7.0;
        b.resize(40, 2.0);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_slice().len(), 40);
        assert_eq!(&b.as_slice()[3..6], &[1.0, 7.0, 2.0]);
        b.as_mut_slice()[39] = 9.0;
        b.resize(39, 0.0);
        b.resize(41, 3.0);
        assert_eq!(&b.as_slice()[37..], &[2.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn ranges_split_disjointly() {
        let mut v: Vec<u32> = (0..10).collect();
        let parts = split_ranges_mut(&mut v, &[(1, 2), (5, 0), (6, 3)]);
        assert_eq!(
            parts.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
            vec![vec![1, 2], vec![], vec![6, 7, 8]]
        );
    }

    #[test]
    fn round_up_to_blocks() {
        assert_eq!(round_up::<f32>(0), 0);
        assert_eq!(round_up::<f32>(1), 16);
        assert_eq!(round_up::<f64>(9), 16);
    }
}
