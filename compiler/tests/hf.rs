//! The Hugging Face frontend: every fixture checkpoint lowers to a KV-cache graph that
//! reproduces PyTorch (prefill logits, and greedy tokens decoded one at a time).

mod common;

use common::{fixture_dir, FIXTURES};
use shardc::frontend::hf::{self, LowerOptions};
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{cached_prefill, greedy_cached, CacheLayout};
use shardc_runtime::Session;

struct Reference {
    input_ids: Vec<i64>,
    logits: Vec<f32>,
    greedy: Vec<i64>,
}

fn reference(name: &str) -> Reference {
    let bytes = std::fs::read(fixture_dir(name).join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |t: &str| -> Vec<i64> {
        st.tensor(t).unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let logits = st.tensor("logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    Reference { input_ids: i64s("input_ids"), logits, greedy: i64s("greedy_tokens") }
}

fn session(name: &str) -> Session {
    let model = hf::lower(&fixture_dir(name).join("hf"), &LowerOptions::default()).unwrap();
    let mut graph = model.graph;
    run_pipeline(&mut graph, &mut Ctx { verify_each: true, ..Ctx::default() }, None).unwrap();
    Session::new(graph, &model.dir)
}

#[test]
fn checkpoints_reproduce_pytorch_prefill_and_cached_greedy_decoding() {
    for name in FIXTURES {
        let r = reference(name);
        let s = session(name);
        let layout = CacheLayout::of(&s).unwrap().expect("a KV cache");
        let got = cached_prefill(&s, &layout, &r.input_ids).unwrap();
        let max_ref = r.logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_diff = got.values.iter().zip(&r.logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert_eq!(got.values.len(), r.logits.len());
        assert!(max_diff <= 1e-4 * max_ref.max(1.0), "{name}: max |diff| {max_diff}");
        let tokens = greedy_cached(&s, &layout, &r.input_ids, 8).unwrap();
        assert_eq!(tokens, r.greedy, "{name}");
    }
}
