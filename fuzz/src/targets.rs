//! The targets: each one real entry point, its working folder and its seeds (valid
//! inputs from the fixtures, so mutations start from what the parser accepts).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use shardc::frontend::hf::LowerOptions;

/// Every target, in the order `shardc-fuzz run` takes them.
pub const NAMES: [&str; 11] = [
    "onnx",
    "safetensors",
    "index",
    "config",
    "devices",
    "cluster",
    "manifest",
    "transmission-map",
    "text-ir",
    "frame",
    "envelope",
];

/// Feed one input to a parser; `Err` is a refusal (fine), a panic is a finding.
pub type Run = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    /// Valid inputs mutations start from.
    pub seeds: Vec<Vec<u8>>,
    /// Whether the input is text (number, string and line mutations help).
    pub text: bool,
    pub run: Run,
}

/// The repository's root (fixtures live there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("seed {}", path.display()))
}

/// A tiny Llama-shaped config whose checkpoint is a few kilobytes.
const TINY_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
  "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32,
  "max_position_embeddings": 64, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "float32"
}
"#;

/// A checkpoint folder of the tiny config: config.json and model.safetensors.
fn tiny_checkpoint(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let source = dir.join("source-config.json");
    std::fs::write(&source, TINY_CONFIG)?;
    shardc::frontend::hf::sparse::write_sparse_checkpoint(&source, dir).map_err(|e| anyhow!("{e}"))?;
    std::fs::remove_file(&source)?;
    Ok(())
}

fn lower(path: &Path) -> Result<(), String> {
    shardc::frontend::hf::lower(path, &LowerOptions::default()).map(|_| ()).map_err(|e| e.to_string())
}

/// Compile the gpt2 fixture over three devices into `out` (seeds for manifests, maps
/// and the text IR).
fn compiled(out: &Path) -> Result<()> {
    use shardc_passes::plan::{Objective, Strategy};
    if shardc_runtime::package::load_output(out, true).is_ok() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(out);
    let model = root().join("fixtures/models/gpt2/hf");
    let loaded = shardc::load::load(&model, &LowerOptions { max_context: Some(64), ..LowerOptions::default() })?;
    let mut graph = loaded.graph;
    shardc_passes::run_pipeline(&mut graph, &mut shardc_passes::Ctx::default(), None)?;
    let profile = shardc_passes::devices::load(&root().join("fixtures/devices/loopback-3.toml"))?;
    let request = shardc_passes::partition::Request::new(
        shardc_passes::cost::Workload { batch: 1, prompt_len: 16, max_context: 64 },
        Objective::Throughput,
    );
    let opts = shardc::emit::CompileOptions {
        strategy: Strategy::Ilp,
        request,
        force: true,
        model_name: "gpt2".into(),
        devices_name: "loopback-3".into(),
        inputs: vec![model.clone()],
        records: Vec::new(),
        progress: false,
    };
    shardc::emit::compile(&graph, &loaded.weights_dir, &profile, &opts, out)?;
    Ok(())
}

fn files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(ext)).collect();
    out.sort();
    Ok(out)
}

