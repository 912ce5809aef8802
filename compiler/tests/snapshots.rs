//! Text IR of every fixture after import and after each pass, as insta snapshots
//! under `snapshots/` (re-bless with `INSTA_UPDATE=always` or `cargo insta accept`).

mod common;

use common::{fixture_dir, fixture_onnx, CURRENT, FIXTURES};
use shardc::frontend::hf::{self, LowerOptions};
use shardc::frontend::onnx;
use shardc_ir::{text, verify, Graph};
use shardc_passes::{pipeline, Ctx};

/// Snapshot `graph` as `{prefix}{first}`, then after each pass as `{prefix}{pass}`.
fn snapshot_passes(mut graph: Graph, prefix: &str, first: &str) {
    insta::assert_snapshot!(format!("{prefix}{first}"), text::print(&graph));
    let mut ctx = Ctx::default();
    for pass in pipeline() {
        pass.run(&mut graph, &mut ctx).unwrap();
        verify(&graph).unwrap();
        insta::assert_snapshot!(format!("{prefix}{}", pass.name()), text::print(&graph));
    }
}

#[test]
fn text_ir_after_import_and_each_pass() {
    common::snapshot_settings().bind(|| {
        for name in FIXTURES {
            let graph = onnx::import(&fixture_onnx(name)).unwrap().graph;
            snapshot_passes(graph, &format!("{name}__"), "import");
        }
    });
}

#[test]
fn text_ir_of_lowered_checkpoints_and_after_each_pass() {
    common::snapshot_settings().bind(|| {
        for name in FIXTURES {
            let graph = hf::lower(&fixture_dir(name).join("hf"), &LowerOptions::default()).unwrap().graph;
            snapshot_passes(graph, &format!("{name}__hf_"), "lower");
        }
    });
}

/// The architectures of current transformers: the lowered checkpoint and the
/// dynamo export (units and symbols derived from the graph) after each pass.
#[test]
fn text_ir_of_current_checkpoints_and_exports() {
    common::snapshot_settings().bind(|| {
        for name in CURRENT {
            let graph = hf::lower(&fixture_dir(name).join("hf"), &LowerOptions::default()).unwrap().graph;
            snapshot_passes(graph, &format!("{name}__hf_"), "lower");
            let graph = onnx::import(&fixture_dir(name).join("dynamo.onnx")).unwrap().graph;
            snapshot_passes(graph, &format!("{name}__dynamo_"), "import");
        }
    });
}
