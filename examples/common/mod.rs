//! What the MLP examples share (`train_mlp`, `train_mlp_bf16`): the digits data, the
//! 64 → 64 → 10 MLP's initial weights, the epoch's batch order, and hand-written forward and
//! backward passes in f32 over weights given as ndarray views (wherever they are stored).

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

pub const HIDDEN: usize = 64;
pub const CLASSES: usize = 10;
pub const BATCH: usize = 64;
pub const TRAIN: usize = 1500;
/// The shapes of `[w1, b1, w2, b2]` (biases as 1-row matrices).
pub const SHAPES: [(usize, usize); 4] =
    [(64, HIDDEN), (1, HIDDEN), (HIDDEN, CLASSES), (1, CLASSES)];

/// splitmix64, for weight initialisation and batch order.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, bound: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    }
}

/// The digits: pixels scaled to [0, 1], one image per row; the first [`TRAIN`] rows train,
/// the rest test.
pub struct Data {
    pub x: Array2<f32>,
    pub y: Vec<usize>,
}

pub fn load_digits() -> Data {
    let text = include_str!("../../data/digits.csv");
    let rows: Vec<Vec<f32>> = text
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().expect("a number")).collect())
        .collect();
    let x = Array2::from_shape_fn((rows.len(), 64), |(i, j)| rows[i][j] / 16.0);
    let y = rows.iter().map(|r| r[64] as usize).collect();
    Data { x, y }
}

/// The initial weights `[w1, b1, w2, b2]` in [`SHAPES`], each uniform in ±1/√fan_in (64 for
/// the first layer, [`HIDDEN`] for the second), from a fixed seed.
pub fn initial_weights() -> [Array2<f32>; 4] {
    let mut rng = Rng(42);
    let fan_in = [64, 64, HIDDEN, HIDDEN];
    std::array::from_fn(|k| {
        let bound = 1.0 / (fan_in[k] as f32).sqrt();
        Array2::from_shape_fn(SHAPES[k], |_| rng.uniform(bound))
    })
}

/// The training samples in epoch `e`'s order (a seeded shuffle).
pub fn epoch_order(e: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..TRAIN).collect();
    let mut rng = Rng(1000 + e as u64);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    order
}

/// The MLP's weights, wherever they are stored.
pub struct Weights<'a> {
    pub w1: ArrayView2<'a, f32>,
    pub b1: ArrayView1<'a, f32>,
    pub w2: ArrayView2<'a, f32>,
    pub b2: ArrayView1<'a, f32>,
}

/// The gradients of the weights, in [`Weights`]' shapes.
pub struct Gradients {
    pub w1: Array2<f32>,
    pub b1: Array1<f32>,
    pub w2: Array2<f32>,
    pub b2: Array1<f32>,
}

/// The hidden activations and the logits of a batch.
pub fn forward(w: &Weights<'_>, x: ArrayView2<'_, f32>) -> (Array2<f32>, Array2<f32>) {
    let h = (x.dot(&w.w1) + w.b1).mapv(|v| v.max(0.0));
    let logits = h.dot(&w.w2) + w.b2;
    (h, logits)
}

fn softmax_rows(logits: &Array2<f32>) -> Array2<f32> {
    let mut p = logits.clone();
    for mut row in p.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
    p
}

/// Forward and backward over the samples `batch` (softmax cross-entropy): the summed loss
/// of the samples and the gradient of their mean loss.
pub fn backward(w: &Weights<'_>, data: &Data, batch: &[usize]) -> (f32, Gradients) {
    let x = data.x.select(Axis(0), batch);
    let (h, logits) = forward(w, x.view());
    let mut d = softmax_rows(&logits);
    let mut total = 0.0;
    for (k, &i) in batch.iter().enumerate() {
        total -= d[[k, data.y[i]]].max(1e-12).ln();
        d[[k, data.y[i]]] -= 1.0;
    }
    d /= batch.len() as f32;
    let dh = d.dot(&w.w2.t()) * h.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
    let grads = Gradients {
        w2: h.t().dot(&d),
        b2: d.sum_axis(Axis(0)),
        w1: x.t().dot(&dh),
        b1: dh.sum_axis(Axis(0)),
    };
    (total, grads)
}

/// The fraction of the test images classified correctly.
pub fn accuracy(w: &Weights<'_>, data: &Data) -> f32 {
    let x = data.x.slice(s![TRAIN.., ..]);
    let (_, logits) = forward(w, x);
    let correct = logits
        .rows()
        .into_iter()
        .zip(&data.y[TRAIN..])
        .filter(|(row, &y)| {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            best.0 == y
        })
        .count();
    correct as f32 / (data.y.len() - TRAIN) as f32
}
