//! The demo's model: a one-hidden-layer MLP (64 → hidden → 10, ReLU, softmax cross-entropy)
//! on the UCI handwritten digits, with forward and backward passes written by hand over
//! ndarray, and weights and gradients owned by an [`Optimizer`].
//!
//! Adapted from `examples/train_mlp.rs`: the same split, initialisation and batch order.

use ndarray::{s, Array2, ArrayView1, ArrayView2, Axis};
use optjit::{Optimizer, Param, Result};

/// Pixels per image (8 × 8).
const PIXELS: usize = 64;
/// Digits 0 to 9.
const CLASSES: usize = 10;
/// Images per mini-batch.
pub const BATCH: usize = 64;
/// Images used for training: the first `TRAIN` of the file; the rest are the test set.
pub const TRAIN: usize = 1500;
/// Seed of the weight initialisation (the same for every optimizer).
const INIT_SEED: u64 = 42;
/// Seed of the batch order of epoch 0; epoch `e` uses `ORDER_SEED + e`.
const ORDER_SEED: u64 = 1000;

/// The digits, embedded so that the demo runs from any directory.
const DIGITS_CSV: &str = include_str!("../../../data/digits.csv");

/// splitmix64 (Steele, Lea and Flood, 2014), for weight initialisation and batch order.
struct Rng(u64);

