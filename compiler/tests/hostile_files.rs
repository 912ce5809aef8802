//! Hostile files and paths (issue 13): nothing written outside OUT, no input touched,
//! a package read only through its manifest's hashes, and every refusal names the
//! file, key or device and what is wrong — exit status 1, no panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::net::{compile, serve_command, shardc_run};
use common::{fixture_dir, root};

use common::shardc;

/// A refusal: exit 1, no panic, and every `needle` in the message.
fn refused(o: &Output, needles: &[&str]) -> String {
    refused_with(1, o, needles)
}

/// `shardc`'s own range checks of flags exit with 2, as clap's errors do.
fn refused_usage(o: &Output, needles: &[&str]) -> String {
    refused_with(2, o, needles)
}

fn refused_with(status: i32, o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(status), "expected exit {status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    err
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    common::files(dir)
}

fn compile_args<'a>(model: &'a Path, devices: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
    let mut a: Vec<&std::ffi::OsStr> =
        vec!["compile".as_ref(), model.as_os_str(), "--devices".as_ref(), devices.as_os_str()];
    a.extend(["--prompt-len", "8", "--max-context", "32", "-o"].iter().map(|s| std::ffi::OsStr::new(*s)));
    a.push(out.as_os_str());
    a.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    a
}

#[test]
fn device_names_are_plain_unique_folder_names() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("gpt2").join("hf");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let abs = format!("{}", outside.join("pkg").display());
    for (a, b, why) in [
        ("../x", "dev-b", "contains '/'"),
        (abs.as_str(), "dev-b", "contains '/'"),
        ("..", "dev-b", "starts with `.`"),
        ("client", "dev-b", "reserved"),
        ("plan.json", "dev-b", "reserved"),
        ("dev a", "dev-b", "contains ' '"),
        ("Dev-B", "dev-b", "only in case"),
        ("dev-b", "dev-b", "listed twice"),
    ] {
        let toml = format!(
            "[[device]]\nname = {a:?}\nmemory = \"1 GiB\"\nflops = \"1 GFLOP/s\"\nbandwidth = \"1 GB/s\"\n\n[[device]]\nname = {b:?}\nmemory = \"1 GiB\"\nflops = \"1 GFLOP/s\"\nbandwidth = \"1 GB/s\"\n\n[default_link]\nbandwidth = \"1 Gbit/s\"\nlatency = \"1 ms\"\n"
        );
        let devices = dir.path().join("devices.toml");
        std::fs::write(&devices, toml).unwrap();
        let out = dir.path().join("out");
        let o = shardc(compile_args(&model, &devices, &out, &[]));
        refused(&o, &["devices.toml:", why]);
        assert!(!out.exists(), "{a}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{a} wrote outside OUT");
        assert!(!dir.path().join("x").exists());
    }
}

#[test]
fn the_output_never_replaces_an_input_or_what_shardc_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&fixture_dir("gpt2").join("hf"), &model);
    let devices = dir.path().join("loopback-2.toml");
    std::fs::copy(root().join("fixtures/devices/loopback-2.toml"), &devices).unwrap();
    let before = (tree(&model), tree(dir.path()));
    // -o MODEL (even with --force), inside it, around it, the profile itself.
    for (out, what) in [
        (model.clone(), "is the input"),
        (model.join("out"), "lies inside the input"),
        (dir.path().to_path_buf(), "contains the input"),
        (devices.clone(), "is the input"),
        (model.join("model.safetensors"), "lies inside the input"),
    ] {
        let o = shardc(compile_args(&model, &devices, &out, &["--force"]));
        refused(&o, &["the output", what]);
        assert_eq!((tree(&model), tree(dir.path())), before, "-o {}", out.display());
    }
    // Through a symbolic link to the model.
    #[cfg(unix)]
    {
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        refused(&shardc(compile_args(&model, &devices, &link, &["--force"])), &["is the input"]);
        std::fs::remove_file(&link).unwrap();
    }
    // A folder that is not a shardc output is not replaced, even with --force.
    let notes = dir.path().join("notes");
    std::fs::create_dir_all(notes.join("sub")).unwrap();
    std::fs::write(notes.join("todo.txt"), "keep me").unwrap();
    refused(&shardc(compile_args(&model, &devices, &notes, &[])), &["exists; pass --force"]);
    refused(&shardc(compile_args(&model, &devices, &notes, &["--force"])), &["which a compile does not write"]);
    assert_eq!(std::fs::read_to_string(notes.join("todo.txt")).unwrap(), "keep me");
    // A previous output is replaced with --force; an empty folder too.
    let out = dir.path().join("out");
    assert!(shardc(compile_args(&model, &devices, &out, &[])).status.success());
    let o = shardc(compile_args(&model, &devices, &out, &["--force"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // ...unless something foreign was put into it.
    std::fs::write(out.join("dev-a").join("mine.txt"), "x").unwrap();
    refused(&shardc(compile_args(&model, &devices, &out, &["--force"])), &["dev-a/mine.txt"]);
    assert!(out.join("dev-a/mine.txt").exists());
    // A user's folder that happens to look like a temporary survives.
    let lookalike = dir.path().join(".out.partial-mine");
    std::fs::create_dir_all(&lookalike).unwrap();
    std::fs::remove_file(out.join("dev-a").join("mine.txt")).unwrap();
    assert!(shardc(compile_args(&model, &devices, &out, &["--force"])).status.success());
    assert!(lookalike.exists());
    assert_eq!(tree(&model), before.0, "the model changed");
}

#[test]
fn errors_name_the_output_folder_not_the_temporary_one() {
    #[cfg(target_os = "linux")]
    {
        let dir = tempfile::tempdir().unwrap();
        let devices = root().join("fixtures/devices/loopback-2.toml");
        let out = Path::new("/proc/shardc_out");
        let o = shardc(compile_args(&fixture_dir("gpt2").join("hf"), &devices, out, &[]));
        let err = refused(&o, &["/proc"]);
        assert!(!err.contains(".partial"), "{err}");
        drop(dir);
    }
}

/// Compile gpt2 over 3 devices into a temporary folder.
fn package() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("gpt2").join("hf"), &out, &[]);
    (dir, out)
}

