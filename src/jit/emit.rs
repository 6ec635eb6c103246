//! Lowers a [`Stage`] for one dtype to Cranelift IR.
//!
//! The function is `kernel(table: *const u64, n_segments: u64)`; the table holds one record
//! per segment: `[len, scalar block pointer, stream pointer 0, 1, ...]` (see `abi.rs`). The
//! scalar block holds each kernel scalar splatted across a 16-byte vector. Per segment the
//! kernel runs an unrolled 128-bit main loop — emitted once per truth of up to two per-step
//! `select` conditions, behind one branch each (see [`unswitched`]) — a single-vector loop
//! (when unrolled), then a scalar tail, all computing exactly the reference interpreter's
//! IEEE operations. Each loop holds in registers the scalars its body reads, loaded in its
//! preheader, as many as fit beside the body's live values (see `pressure.rs`); it reads the
//! others from the block at each use, as a memory operand of the instruction that uses them
//! where Cranelift can fold the load (else as a plain vector load). So no loop broadcasts a
//! scalar, and a loop loads one per vector only when its scalars that cannot be memory
//! operands outnumber its free registers (of the built-ins, Adan's). An FMA appears only
//! where the stage has `Op::Fma`: Cranelift never fuses `fmul`+`fadd` on its own. Streams
//! stored as bf16 or f16 narrow in `convert.rs`; in the vector loops of stages without
//! reductions each body copy first tests the values it narrows for NaNs (one `fcmp uno` per
//! two values) and branches to a cold block that narrows them with the NaN path, the usual
//! block without it (`emit/stores.rs`).

use super::convert;
use super::pressure::{read_args, BodyNeeds};
use crate::ir::{Op, OpGroup, ReduceOp};
use crate::program::{ElemArg, Stage};
use crate::{DType, Layout};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, Function, InstBuilder, MemFlagsData, Signature, Type, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use stores::{NoiseVals, Store};

mod stores;

/// Bytes per scalar in the scalar block: one 128-bit vector, the scalar in every lane.
pub(crate) const SCALAR_BYTES: usize = 16;

/// Words in a segment record before the stream pointers: length and scalar block pointer.
pub(crate) const RECORD_HEADER: usize = 2;

/// Words in a segment record of `stage`'s kernel for `layout`: the header, one pointer per
/// stream, the partials pointer (stages with reductions) and, when the layout rounds some
/// stream stochastically, the generator key (two u32 words, the first in the low half) and
/// the generator index of the segment's first element.
pub(crate) fn record_words(stage: &Stage, layout: &Layout) -> usize {
    let reduces = !stage.reductions.is_empty();
    let stochastic = !layout.stochastic().is_empty();
    RECORD_HEADER + stage.n_streams as usize + usize::from(reduces) + 2 * usize::from(stochastic)
}

/// The kernel signature for a pointer type and calling convention.
pub(crate) fn signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig
}

/// A byte offset into a segment record or a scalar block as an immediate. `Stage::check`
/// bounds the streams and scalars (see [`Stage::MAX_SCALARS`]) so that every one fits.
fn offset(bytes: usize) -> i32 {
    i32::try_from(bytes).expect("Stage::check bounds streams and scalars")
}

/// What the kernel is compiled for: the target's frontend configuration and the vector
/// registers its register allocator has.
#[derive(Clone, Copy)]
pub(crate) struct Machine {
    pub frontend: TargetFrontendConfig,
    pub registers: usize,
}

/// Fills `func` (whose signature is [`signature`]) with the kernel for `stage` on streams
/// stored as `layout` says (resolved to the stage's streams).
pub(crate) fn build(
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    stage: &Stage,
    layout: &Layout,
    unroll: u32,
    machine: Machine,
) {
    let (scalar_ty, vector_ty) = match layout.compute() {
        DType::F64 => (types::F64, types::F64X2),
        _ => (types::F32, types::F32X4),
    };
    let mut t = Translator {
        b: FunctionBuilder::new(func, fctx),
        stage,
        layout,
        scalar_ty,
        vector_ty,
        lanes: 128 / scalar_ty.bits(),
        flags: MemFlagsData::new().with_notrap(),
        consts: Consts::default(),
        n_consts: 0,
        registers: machine.registers,
        fixed: Vec::new(),
    };
    t.emit_kernel(unroll);
    t.b.finalize(machine.frontend);
}

/// Vector or scalar code; selects types and the lowering of masks.
#[derive(Clone, Copy, PartialEq)]
enum Width {
    Vector,
    Scalar,
}

/// A computed element value: a float, or a comparison's mask (lane mask or `i8` flag) that is
/// turned into `1.0`/`0.0` only when used as a number.
#[derive(Clone, Copy)]
enum Val {
    Float(Value),
    Mask(Value),
}

