//! Measure this host with the runtime's own kernels, run through [`Session`] on small
//! graphs as a package's graph runs: products with a weight of every stored type
//! (f32, f16, bf16, int8, int4 as shardc quantizes them) at decode and prefill row
//! counts, with the caches flushed before each timed run (a model's step reads more
//! weights than caches hold), and optionally a model's own product shapes; attention's
//! two products of activations; the fixed cost per node and the byte rate of the other
//! nodes; plus sustained square-product FLOP/s, the bandwidth at which a decode step's
//! product streams weights (for profiles read without the kernel table), and usable
//! memory (`MemAvailable`). Weights are written to a private folder under the system's
//! temporary one, removed afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use shardc_ir::ops::{MatMul, Op};
use shardc_ir::Graph;
use shardc_passes::devices::Device;
use shardc_passes::kernels::{Curve, Kernels, ProductShape, WEIGHT_TYPES};

mod graphs;
pub mod step;

use crate::kernels;
use crate::tensor::Tensor;
use crate::Session;
pub use graphs::GENERIC;
use graphs::{stored_bytes, weight_file, weights_graph};

/// Median of `runs` timings of `f` after one untimed run, seconds; each run after the
/// caches were flushed when `evict` is given.
fn time(runs: usize, mut evict: Option<&mut Evict>, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs.max(1))
            .map(|_| {
                if let Some(e) = evict.as_deref_mut() {
                    e.run();
                }
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// The median of timings (the upper one of an even count; 0 for none).
fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(0.0)
}

/// Bytes of memory available now (`MemAvailable`; 0 when unknown).
pub fn available_memory() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib * 1024.0)
}

/// Activation rows the products are measured at (1: a decode step).
pub const ROWS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

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

    /// The row counts products are measured at.
    pub fn rows(self) -> &'static [usize] {
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

    /// `runs` timed runs, or one for a quick profile.
    pub fn runs(self, runs: usize) -> usize {
        match self {
            Depth::Full => runs,
            Depth::Quick => 1,
        }
    }
}
/// Reduction and output size of the measured products.
const DIM: usize = 1024;
/// Weight bytes each measured run reads at least (copies of one matrix), so that a run
/// is long enough to time.
const SET_BYTES: usize = 16 << 20;
/// Weight bytes the bandwidth is measured over.
const BANDWIDTH_BYTES: usize = 128 << 20;
/// Most elements of one measured product's weight (a 256k-token head of 4096).
const MAX_PRODUCT_ELEMENTS: u64 = 1 << 30;
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

/// A buffer larger than this host's caches, read through before each timed run so
/// that a run finds its weights in memory, not in a cache, as a model's steps do (a
/// model reads every weight once per step, more than caches hold).
struct Evict(Vec<u8>);

impl Evict {
    /// Twice the largest cache `/sys` reports (64 MiB when it reports none), within an
    /// eighth of the memory available; a quick profile uses a 32nd of that.
    fn new(memory: f64, depth: Depth) -> Evict {
        let largest = (0..8)
            .filter_map(|i| {
                let text = std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size")).ok()?;
                let t = text.trim();
                let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
                let n: usize = n.parse().ok()?;
                Some(match unit {
                    "K" => n << 10,
                    "M" => n << 20,
                    _ => n,
                })
            })
            .max()
            .unwrap_or(32 << 20);
        let bytes = depth.scaled(2 * largest).min((memory / 8.0) as usize).max(1 << 20);
        Evict(vec![1u8; bytes])
    }

    fn run(&mut self) {
        // One read per cache line: the lines come in and the weights' lines leave,
        // with nothing dirty left to write back during the timed run.
        let mut sum = 0u8;
        for i in (0..self.0.len()).step_by(64) {
            sum = sum.wrapping_add(self.0[i]);
        }
        std::hint::black_box(sum);
    }
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

    /// Write `name` and wait until it is on disk, so that no write-back runs beside a
    /// timed run.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.0.join(name);
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut f = std::fs::File::create(&path).map_err(fail)?;
        std::io::Write::write_all(&mut f, bytes).map_err(fail)?;
        f.sync_all().map_err(fail)
    }

    fn remove(&self, name: &str) -> Result<(), String> {
        let path = self.0.join(name);
        std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))
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

/// Seconds per run of `session` on `inputs` (median of `runs` after one untimed run),
/// each run after the caches were flushed when `evict` is given.
fn run_time(
    session: &Session,
    inputs: &[(&str, Tensor)],
    runs: usize,
    evict: Option<&mut Evict>,
) -> Result<f64, String> {
    let feed = || inputs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect::<Vec<_>>();
    session.run(feed()).map_err(|e| format!("profile run: {e}"))?;
    Ok(time(runs, evict, || {
        let _ = std::hint::black_box(session.run(feed()));
    }))
}

