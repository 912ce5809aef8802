//! The `shardc` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use shardc::frontend::onnx;
use shardc::inspect;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate;

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
    /// Run a model on the CPU with the reference interpreter.
    Run {
        /// An `.onnx` file taking `input_ids [batch, seq]` and returning logits.
        model: PathBuf,
        /// Prompt token ids, comma-separated (`1,2,3`).
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        input_ids: Vec<i64>,
        /// Greedily generate this many tokens (each step re-runs the prefix).
        #[arg(long, default_value_t = 0)]
        max_new_tokens: usize,
        /// How many of the largest last-position logits to print.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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
        Command::Run { model, input_ids, max_new_tokens, top_k, json } => {
            run_model(&model, &input_ids, max_new_tokens, top_k, json)?;
        }
    }
    Ok(())
}

fn run_model(model: &Path, input_ids: &[i64], max_new_tokens: usize, k: usize, json: bool) -> Result<()> {
    let mut graph = import(model)?.graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None)?;
    let dir = model.parent().unwrap_or(Path::new("."));
    let vocab = graph
        .outputs
        .first()
        .and_then(|&v| graph.value(v).ty.as_ref())
        .and_then(|t| t.shape.last())
        .and_then(|d| d.as_known());
    if let Some(vocab) = vocab {
        if let Some(bad) = input_ids.iter().find(|&&t| t < 0 || t >= vocab) {
            bail!("token id {bad} is outside the vocabulary (0..{vocab})");
        }
    }
    let session = shardc_runtime::Session::new(graph, dir);
    let start = std::time::Instant::now();
    let logits = generate::logits(&session, input_ids)?;
    let prefill = start.elapsed();
    let vocab = logits.vocab;
    let top = generate::top_k(logits.last(), k);
    let start = std::time::Instant::now();
    let continuation = generate::greedy(&session, input_ids, max_new_tokens)?;
    let generation = start.elapsed();
    if json {
        let report = serde_json::json!({
            "model": model.display().to_string(),
            "input_ids": input_ids,
            "vocab": vocab,
            "top_k": top.iter().map(|(id, logit)| serde_json::json!({"id": id, "logit": logit})).collect::<Vec<_>>(),
            "generated": continuation,
            "prefill_ms": prefill.as_secs_f64() * 1e3,
            "generation_ms": generation.as_secs_f64() * 1e3,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("prompt      {} tokens, vocabulary {vocab}, prefill {:.1} ms", input_ids.len(), prefill.as_secs_f64() * 1e3);
        println!("top {k} of the last position:");
        for (id, logit) in &top {
            println!("  {id:>8}  {logit:>12.6}");
        }
        if max_new_tokens > 0 {
            let ids: Vec<String> = continuation.iter().map(i64::to_string).collect();
            println!("generated   {} ({} tokens, {:.1} ms)", ids.join(","), continuation.len(), generation.as_secs_f64() * 1e3);
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
