//! The `optjit` command line. Subcommands arrive with later work; for now it lists the
//! built-in optimizers and prints their IR.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("show") => match args.get(1).and_then(|name| optjit::optim::by_name(name)) {
            Some(graph) => match optjit::passes::compile(&graph) {
                Ok(program) => {
                    print!("{graph}\n{}", program.display(optjit::DType::F32));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            None => {
                eprintln!(
                    "usage: optjit show NAME   (one of: {})",
                    optjit::optim::NAMES.join(", ")
                );
                ExitCode::FAILURE
            }
        },
        _ => {
            println!("usage: optjit show NAME");
            println!("built-in optimizers: {}", optjit::optim::NAMES.join(", "));
            ExitCode::SUCCESS
        }
    }
}
