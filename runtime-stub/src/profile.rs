//! Measure this host with the runtime's own kernels: sustained matrix-product FLOP/s
//! (f32), memory bandwidth (a large copy), and usable memory (`MemAvailable`).

use std::collections::BTreeMap;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use shardc_ir::ops::{MatMul, Op};
use shardc_passes::devices::Device;

use crate::kernels;
use crate::tensor::Tensor;

/// Median of repeated timings of `f`, seconds.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn available_memory() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib * 1024.0)
}

/// Measure this host.
pub fn measure(name: &str) -> Device {
    let n = 512;
    let a = Tensor::f32(ArrayD::from_elem(IxDyn(&[n, n]), 0.5));
    let b = Tensor::f32(ArrayD::from_elem(IxDyn(&[n, n]), 0.25));
    let op = Op::MatMul(MatMul {});
    let secs = time(5, || {
        let _ = std::hint::black_box(kernels::run(&op, &[Some(&a), Some(&b)], 1));
    });
    let flops = 2.0 * (n * n * n) as f64 / secs;
    let len = 64 << 20; // 256 MiB of f32
    let src = vec![1.0f32; len / 4];
    let mut dst = vec![0.0f32; len / 4];
    let secs = time(5, || {
        dst.copy_from_slice(std::hint::black_box(&src));
    });
    // A copy reads and writes every byte.
    let bandwidth = 2.0 * len as f64 / secs;
    Device {
        name: name.to_string(),
        memory: available_memory(),
        flops: BTreeMap::from([("*".to_string(), flops)]),
        bandwidth,
    }
}
