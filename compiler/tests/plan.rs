//! Planning: device profiles, segmentation, strategies, transmission maps, the
//! `plan` and `compare` commands.

mod common;

use std::path::Path;

use common::{fixture_dir, root};
use shardc_passes::devices;
use shardc_passes::partition::{self, Names, Request};
use shardc_passes::plan::{Objective, Strategy};
use shardc_passes::segment::segment;
use shardc_passes::transmission::Kind;

use common::shardc_text as shardc;

fn graph(path: &Path) -> shardc_ir::Graph {
    common::lowered(path, Some(64)).0
}

fn request(objective: Objective) -> Request {
    common::fixture_request(objective, 0)
}

#[test]
fn committed_profiles_load() {
    for (name, count) in [("lingualinked-3", 3), ("home-4", 4), ("edge-16", 16), ("lab-8", 8)] {
        let p = devices::load(&root().join(format!("fixtures/devices/{name}.toml"))).unwrap();
        assert_eq!(p.devices.len(), count, "{name}");
    }
    let p = devices::load(&root().join("fixtures/devices/lingualinked-3.toml")).unwrap();
    assert_eq!(p.devices[0].memory, 3.5 * (1u64 << 30) as f64);
    assert_eq!(p.devices[2].flops_for("f32"), Some(15e9));
    assert_eq!(p.link(0, 2).bandwidth, 12.5e6);
    assert_eq!(p.link(0, 2).latency, 0.005);
    let home = devices::load(&root().join("fixtures/devices/home-4.toml")).unwrap();
    assert_eq!(home.link(0, 1).bandwidth, 125e6);
    assert_eq!(home.devices[1].flops_for("f16"), Some(1.2e12));
}

