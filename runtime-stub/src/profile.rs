//! Measure this host with the runtime's own kernels, run through [`Session`] on small
//! graphs as a package's graph runs: products with a weight of every stored type
//! (f32, f16, bf16, int8, int4 as shardc quantizes them) at decode and prefill row
//! counts, attention's two products of activations, and the fixed cost per node and
//! the byte rate of the other nodes; plus sustained square-product FLOP/s, the
//! bandwidth at which a decode step's product streams weights, and usable memory
//! (`MemAvailable`). Weights are written
//! to a private folder under the system's temporary one, removed afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use shardc_ir::ops::{MatMul, Op};
use shardc_ir::{Graph, ValueDef, WeightLocation};
use shardc_passes::devices::Device;
use shardc_passes::kernels::{Curve, Kernels, WEIGHT_TYPES};
use shardc_passes::quantize::{quantize, quantize_matrix, Quantization, Scheme};

use crate::kernels;
use crate::tensor::Tensor;
use crate::Session;

/// Median of repeated timings of `f` after one untimed run, seconds.
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

/// Activation rows the products are measured at (1: a decode step).
pub const ROWS: [usize; 5] = [1, 4, 16, 64, 256];

/// How thoroughly to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Every size, over weight sets larger than caches (about 20 s on a laptop core).
    Full,
    /// Rows 1 and 16 only, small weight sets, fewer repeats: seconds, figures less sure
    /// (a cache may hold the weights, so decode rates come out high).
    Quick,
}

impl Depth {
    /// `--quick` or not.
    pub fn from_quick(quick: bool) -> Depth {
        if quick {
            Depth::Quick
        } else {
            Depth::Full
        }
    }

    fn rows(self) -> &'static [usize] {
        match self {
            Depth::Full => &ROWS,
            Depth::Quick => &[1, 16],
        }
    }

    fn scaled(self, bytes: usize) -> usize {
        match self {
            Depth::Full => bytes,
            Depth::Quick => bytes / 32,
        }
    }

    fn runs(self, runs: usize) -> usize {
        match self {
            Depth::Full => runs,
            Depth::Quick => 1,
        }
    }
}
/// Reduction and output size of the measured products.
const DIM: usize = 1024;
/// Weight bytes each product set reads, so that a run streams them rather than
/// re-reading one matrix from cache.
const SET_BYTES: usize = 64 << 20;
/// Weight bytes the bandwidth is measured over: more than large caches hold.
const STREAM_BYTES: usize = 768 << 20;
/// Attention: heads, head size, and keys (the rows, when more).
const HEADS: usize = 12;
const HEAD_DIM: usize = 64;
const KEYS: usize = 256;

/// Deterministic values in [-0.05, 0.05).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::f32(ArrayD::from_shape_vec(IxDyn(shape), values(n, seed)).unwrap_or_else(|_| ArrayD::zeros(IxDyn(shape))))
}

/// A private folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("shardc-profile-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn parse(text: &str) -> Result<Graph, String> {
    shardc_ir::text::parse(text).map_err(|e| format!("profile graph: {e}"))
}

/// `copies` products `x[rows, DIM] · w_iᵀ`, each weight `DIM × DIM` of `dtype` stored
/// back to back in `file` (f16 and bf16 cast to f32 at use, as imports do).
fn product_graph(dtype: &str, copies: usize, file: &str) -> Result<Graph, String> {
    let bytes = DIM * DIM * if dtype == "f32" { 4 } else { 2 };
    let mut t = format!("graph \"profile\" {{\n  input %0 \"x\": f32[rows, {DIM}]\n");
    let (mut next, mut node) = (1, 0);
    let mut outs = Vec::new();
    for i in 0..copies {
        t += &format!("  weight %{next} \"w{i}\": {dtype}[{DIM}, {DIM}] = \"{file}\" @ {} + {bytes}\n", i * bytes);
        let mut w = next;
        next += 1;
        if dtype != "f32" {
            t += &format!("  n{node} \"c{i}\" Cast{{to=f32}}(%{w}) -> %{next} \"wf{i}\": ?\n");
            w = next;
            (next, node) = (next + 1, node + 1);
        }
        t += &format!("  n{node} \"p{i}\" Gemm{{transB=1}}(%0, %{w}, _) -> %{next} \"y{i}\": ?\n");
        outs.push(next);
        (next, node) = (next + 1, node + 1);
    }
    for o in outs {
        t += &format!("  output %{o}\n");
    }
    parse(&(t + "}\n"))
}

/// Seconds per run of `session` on `inputs` (median), and the fixed part `nodes` runs of
/// a node take, removed.
fn run_time(session: &Session, inputs: &[(&str, Tensor)], runs: usize) -> Result<f64, String> {
    let feed = || inputs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect::<Vec<_>>();
    session.run(feed()).map_err(|e| format!("profile run: {e}"))?;
    Ok(time(runs, || {
        let _ = std::hint::black_box(session.run(feed()));
    }))
}