fn local(out: &Path) -> Output {
    Command::new(shardc_run())
        .arg("local")
        .arg(out)
        .args(["--input-ids", "1,2,3", "--max-new-tokens", "2"])
        .output()
        .unwrap()
}

fn verify(out: &Path) -> Output {
    shardc([
        "verify".as_ref(),
        fixture_dir("gpt2").join("hf").as_os_str(),
        out.as_os_str(),
        "--tokens".as_ref(),
        "2".as_ref(),
    ])
}

/// Rewrite a manifest's hash of `file` to match its current bytes (what an attacker
/// who can write the package would do).
fn rehash(pkg: &Path, file: &str) {
    let path = pkg.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let hash = blake3::hash(&std::fs::read(pkg.join(file)).unwrap()).to_hex().to_string();
    m["files"][file] = hash.into();
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

#[test]
fn packages_are_read_only_through_their_manifest() {
    let (_dir, out) = package();
    assert!(local(&out).status.success());
    let pkg = out.join("dev-b");
    let ir_path = pkg.join("shard.ir");
    let ir = std::fs::read_to_string(&ir_path).unwrap();
    assert!(ir.contains("\"weights.safetensors\""), "the IR names its weight file");
    // A weight reference outside the package, with the manifest's hash made to match.
    for target in ["/usr/bin/env", "../../dev-a/weights.safetensors", "../dev-a/weights.safetensors", "manifest.json"] {
        std::fs::write(&ir_path, ir.replacen("\"weights.safetensors\"", &format!("{target:?}"), 1)).unwrap();
        rehash(&pkg, "shard.ir");
        for o in [local(&out), verify(&out)] {
            refused(&o, &["is not a file the package's manifest lists"]);
        }
    }
    std::fs::write(&ir_path, &ir).unwrap();
    rehash(&pkg, "shard.ir");
    assert!(local(&out).status.success());
    // A file the manifest does not list.
    std::fs::write(pkg.join("extra.bin"), "x").unwrap();
    for o in [local(&out), verify(&out)] {
        refused(&o, &["extra.bin", "is not listed"]);
    }
    std::fs::remove_file(pkg.join("extra.bin")).unwrap();
    // A listed file that is a link out of the package (its hash made to match).
    #[cfg(unix)]
    {
        let weights = pkg.join("weights.safetensors");
        let moved = out.join("elsewhere.safetensors");
        std::fs::rename(&weights, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &weights).unwrap();
        for o in [local(&out), verify(&out)] {
            refused(&o, &["weights.safetensors", "is not a regular file"]);
        }
        std::fs::remove_file(&weights).unwrap();
        std::fs::rename(&moved, &weights).unwrap();
    }
    // An altered weight file.
    let w = pkg.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    for o in [local(&out), verify(&out)] {
        refused(&o, &["weights.safetensors", "the package was altered"]);
    }
    bytes[last] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    assert!(verify(&out).status.success());
}

#[test]
fn verify_checks_what_the_runtime_reads() {
    let (_dir, out) = package();
    let map = out.join("transmission_map.json");
    let text = std::fs::read_to_string(&map).unwrap();
    // Deleted map; a map that claims no KV cache; a map that reorders stages.
    std::fs::remove_file(&map).unwrap();
    for o in [local(&out), verify(&out)] {
        refused(&o, &["transmission_map.json", "cannot read"]);
    }
    // Altered: the packages' hashes of it no longer match.
    std::fs::write(&map, text.replace("\"kv_cache\": true", "\"kv_cache\": false")).unwrap();
    for o in [local(&out), verify(&out)] {
        refused(&o, &["transmission_map.json", "does not match the packages'"]);
    }
    // Altered with every manifest's hash made to match: the map's content is checked.
    common::reshare(&out, "transmission_map.json");
    for o in [local(&out), verify(&out)] {
        refused(&o, &["transmission_map.json", "kv_cache false"]);
    }
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["stages"].as_array_mut().unwrap().swap(0, 1);
    std::fs::write(&map, m.to_string()).unwrap();
    common::reshare(&out, "transmission_map.json");
    for o in [local(&out), verify(&out)] {
        refused(&o, &["transmission_map.json", "at stage 0"]);
    }
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["surprise"] = 1.into();
    std::fs::write(&map, m.to_string()).unwrap();
    refused(&verify(&out), &["transmission_map.json", "unknown field `surprise`"]);
    std::fs::write(&map, &text).unwrap();
    common::reshare(&out, "transmission_map.json");
    assert!(local(&out).status.success());
    // A deleted package.
    std::fs::remove_dir_all(out.join("dev-c")).unwrap();
    for o in [local(&out), verify(&out)] {
        refused(&o, &["dev-c", "manifest.json"]);
    }
}

/// A checkpoint copy whose config.json has `key` set to `value`.
fn checkpoint_with(dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let model = dir.join(format!("model-{key}"));
    copy_dir(&fixture_dir("llama").join("hf"), &model);
    let path = model.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&path, c.to_string()).unwrap();
    model
}

