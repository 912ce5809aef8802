//! What the runtime's own kernels reach on a device, per kind of work and size (the
//! `[device.kernels]` table `shardc profile` writes), and node times from it.
//!
//! ```toml
//! [device.kernels]
//! node = "2.0 us"            # fixed cost of running one node
//! stream = "6.1 GB/s"        # every other node: bytes read and written per second
//! attention = { 1 = "1.2 GFLOP/s", 16 = "9.0 GFLOP/s", 128 = "21 GFLOP/s" }
//! [device.kernels.matmul]    # products with a weight, per stored weight type
//! f32 = { 1 = "3.1 GFLOP/s", 16 = "40 GFLOP/s", 128 = "85 GFLOP/s" }
//! int8 = { 1 = "6.0 GFLOP/s", 16 = "35 GFLOP/s", 128 = "60 GFLOP/s" }
//! [[device.kernels.product]] # one product of a model (`shardc profile --model`)
//! op = "gemm"
//! transposed = true          # the weight is stored [n, k]
//! k = 768
//! n = 2304
//! weight = "f32"
//! rates = { 1 = "4.2 GFLOP/s", 16 = "31 GFLOP/s" }
//! ```
//!
//! The keys of `matmul.<type>` and `attention` are rows: the activation rows a product
//! runs (1 for a decode step, the prompt's length for a prefill). Between measured
//! rows the rate is interpolated in log(rows); outside them the nearest is used. A
//! table lists the weight types its device was measured with; a model whose products
//! read another type is refused naming the missing key, never given another's rate.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use shardc_ir::{DType, Graph, Op, ValueDef, ValueId};

use crate::cost::NodeCost;
use crate::quantity::{self, Kind};

/// The weight types the matmul table is keyed by.
pub const WEIGHT_TYPES: [&str; 5] = ["f32", "f16", "bf16", "int8", "int4"];

/// Rates at measured sizes: (rows, FLOP/s), rows increasing.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve(pub Vec<(f64, f64)>);

impl Curve {
    /// The rate at `rows`: interpolated in log(rows), the nearest end outside.
    pub fn rate(&self, rows: f64) -> f64 {
        let p = &self.0;
        let (Some(first), Some(last)) = (p.first(), p.last()) else { return 0.0 };
        if rows <= first.0 {
            return first.1;
        }
        if rows >= last.0 {
            return last.1;
        }
        let i = p.partition_point(|q| q.0 <= rows);
        let ((r0, v0), (r1, v1)) = (p[i - 1], p[i]);
        let t = (rows.ln() - r0.ln()) / (r1.ln() - r0.ln());
        v0 + t * (v1 - v0)
    }
}

/// The shape of one product with a weight, as a model's node runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductShape {
    /// `MatMul` (else `Gemm`).
    pub matmul: bool,
    /// The weight is stored `[n, k]` (`Gemm` with `transB`), else `[k, n]`.
    pub transposed: bool,
    /// Reduction and output sizes.
    pub k: u64,
    pub n: u64,
}

/// What the runtime's kernels reach on one device.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernels {
    /// Seconds every node run costs besides its work.
    pub node: f64,
    /// Bytes per second of nodes that are neither products nor attention.
    pub stream: f64,
    /// Products of an activation with a weight, per stored weight type.
    pub matmul: BTreeMap<String, Curve>,
    /// Products of two activations (attention scores and context), and `Attention`.
    pub attention: Curve,
    /// Products of one exact shape and weight type (`shardc profile --model` measures a
    /// model's own): used before `matmul` where a node's product matches.
    pub products: BTreeMap<(String, ProductShape), Curve>,
}

/// The work of one node, as the kernel table prices it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Runs once at load (a weight's cast or dequantization): free per step.
    Load,
    /// A product with a weight stored as `weight` (a [`WEIGHT_TYPES`] name, or another
    /// dtype's), of `shape` when the weight is a matrix.
    Matmul {
        weight: &'static str,
        rows: f64,
        shape: Option<ProductShape>,
    },
    Attention {
        rows: f64,
    },
    Stream,
}

