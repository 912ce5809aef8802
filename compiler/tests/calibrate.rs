//! `--calibrate RUN.json`: a plan whose device times are corrected by what a run of
//! the packages measured predicts that run.

mod common;

use std::path::Path;

use common::net::{compile, shardc_run};
use common::{fixture_dir, root, shardc_text};

/// `shardc-run local OUT --json --no-balance` of a 16-token prompt and 24 new tokens.
fn run(out: &Path, file: &Path) -> serde_json::Value {
    let ids: Vec<String> = (1..=16).map(|i| i.to_string()).collect();
    let o = std::process::Command::new(shardc_run())
        .arg("local")
        .arg(out)
        .args(["--input-ids", &ids.join(","), "--max-new-tokens", "24", "--json", "--no-balance"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(file, &o.stdout).unwrap();
    serde_json::from_slice(&o.stdout).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per stage of a run report: (device, prefill ms, median decode-step ms).
fn measured(report: &serde_json::Value) -> Vec<(String, f64, f64)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let steps: Vec<(u64, f64)> = s["per_step"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[1].as_u64().unwrap(), p[2].as_f64().unwrap()))
                .collect();
            let of = |decode: bool| median(steps.iter().filter(|p| (p.0 > 0) == decode).map(|p| p.1).collect());
            (s["device"].as_str().unwrap().to_string(), of(false), of(true))
        })
        .collect()
}

fn plan(model: &Path, run: &Path, extra: &[&str]) -> (i32, String, String) {
    let devices = root().join("fixtures/devices/loopback-3.toml");
    let mut args = vec!["plan", model.to_str().unwrap()];
    // A `--devices` among `extra` replaces the default profile.
    if !extra.contains(&"--devices") {
        args.extend(["--devices", devices.to_str().unwrap()]);
    }
    args.extend(["--calibrate", run.to_str().unwrap(), "--prompt-len", "16"]);
    args.extend(extra);
    shardc_text(&args)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[test]
fn a_calibrated_plan_predicts_the_run_it_was_calibrated_from() {
    let model = fixture_dir("llama").join("hf");
    let dir = tempfile::tempdir().unwrap();
    // Latency: the whole tiny model on dev-a, one stage.
    let out = dir.path().join("out");
    let devices = root().join("fixtures/devices/loopback-3.toml");
    let (code, _, stderr) = shardc_text(&[
        "compile",
        model.to_str().unwrap(),
        "--devices",
        devices.to_str().unwrap(),
        "--prompt-len",
        "16",
        "--max-context",
        "64",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let run_file = dir.path().join("run.json");
    let report = run(&out, &run_file);
    let m = measured(&report);
    assert_eq!(m.len(), 1);
    // The run's own work: 16 prompt tokens, decode steps around context 16 + 12.
    // dev-b and dev-c a thousand times slower than the profile's dev-a: the calibrated
    // dev-a wins however slow this machine measured it (the run is timed, the others
    // are not).
    let slow = dir.path().join("slow-b-c.toml");
    let text = std::fs::read_to_string(&devices).unwrap();
    let (a, rest) = text.split_at(text.find("name = \"dev-b\"").unwrap());
    std::fs::write(&slow, format!("{a}{}", rest.replace("100 MFLOP/s", "100 kFLOP/s").replace("1 GB/s", "1 MB/s")))
        .unwrap();
    let (code, stdout, stderr) =
        plan(&model, &run_file, &["--max-context", "29", "--json", "--devices", slow.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let p: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let stage = &p["stages"][0];
    assert_eq!((stage["device"].as_str(), p["stages"].as_array().unwrap().len()), (Some("dev-a"), 1), "{stdout}");
    let (pre, dec) = (stage["prefill_ms"].as_f64().unwrap(), stage["decode_ms"].as_f64().unwrap());
    assert!(close(pre, m[0].1) && close(dec, m[0].2), "predicted {pre} / {dec} ms, measured {:?}", m[0]);
    let c = &p["calibration"];
    assert_eq!(c["uncalibrated"], serde_json::json!(["dev-b", "dev-c"]));
    assert_eq!((c["prompt_tokens"].as_u64(), c["new_tokens"].as_u64()), (Some(16), Some(24)));
    // The run report is an input of the plan, by content.
    let bytes = std::fs::read(&run_file).unwrap();
    let input = p["inputs"].as_array().unwrap().iter().find(|i| i["role"] == "calibration").expect("calibration input");
    assert_eq!(input["blake3"].as_str(), Some(blake3::hash(&bytes).to_hex().as_str()));
    let (code, text, _) = plan(&model, &run_file, &["--max-context", "29"]);
    assert_eq!(code, 0);
    assert!(text.contains("calibrated  from a run of 16 + 24 tokens: dev-a prefill x"), "{text}");
    assert!(text.contains("(as profiled: dev-b, dev-c)"), "{text}");

    // Throughput: three stages, each device calibrated by its own stage.
    let out3 = dir.path().join("out3");
    compile(&model, &out3, &[]);
    let run3 = dir.path().join("run3.json");
    let m3 = measured(&run(&out3, &run3));
    assert_eq!(m3.len(), 3);
    let (code, stdout, stderr) = plan(&model, &run3, &["--max-context", "29", "--objective", "throughput", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let p: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let devices = p["calibration"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(p["calibration"]["uncalibrated"], serde_json::json!([]));
    for (d, (name, pre, dec)) in devices.iter().zip(&m3) {
        assert_eq!(d["device"].as_str(), Some(name.as_str()));
        let f = |k: &str| d[k].as_f64().unwrap();
        assert!(close(f("measured_prefill_ms"), *pre) && close(f("measured_decode_ms"), *dec), "{d}");
        assert!(close(f("prefill_factor"), pre / f("predicted_prefill_ms")), "{d}");
        assert!(close(f("decode_factor"), dec / f("predicted_decode_ms")), "{d}");
    }
}

#[test]
fn runs_that_cannot_calibrate_a_plan_are_refused() {
    let model = fixture_dir("llama").join("hf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&model, &out, &[]);
    let good = dir.path().join("run.json");
    let text = serde_json::to_string(&run(&out, &good)).unwrap();
    let cases = [
        (text.replace("\"dev-b\"", "\"dev-z\""), "the run's device `dev-z` is not in the device profile"),
        ("{\"tokens\": []}".to_string(), "not a run report"),
    ];
    for (i, (bad, why)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.json"));
        std::fs::write(&file, bad).unwrap();
        let (code, _, stderr) = plan(&model, &file, &["--max-context", "64"]);
        assert_eq!(code, 1, "{why}: {stderr}");
        assert!(stderr.contains(why) && stderr.contains("--calibrate"), "{why}: {stderr}");
    }
    let (code, _, stderr) = plan(&model, &dir.path().join("missing.json"), &["--max-context", "64"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.json") && stderr.contains("cannot read"), "{stderr}");
}
