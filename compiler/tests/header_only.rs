//! Lowering reads safetensors headers only: a 7B-sized checkpoint whose 13 GB of data
//! is a hole in a sparse file lowers while the process reads only the header.
//! (Its own test binary, so the process's I/O counters see nothing else.)

mod common;

use shardc::frontend::hf::{lower, sparse::write_sparse_checkpoint, LowerOptions};
use shardc_ir::ValueDef;

/// Bytes this process has read through `read`-like system calls.
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

#[test]
fn a_seven_billion_parameter_checkpoint_lowers_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::root().join("fixtures/configs/llama-2-7b/config.json");
    let data = write_sparse_checkpoint(&config, dir.path()).unwrap();
    assert_eq!(data, 6_738_415_616 * 2, "f16 weights of Llama-2-7B");
    let header_len = {
        let mut b = [0u8; 8];
        use std::io::Read;
        std::fs::File::open(dir.path().join("model.safetensors")).unwrap().read_exact(&mut b).unwrap();
        u64::from_le_bytes(b)
    };

    let before = bytes_read();
    let model = lower(dir.path(), &LowerOptions::default()).unwrap();
    let read = bytes_read() - before;

    // The header, config.json and nothing of the 13.5 GB behind them.
    assert!(read < header_len + 64 * 1024, "lowering read {read} bytes; the header is {header_len}");
    let weights: Vec<_> = model.graph.values.iter().filter(|v| matches!(v.def, ValueDef::Weight(_))).collect();
    assert_eq!(weights.len(), 291);
    assert!(model.unused_tensors.is_empty());
}
