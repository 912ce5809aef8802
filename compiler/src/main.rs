//! The `shardc` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use shardc::cli::{Cli, Command, ModelArgs, PlanArgs};
use shardc::emit::EmitError;
use shardc::frontend::hf::LowerOptions;
use shardc::inputs::Input;
use shardc::inspect;
use shardc::load::{load, LoadedModel};
use shardc::render;
use shardc::verify::VerifyError;
use shardc_passes::cost::Workload;
use shardc_passes::partition::{self, Names, PartitionError};
use shardc_passes::plan::{Objective, Strategy};
use shardc_passes::{run_pipeline, Ctx};

/// Exit statuses a build pipeline can act on (the README lists them).
mod status {
    /// Done.
    pub const OK: u8 = 0;
    /// An input is wrong or unreadable: a model, a device profile, a package.
    pub const INPUT: u8 = 1;
    /// The command line is wrong (clap's own errors exit with 2 too).
    pub const USAGE: u8 = 2;
    /// The model does not fit the devices (the message has the figures).
    pub const DOES_NOT_FIT: u8 = 3;
    /// `verify`: the packages do not reproduce the model.
    pub const VERIFICATION: u8 = 4;
}

/// A flag's value is out of range or malformed: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// `verify` found the packages do not reproduce the model: exit status 4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct VerificationFailed(String);

macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new(Usage(format!($($arg)*))))
    };
}

/// The status for an error: what kind of failure it is, wherever it was wrapped.
fn status_of(e: &anyhow::Error) -> u8 {
    let does_not_fit = |p: &PartitionError| matches!(p, PartitionError::DoesNotFit(_));
    if e.downcast_ref::<Usage>().is_some() || matches!(e.downcast_ref(), Some(VerifyError::Tolerance(_))) {
        status::USAGE
    } else if e.downcast_ref::<VerificationFailed>().is_some() {
        status::VERIFICATION
    } else if e.downcast_ref::<PartitionError>().is_some_and(does_not_fit)
        || matches!(e.downcast_ref::<EmitError>(), Some(EmitError::Plan(p)) if does_not_fit(p))
    {
        status::DOES_NOT_FIT
    } else {
        status::INPUT
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::from(status::OK),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(status_of(&e))
        }
    }
}

mod commands;

use commands::{run_model, run_tensors, verify, verify_tensors};

/// `--threads N` (default: the cores available) for the runtime's kernels.
/// Also bounds what the allocator keeps while steps run (every command that runs steps
/// sets its threads).
fn set_threads(threads: Option<usize>) -> Result<()> {
    shardc_runtime::weights::bound_allocator_cache();
    shardc_runtime::threads::set_threads_or_available(threads)
        .map_err(|e| anyhow::Error::new(Usage(format!("--threads: {e}"))))
}

