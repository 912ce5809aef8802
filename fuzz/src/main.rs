//! `shardc-fuzz`: run the mutation fuzzer on every parser (or some), each target in its
//! own process so aborts are caught as well as panics and hangs.
//!
//! ```text
//! cargo run --release -p shardc-fuzz -- run                       # every target, 1 M inputs each
//! cargo run --release -p shardc-fuzz -- run config devices -n 10000
//! cargo run --release -p shardc-fuzz -- replay config FILE…        # run saved inputs
//! ```
//!
//! Findings are saved under `target/fuzz/findings/<target>/`; copy each into
//! `fuzz/regressions/<target>/` once fixed, where the test suite replays it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use shardc_fuzz::{fuzz, target, Options, Report, NAMES};

#[derive(Parser)]
#[command(name = "shardc-fuzz", about = "Mutation fuzzing of shardc's parsers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The targets.
    List,
    /// Fuzz targets (default: all), each in its own process, `--jobs` at a time.
    Run {
        targets: Vec<String>,
        /// Inputs per target.
        #[arg(short = 'n', long, default_value_t = 1_000_000)]
        iterations: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Targets run at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Seconds one input may take before it counts as a hang.
        #[arg(long, default_value_t = 10.0)]
        hang_limit: f64,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One target in this process (what `run` starts).
    Worker {
        target: String,
        #[arg(long)]
        iterations: u64,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 0)]
        skip: u64,
        #[arg(long)]
        capture: Option<PathBuf>,
        #[arg(long)]
        hang_limit: f64,
    },
    /// Run saved inputs through a target; report the ones that panic.
    Replay { target: String, files: Vec<PathBuf> },
}

fn scratch() -> PathBuf {
    shardc_fuzz::targets::root().join("target/fuzz")
}

fn worker(name: &str, options: &Options) -> Result<()> {
    let t = target(name, &scratch().join("work"))?;
    let report = fuzz(&t, options);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Run one target as a child process; on an abort, run the same inputs again from the
/// last progress mark, capturing each, to keep the one that aborts.
fn run_child(name: &str, iterations: u64, seed: u64, hang_limit: f64) -> Result<Report> {
    let exe = std::env::current_exe()?;
    let spawn = |skip: u64, capture: Option<&Path>| -> Result<(std::process::ExitStatus, String, u64)> {
        let mut c = Command::new(&exe);
        c.args(["worker", name, "--iterations", &iterations.to_string(), "--seed", &seed.to_string()]);
        c.args(["--skip", &skip.to_string(), "--hang-limit", &hang_limit.to_string()]);
        if let Some(p) = capture {
            c.arg("--capture").arg(p);
        }
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let progress = std::thread::spawn(move || {
            let mut last = 0u64;
            let mut other = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match line.strip_prefix("progress ").and_then(|n| n.parse().ok()) {
                    Some(n) => last = n,
                    None => other += &(line + "\n"),
                }
            }
            (last, other)
        });
        let out = child.wait_with_output()?;
        let (last, other) = progress.join().unwrap_or_default();
        Ok((out.status, String::from_utf8_lossy(&out.stdout).into_owned() + &other, last))
    };
    let (status, text, last) = spawn(0, None)?;
    if status.success() {
        let line = text.lines().find(|l| l.starts_with('{')).context("no report")?;
        return Ok(serde_json::from_str(line)?);
    }
    let mut report = Report { target: name.to_string(), execs: last, ..Report::default() };
    if status.code() == Some(3) {
        report.hangs = 1;
        report.findings.extend(text.lines().filter(|l| l.contains("saved to")).map(String::from));
        return Ok(report);
    }
    // An abort: find the input.
    report.aborts = 1;
    let capture = scratch().join(format!("{name}.current"));
    let _ = spawn(last, Some(&capture))?;
    let dir = scratch().join("findings").join(name);
    std::fs::create_dir_all(&dir)?;
    let input = std::fs::read(&capture).unwrap_or_default();
    let file = dir.join(format!("abort-{}.bin", &blake3::hash(&input).to_hex()[..16]));
    std::fs::write(&file, &input)?;
    report.findings.push(format!("{} (status {status}): {}", file.display(), text.lines().last().unwrap_or_default()));
    Ok(report)
}

