//! The graphs a profile times: products with a weight of each stored type, written as
//! a model's package holds them (f16/bf16 cast at use, int8/int4 quantized as `shardc
//! compile --quantize` does).

use shardc_ir::{Graph, ValueDef, WeightLocation};
use shardc_passes::kernels::{weight_dtype, ProductShape};
use shardc_passes::quantize::{quantize, quantize_matrix, Quantization, Scheme};

use super::{parse, values, Scratch, DIM};

/// The products measured for every weight type: `x[rows, DIM] · wᵀ`, `w` `DIM × DIM`.
pub const GENERIC: ProductShape = ProductShape { matmul: false, transposed: true, k: DIM as u64, n: DIM as u64 };

/// Bytes of one `shape` weight stored as `dtype` (a [`WEIGHT_TYPES`] name; its scales
/// not counted).
///
/// [`WEIGHT_TYPES`]: shardc_passes::kernels::WEIGHT_TYPES
pub(super) fn stored_bytes(dtype: &str, shape: ProductShape) -> usize {
    let stored = weight_dtype(dtype).unwrap_or(shardc_ir::DType::F32);
    stored.byte_len(shape.k * shape.n).unwrap_or(u64::MAX) as usize
}

/// The scratch file [`weights_graph`] writes `dtype` weights to.
pub(super) fn weight_file(dtype: &str) -> String {
    format!("{dtype}.bin")
}

/// `copies` products of `shape` (`x[rows, k]` by a weight), each weight of `dtype`
/// stored back to back in `file` (f16 and bf16 cast to f32 at use, as imports do).
fn product_graph(dtype: &str, shape: ProductShape, copies: usize, file: &str) -> Result<Graph, String> {
    let bytes = stored_bytes(dtype, shape);
    let ProductShape { k, n, .. } = shape;
    let (stored, op) = match (shape.matmul, shape.transposed) {
        (true, _) => (format!("[{k}, {n}]"), "MatMul(%0, %W)"),
        (false, true) => (format!("[{n}, {k}]"), "Gemm{transB=1}(%0, %W, _)"),
        (false, false) => (format!("[{k}, {n}]"), "Gemm(%0, %W, _)"),
    };
    let mut t = format!("graph \"profile\" {{\n  input %0 \"x\": f32[rows, {k}]\n");
    let (mut next, mut node) = (1, 0);
    let mut outs = Vec::new();
    for i in 0..copies {
        t += &format!("  weight %{next} \"w{i}\": {dtype}{stored} = \"{file}\" @ {} + {bytes}\n", i * bytes);
        let mut w = next;
        next += 1;
        if dtype != "f32" {
            t += &format!("  n{node} \"c{i}\" Cast{{to=f32}}(%{w}) -> %{next} \"wf{i}\": ?\n");
            w = next;
            (next, node) = (next + 1, node + 1);
        }
        let op = op.replace("%W", &format!("%{w}"));
        t += &format!("  n{node} \"p{i}\" {op} -> %{next} \"y{i}\": ?\n");
        outs.push(next);
        (next, node) = (next + 1, node + 1);
    }
    for o in outs {
        t += &format!("  output %{o}\n");
    }
    parse(&(t + "}\n"))
}

/// [`product_graph`] with `copies` weights of type `dtype` (one matrix of [`values`]
/// repeated), written into `scratch`.
pub(super) fn weights_graph(
    scratch: &Scratch,
    dtype: &str,
    shape: ProductShape,
    copies: usize,
) -> Result<Graph, String> {
    let source = values((shape.k * shape.n) as usize, 7);
    let file = weight_file(dtype);
    match dtype {
        "f32" | "f16" | "bf16" => {
            let one: Vec<u8> = match dtype {
                "f32" => source.iter().flat_map(|v| v.to_le_bytes()).collect(),
                "f16" => source.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                _ => source.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            };
            scratch.write(&file, &one.repeat(copies))?;
            product_graph(dtype, shape, copies, &file)
        }
        _ => quantized_graph(scratch, dtype, shape, copies, &source, &file),
    }
}

/// The f32 product graph quantized as `shardc compile --quantize` does it, its data and
/// scales written to `file`.
fn quantized_graph(
    scratch: &Scratch,
    dtype: &str,
    shape: ProductShape,
    copies: usize,
    source: &[f32],
    file: &str,
) -> Result<Graph, String> {
    let scheme: Scheme = dtype.parse()?;
    let q = Quantization::new(scheme, None, false)?;
    let (mut graph, summary) = quantize(&product_graph("f32", shape, copies, "unused.bin")?, &q);
    let first = summary.weights.first().ok_or("profile graph: nothing quantized")?;
    let stored = [first.shape[0], first.shape[1]];
    let m = quantize_matrix(source, stored, first.axis, first.block, scheme)?;
    let (data, scales) = (m.data_bytes(scheme), m.scale_bytes());
    let mut bytes = Vec::with_capacity(copies * (data.len() + scales.len()));
    for w in &summary.weights {
        for (name, part) in [(&w.data, &data), (&w.scale, &scales)] {
            let v = graph.value_by_name(name).ok_or("profile graph: a quantized weight is missing")?;
            if let ValueDef::Weight(r) = &mut graph.value_mut(v).def {
                r.location = Some(WeightLocation {
                    file: file.to_string(),
                    offset: bytes.len() as u64,
                    length: part.len() as u64,
                });
            }
            bytes.extend_from_slice(part);
        }
    }
    scratch.write(file, &bytes)?;
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::super::{tensor, Scratch};
    use super::*;
    use crate::Session;

    /// The measured graphs compute what they stand for: every layout's product equals
    /// one worked out here, and every weight type's the f32 one within its rounding.
    #[test]
    fn every_weight_type_and_layout_computes_the_product() {
        let scratch = Scratch::new().unwrap();
        for (matmul, transposed) in [(false, true), (false, false), (true, false)] {
            let shape = ProductShape { matmul, transposed, k: 96, n: 64 };
            let (k, n) = (96, 64);
            let x = tensor(&[2, k], 3);
            let xs = x.to_f32_vec();
            let w = values(k * n, 7);
            let expected: Vec<f32> = (0..2 * n)
                .map(|o| {
                    let (r, j) = (o / n, o % n);
                    (0..k).map(|i| xs[r * k + i] * if transposed { w[j * k + i] } else { w[i * n + j] }).sum()
                })
                .collect();
            let product = |dtype: &str| -> Vec<f32> {
                let session = Session::new(weights_graph(&scratch, dtype, shape, 2).unwrap(), &scratch.0);
                let out = session.run(vec![("x".to_string(), x.clone())]).unwrap();
                assert_eq!(out.len(), 2);
                assert_eq!(out[0].1.to_f32_vec(), out[1].1.to_f32_vec(), "{dtype}: the copies hold the same matrix");
                out[0].1.to_f32_vec()
            };
            let exact = product("f32");
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let off = |got: &[f32]| got.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(scale > 1e-3 && off(&exact) <= 1e-5 * scale.max(1.0), "{shape:?}: {}", off(&exact));
            for (dtype, tolerance) in [("f16", 2e-3), ("bf16", 1e-2), ("int8", 2e-2), ("int4", 0.25)] {
                let worst = off(&product(dtype));
                assert!(worst <= tolerance * scale && worst > 0.0, "{shape:?} {dtype}: off by {worst} of {scale}");
            }
        }
        let dir = scratch.0.clone();
        drop(scratch);
        assert!(!dir.exists(), "the scratch folder is removed");
    }
}
