//! One process per device over ZeroMQ on loopback (`shardc-run serve` / `generate`),
//! and all devices in one process (`shardc-run local`): the reference tokens, one token
//! per decode step, and faults that end cleanly.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::fixture_dir;
use common::net::{cluster, compile, generate_command, ids, local_tokens, port_base, secret_of, serve, serve_command};

#[test]
fn three_processes_on_loopback_reproduce_every_checkpoint() {
    for (k, name) in ["gpt2", "llama", "qwen2", "bloom", "llama32"].iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        compile(&fixture_dir(name).join("hf"), &out, &[]);
        let (cluster_file, _) = cluster(dir.path(), port_base(k as u16));
        let _devices = serve(&out, &cluster_file, &[]);
        let (ids, expected) = ids(name);
        let gen = generate_command(&out, &cluster_file, &ids)
            .args(["--max-new-tokens", "8", "--requests", "2", "--json"])
            .output()
            .unwrap();
        assert!(gen.status.success(), "{name}: {}", String::from_utf8_lossy(&gen.stderr));
        let report: serde_json::Value = serde_json::from_slice(&gen.stdout).unwrap();
        for r in 0..2 {
            let tokens: Vec<i64> =
                report["tokens"][r].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(tokens, expected, "{name} request {r}");
        }
        // The prompt once, then one token per decode step.
        let sent: Vec<u64> = report["ids_sent"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(sent[0], 10);
        assert!(sent[1..].iter().all(|&n| n == 1), "{sent:?}");
        assert_eq!(report["stages"].as_array().unwrap().len(), 3);
        assert_eq!(report["stages"][0]["device"], "dev-a");
        // And all in one process.
        assert_eq!(local_tokens(&out, &ids, 8), expected, "{name} local");
    }
}

