//! What a build system needs from `shardc compile`: the same bytes for the same input
//! content wherever it lies, a dependency file naming exactly the files read, and a
//! machine-readable summary of what was written.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{files, fixture_dir, root, shardc_command};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The fixture device profile splitting every fixture over three devices.
fn profile() -> PathBuf {
    root().join("fixtures/devices/loopback-3.toml")
}

/// `shardc compile MODEL --devices DEVICES -o OUT EXTRA…` in `cwd`, with `env`.
fn compile(
    cwd: &Path,
    model: &str,
    devices: &str,
    out: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = shardc_command();
    cmd.current_dir(cwd)
        .args(["compile", model, "--devices", devices, "-o", out])
        .args(["--objective", "throughput", "--prompt-len", "16", "--max-context", "64"])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_same_content_compiled_from_two_folders_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let llama = fixture_dir("llama");
    // A checkpoint folder, and an ONNX file with external data whose own name differs.
    copy_dir(&llama.join("hf"), &a.join("ckpt"));
    copy_dir(&llama.join("hf"), &b.join("deep/other name"));
    std::fs::create_dir_all(a.join("onnx")).unwrap();
    std::fs::create_dir_all(b.join("x")).unwrap();
    std::fs::copy(llama.join("model.onnx"), a.join("onnx/model.onnx")).unwrap();
    std::fs::copy(llama.join("model.onnx"), b.join("x/renamed.onnx")).unwrap();
    for dir in [a.join("onnx"), b.join("x")] {
        std::fs::copy(llama.join("model.onnx.data"), dir.join("model.onnx.data")).unwrap();
    }
    std::fs::copy(profile(), a.join("d.toml")).unwrap();
    std::fs::copy(profile(), b.join("devices profile.toml")).unwrap();
    let b_profile = b.join("devices profile.toml").display().to_string();
    for (model_a, model_b) in [("ckpt", b.join("deep/other name")), ("onnx/model.onnx", b.join("x/renamed.onnx"))] {
        // Relative paths from one working folder; absolute ones, another locale, time
        // zone and thread count from another.
        ok(&compile(&a, model_a, "d.toml", "out", &["--force"], &[("LC_ALL", "C"), ("TZ", "UTC")]));
        let env = [("LC_ALL", "de_DE.UTF-8"), ("TZ", "Asia/Tokyo"), ("RAYON_NUM_THREADS", "1")];
        let out_b = tmp.path().join("elsewhere/o");
        let args = ["--force", "--quiet"];
        ok(&compile(tmp.path(), &model_b.display().to_string(), &b_profile, &out_b.display().to_string(), &args, &env));
        let (fa, fb) = (files(&a.join("out")), files(&out_b));
        assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
        assert!(fa.len() > 10, "three packages and the shared files: {}", fa.len());
        for ((name, x), (_, y)) in fa.iter().zip(&fb) {
            assert!(x == y, "{model_a}: {name} differs between the two folders");
        }
        // The plan records its inputs by content, never by path.
        let plan = String::from_utf8_lossy(&fa.iter().find(|f| f.0 == "plan.json").unwrap().1).into_owned();
        for fragment in ["ckpt", "d.toml", "model.onnx\"", "renamed", "other name", "/tmp"] {
            assert!(!plan.contains(fragment), "{model_a}: plan.json names `{fragment}`:\n{plan}");
        }
        let json: serde_json::Value = serde_json::from_str(&plan).unwrap();
        let roles: Vec<&str> = json["inputs"].as_array().unwrap().iter().map(|i| i["role"].as_str().unwrap()).collect();
        let expected: &[&str] =
            if model_a == "ckpt" { &["config", "weights", "devices"] } else { &["onnx", "external data", "devices"] };
        assert_eq!(roles, expected);
    }
}

