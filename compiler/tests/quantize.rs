//! `--quantize`: plans sized with int8 and int4 matrix weights, and the packages that
//! hold them.

mod common;

use common::{root, shardc_text};

fn config(name: &str) -> String {
    root().join(format!("fixtures/configs/{name}/config.json")).display().to_string()
}

fn phones() -> String {
    root().join("fixtures/devices/lingualinked-3.toml").display().to_string()
}

#[test]
fn quantized_weights_let_llama_3_8b_and_bloom_3b_fit_three_phones() {
    let (llama, ll3) = (config("llama-3-8b"), phones());
    let (code, _, stderr) = shardc_text(&["plan", &llama, "--devices", &ll3]);
    assert_eq!(code, 3, "unquantized it does not fit: {stderr}");
    let (code, _, stderr) = shardc_text(&["plan", &llama, "--devices", &ll3, "--quantize", "int8"]);
    assert_eq!(code, 3, "nor at int8: {stderr}");
    let (code, stdout, stderr) = shardc_text(&["plan", &llama, "--devices", &ll3, "--quantize", "int4"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("weights     int4 (groups of 32, f32 scales): 224 matrices"), "{stdout}");
    let (code, stdout, _) = shardc_text(&["plan", &llama, "--devices", &ll3, "--quantize", "int4", "--json"]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let q = &plan["quantization"];
    assert_eq!(
        (q["scheme"].as_str(), q["group_size"].as_u64(), q["scale_dtype"].as_str()),
        (Some("int4"), Some(32), Some("f32"))
    );
    // 4 bits and one f32 scale per 32 weights: 5 bits of 16.
    let ratio = q["bytes_after"].as_f64().unwrap() / q["bytes_before"].as_f64().unwrap();
    assert!((ratio - 5.0 / 16.0).abs() < 1e-3, "{ratio}");
    let memory: f64 = plan["stages"].as_array().unwrap().iter().map(|s| s["memory_bytes"].as_f64().unwrap()).sum();
    assert!(memory < 7.0 * (1u64 << 30) as f64, "the stages hold the quantized bytes: {memory}");

    let bloom = config("bloom-3b");
    let (code, _, _) = shardc_text(&["plan", &bloom, "--devices", &ll3, "--dtype", "f16"]);
    assert_eq!(code, 3);
    let (code, stdout, stderr) =
        shardc_text(&["plan", &bloom, "--devices", &ll3, "--dtype", "f16", "--quantize", "int8"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("weights     int8 (per output channel, f32 scales): 120 matrices"), "{stdout}");
}

#[test]
fn compare_shows_the_weights_as_stored_int8_and_int4_side_by_side() {
    let (code, stdout, stderr) =
        shardc_text(&["compare", &config("llama-3-8b"), "--devices", &phones(), "--quantize", "int4"]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("weights")).skip(1).collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(rows[0].starts_with("bf16") && rows[0].ends_with("does not fit"), "{stdout}");
    assert!(rows[1].starts_with("int8") && rows[1].ends_with("does not fit"), "{stdout}");
    assert!(rows[2].starts_with("int4") && !rows[2].contains("does not fit"), "{stdout}");
    let (code, stdout, _) =
        shardc_text(&["compare", &config("llama-3-8b"), "--devices", &phones(), "--quantize", "int4", "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let fits: Vec<bool> = json["weights"].as_array().unwrap().iter().map(|r| r["fits"].as_bool().unwrap()).collect();
    assert_eq!(fits, [false, false, true]);
}

#[test]
fn quantize_flags_are_checked() {
    let llama = root().join("fixtures/models/llama/hf").display().to_string();
    let devices = root().join("fixtures/devices/loopback-3.toml").display().to_string();
    let base = ["plan", &llama, "--devices", &devices, "--prompt-len", "16", "--max-context", "64"];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        shardc_text(&args)
    };
    for (extra, says) in [
        (&["--quantize", "int3"][..], "unknown quantization `int3`"),
        (&["--quantize", "int4", "--group-size", "0"][..], "--group-size must be between 1 and 65536"),
        (&["--group-size", "64"][..], "--quantize"),
    ] {
        let (code, _, stderr) = with(extra);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
    let (code, stdout, stderr) = with(&["--quantize", "int4", "--group-size", "48"]);
    assert_eq!(code, 0, "a group size the shapes do not divide has a shorter last group: {stderr}");
    assert!(stdout.contains("groups of 48"), "{stdout}");
}

#[test]
fn quantized_packages_run_and_stay_close_to_the_model() {
    let llama = root().join("fixtures/models/llama/hf").display().to_string();
    let devices = root().join("fixtures/devices/loopback-3.toml").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let compile = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name).display().to_string();
        let mut args = vec!["compile", &llama, "--devices", &devices, "--objective", "throughput"];
        args.extend(["--prompt-len", "16", "--max-context", "64", "-q", "-o", &out]);
        args.extend(extra);
        let (code, _, stderr) = shardc_text(&args);
        assert_eq!(code, 0, "{extra:?}: {stderr}");
        out
    };
    let weights = |out: &str| -> u64 {
        ["dev-a", "dev-b", "dev-c"]
            .iter()
            .map(|d| std::fs::metadata(std::path::Path::new(out).join(d).join("weights.safetensors")).unwrap().len())
            .sum()
    };
    let f32_out = compile("f32", &[]);
    let int8 = compile("int8", &["--quantize", "int8"]);
    let int4 = compile("int4", &["--quantize", "int4"]);
    let (w32, w8, w4) = (weights(&f32_out), weights(&int8), weights(&int4));
    assert!(w8 < w32 / 2 && w4 < w8, "weights: f32 {w32}, int8 {w8}, int4 {w4} bytes");
    // The same content gives the same bytes.
    let again = compile("int4-again", &["--quantize", "int4"]);
    assert!(common::files(std::path::Path::new(&int4)) == common::files(std::path::Path::new(&again)));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(&int4).join("dev-b/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["weights_dtype"], "f32", "scales do not name the stored dtype");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(std::path::Path::new(&int4).join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["quantization"]["scheme"], "int4");
    // Within their tolerance of the f32 model (these random tiny weights move far at
    // int4, whose greedy tokens part ways at once; int8 keeps them), and not within the
    // f32 packages' own.
    let verify = |out: &str, extra: &[&str]| {
        let mut args = vec!["verify", &llama, out];
        args.extend(extra);
        shardc_text(&args)
    };
    let (code, stdout, stderr) = verify(&int8, &["--tolerance", "0.1"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("8 tokens agree"), "{stdout}");
    let (code, stdout, _) = verify(&int4, &["--tolerance", "1", "--min-agreement", "0"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("(at least 0% asked)") || stdout.contains("8 tokens agree"), "{stdout}");
    let (code, _, _) = verify(&int4, &[]);
    assert_eq!(code, 4, "int4 packages do not reproduce the f32 model to 1e-4");
    // shardc-run runs them (in-process devices).
    let run = std::process::Command::new(common::net::shardc_run())
        .args(["local", &int8, "--input-ids", "1,2,3", "--max-new-tokens", "4"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (code, stdout, _) = shardc_text(&["run", &llama, "--input-ids", "1,2,3", "--max-new-tokens", "4"]);
    assert_eq!(code, 0);
    let model_tokens = stdout.lines().find_map(|l| l.strip_prefix("generated   ")).unwrap().split(' ').next().unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).contains(&format!("request 0: {model_tokens}")));
}
