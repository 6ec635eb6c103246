//! Flat, aligned storage for the parameters, gradients and element state of one
//! (group, dtype): every tensor is a range of one buffer per stream, each range starting on a
//! 64-byte boundary, so a whole group is a few long streams. Big streams ask for transparent
//! huge pages (see [`HUGE_MIN`] and [`AlignedBuf::filled`]).

pub(crate) use crate::engine::ALIGN;
use crate::segment::{Elems, ElemsRef};
use crate::{DType, Element, Error, Result};
use half::{bf16, f16};

/// Bytes between the starts of consecutive streams, modulo the page size: 25 cache lines,
/// not a power of two.
pub(crate) const STAGGER: usize = 25 * ALIGN;

/// Size of a transparent huge page on x86-64 and (with 4 KiB base pages) AArch64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// Smallest stream, in bytes, given huge pages: below, the page-aligned slack a huge-page
/// mapping needs would be a large share of the buffer, and a few 4 KiB pages cost little.
pub(crate) const HUGE_MIN: usize = 4 << 20;

/// Where a buffer's memory comes from.
#[derive(Debug)]
enum Memory<T> {
    /// The global allocator.
    Heap(Vec<T>),
    /// An anonymous mapping advised to use transparent huge pages (Linux), whole mapping
    /// viewed as elements.
    Mapped(memmap2::MmapMut),
}

impl<T: Element> Memory<T> {
    fn elems(&self) -> &[T] {
        match self {
            Memory::Heap(v) => v,
            Memory::Mapped(m) => bytemuck::cast_slice(m),
        }
    }

    fn elems_mut(&mut self) -> &mut [T] {
        match self {
            Memory::Heap(v) => v,
            Memory::Mapped(m) => bytemuck::cast_slice_mut(m),
        }
    }
}

/// A buffer whose element `0` sits on an [`ALIGN`]-byte boundary: a `Vec` with a skipped
/// prefix, or for big streams (when asked) a huge-page mapping whose element `0` sits just
/// after a huge-page boundary.
#[derive(Debug)]
pub(crate) struct AlignedBuf<T> {
    memory: Memory<T>,
    start: usize,
    len: usize,
    /// Which stream of its store it is (sets the stagger).
    stream: usize,
}

