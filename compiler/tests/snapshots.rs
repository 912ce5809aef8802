//! Text IR of every fixture after import and after each pass, as insta snapshots
//! under `snapshots/` (re-bless with `INSTA_UPDATE=always` or `cargo insta accept`).

mod common;

use common::{fixture_dir, fixture_onnx, FIXTURES};
use shardc::frontend::hf::{self, LowerOptions};
use shardc::frontend::onnx;
use shardc_ir::{text, verify};
use shardc_passes::{pipeline, Ctx};

#[test]
fn text_ir_after_import_and_each_pass() {
    let settings = common::snapshot_settings();
    settings.bind(|| {
        for name in FIXTURES {
            let mut graph = onnx::import(&fixture_onnx(name)).unwrap().graph;
            insta::assert_snapshot!(format!("{name}__import"), text::print(&graph));
            let mut ctx = Ctx::default();
            for pass in pipeline() {
                pass.run(&mut graph, &mut ctx).unwrap();
                verify(&graph).unwrap();
                insta::assert_snapshot!(format!("{name}__{}", pass.name()), text::print(&graph));
            }
        }
    });
}

#[test]
fn text_ir_of_lowered_checkpoints_and_after_each_pass() {
    let settings = common::snapshot_settings();
    settings.bind(|| {
        for name in FIXTURES {
            let mut graph = hf::lower(&fixture_dir(name).join("hf"), &LowerOptions::default()).unwrap().graph;
            insta::assert_snapshot!(format!("{name}__hf_lower"), text::print(&graph));
            let mut ctx = Ctx::default();
            for pass in pipeline() {
                pass.run(&mut graph, &mut ctx).unwrap();
                verify(&graph).unwrap();
                insta::assert_snapshot!(format!("{name}__hf_{}", pass.name()), text::print(&graph));
            }
        }
    });
}
