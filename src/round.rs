//! Placeholder (replaced by the conversions branch).
#![allow(missing_docs)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
pub fn f32_to_bf16_stochastic(x: f32, r: u32) -> u16 {
    let _ = r;
    f32_to_bf16(x)
}
pub fn f32_to_f16_stochastic(x: f32, r: u32) -> u16 {
    let _ = r;
    f32_to_f16(x)
}
pub fn random_bits(key: [u32; 2], index: u32) -> u32 {
    key[0] ^ key[1] ^ index
}
pub fn step_key(seed: u64, step: u64) -> [u32; 2] {
    [seed as u32, step as u32]
}
