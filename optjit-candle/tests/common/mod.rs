//! What the adapter's tests share: seeded values with the awkward ones mixed in, vars made
//! from them, and a loss whose gradients are known.
#![allow(dead_code)]

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Mostly uniform values, with ±0, subnormals, huge and tiny ones mixed in.
    pub fn awkward(&mut self, n: usize) -> Vec<f64> {
        const SPECIAL: [f64; 8] = [0.0, -0.0, 1e-40, -1e-310, 1e30, -1e30, 1e-20, 3.0];
        (0..n)
            .map(|i| match self.next() % 8 {
                0 => SPECIAL[i % SPECIAL.len()],
                _ => self.uniform(),
            })
            .collect()
    }
}

/// Lengths around the vector width (4 f32 lanes, 2 f64 lanes, ...), as the house tests use.
pub const LENGTHS: [usize; 10] = [0, 1, 2, 3, 4, 5, 8, 9, 11, 1027];

/// A var of `dtype` holding `values`.
pub fn var(values: &[f64], dtype: DType) -> Var {
    let t = Tensor::new(values, &Device::Cpu).unwrap();
    Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
}

/// A gradient store with `grads[i]` (of the var's dtype) for `vars[i]`.
pub fn grad_store(vars: &[&Var], grads: &[Vec<f64>]) -> GradStore {
    // A store from a loss no var is in, then filled by hand.
    let dummy = Var::zeros((), DType::F32, &Device::Cpu).unwrap();
    let mut store = dummy
        .as_tensor()
        .affine(1.0, 0.0)
        .unwrap()
        .backward()
        .unwrap();
    for (v, g) in vars.iter().zip(grads) {
        let t = Tensor::new(g.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(v.dtype())
            .unwrap()
            .reshape(v.shape())
            .unwrap();
        store.insert(v.as_tensor(), t);
    }
    store
}

/// A var's elements as f64.
pub fn values(v: &Var) -> Vec<f64> {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The address of a var's first element.
pub fn address(v: &Var) -> usize {
    let (storage, layout) = v.as_tensor().storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        panic!("a CPU var")
    };
    let base = match cpu {
        candle_core::CpuStorage::F32(x) => x.as_ptr() as usize,
        candle_core::CpuStorage::F64(x) => x.as_ptr() as usize,
        candle_core::CpuStorage::BF16(x) => x.as_ptr() as usize,
        candle_core::CpuStorage::F16(x) => x.as_ptr() as usize,
        _ => panic!("a float var"),
    };
    base + layout.start_offset() * v.dtype().size_in_bytes()
}