fn main() -> ExitCode {
    match main_() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main_() -> Result<bool> {
    match Cli::parse().command {
        Cmd::List => {
            for n in NAMES {
                println!("{n}");
            }
            Ok(true)
        }
        Cmd::Worker { target: name, iterations, seed, skip, capture, hang_limit } => {
            let options = Options {
                iterations,
                seed,
                skip,
                capture,
                hang_limit: Duration::from_secs_f64(hang_limit),
                findings: scratch().join("findings"),
                progress_every: 10_000,
                quiet: true,
            };
            worker(&name, &options)?;
            Ok(true)
        }
        Cmd::Run { targets, iterations, seed, jobs, hang_limit, json } => {
            let targets: Vec<String> =
                if targets.is_empty() { NAMES.iter().map(|s| s.to_string()).collect() } else { targets };
            if let Some(bad) = targets.iter().find(|t| !NAMES.contains(&t.as_str())) {
                bail!("no fuzz target `{bad}` (targets: {})", NAMES.join(", "));
            }
            if !(hang_limit > 0.0 && hang_limit.is_finite()) {
                bail!("--hang-limit must be a positive number of seconds");
            }
            // Set up the shared fixtures once, before the children race to.
            target("manifest", &scratch().join("work"))?;
            let queue = std::sync::Mutex::new(targets.clone());
            let reports = std::sync::Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for _ in 0..jobs.max(1) {
                    s.spawn(|| {
                        let take =
                            || queue.lock().ok().and_then(|mut q| if q.is_empty() { None } else { Some(q.remove(0)) });
                        while let Some(name) = take() {
                            let r = run_child(&name, iterations, seed, hang_limit).unwrap_or_else(|e| Report {
                                target: name.clone(),
                                aborts: 1,
                                findings: vec![format!("could not run: {e:#}")],
                                ..Report::default()
                            });
                            eprintln!(
                            "{:<18} {:>9} inputs in {:>7.1} s ({:>8.0}/s), {} accepted, {} panics, {} hangs, {} aborts",
                            r.target,
                            r.execs,
                            r.seconds,
                            r.execs as f64 / r.seconds.max(1e-9),
                            r.accepted,
                            r.panics,
                            r.hangs,
                            r.aborts
                        );
                            if let Ok(mut all) = reports.lock() {
                                all.push(r);
                            }
                        }
                    });
                }
            });
            let mut reports = reports.into_inner().unwrap_or_default();
            reports.sort_by_key(|r| NAMES.iter().position(|n| *n == r.target));
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                println!("| target | inputs | seconds | inputs/s | accepted | slowest ms | panics | hangs | aborts |");
                println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
                for r in &reports {
                    println!(
                        "| {} | {} | {:.1} | {:.0} | {} | {:.1} | {} | {} | {} |",
                        r.target,
                        r.execs,
                        r.seconds,
                        r.execs as f64 / r.seconds.max(1e-9),
                        r.accepted,
                        r.slowest_ms,
                        r.panics,
                        r.hangs,
                        r.aborts
                    );
                }
            }
            let mut clean = true;
            for r in &reports {
                for f in &r.findings {
                    eprintln!("finding: {}: {f}", r.target);
                    clean = false;
                }
            }
            Ok(clean && reports.iter().all(|r| r.panics + r.hangs + r.aborts == 0))
        }
        Cmd::Replay { target: name, files } => {
            let t = target(&name, &scratch().join("work"))?;
            let mut clean = true;
            for f in files {
                let dir_or_file =
                    if f.is_dir() { f.clone() } else { f.parent().map(Path::to_path_buf).unwrap_or_default() };
                let bad = shardc_fuzz::replay_dir(&t, &dir_or_file);
                for (file, msg) in bad.iter().filter(|(file, _)| f.is_dir() || *file == f) {
                    println!("{}: panics: {msg}", file.display());
                    clean = false;
                }
            }
            Ok(clean)
        }
    }
}
