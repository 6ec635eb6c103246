//! The unit of work of every executor: one parameter's buffers for one step (the kernel
//! contract's *segment*), and the checks every executor runs before touching them.

use crate::program::Stage;
use crate::{round, DType, Element, Error, Float, Result};
use half::{bf16, f16};

/// One written stream of a segment: its elements in their storage dtype.
#[derive(Debug)]
pub enum Elems<'a> {
    /// f32 elements.
    F32(&'a mut [f32]),
    /// f64 elements.
    F64(&'a mut [f64]),
    /// bf16 elements.
    BF16(&'a mut [bf16]),
    /// f16 elements.
    F16(&'a mut [f16]),
}

/// One read-only stream of a segment (the grad): its elements in their storage dtype.
#[derive(Clone, Copy, Debug)]
pub enum ElemsRef<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f64 elements.
    F64(&'a [f64]),
    /// bf16 elements.
    BF16(&'a [bf16]),
    /// f16 elements.
    F16(&'a [f16]),
}

/// `$body` with `$s` bound to the slice of whichever variant `$e` is, of enum `$enum`.
macro_rules! each {
    ($enum:ident, $e:expr, $s:ident => $body:expr) => {
        match $e {
            $enum::F32($s) => $body,
            $enum::F64($s) => $body,
            $enum::BF16($s) => $body,
            $enum::F16($s) => $body,
        }
    };
}

/// The same operation on each variant, rewrapped in the same variant.
macro_rules! map {
    ($enum:ident, $e:expr, $s:ident => $body:expr) => {
        match $e {
            $enum::F32($s) => $enum::F32($body),
            $enum::F64($s) => $enum::F64($body),
            $enum::BF16($s) => $enum::BF16($body),
            $enum::F16($s) => $enum::F16($body),
        }
    };
}

macro_rules! conversions {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a mut [$t]> for Elems<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                Elems::$v(s)
            }
        }
        impl<'a> From<&'a mut Vec<$t>> for Elems<'a> {
            fn from(s: &'a mut Vec<$t>) -> Self {
                Elems::$v(s)
            }
        }
        impl<'a> From<&'a [$t]> for ElemsRef<'a> {
            fn from(s: &'a [$t]) -> Self {
                ElemsRef::$v(s)
            }
        }
        impl<'a> From<&'a Vec<$t>> for ElemsRef<'a> {
            fn from(s: &'a Vec<$t>) -> Self {
                ElemsRef::$v(s)
            }
        }
    )*};
}

conversions!(f32 => F32, f64 => F64, bf16 => BF16, f16 => F16);

/// Element `$i` of slice `$s` of variant `$v`, widened to compute type `$t` (the caller
/// checked that `$t` is the variant's compute type).
macro_rules! widen {
    ($enum:ident, $e:expr, $i:expr, $t:ty) => {
        match $e {
            $enum::F32(s) => <$t>::from_f32(s[$i]),
            $enum::F64(s) => <$t>::from_f64(s[$i]),
            $enum::BF16(s) => <$t>::from_f32(round::bf16_to_f32(s[$i].to_bits())),
            $enum::F16(s) => <$t>::from_f32(round::f16_to_f32(s[$i].to_bits())),
        }
    };
}