/// Per-segment values, defined before the loops and used inside them.
struct SegmentVals {
    len: Value,
    streams: Vec<Value>,
    /// The segment record's address (its second word is the scalar block's).
    record: Value,
    /// The scalar block's address.
    block: Value,
    /// Where the segment's block partials go (stages with reductions).
    partials: Option<Value>,
    /// For stochastic rounding: the generator's key and counter.
    noise: Option<NoiseVals>,
}

/// How one loop reads the scalars: the splats it holds in registers (made in its preheader)
/// and, for the others, what its body reads.
struct Reads {
    held: Vec<Option<Value>>,
    needs: BodyNeeds,
    /// Whether the body reads some scalar it does not hold (from the block, at each use).
    from_block: bool,
}

/// `0`, `1`, `-1` as `[scalar, vector]`, created in the entry block only when the stage
/// needs them (comparisons and select need `0` and `1`, sign all three).
#[derive(Clone, Copy, Default)]
struct Consts {
    zero: Option<[Value; 2]>,
    one: Option<[Value; 2]>,
    minus_one: Option<[Value; 2]>,
}

struct Translator<'a> {
    b: FunctionBuilder<'a>,
    stage: &'a Stage,
    layout: &'a Layout,
    scalar_ty: Type,
    vector_ty: Type,
    lanes: u32,
    flags: MemFlagsData,
    consts: Consts,
    /// How many vector constants `consts` holds (registers the loops cannot use).
    n_consts: usize,
    /// Vector registers of the target.
    registers: usize,
    /// The scalars whose truth the loop being emitted is specialised for, and those truths
    /// (see [`unswitched`]): `select`s on them take one operand without a per-element choice.
    fixed: Vec<(u32, bool)>,
}

/// The most per-step conditions a main loop is specialised for: each doubles the main loops
/// emitted (and the compile time with them).
const MAX_UNSWITCHED: usize = 2;

/// The per-step scalars that the first `select`s on one take as their conditions, at most
/// [`MAX_UNSWITCHED`] of them, in body order. Such a condition is the same for every element
/// of a segment (e.g. `weight_decay != 0`, `step == 1`), so each segment branches once per
/// condition to a main loop in which each such select is simply one of its operands: the
/// other operand's work leaves the loop.
pub(crate) fn unswitched(stage: &Stage) -> Vec<u32> {
    let mut conditions = Vec::new();
    for inst in &stage.body {
        if let (Op::Select, ElemArg::Scalar(k)) = (inst.op, inst.args()[0]) {
            if !conditions.contains(&k) && conditions.len() < MAX_UNSWITCHED {
                conditions.push(k);
            }
        }
    }
    conditions
}

/// Values live at once beyond which a kernel is *large*: compiled with Cranelift's
/// single-pass register allocator, whose time is linear in the code, instead of its
/// backtracking one, whose time grows with the square of the spilled values (a body holding
/// 2,000 values took 5 s, 4,000 took 44 s; single-pass: 0.12 s and 0.29 s). No built-in
/// comes near (they keep at most a dozen values live); a large body spills anyway.
pub(crate) const LARGE_LIVE: usize = 64;

/// Whether `stage`'s kernel is large (see [`LARGE_LIVE`]).
pub(crate) fn is_large(stage: &Stage) -> bool {
    BodyNeeds::of(stage, &[]).max_live > LARGE_LIVE
}

fn args(values: &[Value]) -> Vec<BlockArg> {
    values.iter().map(|&v| BlockArg::Value(v)).collect()
}