/// FLOP/s of products with `dtype` weights at each of [`ROWS`].
fn matmul_curve(scratch: &Scratch, dtype: &str, node: f64, depth: Depth) -> Result<Curve, String> {
    let stored = match dtype {
        "int4" => DIM * DIM / 2,
        "int8" => DIM * DIM,
        "f32" => DIM * DIM * 4,
        _ => DIM * DIM * 2,
    };
    let copies = (depth.scaled(SET_BYTES) / stored).max(1);
    let graph = weights_graph(scratch, dtype, copies)?;
    let session = Session::new(graph, &scratch.0);
    let mut points = Vec::new();
    for (i, &rows) in depth.rows().iter().enumerate() {
        let x = tensor(&[rows, DIM], i as u64);
        let t = run_time(&session, &[("x", x)], depth.runs(5))?;
        let per = (t / copies as f64 - node).max(t / copies as f64 * 0.05);
        points.push((rows as f64, 2.0 * (rows * DIM * DIM) as f64 / per));
    }
    Ok(Curve(points))
}

/// [`product_graph`] with `copies` weights of type `dtype` (one matrix of [`values`]
/// repeated), written into `scratch`.
fn weights_graph(scratch: &Scratch, dtype: &str, copies: usize) -> Result<Graph, String> {
    let source = values(DIM * DIM, 7);
    let file = format!("{dtype}.bin");
    match dtype {
        "f32" | "f16" | "bf16" => {
            let one: Vec<u8> = match dtype {
                "f32" => source.iter().flat_map(|v| v.to_le_bytes()).collect(),
                "f16" => source.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                _ => source.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            };
            scratch.write(&file, &one.repeat(copies))?;
            product_graph(dtype, copies, &file)
        }
        _ => quantized_graph(scratch, dtype, copies, &source, &file),
    }
}

