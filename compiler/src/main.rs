//! The `shardc` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use shardc::frontend::hf::LowerOptions;
use shardc::inspect;
use shardc::load::{load, LoadedModel};
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{self, CacheLayout};

/// shardc: partition transformer language models across devices.
#[derive(Parser)]
#[command(name = "shardc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The model to read.
#[derive(Args)]
struct ModelArgs {
    /// An `.onnx` file, a Hugging Face checkpoint folder, or a `config.json` alone
    /// (shape-only: weights have dtype and shape but no file).
    model: PathBuf,
    /// Longest context the graph must serve (checkpoints; default: what the model supports).
    #[arg(long)]
    max_context: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Inputs, outputs, op histogram, parameters and layers of a model.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's text IR, as imported or after a pass.
    Ir {
        #[command(flatten)]
        model: ModelArgs,
        /// Run the pipeline up to and including this pass (infer-shapes, simplify).
        #[arg(long)]
        after: Option<String>,
    },
    /// Run a model on the CPU with the reference interpreter.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt token ids, comma-separated (`1,2,3`).
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        input_ids: Vec<i64>,
        /// Greedily generate this many tokens (with the KV cache for checkpoints;
        /// ONNX graphs without a cache re-run the prefix each step).
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

fn open(args: &ModelArgs) -> Result<LoadedModel> {
    Ok(load(&args.model, &LowerOptions { max_context: args.max_context })?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model: args, json } => {
            let model = open(&args)?;
            let mut graph = model.graph.clone();
            run_pipeline(&mut graph, &mut Ctx::default(), None)?;
            let source = inspect::Source {
                model: args.model.display().to_string(),
                format: model.format.clone(),
                unused_tensors: model.unused.clone(),
            };
            let report = inspect::report(source, &model.graph, &graph);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Ir { model: args, after } => {
            let mut graph = open(&args)?.graph;
            if let Some(pass) = after.as_deref() {
                run_pipeline(&mut graph, &mut Ctx { verify_each: true, ..Ctx::default() }, Some(pass))?;
            }
            print!("{}", shardc_ir::text::print(&graph));
        }
        Command::Run { model: args, input_ids, max_new_tokens, top_k, json } => {
            run_model(&args, &input_ids, max_new_tokens, top_k, json)?;
        }
    }
    Ok(())
}

fn run_model(args: &ModelArgs, input_ids: &[i64], max_new_tokens: usize, k: usize, json: bool) -> Result<()> {
    let model = open(args)?;
    if !model.has_weights {
        bail!("{}: a config.json alone has no weights to run; give the checkpoint folder", args.model.display());
    }
    let mut graph = model.graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None)?;
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
    let session = shardc_runtime::Session::new(graph, &model.weights_dir);
    let cache = CacheLayout::of(&session)?;
    let start = Instant::now();
    let logits = match &cache {
        Some(layout) => generate::cached_prefill(&session, layout, input_ids)?,
        None => generate::logits(&session, input_ids)?,
    };
    let prefill = start.elapsed();
    let vocab = logits.vocab;
    let top = generate::top_k(logits.last(), k);
    let start = Instant::now();
    let continuation = match &cache {
        Some(layout) => generate::greedy_cached(&session, layout, input_ids, max_new_tokens)?,
        None => generate::greedy(&session, input_ids, max_new_tokens)?,
    };
    let generation = start.elapsed();
    if json {
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "input_ids": input_ids,
            "vocab": vocab,
            "kv_cache": cache.is_some(),
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
            let how = if cache.is_some() { "KV cache" } else { "no cache: prefix re-run each step" };
            println!(
                "generated   {} ({} tokens, {:.1} ms, {how})",
                ids.join(","),
                continuation.len(),
                generation.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
