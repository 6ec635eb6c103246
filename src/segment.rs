//! The unit of work of every executor: one parameter's buffers for one step (the kernel
//! contract's *segment*), and the checks every executor runs before touching them.

use crate::program::Stage;
use crate::{Error, Float, Result};

/// One parameter (or a slice of one) for one step: the streams of the kernel contract and
/// the scalar block of its prologue.
pub struct Segment<'a, T> {
    /// Stream 0, read and written.
    pub param: &'a mut [T],
    /// Stream 1, read only.
    pub grad: &'a [T],
    /// Streams 2.., the element state slots in slot order, read and written.
    pub state: Vec<&'a mut [T]>,
    /// The prologue values the stage reads, rounded to `T`.
    pub scalars: &'a [T],
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

/// Checks stream counts, lengths, alignment and aliasing of `segments` for `stage`.
///
/// Safe Rust borrows already rule out most aliasing; the check is what makes handing raw
/// pointers to generated code sound whatever the caller did.
pub(crate) fn validate<T: Float>(stage: &Stage, segments: &[Segment<'_, T>]) -> Result<()> {
    let mut written: Vec<(usize, usize, String)> = Vec::new();
    let mut read: Vec<(usize, usize, String)> = Vec::new();
    for (n, seg) in segments.iter().enumerate() {
        let len = seg.param.len();
        let expect = |what: String, expected: usize, actual: usize| {
            if expected == actual {
                Ok(())
            } else {
                Err(Error::LengthMismatch {
                    what,
                    expected,
                    actual,
                })
            }
        };
        expect(format!("grad of segment {n}"), len, seg.grad.len())?;
        expect(
            format!("state list of segment {n}"),
            stage.n_streams as usize - 2,
            seg.state.len(),
        )?;
        for (k, s) in seg.state.iter().enumerate() {
            expect(format!("state stream {k} of segment {n}"), len, s.len())?;
        }
        expect(
            format!("scalar block of segment {n}"),
            stage.n_scalars as usize,
            seg.scalars.len(),
        )?;
        let span = |ptr: *const T, len: usize| {
            let start = ptr as usize;
            (start, start + len * std::mem::size_of::<T>())
        };
        let add = |list: &mut Vec<_>, ptr: *const T, len: usize, what: String| -> Result<()> {
            if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
                return Err(Error::Misaligned {
                    what,
                    align: std::mem::align_of::<T>(),
                });
            }
            let (a, b) = span(ptr, len);
            if a != b {
                list.push((a, b, what));
            }
            Ok(())
        };
        add(
            &mut written,
            seg.param.as_ptr(),
            len,
            format!("param of segment {n}"),
        )?;
        add(
            &mut read,
            seg.grad.as_ptr(),
            len,
            format!("grad of segment {n}"),
        )?;
        for (k, s) in seg.state.iter().enumerate() {
            add(
                &mut written,
                s.as_ptr(),
                len,
                format!("state stream {k} of segment {n}"),
            )?;
        }
        add(
            &mut read,
            seg.scalars.as_ptr(),
            seg.scalars.len(),
            format!("scalar block of segment {n}"),
        )?;
    }
    check_disjoint(&mut written, &read)
}

/// Fails if a written range overlaps any other range (written or read).
fn check_disjoint(
    written: &mut [(usize, usize, String)],
    read: &[(usize, usize, String)],
) -> Result<()> {
    let overlap = |a: &(usize, usize, String), b: &(usize, usize, String)| Error::Aliasing {
        first: a.2.clone(),
        second: b.2.clone(),
    };
    written.sort_by_key(|r| r.0);
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

    fn range(a: usize, b: usize, name: &str) -> (usize, usize, String) {
        (a, b, name.to_string())
    }

    #[test]
    fn disjoint_ranges_pass_and_overlaps_are_named() {
        let mut w = vec![range(0, 10, "a"), range(20, 30, "b")];
        assert!(check_disjoint(&mut w, &[range(10, 20, "r"), range(12, 14, "s")]).is_ok());
        let err = check_disjoint(&mut w, &[range(25, 26, "r")]).unwrap_err();
        assert_eq!(
            err,
            Error::Aliasing {
                first: "b".into(),
                second: "r".into()
            }
        );
        let mut w = vec![range(20, 30, "b"), range(0, 21, "a")];
        assert!(check_disjoint(&mut w, &[]).is_err());
    }
}