impl Rng {
    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-bound, bound)`.
    fn uniform(&mut self, bound: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    }
}

/// Images (one per row, pixels scaled to `[0, 1]`) and their digits.
pub struct Digits {
    /// One image per row.
    pub x: Array2<f32>,
    /// The digit of each image.
    pub y: Vec<usize>,
}

impl Digits {
    /// The embedded data set (data/digits.csv).
    pub fn load() -> Digits {
        let rows: Vec<Vec<f32>> = DIGITS_CSV
            .lines()
            .map(|line| {
                line.split(',')
                    .map(|v| v.parse().expect("data/digits.csv holds only numbers"))
                    .collect()
            })
            .collect();
        assert!(
            rows.iter().all(|r| r.len() == PIXELS + 1) && rows.len() > TRAIN,
            "data/digits.csv has more than {TRAIN} rows of {PIXELS} pixels and a digit"
        );
        let x = Array2::from_shape_fn((rows.len(), PIXELS), |(i, j)| rows[i][j] / 16.0);
        let y = rows.iter().map(|r| r[PIXELS] as usize).collect();
        Digits { x, y }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.y.len()
    }
}

/// The MLP's parameters, as handles into the optimizer that owns them.
pub struct Mlp {
    w1: Param<f32>,
    b1: Param<f32>,
    w2: Param<f32>,
    b2: Param<f32>,
}

impl Mlp {
    /// Adds freshly initialised weights (uniform in ±1/√fan_in, the same for every
    /// optimizer) to `group` of `opt`.
    pub fn new(opt: &mut Optimizer, group: usize, hidden: usize) -> Result<Mlp> {
        let mut rng = Rng(INIT_SEED);
        let mut init = |rows: usize, cols: usize, fan_in: usize| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            Array2::from_shape_fn((rows, cols), |_| rng.uniform(bound))
        };
        let (w1, b1) = (init(PIXELS, hidden, PIXELS), init(1, hidden, PIXELS));
        let (w2, b2) = (init(hidden, CLASSES, hidden), init(1, CLASSES, hidden));
        Ok(Mlp {
            w1: opt.add_param(group, "w1", &w1)?,
            b1: opt.add_param(group, "b1", &b1.row(0))?,
            w2: opt.add_param(group, "w2", &w2)?,
            b2: opt.add_param(group, "b2", &b2.row(0))?,
        })
    }

    /// The hidden activations and the logits of a batch.
    fn forward(
        &self,
        opt: &Optimizer,
        x: ArrayView2<'_, f32>,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let h = (x.dot(&matrix(opt, &self.w1)?) + vector(opt, &self.b1)?).mapv(|v| v.max(0.0));
        let logits = h.dot(&matrix(opt, &self.w2)?) + vector(opt, &self.b2)?;
        Ok((h, logits))
    }

    /// One epoch of mini-batch training over the training set (batch order seeded by
    /// `epoch`); returns the mean cross-entropy loss.
    pub fn epoch(&self, opt: &mut Optimizer, data: &Digits, epoch: usize) -> Result<f32> {
        let mut order: Vec<usize> = (0..TRAIN).collect();
        let mut rng = Rng(ORDER_SEED + epoch as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut total = 0.0;
        for batch in order.chunks(BATCH) {
            let x = data.x.select(Axis(0), batch);
            let (h, logits) = self.forward(opt, x.view())?;
            // d = ∂loss/∂logits = (softmax − one_hot) / batch size.
            let mut d = softmax_rows(&logits);
            for (k, &i) in batch.iter().enumerate() {
                total -= d[[k, data.y[i]]].max(1e-12).ln();
                d[[k, data.y[i]]] -= 1.0;
            }
            d /= batch.len() as f32;
            let w2 = matrix(opt, &self.w2)?.to_owned();
            let dh = d.dot(&w2.t()) * h.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
            opt.zero_grad();
            {
                let (_, mut grads) = opt.split::<f32>();
                grads.view_mut(&self.w2)?.assign(&h.t().dot(&d).into_dyn());
                grads
                    .view_mut(&self.b2)?
                    .assign(&d.sum_axis(Axis(0)).into_dyn());
                grads.view_mut(&self.w1)?.assign(&x.t().dot(&dh).into_dyn());
                grads
                    .view_mut(&self.b1)?
                    .assign(&dh.sum_axis(Axis(0)).into_dyn());
            }
            opt.step()?;
        }
        Ok(total / TRAIN as f32)
    }

    /// The fraction of test images (those after the first [`TRAIN`]) classified correctly.
    pub fn accuracy(&self, opt: &Optimizer, data: &Digits) -> Result<f32> {
        let (_, logits) = self.forward(opt, data.x.slice(s![TRAIN.., ..]))?;
        let correct = logits
            .rows()
            .into_iter()
            .zip(&data.y[TRAIN..])
            .filter(|(row, &y)| argmax(row.view()) == y)
            .count();
        Ok(correct as f32 / (data.len() - TRAIN) as f32)
    }
}

/// The index of the largest value (the first one on ties; NaN never wins).
fn argmax(row: ArrayView1<'_, f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// A weight matrix of the MLP, viewed in the optimizer's storage.
fn matrix<'a>(opt: &'a Optimizer, h: &Param<f32>) -> Result<ArrayView2<'a, f32>> {
    Ok(opt
        .param_view(h)?
        .into_dimensionality()
        .expect("weight matrices are added as 2-D arrays"))
}

/// A bias vector of the MLP, viewed in the optimizer's storage.
fn vector<'a>(opt: &'a Optimizer, h: &Param<f32>) -> Result<ArrayView1<'a, f32>> {
    Ok(opt
        .param_view(h)?
        .into_dimensionality()
        .expect("biases are added as 1-D arrays"))
}

/// Softmax of each row, shifted by the row's maximum so that `exp` cannot overflow.
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_embedded_digits_load_with_labels_0_to_9() {
        let data = Digits::load();
        assert_eq!(data.x.dim(), (data.len(), PIXELS));
        assert!(data.y.iter().all(|&y| y < CLASSES));
        assert!(data.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn softmax_rows_sum_to_one_even_for_huge_logits() {
        let p = softmax_rows(&array![[1e30f32, 0.0, -1e30], [1.0, 1.0, 1.0]]);
        for row in p.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-6, "{row}");
        }
        assert_eq!(p[[0, 0]], 1.0);
    }

    #[test]
    fn argmax_takes_the_first_of_ties_and_skips_nan() {
        assert_eq!(argmax(array![1.0f32, 3.0, 3.0].view()), 1);
        assert_eq!(argmax(array![f32::NAN, 2.0, 1.0].view()), 1);
    }
}