/// The dependencies a depfile lists (its one target checked).
fn depfile_deps(file: &Path, target: &str) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let joined = text.replace("\\\n", " ");
    let (t, deps) = joined.split_once(": ").unwrap_or_else(|| panic!("no target in {text:?}"));
    assert_eq!(t, target);
    deps.split_whitespace().map(str::to_string).collect()
}

/// A sharded copy of the llama fixture in `dir`: two safetensors shards, their index,
/// and files a checkpoint folder often holds that shardc does not read.
fn sharded_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = fixture_dir("llama").join("hf");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (k, half) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", k + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            half.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join(&shard)).unwrap();
        for n in half {
            weight_map.insert(n.clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    for unread in ["tokenizer.json", "generation_config.json", "README.md"] {
        std::fs::write(dir.join(unread), "{}").unwrap();
    }
}

/// Files a process opened for reading under its working folder, from an strace log.
fn opened_for_reading(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains("openat(") && l.contains("O_RDONLY") && !l.contains("O_DIRECTORY"))
        .filter(|l| !l.rsplit('=').next().unwrap_or("").trim().starts_with('-'))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .filter(|p| !p.starts_with('/') && p != ".")
        .collect()
}

#[test]
fn the_depfile_lists_exactly_the_files_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sharded_llama(&dir.join("ckpt"));
    std::fs::copy(profile(), dir.join("devices.toml")).unwrap();
    std::fs::create_dir_all(dir.join("onnx")).unwrap();
    for f in ["model.onnx", "model.onnx.data"] {
        std::fs::copy(fixture_dir("llama").join(f), dir.join("onnx").join(f)).unwrap();
    }
    let cases: [(&str, &[&str]); 2] = [
        (
            "ckpt",
            &[
                "ckpt/config.json",
                "ckpt/model.safetensors.index.json",
                "ckpt/model-00001-of-00002.safetensors",
                "ckpt/model-00002-of-00002.safetensors",
                "devices.toml",
            ],
        ),
        ("onnx/model.onnx", &["onnx/model.onnx", "onnx/model.onnx.data", "devices.toml"]),
    ];
    let strace = std::process::Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success());
    for (model, expected) in cases {
        let out = compile(dir, model, "devices.toml", "out dir", &["--force", "--depfile", "deps.d"], &[]);
        ok(&out);
        let deps = depfile_deps(&dir.join("deps.d"), "out\\ dir/plan.json");
        assert_eq!(deps, expected, "{model}");
        let built = files(&dir.join("out dir"));

        // Files the folder holds that are not listed do not change the output…
        for unread in ["tokenizer.json", "generation_config.json", "README.md"] {
            let path = dir.join("ckpt").join(unread);
            std::fs::write(&path, "not what it was").unwrap();
        }
        ok(&compile(dir, model, "devices.toml", "again", &["--force"], &[]));
        assert!(files(&dir.join("again")) == built, "{model}: a file the depfile does not list changed the output");
        // …and every listed file is needed: without it the compile fails, naming it.
        for dep in expected {
            let path = dir.join(dep);
            let moved = dir.join("moved-away");
            std::fs::rename(&path, &moved).unwrap();
            let out = compile(dir, model, "devices.toml", "gone", &["--force"], &[]);
            std::fs::rename(&moved, &path).unwrap();
            assert_eq!(out.status.code(), Some(1), "{model} without {dep}");
            let name = Path::new(dep).file_name().unwrap().to_string_lossy().into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(&name), "{model} without {dep}: {stderr}");
        }

        // What the process opened, seen from outside (where strace can trace).
        if strace {
            let log = dir.join("strace.log");
            let mut cmd = std::process::Command::new("strace");
            cmd.current_dir(dir)
                .args(["-f", "-qq", "-e", "trace=openat", "-o"])
                .arg(&log)
                .arg(env!("CARGO_BIN_EXE_shardc"))
                .args(["compile", model, "--devices", "devices.toml", "-o", "traced", "--force", "-q"])
                .args(["--objective", "throughput", "--prompt-len", "16", "--max-context", "64"]);
            ok(&cmd.output().unwrap());
            let read = opened_for_reading(&std::fs::read_to_string(&log).unwrap());
            let listed: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
            assert_eq!(read, listed, "{model}: files opened for reading against the depfile");
        } else {
            eprintln!("strace cannot run here: the depfile was checked by removing and changing files only");
        }
    }
}

