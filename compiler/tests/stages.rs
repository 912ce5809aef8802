//! Plans split into stage graphs that, chained by name, compute what the whole model
//! computes: prefill logits and greedy tokens decoded with the KV cache.

mod common;

use common::{fixture_dir, reference, root, FIXTURES};
use shardc_passes::cost::Workload;
use shardc_passes::devices;
use shardc_passes::partition::{self, Request};
use shardc_passes::plan::{solve, Objective, Strategy};
use shardc_passes::split::split;
use shardc_runtime::generate::{cached_prefill, greedy_cached, CacheLayout, Runner};
use shardc_runtime::pipeline::Pipeline;
use shardc_runtime::Session;

#[test]
fn stage_graphs_chained_reproduce_the_model() {
    let profile = devices::load(&root().join("fixtures/devices/lingualinked-3.toml")).unwrap();
    for name in FIXTURES {
        let dir = fixture_dir(name).join("hf");
        let (graph, _) = common::lowered(&dir, Some(64));
        let req = Request {
            time_limit: std::time::Duration::from_secs(5),
            ..Request::new(Workload { batch: 1, prompt_len: 10, max_context: 64 }, Objective::Latency)
        };
        let prep = partition::prepare(&graph, &profile, &req).unwrap();
        // Uniform spreads even these tiny models over several devices.
        let outcome = solve(&prep.model.problem, Strategy::Uniform, &prep.opts);
        let plan = outcome.plan.unwrap();
        assert!(plan.len() >= 2, "{name}: {plan:?}");
        let stages = split(&graph, &prep.seg, &plan);
        for s in &stages {
            shardc_ir::verify(s).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let pipeline = Pipeline::new(stages.into_iter().map(|g| Session::new(g, &dir)).collect());
        let layout = CacheLayout::of(&pipeline).unwrap().expect("a KV cache");
        assert!(pipeline.outputs().contains(&"logits".to_string()), "{name}");
        let r = reference(name);
        let got = cached_prefill(&pipeline, &layout, &r.input_ids).unwrap();
        let max_ref = r.max_abs();
        let diff = r.max_diff(&got.values);
        assert!(diff <= 1e-4 * max_ref.max(1.0), "{name}: {diff}");
        assert_eq!(greedy_cached(&pipeline, &layout, &r.input_ids, 8).unwrap(), r.greedy, "{name}");
        // Every tensor that moved between stages is in the transmission map, direct.
        let names: Vec<String> = profile.devices.iter().map(|d| d.name.clone()).collect();
        let map = shardc_passes::transmission::build(&graph, &prep.seg, &plan, &names, &req.workload).unwrap();
        for (tensor, from, to) in pipeline.moved.borrow().iter() {
            let t = map
                .transfers
                .iter()
                .find(|t| &t.tensor == tensor)
                .unwrap_or_else(|| panic!("{name}: `{tensor}` moved but is not in the map"));
            assert!(t.from.is_device(&names[plan[*from].device]), "{name}: {tensor}");
            assert!(t.to.iter().any(|e| e.is_device(&names[plan[*to].device])), "{name}: {tensor}");
        }
    }
}