/// Set up target `name` with its working folder under `scratch`.
pub fn target(name: &str, scratch: &Path) -> Result<Target> {
    let work = scratch.join(name);
    std::fs::create_dir_all(&work)?;
    let fixtures = root().join("fixtures");
    let t = match name {
        "onnx" => {
            // Exports with external data (their data files beside the input), a
            // self-contained export, and the current exporter's.
            let mut seeds = Vec::new();
            for (m, file) in [("llama", "model.onnx"), ("gpt2", "model.onnx"), ("qwen3", "dynamo.onnx")] {
                let p = fixtures.join("models").join(m).join(file);
                seeds.push(read(&p)?);
                let data = p.with_file_name(format!("{file}.data"));
                if data.exists() {
                    std::fs::copy(&data, work.join(format!("{file}.data")))?;
                }
            }
            let file = work.join("model.onnx");
            Target {
                name: "onnx",
                seeds,
                text: false,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).map_err(|e| e.to_string())?;
                    shardc::frontend::onnx::import(&file).map(|_| ()).map_err(|e| e.to_string())
                }),
            }
        }
        "safetensors" => {
            let dir = work.join("checkpoint");
            tiny_checkpoint(&dir)?;
            let file = dir.join("model.safetensors");
            let seeds = vec![read(&file)?, read(&fixtures.join("models/llama/hf/model.safetensors"))?];
            let fixture_config = read(&fixtures.join("models/llama/hf/config.json"))?;
            let tiny_config = TINY_CONFIG.as_bytes().to_vec();
            Target {
                name: "safetensors",
                seeds,
                text: false,
                run: Box::new(move |b| {
                    // The header decides which config it is meant for.
                    let config = if b.len() > 100_000 { &fixture_config } else { &tiny_config };
                    std::fs::write(dir.join("config.json"), config).map_err(|e| e.to_string())?;
                    std::fs::write(&file, b).map_err(|e| e.to_string())?;
                    lower(&dir)
                }),
            }
        }
        "index" => {
            // The tiny checkpoint as two shards and an index.
            let dir = work.join("sharded");
            let single = work.join("single");
            tiny_checkpoint(&single)?;
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(single.join("config.json"), dir.join("config.json"))?;
            std::fs::copy(single.join("model.safetensors"), dir.join("model-00001-of-00002.safetensors"))?;
            std::fs::copy(single.join("model.safetensors"), dir.join("model-00002-of-00002.safetensors"))?;
            let graph = shardc::frontend::hf::lower(&single, &LowerOptions::default())?.graph;
            let mut map = serde_json::Map::new();
            let mut names: Vec<String> = graph
                .values
                .iter()
                .filter(|v| matches!(v.def, shardc_ir::ValueDef::Weight(_)))
                .map(|v| v.name.clone())
                .collect();
            names.sort();
            for (i, n) in names.iter().enumerate() {
                map.insert(n.clone(), format!("model-0000{}-of-00002.safetensors", 1 + i % 2).into());
            }
            let index = serde_json::json!({"metadata": {"total_size": 1234}, "weight_map": map});
            let seeds = vec![serde_json::to_vec_pretty(&index)?];
            let file = dir.join("model.safetensors.index.json");
            Target {
                name: "index",
                seeds,
                text: true,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).map_err(|e| e.to_string())?;
                    lower(&dir)
                }),
            }
        }
        "config" => {
            // Checkpoint configs lowered shape-only (no weights to match).
            let mut seeds = Vec::new();
            for dir in [fixtures.join("configs"), fixtures.join("models")] {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).collect();
                entries.sort();
                for e in entries {
                    for c in [e.join("config.json"), e.join("hf/config.json")] {
                        if c.is_file() {
                            seeds.push(read(&c)?);
                        }
                    }
                }
            }
            let file = work.join("config.json");
            Target {
                name: "config",
                seeds,
                text: true,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).map_err(|e| e.to_string())?;
                    lower(&file)
                }),
            }
        }
        "devices" => {
            let seeds =
                files_with(&fixtures.join("devices"), ".toml")?.iter().map(|p| read(p)).collect::<Result<_>>()?;
            Target {
                name: "devices",
                seeds,
                text: true,
                run: Box::new(|b| {
                    let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
                    shardc_passes::devices::parse(text, Path::new("devices.toml"))
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }),
            }
        }
        "cluster" => {
            let seeds = vec![
                b"client = \"tcp://127.0.0.1:5600\"\n[devices]\ndev-a = \"tcp://127.0.0.1:5601\"\ndev-b = \"tcp://[::1]:5602\"\ndev-c = \"tcp://localhost:5603\"\n".to_vec(),
                b"client = \"inproc://client\"\n\n[devices]\nd0 = \"inproc://d0\"\n".to_vec(),
            ];
            Target {
                name: "cluster",
                seeds,
                text: true,
                run: Box::new(|b| {
                    let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
                    // With remote addresses allowed: names are parsed but not resolved.
                    shardc_format::Cluster::parse(text, true).map(|_| ())
                }),
            }
        }
        "manifest" => {
            let out = scratch.join("compiled");
            compiled(&out)?;
            // A copy of dev-b's package whose manifest is the input.
            let dir = work.join("dev-b");
            std::fs::create_dir_all(&dir)?;
            for e in std::fs::read_dir(out.join("dev-b"))?.flatten() {
                std::fs::copy(e.path(), dir.join(e.file_name()))?;
            }
            let seeds = vec![read(&dir.join("manifest.json"))?];
            let file = dir.join("manifest.json");
            Target {
                name: "manifest",
                seeds,
                text: true,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).map_err(|e| e.to_string())?;
                    shardc_runtime::package::read_manifest(&dir).map(|_| ()).map_err(|e| e.to_string())
                }),
            }
        }
        "transmission-map" => {
            let out = scratch.join("compiled");
            compiled(&out)?;
            let copy = work.join("out");
            let _ = std::fs::remove_dir_all(&copy);
            {
                std::fs::create_dir_all(&copy)?;
                for e in std::fs::read_dir(&out)?.flatten() {
                    if e.path().is_dir() {
                        std::fs::create_dir_all(copy.join(e.file_name()))?;
                        for f in std::fs::read_dir(e.path())?.flatten() {
                            std::fs::copy(f.path(), copy.join(e.file_name()).join(f.file_name()))?;
                        }
                    } else {
                        std::fs::copy(e.path(), copy.join(e.file_name()))?;
                    }
                }
            }
            let seeds = vec![read(&copy.join("transmission_map.json"))?];
            let file = copy.join("transmission_map.json");
            Target {
                name: "transmission-map",
                seeds,
                text: true,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).map_err(|e| e.to_string())?;
                    shardc_runtime::package::load_output(&copy, false).map(|_| ()).map_err(|e| e.to_string())
                }),
            }
        }
        "text-ir" => {
            let out = scratch.join("compiled");
            compiled(&out)?;
            let mut seeds = Vec::new();
            for d in ["dev-a", "dev-b", "dev-c"] {
                seeds.push(read(&out.join(d).join("shard.ir"))?);
            }
            let g = shardc::frontend::hf::lower(&fixtures.join("models/llama/hf"), &LowerOptions::default())?.graph;
            seeds.push(shardc_ir::text::print(&g).into_bytes());
            Target {
                name: "text-ir",
                seeds,
                text: true,
                run: Box::new(|b| {
                    let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
                    let g = shardc_ir::text::parse(text).map_err(|e| e.to_string())?;
                    shardc_ir::verify(&g).map_err(|e| e.to_string())
                }),
            }
        }
        "frame" => Target {
            name: "frame",
            seeds: frames().into_iter().filter_map(|f| shardc_runtime::frame::encode(&f).ok()).collect(),
            text: false,
            run: Box::new(|b| {
                shardc_runtime::frame::decode(b, shardc_runtime::frame::DEFAULT_MAX_FRAME)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
        "envelope" => {
            // Sealed messages as header ‖ body; the receiver shares the key.
            let key = [42u8; 32];
            let mut wire = shardc_runtime::wire::Wire::new(Some(&key), 1 << 20).map_err(|e| anyhow!(e))?;
            let mut seeds = Vec::new();
            for f in frames() {
                let [h, b] = wire.seal(&[9; 16], shardc_runtime::frame::encode(&f)?).map_err(|e| anyhow!(e))?;
                seeds.push([h, b].concat());
            }
            let receiver = shardc_runtime::wire::Wire::new(Some(&key), 1 << 20).map_err(|e| anyhow!(e))?;
            Target {
                name: "envelope",
                seeds,
                text: false,
                run: Box::new(move |b| {
                    let split = b.len().min(shardc_runtime::wire::HEADER_LEN);
                    let mut parts = [b[..split].to_vec(), b[split..].to_vec()];
                    let (_, body) = receiver.open(&mut parts).map_err(|e| e.to_string())?;
                    shardc_runtime::frame::decode(&body, 1 << 20).map(|_| ()).map_err(|e| e.to_string())
                }),
            }
        }
        other => return Err(anyhow!("no fuzz target `{other}` (targets: {})", NAMES.join(", "))),
    };
    Ok(t)
}

/// Frames like the runtime's: tensors of each dtype, control messages.
fn frames() -> Vec<shardc_runtime::frame::Frame> {
    use ndarray::{ArrayD, IxDyn};
    use shardc_runtime::frame::{Body, Frame, Ready, Timing};
    use shardc_runtime::Tensor;
    let hidden = Tensor::f32(
        ArrayD::from_shape_vec(IxDyn(&[1, 2, 3]), vec![0.5, -1.0, 2.0, 3.5, 0.0, 1e-3]).unwrap_or_default(),
    );
    let ids = Tensor::i64(ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1, 2, 3]).unwrap_or_default());
    let mask = Tensor::bool(ArrayD::from_shape_vec(IxDyn(&[2]), vec![true, false]).unwrap_or_default());
    let ready = Ready { epoch: 3, error: None, rebuild_ms: 1.5, kv_sent_bytes: 1024 };
    vec![
        Frame::new(0, 1, "dev-a", Body::Tensors(vec![("hidden".into(), hidden), ("mask".into(), mask)])),
        Frame::new(7, 0, "client", Body::Tensors(vec![("input_ids".into(), ids)])),
        Frame::new(1, 2, "client", Body::End),
        Frame::new(1, 2, "dev-a", Body::Done(Timing { compute_ms: 2.5, waiting_ms: 0.25, send_ms: 0.125 })),
        Frame::control("dev-b", Body::Ready(ready)),
    ]
}
