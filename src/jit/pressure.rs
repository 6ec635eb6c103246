//! Register pressure of one loop body: which instructions, streams and scalars it uses (given
//! the select it is specialised for), how many values are live at once, and so which scalars
//! the loop holds in registers and which it reads from the scalar block at each use.
//!
//! Every pass here is linear in the stage's size (but the sort of the scalars by reads).

use crate::ir::Op;
use crate::program::{ElemArg, ElemInst, Stage};

/// The operands `inst` reads in a loop specialised for the conditions `fixed` (scalar,
/// truth; see `emit::unswitched`): a `select` on a fixed condition reads only the operand it
/// takes.
pub(super) fn read_args<'a>(inst: &'a ElemInst, fixed: &[(u32, bool)]) -> &'a [ElemArg] {
    let truth = |k: u32| fixed.iter().find(|&&(f, _)| f == k).map(|&(_, t)| t);
    match (inst.op, inst.args[0]) {
        (Op::Select, ElemArg::Scalar(k)) if truth(k).is_some() => {
            let chosen = if truth(k) == Some(true) { 1 } else { 2 };
            &inst.args[chosen..=chosen]
        }
        _ => inst.args(),
    }
}

/// What one copy of a loop body reads and how many values it keeps live.
pub(super) struct BodyNeeds {
    /// Per body instruction: whether its result reaches a store.
    pub live: Vec<bool>,
    /// Per stream: whether the body loads it.
    pub loads: Vec<bool>,
    /// Per scalar: how many live instructions and stores read it.
    pub uses: Vec<u32>,
    /// Per scalar: whether some read of it cannot be a memory operand (see
    /// [`BodyNeeds::held`]).
    pub unfoldable: Vec<bool>,
    /// The most element values live at once (loaded streams and instruction results), with
    /// every stream loaded first, as `emit_body` does.
    pub max_live: usize,
}

impl BodyNeeds {
    /// The needs of `stage`'s body in a loop specialised for `fixed`.
    pub(super) fn of(stage: &Stage, fixed: &[(u32, bool)]) -> BodyNeeds {
        let n = stage.body.len();
        let mut live = vec![false; n];
        let mut loads = vec![false; stage.n_streams as usize];
        let mut uses = vec![0; stage.n_scalars as usize];
        // Last reader of each loaded stream and each live value, as an instruction index
        // (`n` = the stores).
        let mut stream_end = vec![0; stage.n_streams as usize];
        let mut value_end = vec![0; n];
        let mut read = |arg: &ElemArg, at: usize, live: &mut [bool]| match *arg {
            ElemArg::Load(s) => {
                loads[s as usize] = true;
                stream_end[s as usize] = stream_end[s as usize].max(at);
            }
            ElemArg::Scalar(k) => uses[k as usize] += 1,
            ElemArg::Value(v) => {
                live[v as usize] = true;
                value_end[v as usize] = value_end[v as usize].max(at);
            }
        };
        for value in stage.results() {
            read(value, n, &mut live);
        }
        // Operands come before their readers, so one backward sweep finds every live value.
        for (i, inst) in stage.body.iter().enumerate().rev() {
            if live[i] {
                for arg in read_args(inst, fixed) {
                    read(arg, i, &mut live);
                }
            }
        }
        // Live at position p (reading instruction p): every loaded stream whose last reader
        // is at or after p, and every live value defined before p and read at or after p.
        let mut delta = vec![0isize; n + 2];
        for (s, &loaded) in loads.iter().enumerate() {
            if loaded {
                delta[0] += 1;
                delta[stream_end[s] + 1] -= 1;
            }
        }
        for v in (0..n).filter(|&v| live[v]) {
            delta[v + 1] += 1;
            delta[value_end[v] + 1] -= 1;
        }
        let mut count = 0isize;
        let mut max_live = 0;
        for d in &delta[..=n] {
            count += d;
            max_live = max_live.max(count as usize);
        }
        let unfoldable = unfoldable(stage, fixed, &live, &uses);
        BodyNeeds {
            live,
            loads,
            uses,
            unfoldable,
            max_live,
        }
    }

    /// Which scalars the loop holds in registers, out of `registers` vector registers of
    /// which `constants` hold the stage's constant vectors: as many as fit beside the live
    /// values, first those that could not be memory operands, then the most-read ones. The
    /// others are read from the scalar block at each use, a memory operand of the
    /// instruction that uses them.
    pub(super) fn held(&self, registers: usize, constants: usize) -> Vec<bool> {
        // Measured with the disassembly of every built-in on both x86-64 classes
        // (`tests/codegen.rs`): filling every register not counted as live or constant
        // spills nowhere (the count of live values already includes the one being made).
        let room = registers.saturating_sub(self.max_live + constants);
        let mut read: Vec<usize> = (0..self.uses.len()).filter(|&k| self.uses[k] > 0).collect();
        // Unfoldable first, then most reads; ties by position (the sort is stable).
        read.sort_by_key(|&k| (!self.unfoldable[k], std::cmp::Reverse(self.uses[k])));
        let mut held = vec![false; self.uses.len()];
        for &k in read.iter().take(room) {
            held[k] = true;
        }
        held
    }
}

