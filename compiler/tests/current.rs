//! Models as new users have them today: checkpoints saved by transformers 5 and ONNX
//! exports by current torch (both exporters), for every architecture the Hugging Face
//! frontend lowers. Each reproduces PyTorch: prefill logits within 1e-4 relative and
//! the 8 greedy tokens `generate` produced (checkpoints with their KV cache, exports
//! re-running the prefix).

mod common;

use common::{fixture_dir, reference, CURRENT, EXPORTERS, ROPES};
use shardc::frontend::{hf, onnx};
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{cached_prefill, greedy, greedy_cached, logits, CacheLayout};
use shardc_runtime::Session;

fn checkpoint(name: &str) -> Session {
    let (graph, dir) = common::lowered(&fixture_dir(name).join("hf"), None);
    Session::new(graph, &dir)
}

fn check_checkpoint(name: &str) {
    let r = reference(name);
    let s = checkpoint(name);
    let layout = CacheLayout::of(&s).unwrap().expect("a KV cache");
    let got = cached_prefill(&s, &layout, &r.input_ids).unwrap();
    let (max_diff, limit) = (r.max_diff(&got.values), 1e-4 * r.max_abs().max(1.0));
    assert!(max_diff <= limit, "{name}: max |diff| {max_diff} > {limit}");
    let tokens = greedy_cached(&s, &layout, &r.input_ids, 8).unwrap();
    assert_eq!(tokens, r.greedy, "{name}");
}

fn hf_graph(name: &str) -> shardc_ir::Graph {
    hf::lower(&fixture_dir(name).join("hf"), &hf::LowerOptions::default()).unwrap().graph
}

/// The layer count PyTorch's model had.
fn layers(name: &str) -> usize {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir(name).join("meta.json")).unwrap()).unwrap();
    meta["num_layers"].as_u64().unwrap() as usize
}

/// The units that label at least one node.
fn units(graph: &shardc_ir::Graph) -> std::collections::BTreeSet<String> {
    graph.nodes.iter().filter_map(|n| n.unit.map(|u| u.text())).collect()
}

#[test]
fn transformers5_checkpoints_reproduce_pytorch() {
    for name in CURRENT {
        check_checkpoint(name);
    }
}

#[test]
fn every_rope_type_reproduces_pytorch() {
    for name in ROPES {
        check_checkpoint(name);
    }
}

#[test]
fn exports_of_both_torch_exporters_reproduce_pytorch() {
    for name in CURRENT {
        let r = reference(name);
        for exporter in EXPORTERS {
            let path = fixture_dir(name).join(format!("{exporter}.onnx"));
            let model = onnx::import(&path).unwrap_or_else(|e| panic!("{name} {exporter}: {e}"));
            // The structure found from the graph alone: the checkpoint's layers, and
            // the same units as the checkpoint's lowering has.
            let structure = model.structure.as_ref().unwrap_or_else(|e| panic!("{name} {exporter}: {e}"));
            assert_eq!(structure.layers, layers(name), "{name} {exporter}");
            assert_eq!(units(&model.graph), units(&hf_graph(name)), "{name} {exporter}");
            let mut graph = model.graph;
            run_pipeline(&mut graph, &mut Ctx { verify_each: true, ..Ctx::default() }, None)
                .unwrap_or_else(|e| panic!("{name} {exporter}: {e}"));
            let s = Session::new(graph, &fixture_dir(name));
            let got = logits(&s, &r.input_ids).unwrap_or_else(|e| panic!("{name} {exporter}: {e}"));
            let (max_diff, limit) = (r.max_diff(&got.values), 1e-4 * r.max_abs().max(1.0));
            assert!(max_diff <= limit, "{name} {exporter}: max |diff| {max_diff} > {limit}");
            let tokens = greedy(&s, &r.input_ids, 8).unwrap();
            assert_eq!(tokens, r.greedy, "{name} {exporter}");
        }
    }
}