/// The current toolchain's checkpoints and both exporters' exports: over three
/// processes and in one, the reference tokens. The exports have no KV cache (the
/// client re-sends the prefix each step); Phi-3's longrope switches tables past its
/// original context, which the 10 + 8 tokens cross (the client then re-sends the
/// whole prefix once, as transformers recomputes).
#[test]
fn three_processes_reproduce_current_checkpoints_and_exports() {
    let mut salt = 60;
    for name in common::CURRENT {
        for model in ["hf", "dynamo.onnx", "torchscript.onnx"] {
            let what = format!("{name} {model}");
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            compile(&fixture_dir(name).join(model), &out, &[]);
            let (cluster_file, _) = cluster(dir.path(), port_base(salt));
            salt += 1;
            let _devices = serve(&out, &cluster_file, &[]);
            let (ids, expected) = ids(name);
            let gen =
                generate_command(&out, &cluster_file, &ids).args(["--max-new-tokens", "8", "--json"]).output().unwrap();
            assert!(gen.status.success(), "{what}: {}", String::from_utf8_lossy(&gen.stderr));
            let report: serde_json::Value = serde_json::from_slice(&gen.stdout).unwrap();
            let tokens: Vec<i64> =
                report["tokens"][0].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(tokens, expected, "{what}");
            // What the client sent each step: with a KV cache the new token (Phi-3
            // re-sends all 16 once, when the context passes its original 16), without
            // one every token so far.
            let sent: Vec<u64> = report["ids_sent"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            let want: Vec<u64> = match (model, *name) {
                ("hf", "phi3") => vec![10, 1, 1, 1, 1, 1, 1, 17],
                ("hf", _) => vec![10, 1, 1, 1, 1, 1, 1, 1],
                _ => (10..18).collect(),
            };
            assert_eq!(sent, want, "{what}");
            assert_eq!(local_tokens(&out, &ids, 8), expected, "{what} local");
        }
    }
}

/// Quantized packages — written by `--quantize` (int8, int4, int4 with the embedding
/// and head) from a checkpoint (products stored `[N, K]`, KV cache) and from an export
/// (`[K, N]`, no cache), and compiled from models quantized by onnxruntime (QDQ with
/// quantized activations, MatMulInteger, blocked int4) — over three processes and in
/// one (a thread per device): the tokens of the same packages chained in `shardc
/// verify`, and for the imported models the tokens of the whole model.
#[test]
fn three_processes_and_threads_run_quantized_packages() {
    let mut cases: Vec<(String, std::path::PathBuf, Vec<&str>)> = Vec::new();
    for model in ["llama/hf", "gpt2/model.onnx"] {
        for flags in [
            vec!["--quantize", "int8"],
            vec!["--quantize", "int4"],
            vec!["--quantize", "int4", "--quantize-embeddings"],
        ] {
            cases.push((format!("{model} {}", flags.join(" ")), fixture_dir(model), flags));
        }
    }
    for name in ["llama-qdq-s8-pc", "llama-dynamic-u8-pc", "llama31-int4-qdq"] {
        cases.push((name.to_string(), fixture_dir(&format!("quantized/{name}")).join("model.onnx"), vec![]));
    }
    for (k, (what, model, flags)) in cases.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        compile(model, &out, flags);
        let ids = "5,17,42,99,3,250,18,77";
        // The packages chained in this process, and (no --quantize) the whole model.
        let verify = common::shardc_command()
            .arg("verify")
            .arg(model)
            .arg(&out)
            .args(["--input-ids", ids, "--tolerance", "10", "--min-agreement", "0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&verify.stdout).to_string();
        assert!(verify.status.success(), "{what}: {text}{}", String::from_utf8_lossy(&verify.stderr));
        let listed = |label: &str| -> Vec<i64> {
            let at = text.find(&format!("{label} [")).unwrap_or_else(|| panic!("{what}: no {label} tokens in {text}"));
            let list = &text[at + label.len() + 2..];
            list[..list.find(']').unwrap()].split(", ").map(|t| t.parse().unwrap()).collect()
        };
        let expected = listed("packages");
        assert_eq!(expected.len(), 8, "{what}: {text}");
        if flags.is_empty() {
            assert_eq!(expected, listed("model"), "{what}: the packages' tokens are the model's");
        }
        let (cluster_file, _) = cluster(dir.path(), port_base(90 + k as u16));
        let _devices = serve(&out, &cluster_file, &[]);
        let gen =
            generate_command(&out, &cluster_file, ids).args(["--max-new-tokens", "8", "--json"]).output().unwrap();
        assert!(gen.status.success(), "{what}: {}", String::from_utf8_lossy(&gen.stderr));
        assert_eq!(common::net::tokens_of(&gen.stdout), expected, "{what}: three processes");
        assert_eq!(local_tokens(&out, ids, 8), expected, "{what}: one process");
    }
}

#[test]
fn a_killed_device_ends_generation_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("llama32").join("hf"), &out, &[]);
    let (cluster_file, _) = cluster(dir.path(), port_base(11));
    let mut devices = serve(&out, &cluster_file, &["--slowdown", "20"]);
    let (ids, _) = ids("llama32");
    let gen = generate_command(&out, &cluster_file, &ids)
        .args(["--max-new-tokens", "50", "--timeout", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    devices.0[1].kill().unwrap();
    let killed_at = Instant::now();
    let result = gen.wait_with_output().unwrap();
    assert!(killed_at.elapsed() < Duration::from_secs(5), "took {:?}", killed_at.elapsed());
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("device `dev-b` did not finish"), "{stderr}");
}

#[test]
fn bad_frames_are_dropped_and_the_device_keeps_serving() {
    use shardc_runtime::frame::{encode, Body, Frame};
    use shardc_runtime::wire::Wire;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("gpt2").join("hf"), &out, &[]);
    let (cluster_file, addrs) = cluster(dir.path(), port_base(23));
    let mut devices = serve(&out, &cluster_file, &["--max-frame", "100000"]);
    // Garbage, an oversized message, a frame in the clear, one sealed with another key,
    // and one from a sender that is no participant (sealed with the right key), to dev-a.
    let key = shardc_runtime::node::key_from_secret(&std::fs::read(secret_of(&cluster_file)).unwrap()).unwrap();
    let ctx = zmq::Context::new();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.connect(&addrs[1]).unwrap();
    let frame = |sender: &str| encode(&Frame::new(0, 0, sender, Body::End)).unwrap();
    let session = [5u8; 16];
    push.send_multipart([b"not a frame".to_vec(), vec![0; 32]], 0).unwrap();
    push.send_multipart([vec![1; 64]], 0).unwrap();
    push.send_multipart(Wire::new(None, 1 << 20).unwrap().seal(&session, frame("client")).unwrap(), 0).unwrap();
    push.send_multipart(Wire::new(Some(&[3; 32]), 1 << 20).unwrap().seal(&session, frame("client")).unwrap(), 0)
        .unwrap();
    push.send_multipart(Wire::new(Some(&key), 1 << 20).unwrap().seal(&session, frame("mallory")).unwrap(), 0).unwrap();
    push.send_multipart([vec![0; 200_000], vec![0; 32]], 0).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The devices still serve a real request.
    let (ids, expected) = ids("gpt2");
    let gen = generate_command(&out, &cluster_file, &ids).args(["--max-new-tokens", "8", "--json"]).output().unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let report: serde_json::Value = serde_json::from_slice(&gen.stdout).unwrap();
    let tokens: Vec<i64> = report["tokens"][0].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(tokens, expected);
    // dev-a logged each refusal (the oversized message ZeroMQ drops before it is read).
    let a = &mut devices.0[0];
    let _ = a.kill();
    let mut log = String::new();
    use std::io::Read;
    a.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    for needle in [
        "not a shardc message",
        "1 message parts",
        "is not encrypted",
        "fails authentication",
        "`mallory`: not a participant",
    ] {
        assert!(log.contains(needle), "`{needle}` not in {log}");
    }
}

#[test]
fn an_altered_package_will_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("llama").join("hf"), &out, &[]);
    let w = out.join("dev-c/weights.safetensors");
    let mut b = std::fs::read(&w).unwrap();
    let last = b.len() - 1;
    b[last] ^= 1;
    std::fs::write(&w, b).unwrap();
    let (cluster_file, _) = cluster(dir.path(), port_base(31));
    let st = serve_command(&out, "dev-c", &cluster_file).arg("--insecure").output().unwrap();
    assert_eq!(st.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&st.stderr).contains("the package was altered"));
    // Remote addresses need an explicit flag.
    std::fs::write(
        dir.path().join("remote.toml"),
        "client = \"tcp://10.0.0.5:5600\"\n[devices]\ndev-a = \"tcp://127.0.0.1:5601\"\n",
    )
    .unwrap();
    let st = serve_command(&out, "dev-a", &dir.path().join("remote.toml")).output().unwrap();
    assert_eq!(st.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&st.stderr).contains("not loopback"));
}
