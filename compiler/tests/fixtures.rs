//! Every fixture imports, verifies, infers full shapes, round-trips through the text
//! form, and reports what the generator recorded.

mod common;

use std::collections::BTreeMap;

use common::{fixture_dir, fixture_onnx, meta, FIXTURES};
use shardc::frontend::onnx;
use shardc::inspect;
use shardc_ir::{text, verify, Graph, ValueDef};
use shardc_passes::{pipeline, Ctx};

fn assert_round_trips(graph: &Graph, stage: &str) {
    let printed = text::print(graph);
    let parsed = text::parse(&printed).unwrap_or_else(|e| panic!("{} after {stage}: {e}", graph.name));
    assert_eq!(text::print(&parsed), printed, "{} after {stage} does not round-trip", graph.name);
    assert_eq!(&parsed, graph, "{} after {stage}: parsed graph differs", graph.name);
}

#[test]
fn fixtures_import_verify_infer_and_round_trip() {
    for name in FIXTURES {
        let model = onnx::import(&fixture_onnx(name)).unwrap();
        let mut graph = model.graph;
        verify(&graph).unwrap();
        assert_round_trips(&graph, "import");
        let mut ctx = Ctx::default();
        for pass in pipeline() {
            pass.run(&mut graph, &mut ctx).unwrap();
            verify(&graph).unwrap_or_else(|e| panic!("{name} after {}: {e}", pass.name()));
            assert_round_trips(&graph, pass.name());
            // After infer-shapes every value has a type and every dim is determined;
            // only the exported dynamic axes stay symbolic.
            for value in &graph.values {
                let ty = value.ty.as_ref().unwrap_or_else(|| panic!("{name}: `{}` has no type", value.name));
                for dim in &ty.shape {
                    assert!(dim.is_determined(), "{name}: `{}` has an unknown dim", value.name);
                    for sym in dim.symbols() {
                        assert!(sym == "batch" || sym == "seq", "{name}: `{}` has symbol {sym}", value.name);
                    }
                }
            }
        }
        let logits = graph.value(graph.outputs[0]);
        assert_eq!(shardc_ir::text::print::type_text(logits.ty.as_ref()), "f32[batch, seq, 256]", "{name}");
    }
}

#[test]
fn inspect_reports_what_the_generator_recorded() {
    for name in FIXTURES {
        let meta = meta(name);
        let model = onnx::import(&fixture_onnx(name)).unwrap();
        let mut graph = model.graph.clone();
        shardc_passes::run_pipeline(&mut graph, &mut Ctx::default(), None).unwrap();
        let source = inspect::Source {
            model: name.to_string(),
            format: format!("ONNX opset {}", model.opset),
            unused_tensors: model.unused_initializers.clone(),
        };
        let report = inspect::report(source, &model.graph, &graph);
        assert_eq!(report.parameters, meta["onnx_parameter_count"].as_u64().unwrap(), "{name}: parameter count");
        assert_eq!(report.transformer_layers as u64, meta["num_layers"].as_u64().unwrap(), "{name}: layers");
        assert_eq!(model.opset, 17);
        // Constant nodes become IR constants; every other op is counted as exported.
        let mut expected: BTreeMap<String, usize> = serde_json::from_value(meta["onnx_op_histogram"].clone()).unwrap();
        expected.remove("Constant");
        assert_eq!(report.ops, expected, "{name}: op histogram");
        assert_eq!(report.unknown_dims, 0, "{name}");
        assert_eq!(report.inputs.len(), 1);
        assert_eq!(report.inputs[0].ty, "i64[batch, seq]");
    }
}

/// Weight references point at the right bytes: ONNX initializers named after the
/// PyTorch parameters hold the same bytes as the Hugging Face checkpoint.
#[test]
fn weight_references_point_at_the_weight_bytes() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let checkpoint = std::fs::read(dir.join("hf/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&checkpoint).unwrap();
        let model = onnx::import(&fixture_onnx(name)).unwrap();
        let mut compared = 0;
        for value in &model.graph.values {
            let ValueDef::Weight(w) = &value.def else { continue };
            let Some(hf_name) = value.name.strip_prefix("model.") else { continue };
            let Ok(tensor) = st.tensor(hf_name) else { continue };
            let loc = w.location.as_ref().unwrap();
            let bytes = std::fs::read(dir.join(&loc.file)).unwrap();
            let onnx_bytes = &bytes[loc.offset as usize..(loc.offset + loc.length) as usize];
            assert_eq!(onnx_bytes, tensor.data(), "{name}: `{}`", value.name);
            compared += 1;
        }
        assert!(compared >= 1, "{name}: no weight could be compared");
    }
}

#[test]
fn external_data_fixture_references_the_data_file() {
    let model = onnx::import(&fixture_onnx("llama")).unwrap();
    let files: std::collections::BTreeSet<String> = model
        .graph
        .values
        .iter()
        .filter_map(|v| match &v.def {
            ValueDef::Weight(w) => w.location.as_ref().map(|l| l.file.clone()),
            _ => None,
        })
        .collect();
    assert!(files.contains("model.onnx.data"), "{files:?}");
}