impl<'a> Elems<'a> {
    /// Elements of a compute type, stored as themselves.
    pub fn of<T: Element>(s: &'a mut [T]) -> Elems<'a> {
        match T::DTYPE {
            DType::F32 => Elems::F32(bytemuck::cast_slice_mut(s)),
            DType::F64 => Elems::F64(bytemuck::cast_slice_mut(s)),
            DType::BF16 => Elems::BF16(bytemuck::cast_slice_mut(s)),
            DType::F16 => Elems::F16(bytemuck::cast_slice_mut(s)),
        }
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Elems::F32(_) => DType::F32,
            Elems::F64(_) => DType::F64,
            Elems::BF16(_) => DType::BF16,
            Elems::F16(_) => DType::F16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each!(Elems, self, s => s.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same elements, read only.
    pub fn as_ref(&self) -> ElemsRef<'_> {
        match self {
            Elems::F32(s) => ElemsRef::F32(s),
            Elems::F64(s) => ElemsRef::F64(s),
            Elems::BF16(s) => ElemsRef::BF16(s),
            Elems::F16(s) => ElemsRef::F16(s),
        }
    }

    /// A shorter-lived view of the same elements.
    pub fn reborrow(&mut self) -> Elems<'_> {
        map!(Elems, self, s => &mut s[..])
    }

    /// Elements `..mid` and `mid..`. Panics if `mid > len`.
    pub(crate) fn split_at(self, mid: usize) -> (Elems<'a>, Elems<'a>) {
        match self {
            Elems::F32(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Elems::F32(a), Elems::F32(b))
            }
            Elems::F64(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Elems::F64(a), Elems::F64(b))
            }
            Elems::BF16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Elems::BF16(a), Elems::BF16(b))
            }
            Elems::F16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Elems::F16(a), Elems::F16(b))
            }
        }
    }

    /// No elements (of dtype f32), what [`std::mem::take`] leaves.
    fn empty() -> Elems<'a> {
        Elems::F32(&mut [])
    }

    /// Element `i` widened to the compute type `T`; `T` is the dtype's compute type
    /// ([`validate`] checks).
    #[inline]
    pub(crate) fn get<T: Float>(&self, i: usize) -> T {
        widen!(Elems, self, i, T)
    }

    /// Stores `v` as element `i`: rounded to nearest even, or stochastically with the
    /// random bits `random`.
    #[inline]
    pub(crate) fn set<T: Float>(&mut self, i: usize, v: T, random: Option<u32>) {
        match self {
            Elems::F32(s) => s[i] = v.to_f32(),
            Elems::F64(s) => s[i] = v.to_f64(),
            Elems::BF16(s) => {
                let x = v.to_f32();
                s[i] = bf16::from_bits(match random {
                    None => round::f32_to_bf16(x),
                    Some(r) => round::f32_to_bf16_stochastic(x, r),
                })
            }
            Elems::F16(s) => {
                let x = v.to_f32();
                s[i] = f16::from_bits(match random {
                    None => round::f32_to_f16(x),
                    Some(r) => round::f32_to_f16_stochastic(x, r),
                })
            }
        }
    }

    /// The elements as `T`s when they are stored as `T`.
    pub(crate) fn as_compute<T: Element>(&self) -> Option<&[T]> {
        each!(Elems, self, s => bytemuck::try_cast_slice(&s[..]).ok().filter(|_| self.dtype() == T::DTYPE))
    }

    /// The elements as `T`s when they are stored as `T`, writable.
    pub(crate) fn as_compute_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        let same = self.dtype() == T::DTYPE;
        each!(Elems, self, s => bytemuck::try_cast_slice_mut(&mut s[..]).ok().filter(|_| same))
    }

    pub(crate) fn addr(&self) -> usize {
        each!(Elems, self, s => s.as_ptr() as usize)
    }

    /// The first element's address, for writing through.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        each!(Elems, self, s => s.as_mut_ptr() as *mut u8)
    }
}

