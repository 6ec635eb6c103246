//! Placeholder (replaced by the conversions branch).
#![allow(missing_docs, clippy::too_many_arguments)]
use crate::DType;
use cranelift_codegen::ir::{MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
pub(crate) fn load_f32(
    _b: &mut FunctionBuilder,
    _dtype: DType,
    _vector: bool,
    _flags: MemFlagsData,
    _addr: Value,
    _offset: i32,
) -> Value {
    unimplemented!()
}
pub(crate) fn store_f32(
    _b: &mut FunctionBuilder,
    _dtype: DType,
    _vector: bool,
    _flags: MemFlagsData,
    _value: Value,
    _addr: Value,
    _offset: i32,
    _random: Option<Value>,
) {
    unimplemented!()
}
pub(crate) fn random_bits(_b: &mut FunctionBuilder, _key: [Value; 2], _index: Value) -> Value {
    unimplemented!()
}