/// Per scalar: whether a read of it cannot become a memory operand. Cranelift's x64 backend
/// folds a load into an add or a multiply (either operand: `emit_body` puts it second), or
/// into the second operand of a subtraction or division, when the load has one use and
/// the instruction's own result is not used twice, directly or through later instructions
/// (Cranelift then treats every operand as used twice). A scalar read twice is one load.
fn unfoldable(stage: &Stage, fixed: &[(u32, bool)], live: &[bool], uses: &[u32]) -> Vec<bool> {
    let n = stage.body.len();
    let mut readers = vec![0u32; n];
    for (inst, _) in stage.body.iter().zip(live).filter(|&(_, &l)| l) {
        for arg in read_args(inst, fixed) {
            if let ElemArg::Value(v) = *arg {
                readers[v as usize] += 1;
            }
        }
    }
    for value in stage.results() {
        if let ElemArg::Value(v) = *value {
            readers[v as usize] += 1;
        }
    }
    // Used twice, directly or through a reader used twice: readers come after operands.
    let mut shared: Vec<bool> = readers.iter().map(|&r| r > 1).collect();
    for (i, inst) in stage.body.iter().enumerate().rev() {
        if live[i] && shared[i] {
            for arg in read_args(inst, fixed) {
                if let ElemArg::Value(v) = *arg {
                    shared[v as usize] = true;
                }
            }
        }
    }
    let mut unfoldable: Vec<bool> = uses.iter().map(|&u| u > 1).collect();
    for (i, inst) in stage.body.iter().enumerate().filter(|&(i, _)| live[i]) {
        let args = read_args(inst, fixed);
        for (position, arg) in args.iter().enumerate() {
            if let ElemArg::Scalar(k) = *arg {
                let folds = match inst.op {
                    Op::Add | Op::Mul => args.len() == 2,
                    Op::Sub | Op::Div => position == 1,
                    _ => false,
                };
                if !folds || shared[i] {
                    unfoldable[k as usize] = true;
                }
            }
        }
    }
    for value in stage.results() {
        if let ElemArg::Scalar(k) = *value {
            unfoldable[k as usize] = true;
        }
    }
    unfoldable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Op;
    use crate::program::ElemInst;

    /// `p - s0 * (g + s1)`, and a select on scalar 2 between `g` and `s0 * g`.
    fn stage() -> Stage {
        use ElemArg::{Load, Scalar, Value};
        Stage {
            n_scalars: 3,
            n_streams: 3,
            body: vec![
                ElemInst::new(Op::Add, &[Load(1), Scalar(1)]),
                ElemInst::new(Op::Mul, &[Scalar(0), Value(0)]),
                ElemInst::new(Op::Sub, &[Load(0), Value(1)]),
                ElemInst::new(Op::Mul, &[Scalar(0), Load(1)]),
                ElemInst::new(Op::Select, &[Scalar(2), Load(1), Value(3)]),
            ],
            stores: vec![(0, Value(2)), (2, Value(4))],
            reductions: Vec::new(),
        }
    }

    #[test]
    fn a_fixed_select_reads_only_the_operand_it_takes() {
        let general = BodyNeeds::of(&stage(), &[]);
        assert_eq!(general.live, [true; 5]);
        assert_eq!(general.uses, [2, 1, 1]);
        let taken = BodyNeeds::of(&stage(), &[(2, true)]);
        assert_eq!(taken.live, [true, true, true, false, true]);
        assert_eq!(taken.uses, [1, 1, 0]);
        assert_eq!(taken.loads, [true, true, false]);
    }

    #[test]
    fn live_values_count_streams_until_their_last_read() {
        // Reading `p - %1` (position 2): p, g (read again at 3) and %1 are live; reading
        // `s0 * g` (3): g and %2 (stored at the end); in the loop that takes `g`, %3 is dead.
        let needs = BodyNeeds::of(&stage(), &[]);
        assert_eq!(needs.max_live, 3);
        let mut wide = stage();
        wide.n_streams = 4;
        wide.stores.push((3, ElemArg::Value(0)));
        assert_eq!(
            BodyNeeds::of(&wide, &[]).max_live,
            4,
            "%0 now lives to the end"
        );
    }

    #[test]
    fn scalars_that_cannot_be_memory_operands_are_found() {
        use ElemArg::{Load, Scalar, Value};
        // %0 = g - s0 (second operand: folds); %1 = s1 - g (first: does not); %2 = s2 * g,
        // stored and read again (used twice: its operands cannot fold); %3 = %2 / s3 (folds);
        // %4 = max(g, s4) (never folds).
        let stage = Stage {
            n_scalars: 5,
            n_streams: 4,
            body: vec![
                ElemInst::new(Op::Sub, &[Load(1), Scalar(0)]),
                ElemInst::new(Op::Sub, &[Scalar(1), Load(1)]),
                ElemInst::new(Op::Mul, &[Scalar(2), Load(1)]),
                ElemInst::new(Op::Div, &[Value(2), Scalar(3)]),
                ElemInst::new(Op::Max, &[Load(1), Scalar(4)]),
                ElemInst::new(Op::Add, &[Value(0), Value(1)]),
                ElemInst::new(Op::Add, &[Value(5), Value(4)]),
            ],
            stores: vec![(0, Value(6)), (2, Value(2)), (3, Value(3))],
            reductions: Vec::new(),
        };
        let needs = BodyNeeds::of(&stage, &[]);
        assert_eq!(needs.unfoldable, [false, true, true, false, true]);
        // With room for three, those three are held.
        let held = needs.held(needs.max_live + 3, 0);
        assert_eq!(held, [false, true, true, false, true]);
    }

    #[test]
    fn held_scalars_are_the_most_read_that_fit() {
        let needs = BodyNeeds::of(&stage(), &[]);
        let all = needs.held(16, 0);
        assert_eq!(all, [true, true, true]);
        let one = needs.held(needs.max_live + 1, 0);
        assert_eq!(one, [true, false, false], "scalar 0 is read twice");
        assert_eq!(needs.held(needs.max_live, 0), [false; 3]);
        assert_eq!(needs.held(needs.max_live + 1, 1), [false; 3]);
        let two = needs.held(needs.max_live + 2, 0);
        assert_eq!(
            two,
            [true, false, true],
            "the select's condition cannot fold"
        );
    }
}
