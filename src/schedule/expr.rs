//! A per-step scalar expression compiled on its own, for the places that need its value
//! outside an optimizer: a [`crate::schedule::Factor`] of the epoch, `optjit schedule`, and
//! [`crate::schedule::graph::value_at`].

use crate::program::Program;
use crate::{passes, text, Builder, Error, Expr, Result};

/// An expression of per-step scalars (hyperparameters and `step`), compiled as the only
/// state update of a one-slot graph; its value is what the prologue computes, in f64.
#[derive(Clone, Debug)]
pub struct ScalarExpr {
    program: Program,
    /// Where the value is among the prologue's instructions.
    value: u32,
    /// The hyperparameters' defaults.
    defaults: Vec<f64>,
}

impl ScalarExpr {
    /// The expression `build` makes.
    pub fn build(build: impl for<'b> Fn(&'b Builder) -> Expr<'b>) -> Result<ScalarExpr> {
        let b = Builder::new("expression");
        b.scalar_state("value", 0.0);
        b.set_state("value", build(&b))?;
        b.set_param(b.param());
        ScalarExpr::compile(&b.finish()?)
    }

    /// `source` in the text form's syntax, over the hyperparameters `hypers` (name and
    /// default) and `step`. Fails with [`Error::Text`] positioned within `source` (line 1).
    ///
    /// ```
    /// use optjit::schedule::ScalarExpr;
    ///
    /// let e = ScalarExpr::parse("select(epoch < 2, 1, 0.5 ^ epoch)", &[("epoch", 0.0)])?;
    /// assert_eq!(e.at(&[3.0], 1), 0.125);
    /// # Ok::<(), optjit::Error>(())
    /// ```
    pub fn parse(source: &str, hypers: &[(&str, f64)]) -> Result<ScalarExpr> {
        const VALUE: &str = "    value = ";
        let header: Vec<String> = hypers.iter().map(|(n, d)| format!("{n} = {d:?}")).collect();
        let wrapped = format!(
            "optimizer expression({}) {{\n    scalar state value = 0\n{VALUE}{source}\n    param = param\n}}\n",
            header.join(", ")
        );
        let graph = text::parse(&wrapped).map_err(|e| match e {
            // Within the expression (line 3), or at its end (found on the next line).
            Error::Text(mut t) if t.line >= 3 => {
                t.column = match t.line {
                    3 => t.column.saturating_sub(VALUE.chars().count()),
                    _ => source.chars().count() + 1,
                };
                t.line = 1;
                t.source_line = source.lines().next().unwrap_or("").to_string();
                Error::Text(t)
            }
            other => other,
        })?;
        ScalarExpr::compile(&graph)
    }

    fn compile(graph: &crate::Graph) -> Result<ScalarExpr> {
        let program = passes::compile(graph)?;
        let (_, value) = program.prologue.state_updates[0];
        let defaults = program.hypers.iter().map(|h| h.default).collect();
        Ok(ScalarExpr {
            program,
            value,
            defaults,
        })
    }

    /// Its value with the hyperparameters at `hypers` (in their order) at the 1-based
    /// `step`.
    pub fn at(&self, hypers: &[f64], step: u64) -> f64 {
        let mut values = Vec::with_capacity(self.program.prologue.insts.len());
        self.program
            .eval_prologue(hypers, step, |_| 0.0, &mut values);
        values[self.value as usize]
    }

    /// Its value with every hyperparameter at its default, at `step`.
    pub fn at_step(&self, step: u64) -> f64 {
        self.at(&self.defaults, step)
    }
}
