//! The reference interpreter reproduces PyTorch on every fixture: logits within
//! 1e-4 × max(1, max|reference|), and the 8 greedy tokens `generate` produced.

mod common;

use common::{fixture_dir, fixture_onnx, reference, FIXTURES};
use shardc::frontend::onnx;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{greedy, logits};
use shardc_runtime::Session;

fn session(name: &str, simplified: bool) -> Session {
    let mut graph = onnx::import(&fixture_onnx(name)).unwrap().graph;
    let stop = if simplified { None } else { Some("infer-shapes") };
    run_pipeline(&mut graph, &mut Ctx { verify_each: true, ..Ctx::default() }, stop).unwrap();
    Session::new(graph, &fixture_dir(name))
}

#[test]
fn logits_match_pytorch_on_every_fixture_before_and_after_simplify() {
    for name in FIXTURES {
        let r = reference(name);
        for simplified in [false, true] {
            let got = logits(&session(name, simplified), &r.input_ids).unwrap();
            assert_eq!(got.values.len(), r.logits.len(), "{name}");
            let max_ref = r.max_abs();
            let max_diff = r.max_diff(&got.values);
            let tolerance = 1e-4 * max_ref.max(1.0);
            assert!(max_diff <= tolerance, "{name} (simplified: {simplified}): max |diff| {max_diff} > {tolerance}");
        }
    }
}

#[test]
fn greedy_continuation_matches_generate() {
    for name in FIXTURES {
        let r = reference(name);
        let tokens = greedy(&session(name, true), &r.input_ids, r.greedy.len()).unwrap();
        assert_eq!(tokens, r.greedy, "{name}");
    }
}