impl Translator<'_> {
    /// Emits the whole function: entry, the loop over segments, and the return.
    fn emit_kernel(&mut self, unroll: u32) {
        let entry = self.b.create_block();
        let seg_header = self.b.create_block();
        let seg_body = self.b.create_block();
        let exit = self.b.create_block();
        let s = self.b.append_block_param(seg_header, types::I64);

        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        self.b.seal_block(entry);
        let table = self.b.block_params(entry)[0];
        let n_segments = self.b.block_params(entry)[1];
        self.emit_consts();
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().jump(seg_header, &args(&[zero]));

        // seg_header(s): sealed once the back edge from the segment's end exists.
        self.b.switch_to_block(seg_header);
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, s, n_segments);
        self.b.ins().brif(more, seg_body, &[], exit, &[]);

        self.b.switch_to_block(seg_body);
        self.b.seal_block(seg_body);
        let seg = self.emit_segment_setup(table, s);
        let seg_end = if self.stage.reductions.is_empty() {
            self.emit_loops(&seg, unroll, &unswitched(self.stage))
        } else {
            self.emit_reducing_loops(&seg)
        };

        self.b.switch_to_block(seg_end);
        self.b.seal_block(seg_end);
        let next = self.b.ins().iadd_imm_u(s, 1);
        self.b.ins().jump(seg_header, &args(&[next]));
        self.b.seal_block(seg_header);

        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        self.b.ins().return_(&[]);
    }

    fn emit_consts(&mut self) {
        let ops = || self.stage.body.iter().map(|inst| inst.op);
        let masks = ops().any(|op| op.group() == OpGroup::Compare || op == Op::Select);
        let sign = ops().any(|op| op == Op::Sign);
        let mut pair = |wanted: bool, v: f64| {
            wanted.then(|| {
                let s = self.float_const(Width::Scalar, v);
                [s, self.b.ins().splat(self.vector_ty, s)]
            })
        };
        self.consts = Consts {
            zero: pair(masks || sign, 0.0),
            one: pair(masks || sign, 1.0),
            minus_one: pair(sign, -1.0),
        };
        self.n_consts = [self.consts.zero, self.consts.one, self.consts.minus_one]
            .iter()
            .flatten()
            .count();
    }

    /// Loads the segment record: length, stream pointers and the scalar block's address.
    fn emit_segment_setup(&mut self, table: Value, s: Value) -> SegmentVals {
        let words = record_words(self.stage, self.layout);
        let record_bytes = self.b.ins().imul_imm_u(s, (words * 8) as i64);
        let record = self.b.ins().iadd(table, record_bytes);
        let word =
            |t: &mut Self, k: usize| t.b.ins().load(types::I64, t.flags, record, offset(k * 8));
        let len = word(self, 0);
        let block = word(self, 1);
        let streams = (0..self.stage.n_streams as usize)
            .map(|k| word(self, RECORD_HEADER + k))
            .collect();
        // The partials pointer follows the streams, in the records of reducing stages only.
        let reduces = !self.stage.reductions.is_empty();
        let after = RECORD_HEADER + self.stage.n_streams as usize;
        let partials = reduces.then(|| word(self, after));
        let noise = (!self.layout.stochastic().is_empty()).then(|| {
            let at = after + usize::from(reduces);
            let key = word(self, at);
            let index = word(self, at + 1);
            let k0 = self.b.ins().ireduce(types::I32, key);
            let high = self.b.ins().ushr_imm_u(key, 32);
            let k1 = self.b.ins().ireduce(types::I32, high);
            let index = self.b.ins().ireduce(types::I32, index);
            // The generator's counter of element 0: its index plus the key's first word.
            let counter = self.b.ins().iadd(index, k0);
            let key1_vector = self.b.ins().splat(types::I32X4, k1);
            NoiseVals {
                key1: k1,
                key1_vector,
                counter,
            }
        });
        SegmentVals {
            len,
            streams,
            record,
            block,
            partials,
            noise,
        }
    }

    /// Vector registers the bf16 and f16 conversions of the layout's streams need beside the
    /// body's values: Cranelift hoists their constants out of the loop, so each distinct
    /// constant of each kind of conversion the loop runs holds a register (see
    /// `convert.rs` for the counts), and one more for their temporaries. None for a layout
    /// of f32 and f64 streams.
    fn conversion_registers(&self) -> usize {
        let stored = |s: u32| self.stage.stores.iter().any(|(t, _)| *t == s);
        let mut kinds: Vec<(DType, bool, bool)> = Vec::new();
        for s in 0..self.stage.n_streams {
            let dtype = self.layout.dtype(s);
            if !dtype.is_narrow() {
                continue;
            }
            kinds.push((dtype, false, false)); // the load
            if stored(s) {
                kinds.push((dtype, true, self.layout.stochastic().contains(&s)));
            }
        }
        kinds.sort();
        kinds.dedup();
        let constants: usize = kinds
            .iter()
            .map(|&kind| match kind {
                (DType::BF16, false, _) => 0,
                (DType::BF16, true, false) => 3,
                (DType::BF16, true, true) => 7,
                (_, false, _) => 6,
                (_, true, false) => 9,
                (_, true, true) => 14,
            })
            .sum::<usize>()
            // Each stochastic stream but the param reads the generator's word through its
            // own multiplier (`round::stream_bits`).
            + (self.layout.stochastic().iter())
                .filter(|&&s| stored(s) && crate::round::stream_multiplier(s) != 1)
                .count();
        constants + usize::from(constants > 0)
    }

    /// The scalars a loop of `width` holds, loaded here (its preheader): as many as fit in
    /// registers beside its body's live values, those that cannot be memory operands first
    /// (see [`BodyNeeds::held`]).
    fn emit_reads(&mut self, width: Width, seg: &SegmentVals) -> Reads {
        let needs = BodyNeeds::of(self.stage, &self.fixed);
        // A reducing loop keeps four accumulators per reduction in registers; a scalar
        // square root takes one more for its result (x86-64's `sqrtss` merges into a
        // register Cranelift first clears; measured: LAMB's tail spilled without it).
        let accumulators = 4 * self.stage.reductions.len();
        let scalar_sqrt =
            width == Width::Scalar && self.stage.body.iter().any(|inst| inst.op == Op::Sqrt);
        let reserved = accumulators + usize::from(scalar_sqrt) + self.conversion_registers();
        let held = needs.held(self.registers.saturating_sub(reserved), self.n_consts);
        let ty = self.ty(width);
        let flags = self.flags.with_aligned();
        let from_block = (0..held.len()).any(|k| needs.uses[k] > 0 && !held[k]);
        let held = (0..self.stage.n_scalars)
            .map(|k| {
                let at = offset(k as usize * SCALAR_BYTES);
                held[k as usize].then(|| self.b.ins().load(ty, flags, seg.block, at))
            })
            .collect();
        Reads {
            held,
            needs,
            from_block,
        }
    }

    /// Emits the main, single-vector and scalar loops of one segment; returns the block
    /// reached when the segment is done (unsealed, not yet switched to). With conditions to
    /// specialise for (see [`unswitched`]), the main loop is emitted once per combination of
    /// their truths, behind one branch per condition; the short loops after it stay general.
    fn emit_loops(&mut self, seg: &SegmentVals, unroll: u32, conditions: &[u32]) -> Block {
        let done = self.b.create_block();
        let tail_header = self.b.create_block();
        let tail_i = self.b.append_block_param(tail_header, types::I64);
        let main_done = if unroll > 1 {
            let block = self.b.create_block();
            self.b.append_block_param(block, types::I64);
            block
        } else {
            tail_header
        };
        self.emit_main_loops(seg, unroll, conditions, main_done);
        if unroll > 1 {
            self.b.switch_to_block(main_done);
            self.b.seal_block(main_done);
            let start = self.b.block_params(main_done)[0];
            self.emit_vector_loop(seg, start, (self.lanes, 1), tail_header);
        }
        self.emit_tail(seg, tail_header, tail_i, done);
        done
    }

    /// The loops of a stage with reductions over one segment, in the order that defines
    /// them (`crate::ir::reduce`): per block of `BLOCK` elements, a vector loop of four body
    /// copies per iteration, copy `k` into accumulator `k` of each reduction, while a whole
    /// group of four vectors remains; the accumulators combined as `(a0 ⊕ a1) ⊕ (a2 ⊕ a3)`
    /// and across lanes; a scalar loop over the block's last elements; the partial, widened
    /// to f64, stored at `partials[block * reductions + r]`. Returns the block reached when
    /// the segment is done (unsealed).
    fn emit_reducing_loops(&mut self, seg: &SegmentVals) -> Block {
        use crate::ir::reduce::BLOCK;
        let reductions: Vec<ReduceOp> = self.stage.reductions.iter().map(|r| r.0).collect();
        let n_red = reductions.len();
        let group = i64::from(self.lanes * 4);
        let vector_reads = self.emit_reads(Width::Vector, seg);
        let scalar_reads = self.emit_reads(Width::Scalar, seg);
        let partials = seg
            .partials
            .expect("a reducing stage's records hold its partials");

        let header = self.b.create_block();
        let start = self.b.append_block_param(header, types::I64);
        let index = self.b.append_block_param(header, types::I64);
        let body = self.b.create_block();
        let done = self.b.create_block();
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().jump(header, &args(&[zero, zero]));

        // header(start, b): one block of elements from `start`, the segment's b-th.
        self.b.switch_to_block(header);
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, start, seg.len);
        self.b.ins().brif(more, body, &[], done, &[]);

        self.b.switch_to_block(body);
        self.b.seal_block(body);
        let next_start = self.b.ins().iadd_imm_u(start, BLOCK as i64);
        let end = self.b.ins().umin(next_start, seg.len);
        let count = self.b.ins().isub(end, start);
        let rest = self.b.ins().band_imm_u(count, group - 1);
        let full = self.b.ins().isub(end, rest);
        let identities: Vec<Value> = reductions
            .iter()
            .map(|op| self.float_const(Width::Vector, op.identity()))
            .collect();
        let accs: Vec<Value> = identities.iter().flat_map(|&v| [v; 4]).collect();

        // The vector loop: vloop(i, accumulators) while i < full.
        let vloop = self.b.create_block();
        let vexit = self.b.create_block();
        for block in [vloop, vexit] {
            self.b.append_block_param(block, types::I64);
            for _ in 0..4 * n_red {
                self.b.append_block_param(block, self.vector_ty);
            }
        }
        let carried = |i: Value, accs: &[Value]| {
            let mut v = vec![i];
            v.extend_from_slice(accs);
            args(&v)
        };
        let enter = self.b.ins().icmp(IntCC::UnsignedLessThan, start, full);
        self.b.ins().brif(
            enter,
            vloop,
            &carried(start, &accs),
            vexit,
            &carried(start, &accs),
        );

        self.b.switch_to_block(vloop);
        let params = self.b.block_params(vloop).to_vec();
        let (i, mut accs) = (params[0], params[1..].to_vec());
        for copy in 0..4 {
            let xs = self.emit_body(
                Width::Vector,
                seg,
                &vector_reads,
                i,
                copy * self.lanes,
                false,
            );
            for (r, (&op, x)) in reductions.iter().zip(xs).enumerate() {
                let acc = &mut accs[4 * r + copy as usize];
                *acc = self.accumulate(Width::Vector, op, *acc, x);
            }
        }
        let next = self.b.ins().iadd_imm_u(i, group);
        let again = self.b.ins().icmp(IntCC::UnsignedLessThan, next, full);
        self.b.ins().brif(
            again,
            vloop,
            &carried(next, &accs),
            vexit,
            &carried(next, &accs),
        );
        self.b.seal_block(vloop);

        // vexit(i, accumulators): combine, then the scalar tail up to `end`.
        self.b.switch_to_block(vexit);
        self.b.seal_block(vexit);
        let params = self.b.block_params(vexit).to_vec();
        let (i, accs) = (params[0], params[1..].to_vec());
        let combined: Vec<Value> = reductions
            .iter()
            .enumerate()
            .map(|(r, &op)| self.combine_lanes(op, &accs[4 * r..4 * r + 4]))
            .collect();
        let tail = self.b.create_block();
        let tail_body = self.b.create_block();
        let block_done = self.b.create_block();
        self.b.append_block_param(tail, types::I64);
        for block in [tail, block_done] {
            for _ in 0..n_red {
                self.b.append_block_param(block, self.scalar_ty);
            }
        }
        self.b.ins().jump(tail, &carried(i, &combined));

        self.b.switch_to_block(tail);
        let params = self.b.block_params(tail).to_vec();
        let (i, partial) = (params[0], params[1..].to_vec());
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, i, end);
        self.b
            .ins()
            .brif(more, tail_body, &[], block_done, &args(&partial));

        self.b.switch_to_block(tail_body);
        self.b.seal_block(tail_body);
        let xs = self.emit_body(Width::Scalar, seg, &scalar_reads, i, 0, false);
        let partial: Vec<Value> = reductions
            .iter()
            .zip(partial.iter().zip(xs))
            .map(|(&op, (&acc, x))| self.accumulate(Width::Scalar, op, acc, x))
            .collect();
        let next = self.b.ins().iadd_imm_u(i, 1);
        self.b.ins().jump(tail, &carried(next, &partial));
        self.b.seal_block(tail);

        // block_done(partials): stored as f64, then the next block.
        self.b.switch_to_block(block_done);
        self.b.seal_block(block_done);
        let partial = self.b.block_params(block_done).to_vec();
        let first = self.b.ins().imul_imm_u(index, (n_red * 8) as i64);
        let base = self.b.ins().iadd(partials, first);
        for (r, &p) in partial.iter().enumerate() {
            let wide = match self.scalar_ty {
                types::F32 => self.b.ins().fpromote(types::F64, p),
                _ => p,
            };
            self.b.ins().store(self.flags, wide, base, offset(r * 8));
        }
        let next_index = self.b.ins().iadd_imm_u(index, 1);
        self.b.ins().jump(header, &args(&[next_start, next_index]));
        self.b.seal_block(header);
        done
    }

    /// A float constant of this width.
    fn float_const(&mut self, width: Width, value: f64) -> Value {
        let scalar = match self.scalar_ty {
            types::F32 => self.b.ins().f32const(value as f32),
            _ => self.b.ins().f64const(value),
        };
        match width {
            Width::Scalar => scalar,
            Width::Vector => self.b.ins().splat(self.vector_ty, scalar),
        }
    }

    /// `acc ⊕ map(x)` for reduction `op` (see [`ReduceOp::map`] and [`ReduceOp::combine`]).
    fn accumulate(&mut self, width: Width, op: ReduceOp, acc: Value, x: Value) -> Value {
        let mapped = match op {
            ReduceOp::Sum => x,
            ReduceOp::SumSquares => self.b.ins().fmul(x, x),
            ReduceOp::MaxAbs => self.b.ins().fabs(x),
            ReduceOp::NonFinite => self.b.ins().fsub(x, x),
        };
        self.combine(width, op, acc, mapped)
    }

    /// `a ⊕ b`: the sum, or the maximum as [`Op::Max`] defines it.
    fn combine(&mut self, width: Width, op: ReduceOp, a: Value, b: Value) -> Value {
        match op {
            ReduceOp::Sum | ReduceOp::SumSquares | ReduceOp::NonFinite => self.b.ins().fadd(a, b),
            ReduceOp::MaxAbs => {
                let v = self.emit_op(width, Op::Max, &[Val::Float(a), Val::Float(b)]);
                self.float(width, v)
            }
        }
    }

    /// Four vector accumulators as one scalar: `s = (a0 ⊕ a1) ⊕ (a2 ⊕ a3)` lane-wise, then
    /// `(s0 ⊕ s2) ⊕ (s1 ⊕ s3)` (four lanes) or `s0 ⊕ s1` (two).
    fn combine_lanes(&mut self, op: ReduceOp, accs: &[Value]) -> Value {
        let left = self.combine(Width::Vector, op, accs[0], accs[1]);
        let right = self.combine(Width::Vector, op, accs[2], accs[3]);
        let s = self.combine(Width::Vector, op, left, right);
        let lane = |t: &mut Self, k: u8| t.b.ins().extractlane(s, k);
        if self.lanes == 4 {
            let (s0, s1, s2, s3) = (lane(self, 0), lane(self, 1), lane(self, 2), lane(self, 3));
            let a = self.combine(Width::Scalar, op, s0, s2);
            let b = self.combine(Width::Scalar, op, s1, s3);
            self.combine(Width::Scalar, op, a, b)
        } else {
            let (s0, s1) = (lane(self, 0), lane(self, 1));
            self.combine(Width::Scalar, op, s0, s1)
        }
    }

    /// The main loop specialised for every truth of `conditions` besides those already in
    /// `self.fixed`: a branch on the first condition, then the loops for the rest on each side.
    fn emit_main_loops(
        &mut self,
        seg: &SegmentVals,
        unroll: u32,
        conditions: &[u32],
        after: Block,
    ) {
        let Some((&k, rest)) = conditions.split_first() else {
            let zero = self.b.ins().iconst(types::I64, 0);
            self.emit_vector_loop(seg, zero, (self.lanes * unroll, unroll), after);
            return;
        };
        let at = offset(k as usize * SCALAR_BYTES);
        let scalar = self.b.ins().load(self.scalar_ty, self.flags, seg.block, at);
        let zero_f = self.konst(Width::Scalar, |c| c.zero);
        // True when non-zero, NaN included: how `select` reads a condition.
        let truth = self.b.ins().fcmp(FloatCC::NotEqual, scalar, zero_f);
        let (when_true, when_false) = (self.b.create_block(), self.b.create_block());
        self.b.ins().brif(truth, when_true, &[], when_false, &[]);
        for (block, value) in [(when_true, true), (when_false, false)] {
            self.b.switch_to_block(block);
            self.b.seal_block(block);
            self.fixed.push((k, value));
            self.emit_main_loops(seg, unroll, rest, after);
            self.fixed.pop();
        }
    }

    /// A vector loop from element `start` while `per_iter` more elements remain, `copies`
    /// body copies per iteration; then jumps to `after(i)` (not sealed here).
    ///
    /// The loop is tested at its bottom (once more before it, from here): one compare and
    /// branch per iteration. Its bound, `len - len % per_iter`, is a subtraction so that
    /// Cranelift keeps it in a register instead of recomputing it (`len & -per_iter` would
    /// be rematerialised into the loop) at every iteration.
    fn emit_vector_loop(
        &mut self,
        seg: &SegmentVals,
        start: Value,
        (per_iter, copies): (u32, u32),
        after: Block,
    ) {
        let body = self.b.create_block();
        let i = self.b.append_block_param(body, types::I64);
        let reads = self.emit_reads(Width::Vector, seg);
        let rest = self.b.ins().band_imm_u(seg.len, i64::from(per_iter) - 1);
        let end = self.b.ins().isub(seg.len, rest);
        let enter = self.b.ins().icmp(IntCC::UnsignedLessThan, start, end);
        self.b
            .ins()
            .brif(enter, body, &args(&[start]), after, &args(&[start]));

        // body(i): sealed after its own back edge.
        self.b.switch_to_block(body);
        for copy in 0..copies {
            self.emit_body(Width::Vector, seg, &reads, i, copy * self.lanes, true);
        }
        let next = self.b.ins().iadd_imm_u(i, i64::from(per_iter));
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, next, end);
        self.b
            .ins()
            .brif(more, body, &args(&[next]), after, &args(&[next]));
        self.b.seal_block(body);
    }

    /// The scalar tail: one element per iteration until `len`, then `done`. `entry(i)` loads
    /// the scalars it holds, so they are live neither during the vector loops nor reloaded
    /// per element.
    fn emit_tail(&mut self, seg: &SegmentVals, entry: Block, start: Value, done: Block) {
        let header = self.b.create_block();
        let i = self.b.append_block_param(header, types::I64);
        let body = self.b.create_block();
        self.b.switch_to_block(entry);
        self.b.seal_block(entry);
        let reads = self.emit_reads(Width::Scalar, seg);
        self.b.ins().jump(header, &args(&[start]));

        self.b.switch_to_block(header);
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, i, seg.len);
        self.b.ins().brif(more, body, &[], done, &[]);

        self.b.switch_to_block(body);
        self.b.seal_block(body);
        self.emit_body(Width::Scalar, seg, &reads, i, 0, false);
        let next = self.b.ins().iadd_imm_u(i, 1);
        self.b.ins().jump(header, &args(&[next]));
        self.b.seal_block(header);
    }

    fn ty(&self, width: Width) -> Type {
        match width {
            Width::Vector => self.vector_ty,
            Width::Scalar => self.scalar_ty,
        }
    }

    /// A constant of this width; `emit_consts` created every one the stage uses.
    fn konst(&self, width: Width, c: fn(&Consts) -> Option<[Value; 2]>) -> Value {
        let pair = c(&self.consts).expect("emit_consts creates the constants the stage uses");
        pair[usize::from(width == Width::Vector)]
    }

    /// One copy of the stage body at element `i + first`: loads, ops, stores; returns the
    /// operand of each reduction.
    ///
    /// With `split`, a vector copy's stores branch on NaNs (see the stores below) and the
    /// function returns in the block after them, not the one it started in.
    fn emit_body(
        &mut self,
        width: Width,
        seg: &SegmentVals,
        reads: &Reads,
        i: Value,
        first: u32,
        split: bool,
    ) -> Vec<Value> {
        let ty = self.ty(width);
        let vector = width == Width::Vector;
        let (stage, needs, layout) = (self.stage, &reads.needs, self.layout);
        // `i` in bytes for each element size the streams have (shift 1, 2 or 3).
        let mut byte_index: [Option<Value>; 4] = [None; 4];
        let mut addr = |t: &mut Self, s: usize| {
            let size = layout.dtype(s as u32).size();
            let shift = size.trailing_zeros() as usize;
            let index =
                *byte_index[shift].get_or_insert_with(|| t.b.ins().ishl_imm_u(i, shift as i64));
            let addr = t.b.ins().iadd(seg.streams[s], index);
            (addr, offset(first as usize * size))
        };

        // Each stream the body reads is loaded once, before any op, and widened to the
        // compute type.
        let loaded: Vec<Option<Value>> = (0..stage.n_streams as usize)
            .map(|s| {
                needs.loads[s].then(|| {
                    let (at, offset) = addr(self, s);
                    match layout.dtype(s as u32) {
                        DType::F32 | DType::F64 => self.b.ins().load(ty, self.flags, at, offset),
                        narrow => {
                            convert::load_f32(&mut self.b, narrow, vector, self.flags, at, offset)
                        }
                    }
                })
            })
            .collect();
        // Scalars not held are read at each use from the block, whose address this copy
        // reads from the segment record: the reads then depend on the copy, so Cranelift
        // keeps each one beside its use (where it becomes a memory operand) instead of
        // hoisting it out of the loop into a register.
        // The block's address is the record's second word (byte 8).
        let block = reads
            .from_block
            .then(|| self.b.ins().load(types::I64, self.flags, seg.record, 8));

        let mut vals: Vec<Option<Val>> = Vec::with_capacity(stage.body.len());
        for (inst, &live) in stage.body.iter().zip(&needs.live) {
            if !live {
                vals.push(None);
                continue;
            }
            let mut ops: Vec<Val> = read_args(inst, &self.fixed)
                .iter()
                .map(|a| self.operand(width, a, (&loaded, &reads.held, block), &vals))
                .collect();
            // A scalar read from memory folds into the instruction only as its second
            // operand, and only if it is read last: put it there where the op commutes
            // (exactly, for add and mul: only a NaN's payload could differ, and NaNs
            // are compared as NaN).
            if matches!(inst.op, Op::Add | Op::Mul)
                && matches!(inst.args[0], ElemArg::Scalar(k) if reads.held[k as usize].is_none())
                && !matches!(inst.args[1], ElemArg::Scalar(k) if reads.held[k as usize].is_none())
            {
                ops.swap(0, 1);
            }
            // A select on a condition this loop is specialised for reads one operand: it.
            let result = if inst.op == Op::Select && ops.len() == 1 {
                Val::Float(self.float(width, ops[0]))
            } else {
                self.emit_op(width, inst.op, &ops)
            };
            vals.push(Some(result));
        }
        // What each store writes, where, and (stochastic) with which bits: all computed
        // before the stores, which may be emitted twice (see below).
        let mut element_bits: Option<Value> = None;
        let mut stores: Vec<Store> = Vec::with_capacity(stage.stores.len());
        for &(stream, value) in &stage.stores {
            let v = self.operand(width, &value, (&loaded, &reads.held, block), &vals);
            let value = self.float(width, v);
            let (at, offset) = addr(self, stream as usize);
            let random = layout.stochastic().contains(&stream).then(|| {
                let bits =
                    *element_bits.get_or_insert_with(|| self.element_bits(width, seg, i, first));
                convert::stream_bits(&mut self.b, bits, stream)
            });
            let dtype = layout.dtype(stream);
            stores.push(Store {
                dtype,
                value,
                at,
                offset,
                random,
            });
        }
        self.emit_stores(&stores, vector, split);
        let reductions = &self.stage.reductions;
        reductions
            .iter()
            .map(|(_, value)| {
                let v = self.operand(width, value, (&loaded, &reads.held, block), &vals);
                self.float(width, v)
            })
            .collect()
    }

    /// An operand's value: a loaded stream, a held scalar, a scalar read from the block at
    /// `block` (a load Cranelift may fold into the instruction), or an earlier result.
    fn operand(
        &mut self,
        width: Width,
        arg: &ElemArg,
        (loaded, held, block): (&[Option<Value>], &[Option<Value>], Option<Value>),
        vals: &[Option<Val>],
    ) -> Val {
        Val::Float(match *arg {
            ElemArg::Load(s) => loaded[s as usize].expect("the body loads what it reads"),
            ElemArg::Scalar(k) => match held[k as usize] {
                Some(v) => v,
                None => {
                    let block = block.expect("the block's address is read when needed");
                    // Pure (read-only, cannot trap, movable), so Cranelift places it just
                    // before its use; aligned, as the block's vectors are.
                    let flags = self.flags.with_aligned().with_readonly().with_can_move();
                    let (ty, at) = (self.ty(width), offset(k as usize * SCALAR_BYTES));
                    self.b.ins().load(ty, flags, block, at)
                }
            },
            ElemArg::Value(v) => return vals[v as usize].expect("live values are computed"),
        })
    }

    /// A value as a number: masks become `1.0`/`0.0`.
    fn float(&mut self, width: Width, v: Val) -> Value {
        match v {
            Val::Float(x) => x,
            Val::Mask(m) => match width {
                Width::Vector => {
                    let bits = self.b.ins().bitcast(self.vector_ty, MemFlagsData::new(), m);
                    let one = self.konst(width, |c| c.one);
                    self.b.ins().band(bits, one)
                }
                Width::Scalar => {
                    let (one, zero) = (self.konst(width, |c| c.one), self.konst(width, |c| c.zero));
                    self.b.ins().select(m, one, zero)
                }
            },
        }
    }

    /// A value as a condition: numbers are true when non-zero (NaN included).
    fn mask(&mut self, width: Width, v: Val) -> Value {
        match v {
            Val::Mask(m) => m,
            Val::Float(x) => {
                let zero = self.konst(width, |c| c.zero);
                self.b.ins().fcmp(FloatCC::NotEqual, x, zero)
            }
        }
    }

    /// `cond ? a : b` per lane.
    fn choose(&mut self, width: Width, cond: Value, a: Value, b: Value) -> Value {
        match width {
            Width::Vector => {
                let bits = self
                    .b
                    .ins()
                    .bitcast(self.vector_ty, MemFlagsData::new(), cond);
                self.b.ins().bitselect(bits, a, b)
            }
            Width::Scalar => self.b.ins().select(cond, a, b),
        }
    }

    fn emit_op(&mut self, width: Width, op: Op, ops: &[Val]) -> Val {
        let f: Vec<Value> = match op {
            // select reads its condition as a mask, not as a number.
            Op::Select => ops[1..].iter().map(|&v| self.float(width, v)).collect(),
            _ => ops.iter().map(|&v| self.float(width, v)).collect(),
        };
        let cmp = |t: &mut Self, cc: FloatCC| Val::Mask(t.b.ins().fcmp(cc, f[0], f[1]));
        Val::Float(match op {
            Op::Neg => self.b.ins().fneg(f[0]),
            Op::Abs => self.b.ins().fabs(f[0]),
            Op::Sqrt => self.b.ins().sqrt(f[0]),
            Op::Sign => {
                let zero = self.konst(width, |c| c.zero);
                let one = self.konst(width, |c| c.one);
                let minus_one = self.konst(width, |c| c.minus_one);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, f[0], zero);
                let neg = self.b.ins().fcmp(FloatCC::LessThan, f[0], zero);
                let inner = self.choose(width, neg, minus_one, f[0]);
                self.choose(width, pos, one, inner)
            }
            Op::Add => self.b.ins().fadd(f[0], f[1]),
            Op::Sub => self.b.ins().fsub(f[0], f[1]),
            Op::Mul => self.b.ins().fmul(f[0], f[1]),
            Op::Div => self.b.ins().fdiv(f[0], f[1]),
            Op::Min => self.b.ins().fmin(f[0], f[1]),
            Op::Max => self.b.ins().fmax(f[0], f[1]),
            Op::Eq => return cmp(self, FloatCC::Equal),
            Op::Ne => return cmp(self, FloatCC::NotEqual),
            Op::Lt => return cmp(self, FloatCC::LessThan),
            Op::Le => return cmp(self, FloatCC::LessThanOrEqual),
            Op::Gt => return cmp(self, FloatCC::GreaterThan),
            Op::Ge => return cmp(self, FloatCC::GreaterThanOrEqual),
            Op::Select => {
                let cond = self.mask(width, ops[0]);
                self.choose(width, cond, f[0], f[1])
            }
            Op::Fma => self.b.ins().fma(f[0], f[1], f[2]),
            Op::Exp | Op::Ln | Op::Cos | Op::Floor | Op::Pow => {
                unreachable!("scalar-only ops never reach a stage")
            }
        })
    }
}
