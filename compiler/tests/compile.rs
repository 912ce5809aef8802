//! `shardc compile`: packages that together reproduce the model, byte-identical
//! across runs, refused when altered, and never left half-written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files;
use common::{fixture_dir, fixture_onnx, reference, root, CURRENT, EXPORTERS, FIXTURES};
use shardc::emit::{compile, CompileOptions};
use shardc::frontend::hf::LowerOptions;
use shardc_passes::devices;
use shardc_passes::plan::{Objective, Strategy};
use shardc_runtime::generate::{self, CacheLayout};
use shardc_runtime::package::load_pipeline;

fn options(dtype: Option<shardc_ir::DType>) -> CompileOptions {
    CompileOptions {
        strategy: Strategy::Ilp,
        request: shardc_passes::partition::Request { dtype, ..common::fixture_request(Objective::Throughput, 0) },
        force: false,
        model_name: "fixture".into(),
        devices_name: "loopback".into(),
        inputs: Vec::new(),
        records: Vec::new(),
        progress: false,
    }
}

fn compile_to(model: &Path, devices: usize, out: &Path, dtype: Option<shardc_ir::DType>) -> usize {
    let (graph, weights_dir) = common::lowered(model, Some(64));
    let profile = devices::load(&root().join(format!("fixtures/devices/loopback-{devices}.toml"))).unwrap();
    compile(&graph, &weights_dir, &profile, &options(dtype), out).unwrap().report.stages.len()
}

/// Every fixture's checkpoint and ONNX export, and the current toolchain's
/// checkpoints and exports of both torch exporters.
fn models() -> Vec<(String, PathBuf)> {
    let pinned =
        FIXTURES.iter().flat_map(|n| [(n.to_string(), fixture_dir(n).join("hf")), (n.to_string(), fixture_onnx(n))]);
    let current = CURRENT.iter().flat_map(|n| {
        std::iter::once((n.to_string(), fixture_dir(n).join("hf")))
            .chain(EXPORTERS.iter().map(move |e| (n.to_string(), fixture_dir(n).join(format!("{e}.onnx")))))
    });
    pinned.chain(current).collect()
}

#[test]
fn packages_for_two_and_three_devices_reproduce_every_fixture() {
    for (name, model) in models() {
        for devices in [2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            assert_eq!(compile_to(&model, devices, &out, None), devices, "{}", model.display());
            let (manifests, pipeline) = load_pipeline(&out).unwrap();
            assert_eq!(manifests.len(), devices);
            let r = reference(&name);
            let (logits, tokens) = match CacheLayout::of(&pipeline).unwrap() {
                Some(layout) => (
                    generate::cached_prefill(&pipeline, &layout, &r.input_ids).unwrap(),
                    generate::greedy_cached(&pipeline, &layout, &r.input_ids, 8).unwrap(),
                ),
                None => (
                    generate::logits(&pipeline, &r.input_ids).unwrap(),
                    generate::greedy(&pipeline, &r.input_ids, 8).unwrap(),
                ),
            };
            let max_ref = r.max_abs();
            let diff = r.max_diff(&logits.values);
            assert!(diff <= 1e-4 * max_ref.max(1.0), "{} on {devices}: {diff}", model.display());
            assert_eq!(tokens, r.greedy, "{} on {devices}", model.display());
        }
    }
}

/// An encoder (BERT, both exporters): the packages reproduce the whole model's
/// last hidden state, which PyTorch computed, on inputs with padding.
#[test]
fn packages_reproduce_an_encoder() {
    use shardc_runtime::generate::Runner;
    let dir = fixture_dir("bert");
    let inputs = shardc::run::read_tensors(&dir.join("inputs.safetensors")).unwrap();
    let reference = shardc::run::read_tensors(&dir.join("reference.safetensors")).unwrap();
    for exporter in EXPORTERS {
        let model = dir.join(format!("{exporter}.onnx"));
        for devices in [2, 3] {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("out");
            assert_eq!(compile_to(&model, devices, &out, None), devices, "{exporter} on {devices}");
            let (_, pipeline) = load_pipeline(&out).unwrap();
            let feed = inputs.iter().map(|(n, t)| (n.clone(), shardc_runtime::Tensor::from_data(t).unwrap())).collect();
            let outputs = pipeline.run(feed).unwrap();
            for (name, want) in reference.iter().filter(|(n, _)| inputs.iter().all(|(i, _)| i != n)) {
                let got = &outputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no `{name}`")).1;
                let (got, want) = (got.to_f32_vec(), want.to_f64_vec());
                assert_eq!(got.len(), want.len(), "{exporter} {name}");
                let max_ref = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                let diff = want.iter().zip(&got).fold(0f64, |m, (a, b)| m.max((a - f64::from(*b)).abs()));
                assert!(diff <= 1e-4 * max_ref.max(1.0), "{exporter} on {devices}: `{name}` differs by {diff}");
            }
        }
    }
}