fn open(args: &ModelArgs) -> Result<LoadedModel> {
    Ok(load(
        &args.model,
        &LowerOptions { max_context: args.max_context, ignore_config_keys: args.ignore_config_keys.clone() },
    )?)
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
        Command::Run { model: args, input_ids, inputs, outputs, max_new_tokens, top_k, json, threads } => {
            set_threads(threads)?;
            match (input_ids, inputs) {
                (Some(ids), _) => run_model(&args, &ids, max_new_tokens, top_k, json)?,
                (None, Some(inputs)) => run_tensors(&args, &inputs, outputs.as_deref(), json)?,
                (None, None) => usage!("give --input-ids or --inputs"),
            }
        }
        Command::Plan { model, plan: args, strategy, json, out, timings, depfile } => {
            let strategy: Strategy = strategy.parse().map_err(Usage)?;
            let p = planning_inputs(&model, &args)?;
            let records: Vec<_> = p.inputs.iter().map(|i| i.record.clone()).collect();
            let names = Names { model: &p.model_name, devices: &p.devices_name, inputs: &records };
            let planned = partition::plan(&p.graph, &p.profile, &p.req, strategy, names)?;
            let (report, map) = (planned.report, planned.map);
            let plan_json = serde_json::to_string_pretty(&report)? + "\n";
            if let Some(dir) = out {
                let guarded = guarded_inputs(&model, &args, &p.inputs);
                shardc::emit::output::check_not_input(&dir, &guarded).map_err(anyhow::Error::msg)?;
                if let Some(file) = &depfile {
                    check_depfile(file, &dir, &guarded)?;
                }
                std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
                let write = |name: &str, text: &str| {
                    let path = dir.join(name);
                    std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
                };
                write("plan.json", &plan_json)?;
                write("transmission_map.json", &(serde_json::to_string_pretty(&map)? + "\n"))?;
                if let Some(file) = &depfile {
                    shardc::inputs::write_depfile(file, &dir.join("plan.json"), &p.inputs)?;
                }
            }
            if json {
                print!("{plan_json}");
            } else {
                print!("{}", render::plan_text(&report, timings));
            }
        }
        Command::Compare { model, plan: args, json } => {
            let p = planning_inputs(&model, &args)?;
            if p.req.quantize.is_none() {
                let rows = partition::compare(&p.graph, &p.profile, &p.req)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", render::compare_text(&rows, p.req.objective));
                }
                return Ok(());
            }
            // With --quantize: the strategies at that quantization (when anything fits),
            // and the exact plan with the weights as stored, int8 and int4 side by side.
            let weights = partition::compare_weights(&p.graph, &p.profile, &p.req)?;
            let rows = partition::compare(&p.graph, &p.profile, &p.req);
            if json {
                let strategies = rows.as_ref().ok();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"strategies": strategies, "weights": weights}))?
                );
            } else {
                if let Ok(rows) = &rows {
                    print!("{}", render::compare_text(rows, p.req.objective));
                    println!();
                }
                print!("{}", render::weights_text(&weights));
            }
            rows?;
        }
        Command::Compile { model, plan: args, out, strategy, force, depfile, json, quiet } => {
            let strategy: Strategy = strategy.parse().map_err(Usage)?;
            let p = planning_inputs(&model, &args)?;
            let guarded = guarded_inputs(&model, &args, &p.inputs);
            if let Some(file) = &depfile {
                check_depfile(file, &out, &guarded)?;
            }
            let opts = shardc::emit::CompileOptions {
                strategy,
                request: p.req,
                force,
                model_name: p.model_name,
                devices_name: p.devices_name,
                records: p.inputs.iter().map(|i| i.record.clone()).collect(),
                progress: !quiet,
                inputs: guarded,
            };
            let summary = shardc::emit::compile(&p.graph, &p.weights_dir, &p.profile, &opts, &out)?;
            if let Some(file) = &depfile {
                shardc::inputs::write_depfile(file, &out.join("plan.json"), &p.inputs)?;
            }
            let text = format!(
                "{}wrote       {} ({} stages, {} of weights)\n",
                render::plan_text(&summary.report, false),
                out.display(),
                summary.report.stages.len(),
                shardc_passes::quantity::bytes_text(summary.weight_bytes as f64)
            );
            if json {
                if !quiet {
                    eprint!("{text}");
                }
                println!("{}", serde_json::to_string_pretty(&render::compile_json(&out, &summary)?)?);
            } else if !quiet {
                print!("{text}");
            }
        }
        Command::Verify { model, out, input_ids, inputs, tokens, tolerance, min_agreement, save } => {
            if let Some(path) = &save {
                let mut guarded = vec![model.clone(), out.clone()];
                guarded.extend(inputs.clone());
                shardc::emit::output::check_not_input(path, &guarded).map_err(|e| Usage(format!("--save {e}")))?;
            }
            match inputs {
                Some(file) => verify_tensors(&model, &out, &file, tolerance, save.as_deref())?,
                None => {
                    let ids = input_ids.unwrap_or_else(|| (1..=8).collect());
                    verify(&model, &out, ids, tokens, tolerance, min_agreement, save.as_deref())?
                }
            }
        }
        Command::Ops => {
            let mut names: Vec<&str> = shardc_ir::Op::NAMES.to_vec();
            names.extend(shardc::frontend::onnx::opset::CONVERTED);
            names.sort_unstable();
            for name in names {
                println!("{name}");
            }
        }
        Command::Report { out, measured } => {
            let path = shardc::report::redraw(&out, measured.as_deref())?;
            println!("wrote       {}", path.display());
        }
        Command::Profile { name, quick, model, weight_types, ignore_config_keys, threads } => {
            shardc_passes::devices::check_name(&name).map_err(|e| Usage(format!("--name: {e}")))?;
            set_threads(threads)?;
            let (products, session) = match model {
                Some(path) => {
                    let loaded = load(&path, &LowerOptions { max_context: None, ignore_config_keys })?;
                    let mut graph = loaded.graph;
                    run_pipeline(&mut graph, &mut Ctx::default(), None)?;
                    let products = products_as(shardc_passes::kernels::product_shapes(&graph), &weight_types)?;
                    // The model's own step, when its weights are here and fit in memory.
                    let fits = if loaded.has_weights {
                        shardc_runtime::profile::step::fits(&graph)
                    } else {
                        Err("a config.json alone has no weights to run".into())
                    };
                    let session = match fits {
                        Ok(()) => Some(shardc_runtime::Session::new(graph, &loaded.weights_dir)),
                        Err(why) => {
                            eprintln!("profile: the model's products are measured alone: {why}");
                            None
                        }
                    };
                    (products, session)
                }
                None => (Vec::new(), None),
            };
            let depth = shardc_runtime::profile::Depth::from_quick(quick);
            let device = shardc_runtime::profile::measure_with_step(&name, depth, &products, session.as_ref())
                .map_err(|e| anyhow::anyhow!("profile: {e}"))?;
            print!("{}", shardc_passes::devices::device_toml(&device));
        }
    }
    Ok(())
}