impl<'a> ElemsRef<'a> {
    /// Elements of a compute type, stored as themselves.
    pub fn of<T: Element>(s: &'a [T]) -> ElemsRef<'a> {
        match T::DTYPE {
            DType::F32 => ElemsRef::F32(bytemuck::cast_slice(s)),
            DType::F64 => ElemsRef::F64(bytemuck::cast_slice(s)),
            DType::BF16 => ElemsRef::BF16(bytemuck::cast_slice(s)),
            DType::F16 => ElemsRef::F16(bytemuck::cast_slice(s)),
        }
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self {
            ElemsRef::F32(_) => DType::F32,
            ElemsRef::F64(_) => DType::F64,
            ElemsRef::BF16(_) => DType::BF16,
            ElemsRef::F16(_) => DType::F16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each!(ElemsRef, self, s => s.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `range`. Panics if the range is out of bounds.
    pub(crate) fn slice(self, range: std::ops::Range<usize>) -> ElemsRef<'a> {
        map!(ElemsRef, self, s => &s[range])
    }

    /// Element `i` widened to the compute type `T` (see [`Elems::get`]).
    #[inline]
    pub(crate) fn get<T: Float>(&self, i: usize) -> T {
        widen!(ElemsRef, self, i, T)
    }

    /// The elements as `T`s when they are stored as `T`.
    pub(crate) fn as_compute<T: Element>(&self) -> Option<&'a [T]> {
        let same = self.dtype() == T::DTYPE;
        each!(ElemsRef, *self, s => bytemuck::try_cast_slice(s).ok().filter(|_| same))
    }

    pub(crate) fn addr(&self) -> usize {
        each!(ElemsRef, self, s => s.as_ptr() as usize)
    }
}

/// Stochastic rounding of a segment's stores (see [`crate::round`]): which streams round
/// stochastically, the generator's key for this step and the generator index of the
/// segment's first element: element `i` of stream `s` rounds with
/// `round::stream_bits(round::random_bits(key, index + i), s)` (the index wrapping at 2^32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Noise<'a> {
    /// The streams (by index: 0 the param, 2.. the state slots) whose stores round
    /// stochastically, in increasing order; each must be bf16 or f16. Empty: every store
    /// rounds to nearest even.
    pub streams: &'a [u32],
    /// The generator's key ([`round::step_key`] of the seed and step).
    pub key: [u32; 2],
    /// The generator index of element 0.
    pub index: u32,
}

impl Noise<'_> {
    /// Every store rounds to nearest even.
    pub const NONE: Noise<'static> = Noise {
        streams: &[],
        key: [0, 0],
        index: 0,
    };

    /// The random bits for element `i` of stream `s`, if its stores round stochastically.
    #[inline]
    pub(crate) fn bits(&self, s: u32, i: usize) -> Option<u32> {
        self.streams.contains(&s).then(|| {
            let index = self.index.wrapping_add(i as u32);
            round::stream_bits(round::random_bits(self.key, index), s)
        })
    }
}

/// A run of elements that share one scalar block for one step: a parameter, a slice of one,
/// or (in the runtime) neighbouring parameters with the padding between them. It holds the
/// streams of the kernel contract, each in its own storage dtype, and the scalar block of its
/// prologue in the compute type `T`.
pub struct Segment<'a, T> {
    /// Stream 0, read and written.
    pub param: Elems<'a>,
    /// Stream 1, read only.
    pub grad: ElemsRef<'a>,
    /// Streams 2.., the element state slots in slot order, read and written. A borrowed list,
    /// so that the segments of one call can share a single list of all their state buffers.
    pub state: &'a mut [Elems<'a>],
    /// The prologue values the stage reads, rounded to `T`.
    pub scalars: &'a [T],
    /// Where a stage with reductions writes its partials: for each block of
    /// [`crate::ir::reduce::BLOCK`] elements from the segment's start, one f64 per
    /// reduction (block-major). Empty for a stage without reductions.
    pub partials: &'a mut [f64],
    /// Which stores round stochastically, and how ([`Noise::NONE`]: none).
    pub noise: Noise<'a>,
}

/// The streams of a call's segments, gathered piece by piece before the segments are made:
/// piece `i` has `params[i]`, `grads[i]`, `scalars[i]` and the `slots` state buffers
/// `state[i * slots..(i + 1) * slots]`. Every segment's state list is a slice of that one
/// list, so making the segments allocates nothing per segment.
pub(crate) struct Pieces<'a, T> {
    params: Vec<Elems<'a>>,
    grads: Vec<ElemsRef<'a>>,
    scalars: Vec<&'a [T]>,
    state: Vec<Elems<'a>>,
    partials: Vec<&'a mut [f64]>,
    /// Per piece, its generator key and index (see [`Noise`]).
    noise: Vec<([u32; 2], u32)>,
    slots: usize,
}