impl Kernels {
    /// Seconds of one node; `None` when the table has no rate for its weight type. The
    /// product rates were measured with the weights in memory, not in a cache, as a
    /// model's steps find them (one row: the rate weights stream at).
    pub fn time(&self, work: Work, cost: &NodeCost) -> Option<f64> {
        Some(match work {
            Work::Load => 0.0,
            Work::Matmul { weight, rows, shape } => {
                let exact = shape.and_then(|s| self.products.get(&(weight.to_string(), s)));
                let curve = match exact {
                    Some(c) => c,
                    None => self.matmul.get(weight)?,
                };
                self.node + cost.flops / curve.rate(rows)
            }
            Work::Attention { rows } => self.node + cost.flops / self.attention.rate(rows),
            // Never faster than its FLOPs at the best rate the table states (an Einsum
            // with a weight, say, is no element-wise node).
            Work::Stream => self.node + (cost.bytes / self.stream).max(cost.flops / self.peak()),
        })
    }

    /// The highest rate a generic product or attention reached.
    fn peak(&self) -> f64 {
        let curves = self.matmul.values().chain([&self.attention]);
        curves.flat_map(|c| c.0.iter().map(|p| p.1)).fold(0.0, f64::max)
    }
}

/// The stored dtype a [`WEIGHT_TYPES`] name stands for (`int8`: i8, `int4`: i4).
pub fn weight_dtype(name: &str) -> Option<DType> {
    match name {
        "int8" => Some(DType::I8),
        "int4" => Some(DType::I4),
        "f32" | "f16" | "bf16" => name.parse().ok(),
        _ => None,
    }
}

/// The name the matmul table gives a stored weight dtype.
pub fn weight_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I8 | DType::U8 => "int8",
        DType::I4 | DType::U4 => "int4",
        DType::F32 => "f32",
        other => other.name(),
    }
}

/// The stored dtype and shape behind a value computed from weights alone: the weight
/// itself, or for a load-time node (a cast, a dequantization) its largest weight input's.
fn stored(graph: &Graph, v: ValueId, depth: usize) -> Option<(DType, Vec<u64>)> {
    let value = graph.value(v);
    match &value.def {
        ValueDef::Weight(w) => Some((w.dtype, w.shape.iter().map(|&d| d as u64).collect())),
        ValueDef::Const(_) => value
            .ty
            .as_ref()
            .map(|t| (t.dtype, t.shape.iter().filter_map(|d| d.as_known()).map(|d| d as u64).collect())),
        ValueDef::Node(n) if depth < 8 => {
            let node = graph.node(*n);
            let widest = node.inputs.iter().flatten().copied().max_by_key(|&i| match &graph.value(i).def {
                ValueDef::Weight(w) => w.byte_len(),
                _ => 0,
            })?;
            stored(graph, widest, depth + 1)
        }
        _ => None,
    }
}

/// The distinct products `graph` runs: each shape with the type of weight it reads.
pub fn product_shapes(graph: &Graph) -> Vec<(String, ProductShape)> {
    let mut shapes: Vec<(String, ProductShape)> = works(graph, &HashMap::new())
        .into_iter()
        .filter_map(|w| match w {
            Work::Matmul { weight, shape: Some(shape), .. } => Some((weight.to_string(), shape)),
            _ => None,
        })
        .collect();
    shapes.sort_unstable();
    shapes.dedup();
    shapes
}

/// The work of every node under `bindings` (dims the workload does not size count 0).
pub fn works(graph: &Graph, bindings: &HashMap<String, i64>) -> Vec<Work> {
    let consts = graph.constants();
    let dims = |v: Option<ValueId>| -> Vec<f64> {
        v.and_then(|v| graph.value(v).ty.as_ref())
            .map(|t| t.shape.iter().map(|d| d.eval(bindings).unwrap_or(0) as f64).collect())
            .unwrap_or_default()
    };
    graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            if consts.node[i] {
                return Work::Load;
            }
            let input = |s: usize| node.inputs.get(s).copied().flatten();
            let out = dims(node.outputs.first().copied());
            let elements: f64 = out.iter().product();
            let rows_of = |axis_from_end: usize| {
                let d = out.len().checked_sub(axis_from_end).and_then(|a| out.get(a)).copied().unwrap_or(1.0);
                if d > 0.0 {
                    elements / d
                } else {
                    0.0
                }
            };
            match &node.op {
                Op::MatMul(_) | Op::Gemm(_) | Op::MatMulInteger(_) => {
                    let constant = |s: usize| input(s).is_some_and(|v| consts.value[v.index()]);
                    let weight = if constant(1) {
                        input(1)
                    } else if constant(0) {
                        input(0)
                    } else {
                        let rows = out.len().checked_sub(2).and_then(|a| out.get(a)).copied().unwrap_or(1.0);
                        return Work::Attention { rows };
                    };
                    let (dtype, stored_shape) =
                        weight.and_then(|w| stored(graph, w, 0)).unwrap_or((DType::F32, vec![]));
                    // Rows: the activation's, the product's other side being the weight's.
                    let rows = if constant(1) { rows_of(1) } else { rows_of(2) };
                    let shape = match (&node.op, constant(1), stored_shape.as_slice()) {
                        (Op::Gemm(g), true, &[a, b]) if g.transA == 0 => {
                            let transposed = g.transB != 0;
                            let (k, n) = if transposed { (b, a) } else { (a, b) };
                            Some(ProductShape { matmul: false, transposed, k, n })
                        }
                        (Op::MatMul(_), true, &[k, n]) => Some(ProductShape { matmul: true, transposed: false, k, n }),
                        _ => None,
                    };
                    Work::Matmul { weight: weight_type(dtype), rows, shape }
                }
                Op::Attention(_) => {
                    let q = dims(input(0));
                    Work::Attention { rows: if q.len() == 4 { q[2] } else { q.get(1).copied().unwrap_or(1.0) } }
                }
                _ => Work::Stream,
            }
        })
        .collect()
}

