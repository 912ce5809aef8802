//! `shardc compile` of a TinyLlama-1.1B-shaped f16 checkpoint (random weights, made by
//! this program and not committed) for `home-4.toml`: wall time against `cp -r` of the
//! same checkpoint in the same run, and the compile's peak resident memory.
//!
//! Run: `cargo bench -p shardc --bench compile` (writes 2.2 GB under target/bench-models).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use shardc::frontend::hf::sparse::{fill_random, write_sparse_checkpoint};

const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
  "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
  "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "float16"
}
"#;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("target/bench-models/tinyllama-f16");
    if !model.join("model.safetensors").exists() {
        std::fs::create_dir_all(&model).expect("mkdir");
        let config = model.join("source-config.json");
        std::fs::write(&config, CONFIG).expect("config");
        write_sparse_checkpoint(&config, &model).expect("checkpoint");
        fill_random(&model).expect("fill");
    }
    let size = std::fs::metadata(model.join("model.safetensors")).expect("stat").len();
    let scratch = root.join("target/bench-models/scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("mkdir");
    // Warm the page cache so both sides read from memory.
    let _ = Command::new("cat").arg(model.join("model.safetensors")).stdout(std::process::Stdio::null()).status();

    let mut cp_times = Vec::new();
    let mut compile_times = Vec::new();
    let mut peak_kib = 0u64;
    for i in 0..3 {
        let t = Instant::now();
        let ok = Command::new("cp")
            .arg("-r")
            .arg(&model)
            .arg(scratch.join(format!("copy{i}")))
            .status()
            .expect("cp")
            .success();
        assert!(ok);
        cp_times.push(t.elapsed().as_secs_f64());
        let out = scratch.join(format!("out{i}"));
        let t = Instant::now();
        let run = Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(env!("CARGO_BIN_EXE_shardc"))
            .arg("compile")
            .arg(&model)
            .args(["--devices", root.join("fixtures/devices/home-4.toml").to_str().unwrap_or_default()])
            .args(["--max-context", "2048", "-o", out.to_str().unwrap_or_default()])
            .output()
            .expect("compile");
        compile_times.push(t.elapsed().as_secs_f64());
        if !run.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&run.stderr));
            std::process::exit(1);
        }
        let stderr = String::from_utf8_lossy(&run.stderr);
        peak_kib = peak_kib.max(stderr.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0));
        let _ = std::fs::remove_dir_all(scratch.join(format!("copy{i}")));
        let _ = std::fs::remove_dir_all(&out);
    }
    cp_times.sort_by(f64::total_cmp);
    compile_times.sort_by(f64::total_cmp);
    let (cp, compile) = (cp_times[1], compile_times[1]);
    println!("checkpoint: TinyLlama-1.1B shaped, f16, {:.2} GB, compiled for home-4.toml", size as f64 / 1e9);
    println!("cp -r:          {cp:>7.2} s (median of 3)");
    println!("shardc compile: {compile:>7.2} s (median of 3)");
    println!("ratio compile / cp: {:.2} (target <= 1.3)", compile / cp);
    println!("compile peak resident memory: {:.1} MB (target < 256 MB)", peak_kib as f64 / 1024.0);
    let _ = std::fs::remove_dir_all(&scratch);
}