impl<'a, T> Pieces<'a, T> {
    /// Room for `pieces` pieces of `slots` state buffers each.
    pub(crate) fn with_capacity(pieces: usize, slots: usize) -> Self {
        Pieces {
            params: Vec::with_capacity(pieces),
            grads: Vec::with_capacity(pieces),
            scalars: Vec::with_capacity(pieces),
            state: Vec::with_capacity(pieces * slots),
            partials: Vec::new(),
            noise: Vec::with_capacity(pieces),
            slots,
        }
    }

    /// Appends the pieces `(offset, len, scalars)` of one set of buffers (its param, grad and
    /// `slots` state buffers, all of the same length); `ranges` are sorted and disjoint.
    /// For a stage with `reductions` reductions, every range starts at a multiple of
    /// [`crate::ir::reduce::BLOCK`] from the start of its parameter (the caller cuts them so)
    /// and gets its blocks' part of `partials`, which holds the ranges' partials one after
    /// the other (block-major; see [`Segment::partials`]). `(key, index)`: the set's
    /// generator key this step and the generator index of its element 0 (see [`Noise`]).
    ///
    /// Panics if `state` does not yield `slots` buffers or a range falls outside the buffers:
    /// callers check both before (the runtime's store holds every slot over its whole length;
    /// the Stepper checks each state's shape and the grad's length).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cut(
        &mut self,
        param: Elems<'a>,
        grad: ElemsRef<'a>,
        state: impl Iterator<Item = Elems<'a>>,
        ranges: &[(usize, usize, &'a [T])],
        partials: &'a mut [f64],
        reductions: usize,
        (key, index): ([u32; 2], u32),
    ) {
        let mut partials = partials;
        // What is left of each buffer after the pieces taken so far.
        let mut param = param;
        let mut rests: Vec<Elems<'a>> = state.collect();
        assert_eq!(rests.len(), self.slots, "one buffer per state slot");
        let mut consumed = 0;
        let take = |rest: &mut Elems<'a>, skip: usize, len: usize| {
            let (_, tail) = std::mem::replace(rest, Elems::empty()).split_at(skip);
            let (piece, tail) = tail.split_at(len);
            *rest = tail;
            piece
        };
        for &(offset, len, scalars) in ranges {
            let skip = offset - consumed;
            self.params.push(take(&mut param, skip, len));
            self.grads.push(grad.slice(offset..offset + len));
            self.scalars.push(scalars);
            self.noise.push((key, index.wrapping_add(offset as u32)));
            for rest in &mut rests {
                self.state.push(take(rest, skip, len));
            }
            if reductions > 0 {
                let (piece, tail) =
                    std::mem::take(&mut partials).split_at_mut(blocks(len) * reductions);
                self.partials.push(piece);
                partials = tail;
            } else {
                self.partials.push(&mut []);
            }
            consumed = offset + len;
        }
    }

    /// The segments, one per piece, in order; their state lists are slices of `storage`.
    /// Stores to `stochastic` round stochastically, with each piece's key and index.
    pub(crate) fn into_segments<'s>(
        self,
        storage: &'s mut Vec<Elems<'s>>,
        stochastic: &'s [u32],
    ) -> Vec<Segment<'s, T>>
    where
        'a: 's,
    {
        storage.extend(self.state);
        let mut rest = storage.as_mut_slice();
        let slots = self.slots;
        self.params
            .into_iter()
            .zip(self.grads)
            .zip(self.scalars)
            .zip(self.partials)
            .zip(self.noise)
            .map(|((((param, grad), scalars), partials), (key, index))| {
                let (state, tail) = std::mem::take(&mut rest).split_at_mut(slots);
                rest = tail;
                Segment {
                    param,
                    grad,
                    state,
                    scalars,
                    partials,
                    noise: Noise {
                        streams: stochastic,
                        key,
                        index,
                    },
                }
            })
            .collect()
    }
}

