//! Import + `infer-shapes` time of the 32-layer fixture, against a baseline measured in
//! the same run: decoding the same file with `onnx-protobuf` alone (which copies every
//! weight and infers nothing).
//!
//! Run: `cargo bench -p shardc --bench import`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use onnx_protobuf::{Message, ModelProto};
use shardc::frontend::onnx;
use shardc_passes::{infer_shapes::InferShapes, Ctx, Pass};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm the page cache
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/llama32/model.onnx");
    let runs = 31;
    let ours = time(runs, || {
        let mut graph = onnx::import(&path).expect("import").graph;
        InferShapes.run(&mut graph, &mut Ctx::default()).expect("infer-shapes");
        std::hint::black_box(graph);
    });
    let import_only = time(runs, || {
        std::hint::black_box(onnx::import(&path).expect("import"));
    });
    let baseline = time(runs, || {
        let bytes = std::fs::read(&path).expect("read");
        let model = ModelProto::parse_from_bytes(&bytes).expect("decode");
        std::hint::black_box(model);
    });
    let nodes = onnx::import(&path).expect("import").graph.nodes.len();
    println!("fixture: llama32 (32 layers, {nodes} nodes after import), median of {runs} runs");
    println!("shardc import + infer-shapes: {:>8.2} ms (target < 50 ms)", ours.as_secs_f64() * 1e3);
    println!("  of which import (and verify): {:>8.2} ms", import_only.as_secs_f64() * 1e3);
    println!("baseline onnx-protobuf decode: {:>8.2} ms (no shapes, weights copied)", baseline.as_secs_f64() * 1e3);
    println!("ratio shardc / baseline:       {:>8.2}", ours.as_secs_f64() / baseline.as_secs_f64());
}