/// A model's products, each with the given weight types instead of its own when any.
fn products_as(
    products: Vec<(String, shardc_passes::kernels::ProductShape)>,
    types: &[String],
) -> Result<Vec<(String, shardc_passes::kernels::ProductShape)>> {
    if let Some(bad) = types.iter().find(|t| !shardc_passes::kernels::WEIGHT_TYPES.contains(&t.as_str())) {
        usage!("--weight-type `{bad}`: one of {}", shardc_passes::kernels::WEIGHT_TYPES.join(", "));
    }
    if types.is_empty() {
        return Ok(products);
    }
    let mut shapes: Vec<_> = products.into_iter().map(|(_, s)| s).collect();
    shapes.sort_unstable();
    shapes.dedup();
    Ok(types.iter().flat_map(|t| shapes.iter().map(move |&s| (t.clone(), s))).collect())
}

/// Longest `--max-context` planned (the largest a config may state).
const MAX_CONTEXT: u64 = shardc::frontend::hf::config::MAX_SIZE as u64;

/// Largest `--node-limit`.
const MAX_NODE_LIMIT: u64 = 1 << 32;
/// The latency search keeps every device set it reaches (a few hundred bytes each).
const MAX_SEARCH_NODES: u64 = 100_000_000;

/// Largest `--batch` planned.
const MAX_BATCH: u64 = 1 << 16;

/// A model after the pass pipeline, ready to plan or compile.
struct Planning {
    graph: shardc_ir::Graph,
    /// How plan.json names the model and the profile (from their content).
    model_name: String,
    devices_name: String,
    /// Every file read: the model's, then the device profile.
    inputs: Vec<Input>,
    weights_dir: PathBuf,
    profile: shardc_passes::devices::Profile,
    /// The request, `--dtype` (checked to be a float type) included.
    req: partition::Request,
}

