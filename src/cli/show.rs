//! `optjit list`, `optjit show` and `optjit check`: what the built-ins are, what an optimizer
//! looks like at each stage of compilation, and whether `.opt` files compile.

use super::output::{exit, out, outln, CliError};
use clap::ValueEnum;
use optjit::ir::SlotKind;
use optjit::{optim, passes, text, DType, Error, Graph, Jit, JitOptions, Program};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The optimizer `source` names, and its label in output: a built-in (see [`optim::NAMES`])
/// under that name, or else an `.opt` file, when a file of that name exists or the name ends
/// in `.opt`, under the name in its header.
///
/// The label of a built-in is not always its graph's name: `sgd_momentum` is a graph named
/// `sgd`.
pub fn load(source: &str) -> Result<(String, Graph), CliError> {
    if let Some(graph) = optim::by_name(source) {
        return Ok((source.to_string(), graph));
    }
    let path = Path::new(source);
    if path.exists() || path.extension().is_some_and(|e| e == "opt") {
        let graph = text::parse_file(path)?;
        return Ok((graph.name().to_string(), graph));
    }
    Err(CliError::UnknownOptimizer(source.to_string()))
}

/// Arguments of `optjit list`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// One JSON object per optimizer and line, instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints every built-in optimizer with its hyperparameters (and their defaults) and its
/// state slots.
pub fn list(args: &ListArgs) -> ExitCode {
    let builtins: Vec<(&str, Graph)> = optim::NAMES
        .iter()
        .filter_map(|&n| Some((n, optim::by_name(n)?)))
        .collect();
    if args.json {
        for (name, graph) in &builtins {
            outln(list_json(name, graph));
        }
    } else {
        out(list_table(&builtins));
    }
    ExitCode::SUCCESS
}

/// The state slots as listed: comma-separated, `(scalar)` after a per-parameter scalar, `-`
/// for none.
fn state_text(graph: &Graph) -> String {
    if graph.slots().is_empty() {
        return "-".to_string();
    }
    let slots: Vec<String> = graph
        .slots()
        .iter()
        .map(|s| match s.kind {
            SlotKind::Element => s.name.clone(),
            SlotKind::Scalar => format!("{} (scalar)", s.name),
            SlotKind::Group => format!("{} (group)", s.name),
            SlotKind::Optimizer => format!("{} (optimizer)", s.name),
        })
        .collect();
    slots.join(", ")
}

/// The table of `optjit list`: one built-in per line under its name in [`optim::NAMES`] (a
/// graph's own name can be shared: `sgd_momentum` is a graph named `sgd`), columns aligned.
/// Defaults are printed in shortest round-trip form (`1e-8`, `0.9`), as in the IR.
fn list_table(builtins: &[(&str, Graph)]) -> String {
    let header = ["optimizer", "state", "hyperparameters (defaults)"].map(String::from);
    let rows: Vec<[String; 3]> = builtins
        .iter()
        .map(|(name, g)| {
            let hypers: Vec<String> = g
                .hypers()
                .iter()
                .map(|h| format!("{}={:?}", h.name, h.default))
                .collect();
            [name.to_string(), state_text(g), hypers.join(" ")]
        })
        .collect();
    let width = |col: usize| {
        rows.iter()
            .chain([&header])
            .map(|r| r[col].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut table = String::new();
    for [name, state, hypers] in [&header].into_iter().chain(&rows) {
        let line = format!("{name:<w0$}  {state:<w1$}  {hypers}");
        // Writing to a String cannot fail.
        let _ = writeln!(table, "{}", line.trim_end());
    }
    table
}

/// One line of `optjit list --json`: hyperparameters and state as arrays, in their order.
fn list_json(name: &str, graph: &Graph) -> serde_json::Value {
    let hypers: Vec<serde_json::Value> = graph
        .hypers()
        .iter()
        .map(|h| serde_json::json!({ "name": h.name, "default": h.default }))
        .collect();
    let state: Vec<serde_json::Value> = graph
        .slots()
        .iter()
        .map(|s| {
            let kind = match s.kind {
                SlotKind::Element => "element",
                SlotKind::Scalar => "scalar",
                SlotKind::Group => "group",
                SlotKind::Optimizer => "optimizer",
            };
            serde_json::json!({ "name": s.name, "init": s.init, "kind": kind })
        })
        .collect();
    serde_json::json!({ "name": name, "hypers": hypers, "state": state })
}

/// What `optjit show` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// The graph as built or parsed.
    Graph,
    /// The graph, then the result of every pass, ending with the program.
    #[default]
    Passes,
    /// The program: per-step scalars and the per-element stage.
    Program,
    /// The Cranelift IR of the kernel, before Cranelift's optimisations.
    Clif,
    /// The kernel's machine code for this host.
    Asm,
    /// The optimizer in the text form of `.opt` files.
    Text,
}

/// The element type on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary64.
    F64,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> DType {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F64 => DType::F64,
        }
    }
}

