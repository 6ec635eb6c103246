//! Criterion benchmarks of one optimizer step, in cache (2^16 elements) and beyond it (2^22),
//! on one thread: the JIT through `Optimizer::step`, the handwritten native loop, and the
//! chunked interpreter. `optjit bench` is the full suite with the bandwidth floor; this is
//! the statistically careful view of a few points.
//!
//! Run with `cargo bench --bench kernels`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array1;
use optjit::bench::native::NativeOptimizer;
use optjit::{Executor, Optimizer};

fn optimizer(native: NativeOptimizer, executor: Executor, n: usize) -> Optimizer {
    let mut opt = Optimizer::new(&native.graph().unwrap())
        .unwrap()
        .with_executor(executor)
        .with_threads(1);
    let g = opt.add_param_group(&[]).unwrap();
    let h = opt
        .add_param(g, "w", &Array1::from_elem(n, 1.0f32))
        .unwrap();
    let grad: Vec<f32> = (0..n).map(|i| ((i % 997) as f32 - 498.0) * 1e-3).collect();
    opt.set_grad(&h, &grad).unwrap();
    opt
}

fn steps(c: &mut Criterion) {
    for native in [NativeOptimizer::Adam, NativeOptimizer::SgdMomentum] {
        let mut group = c.benchmark_group(native.name());
        for n in [1usize << 16, 1 << 22] {
            group.throughput(Throughput::Bytes((native.bytes_per_element() * n) as u64));
            for (name, executor) in [("jit", Executor::Jit), ("chunked", Executor::Chunked)] {
                let mut opt = optimizer(native, executor, n);
                group.bench_function(BenchmarkId::new(name, n), |b| {
                    b.iter(|| opt.step().unwrap())
                });
            }
            let (mut p, grad) = (vec![1.0f32; n], vec![0.25f32; n]);
            let mut state = vec![vec![0.0f32; n]; native.slots().len()];
            let mut step = 0;
            group.bench_function(BenchmarkId::new("native", n), |b| {
                b.iter(|| {
                    step += 1;
                    let mut s: Vec<&mut [f32]> =
                        state.iter_mut().map(|s| s.as_mut_slice()).collect();
                    native.step(step, &mut p, &grad, &mut s).unwrap();
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
