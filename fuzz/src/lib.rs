//! Mutation fuzzing of every parser shardc and shardc-run expose to files and frames,
//! on the stable toolchain (no sanitizer or coverage instrumentation: inputs are
//! mutations of valid seeds, so they stay close to what the parsers accept).
//!
//! Each [`Target`] feeds bytes to one real entry point — the ONNX importer, a
//! checkpoint's safetensors header, its shard index and its `config.json`, a device
//! profile, a cluster file, a package manifest, a transmission map, the text IR and
//! frames with their envelope — through the file system where the entry point reads
//! files. An error is the expected answer to most inputs; a panic, an input that takes
//! longer than the hang limit, or an abort is a finding. [`fuzz`] runs one target; the
//! `shardc-fuzz` binary runs them as child processes, so an abort is caught too, and
//! finds the input that caused it by replaying the same deterministic sequence.

pub mod mutate;
pub mod targets;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use mutate::{mutate, Rng};
pub use targets::{target, Target, NAMES};

/// What one run of a target did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub target: String,
    pub execs: u64,
    /// Inputs the parser accepted.
    pub accepted: u64,
    /// Inputs refused with an error (the expected outcome of most mutations).
    pub refused: u64,
    pub panics: u64,
    pub hangs: u64,
    pub aborts: u64,
    pub seconds: f64,
    /// Slowest single input, milliseconds.
    pub slowest_ms: f64,
    /// Files the findings were saved to.
    pub findings: Vec<String>,
}

/// Where findings of `target` are kept.
pub fn findings_dir(root: &Path, target: &str) -> PathBuf {
    root.join(target)
}

fn save(dir: &Path, kind: &str, input: &[u8]) -> String {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{kind}-{}.bin", &blake3::hash(input).to_hex()[..16]));
    let _ = std::fs::write(&path, input);
    path.display().to_string()
}

/// Options of one run.
pub struct Options {
    pub iterations: u64,
    pub seed: u64,
    /// Generate but do not run the first `skip` inputs (to reach an input again).
    pub skip: u64,
    /// Write each input here before running it (to catch the one that aborts).
    pub capture: Option<PathBuf>,
    /// An input running longer than this is a hang.
    pub hang_limit: Duration,
    /// Where findings are saved (one folder per target).
    pub findings: PathBuf,
    /// Print progress (`progress N`) every this many inputs.
    pub progress_every: u64,
    /// Silence the panic messages of findings (the panic hook is process-wide: leave
    /// it alone where other threads panic on purpose, as in tests).
    pub quiet: bool,
}

/// Run `options.iterations` inputs through `t`: its seeds first, then mutations.
pub fn fuzz(t: &Target, options: &Options) -> Report {
    let dir = findings_dir(&options.findings, t.name);
    let mut report = Report { target: t.name.to_string(), ..Report::default() };
    // The hang watchdog: when an input runs past the limit, save it and stop.
    let started_ns = Arc::new(AtomicU64::new(0));
    let current = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let watchdog = {
        let (started_ns, current, done, dir) = (started_ns.clone(), current.clone(), done.clone(), dir.clone());
        let limit = options.hang_limit;
        let name = t.name;
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let s = started_ns.load(Ordering::Relaxed);
                if s != 0 && clock.elapsed().saturating_sub(Duration::from_nanos(s)) > limit {
                    let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                    let file = save(&dir, "hang", &input);
                    eprintln!("{name}: an input ran longer than {limit:?}: saved to {file}");
                    std::process::exit(3);
                }
            }
        })
    };
    let previous_hook = options.quiet.then(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        previous
    });
    let mut rng = Rng::new(options.seed ^ blake3::hash(t.name.as_bytes()).as_bytes()[0] as u64);
    let begin = Instant::now();
    for i in 0..options.iterations {
        let input =
            if (i as usize) < t.seeds.len() { t.seeds[i as usize].clone() } else { mutate(&mut rng, &t.seeds, t.text) };
        if i < options.skip {
            continue;
        }
        if let Some(path) = &options.capture {
            let _ = std::fs::write(path, &input);
        }
        if let Ok(mut c) = current.lock() {
            c.clear();
            c.extend_from_slice(&input);
        }
        let one = Instant::now();
        started_ns.store((clock.elapsed().as_nanos() as u64).max(1), Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        started_ns.store(0, Ordering::Relaxed);
        report.slowest_ms = report.slowest_ms.max(one.elapsed().as_secs_f64() * 1e3);
        report.execs += 1;
        match outcome {
            Ok(Ok(())) => report.accepted += 1,
            Ok(Err(_)) => report.refused += 1,
            Err(_) => {
                report.panics += 1;
                report.findings.push(save(&dir, "panic", &input));
            }
        }
        if options.progress_every > 0 && (i + 1) % options.progress_every == 0 {
            eprintln!("progress {}", i + 1);
        }
    }
    report.seconds = begin.elapsed().as_secs_f64();
    if let Some(hook) = previous_hook {
        std::panic::set_hook(hook);
    }
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    report
}

/// Run every file of `dir` through `t`; the files that panic.
pub fn replay_dir(t: &Target, dir: &Path) -> Vec<(PathBuf, String)> {
    let mut bad = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return bad };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    for f in files {
        let Ok(input) = std::fs::read(&f) else { continue };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        if let Err(e) = outcome {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bad.push((f, msg));
        }
    }
    bad
}
