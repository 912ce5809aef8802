//! The `shardc` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use shardc::frontend::onnx;
use shardc::inspect;
use shardc_passes::{run_pipeline, Ctx};

/// shardc: partition transformer language models across devices.
#[derive(Parser)]
#[command(name = "shardc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inputs, outputs, op histogram, parameters and layers of a model.
    Inspect {
        /// An `.onnx` file.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's text IR, as imported or after a pass.
    Ir {
        /// An `.onnx` file.
        model: PathBuf,
        /// Run the pipeline up to and including this pass (infer-shapes, simplify).
        #[arg(long)]
        after: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json } => {
            let imported = import(&model)?;
            let mut graph = imported.graph.clone();
            run_pipeline(&mut graph, &mut Ctx::default(), None)?;
            let source = inspect::Source {
                model: model.display().to_string(),
                format: "ONNX",
                opset: imported.opset,
                producer: imported.producer.clone(),
                unused_initializers: imported.unused_initializers.clone(),
            };
            let report = inspect::report(source, &imported.graph, &graph);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Ir { model, after } => {
            let mut graph = import(&model)?.graph;
            if let Some(pass) = after.as_deref() {
                run_pipeline(&mut graph, &mut Ctx { verify_each: true, ..Ctx::default() }, Some(pass))?;
            }
            print!("{}", shardc_ir::text::print(&graph));
        }
    }
    Ok(())
}

fn import(model: &Path) -> Result<onnx::OnnxModel> {
    if model.is_dir() {
        bail!(
            "{}: is a directory; shardc reads `.onnx` files (Hugging Face checkpoint folders are not supported yet)",
            model.display()
        );
    }
    Ok(onnx::import(model)?)
}
