//! `--quantize`: plans sized with int8 and int4 matrix weights (issue 15's first step;
//! compiling quantized packages is refused until their weights can be written).

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
    assert!(stdout.contains("weights     int4 (groups of 32, f16 scales): 224 matrices"), "{stdout}");
    let (code, stdout, _) = shardc_text(&["plan", &llama, "--devices", &ll3, "--quantize", "int4", "--json"]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let q = &plan["quantization"];
    assert_eq!(
        (q["scheme"].as_str(), q["group_size"].as_u64(), q["scale_dtype"].as_str()),
        (Some("int4"), Some(32), Some("f16"))
    );
    // 4 bits and one f16 scale per 32 weights: 4.5 bits of 16.
    let ratio = q["bytes_after"].as_f64().unwrap() / q["bytes_before"].as_f64().unwrap();
    assert!((ratio - 4.5 / 16.0).abs() < 1e-3, "{ratio}");
    let memory: f64 = plan["stages"].as_array().unwrap().iter().map(|s| s["memory_bytes"].as_f64().unwrap()).sum();
    assert!(memory < 7.0 * (1u64 << 30) as f64, "the stages hold the quantized bytes: {memory}");

    let bloom = config("bloom-3b");
    let (code, _, _) = shardc_text(&["plan", &bloom, "--devices", &ll3, "--dtype", "f16"]);
    assert_eq!(code, 3);
    let (code, stdout, stderr) =
        shardc_text(&["plan", &bloom, "--devices", &ll3, "--dtype", "f16", "--quantize", "int8"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("weights     int8 (per output channel, f16 scales): 120 matrices"), "{stdout}");
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
fn quantize_flags_are_checked_and_compile_refuses_until_it_can_write_them() {
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
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out").display().to_string();
    let (code, _, stderr) = shardc_text(&[
        "compile",
        &llama,
        "--devices",
        &devices,
        "--prompt-len",
        "16",
        "--max-context",
        "64",
        "--quantize",
        "int8",
        "-o",
        &out,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("compile does not write quantized packages yet"), "{stderr}");
    assert!(!tmp.path().join("out").exists());
}
