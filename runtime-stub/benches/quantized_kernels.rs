//! The decode-step loops of the quantized kernels on one thread, out of L2: a
//! `[1, 768]` row times 48 weights of `[768, 2048]` (the shape of a 12-layer Llama's
//! MLP, hidden 768), stored `[N, K]` (a checkpoint's `Gemm` with `transB`) and `[K, N]`
//! (an export's `MatMul`), int8 per output channel and int4 in groups of 32, against an
//! f32 product of the same shapes measured in the same run.
//!
//!     cargo bench -p shardc-runtime --bench quantized_kernels

use std::sync::Arc;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use shardc_ir::ops::Gemm;
use shardc_ir::{DType, Op, ValueId};
use shardc_runtime::kernels;
use shardc_runtime::quantized::{product, Fused, QuantMatrix};
use shardc_runtime::tensor::Tensor;

const K: usize = 768;
const N: usize = 2048;
/// How many matrices (`QUANT_KERNELS_MATRICES`, default 48: 75 MiB of int8, more than
/// the L2 caches; 1 stays in L2).
fn matrices() -> usize {
    std::env::var("QUANT_KERNELS_MATRICES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}
const PASSES: usize = 20;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// The median over passes of one pass's time, in Gweights/s.
fn rate(mut pass: impl FnMut()) -> f64 {
    pass();
    let mut times: Vec<f64> = (0..PASSES)
        .map(|_| {
            let t = Instant::now();
            pass();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (matrices() * K * N) as f64 / times[PASSES / 2] / 1e9
}

fn main() {
    let x = Tensor::f32(
        ArrayD::from_shape_vec(IxDyn(&[1, K]), (0..K).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect())
            .unwrap(),
    );
    // f32 baseline: the same shapes through the executor's f32 MatMul kernel (what an
    // f32 package runs), weights [K, N].
    let f32s: Vec<Tensor> = (0..matrices())
        .map(|m| {
            let b = random_bytes(K * N, m as u64 + 1);
            let v = b.iter().map(|&v| f32::from(v as i8) / 64.0).collect();
            Tensor::f32(ArrayD::from_shape_vec(IxDyn(&[K, N]), v).unwrap())
        })
        .collect();
    let matmul = Op::MatMul(shardc_ir::ops::MatMul {});
    let mut sink = 0f32;
    let f32_rate = rate(|| {
        for w in &f32s {
            sink += kernels::run(&matmul, &[Some(&x), Some(w)], 1).unwrap()[0].to_f32_vec()[0];
        }
    });
    drop(f32s);
    println!("[1, {K}] x {} weights of [{K}, {N}], one thread, medians of {PASSES} passes", matrices());
    println!("{:<28} {:>10} {:>9}", "weights", "Gweights/s", "vs f32");
    println!("{:<28} {:>10.2} {:>8.2}x", "f32 (MatMul kernel)", f32_rate, 1.0);
    for (name, int4, trans_b, block) in [
        ("int8 per channel, [N, K]", false, true, None),
        ("int8 per channel, [K, N]", false, false, None),
        ("int4 groups of 32, [N, K]", true, true, Some(32)),
        ("int4 groups of 32, [K, N]", true, false, Some(32)),
    ] {
        let shape = if trans_b { [N, K] } else { [K, N] };
        // Groups run along K: axis 1 of [N, K], axis 0 of [K, N]; per channel the
        // scales run along N.
        let axis = match (block, trans_b) {
            (Some(_), true) | (None, false) => 1,
            (Some(_), false) | (None, true) => 0,
        };
        let scales = match (block, axis) {
            (Some(b), 1) => shape[0] * shape[1].div_ceil(b),
            (Some(b), _) => shape[0].div_ceil(b) * shape[1],
            (None, 0) => shape[0],
            (None, _) => shape[1],
        };
        let bytes_per = if int4 { K * N / 2 } else { K * N };
        let file = random_bytes(bytes_per * matrices(), 7);
        let mut map = memmap2::MmapMut::map_anon(file.len()).unwrap();
        map.copy_from_slice(&file);
        let map = Arc::new(map.make_read_only().unwrap());
        let dtype = if int4 { DType::I4 } else { DType::I8 };
        let matrices: Vec<QuantMatrix> = (0..matrices())
            .map(|m| {
                let s: Vec<f32> = (0..scales).map(|i| 0.01 + (i % 7) as f32 * 1e-3).collect();
                QuantMatrix::new(map.clone(), m * bytes_per, dtype, shape, s, axis, block).unwrap()
            })
            .collect();
        let gemm = trans_b.then_some(Gemm { alpha: 1.0, beta: 0.0, transA: 0, transB: 1 });
        let fused = Fused {
            data: ValueId(0),
            scale: Some(ValueId(1)),
            zero: None,
            axis,
            block,
            per_tensor: false,
            chain: vec![],
            gemm,
            gather: false,
        };
        let r = rate(|| {
            for w in &matrices {
                sink += product(&fused, w, &x, None).unwrap().to_f32_vec()[0];
            }
        });
        println!("{name:<28} {r:>10.2} {:>8.2}x", r / f32_rate);
    }
    if sink == f32::MAX {
        println!("{sink}");
    }
}