impl<T: Element> AlignedBuf<T> {
    /// `len` copies of `value`, starting [`STAGGER`] bytes times `stream` after an aligned
    /// address, so that the streams of one kernel do not all sit at the same offset within
    /// a page (large allocations all start on a page boundary, and streams a power of two
    /// apart contend for the same cache sets: up to 9× slower at 2^26 elements).
    ///
    /// With `huge`, a stream of at least [`HUGE_MIN`] bytes is mapped and advised to use
    /// transparent huge pages before its first write, so that the kernel backs it with 2 MiB
    /// pages where it can (Linux with THP in `always` or `madvise` mode); anywhere else, or
    /// if the OS refuses, it is an ordinary allocation.
    ///
    /// Fails with [`Error::OutOfMemory`] when the memory cannot be had (nothing is allocated
    /// then).
    pub(crate) fn filled(len: usize, value: T, stream: usize, huge: bool) -> Result<Self> {
        let size = std::mem::size_of::<T>();
        let stagger = stream * STAGGER / size;
        let bytes = len.saturating_mul(size);
        let out_of_memory = || Error::OutOfMemory {
            what: "parameter storage",
            bytes,
        };
        if huge && bytes >= HUGE_MIN {
            let elems = len.checked_add(stagger + HUGE_PAGE / size);
            if let Some(memory) = elems.and_then(huge_mapping::<T>) {
                let base = memory.elems().as_ptr() as usize;
                let start = (HUGE_PAGE - base % HUGE_PAGE) % HUGE_PAGE / size + stagger;
                let mut buf = AlignedBuf {
                    memory,
                    start,
                    len,
                    stream,
                };
                // A fresh mapping reads as zeros: filling with zeros would only make every
                // page resident before its first use.
                if value.to_bits_u64() != 0 {
                    buf.as_mut_slice().fill(value);
                }
                return Ok(buf);
            }
        }
        let elems = len
            .checked_add(ALIGN / size + stagger)
            .ok_or_else(out_of_memory)?;
        let mut data = Vec::new();
        data.try_reserve_exact(elems).map_err(|_| out_of_memory())?;
        data.resize(elems, value);
        let misalign = (data.as_ptr() as usize % ALIGN) / size;
        let start = (ALIGN / size - misalign) % (ALIGN / size) + stagger;
        Ok(AlignedBuf {
            memory: Memory::Heap(data),
            start,
            len,
            stream,
        })
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        &self.memory.elems()[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.memory.elems_mut()[self.start..self.start + self.len]
    }

    /// Whether the buffer lives in a huge-page mapping (the OS still decides whether the
    /// pages are huge).
    #[cfg(test)]
    fn is_mapped(&self) -> bool {
        matches!(self.memory, Memory::Mapped(_))
    }

    /// Grows (or shrinks) to `len` elements, keeping the content and the alignment; new
    /// elements are `value`. Growth doubles the capacity, so adding parameters one by one
    /// costs amortised constant time per element; grown memory follows `huge` (see
    /// [`AlignedBuf::filled`]).
    ///
    /// Fails with [`Error::OutOfMemory`], the buffer unchanged, when growing needs memory that
    /// cannot be had; shrinking never fails.
    pub(crate) fn resize(&mut self, len: usize, value: T, huge: bool) -> Result<()> {
        if self.start.saturating_add(len) > self.memory.elems().len() {
            // Doubling when it can; exactly `len` when doubling cannot be had.
            let doubled = len.max(self.len.saturating_mul(2));
            let mut grown = AlignedBuf::filled(doubled, value, self.stream, huge)
                .or_else(|_| AlignedBuf::filled(len, value, self.stream, huge))?;
            grown.as_mut_slice()[..self.len].copy_from_slice(self.as_slice());
            *self = grown;
        }
        let old = self.len;
        self.len = len;
        if len > old {
            self.as_mut_slice()[old..].fill(value);
        }
        Ok(())
    }
}

/// A buffer of any storage dtype: one stream of a flat store.
#[derive(Debug)]
pub(crate) enum AnyBuf {
    F32(AlignedBuf<f32>),
    F64(AlignedBuf<f64>),
    BF16(AlignedBuf<bf16>),
    F16(AlignedBuf<f16>),
}

/// `$body` with `$b` bound to the buffer of whichever variant `$e` is.
macro_rules! each_buf {
    ($e:expr, $b:ident => $body:expr) => {
        match $e {
            AnyBuf::F32($b) => $body,
            AnyBuf::F64($b) => $body,
            AnyBuf::BF16($b) => $body,
            AnyBuf::F16($b) => $body,
        }
    };
}

impl AnyBuf {
    /// `len` zeros of `dtype` (see [`AlignedBuf::filled`]).
    pub(crate) fn zeros(dtype: DType, len: usize, stream: usize, huge: bool) -> Result<AnyBuf> {
        Ok(match dtype {
            DType::F32 => AnyBuf::F32(AlignedBuf::filled(len, 0.0, stream, huge)?),
            DType::F64 => AnyBuf::F64(AlignedBuf::filled(len, 0.0, stream, huge)?),
            DType::BF16 => AnyBuf::BF16(AlignedBuf::filled(len, bf16::ZERO, stream, huge)?),
            DType::F16 => AnyBuf::F16(AlignedBuf::filled(len, f16::ZERO, stream, huge)?),
        })
    }

    /// The storage dtype.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            AnyBuf::F32(_) => DType::F32,
            AnyBuf::F64(_) => DType::F64,
            AnyBuf::BF16(_) => DType::BF16,
            AnyBuf::F16(_) => DType::F16,
        }
    }

    /// See [`AlignedBuf::resize`]; new elements are zero.
    pub(crate) fn resize(&mut self, len: usize, huge: bool) -> Result<()> {
        each_buf!(self, b => b.resize(len, Element::ZERO, huge))
    }

    /// The elements, writable.
    pub(crate) fn elems(&mut self) -> Elems<'_> {
        each_buf!(self, b => Elems::of(b.as_mut_slice()))
    }

    /// The elements.
    pub(crate) fn elems_ref(&self) -> ElemsRef<'_> {
        each_buf!(self, b => ElemsRef::of(b.as_slice()))
    }

    /// The elements as `T`s, if stored as `T`.
    pub(crate) fn typed<T: Element>(&self) -> Option<&[T]> {
        let same = self.dtype() == T::DTYPE;
        each_buf!(self, b => bytemuck::try_cast_slice(b.as_slice()).ok().filter(|_| same))
    }

    /// The elements as `T`s, if stored as `T`, writable.
    pub(crate) fn typed_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        let same = self.dtype() == T::DTYPE;
        each_buf!(self, b => bytemuck::try_cast_slice_mut(b.as_mut_slice()).ok().filter(|_| same))
    }

    /// Writes `data` (of this buffer's dtype, `range.len()` values) to elements `range`.
    pub(crate) fn write(&mut self, range: std::ops::Range<usize>, data: &super::TensorData) {
        use super::TensorData as D;
        match (self, data) {
            (AnyBuf::F32(b), D::F32(v)) => b.as_mut_slice()[range].copy_from_slice(v),
            (AnyBuf::F64(b), D::F64(v)) => b.as_mut_slice()[range].copy_from_slice(v),
            (AnyBuf::BF16(b), D::BF16(v)) => b.as_mut_slice()[range].copy_from_slice(v),
            (AnyBuf::F16(b), D::F16(v)) => b.as_mut_slice()[range].copy_from_slice(v),
            (buf, data) => unreachable!("{:?} data for a {:?} buffer", data.dtype(), buf.dtype()),
        }
    }

    /// Sets elements `range` to zero.
    pub(crate) fn fill_zero(&mut self, range: std::ops::Range<usize>) {
        each_buf!(self, b => b.as_mut_slice()[range].fill(Element::ZERO))
    }
}