/// The f32 product graph quantized as `shardc compile --quantize` does it, its data and
/// scales written to `file`.
fn quantized_graph(scratch: &Scratch, dtype: &str, copies: usize, source: &[f32], file: &str) -> Result<Graph, String> {
    let scheme: Scheme = dtype.parse()?;
    let q = Quantization::new(scheme, None, false)?;
    let (mut graph, summary) = quantize(&product_graph("f32", copies, "unused.bin")?, &q);
    let first = summary.weights.first().ok_or("profile graph: nothing quantized")?;
    let m = quantize_matrix(source, [DIM, DIM], first.axis, first.block, scheme)?;
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

/// FLOP/s of attention's two products (scores, then context) at each of [`ROWS`].
fn attention_curve(node: f64, depth: Depth) -> Result<Curve, String> {
    let graph = parse(&format!(
        "graph \"attention\" {{\n  input %0 \"q\": f32[1, {HEADS}, rows, {HEAD_DIM}]\n  input %1 \"kt\": f32[1, {HEADS}, \
         {HEAD_DIM}, keys]\n  input %2 \"v\": f32[1, {HEADS}, keys, {HEAD_DIM}]\n  n0 \"s\" MatMul(%0, %1) -> %3 \"s\": ?\n  \
         n1 \"c\" MatMul(%3, %2) -> %4 \"c\": ?\n  output %4\n}}\n"
    ))?;
    let session = Session::new(graph, Path::new("."));
    let mut points = Vec::new();
    for &rows in depth.rows() {
        let keys = KEYS.max(rows);
        let inputs = [
            ("q", tensor(&[1, HEADS, rows, HEAD_DIM], 1)),
            ("kt", tensor(&[1, HEADS, HEAD_DIM, keys], 2)),
            ("v", tensor(&[1, HEADS, keys, HEAD_DIM], 3)),
        ];
        let t = run_time(&session, &inputs, depth.runs(7))?;
        let flops = 4.0 * (HEADS * rows * HEAD_DIM * keys) as f64;
        points.push((rows as f64, flops / (t - 2.0 * node).max(t * 0.05)));
    }
    Ok(Curve(points))
}

/// The fixed cost of a node and the byte rate of element-wise and movement nodes: a
/// chain of seven such nodes timed over several sizes, fitted as `7·node + bytes/rate`
/// (bytes read and written, as the cost model counts them).
fn stream_fit(depth: Depth) -> Result<(f64, f64), String> {
    let graph = parse(
        "graph \"stream\" {\n  input %0 \"x\": f32[rows, 768]\n  input %1 \"y\": f32[rows, 768]\n  \
         n0 \"a\" Add(%0, %1) -> %2 \"a\": ?\n  n1 \"m\" Mul(%2, %1) -> %3 \"m\": ?\n  \
         n2 \"t\" Transpose{perm=[1, 0]}(%3) -> %4 \"t\": ?\n  n3 \"u\" Transpose{perm=[1, 0]}(%4) -> %5 \"u\": ?\n  \
         n4 \"s\" Softmax(%5) -> %6 \"s\": ?\n  n5 \"g\" Sigmoid(%6) -> %7 \"g\": ?\n  \
         n6 \"o\" Mul(%7, %6) -> %8 \"o\": ?\n  output %8\n}\n",
    )?;
    let session = Session::new(graph, Path::new("."));
    let mut points = Vec::new();
    for (i, rows) in [1usize, 4, 16, 64, 256].into_iter().enumerate() {
        let inputs = [("x", tensor(&[rows, 768], i as u64)), ("y", tensor(&[rows, 768], 9))];
        let t = run_time(&session, &inputs, depth.runs(9))?;
        // Add, Mul and the last Mul read two and write one; the rest read one, write one.
        points.push((17.0 * (rows * 768 * 4) as f64, t));
    }
    // Least squares t = a + b·bytes in relative error (weights 1/t²), so that the small
    // sizes a decode step runs count as much as the large ones.
    let w = |p: &(f64, f64)| 1.0 / (p.1 * p.1);
    let sw: f64 = points.iter().map(w).sum();
    let mx = points.iter().map(|p| w(p) * p.0).sum::<f64>() / sw;
    let my = points.iter().map(|p| w(p) * p.1).sum::<f64>() / sw;
    let sxy: f64 = points.iter().map(|p| w(p) * (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| w(p) * (p.0 - mx).powi(2)).sum();
    let slope = sxy / sxx;
    if slope.is_nan() || slope <= 0.0 {
        return Err(format!("the element-wise timings do not grow with size ({points:?})"));
    }
    let intercept = (my - slope * mx).max(0.0);
    Ok((intercept / 7.0, 1.0 / slope))
}

/// Bytes per second a decode step's product reads weights at, over a set of weights
/// larger than a cache holds ([`STREAM_BYTES`], or an eighth of the memory available if
/// less): the memory bandwidth a model's decode steps see.
fn weight_bandwidth(scratch: &Scratch, memory: f64, depth: Depth) -> Result<f64, String> {
    let one = DIM * DIM * 4;
    let copies = (depth.scaled(STREAM_BYTES).min((memory / 8.0) as usize) / one).max(1);
    let matrix: Vec<u8> = values(DIM * DIM, 11).iter().flat_map(|v| v.to_le_bytes()).collect();
    scratch.write("stream.bin", &matrix.repeat(copies))?;
    let session = Session::new(product_graph("f32", copies, "stream.bin")?, &scratch.0);
    let t = run_time(&session, &[("x", tensor(&[1, DIM], 5))], depth.runs(5))?;
    std::fs::remove_file(scratch.0.join("stream.bin")).map_err(|e| format!("cannot remove stream.bin: {e}"))?;
    Ok((copies * one) as f64 / t)
}

/// What the runtime's kernels reach on this host.
fn kernels(scratch: &Scratch, depth: Depth) -> Result<Kernels, String> {
    let (node, stream) = stream_fit(depth)?;
    let mut matmul = BTreeMap::new();
    for dtype in WEIGHT_TYPES {
        matmul.insert(dtype.to_string(), matmul_curve(scratch, dtype, node, depth)?);
    }
    Ok(Kernels { node, stream, matmul, attention: attention_curve(node, depth)? })
}

/// Measure this host.
pub fn measure(name: &str, depth: Depth) -> Result<Device, String> {
    let n = 512;
    let a = Tensor::f32(ArrayD::from_elem(IxDyn(&[n, n]), 0.5));
    let b = Tensor::f32(ArrayD::from_elem(IxDyn(&[n, n]), 0.25));
    let op = Op::MatMul(MatMul {});
    let secs = time(depth.runs(5), || {
        let _ = std::hint::black_box(kernels::run(&op, &[Some(&a), Some(&b)], 1));
    });
    let flops = 2.0 * (n * n * n) as f64 / secs;
    let memory = available_memory();
    let scratch = Scratch::new()?;
    let bandwidth = weight_bandwidth(&scratch, memory, depth)?;
    Ok(Device {
        name: name.to_string(),
        memory,
        flops: BTreeMap::from([("*".to_string(), flops)]),
        bandwidth,
        kernels: Some(kernels(&scratch, depth)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The measured graphs compute what they stand for: every weight type's product
    /// equals the f32 one within its rounding.
    #[test]
    fn every_weight_type_computes_the_product() {
        let scratch = Scratch::new().unwrap();
        let x = tensor(&[2, DIM], 3);
        let product = |dtype: &str| -> Vec<f32> {
            let session = Session::new(weights_graph(&scratch, dtype, 2).unwrap(), &scratch.0);
            let out = session.run(vec![("x".to_string(), x.clone())]).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].1.to_f32_vec(), out[1].1.to_f32_vec(), "{dtype}: the copies hold the same matrix");
            out[0].1.to_f32_vec()
        };
        let exact = product("f32");
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3);
        for (dtype, tolerance) in [("f16", 2e-3), ("bf16", 1e-2), ("int8", 2e-2), ("int4", 0.25)] {
            let got = product(dtype);
            let worst = got.iter().zip(&exact).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= tolerance * scale && worst > 0.0, "{dtype}: off by {worst} of {scale}");
        }
        let dir = scratch.0.clone();
        drop(scratch);
        assert!(!dir.exists(), "the scratch folder is removed");
    }
}
