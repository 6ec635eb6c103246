//! Printing of programs in the house IR style: `$N` scalars, `%N` element values, stream
//! loads as `name[i]`, one instruction per line, numbering restarted per section.

use super::{ElemArg, Program, ScalarInst};
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
        writeln!(f, "prologue:")?;
        for (i, inst) in p.prologue.insts.iter().enumerate() {
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
            };
            writeln!(f, "  ${i} = {rhs}")?;
        }
        for (slot, value) in &p.prologue.state_updates {
            writeln!(f, "  {} <- ${value}", p.slots[*slot as usize].name)?;
        }
        let scalars: Vec<String> = p
            .prologue
            .kernel_scalars
            .iter()
            .map(|s| format!("${s}"))
            .collect();
        writeln!(f, "stage (scalars: {}):", scalars.join(", "))?;
        let arg = |a: &ElemArg| match *a {
            ElemArg::Load(s) => format!("{}[i]", p.stream_name(s)),
            ElemArg::Scalar(k) => format!("${}", p.prologue.kernel_scalars[k as usize]),
            ElemArg::Value(v) => format!("%{v}"),
        };
        let ty = self.dtype.name();
        for (i, inst) in p.stage.body.iter().enumerate() {
            let args: Vec<String> = inst.args().iter().map(arg).collect();
            writeln!(f, "  %{i} = {}.{ty} {}", inst.op.name(), args.join(", "))?;
        }
        for (stream, value) in &p.stage.stores {
            writeln!(f, "  {}[i] <- {}", p.stream_name(*stream), arg(value))?;
        }
        Ok(())
    }
}
