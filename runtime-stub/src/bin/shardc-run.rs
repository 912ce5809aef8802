//! `shardc-run`: the device runtime. Loads compiled packages only (never models).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};
use shardc_format::Cluster;
use shardc_runtime::balance::BalanceOptions;
use shardc_runtime::node::{self, Generation, Job, NetOptions, Slowdown};

/// Run compiled shardc packages, one process per device or all in one.
#[derive(Parser)]
#[command(name = "shardc-run", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads each device's kernels split their work over (default: the cores this
    /// process may use). Outputs are the same bits whatever the count.
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Args)]
struct Net {
    /// File holding the secret every participant shares (at least 16 bytes): frames are
    /// encrypted and authenticated (XChaCha20-Poly1305) with a key derived from it.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Send and accept frames in the clear, unauthenticated: anyone on the network can
    /// read the hidden states (which reveal the prompt) and inject tensors.
    #[arg(long, conflicts_with = "secret_file")]
    insecure: bool,
    /// Largest frame accepted, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_frame: usize,
}

/// Largest `--max-frame` (4 GiB).
const MAX_FRAME_LIMIT: usize = 1 << 32;

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 1 << 20;

#[derive(Args)]
struct Gen {
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    input_ids: Vec<i64>,
    #[arg(long, default_value_t = 8)]
    max_new_tokens: usize,
    /// Independent requests in flight together.
    #[arg(long, default_value_t = 1)]
    requests: usize,
    /// Seconds to wait for a device before giving up on it.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Seconds to wait for every device to answer the session's opening (devices that
    /// are still starting: loading and checking their packages).
    #[arg(long, default_value_t = 30.0)]
    start_timeout: f64,
    #[arg(long)]
    json: bool,
    /// Never move stage boundaries (packages compiled with --standby otherwise do when
    /// measured stage times call for it).
    #[arg(long)]
    no_balance: bool,
    /// Decode steps per stage that load balancing looks at.
    #[arg(long, default_value_t = BalanceOptions::default().window)]
    balance_window: usize,
    /// Move boundaries only when that is predicted to improve the objective by more
    /// than this fraction.
    #[arg(long, default_value_t = BalanceOptions::default().threshold)]
    balance_threshold: f64,
}

impl Gen {
    fn job(&self) -> Result<Job> {
        if self.balance_window == 0 {
            bail!("--balance-window must be at least 1");
        }
        if self.balance_window > shardc_runtime::balance::MAX_WINDOW {
            bail!(
                "--balance-window is at most {} decode steps, got {}",
                shardc_runtime::balance::MAX_WINDOW,
                self.balance_window
            );
        }
        if !(self.balance_threshold >= 0.0 && self.balance_threshold.is_finite()) {
            bail!("--balance-threshold must be a fraction ≥ 0, got {}", self.balance_threshold);
        }
        if !(self.timeout > 0.0 && self.timeout <= node::MAX_TIMEOUT_S) {
            bail!(
                "--timeout must be a number of seconds above 0 and at most {}, got {}",
                node::MAX_TIMEOUT_S,
                self.timeout
            );
        }
        if !(self.start_timeout > 0.0 && self.start_timeout <= node::MAX_TIMEOUT_S) {
            bail!(
                "--start-timeout must be a number of seconds above 0 and at most {}, got {}",
                node::MAX_TIMEOUT_S,
                self.start_timeout
            );
        }
        if self.requests == 0 || self.requests > node::MAX_REQUESTS {
            bail!("--requests must be between 1 and {}, got {}", node::MAX_REQUESTS, self.requests);
        }
        if let Some(bad) = self.input_ids.iter().find(|&&t| t < 0) {
            bail!("--input-ids: token id {bad} is negative");
        }
        Ok(Job {
            prompt: self.input_ids.clone(),
            tokens: self.max_new_tokens,
            requests: self.requests,
            timeout: Duration::from_secs_f64(self.timeout),
            start_timeout: Duration::from_secs_f64(self.start_timeout),
            balance: (!self.no_balance)
                .then_some(BalanceOptions { window: self.balance_window, threshold: self.balance_threshold }),
        })
    }
}