/// The CLI as a user runs it: `shardc run MODEL --input-ids ... --max-new-tokens 8`
/// prints PyTorch's greedy tokens and its largest last-position logits, for the
/// checkpoint and both exports of every current architecture.
#[test]
fn shardc_run_prints_pytorchs_tokens_and_logits() {
    for name in CURRENT {
        let r = reference(name);
        let vocab = r.logits.len() / r.input_ids.len();
        let last = &r.logits[r.logits.len() - vocab..];
        let ids: Vec<String> = r.input_ids.iter().map(|i| i.to_string()).collect();
        for model in ["hf", "dynamo.onnx", "torchscript.onnx"] {
            let out = common::shardc_command()
                .arg("run")
                .arg(fixture_dir(name).join(model))
                .args(["--input-ids", &ids.join(","), "--max-new-tokens", "8", "--json"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{name} {model}: {}", String::from_utf8_lossy(&out.stderr));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let tokens: Vec<i64> =
                report["generated"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(tokens, r.greedy, "{name} {model}");
            let max_abs = last.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
            for entry in report["top_k"].as_array().unwrap() {
                let id = entry["id"].as_u64().unwrap() as usize;
                let logit = entry["logit"].as_f64().unwrap() as f32;
                assert!(
                    (logit - last[id]).abs() <= 1e-4 * max_abs,
                    "{name} {model}: logit {id}: {logit} vs {}",
                    last[id]
                );
            }
        }
    }
}

/// A copy of fixture `name`'s checkpoint with its config rewritten by `edit`.
fn edited_checkpoint(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let src = fixture_dir(name).join("hf");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// Prefill logits of a checkpoint folder, with its KV cache.
fn prefill(dir: &std::path::Path, ids: &[i64]) -> Vec<f32> {
    let (graph, dir) = common::lowered(dir, None);
    let s = Session::new(graph, &dir);
    let layout = CacheLayout::of(&s).unwrap().unwrap();
    cached_prefill(&s, &layout, ids).unwrap().values
}

/// transformers 4 wrote the same settings as `rope_theta`, `rope_scaling` (with
/// `type` or `rope_type`), a top-level `partial_rotary_factor` and Gemma 3's
/// `rope_local_base_freq`: rewritten that way, every rope fixture computes the same
/// logits. And the rope base is honoured, not defaulted: changing it changes them.
#[test]
fn transformers4_rope_layout_is_the_same_model() {
    use serde_json::{json, Value};
    let to_v4 = |c: &mut serde_json::Map<String, Value>, legacy_type_key: bool| {
        let mut p = c.remove("rope_parameters").unwrap();
        if let Some(full) = p.get("full_attention").cloned() {
            // Gemma 3: one dict per layer type.
            let sliding = &p["sliding_attention"];
            assert_eq!(sliding["rope_type"], "default");
            c.insert("rope_local_base_freq".into(), sliding["rope_theta"].clone());
            p = full;
        }
        let p = p.as_object_mut().unwrap();
        c.insert("rope_theta".into(), p.remove("rope_theta").unwrap());
        if let Some(f) = p.remove("partial_rotary_factor") {
            c.insert("partial_rotary_factor".into(), f);
        }
        let scaling = if p["rope_type"] == "default" {
            Value::Null
        } else {
            if legacy_type_key {
                let t = p.remove("rope_type").unwrap();
                p.insert("type".into(), t);
            }
            Value::Object(p.clone())
        };
        c.insert("rope_scaling".into(), scaling);
    };
    let names = ROPES.iter().chain(["llama31", "gemma3_text", "phi3"].iter());
    for (k, name) in names.enumerate() {
        let r = reference(name);
        let dir = edited_checkpoint(name, |c| to_v4(c, k % 2 == 1));
        let got = prefill(dir.path(), &r.input_ids);
        let (max_diff, limit) = (r.max_diff(&got), 1e-4 * r.max_abs().max(1.0));
        assert!(max_diff <= limit, "{name} in the transformers 4 layout: max |diff| {max_diff} > {limit}");
    }
    // A different base gives different logits, in either layout.
    let r = reference("llama31");
    let v5 = edited_checkpoint("llama31", |c| c["rope_parameters"]["rope_theta"] = json!(10000.0));
    let v4 = edited_checkpoint("llama31", |c| {
        to_v4(c, false);
        c.insert("rope_theta".into(), json!(10000.0));
    });
    for dir in [v5, v4] {
        let got = prefill(dir.path(), &r.input_ids);
        assert!(r.max_diff(&got) > 1e-3 * r.max_abs(), "the rope base must change the logits");
    }
}
