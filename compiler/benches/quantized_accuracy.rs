//! How far quantized packages move a model, side by side with its f32 packages: for
//! every fixture decoder's checkpoint, compiled for two loopback devices as stored,
//! `--quantize int8`, `--quantize int4` and `--quantize int4 --quantize-embeddings`,
//! the largest |logit − the model's| over the fixture's 10-token prompt as a fraction
//! of max |logit|, and how many of 32 greedy tokens agree with the model's before the
//! first that differs (`shardc verify`'s figures, from the library).
//!
//! The fixtures' weights are random (a tiny model made to test shapes and ops), which
//! quantization moves far more than trained weights: the real-weights figures are
//! `fixtures/minilm_check.py`'s (all-MiniLM-L6-v2, cosine similarity), in BENCHMARKS.md.
//!
//! Run: `cargo bench -p shardc --bench quantized_accuracy`

use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURES: [&str; 11] =
    ["gpt2", "llama", "qwen2", "bloom", "llama32", "llama31", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"];

const VARIANTS: [(&str, &[&str]); 4] = [
    ("as stored", &[]),
    ("int8", &["--quantize", "int8"]),
    ("int4", &["--quantize", "int4"]),
    ("int4+e", &["--quantize", "int4", "--quantize-embeddings"]),
];

const TOKENS: usize = 32;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prompt(fixture: &Path) -> Vec<i64> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("meta.json")).expect("meta.json")).unwrap();
    meta["input_ids"].as_array().expect("input_ids").iter().map(|v| v.as_i64().unwrap()).collect()
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("shardc-quantized-accuracy-{}", std::process::id()));
    let devices = root().join("fixtures/devices/loopback-2.toml");
    println!("fixture checkpoints (random weights), 2 devices, prompt of 10 tokens, {TOKENS} greedy tokens");
    println!(
        "max |logit error| / max |logit|, and greedy tokens agreeing with the model's before the first that differs\n"
    );
    print!("{:<12}", "fixture");
    for (name, _) in VARIANTS {
        print!(" {:>17}", name);
    }
    println!();
    let mut worst = vec![(0f32, TOKENS); VARIANTS.len()];
    for fixture in FIXTURES {
        let dir = root().join("fixtures/models").join(fixture);
        let model = dir.join("hf");
        let ids = prompt(&dir);
        print!("{fixture:<12}");
        for (v, (name, flags)) in VARIANTS.iter().enumerate() {
            let out = tmp.join(format!("{fixture}-{v}"));
            let st = Command::new(env!("CARGO_BIN_EXE_shardc"))
                .arg("compile")
                .arg(&model)
                .arg("--devices")
                .arg(&devices)
                .args(["--prompt-len", "16", "--max-context", "64", "-q", "-o"])
                .arg(&out)
                .args(*flags)
                .output()
                .expect("shardc");
            assert!(st.status.success(), "{fixture} {name}: {}", String::from_utf8_lossy(&st.stderr));
            let r = shardc::verify::verify_tokens(&model, &out, &ids, TOKENS, 1e9, 0.0)
                .unwrap_or_else(|e| panic!("{fixture} {name}: {e}"));
            let error = r.max_diff / r.max_logit.max(f32::MIN_POSITIVE);
            let agree = r.model_tokens.iter().zip(&r.package_tokens).take_while(|(a, b)| a == b).count();
            worst[v] = (worst[v].0.max(error), worst[v].1.min(agree));
            print!(" {:>9.2e} {:>4}/{TOKENS}", error, agree);
            let _ = std::fs::remove_dir_all(&out);
        }
        println!();
    }
    print!("{:<12}", "worst");
    for (error, agree) in &worst {
        print!(" {:>9.2e} {:>4}/{TOKENS}", error, agree);
    }
    println!();
    let _ = std::fs::remove_dir_all(&tmp);
}