#[test]
fn sizes_from_files_and_flags_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    // config.json dimensions: against a stated maximum and the tensors present.
    for (key, value, needle) in [
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64), "more than the 4096"),
        ("num_hidden_layers", serde_json::json!(4000), "only"),
        ("hidden_size", serde_json::json!(1_000_000_000_000u64), "more than the"),
        ("vocab_size", serde_json::json!(1_000_000_000_000_000u64), "more than the"),
    ] {
        let model = checkpoint_with(dir.path(), key, value.clone());
        for target in [model.clone(), model.join("config.json")] {
            if needle == "only" && target.ends_with("config.json") {
                continue;
            }
            let o = shardc(["inspect".as_ref(), target.as_os_str()]);
            refused(&o, &["config.json", key, needle]);
        }
    }
    let llama = fixture_dir("llama").join("hf");
    let run = |extra: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), llama.as_os_str()];
        a.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
        shardc(&a)
    };
    // Token counts against the context the model serves.
    refused(&run(&["--input-ids", "1,2", "--max-new-tokens", "1000000000000"]), &["context", "--max-new-tokens"]);
    // (In ten arguments: one argument may not exceed 128 KiB.)
    let chunk: Vec<String> = (0..10_000).map(|i| (i % 200).to_string()).collect();
    let chunk = chunk.join(",");
    let mut many = vec!["--input-ids"];
    many.extend(std::iter::repeat_n(chunk.as_str(), 10));
    refused(&run(&many), &["a prompt of 100000 tokens", "context"]);
    // Flags that would panic or never end.
    let devices = root().join("fixtures/devices/loopback-2.toml");
    for flag in ["--time-limit=inf", "--time-limit=nan", "--time-limit=-1"] {
        let o = shardc(["plan".as_ref(), llama.as_os_str(), "--devices".as_ref(), devices.as_os_str(), flag.as_ref()]);
        refused_usage(&o, &["--time-limit"]);
    }
    // A standby count far beyond the units: plans at once, each stage holding at most all.
    let o = shardc([
        "plan".as_ref(),
        root().join("fixtures/configs/llama-3.2-1b/config.json").as_os_str(),
        "--devices".as_ref(),
        root().join("fixtures/devices/edge-16.toml").as_os_str(),
        "--standby".as_ref(),
        "18446744073709551615".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = shardc(["verify".as_ref(), llama.as_os_str(), dir.path().as_os_str(), "--tolerance=nan".as_ref()]);
    refused_usage(&o, &["--tolerance"]);
    // 1000 devices, all different: the integer program is skipped, with a note.
    let mut toml = String::new();
    for i in 0..1000 {
        toml += &format!(
            "[[device]]\nname = \"d{i}\"\nmemory = \"{} GiB\"\nflops = \"{} GFLOP/s\"\nbandwidth = \"{} GB/s\"\n",
            1 + i % 37,
            1 + (i * 7) % 301,
            1 + (i * 13) % 97
        );
    }
    toml += "[default_link]\nbandwidth = \"1 Gbit/s\"\nlatency = \"1 ms\"\n";
    let many_devices = dir.path().join("mixed-1000.toml");
    std::fs::write(&many_devices, toml).unwrap();
    let o = shardc([
        "plan".as_ref(),
        root().join("fixtures/configs/llama-3.2-1b/config.json").as_os_str(),
        "--devices".as_ref(),
        many_devices.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let note = plan["solver"]["note"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("more than the 4096 the integer program takes on"), "{plan}");
    assert!(started.elapsed().as_secs() < 120, "bounded checks took {:?}", started.elapsed());
}

#[test]
fn the_runtime_bounds_its_flags() {
    let (_dir, out) = package();
    let run = |extra: &[&str]| {
        Command::new(shardc_run()).arg("local").arg(&out).args(["--input-ids", "1,2,3"]).args(extra).output().unwrap()
    };
    let started = std::time::Instant::now();
    refused(&run(&["--max-new-tokens", "1000000000000"]), &["context of 1000000000003", "--max-new-tokens"]);
    refused(&run(&["--requests", "100000000"]), &["--requests"]);
    for t in ["--timeout=-1", "--timeout=nan", "--timeout=inf", "--timeout=0"] {
        refused(&run(&[t]), &["--timeout"]);
    }
    refused(&run(&["--input-ids=-5"]), &["negative"]);
    refused(&run(&["--balance-window", "18446744073709551615"]), &["--balance-window is at most"]);
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
}

#[test]
fn every_message_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("gpt2").join("hf"), &out, &["--standby", "1"]);
    for file in ["transmission_map.json", "dev-a/manifest.json", "balance.json", "dev-b/standby.json"] {
        let path = out.join(file);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, "{x").unwrap();
        if file.ends_with("standby.json") {
            rehash(&out.join("dev-b"), "standby.json");
        } else if !file.contains('/') {
            common::reshare(&out, file);
        }
        let err = refused(&local(&out), &[file]);
        assert!(err.contains(" line 1 column 2"), "{err}");
        assert_eq!(err.matches(file).count(), 1, "the file is named once: {err}");
        std::fs::write(&path, good).unwrap();
        if file.ends_with("standby.json") {
            rehash(&out.join("dev-b"), "standby.json");
        } else if !file.contains('/') {
            common::reshare(&out, file);
        }
    }
    assert!(local(&out).status.success());
    // Missing inputs name themselves.
    let missing = dir.path().join("missing");
    let o = Command::new(shardc_run()).arg("local").arg(&missing).args(["--input-ids", "1"]).output().unwrap();
    refused(&o, &["missing/transmission_map.json", "cannot read"]);
    let o = shardc([
        "plan".as_ref(),
        fixture_dir("gpt2").join("hf").as_os_str(),
        "--devices".as_ref(),
        missing.as_os_str(),
    ]);
    refused(&o, &["missing: cannot read"]);
    // A cluster file whose "loopback" is a name that merely starts like one.
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(
        &cluster,
        "client = \"tcp://127.attacker.example:5600\"\n[devices]\ndev-a = \"tcp://127.0.0.1:5601\"\n",
    )
    .unwrap();
    let o = serve_command(&out, "dev-a", &cluster).arg("--insecure").output().unwrap();
    refused(&o, &["cluster.toml", "127.attacker.example", "not loopback"]);
}

/// Outputs of another format are refused with both format numbers, before any field
/// of the newer shape can fail to parse.
#[test]
fn other_formats_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("gpt2").join("hf"), &out, &[]);
    let set_format = |file: &str, from: &str, to: &str| {
        let path = out.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file}: {text}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    let map = shardc_format::map::FORMAT;
    set_format("transmission_map.json", &format!("\"format\": {map}"), "\"format\": 1");
    common::reshare(&out, "transmission_map.json");
    refused(&local(&out), &["transmission_map.json", &format!("transmission map format 1 (this runtime reads {map})")]);
    set_format("transmission_map.json", "\"format\": 1", &format!("\"format\": {map}"));
    common::reshare(&out, "transmission_map.json");
    let package = shardc_format::manifest::FORMAT;
    set_format("dev-a/manifest.json", &format!("\"format\": {package}"), "\"format\": 2");
    refused(&local(&out), &["dev-a/manifest.json", &format!("package format 2 (this runtime reads {package})")]);
}
