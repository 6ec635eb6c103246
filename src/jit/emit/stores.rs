//! A body copy's stores and the generator's lanes: what `emit.rs`'s loops store, narrowed
//! with or without the NaN path, and the random bits stochastic stores read.

use super::{convert, SegmentVals, Translator, Width};
use crate::DType;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

/// One store of a body copy, computed before it is emitted.
pub(super) struct Store {
    pub(super) dtype: DType,
    pub(super) value: Value,
    pub(super) at: Value,
    pub(super) offset: i32,
    /// Stochastic rounding's bits for the lanes.
    pub(super) random: Option<Value>,
}

/// A segment's stochastic-rounding values, defined before its loops: the generator key's
/// second word (an `i32`, and splatted) and the generator's counter of the segment's first
/// element (its index plus the key's first word, see [`crate::round::random_bits`]).
#[derive(Clone, Copy)]
pub(super) struct NoiseVals {
    pub(super) key1: Value,
    pub(super) key1_vector: Value,
    pub(super) counter: Value,
}

impl Translator<'_> {
    /// Emits one body copy's `stores` (vector ones if `vector`). With `split`, a vector
    /// copy branches on whether any value it narrows is a NaN: the usual block narrows
    /// without the NaN path (3–4 instructions per store), a cold one with it, the same bits
    /// for every other value; the function then returns in the block after both.
    pub(super) fn emit_stores(&mut self, stores: &[Store], vector: bool, split: bool) {
        let narrowed: Vec<Value> = (stores.iter())
            .filter(|s| split && vector && s.dtype.is_narrow())
            .map(|s| s.value)
            .collect();
        if !narrowed.is_empty() {
            let any_nan = self.any_nan(&narrowed);
            let (usual, nans, join) = (
                self.b.create_block(),
                self.b.create_block(),
                self.b.create_block(),
            );
            self.b.ins().brif(any_nan, nans, &[], usual, &[]);
            self.b.set_cold_block(nans);
            for (block, with_nans) in [(usual, false), (nans, true)] {
                self.b.switch_to_block(block);
                self.b.seal_block(block);
                self.store_all(stores, vector, with_nans);
                self.b.ins().jump(join, &[]);
            }
            self.b.switch_to_block(join);
            self.b.seal_block(join);
        } else {
            self.store_all(stores, vector, true);
        }
    }

    /// The stores of one body copy; narrowing ones with or without their NaN path.
    fn store_all(&mut self, stores: &[Store], vector: bool, nans: bool) {
        for store in stores {
            match store.dtype {
                DType::F32 | DType::F64 => {
                    self.b
                        .ins()
                        .store(self.flags, store.value, store.at, store.offset);
                }
                narrow => convert::store_f32(
                    &mut self.b,
                    narrow,
                    vector,
                    self.flags,
                    store.value,
                    store.at,
                    store.offset,
                    store.random,
                    nans,
                ),
            }
        }
    }

    /// Whether any lane of the F32X4 `values` is a NaN, as an `i8` truth: `fcmp uno` takes
    /// two values at a time.
    fn any_nan(&mut self, values: &[Value]) -> Value {
        let masks: Vec<Value> = values
            .chunks(2)
            .map(|pair| {
                let (a, b) = (pair[0], *pair.last().expect("chunks are not empty"));
                self.b.ins().fcmp(FloatCC::Unordered, a, b)
            })
            .collect();
        let mask = (masks[1..].iter()).fold(masks[0], |acc, &m| self.b.ins().bor(acc, m));
        self.b.ins().vany_true(mask)
    }

    /// The generator's bits of elements `i + first..` (one per lane), which every
    /// stochastic store of them reads through its stream's multiplier: the generator index
    /// of element `j` of the segment is `index + j` (see [`crate::Noise`]).
    pub(super) fn element_bits(
        &mut self,
        width: Width,
        seg: &SegmentVals,
        i: Value,
        first: u32,
    ) -> Value {
        let NoiseVals {
            key1,
            key1_vector,
            counter,
        } = seg
            .noise
            .expect("a stochastic layout's records hold the key");
        let i = self.b.ins().ireduce(types::I32, i);
        let base = self.b.ins().iadd(i, counter);
        match width {
            Width::Scalar => {
                let base = self.b.ins().iadd_imm_u(base, i64::from(first));
                convert::mix(&mut self.b, key1, base)
            }
            Width::Vector => {
                // The copies' splats are identical (Cranelift merges them into one per
                // iteration); each copy's lane offsets are a constant.
                let lanes = self.b.ins().splat(types::I32X4, base);
                let offsets: Vec<u8> = (0u32..4)
                    .flat_map(|k| first.wrapping_add(k).to_le_bytes())
                    .collect();
                let constant = self.b.func.dfg.constants.insert(offsets.into());
                let offsets = self.b.ins().vconst(types::I32X4, constant);
                let counters = self.b.ins().iadd(lanes, offsets);
                convert::mix(&mut self.b, key1_vector, counters)
            }
        }
    }
}
