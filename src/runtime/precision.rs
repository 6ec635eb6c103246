//! How an optimizer stores a parameter's streams: the state slots' dtypes and which streams
//! round stochastically (see [`Precision`]).

use crate::{DType, Error, Layout, Program, Result};

/// How the optimizer stores the parameters added after it is set (see
/// [`crate::Optimizer::with_precision`]): a parameter and its gradient are stored in the
/// parameter's dtype; each element state slot in [`Precision::state`]'s (the parameter's
/// when `None`, as PyTorch keeps state in the parameter's dtype), or a dtype of its own
/// ([`Precision::slots`]). All of them compute in one type (f32 for f32, bf16 and f16; f64
/// for f64). Stores to bf16 and f16 streams round to nearest even, or stochastically for
/// the streams named in [`Precision::stochastic`].
///
/// ```
/// use optjit::{optim::Adam, DType, Optimizer, Precision};
/// use half::bf16;
///
/// // bf16 parameters and gradients, f32 state ("fp32 optimizer states").
/// let mut opt = Optimizer::new(&Adam::default().graph()?)?
///     .with_precision(Precision::state(DType::F32));
/// let g = opt.add_param_group(&[])?;
/// let w = opt.add_param(g, "w", &ndarray::arr1(&[bf16::from_f32(1.0); 3]))?;
/// opt.set_grad(&w, &[bf16::from_f32(0.5); 3])?;
/// opt.step()?;
/// assert_eq!(opt.state_elems(&w, "exp_avg")?.map(|s| s.dtype()), Some(DType::F32));
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Precision {
    /// The dtype of every element state slot not in `slots`; `None`: the parameter's.
    pub state: Option<DType>,
    /// Element state slots stored in a dtype of their own, by name.
    pub slots: Vec<(String, DType)>,
    /// The streams whose stores round stochastically: `"param"` or an element slot's name;
    /// each must be stored as bf16 or f16.
    pub stochastic: Vec<String>,
    /// The seed of the stochastic rounding's generator (see [`crate::round`]).
    pub seed: u64,
}

impl Precision {
    /// Every element state slot stored as `dtype`.
    pub fn state(dtype: DType) -> Precision {
        Precision {
            state: Some(dtype),
            ..Precision::default()
        }
    }

    /// The same, with slot `name` stored as `dtype`.
    pub fn with_slot(mut self, name: &str, dtype: DType) -> Precision {
        self.slots.push((name.to_string(), dtype));
        self
    }

    /// The same, with stochastic rounding of the stores to `streams` (`"param"` or element
    /// slot names) from a generator seeded with `seed`.
    pub fn with_stochastic_rounding(mut self, streams: &[&str], seed: u64) -> Precision {
        self.stochastic = streams.iter().map(|s| s.to_string()).collect();
        self.seed = seed;
        self
    }

    /// The layout of a parameter of dtype `param` under `program` (resolved to its streams).
    /// Fails with [`Error::UnknownSlot`] on a name that is not an element slot of the
    /// program (or `"param"`), [`Error::DTypeMismatch`] when the dtypes do not share a
    /// compute type, [`Error::InvalidOption`] when a stochastic stream is not bf16 or f16.
    pub(crate) fn layout(&self, param: DType, program: &Program) -> Result<Layout> {
        let names: Vec<&str> = program
            .element_slots()
            .map(|s| program.slots[s].name.as_str())
            .collect();
        let unknown = |name: &str| Error::UnknownSlot {
            name: name.to_string(),
        };
        if let Some((name, _)) = self
            .slots
            .iter()
            .find(|(n, _)| !names.contains(&n.as_str()))
        {
            return Err(unknown(name));
        }
        let slot = |name: &str| {
            let own = self.slots.iter().rev().find(|(n, _)| n == name);
            own.map(|&(_, d)| d).or(self.state).unwrap_or(param)
        };
        let mut dtypes = vec![param, param];
        dtypes.extend(names.iter().map(|n| slot(n)));
        let n_streams = dtypes.len() as u32;
        let stochastic = self
            .stochastic
            .iter()
            .map(|name| match name.as_str() {
                "param" => Ok(0),
                name => (names.iter().position(|n| *n == name))
                    .map(|k| 2 + k as u32)
                    .ok_or_else(|| unknown(name)),
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Layout::new(dtypes)?
            .with_stochastic(&stochastic)?
            .resolve(n_streams))
    }
}
