//! Printing of programs in the house IR style: `$N` scalars, `%N` element values, stream
//! loads as `name[i]`, one instruction per line, numbering restarted per section.

use super::{ElemArg, Program, ScalarInst, Stage};
use crate::ir::print_signature;
use crate::DType;
use std::fmt;

/// A [`Program`] printed with the element type of one dtype (see [`Program::display`]).
pub struct ProgramDisplay<'a> {
    pub(super) program: &'a Program,
    pub(super) dtype: DType,
}

impl fmt::Display for ProgramDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.program;
        write!(f, "program ")?;
        print_signature(f, &p.name, &p.hypers, &p.slots)?;
        // The prologue in sections: before each phase, what that phase needs.
        let mut start = 0;
        let mut first_reduction = 0;
        for (k, phase) in p.phases.iter().enumerate() {
            self.prologue_section(f, k, start, phase.prologue_end as usize)?;
            start = phase.prologue_end as usize;
            writeln!(
                f,
                "phase {k} (scalars: {}):",
                scalar_list(&phase.kernel_scalars)
            )?;
            self.body(f, &phase.stage, &phase.kernel_scalars)?;
            for (r, ((op, value), scope)) in
                phase.stage.reductions.iter().zip(&phase.scopes).enumerate()
            {
                let arg = self.arg(value, &phase.kernel_scalars);
                let n = first_reduction + r;
                writeln!(f, "  r{n} = {}.{} {arg}", op.name(), scope.name())?;
            }
            first_reduction += phase.stage.reductions.len();
        }
        self.prologue_section(f, p.phases.len(), start, p.prologue.insts.len())?;
        for (slot, value) in &p.prologue.state_updates {
            writeln!(f, "  {} <- ${value}", p.slots[*slot as usize].name)?;
        }
        if let Some(skip) = p.prologue.skip {
            writeln!(f, "  skip if ${skip}")?;
        }
        let scalars = &p.prologue.kernel_scalars;
        writeln!(f, "stage (scalars: {}):", scalar_list(scalars))?;
        self.body(f, &p.stage, scalars)?;
        for (stream, value) in &p.stage.stores {
            let arg = self.arg(value, scalars);
            writeln!(f, "  {}[i] <- {arg}", p.stream_name(*stream))?;
        }
        Ok(())
    }
}

fn scalar_list(scalars: &[u32]) -> String {
    let list: Vec<String> = scalars.iter().map(|s| format!("${s}")).collect();
    list.join(", ")
}

impl ProgramDisplay<'_> {
    /// Prologue instructions `start..end`, under a heading naming the phase they follow.
    fn prologue_section(
        &self,
        f: &mut fmt::Formatter<'_>,
        after: usize,
        start: usize,
        end: usize,
    ) -> fmt::Result {
        let p = self.program;
        match after {
            0 => writeln!(f, "prologue:")?,
            k => writeln!(f, "prologue after phase {}:", k - 1)?,
        }
        for (i, inst) in p.prologue.insts.iter().enumerate().take(end).skip(start) {
            let rhs = match *inst {
                ScalarInst::Const(c) => format!("const {c}"),
                ScalarInst::Hyper(n) => format!("hyper {}", p.hypers[n as usize].name),
                ScalarInst::Step => "step".to_string(),
                ScalarInst::State(n) => format!("state {}", p.slots[n as usize].name),
                ScalarInst::Apply(op, args) => {
                    let args: Vec<String> =
                        args[..op.arity()].iter().map(|a| format!("${a}")).collect();
                    format!("{}.f64 {}", op.name(), args.join(", "))
                }
                ScalarInst::Reduced(n) => format!("r{n}"),
            };
            writeln!(f, "  ${i} = {rhs}")?;
        }
        Ok(())
    }

    fn arg(&self, a: &ElemArg, scalars: &[u32]) -> String {
        match *a {
            ElemArg::Load(s) => format!("{}[i]", self.program.stream_name(s)),
            ElemArg::Scalar(k) => format!("${}", scalars[k as usize]),
            ElemArg::Value(v) => format!("%{v}"),
        }
    }

    fn body(&self, f: &mut fmt::Formatter<'_>, stage: &Stage, scalars: &[u32]) -> fmt::Result {
        let ty = self.dtype.name();
        for (i, inst) in stage.body.iter().enumerate() {
            let args: Vec<String> = inst.args().iter().map(|a| self.arg(a, scalars)).collect();
            writeln!(f, "  %{i} = {}.{ty} {}", inst.op.name(), args.join(", "))?;
        }
        Ok(())
    }
}