fn planning_inputs(model: &std::path::Path, args: &PlanArgs) -> Result<Planning> {
    let objective: Objective = args.objective.parse().map_err(Usage)?;
    if !(0.0..1.0).contains(&args.margin) {
        usage!("--margin must be in [0, 1), is {}", args.margin);
    }
    if args.prompt_len == 0 || args.batch == 0 || args.max_context < args.prompt_len {
        usage!("the workload needs --prompt-len >= 1, --batch >= 1 and --max-context >= --prompt-len");
    }
    if args.max_context > MAX_CONTEXT || args.batch > MAX_BATCH {
        usage!(
            "--max-context is at most {MAX_CONTEXT} and --batch at most {MAX_BATCH} (got {} and {})",
            args.max_context,
            args.batch
        );
    }
    if !(args.time_limit > 0.0 && args.time_limit <= 86_400.0) {
        usage!("--time-limit must be a number of seconds above 0 and at most 86400, got {}", args.time_limit);
    }
    if args.node_limit == 0 || args.node_limit > MAX_NODE_LIMIT {
        usage!("--node-limit must be between 1 and {MAX_NODE_LIMIT}, got {}", args.node_limit);
    }
    if args.search_nodes == 0 || args.search_nodes > MAX_SEARCH_NODES {
        usage!("--search-nodes must be between 1 and {MAX_SEARCH_NODES}, got {}", args.search_nodes);
    }
    let dtype = match &args.dtype {
        Some(d) => {
            let dtype: shardc_ir::DType = d.parse().map_err(|e: String| Usage(format!("--dtype: {e}")))?;
            if !dtype.is_float() {
                usage!("--dtype must be a float type (f32, f16, bf16), not {dtype}");
            }
            Some(dtype)
        }
        None => None,
    };
    let quantize = match &args.quantize {
        Some(s) => {
            let scheme: shardc_passes::quantize::Scheme =
                s.parse().map_err(|e: String| Usage(format!("--quantize: {e}")))?;
            Some(
                shardc_passes::quantize::Quantization::new(scheme, args.group_size, args.quantize_embeddings)
                    .map_err(Usage)?,
            )
        }
        None => None,
    };
    let (profile_input, profile) = shardc::inputs::profile(&args.devices)?;
    let loaded = load(
        model,
        &LowerOptions {
            max_context: Some(args.max_context as usize),
            ignore_config_keys: args.ignore_config_keys.clone(),
        },
    )?;
    if let Some(why) = &loaded.no_units {
        bail!("{}: cannot cut the model into units: {why}", model.display());
    }
    let mut graph = loaded.graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None)?;
    let mut inputs = loaded.inputs;
    inputs.push(profile_input);
    let calibration = match &args.calibrate {
        Some(path) => {
            let text = shardc::inputs::read_text(path)?;
            let run =
                shardc_passes::calibrate::Run::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            inputs.push(shardc::inputs::Input::given(path, "calibration", text.as_bytes()));
            Some(run)
        }
        None => None,
    };
    let req = partition::Request {
        workload: Workload { batch: args.batch, prompt_len: args.prompt_len, max_context: args.max_context },
        objective,
        margin: args.margin,
        time_limit: std::time::Duration::from_secs_f64(args.time_limit),
        node_limit: args.node_limit,
        search_nodes: args.search_nodes,
        compute_dtype: args.compute_dtype.clone(),
        standby: args.standby,
        dtype,
        quantize,
        calibration,
    };
    Ok(Planning {
        graph,
        model_name: loaded.name,
        devices_name: shardc::inputs::profile_name(&profile),
        inputs,
        weights_dir: loaded.weights_dir,
        profile,
        req,
    })
}

/// What an output may not be, contain or lie inside: the model and profile as given,
/// and every file read.
fn guarded_inputs(model: &Path, args: &PlanArgs, inputs: &[Input]) -> Vec<PathBuf> {
    let mut paths = vec![model.to_path_buf(), args.devices.clone()];
    paths.extend(inputs.iter().map(|i| i.path.clone()));
    paths
}

/// The depfile may not be an input nor lie inside the output folder (which a compile
/// replaces whole); checked before anything is written.
fn check_depfile(file: &Path, out: &Path, guarded: &[PathBuf]) -> Result<()> {
    shardc::emit::output::check_not_input(file, guarded).map_err(|e| Usage(format!("--depfile {e}")))?;
    let (f, o) =
        (shardc::emit::output::resolve(file).map_err(Usage)?, shardc::emit::output::resolve(out).map_err(Usage)?);
    if f.starts_with(&o) {
        usage!(
            "--depfile {}: lies inside the output folder {}, which is replaced whole",
            file.display(),
            out.display()
        );
    }
    if f.is_dir() {
        usage!("--depfile {}: is a folder", file.display());
    }
    Ok(())
}