impl<T: Float> Segment<'_, T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.param.len()
    }

    /// The storage dtype of stream `s` (0 the param, 1 the grad, 2.. the state slots).
    pub fn dtype(&self, s: u32) -> DType {
        match s {
            0 => self.param.dtype(),
            1 => self.grad.dtype(),
            k => self.state[k as usize - 2].dtype(),
        }
    }

    /// True when the segment has no elements.
    pub fn is_empty(&self) -> bool {
        self.param.is_empty()
    }

    /// Element `i` of stream `s`.
    #[inline]
    pub(crate) fn load(&self, s: u32, i: usize) -> T {
        match s {
            0 => self.param.get(i),
            1 => self.grad.get(i),
            k => self.state[k as usize - 2].get(i),
        }
    }

    /// Stream `s` over `range` as `T`s: the stream itself when it is stored as `T`, else
    /// `scratch` (resized) filled with its elements widened.
    pub(crate) fn widened<'s>(
        &'s self,
        s: u32,
        range: std::ops::Range<usize>,
        scratch: &'s mut Vec<T>,
    ) -> &'s [T] {
        if let Some(elems) = self.native(s) {
            return &elems[range];
        }
        scratch.clear();
        scratch.extend(range.map(|i| self.load(s, i)));
        scratch
    }

    /// Stream `s` when it is stored as `T`.
    pub(crate) fn native(&self, s: u32) -> Option<&[T]> {
        match s {
            0 => self.param.as_compute::<T>(),
            1 => self.grad.as_compute::<T>(),
            k => self.state[k as usize - 2].as_compute::<T>(),
        }
    }

    /// Writes `values` to stream `s` (never the grad) from element `start` on: a copy when
    /// the stream is stored as `T`, else each value rounded as [`Segment::noise`] says.
    pub(crate) fn store_all(&mut self, s: u32, start: usize, values: &[T]) {
        let noise = self.noise;
        let stream = match s {
            0 => &mut self.param,
            1 => unreachable!("the grad is read only"),
            k => &mut self.state[k as usize - 2],
        };
        let range = start..start + values.len();
        match stream.as_compute_mut::<T>() {
            Some(elems) => elems[range].copy_from_slice(values),
            None => {
                for (i, &v) in range.zip(values) {
                    stream.set(i, v, noise.bits(s, i));
                }
            }
        }
    }

    /// Writes element `i` of stream `s` (never the grad).
    #[inline]
    pub(crate) fn store(&mut self, s: u32, i: usize, v: T) {
        let random = self.noise.bits(s, i);
        match s {
            0 => self.param.set(i, v, random),
            1 => unreachable!("the grad is read only"),
            k => self.state[k as usize - 2].set(i, v, random),
        }
    }
}

/// The blocks of [`crate::ir::reduce::BLOCK`] elements that `len` elements make.
pub fn blocks(len: usize) -> usize {
    len.div_ceil(crate::ir::reduce::BLOCK)
}

/// A buffer of a segment, named only when an error is reported (validation runs on every
/// call and must not allocate per segment).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Buffer {
    Param(usize),
    Grad(usize),
    State(usize, usize),
    Scalars(usize),
}

impl Buffer {
    fn name(self) -> String {
        match self {
            Buffer::Param(n) => format!("param of segment {n}"),
            Buffer::Grad(n) => format!("grad of segment {n}"),
            Buffer::State(n, k) => format!("state stream {k} of segment {n}"),
            Buffer::Scalars(n) => format!("scalar block of segment {n}"),
        }
    }
}

