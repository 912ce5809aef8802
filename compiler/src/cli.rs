//! The `shardc` command line's arguments (parsed with clap; `main.rs` dispatches).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// shardc: partition transformer language models across devices.
#[derive(Parser)]
#[command(name = "shardc", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The model to read.
#[derive(Args)]
pub struct ModelArgs {
    /// An `.onnx` file, a Hugging Face checkpoint folder, or a `config.json` alone
    /// (shape-only: weights have dtype and shape but no file).
    pub model: PathBuf,
    /// Longest context the graph must serve (checkpoints; default: what the model supports).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// A `config.json` key shardc does not know that does not change the model (repeatable).
    #[arg(long = "ignore-config-key", value_name = "KEY")]
    pub ignore_config_keys: Vec<String>,
}

/// The workload and planning options.
#[derive(Args)]
pub struct PlanArgs {
    /// Device profile (TOML).
    #[arg(long)]
    pub devices: PathBuf,
    /// Prompt tokens of the prefill.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: u64,
    /// Context the KV cache is sized for; decode is costed at this context.
    #[arg(long, default_value_t = 1024)]
    pub max_context: u64,
    /// Requests batched together.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// What to minimise: latency (one request end to end) or throughput (pipelined).
    #[arg(long, default_value = "latency")]
    pub objective: String,
    /// Fraction of each device's memory kept free.
    #[arg(long, default_value_t = shardc_passes::partition::DEFAULT_MARGIN)]
    pub margin: f64,
    /// Time limit of the exact search (over all-different devices, or the integer
    /// program), seconds: a safety net (a plan it cuts short depends on the machine's
    /// speed, and plan.json says so).
    #[arg(long, default_value_t = shardc_passes::partition::DEFAULT_TIME_LIMIT_S)]
    pub time_limit: f64,
    /// Branch-and-bound nodes the integer program may solve: what bounds its search, so
    /// that the plan depends on the inputs alone.
    #[arg(long, default_value_t = shardc_passes::plan::DEFAULT_NODE_LIMIT)]
    pub node_limit: u64,
    /// Nodes the search over all-different devices may use (device sets for the latency
    /// objective, set extensions of its feasibility tests for throughput): what bounds
    /// it, so that the plan depends on the inputs alone; the status gives the gap when
    /// it stops short.
    #[arg(long, default_value_t = shardc_passes::plan::distinct::DEFAULT_NODES)]
    pub search_nodes: u64,
    /// Compute dtype for the devices' FLOP/s (default: the weights' dtype).
    #[arg(long)]
    pub compute_dtype: Option<String>,
    /// Size the weights as stored in this dtype (f32, f16, bf16), as the shards will ship.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize the matrix weights (weight-only, symmetric, f32 scales): int8 or int4.
    /// Norms, biases, the embedding table and the head stay at --dtype.
    #[arg(long)]
    pub quantize: Option<String>,
    /// Elements per scale along each product's reduction axis (int4: 32 by default;
    /// int8: one scale per output channel unless given).
    #[arg(long, requires = "quantize")]
    pub group_size: Option<usize>,
    /// Quantize the embedding table and the head too.
    #[arg(long, requires = "quantize")]
    pub quantize_embeddings: bool,
    /// Correct each device's predicted times by what a run measured: the JSON report of
    /// `shardc-run generate --json` (or `local --json`) over packages of this model, run
    /// without load balancing moves.
    #[arg(long, value_name = "RUN.json")]
    pub calibrate: Option<PathBuf>,
    /// Each stage also holds the weights of up to N units beyond each of its boundaries
    /// (memory permitting), so the runtime can move boundaries without shipping weights.
    #[arg(long, default_value_t = 0)]
    pub standby: usize,
    /// A `config.json` key shardc does not know that does not change the model (repeatable).
    #[arg(long = "ignore-config-key", value_name = "KEY")]
    pub ignore_config_keys: Vec<String>,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Partition a model over devices: stages, memory, predicted times.
    Plan {
        /// An `.onnx` file, a Hugging Face checkpoint folder, or a `config.json`.
        model: PathBuf,
        #[command(flatten)]
        plan: PlanArgs,
        /// uniform, proportional, dp or ilp.
        #[arg(long, default_value = "ilp")]
        strategy: String,
        /// Print plan.json instead of text.
        #[arg(long)]
        json: bool,
        /// Also write plan.json and transmission_map.json into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Show solver times (they vary from run to run).
        #[arg(long)]
        timings: bool,
        /// With --out: write a Makefile-syntax dependency file listing every file read,
        /// with OUT/plan.json as its target.
        #[arg(long, requires = "out")]
        depfile: Option<PathBuf>,
    },
    /// Every strategy side by side, with the ratio to the best.
    Compare {
        model: PathBuf,
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        json: bool,
    },
    /// Write one package per device, the plan, the transmission map and report.svg.
    Compile {
        model: PathBuf,
        #[command(flatten)]
        plan: PlanArgs,
        /// Output folder.
        #[arg(short, long)]
        out: PathBuf,
        /// uniform, proportional, dp or ilp.
        #[arg(long, default_value = "ilp")]
        strategy: String,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
        /// Write a Makefile-syntax dependency file listing every file read (model files,
        /// index, config, device profile), with OUT/plan.json as its target.
        #[arg(long)]
        depfile: Option<PathBuf>,
        /// Print a machine-readable summary on stdout (stages, every file written with
        /// its size and blake3, predicted times, solver status); the text goes to stderr.
        #[arg(long)]
        json: bool,
        /// No text and no progress bar on stderr (errors still are).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run the model and its packages side by side and compare their outputs.
    Verify {
        /// The model the packages were compiled from.
        model: PathBuf,
        /// The compile output folder.
        out: PathBuf,
        /// Prompt token ids (default: 1..=8).
        #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "inputs")]
        input_ids: Option<Vec<i64>>,
        /// Every graph input by name, from a safetensors file: compare every output
        /// (any graph, an encoder say) instead of logits and tokens.
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// Greedy tokens to compare.
        #[arg(long, default_value_t = 8)]
        tokens: usize,
        /// Largest allowed |difference| as a fraction of max(1, max |logit|).
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Fraction of the greedy tokens that must agree, as a prefix (quantized
        /// packages may part ways with the model after a while).
        #[arg(long, default_value_t = 1.0, conflicts_with = "inputs")]
        min_agreement: f64,
        /// Write what was compared into this safetensors file: `model.NAME` and
        /// `packages.NAME` for every output (`logits`: the prompt's, `[seq, vocab]`).
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// The ops shardc knows (the ONNX op types it imports), one per line.
    Ops,
    /// Redraw a compile's report.svg, with what a run of its packages measured.
    Report {
        /// The compile output folder (plan.json, transmission_map.json).
        out: PathBuf,
        /// The JSON report of `shardc-run generate --json` (or `local --json`) over these
        /// packages: measured times per stage beside the predicted ones.
        #[arg(long, value_name = "RUN.json")]
        measured: Option<PathBuf>,
    },
    /// Measure this host with the runtime's kernels and print its device entry, with
    /// the `[device.kernels]` table plans use (`shardc-run profile` does the same on a
    /// device).
    Profile {
        /// Name of the device entry.
        #[arg(long, default_value = "this-host")]
        name: String,
        /// Fewer sizes, small weight sets, no repeats: seconds instead of about 20 s,
        /// figures less sure (decode rates come out high where a cache holds the set).
        #[arg(long)]
        quick: bool,
        /// Also measure this model's own products (each shape, with the weight type it
        /// reads), which plans of the model then price exactly.
        #[arg(long, value_name = "MODEL")]
        model: Option<PathBuf>,
        /// With --model: measure its products with these weight types instead (what
        /// `compile --dtype` or `--quantize` will store: f32, f16, bf16, int8, int4).
        #[arg(long = "weight-type", value_name = "TYPE", requires = "model")]
        weight_types: Vec<String>,
        /// A `config.json` key shardc does not know that does not change the model
        /// (repeatable; with --model).
        #[arg(long = "ignore-config-key", value_name = "KEY", requires = "model")]
        ignore_config_keys: Vec<String>,
        /// Threads the kernels split their work over, as the runs this profile
        /// predicts will (default: the cores this process may use).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Run a model on the CPU with the reference interpreter: a language model on
    /// token ids (`--input-ids`), or any graph on named tensors (`--inputs`).
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt token ids, comma-separated (`1,2,3`).
        #[arg(long, value_delimiter = ',', num_args = 1.., required_unless_present = "inputs", conflicts_with = "inputs")]
        input_ids: Option<Vec<i64>>,
        /// Every graph input by name, from a safetensors file.
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// Write every graph output by name into this safetensors file (with --inputs).
        #[arg(long, requires = "inputs")]
        outputs: Option<PathBuf>,
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
        /// Threads the kernels split their work over (default: the cores this process
        /// may use). Outputs are the same bits whatever the count.
        #[arg(long)]
        threads: Option<usize>,
    },
}
