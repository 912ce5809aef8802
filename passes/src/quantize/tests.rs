//! The rewrite of a small graph, and matrices quantized and dequantized.

use super::*;
use shardc_ir::ops::{Gather, Gemm, MatMul};

/// `x @ W1ᵀ` (Gemm, transB), `· @ W2` (MatMul), a bias, and a lookup table.
fn graph() -> Graph {
    let mut g = Graph::new("t");
    let x = g.add_input("x", TensorType::known(DType::F32, &[2, 64]));
    let ids = g.add_input("ids", TensorType::known(DType::I64, &[2]));
    let weight = |g: &mut Graph, name: &str, dtype: DType, shape: &[usize]| {
        let w = WeightRef { dtype, shape: shape.to_vec(), location: None };
        g.add_value(name, Some(TensorType::known(dtype, shape)), ValueDef::Weight(w))
    };
    let w1 = weight(&mut g, "w1", DType::F32, &[48, 64]);
    let w2 = weight(&mut g, "w2", DType::F16, &[48, 40]);
    let bias = weight(&mut g, "b", DType::F32, &[48]);
    let table = weight(&mut g, "table", DType::F32, &[10, 64]);
    let gemm = Op::Gemm(Gemm { alpha: 1.0, beta: 1.0, transA: 0, transB: 1 });
    let n = g.add_node("gemm", gemm, vec![Some(x), Some(w1), Some(bias)], &["h".into()]);
    let h = g.node(n).outputs[0];
    g.value_mut(h).ty = Some(TensorType::known(DType::F32, &[2, 48]));
    let cast = Op::Cast(Cast { to: DType::F32, saturate: 1, round_mode: "up".into() });
    let c = g.add_node("cast", cast, vec![Some(w2)], &["w2f".into()]);
    let w2f = g.node(c).outputs[0];
    g.value_mut(w2f).ty = Some(TensorType::known(DType::F32, &[48, 40]));
    let m = g.add_node("mm", Op::MatMul(MatMul {}), vec![Some(h), Some(w2f)], &["y".into()]);
    let y = g.node(m).outputs[0];
    g.value_mut(y).ty = Some(TensorType::known(DType::F32, &[2, 40]));
    let e = g.add_node("emb", Op::Gather(Gather { axis: 0 }), vec![Some(table), Some(ids)], &["e".into()]);
    let ev = g.node(e).outputs[0];
    g.value_mut(ev).ty = Some(TensorType::known(DType::F32, &[2, 64]));
    g.outputs = vec![y, ev];
    g
}