/// A byte range `[start, end)` of one buffer.
type Range = (usize, usize, Buffer);

/// Checks stream counts, lengths, alignment and aliasing of `segments` for `stage`.
///
/// Safe Rust borrows already rule out most aliasing; the check is what makes handing raw
/// pointers to generated code sound whatever the caller did.
pub(crate) fn validate<T: Float>(stage: &Stage, segments: &[Segment<'_, T>]) -> Result<()> {
    let mismatch = |what: Buffer, expected: usize, actual: usize| Error::LengthMismatch {
        what: what.name(),
        expected,
        actual,
    };
    let slots = stage.n_streams as usize - 2;
    // The hull of each stream (param, grad, each state slot, scalars): the linear check
    // needs no more, so nothing is stored per segment.
    let mut hulls = vec![Hull::EMPTY; slots + 3];
    for (n, seg) in segments.iter().enumerate() {
        let len = seg.param.len();
        if seg.grad.len() != len {
            return Err(mismatch(Buffer::Grad(n), len, seg.grad.len()));
        }
        if seg.state.len() != slots {
            return Err(Error::LengthMismatch {
                what: format!("state list of segment {n}"),
                expected: slots,
                actual: seg.state.len(),
            });
        }
        if let Some(k) = seg.state.iter().position(|s| s.len() != len) {
            return Err(mismatch(Buffer::State(n, k), len, seg.state[k].len()));
        }
        check_dtypes::<T>(stage, seg)?;
        if seg.scalars.len() != stage.n_scalars as usize {
            return Err(mismatch(
                Buffer::Scalars(n),
                stage.n_scalars as usize,
                seg.scalars.len(),
            ));
        }
        let partials = blocks(len) * stage.reductions.len();
        if seg.partials.len() != partials {
            return Err(Error::LengthMismatch {
                what: format!("partials of segment {n}"),
                expected: partials,
                actual: seg.partials.len(),
            });
        }
        ranges(seg, n, |k, r| hulls[k].add(r));
    }
    // Streams 1 (grad) and the last (scalars) are read only.
    let written_stream = |k: usize| k != 1 && k != slots + 2;
    if disjoint_by_stream(&hulls, written_stream) {
        return Ok(());
    }
    let mut written: Vec<Range> = Vec::new();
    let mut read: Vec<Range> = Vec::new();
    for (n, seg) in segments.iter().enumerate() {
        ranges(seg, n, |k, r| match written_stream(k) {
            true => written.push(r),
            false => read.push(r),
        });
    }
    check_disjoint(&mut written, &read)
}

/// Checks that every stream of `seg` computes in `T` and that its stochastic rounding names
/// written bf16 or f16 streams.
fn check_dtypes<T: Float>(stage: &Stage, seg: &Segment<'_, T>) -> Result<()> {
    for s in 0..stage.n_streams {
        let dtype = seg.dtype(s);
        if dtype.compute() != T::DTYPE {
            return Err(Error::DTypeMismatch {
                expected: T::DTYPE,
                actual: dtype,
            });
        }
    }
    for &s in seg.noise.streams {
        if s == 1 || s >= stage.n_streams || !seg.dtype(s).is_narrow() {
            return Err(Error::InvalidOption {
                option: "stochastic rounding",
                reason: "only written bf16 or f16 streams round stochastically",
            });
        }
    }
    if !seg.noise.streams.is_sorted_by(|a, b| a < b) {
        return Err(Error::InvalidOption {
            option: "stochastic rounding",
            reason: "the stochastic streams are listed in increasing order, each once",
        });
    }
    Ok(())
}

/// Calls `visit(stream, range)` for every non-empty buffer of segment `n` (stream 0 the
/// param, 1 the grad, 2.. the state slots, then the scalar block); empty buffers occupy no
/// memory and are skipped. (Slices are aligned to their element type by construction: a
/// misaligned one is undefined behaviour before it gets here, so there is nothing to check.)
fn ranges<T>(seg: &Segment<'_, T>, n: usize, mut visit: impl FnMut(usize, Range)) {
    let mut range = |k: usize, start: usize, bytes: usize, buffer: Buffer| {
        if bytes > 0 {
            visit(k, (start, start + bytes, buffer));
        }
    };
    let len = seg.param.len();
    let bytes = |dtype: DType| len * dtype.size();
    range(
        0,
        seg.param.addr(),
        bytes(seg.param.dtype()),
        Buffer::Param(n),
    );
    range(1, seg.grad.addr(), bytes(seg.grad.dtype()), Buffer::Grad(n));
    for (k, s) in seg.state.iter().enumerate() {
        range(2 + k, s.addr(), bytes(s.dtype()), Buffer::State(n, k));
    }
    let scalars = seg.scalars;
    let k = 2 + seg.state.len();
    let size = std::mem::size_of_val(scalars);
    range(k, scalars.as_ptr() as usize, size, Buffer::Scalars(n));
}

/// One stream's ranges as the linear check sees them: their hull, and whether each range
/// starts at or after the end of the one before.
#[derive(Clone, Copy, Debug)]
struct Hull {
    start: usize,
    end: usize,
    increasing: bool,
    empty: bool,
}

impl Hull {
    const EMPTY: Hull = Hull {
        start: usize::MAX,
        end: 0,
        increasing: true,
        empty: true,
    };

    fn add(&mut self, (start, end, _): Range) {
        // While the ranges increase, the hull ends where the last one does.
        if !self.empty && start < self.end {
            self.increasing = false;
        }
        self.start = self.start.min(start);
        self.end = self.end.max(end);
        self.empty = false;
    }
}

/// The linear-time check that covers the usual layout (each stream's ranges in increasing
/// order within its own buffer): every written stream's ranges are increasing and disjoint,
/// and the hull of each written stream meets no other stream's hull. `false` means "not
/// shown", and the caller falls back to the exact check.
fn disjoint_by_stream(hulls: &[Hull], written: impl Fn(usize) -> bool) -> bool {
    if (0..hulls.len()).any(|k| written(k) && !hulls[k].increasing) {
        return false;
    }
    let spans: Vec<(Hull, bool)> = (0..hulls.len())
        .filter(|&k| !hulls[k].empty)
        .map(|k| (hulls[k], written(k)))
        .collect();
    spans.iter().enumerate().all(|(i, (a, wa))| {
        spans[i + 1..]
            .iter()
            .all(|(b, wb)| !(wa | wb) || a.end <= b.start || b.end <= a.start)
    })
}

/// Fails if a written range overlaps any other range (written or read).
fn check_disjoint(written: &mut [Range], read: &[Range]) -> Result<()> {
    let overlap = |a: &Range, b: &Range| Error::Aliasing {
        first: a.2.name(),
        second: b.2.name(),
    };
    written.sort_unstable_by_key(|r| r.0);
    for pair in written.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(overlap(&pair[0], &pair[1]));
        }
    }
    for r in read {
        // The first written range ending after r starts is the only candidate to overlap it.
        let k = written.partition_point(|w| w.1 <= r.0);
        if let Some(w) = written.get(k) {
            if w.0 < r.1 {
                return Err(overlap(w, r));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linear_check_accepts_ordered_streams_and_defers_anything_else() {
        let (p, g, s) = (Buffer::Param, Buffer::Grad, Buffer::Scalars);
        let written = |k: usize| k != 1;
        let hulls = |streams: Vec<Vec<Range>>| -> Vec<Hull> {
            let hull = |list: Vec<Range>| {
                let mut h = Hull::EMPTY;
                list.into_iter().for_each(|r| h.add(r));
                h
            };
            streams.into_iter().map(hull).collect()
        };
        // Three streams in three buffers, each in increasing order: shown disjoint.
        let ok = vec![
            vec![(0, 10, p(0)), (16, 20, p(1))],
            vec![(100, 110, g(0)), (116, 120, g(1))],
            vec![(200, 210, s(0))],
        ];
        assert!(disjoint_by_stream(&hulls(ok), written));
        // Out of order within a written stream: not shown (the exact check decides).
        let unordered = vec![vec![(16, 20, p(1)), (0, 10, p(0))], vec![], vec![]];
        assert!(!disjoint_by_stream(&hulls(unordered), written));
        // Overlapping within a written stream: not shown.
        let overlapping = vec![vec![(0, 10, p(0)), (8, 20, p(1))], vec![], vec![]];
        assert!(!disjoint_by_stream(&hulls(overlapping), written));
        // A written hull meeting a read hull: not shown.
        let meeting = vec![vec![(0, 10, p(0))], vec![(5, 6, g(0))], vec![]];
        assert!(!disjoint_by_stream(&hulls(meeting), written));
        // Two read hulls may meet (a shared gradient).
        let shared = vec![
            vec![(0, 10, p(0))],
            vec![(100, 110, g(0)), (100, 110, g(1))],
            vec![(104, 105, s(0))],
        ];
        assert!(disjoint_by_stream(&hulls(shared), |k| k == 0));
    }

    /// Buffers cut from one allocation in an order the linear check cannot vouch for (the
    /// segments' params in decreasing address order, state and params interleaved): the
    /// exact check accepts them.
    #[test]
    fn layouts_the_linear_check_defers_are_decided_exactly() {
        let graph = crate::optim::Adam::default().graph().unwrap();
        let program = crate::passes::compile(&graph).unwrap();
        let stage = &program.stage;
        let scalars = vec![0.5f32; stage.n_scalars as usize];
        let grad = vec![1.0f32; 8];
        let mut memory = [0.0f32; 48];
        let mut chunks: Vec<&mut [f32]> = memory.chunks_mut(8).collect();
        let (c5, c4, c3, c2, c1, c0) = (
            chunks.pop().unwrap(),
            chunks.pop().unwrap(),
            chunks.pop().unwrap(),
            chunks.pop().unwrap(),
            chunks.pop().unwrap(),
            chunks.pop().unwrap(),
        );
        let mut first = [c1.into(), c3.into()];
        let mut second = [c2.into(), c4.into()];
        let segments = [
            Segment {
                param: c5.into(),
                grad: (&grad).into(),
                state: &mut first,
                scalars: &scalars,
                partials: &mut [],
                noise: Noise::NONE,
            },
            Segment {
                param: c0.into(),
                grad: (&grad).into(),
                state: &mut second,
                scalars: &scalars,
                partials: &mut [],
                noise: Noise::NONE,
            },
        ];
        let hull_of = |k: usize| {
            let mut h = Hull::EMPTY;
            for (n, seg) in segments.iter().enumerate() {
                ranges(seg, n, |s, r| {
                    if s == k {
                        h.add(r)
                    }
                });
            }
            h
        };
        assert!(!hull_of(0).increasing, "the linear check defers");
        assert_eq!(validate(stage, &segments), Ok(()));
    }

    #[test]
    fn disjoint_ranges_pass_and_overlaps_are_named() {
        let (a, b, r) = (Buffer::Param(0), Buffer::Param(1), Buffer::Grad(0));
        let mut w = vec![(0, 10, a), (20, 30, b)];
        assert!(check_disjoint(&mut w, &[(10, 20, r), (12, 14, Buffer::Scalars(0))]).is_ok());
        let err = check_disjoint(&mut w, &[(25, 26, r)]).unwrap_err();
        assert_eq!(
            err,
            Error::Aliasing {
                first: "param of segment 1".into(),
                second: "grad of segment 0".into()
            }
        );
        let mut w = vec![(20, 30, b), (0, 21, a)];
        assert!(check_disjoint(&mut w, &[]).is_err());
    }
}