/// Arguments of `optjit show`.
#[derive(clap::Args)]
pub struct ShowArgs {
    /// A built-in optimizer (see `optjit list`) or a path to an `.opt` file.
    optimizer: String,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Stage::Passes)]
    stage: Stage,
    /// Element type of the program and of the kernel.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// Fuse gradient clipping to this global norm type (1, 2 or inf) into the optimizer, as
    /// `optim::clip_grad_norm` does: one more phase, a `max_norm` hyperparameter.
    #[arg(long, value_name = "NORM_TYPE")]
    clip: Option<f64>,
    /// Fuse mixed-precision gradient scaling into the optimizer (after the clip), as
    /// `optim::amp` does: an `inv_scale` hyperparameter, a global non-finite check, and a
    /// step skipped on overflow.
    #[arg(long)]
    amp: bool,
}

/// The optimizer `args` name, with the transforms it asks for, and its label.
fn transformed(args: &ShowArgs) -> Result<(String, Graph), CliError> {
    let (mut label, mut graph) = load(&args.optimizer)?;
    if let Some(norm_type) = args.clip {
        graph = optjit::optim::clip_grad_norm(&graph, norm_type)?;
        label = format!("{label} (clipped, norm {norm_type})");
    }
    if args.amp {
        graph = optjit::optim::amp(&graph)?;
        label = format!("{label} (amp)");
    }
    Ok((label, graph))
}

/// Prints one stage of an optimizer's compilation.
pub fn show(args: &ShowArgs) -> ExitCode {
    let loaded = transformed(args);
    exit(loaded.and_then(|(label, graph)| {
        let text = stage_text(&label, &graph, args.stage, args.dtype.into())?;
        out(text);
        Ok(())
    }))
}

/// The text of `stage` for `graph` (called `label` in headers); every stage but `graph` and
/// `text` compiles it.
fn stage_text(label: &str, graph: &Graph, stage: Stage, dtype: DType) -> Result<String, CliError> {
    let compiled = |graph: &Graph| -> Result<(Program, JitOptions), Error> {
        let program = passes::compile(graph)?;
        let options = JitOptions::for_stage(&program.stage);
        Ok((program, options))
    };
    Ok(match stage {
        Stage::Graph => graph.to_string(),
        Stage::Text => text::print(graph),
        Stage::Passes => {
            let (trace, _) = passes::compile_traced(graph, dtype)?;
            let mut text = format!("== built ==\n{graph}");
            for (pass, printed) in trace {
                let _ = write!(text, "\n== after {pass} ==\n{printed}");
            }
            text
        }
        Stage::Program => passes::compile(graph)?.display(dtype).to_string(),
        Stage::Clif => {
            let (program, options) = compiled(graph)?;
            let clif = Jit::global()?.clif(&program, dtype, options)?;
            format!(
                "; {label}: {dtype} kernel, unroll {}, before Cranelift's optimisations\n{clif}",
                options.unroll
            )
        }
        Stage::Asm => {
            let (program, options) = compiled(graph)?;
            Jit::global()?.disassemble(&program, dtype, options)?
        }
    })
}

/// Arguments of `optjit check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// `.opt` files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Parses and compiles every file (its f32 kernel included); prints each program, or each
/// error on stderr. Fails if any file did.
pub fn check(args: &CheckArgs) -> ExitCode {
    let mut failed = false;
    for path in &args.files {
        match check_one(path) {
            Ok(program) => {
                if args.files.len() > 1 {
                    outln(format_args!("== {} ==", path.display()));
                }
                out(program.display(DType::F32));
            }
            Err(e) => {
                failed = true;
                match e {
                    // These already name the file.
                    Error::Text(_) | Error::Io { .. } => eprintln!("error: {e}"),
                    e => eprintln!("error: {}: {e}", path.display()),
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The program of the `.opt` file at `path`, after its f32 kernel compiled.
fn check_one(path: &Path) -> Result<Program, Error> {
    let graph = text::parse_file(path)?;
    let program = passes::compile(&graph)?;
    Jit::global()?.compile(&program, DType::F32)?;
    Ok(program)
}