/// `STEPS:F`.
fn parse_slowdown_after(s: &str) -> Result<Slowdown, String> {
    let (steps, factor) = s.split_once(':').ok_or_else(|| format!("`{s}`: expected STEPS:F, like 16:3"))?;
    let steps: u64 = steps.trim().parse().map_err(|_| format!("`{steps}` is not a number of decode steps"))?;
    let factor: f64 = factor.trim().parse().map_err(|_| format!("`{factor}` is not a factor"))?;
    if !(factor >= 1.0 && factor.is_finite()) {
        return Err(format!("slowdown factor {factor} must be at least 1"));
    }
    Ok(Slowdown { factor, from_step: steps.saturating_add(1) })
}

#[derive(Subcommand)]
enum Command {
    /// Serve one device's package.
    Serve {
        out: PathBuf,
        #[arg(long)]
        device: String,
        #[arg(long)]
        cluster: PathBuf,
        /// Allow addresses that are not loopback.
        #[arg(long)]
        allow_remote: bool,
        /// Emulate a device this many times slower.
        #[arg(long, default_value_t = 1.0, conflicts_with = "slowdown_after")]
        slowdown: f64,
        /// Become F times slower after STEPS decode steps (`STEPS:F`).
        #[arg(long, value_parser = parse_slowdown_after)]
        slowdown_after: Option<Slowdown>,
        /// Drop a session's KV cache after this many seconds without a message of it
        /// (its client went away).
        #[arg(long, default_value_t = 60.0)]
        session_timeout: f64,
        /// Run ready steps one by one: by default the steps of all requests that are ready
        /// run as one batched step (products read each weight once for all of them; every
        /// request gets the same bits either way).
        #[arg(long)]
        no_batch: bool,
        #[command(flatten)]
        net: Net,
    },
    /// Drive generation through serving devices.
    Generate {
        out: PathBuf,
        #[arg(long)]
        cluster: PathBuf,
        #[arg(long)]
        allow_remote: bool,
        #[command(flatten)]
        generation: Gen,
        #[command(flatten)]
        net: Net,
    },
    /// Every device as a thread of this process, over in-process sockets.
    Local {
        out: PathBuf,
        #[command(flatten)]
        generation: Gen,
        /// Emulate one device becoming slower: `DEVICE:STEPS:F` (F times slower after
        /// STEPS decode steps).
        #[arg(long, value_parser = parse_slow_device)]
        slow_device: Option<(String, Slowdown)>,
        /// Pass frames between the in-process devices in the clear (by default they are
        /// encrypted with a random key, as over a network; for measuring what that costs).
        #[arg(long)]
        insecure: bool,
        /// Each device runs ready steps one by one, not batched.
        #[arg(long)]
        no_batch: bool,
    },
    /// Measure this device with the runtime's kernels and print its entry for a device
    /// profile (`[[device]]` with its `[device.kernels]` table), as `shardc profile`.
    Profile {
        /// Name of the device entry.
        #[arg(long, default_value = "this-device")]
        name: String,
        /// Fewer sizes, small weight sets, no repeats: seconds, figures less sure.
        #[arg(long)]
        quick: bool,
        /// Also measure the products of this package's stage (a compile output's device
        /// folder), each shape with the weight type it reads.
        #[arg(long, value_name = "DIR")]
        package: Option<PathBuf>,
    },
}

fn net_options(net: &Net, slowdown: Slowdown, session_timeout: f64, batch: bool) -> Result<NetOptions> {
    let key = match (&net.secret_file, net.insecure) {
        (Some(p), _) => {
            let bytes = shardc_format::files::read_bounded(p, MAX_SECRET_FILE)
                .map_err(|e| anyhow!("--secret-file {}: {e}", p.display()))?;
            Some(node::key_from_secret(&bytes).map_err(|e| anyhow!("--secret-file {}: {e}", p.display()))?)
        }
        (None, true) => None,
        (None, false) => bail!(
            "give --secret-file FILE (a secret every participant shares: frames are encrypted with it) or, to send hidden states in the clear, --insecure"
        ),
    };
    if net.max_frame == 0 || net.max_frame > MAX_FRAME_LIMIT {
        bail!("--max-frame must be between 1 and {MAX_FRAME_LIMIT} bytes, got {}", net.max_frame);
    }
    if !(node::MIN_SESSION_TIMEOUT_S..=node::MAX_TIMEOUT_S).contains(&session_timeout) {
        bail!(
            "--session-timeout must be a number of seconds from {} to {}, got {session_timeout}",
            node::MIN_SESSION_TIMEOUT_S,
            node::MAX_TIMEOUT_S
        );
    }
    Ok(NetOptions {
        key,
        max_frame: net.max_frame,
        slowdown,
        session_timeout: Duration::from_secs_f64(session_timeout),
        batch,
    })
}