#[test]
fn depfiles_never_land_on_inputs_or_inside_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&fixture_dir("llama").join("hf"), &dir.join("ckpt"));
    std::fs::copy(profile(), dir.join("devices.toml")).unwrap();
    let config = std::fs::read(dir.join("ckpt/config.json")).unwrap();
    for (depfile, says) in
        [("ckpt/config.json", "the input"), ("devices.toml", "is the input"), ("out/deps.d", "inside the output")]
    {
        let out = compile(dir, "ckpt", "devices.toml", "out", &["--force", "--depfile", depfile], &[]);
        assert_eq!(out.status.code(), Some(2), "--depfile {depfile}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "--depfile {depfile}: {stderr}");
    }
    assert_eq!(std::fs::read(dir.join("ckpt/config.json")).unwrap(), config);
    assert!(!dir.join("out").exists(), "nothing written when the depfile is refused");
    // `plan --out` writes one too.
    let out = shardc_command()
        .current_dir(dir)
        .args([
            "plan",
            "ckpt",
            "--devices",
            "devices.toml",
            "--prompt-len",
            "16",
            "--max-context",
            "64",
            "--out",
            "planned",
            "--depfile",
            "p.d",
        ])
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(
        depfile_deps(&dir.join("p.d"), "planned/plan.json"),
        ["ckpt/config.json", "ckpt/model.safetensors", "devices.toml"]
    );
}

#[test]
fn compile_json_names_every_written_file_with_its_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = fixture_dir("llama").join("hf").display().to_string();
    let profile = profile().display().to_string();
    let out = compile(dir, &model, &profile, "out", &["--json", "--standby", "1"], &[]);
    ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrote") && stderr.contains("stage"), "the text goes to stderr: {stderr}");
    let mut listed: Vec<(String, u64, String)> = Vec::new();
    let mut add = |v: &serde_json::Value| {
        for f in v.as_array().unwrap() {
            listed.push((
                f["path"].as_str().unwrap().into(),
                f["bytes"].as_u64().unwrap(),
                f["blake3"].as_str().unwrap().into(),
            ));
        }
    };
    add(&summary["files"]);
    let stages = summary["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    for s in stages {
        assert!(s["prefill_ms"].as_f64().unwrap() > 0.0 && s["decode_ms"].as_f64().unwrap() > 0.0);
        add(&s["files"]);
    }
    assert!(summary["predictions"]["decode_ms_per_token"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["solver"]["optimal"], true);
    listed.sort();
    let written: Vec<(String, u64, String)> = files(&dir.join("out"))
        .into_iter()
        .map(|(p, b)| (p, b.len() as u64, blake3::hash(&b).to_hex().to_string()))
        .collect();
    assert_eq!(listed, written, "every file written, with its size and blake3, and nothing else");
    assert!(written.iter().any(|f| f.0.ends_with("standby.ir")));

    // --quiet: nothing on stderr, the same summary on stdout.
    let quiet = compile(dir, &model, &profile, "out", &["--json", "--quiet", "--force", "--standby", "1"], &[]);
    ok(&quiet);
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
    let again: serde_json::Value = serde_json::from_slice(&quiet.stdout).unwrap();
    assert_eq!(again["stages"], summary["stages"]);

    // A model that does not fit: status 3, the figures on stderr, no JSON on stdout.
    let big = root().join("fixtures/configs/llama-3-70b/config.json").display().to_string();
    let ll3 = root().join("fixtures/devices/lingualinked-3.toml").display().to_string();
    let out = compile(dir, &big, &ll3, "big", &["--json"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot hold the model") && stderr.contains("GiB"), "{stderr}");
}
