//! Lowering a 7B-parameter checkpoint from its safetensors header: wall time against a
//! baseline measured in the same run (reading and JSON-parsing the same header, the
//! least any lowering must do), and the peak resident memory of a process that only
//! lowers. The checkpoint is a sparse file: 13.5 GB of data that is a hole on disk.
//!
//! Run: `cargo bench -p shardc --bench header_only`

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shardc::frontend::hf::{lower, sparse::write_sparse_checkpoint, LowerOptions};

const RUNS: usize = 21;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn parse_header(path: &Path) -> serde_json::Value {
    let mut f = std::fs::File::open(path).expect("open");
    let mut n = [0u8; 8];
    f.read_exact(&mut n).expect("read");
    let mut header = vec![0u8; u64::from_le_bytes(n) as usize];
    f.read_exact(&mut header).expect("read");
    serde_json::from_slice(&header).expect("JSON")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--lower-only") {
        // Child: lower once and report this process's peak resident memory.
        let dir = PathBuf::from(&args[pos + 1]);
        let t = Instant::now();
        let model = lower(&dir, &LowerOptions::default()).expect("lower");
        let took = t.elapsed();
        println!("{} {} {}", took.as_secs_f64() * 1e3, peak_rss_kib(), model.graph.nodes.len());
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("shardc-sparse-7b-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let data = write_sparse_checkpoint(&root.join("fixtures/configs/llama-2-7b/config.json"), &dir)
        .expect("sparse checkpoint");
    let file = dir.join("model.safetensors");
    let on_disk = std::fs::metadata(&file).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0);

    let ours = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(lower(&dir, &LowerOptions::default()).expect("lower"));
                t.elapsed()
            })
            .collect(),
    );
    let baseline = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(parse_header(&file));
                t.elapsed()
            })
            .collect(),
    );
    let out = Command::new(&args[0]).arg("--lower-only").arg(&dir).output().expect("child");
    let child = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = child.split_whitespace().collect();
    std::fs::remove_dir_all(&dir).ok();

    println!(
        "checkpoint: Llama-2-7B shaped, f16, {:.1} GB of data as a sparse file ({} KiB on disk)",
        data as f64 / 1e9,
        on_disk / 1024
    );
    println!("lower (header only):       {:>8.2} ms median of {RUNS} (target < 100 ms)", ours.as_secs_f64() * 1e3);
    println!("baseline header JSON parse: {:>7.2} ms", baseline.as_secs_f64() * 1e3);
    println!("ratio lower / baseline:    {:>8.2}", ours.as_secs_f64() / baseline.as_secs_f64());
    if let [ms, kib, nodes] = fields.as_slice() {
        println!(
            "fresh process: lowered in {ms} ms to {nodes} nodes, peak resident memory {:.1} MB (target < 64 MB)",
            kib.parse::<f64>().unwrap_or(0.0) / 1024.0
        );
    }
}
