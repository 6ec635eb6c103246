//! The unit of work of every executor: one parameter's buffers for one step (the kernel
//! contract's *segment*), and the checks every executor runs before touching them.

use crate::program::Stage;
use crate::{Error, Float, Result};

/// A run of elements that share one scalar block for one step: a parameter, a slice of one,
/// or (in the runtime) neighbouring parameters with the padding between them. It holds the
/// streams of the kernel contract and the scalar block of its prologue.
pub struct Segment<'a, T> {
    /// Stream 0, read and written.
    pub param: &'a mut [T],
    /// Stream 1, read only.
    pub grad: &'a [T],
    /// Streams 2.., the element state slots in slot order, read and written. A borrowed list,
    /// so that the segments of one call can share a single list of all their state buffers.
    pub state: &'a mut [&'a mut [T]],
    /// The prologue values the stage reads, rounded to `T`.
    pub scalars: &'a [T],
    /// Where a stage with reductions writes its partials: for each block of
    /// [`crate::ir::reduce::BLOCK`] elements from the segment's start, one f64 per
    /// reduction (block-major). Empty for a stage without reductions.
    pub partials: &'a mut [f64],
}

/// The streams of a call's segments, gathered piece by piece before the segments are made:
/// piece `i` has `params[i]`, `grads[i]`, `scalars[i]` and the `slots` state buffers
/// `state[i * slots..(i + 1) * slots]`. Every segment's state list is a slice of that one
/// list, so making the segments allocates nothing per segment.
pub(crate) struct Pieces<'a, T> {
    params: Vec<&'a mut [T]>,
    grads: Vec<&'a [T]>,
    scalars: Vec<&'a [T]>,
    state: Vec<&'a mut [T]>,
    partials: Vec<&'a mut [f64]>,
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
            slots,
        }
    }

    /// Appends the pieces `(offset, len, scalars)` of one set of buffers (its param, grad and
    /// `slots` state buffers, all of the same length); `ranges` are sorted and disjoint.
    /// For a stage with `reductions` reductions, every range starts at a multiple of
    /// [`crate::ir::reduce::BLOCK`] from the start of its parameter (the caller cuts them so)
    /// and gets its blocks' part of `partials`, which holds the ranges' partials one after
    /// the other (block-major; see [`Segment::partials`]).
    ///
    /// Panics if `state` does not yield `slots` buffers or a range falls outside the buffers:
    /// callers check both before (the runtime's store holds every slot over its whole length;
    /// the Stepper checks each state's shape and the grad's length).
    pub(crate) fn cut(
        &mut self,
        param: &'a mut [T],
        grad: &'a [T],
        state: impl Iterator<Item = &'a mut [T]>,
        ranges: &[(usize, usize, &'a [T])],
        partials: &'a mut [f64],
        reductions: usize,
    ) {
        let mut partials = partials;
        // What is left of each buffer after the pieces taken so far.
        let mut param = param;
        let mut rests: Vec<&'a mut [T]> = state.collect();
        assert_eq!(rests.len(), self.slots, "one buffer per state slot");
        let mut consumed = 0;
        let take = |rest: &mut &'a mut [T], skip: usize, len: usize| {
            let (piece, tail) = std::mem::take(rest)[skip..].split_at_mut(len);
            *rest = tail;
            piece
        };
        for &(offset, len, scalars) in ranges {
            let skip = offset - consumed;
            self.params.push(take(&mut param, skip, len));
            self.grads.push(&grad[offset..offset + len]);
            self.scalars.push(scalars);
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
    pub(crate) fn into_segments<'s>(self, storage: &'s mut Vec<&'s mut [T]>) -> Vec<Segment<'s, T>>
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
            .map(|(((param, grad), scalars), partials)| {
                let (state, tail) = std::mem::take(&mut rest).split_at_mut(slots);
                rest = tail;
                Segment {
                    param,
                    grad,
                    state,
                    scalars,
                    partials,
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

    /// True when the segment has no elements.
    pub fn is_empty(&self) -> bool {
        self.param.is_empty()
    }

    /// Element `i` of stream `s`.
    #[inline]
    pub(crate) fn load(&self, s: u32, i: usize) -> T {
        match s {
            0 => self.param[i],
            1 => self.grad[i],
            k => self.state[k as usize - 2][i],
        }
    }

    /// Writes element `i` of stream `s` (never the grad).
    #[inline]
    pub(crate) fn store(&mut self, s: u32, i: usize, v: T) {
        match s {
            0 => self.param[i] = v,
            1 => unreachable!("the grad is read only"),
            k => self.state[k as usize - 2][i] = v,
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

/// Calls `visit(stream, range)` for every non-empty buffer of segment `n` (stream 0 the
/// param, 1 the grad, 2.. the state slots, then the scalar block); empty buffers occupy no
/// memory and are skipped. (Slices are aligned to their element type by construction: a
/// misaligned one is undefined behaviour before it gets here, so there is nothing to check.)
fn ranges<T>(seg: &Segment<'_, T>, n: usize, mut visit: impl FnMut(usize, Range)) {
    let mut range = |k: usize, ptr: *const T, len: usize, buffer: Buffer| {
        if len > 0 {
            let start = ptr as usize;
            visit(k, (start, start + len * std::mem::size_of::<T>(), buffer));
        }
    };
    let len = seg.param.len();
    range(0, seg.param.as_ptr(), len, Buffer::Param(n));
    range(1, seg.grad.as_ptr(), len, Buffer::Grad(n));
    for (k, s) in seg.state.iter().enumerate() {
        range(2 + k, s.as_ptr(), len, Buffer::State(n, k));
    }
    let scalars = seg.scalars;
    let k = 2 + seg.state.len();
    range(k, scalars.as_ptr(), scalars.len(), Buffer::Scalars(n));
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
        let mut first = [c1, c3];
        let mut second = [c2, c4];
        let segments = [
            Segment {
                param: c5,
                grad: &grad,
                state: &mut first,
                scalars: &scalars,
                partials: &mut [],
            },
            Segment {
                param: c0,
                grad: &grad,
                state: &mut second,
                scalars: &scalars,
                partials: &mut [],
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