/// Every device with a kernel table states a rate for each weight type `graph`'s
/// products read: a missing one is refused naming the device and key.
pub fn check(profile: &crate::devices::Profile, graph: &Graph) -> Result<(), String> {
    let mut used: Vec<&str> = works(graph, &HashMap::new())
        .into_iter()
        .filter_map(|w| match w {
            Work::Matmul { weight, .. } => Some(weight),
            _ => None,
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    for d in &profile.devices {
        let Some(k) = &d.kernels else { continue };
        if let Some(missing) = used.iter().find(|t| !k.matmul.contains_key(**t)) {
            let listed: Vec<&str> = k.matmul.keys().map(String::as_str).collect();
            return Err(format!(
                "device `{}`: the model's products read {missing} weights, and its kernel table states matmul rates \
                 for {} only: add `kernels.matmul.{missing}` (`shardc profile` on the device measures it)",
                d.name,
                listed.join(", ")
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKernels {
    node: String,
    stream: String,
    attention: BTreeMap<String, String>,
    matmul: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    product: Vec<RawProduct>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProduct {
    op: String,
    transposed: bool,
    k: u64,
    n: u64,
    weight: String,
    rates: BTreeMap<String, String>,
}

/// Largest reduction or output size of a measured product.
pub const MAX_PRODUCT_DIM: u64 = 1 << 24;
/// Largest row count a rate is given at.
pub const MAX_ROWS: u64 = 1 << 24;

fn curve(raw: &BTreeMap<String, String>, what: &str) -> Result<Curve, String> {
    if raw.is_empty() {
        return Err(format!("{what}: give rates at one or more rows (`{{ 1 = \"3 GFLOP/s\" }}`)"));
    }
    let mut points = Vec::with_capacity(raw.len());
    for (rows, rate) in raw {
        let r: u64 = rows
            .parse()
            .ok()
            .filter(|r| (1..=MAX_ROWS).contains(r))
            .ok_or_else(|| format!("{what}: `{rows}` is not a row count (1 to {MAX_ROWS})"))?;
        let v = quantity::parse(rate, Kind::Flops).map_err(|m| format!("{what}.{rows}: {m}"))?;
        if v <= 0.0 {
            return Err(format!("{what}.{rows} must be positive, is `{rate}`"));
        }
        points.push((r as f64, v));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Curve(points))
}

impl RawKernels {
    /// Checked figures; `what` names the device in errors.
    pub(crate) fn parse(&self, what: &str) -> Result<Kernels, String> {
        let positive = |text: &str, kind: Kind, key: &str| -> Result<f64, String> {
            let v = quantity::parse(text, kind).map_err(|m| format!("{what}: kernels.{key}: {m}"))?;
            if v.is_nan() || v < 0.0 || (kind != Kind::Duration && v == 0.0) {
                return Err(format!("{what}: kernels.{key} must be positive, is `{text}`"));
            }
            Ok(v)
        };
        let mut matmul = BTreeMap::new();
        for (ty, raw) in &self.matmul {
            if !WEIGHT_TYPES.contains(&ty.as_str()) {
                return Err(format!(
                    "{what}: kernels.matmul.{ty}: not a weight type (one of {})",
                    WEIGHT_TYPES.join(", ")
                ));
            }
            matmul.insert(ty.clone(), curve(raw, &format!("{what}: kernels.matmul.{ty}"))?);
        }
        let mut products = BTreeMap::new();
        for p in &self.product {
            let key = format!("kernels.product ({} {}×{}, {})", p.op, p.k, p.n, p.weight);
            if !WEIGHT_TYPES.contains(&p.weight.as_str()) {
                return Err(format!(
                    "{what}: {key}: `{}` is not a weight type ({})",
                    p.weight,
                    WEIGHT_TYPES.join(", ")
                ));
            }
            let matmul = match p.op.as_str() {
                "matmul" => true,
                "gemm" => false,
                other => return Err(format!("{what}: {key}: op `{other}` is neither `gemm` nor `matmul`")),
            };
            if matmul && p.transposed {
                return Err(format!("{what}: {key}: a `matmul` weight is never transposed"));
            }
            if !(1..=MAX_PRODUCT_DIM).contains(&p.k) || !(1..=MAX_PRODUCT_DIM).contains(&p.n) {
                return Err(format!("{what}: {key}: k and n are 1 to {MAX_PRODUCT_DIM}"));
            }
            let shape = ProductShape { matmul, transposed: p.transposed, k: p.k, n: p.n };
            let curve = curve(&p.rates, &format!("{what}: {key}: rates"))?;
            if products.insert((p.weight.clone(), shape), curve).is_some() {
                return Err(format!("{what}: {key} is listed twice"));
            }
        }
        Ok(Kernels {
            products,
            node: positive(&self.node, Kind::Duration, "node")?,
            stream: positive(&self.stream, Kind::Bandwidth, "stream")?,
            matmul,
            attention: curve(&self.attention, &format!("{what}: kernels.attention"))?,
        })
    }
}

fn curve_toml(c: &Curve) -> String {
    let parts: Vec<String> =
        c.0.iter().map(|(r, v)| format!("{r} = \"{}\"", quantity::text(*v, Kind::Flops))).collect();
    format!("{{ {} }}", parts.join(", "))
}

/// The `[device.kernels]` tables of a device entry.
pub fn kernels_toml(k: &Kernels) -> String {
    let mut out = String::from("[device.kernels]\n");
    out.push_str(&format!("node = \"{}\"\n", quantity::text(k.node, Kind::Duration)));
    out.push_str(&format!("stream = \"{}\"\n", quantity::text(k.stream, Kind::Bandwidth)));
    out.push_str(&format!("attention = {}\n", curve_toml(&k.attention)));
    out.push_str("[device.kernels.matmul]\n");
    for (ty, c) in &k.matmul {
        out.push_str(&format!("{ty} = {}\n", curve_toml(c)));
    }
    for ((ty, p), c) in &k.products {
        out.push_str("[[device.kernels.product]]\n");
        let op = if p.matmul { "matmul" } else { "gemm" };
        out.push_str(&format!("op = \"{op}\"\ntransposed = {}\nk = {}\nn = {}\n", p.transposed, p.k, p.n));
        out.push_str(&format!("weight = \"{ty}\"\nrates = {}\n", curve_toml(c)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_interpolate_in_log_rows_and_hold_outside() {
        let c = Curve(vec![(1.0, 2e9), (16.0, 10e9), (256.0, 50e9)]);
        assert_eq!(c.rate(0.5), 2e9);
        assert_eq!(c.rate(1.0), 2e9);
        assert!((c.rate(4.0) - 6e9).abs() < 1e-3);
        assert!((c.rate(64.0) - 30e9).abs() < 1e-3);
        assert_eq!(c.rate(1000.0), 50e9);
    }

    #[test]
    fn no_node_outruns_the_tables_best_rate() {
        let k = Kernels {
            node: 0.0,
            stream: 1e15,
            matmul: BTreeMap::from([("f32".to_string(), Curve(vec![(1.0, 1e8), (256.0, 2e9)]))]),
            attention: Curve(vec![(1.0, 1e9)]),
            products: BTreeMap::new(),
        };
        let heavy = NodeCost { flops: 4e9, bytes: 1e6 };
        assert_eq!(k.time(Work::Stream, &heavy), Some(2.0), "an einsum's FLOPs at 2 GFLOP/s");
        let light = NodeCost { flops: 0.0, bytes: 1e15 };
        assert_eq!(k.time(Work::Stream, &light), Some(1.0));
        let product = Work::Matmul { weight: "int4", rows: 1.0, shape: None };
        assert_eq!(k.time(product, &heavy), None, "no rate for int4");
    }
}
