//! The Hugging Face frontend: every fixture checkpoint lowers to a KV-cache graph that
//! reproduces PyTorch (prefill logits, and greedy tokens decoded one at a time).

mod common;

use common::{fixture_dir, reference, FIXTURES};
use shardc::frontend::hf::LowerOptions;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{cached_prefill, greedy_cached, CacheLayout};
use shardc_runtime::Session;

fn session(name: &str) -> Session {
    let (graph, dir) = common::lowered(&fixture_dir(name).join("hf"), None);
    Session::new(graph, &dir)
}

#[test]
fn checkpoints_reproduce_pytorch_prefill_and_cached_greedy_decoding() {
    for name in FIXTURES {
        let r = reference(name);
        let s = session(name);
        let layout = CacheLayout::of(&s).unwrap().expect("a KV cache");
        let got = cached_prefill(&s, &layout, &r.input_ids).unwrap();
        let max_ref = r.max_abs();
        let max_diff = r.max_diff(&got.values);
        assert_eq!(got.values.len(), r.logits.len());
        assert!(max_diff <= 1e-4 * max_ref.max(1.0), "{name}: max |diff| {max_diff}");
        let tokens = greedy_cached(&s, &layout, &r.input_ids, 8).unwrap();
        assert_eq!(tokens, r.greedy, "{name}");
    }
}

#[test]
fn real_model_configs_report_their_known_parameter_counts() {
    let dir = common::root().join("fixtures/configs");
    let known: std::collections::BTreeMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("known_parameters.json")).unwrap()).unwrap();
    assert_eq!(known.len(), 18);
    for (name, expected) in known {
        let model = shardc::load::load(&dir.join(&name).join("config.json"), &LowerOptions::default()).unwrap();
        assert!(!model.has_weights);
        let report = shardc::inspect::report(
            shardc::inspect::Source { model: name.clone(), format: model.format.clone(), unused_tensors: vec![] },
            &model.graph,
            &model.graph,
        );
        assert_eq!(report.parameters, expected, "{name}");
    }
}

/// Write `tensors` as a safetensors file.
fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The fixture's f32 tensors rounded to bf16, in name order.
fn bf16_tensors(name: &str) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(fixture_dir(name).join("hf/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = st.tensor(&n).unwrap();
            let converted: Vec<u8> = t
                .data()
                .chunks_exact(4)
                .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                .collect();
            (n, t.shape().to_vec(), converted)
        })
        .collect()
}

#[test]
fn sharded_bf16_checkpoint_gives_the_same_facts_as_one_file() {
    let name = "llama";
    let tensors = bf16_tensors(name);
    let config = std::fs::read(fixture_dir(name).join("hf/config.json")).unwrap();
    let single = tempfile::tempdir().unwrap();
    std::fs::write(single.path().join("config.json"), &config).unwrap();
    write_safetensors(&single.path().join("model.safetensors"), &tensors);

    let sharded = tempfile::tempdir().unwrap();
    std::fs::write(sharded.path().join("config.json"), &config).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        write_safetensors(&sharded.path().join(shard), part);
        for (n, _, _) in part {
            weight_map.insert(n.clone(), serde_json::Value::String(shard.into()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(sharded.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let facts = |dir: &std::path::Path| {
        let m = shardc::load::load(dir, &LowerOptions::default()).unwrap();
        let r = shardc::inspect::report(
            shardc::inspect::Source {
                model: String::new(),
                format: m.format.clone(),
                unused_tensors: m.unused.clone(),
            },
            &m.graph,
            &m.graph,
        );
        (r.parameters, serde_json::to_string(&r.weights_by_dtype).unwrap(), r.transformer_layers, m)
    };
    let (p1, d1, l1, _) = facts(single.path());
    let (p2, d2, l2, m2) = facts(sharded.path());
    assert_eq!((p1, &d1, l1), (p2, &d2, l2));
    assert_eq!(p1, 106_816, "bf16 keeps the element count of the f32 checkpoint");
    assert!(d1.contains("\"bf16\":{\"elements\":106816,\"bytes\":213632}"), "{d1}");
    assert!(m2.format.contains("2 safetensors files"), "{}", m2.format);

    // The shards' byte ranges are right: the bf16 model still predicts like the f32 one.
    let mut graph = m2.graph;
    run_pipeline(&mut graph, &mut Ctx { verify_each: true, ..Ctx::default() }, None).unwrap();
    let s = Session::new(graph, sharded.path());
    let layout = CacheLayout::of(&s).unwrap().unwrap();
    let r = reference(name);
    let got = cached_prefill(&s, &layout, &r.input_ids).unwrap();
    let max_ref = r.max_abs();
    let max_diff = r.max_diff(&got.values);
    eprintln!("bf16 vs f32 reference: max |diff| {max_diff} of max |logit| {max_ref}");
    assert!(max_diff < 0.05 * max_ref, "bf16 logits drift {max_diff} (max |logit| {max_ref})");
}