#[test]
fn bad_profiles_name_the_file_and_line() {
    let device = |name: &str, memory: &str| {
        format!(
            "[[device]]\nname = \"{name}\"\nmemory = \"{memory}\"\nflops = \"10 GFLOP/s\"\nbandwidth = \"10 GB/s\"\n"
        )
    };
    let link = "[default_link]\nbandwidth = \"100 Mbit/s\"\nlatency = \"5 ms\"\n";
    let cases = [
        (format!("{}{link}", device("a", "3 gallons")), 3, "device `a`: memory: `3 gallons` is not a quantity"),
        (format!("{}{link}", device("a", "0 GiB")), 3, "device `a`: memory must be positive"),
        (format!("{}{link}", device("a", "-2 GiB")), 3, "device `a`: memory must be positive"),
        (format!("{}{}{link}", device("a", "1 GiB"), device("a", "2 GiB")), 7, "device `a` is listed twice"),
        (
            format!(
                "{}{}{link}[[link]]\nbetween = [\"a\", \"zz\"]\nbandwidth = \"1 Gbit/s\"\nlatency = \"1 ms\"\n",
                device("a", "1 GiB"),
                device("b", "1 GiB")
            ),
            15,
            "link names unknown device `zz`",
        ),
        (link.to_string(), 0, "no devices"),
        (
            format!("{}[default_link]\nbandwidth = \"0 Mbit/s\"\nlatency = \"5 ms\"\n", device("a", "1 GiB")),
            7,
            "default_link: bandwidth must be positive",
        ),
        (format!("{}{link}colour = \"red\"\n", device("a", "1 GiB")), 9, "unknown field `colour`"),
    ];
    for (text, line, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        std::fs::write(&path, &text).unwrap();
        let err = devices::load(&path).unwrap_err();
        assert!(err.message.contains(message), "{text}\n→ {err}");
        if line > 0 {
            assert_eq!(err.line, Some(line), "{text}\n→ {err}");
            assert!(err.to_string().starts_with(&format!("{}:{line}: ", path.display())), "{err}");
        } else {
            assert!(err.to_string().starts_with(&format!("{}: ", path.display())), "{err}");
        }
        let model = fixture_dir("gpt2").join("hf");
        let (code, _, stderr) = shardc(&["plan", model.to_str().unwrap(), "--devices", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(message) && !stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn checkpoints_segment_into_embed_attention_mlp_and_head() {
    let g = graph(&fixture_dir("llama").join("hf"));
    let seg = segment(&g).unwrap();
    let names: Vec<&str> = seg.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["embed", "layer 0 attention", "layer 0 mlp", "layer 1 attention", "layer 1 mlp", "head"]);
    // Masks and rotary tables reach every attention unit from the embedding: long-range.
    let long: Vec<&str> = seg
        .crossings
        .iter()
        .filter(|c| c.consumers.iter().any(|&u| u.index() > c.producer.index() + 1))
        .map(|c| g.value(c.value).name.as_str())
        .collect();
    assert!(long.iter().any(|n| n.contains("positions/Where")), "{long:?}");
    assert!(long.iter().any(|n| n.contains("rotary_emb") && n.contains("/Cos")), "{long:?}");
    // ONNX exports segment too.
    let onnx = graph(&common::fixture_onnx("gpt2"));
    assert_eq!(segment(&onnx).unwrap().units.len(), 6);
}

#[test]
fn long_range_tensors_go_straight_to_their_consumers() {
    let g = graph(&fixture_dir("llama32").join("hf"));
    let profile = devices::load(&root().join("fixtures/devices/lingualinked-3.toml")).unwrap();
    let names = Names { model: "llama32", devices: "ll3", inputs: &[] };
    let planned = partition::plan(&g, &profile, &request(Objective::Latency), Strategy::Uniform, names).unwrap();
    let (report, map) = (planned.report, planned.map);
    assert_eq!(report.stages.len(), 3);
    assert_eq!(map.stages, ["high-end", "mid-range", "low-end"]);
    let mask = map.transfers.iter().find(|t| t.tensor.contains("positions/Where")).unwrap();
    assert_eq!(mask.kind, Kind::LongRange);
    assert_eq!(mask.from, "high-end");
    assert_eq!(mask.to, ["mid-range", "low-end"], "sent straight to the third stage, not relayed");
    assert!(mask.recomputable);
    let sequential: Vec<_> = map.transfers.iter().filter(|t| t.kind == Kind::Sequential).collect();
    assert_eq!(sequential.len(), 2, "one hidden state per boundary");
    for t in &sequential {
        let shape: Vec<String> = t.shape.as_ref().unwrap().iter().map(|d| d.to_string()).collect();
        assert_eq!(shape, ["batch", "seq", "32"]);
        assert_eq!(t.bytes_per_token, 128.0);
    }
    assert!(map.device_local["low-end"].contains(&"past_key_values.31.key".to_string()));
    let logits = map.transfers.iter().find(|t| t.tensor == "logits").unwrap();
    assert_eq!((logits.from.name(), logits.kind), ("low-end", Kind::Output));
}

#[test]
fn plan_output_for_the_fixtures_on_lingualinked_3() {
    let settings = common::snapshot_settings();
    let devices = root().join("fixtures/devices/lingualinked-3.toml");
    settings.bind(|| {
        for name in ["gpt2", "llama", "qwen2", "bloom", "llama32"] {
            let model = fixture_dir(name).join("hf");
            let mut text = String::new();
            for objective in ["latency", "throughput"] {
                let (code, out, err) = shardc(&[
                    "plan",
                    model.to_str().unwrap(),
                    "--devices",
                    devices.to_str().unwrap(),
                    "--objective",
                    objective,
                    "--prompt-len",
                    "16",
                    "--max-context",
                    "64",
                ]);
                assert_eq!(code, 0, "{err}");
                text.push_str(&out);
                text.push('\n');
            }
            let (code, out, err) = shardc(&[
                "compare",
                model.to_str().unwrap(),
                "--devices",
                devices.to_str().unwrap(),
                "--prompt-len",
                "16",
                "--max-context",
                "64",
            ]);
            assert_eq!(code, 0, "{err}");
            text.push_str(&out);
            insta::assert_snapshot!(
                format!("{name}__plan_lingualinked_3"),
                text.replace(&*root().to_string_lossy(), "<root>")
            );
        }
    });
}

#[test]
fn plan_json_and_transmission_map_are_written_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bloom").join("hf");
    let devices = root().join("fixtures/devices/lingualinked-3.toml");
    let run = |out: &Path| {
        let (code, _, err) = shardc(&[
            "plan",
            model.to_str().unwrap(),
            "--devices",
            devices.to_str().unwrap(),
            "--objective",
            "throughput",
            "--prompt-len",
            "16",
            "--max-context",
            "64",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        (std::fs::read(out.join("plan.json")).unwrap(), std::fs::read(out.join("transmission_map.json")).unwrap())
    };
    let a = run(&dir.path().join("a"));
    let b = run(&dir.path().join("b"));
    assert_eq!(a, b);
    let plan: serde_json::Value = serde_json::from_slice(&a.0).unwrap();
    assert_eq!(plan["strategy"], "ilp");
    assert_eq!(plan["objective"], "throughput");
    assert_eq!(plan["solver"]["engine"], "class-dp");
    assert_eq!(plan["solver"]["optimal"], true);
    assert_eq!(plan["workload"]["max_context"], 64);
    assert!(plan["predictions"]["pipelined_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn models_that_do_not_fit_say_how_much_is_needed_and_offered() {
    let config = root().join("fixtures/configs/llama-3-70b/config.json");
    let devices = root().join("fixtures/devices/lingualinked-3.toml");
    let (code, _, stderr) = shardc(&["plan", config.to_str().unwrap(), "--devices", devices.to_str().unwrap()]);
    assert_eq!(code, 3, "exit status 3: does not fit");
    assert!(stderr.contains("the devices cannot hold the model: it needs 131."), "{stderr}");
    assert!(stderr.contains("and the 3 devices offer 6.75 GiB after a 10% margin"), "{stderr}");
    let (code, _, stderr) = shardc(&["compare", config.to_str().unwrap(), "--devices", devices.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(stderr.contains("cannot hold the model"), "{stderr}");
    let (code, _, stderr) =
        shardc(&["plan", config.to_str().unwrap(), "--devices", devices.to_str().unwrap(), "--strategy", "magic"]);
    assert_eq!(code, 2, "a usage error");
    assert!(stderr.contains("unknown strategy `magic` (uniform, proportional, dp, ilp)"), "{stderr}");
}

#[test]
fn profile_measures_this_host_as_a_device_entry() {
    let run = Path::new(env!("CARGO_BIN_EXE_shardc")).with_file_name("shardc-run");
    let (code, out, err) = shardc(&["profile", "--name", "bench-host", "--quick"]);
    assert_eq!(code, 0, "{err}");
    let ran = std::process::Command::new(&run).args(["profile", "--name", "phone", "--quick"]).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let both = format!(
        "{out}{}[default_link]\nbandwidth = \"1 Gbit/s\"\nlatency = \"1 ms\"\n",
        String::from_utf8_lossy(&ran.stdout)
    );
    let p = devices::parse(&both, Path::new("<profile output>")).unwrap();
    assert_eq!(p.devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["bench-host", "phone"]);
    for d in &p.devices {
        assert!(d.memory > 0.0 && d.bandwidth > 1e8 && d.flops_for("f32").is_some_and(|f| f > 1e8), "{both}");
        let k = d.kernels.as_ref().expect("a kernel table");
        assert!(k.stream > 1e8 && k.node >= 0.0 && k.attention.0.len() == 2, "{both}");
        for ty in shardc_passes::kernels::WEIGHT_TYPES {
            let c = &k.matmul[ty];
            assert_eq!(c.0.iter().map(|p| p.0).collect::<Vec<_>>(), [1.0, 16.0], "{ty}: {both}");
            assert!(c.0.iter().all(|p| p.1 > 1e7 && p.1 < 1e14), "{ty}: {both}");
        }
    }
    // With --model, the model's own products too, each at the type it reads.
    let model = fixture_dir("llama").join("hf");
    let (code, out_model, err) =
        shardc(&["profile", "--name", "m", "--quick", "--model", model.to_str().unwrap(), "--weight-type", "int8"]);
    assert_eq!(code, 0, "{err}");
    let m = devices::parse(&out_model, Path::new("<profile output>")).unwrap();
    let k = m.devices[0].kernels.as_ref().unwrap();
    let g = graph(&model);
    let wanted: Vec<_> =
        shardc_passes::kernels::product_shapes(&g).into_iter().map(|(_, s)| ("int8".to_string(), s)).collect();
    assert!(!wanted.is_empty());
    assert_eq!(k.products.keys().cloned().collect::<Vec<_>>(), wanted, "{out_model}");
    let (code, _, err) = shardc(&["profile", "--quick", "--model", model.to_str().unwrap(), "--weight-type", "f8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--weight-type `f8`"), "{err}");
    // shardc-run profiles the products of the stage a package holds.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let devices3 = root().join("fixtures/devices/lingualinked-3.toml");
    let (code, _, err) = shardc(&[
        "compile",
        model.to_str().unwrap(),
        "--devices",
        devices3.to_str().unwrap(),
        "--objective",
        "throughput",
        "--prompt-len",
        "16",
        "--max-context",
        "64",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let first =
        std::fs::read_dir(&out).unwrap().flatten().map(|e| e.path()).find(|p| p.join("manifest.json").is_file());
    let package = first.expect("a package");
    let ran = std::process::Command::new(&run)
        .args(["profile", "--quick", "--package", package.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let text = String::from_utf8_lossy(&ran.stdout);
    let p = devices::parse(&text, Path::new("<profile output>")).unwrap();
    let products = &p.devices[0].kernels.as_ref().unwrap().products;
    assert!(!products.is_empty() && products.keys().all(|(t, _)| t == "f32"), "{text}");
    // What it measured plans: the fixture on the two measured devices.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("two.toml"), &both).unwrap();
    let model = fixture_dir("llama").join("hf");
    let devices = dir.path().join("two.toml");
    let (code, out, err) = shardc(&[
        "plan",
        model.to_str().unwrap(),
        "--devices",
        devices.to_str().unwrap(),
        "--max-context",
        "64",
        "--prompt-len",
        "16",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bench-host") || out.contains("phone"), "{out}");
}

/// A profile with a kernel table: `rates` for f32 products by rows, everything else
/// (attention, other nodes) a million times faster, no fixed cost per node; the FLOP/s
/// and bandwidth, which a kernel table replaces, slow.
fn kernel_profile(rates: &str, also: &str) -> devices::Profile {
    let text = format!(
        "[[device]]\nname = \"k\"\nmemory = \"8 GiB\"\nflops = \"1 MFLOP/s\"\nbandwidth = \"1 MB/s\"\n\
         [device.kernels]\nnode = \"0 s\"\nstream = \"1 PB/s\"\nattention = {{ 1 = \"1 PFLOP/s\" }}\n\
         [device.kernels.matmul]\nf32 = {rates}\n{also}"
    );
    devices::parse(&text, Path::new("kernels.toml")).unwrap()
}

/// With a kernel table, a unit's time is its products' FLOPs at the table's rate for
/// their rows: prefill at the prompt's 16 rows, a decode step at 1 — checked against
/// the FLOPs of the checkpoint's weight matrices, counted here from the graph.
#[test]
fn kernel_tables_price_products_by_their_rows() {
    let g = graph(&fixture_dir("llama").join("hf"));
    let req = request(Objective::Latency);
    let params: f64 = g
        .values
        .iter()
        .filter_map(|v| match &v.def {
            shardc_ir::ValueDef::Weight(w) if w.shape.len() == 2 && !v.name.contains("embed_tokens") => {
                Some(w.elements() as f64)
            }
            _ => None,
        })
        .sum();
    let prep = partition::prepare(&g, &kernel_profile("{ 1 = \"1 GFLOP/s\", 16 = \"4 GFLOP/s\" }", ""), &req).unwrap();
    let total = |t: &[Vec<f64>]| t[0].iter().sum::<f64>();
    let (prefill, decode) = (total(&prep.model.problem.prefill), total(&prep.model.problem.decode));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * b;
    assert!(close(prefill, 2.0 * 16.0 * params / 4e9), "{prefill} s for {params} weights");
    assert!(close(decode, 2.0 * params / 1e9), "{decode} s for {params} weights");
    // Halfway in log(rows), halfway in rate.
    let req4 = Request { workload: shardc_passes::cost::Workload { prompt_len: 4, ..req.workload }, ..req.clone() };
    let prep = partition::prepare(&g, &kernel_profile("{ 1 = \"1 GFLOP/s\", 16 = \"4 GFLOP/s\" }", ""), &req4).unwrap();
    assert!(close(total(&prep.model.problem.prefill), 2.0 * 4.0 * params / 2.5e9));
    // A product of a shape the table measured takes that shape's rate: q_proj's
    // weights (64 × 64, one per layer) at a quarter of the generic rate.
    let shapes = shardc_passes::kernels::product_shapes(&g);
    let q = g.values.iter().find(|v| v.name.ends_with("layers.0.self_attn.q_proj.weight")).expect("q_proj");
    let shardc_ir::ValueDef::Weight(qw) = &q.def else { panic!("q_proj is a weight") };
    let (n, k) = (qw.shape[0] as u64, qw.shape[1] as u64);
    let q_shape = shardc_passes::kernels::ProductShape { matmul: false, transposed: true, k, n };
    assert!(shapes.contains(&("f32".to_string(), q_shape)), "{shapes:?}");
    let exact = format!(
        "[[device.kernels.product]]\nop = \"gemm\"\ntransposed = true\nk = {k}\nn = {n}\nweight = \"f32\"\n\
         rates = {{ 1 = \"0.25 GFLOP/s\" }}\n"
    );
    let p = kernel_profile("{ 1 = \"1 GFLOP/s\" }", &exact);
    let text = devices::device_toml(&p.devices[0]);
    let again = devices::parse(&text, Path::new("again.toml")).unwrap();
    assert_eq!(again.devices[0].kernels, p.devices[0].kernels, "{text}");
    let prep = partition::prepare(&g, &p, &req).unwrap();
    let same_shape =
        g.values.iter().filter(|v| matches!(&v.def, shardc_ir::ValueDef::Weight(w) if w.shape == qw.shape)).count();
    let slower = 2.0 * (same_shape as u64 * k * n) as f64 * (1.0 / 0.25e9 - 1.0 / 1e9);
    assert!(
        close(total(&prep.model.problem.decode), 2.0 * params / 1e9 + slower),
        "{}",
        total(&prep.model.problem.decode)
    );
    // A weight type the table does not state is refused by name, never priced as f32's.
    let f16 = kernel_profile("{ 1 = \"1 GFLOP/s\" }", "").devices[0].kernels.clone();
    let mut p = kernel_profile("{ 1 = \"1 GFLOP/s\" }", "");
    let mut k = f16.unwrap();
    k.matmul = std::collections::BTreeMap::from([("int8".to_string(), k.matmul["f32"].clone())]);
    p.devices[0].kernels = Some(k);
    let err = partition::prepare(&g, &p, &req).err().expect("refused").to_string();
    assert!(err.contains("device `k`") && err.contains("kernels.matmul.f32") && err.contains("int8 only"), "{err}");
}

#[test]
fn bad_kernel_tables_name_the_key_and_line() {
    let head = "[[device]]\nname = \"k\"\nmemory = \"8 GiB\"\nflops = \"1 GFLOP/s\"\nbandwidth = \"1 GB/s\"\n";
    let cases = [
        ("node = \"1 us\"\nattention = { 1 = \"1 GFLOP/s\" }\n[device.kernels.matmul]\n", "missing field `stream`"),
        ("node = \"1 us\"\nstream = \"1 GB/s\"\nattention = { 0 = \"1 GFLOP/s\" }\nmatmul = {}\n", "`0` is not a row count"),
        ("node = \"1 us\"\nstream = \"1 GB/s\"\nattention = {}\nmatmul = {}\n", "kernels.attention: give rates"),
        (
            "node = \"1 us\"\nstream = \"1 GB/s\"\nattention = { 1 = \"1 GFLOP/s\" }\nmatmul = { f64 = { 1 = \"1 GFLOP/s\" } }\n",
            "kernels.matmul.f64: not a weight type",
        ),
        (
            "node = \"1 us\"\nstream = \"0 GB/s\"\nattention = { 1 = \"1 GFLOP/s\" }\nmatmul = {}\n",
            "kernels.stream must be positive",
        ),
        ("node = \"1 us\"\nstream = \"1 GB/s\"\nattention = { 1 = \"fast\" }\nmatmul = {}\nspeed = 1\n", "unknown field `speed`"),
        (
            "node = \"1 us\"\nstream = \"1 GB/s\"\nattention = { 1 = \"1 GFLOP/s\" }\nmatmul = {}\n[[device.kernels.product]]\n\
             op = \"conv\"\ntransposed = false\nk = 8\nn = 8\nweight = \"f32\"\nrates = { 1 = \"1 GFLOP/s\" }\n",
            "op `conv` is neither `gemm` nor `matmul`",
        ),
        (
            "node = \"1 us\"\nstream = \"1 GB/s\"\nattention = { 1 = \"1 GFLOP/s\" }\nmatmul = {}\n[[device.kernels.product]]\n\
             op = \"gemm\"\ntransposed = false\nk = 0\nn = 8\nweight = \"f32\"\nrates = { 1 = \"1 GFLOP/s\" }\n",
            "k and n are 1 to",
        ),
        (
            "node = \"1 us\"\nstream = \"1 GB/s\"\nattention = { 1 = \"1 GFLOP/s\" }\nmatmul = {}\n[[device.kernels.product]]\n\
             op = \"gemm\"\ntransposed = false\nk = 8\nn = 8\nweight = \"f32\"\nrates = { 1 = \"1 GFLOP/s\" }\n\
             [[device.kernels.product]]\nop = \"gemm\"\ntransposed = false\nk = 8\nn = 8\nweight = \"f32\"\n\
             rates = { 2 = \"1 GFLOP/s\" }\n",
            "is listed twice",
        ),
    ];
    for (table, message) in cases {
        let text = format!("{head}[device.kernels]\n{table}");
        let err = devices::parse(&text, Path::new("p.toml")).unwrap_err();
        assert!(err.message.contains(message), "{text}\n→ {err}");
        assert!(err.line.is_some_and(|l| l >= 6), "{text}\n→ {err}");
    }
}

/// A profile that states FLOP/s per dtype is never read with another dtype's figure:
/// a bf16 model on devices that list f32 and f16 only is refused naming the key.
#[test]
fn a_compute_dtype_the_profile_does_not_state_is_refused_by_name() {
    let config = root().join("fixtures/configs/llama-3-8b/config.json").display().to_string();
    let home = root().join("fixtures/devices/home-4.toml").display().to_string();
    let (code, _, stderr) = shardc(&["plan", &config, "--devices", &home]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("states its FLOP/s for f16, f32 but not for bf16, the compute dtype")
            && stderr.contains("add `bf16 = \"…\"`"),
        "{stderr}"
    );
    let (code, _, stderr) = shardc(&["plan", &config, "--devices", &home, "--compute-dtype", "f16"]);
    assert_eq!(code, 0, "{stderr}");
}