fn weights(g: &Graph) -> Vec<(String, DType, Vec<usize>)> {
    g.values
        .iter()
        .filter_map(|v| match &v.def {
            ValueDef::Weight(w) => Some((v.name.clone(), w.dtype, w.shape.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn matrix_weights_become_dequantized_integers_and_the_rest_stays() {
    let q = Quantization::new(Scheme::Int4, None, false).unwrap();
    let (g, summary) = quantize(&graph(), &q);
    shardc_ir::verify(&g).unwrap();
    let w = weights(&g);
    // W1 [48, 64] reduced along 64 (transB): 2 groups of 32; W2 [48, 40] along 48:
    // groups of 32 and 16.
    assert!(w.contains(&("w1:int4".into(), DType::I4, vec![48, 64])));
    assert!(w.contains(&("w1:scale".into(), DType::F32, vec![48, 2])));
    assert!(w.contains(&("w2:int4".into(), DType::I4, vec![48, 40])));
    assert!(w.contains(&("w2:scale".into(), DType::F32, vec![2, 40])));
    assert!(w.contains(&("b".into(), DType::F32, vec![48])), "biases stay");
    assert!(w.contains(&("table".into(), DType::F32, vec![10, 64])), "the embedding stays by default");
    assert!(!w.iter().any(|x| x.0 == "w1" || x.0 == "w2"), "the originals are gone: {w:?}");
    assert_eq!(summary.weights.len(), 2);
    assert_eq!(summary.bytes_before, 48 * 64 * 4 + 48 * 40 * 2);
    assert_eq!(summary.bytes_after, 48 * 64 / 2 + 48 * 2 * 4 + 48 * 40 / 2 + 2 * 40 * 4);
    // W1 is f32 as the dequantized value is; W2 (f16) is read by a cast already:
    // neither needs a cast back.
    let ops: Vec<String> = g.nodes.iter().map(|n| format!("{}:{}", n.name, n.op.name())).collect();
    assert!(!ops.iter().any(|o| o.contains(":dequantized_as")), "{ops:?}");
    let dq = g.nodes.iter().find(|n| n.name == "w1:dequantize").unwrap();
    assert!(matches!(dq.op, Op::DequantizeLinear(DequantizeLinear { axis: 1, block_size: 32, .. })));
}

#[test]
fn int8_per_channel_and_embeddings_when_asked() {
    let q = Quantization::new(Scheme::Int8, None, true).unwrap();
    let (g, summary) = quantize(&graph(), &q);
    shardc_ir::verify(&g).unwrap();
    let w = weights(&g);
    assert!(w.contains(&("w1:scale".into(), DType::F32, vec![48])), "one scale per output row of W1");
    assert!(w.contains(&("w2:scale".into(), DType::F32, vec![40])), "one per output column of W2");
    assert!(w.contains(&("table:int8".into(), DType::I8, vec![10, 64])));
    assert_eq!(summary.weights.len(), 3);
    assert_eq!(
        Quantization::new(Scheme::Int4, Some(0), false).unwrap_err(),
        "--group-size must be between 1 and 65536, got 0"
    );
    assert_eq!("int3".parse::<Scheme>().unwrap_err(), "unknown quantization `int3` (int8, int4)");
}

/// Deterministic pseudo-normal values (sum of uniforms).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f32 / (1u64 << 53) as f32
    };
    (0..n).map(|_| (0..12).map(|_| next()).sum::<f32>() - 6.0).collect()
}

/// Each element's scale and dequantized value, as ONNX's DequantizeLinear defines them.
fn dequantized(m: &QuantizedMatrix, [rows, cols]: [usize; 2], axis: usize, block: Option<usize>) -> Vec<(f32, f32)> {
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let s = match (block, axis) {
                (Some(b), 0) => m.scales[(r / b) * cols + c],
                (Some(b), _) => m.scales[r * cols.div_ceil(b) + c / b],
                (None, 0) => m.scales[r],
                (None, _) => m.scales[c],
            };
            (s, f32::from(m.codes[i]) * s)
        })
        .collect()
}

#[test]
fn quantized_matrices_dequantize_within_half_a_step() {
    let shape = [48, 40];
    let values = normal(48 * 40, 7);
    for (scheme, axis, block, worst_rel_rms) in [
        (Scheme::Int4, 1, Some(32), 0.12),
        (Scheme::Int4, 0, Some(16), 0.12),
        (Scheme::Int8, 0, None, 0.01),
        (Scheme::Int8, 1, None, 0.01),
        (Scheme::Int8, 1, Some(7), 0.01),
    ] {
        let m = quantize_matrix(&values, shape, axis, block, scheme).unwrap();
        let back = dequantized(&m, shape, axis, block);
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let err: Vec<f32> = values.iter().zip(&back).map(|(a, (_, b))| a - b).collect();
        let rel = rms(&err) / rms(&values);
        assert!(rel < worst_rel_rms, "{scheme:?} axis {axis} block {block:?}: relative rms error {rel}");
        // Every element within half a step of its own scale, or, beyond the largest
        // level (a scale below max|x| / max_level clips), at that level.
        let top = scheme.max_level();
        for (i, (a, (s, b))) in values.iter().zip(&back).enumerate() {
            let ok = if a.abs() <= top * s {
                (a - b).abs() <= 0.5 * s * (1.0 + 1e-5)
            } else {
                (b.abs() - top * s).abs() <= 1e-6 * top * s && a.signum() == b.signum()
            };
            assert!(ok, "{scheme:?} axis {axis} block {block:?}: element {i}: {a} -> {b} (scale {s})");
        }
        // The chosen scales err no more than max|x| / max_level would have.
        let [rows, cols] = shape;
        let group = |i: usize| {
            let (r, c) = (i / cols, i % cols);
            match (block, axis) {
                (Some(b), 0) => (r / b) * cols + c,
                (Some(b), _) => r * cols.div_ceil(b) + c / b,
                (None, 0) => r,
                (None, _) => c,
            }
        };
        let mut absmax = vec![0f32; rows * cols];
        for (i, a) in values.iter().enumerate() {
            absmax[group(i)] = absmax[group(i)].max(a.abs());
        }
        let plain_error: f64 = values
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let s = absmax[group(i)] / top;
                let b = if s > 0.0 { (a / s).round_ties_even().clamp(-top, top) * s } else { 0.0 };
                f64::from((a - b) * (a - b))
            })
            .sum();
        let chosen: f64 = values.iter().zip(&back).map(|(a, (_, b))| f64::from((a - b) * (a - b))).sum();
        assert!(chosen <= plain_error * (1.0 + 1e-9), "{scheme:?}: {chosen} > {plain_error}");
        assert!(m.codes.iter().all(|&c| f32::from(c).abs() <= scheme.max_level()));
        assert_eq!(m, quantize_matrix(&values, shape, axis, block, scheme).unwrap(), "deterministic");
    }
    // Two codes to a byte, low nibble first; int8 codes as bytes.
    let m = QuantizedMatrix { codes: vec![1, -2, 7], scales: vec![1.0] };
    assert_eq!(m.data_bytes(Scheme::Int4), vec![0xE1, 0x07]);
    assert_eq!(m.data_bytes(Scheme::Int8), vec![1, 0xFE, 7]);
    // All-zero groups have scale 0; non-finite values are refused.
    let zero = quantize_matrix(&[0.0; 4], [2, 2], 1, Some(2), Scheme::Int4).unwrap();
    assert!(zero.codes.iter().all(|&c| c == 0) && zero.scales.iter().all(|&s| s == 0.0));
    assert!(quantize_matrix(&[f32::NAN, 0.0], [1, 2], 1, None, Scheme::Int8).unwrap_err().contains("NaN"));
}