/// An anonymous mapping of `elems` elements advised to use transparent huge pages, or `None`
/// where that is not possible (not Linux, no THP, mapping refused).
#[cfg(target_os = "linux")]
fn huge_mapping<T: Element>(elems: usize) -> Option<Memory<T>> {
    let bytes = elems.checked_mul(std::mem::size_of::<T>())?;
    let map = memmap2::MmapOptions::new().len(bytes).map_anon().ok()?;
    map.advise(memmap2::Advice::HugePage).ok()?;
    Some(Memory::Mapped(map))
}

#[cfg(not(target_os = "linux"))]
fn huge_mapping<T: Element>(_elems: usize) -> Option<Memory<T>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_keep_content_when_resized() {
        let mut b = AlignedBuf::filled(5, 1.0f32, 3, true).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_slice(), &[1.0; 5]);
        b.as_mut_slice()[4] = 7.0;
        b.resize(40, 2.0, true).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_slice().len(), 40);
        assert_eq!(&b.as_slice()[3..6], &[1.0, 7.0, 2.0]);
        b.as_mut_slice()[39] = 9.0;
        b.resize(39, 0.0, true).unwrap();
        b.resize(41, 3.0, true).unwrap();
        assert_eq!(&b.as_slice()[37..], &[2.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn big_streams_are_mapped_for_huge_pages_only_when_asked() {
        // Where the kernel has transparent huge pages, the advice is taken (in any mode).
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists();
        let mapped = cfg!(target_os = "linux") && thp;
        let big = HUGE_MIN / 4;
        for stream in [0, 3] {
            let heap = AlignedBuf::filled(big, 1.5f32, stream, false).unwrap();
            assert!(!heap.is_mapped());
            let mut b = AlignedBuf::filled(big, 1.5f32, stream, true).unwrap();
            assert_eq!(b.is_mapped(), mapped);
            let addr = b.as_slice().as_ptr() as usize;
            assert_eq!(addr % ALIGN, 0);
            if b.is_mapped() {
                // Element 0 sits `stream` staggers after a huge-page boundary.
                assert_eq!(addr % HUGE_PAGE, stream * STAGGER);
            }
            assert_eq!(b.as_slice().len(), big);
            assert!(b.as_slice().iter().all(|&x| x == 1.5));
            b.as_mut_slice()[big - 1] = 4.0;
            b.resize(big + 1, 2.0, true).unwrap();
            assert_eq!(&b.as_slice()[big - 2..], &[1.5, 4.0, 2.0]);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        }
        // Zeros come from the fresh mapping, not from a fill; −0 is written.
        let zeros = AlignedBuf::filled(big, 0.0f32, 2, true).unwrap();
        assert!(zeros.as_slice().iter().all(|&x| x.to_bits() == 0));
        let negative = AlignedBuf::filled(big, -0.0f32, 2, true).unwrap();
        assert!(negative
            .as_slice()
            .iter()
            .all(|&x| x.to_bits() == 0x8000_0000));
        // Small streams, and a small stream growing past the threshold.
        let mut small = AlignedBuf::filled(16, 1.0f64, 1, true).unwrap();
        assert!(!small.is_mapped());
        small.resize(HUGE_MIN / 8, 3.0, true).unwrap();
        assert_eq!(small.is_mapped(), mapped);
        assert_eq!(&small.as_slice()[14..18], &[1.0, 1.0, 3.0, 3.0]);
        small.resize(HUGE_MIN / 4, 5.0, false).unwrap();
        assert!(!small.is_mapped());
        assert_eq!(small.as_slice()[HUGE_MIN / 8 - 1], 3.0);
        assert_eq!(small.as_slice()[HUGE_MIN / 8], 5.0);
    }

    #[test]
    fn round_up_to_blocks() {
        use crate::engine::padded;
        assert_eq!(padded(0, 4), 0);
        assert_eq!(padded(1, 4), 16);
        assert_eq!(padded(9, 8), 16);
        assert_eq!(padded(1, 2), 32);
    }

    #[test]
    fn sizes_beyond_memory_are_errors_and_leave_the_buffer_alone() {
        for huge in [false, true] {
            assert!(matches!(
                AlignedBuf::<f64>::filled(1 << 60, 0.0, 0, huge),
                Err(Error::OutOfMemory { .. })
            ));
            let mut b = AlignedBuf::filled(3, 1.0f32, 0, huge).unwrap();
            assert!(b.resize(usize::MAX - 8, 0.0, huge).is_err());
            assert_eq!(b.as_slice(), &[1.0; 3]);
        }
    }
}