/// FLOP/s of products of `shape` with `dtype` weights at each of the depth's rows, the
/// weights read from memory (caches flushed before each run).
fn product_curve(
    scratch: &Scratch,
    evict: &mut Evict,
    dtype: &str,
    shape: ProductShape,
    node: f64,
    depth: Depth,
) -> Result<Curve, String> {
    let copies = (depth.scaled(SET_BYTES) / stored_bytes(dtype, shape)).max(1);
    let graph = weights_graph(scratch, dtype, shape, copies)?;
    let session = Session::new(graph, &scratch.0);
    let mut points = Vec::new();
    for (i, &rows) in depth.rows().iter().enumerate() {
        let x = tensor(&[rows, shape.k as usize], i as u64);
        let t = run_time(&session, &[("x", x)], depth.runs(3), Some(&mut *evict))?;
        let per = (t / copies as f64 - node).max(t / copies as f64 * 0.05);
        points.push((rows as f64, 2.0 * (rows as u64 * shape.k * shape.n) as f64 / per));
    }
    drop(session);
    scratch.remove(&weight_file(dtype))?;
    Ok(Curve(points))
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
        let t = run_time(&session, &inputs, depth.runs(7), None)?;
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
        let t = run_time(&session, &inputs, depth.runs(9), None)?;
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

/// Bytes per second one-row products read f32 weights at from memory (caches flushed):
/// [`BANDWIDTH_BYTES`] of weights, median of seven runs.
fn weight_bandwidth(scratch: &Scratch, evict: &mut Evict, depth: Depth) -> Result<f64, String> {
    let one = stored_bytes("f32", GENERIC);
    let copies = (depth.scaled(BANDWIDTH_BYTES) / one).max(1);
    let session = Session::new(weights_graph(scratch, "f32", GENERIC, copies)?, &scratch.0);
    let t = run_time(&session, &[("x", tensor(&[1, DIM], 5))], depth.runs(7), Some(evict))?;
    drop(session);
    scratch.remove(&weight_file("f32"))?;
    Ok((copies * one) as f64 / t)
}

/// What the runtime's kernels reach on this host; each of `products` (a model's own
/// product shapes, each with a weight type) measured too. Returns them with the bytes
/// per second f32 weights are read at by one row (the memory bandwidth a decode step
/// sees, [`weight_bandwidth`]).
fn kernels(
    scratch: &Scratch,
    evict: &mut Evict,
    depth: Depth,
    products: &[(String, ProductShape)],
) -> Result<(Kernels, f64), String> {
    let (node, stream) = stream_fit(depth)?;
    let mut matmul = BTreeMap::new();
    for dtype in WEIGHT_TYPES {
        matmul.insert(dtype.to_string(), product_curve(scratch, evict, dtype, GENERIC, node, depth)?);
    }
    let bandwidth = weight_bandwidth(scratch, evict, depth)?;
    let mut measured = BTreeMap::new();
    for (dtype, shape) in products {
        measured.insert((dtype.clone(), *shape), product_curve(scratch, evict, dtype, *shape, node, depth)?);
    }
    let attention = attention_curve(node, depth)?;
    Ok((Kernels { node, stream, matmul, attention, products: measured }, bandwidth))
}

/// Measure this host, the products of `products` that `session`'s graph runs (the
/// model's own step, when given, with the weight type it stores) in that step
/// ([`step::product_curves`]), the others alone. The step runs last, after everything
/// measured alone: a process that has just run a whole model measures products alone
/// several times slower (the one-row f32 rate 0.5 against 6.2 GFLOP/s here, not
/// explained), while a step after the other measurements ran at the speed of a model's
/// run.
pub fn measure_with_step(
    name: &str,
    depth: Depth,
    products: &[(String, ProductShape)],
    session: Option<&Session>,
) -> Result<Device, String> {
    let own: Vec<(String, ProductShape)> =
        session.map(|s| shardc_passes::kernels::product_shapes(s.graph())).unwrap_or_default();
    let alone: Vec<(String, ProductShape)> = products.iter().filter(|p| !own.contains(p)).cloned().collect();
    let mut device = measure(name, depth, &alone)?;
    if let Some(s) = session.filter(|_| products.iter().any(|p| own.contains(p))) {
        let stepped = step::product_curves(s, depth.rows(), depth.runs(3))?;
        if let Some(k) = device.kernels.as_mut() {
            for p in products.iter().filter(|p| own.contains(p)) {
                let curve = stepped
                    .get(p)
                    .ok_or_else(|| format!("the model's step did not run its {} product {:?}", p.0, p.1))?;
                k.products.insert(p.clone(), curve.clone());
            }
        }
    }
    Ok(device)
}

/// Measure this host.
pub fn measure(name: &str, depth: Depth, products: &[(String, ProductShape)]) -> Result<Device, String> {
    // Products that cannot be measured are refused before any measuring.
    for (dtype, shape) in products {
        if !WEIGHT_TYPES.contains(&dtype.as_str()) {
            return Err(format!("`{dtype}` is not a weight type ({})", WEIGHT_TYPES.join(", ")));
        }
        if shape.k.checked_mul(shape.n).is_none_or(|e| e > MAX_PRODUCT_ELEMENTS) {
            return Err(format!("a {}×{} product is more than this profile measures", shape.k, shape.n));
        }
    }
    let n = 512;
    let a = Tensor::f32(ArrayD::from_elem(IxDyn(&[n, n]), 0.5));
    let b = Tensor::f32(ArrayD::from_elem(IxDyn(&[n, n]), 0.25));
    let op = Op::MatMul(MatMul {});
    let secs = time(depth.runs(5), None, || {
        let _ = std::hint::black_box(kernels::run(&op, &[Some(&a), Some(&b)], 1));
    });
    let flops = 2.0 * (n * n * n) as f64 / secs;
    let memory = available_memory();
    let scratch = Scratch::new()?;
    let mut evict = Evict::new(memory, depth);
    let (kernels, bandwidth) = kernels(&scratch, &mut evict, depth, products)?;
    Ok(Device {
        name: name.to_string(),
        memory,
        flops: BTreeMap::from([("*".to_string(), flops)]),
        bandwidth,
        kernels: Some(kernels),
    })
}