#[test]
fn two_compiles_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("qwen2").join("hf");
    compile_to(&model, 3, &dir.path().join("a"), None);
    compile_to(&model, 3, &dir.path().join("b"), None);
    let (a, b) = (files(&dir.path().join("a")), files(&dir.path().join("b")));
    assert_eq!(a.len(), 3 + 3 * 4);
    assert_eq!(a, b);
}

#[test]
fn altered_packages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile_to(&fixture_dir("llama").join("hf"), 2, &out, None);
    let weights = out.join("dev-b/weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let err = load_pipeline(&out).err().unwrap().to_string();
    assert!(err.contains("dev-b/weights.safetensors") && err.contains("the package was altered"), "{err}");
    let cli = common::shardc_command().arg("verify").arg(fixture_dir("llama").join("hf")).arg(&out).output().unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("the package was altered"));
}

#[test]
fn a_failed_compile_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A config alone has no weights to copy: the compile fails after planning.
    let config = root().join("fixtures/configs/gpt2/config.json");
    let devices = root().join("fixtures/devices/home-4.toml");
    let cli = common::shardc_command()
        .args([
            "compile",
            config.to_str().unwrap(),
            "--devices",
            devices.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains("has no file to copy from"), "{stderr}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary folders left behind");
    // An existing OUT is kept unless --force.
    std::fs::create_dir(&out).unwrap();
    let model = fixture_dir("gpt2").join("hf");
    let cli = common::shardc_command()
        .args([
            "compile",
            model.to_str().unwrap(),
            "--devices",
            devices.to_str().unwrap(),
            "--max-context",
            "64",
            "--prompt-len",
            "8",
        ])
        .args(["-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("exists; pass --force"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
}

#[test]
fn half_precision_packages_store_f16_and_stay_close() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile_to(&fixture_dir("llama").join("hf"), 2, &out, Some(shardc_ir::DType::F16));
    let bytes = std::fs::read(out.join("dev-a/weights.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + n]);
    assert!(header.contains("\"F16\"") && !header.contains("\"F32\""), "{header}");
    let (_, pipeline) = load_pipeline(&out).unwrap();
    let layout = CacheLayout::of(&pipeline).unwrap().unwrap();
    let r = reference("llama");
    let got = generate::cached_prefill(&pipeline, &layout, &r.input_ids).unwrap();
    let max_ref = r.max_abs();
    let diff = r.max_diff(&got.values);
    assert!(diff < 0.02 * max_ref, "f16 drift {diff} of {max_ref}");
}

#[test]
fn verify_command_reports_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = fixture_dir("bloom").join("hf");
    compile_to(&model, 3, &out, None);
    let ids = reference("bloom").input_ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let cli =
        common::shardc_command().arg("verify").arg(&model).arg(&out).args(["--input-ids", &ids]).output().unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert_eq!(cli.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&cli.stderr));
    assert!(stdout.contains("packages    3 stages: dev-a -> dev-b -> dev-c"), "{stdout}");
    assert!(stdout.contains("greedy      8 tokens agree"), "{stdout}");
}

/// `verify` and `run` as library functions: agreement reported, a tampered package
/// refused, a checkpoint's greedy tokens those of PyTorch.
#[test]
fn verify_and_run_are_library_functions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = fixture_dir("llama").join("hf");
    compile_to(&model, 3, &out, None);
    let r = reference("llama");
    let report = shardc::verify::verify_tokens(&model, &out, &r.input_ids, 8, 1e-4, 1.0).unwrap();
    assert!(report.agrees(), "{report:?}");
    assert_eq!(report.devices, ["dev-a", "dev-b", "dev-c"]);
    assert_eq!(report.package_tokens, r.greedy);
    // A tolerance of zero on logits that differ in the last bits: reported, not an error.
    let strict = shardc::verify::verify_tokens(&model, &out, &r.input_ids, 2, 0.0, 1.0).unwrap();
    assert_eq!(strict.agrees(), strict.max_diff == 0.0);
    let loaded = shardc::load::load(&model, &LowerOptions::default()).unwrap();
    let run = shardc::run::language_model(loaded, &r.input_ids, 8, 3).unwrap();
    assert!(run.kv_cache);
    assert_eq!(run.generated, r.greedy);
    assert_eq!(run.top.len(), 3);
    let w = out.join("dev-b/weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let err = shardc::verify::verify_tokens(&model, &out, &r.input_ids, 8, 1e-4, 1.0).unwrap_err();
    assert!(err.to_string().contains("the package was altered"), "{err}");
}

#[test]
fn a_compile_killed_mid_write_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = fixture_dir("llama32").join("hf");
    let devices = root().join("fixtures/devices/loopback-2.toml");
    let args = format!(
        "ulimit -f 100; exec '{}' compile '{}' --devices '{}' --objective throughput --max-context 64 --prompt-len 16 -o '{}'",
        env!("CARGO_BIN_EXE_shardc"),
        model.display(),
        devices.display(),
        out.display()
    );
    // A 100 KiB file-size limit: writing the 1.2 MB of weights fails part-way, as a full disk would.
    let status = Command::new("sh").args(["-c", &args]).status().unwrap();
    assert!(!status.success());
    assert!(!out.exists(), "a partial OUT was left");
    // The next compile clears what the killed one left and succeeds.
    let ok = common::shardc_command()
        .arg("compile")
        .arg(&model)
        .args([
            "--devices",
            devices.to_str().unwrap(),
            "--objective",
            "throughput",
            "--max-context",
            "64",
            "--prompt-len",
            "16",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("out")]);
    // An output folder that cannot be created at all.
    let bad = common::shardc_command()
        .arg("compile")
        .arg(&model)
        .args([
            "--devices",
            devices.to_str().unwrap(),
            "--max-context",
            "64",
            "--prompt-len",
            "16",
            "-o",
            "/proc/shardc-out",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/proc"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn a_model_that_does_not_fit_is_refused_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = root().join("fixtures/configs/llama-3-70b/config.json");
    let devices = root().join("fixtures/devices/lingualinked-3.toml");
    let cli = common::shardc_command()
        .arg("compile")
        .arg(&config)
        .args(["--devices", devices.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    // Exit status 3: the model does not fit (a pipeline can tell it from bad inputs).
    assert_eq!(cli.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains("cannot hold the model: it needs") && stderr.contains("offer 6.75 GiB"), "{stderr}");
    assert!(!out.exists());
    // `plan` says the same with the same status.
    let plan = common::shardc_command()
        .arg("plan")
        .arg(&config)
        .args(["--devices", devices.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(3), "{}", String::from_utf8_lossy(&plan.stderr));
}

/// Exit statuses a build pipeline acts on: 1 a bad input, 2 a bad command line (clap's
/// own and our range checks alike), 4 packages that do not reproduce the model.
#[test]
fn exit_statuses_tell_failures_apart() {
    let dir = tempfile::tempdir().unwrap();
    let devices = root().join("fixtures/devices/loopback-3.toml");
    let code = |args: &[&str]| common::shardc_command().args(args).output().unwrap().status.code();
    let missing = dir.path().join("missing");
    assert_eq!(code(&["plan", missing.to_str().unwrap(), "--devices", devices.to_str().unwrap()]), Some(1));
    assert_eq!(code(&["plan", "--no-such-flag"]), Some(2));
    let config = root().join("fixtures/configs/llama-3-8b/config.json");
    let plan = |flag: &str, value: &str| {
        code(&["plan", config.to_str().unwrap(), "--devices", devices.to_str().unwrap(), flag, value])
    };
    assert_eq!(plan("--margin", "1.5"), Some(2));
    assert_eq!(plan("--strategy", "greedy"), Some(2));
    assert_eq!(plan("--dtype", "i8"), Some(2));
    // Packages that do not reproduce the model within the tolerance: verify exits 4
    // (f16 weights against the f32 model, with no tolerance at all).
    let model = fixture_dir("gpt2").join("hf");
    let out = dir.path().join("out");
    let (graph, weights_dir) = common::lowered(&model, Some(64));
    let profile = devices::load(&devices).unwrap();
    compile(&graph, &weights_dir, &profile, &options(Some(shardc_ir::DType::F16)), &out).unwrap();
    let verify = |tolerance: &str| {
        let o = common::shardc_command()
            .arg("verify")
            .arg(&model)
            .arg(&out)
            .args(["--tokens", "2", "--tolerance", tolerance])
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (status, stderr) = verify("0");
    assert_eq!(status, Some(4), "{stderr}");
    assert!(stderr.contains("do not reproduce the model"), "{stderr}");
    assert_eq!(verify("0.05").0, Some(0));
    assert_eq!(code(&["verify", model.to_str().unwrap(), out.to_str().unwrap(), "--tolerance", "-1"]), Some(2));
}