fn report(g: &Generation, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(g)?);
        return Ok(());
    }
    for (r, t) in g.tokens.iter().enumerate() {
        println!("request {r}: {}", t.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
    }
    for s in &g.stages {
        println!(
            "{:<14} {} steps, compute {:.2} ms, waiting {:.2} ms, send {:.2} ms",
            s.device, s.steps, s.compute_ms, s.waiting_ms, s.send_ms
        );
    }
    if let Some(b) = &g.balance {
        println!("balance: {} decisions, {} moves", b.decisions.len(), b.moves);
        for d in b.decisions.iter().filter(|d| d.moved) {
            println!("  {}", d.to_text());
        }
        let plan: Vec<String> =
            b.plan.iter().map(|s| format!("{}: {} .. {}", s.device, s.first_unit, s.last_unit)).collect();
        println!("final plan: {}", plan.join("; "));
    }
    println!("wall {:.1} ms", g.wall_ms);
    Ok(())
}

/// `DEVICE:STEPS:F`.
fn parse_slow_device(s: &str) -> Result<(String, Slowdown), String> {
    let (device, rest) = s.split_once(':').ok_or_else(|| format!("`{s}`: expected DEVICE:STEPS:F, like dev-b:16:3"))?;
    Ok((device.to_string(), parse_slowdown_after(rest)?))
}

fn run(cli: Cli) -> Result<()> {
    shardc_runtime::threads::set_threads_or_available(cli.threads).map_err(|e| anyhow!("--threads: {e}"))?;
    shardc_runtime::weights::bound_allocator_cache();
    match cli.command {
        Command::Serve {
            out,
            device,
            cluster,
            allow_remote,
            slowdown,
            slowdown_after,
            session_timeout,
            no_batch,
            net,
        } => {
            let cluster = Cluster::load(&cluster, allow_remote).map_err(|e| anyhow!(e))?;
            if !(slowdown >= 1.0 && slowdown.is_finite()) {
                bail!("--slowdown {slowdown}: the factor must be at least 1");
            }
            let slowdown = slowdown_after.unwrap_or(Slowdown { factor: slowdown, from_step: 0 });
            let opts = net_options(&net, slowdown, session_timeout, !no_batch)?;
            let ctx = zmq::Context::new();
            node::serve(&out, &device, &cluster, &ctx, &opts, Arc::new(AtomicBool::new(false))).map_err(|e| anyhow!(e))
        }
        Command::Generate { out, cluster, allow_remote, generation, net } => {
            let cluster = Cluster::load(&cluster, allow_remote).map_err(|e| anyhow!(e))?;
            let opts = net_options(&net, Slowdown::NONE, 60.0, true)?;
            let ctx = zmq::Context::new();
            let g = node::generate(&out, &cluster, &ctx, &opts, &generation.job()?).map_err(|e| anyhow!(e))?;
            report(&g, generation.json)
        }
        Command::Local { out, generation, slow_device, insecure, no_batch } => {
            let opts = node::LocalOptions { slow: slow_device, insecure, no_batch };
            let g = node::local(&out, &generation.job()?, &opts).map_err(|e| anyhow!(e))?;
            report(&g, generation.json)
        }
        Command::Profile { name, quick, package } => {
            shardc_passes::devices::check_name(&name).map_err(|e| anyhow!("--name: {e}"))?;
            let (products, session) = match package {
                Some(dir) => {
                    let (m, graph) = shardc_runtime::package::load(&dir).map_err(|e| anyhow!(e))?;
                    let weights = shardc_runtime::package::weights(&dir, &m, &[&graph]).map_err(|e| anyhow!(e))?;
                    let products = shardc_passes::kernels::product_shapes(&graph);
                    (products, Some(shardc_runtime::Session::with_weights(graph, weights)))
                }
                None => (Vec::new(), None),
            };
            let depth = shardc_runtime::profile::Depth::from_quick(quick);
            let device = shardc_runtime::profile::measure_with_step(&name, depth, &products, session.as_ref())
                .map_err(|e| anyhow!("profile: {e}"))?;
            print!("{}", shardc_passes::devices::device_toml(&device));
            Ok(())
        }
    }
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
