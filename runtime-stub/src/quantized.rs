//! Products with quantized weights, computed from the quantized bytes themselves.
//!
//! A `Gemm` or `MatMul` whose second operand is a weight reached only through
//! `DequantizeLinear(data, scale)` (and a `Cast` to f32) — what `--quantize` writes, or
//! a QDQ model's weight — never materialises that weight: the executor recognises the
//! chain when a session is made ([`fused_products`]), skips its nodes, and the product
//! reads the int8/int4 codes straight from the package's memory map, dequantizing a
//! tile of rows at a time into a small f32 buffer that the matrix product consumes. A
//! device's memory then holds the quantized bytes (mapped) and the scales, not the
//! weight in f32.
//!
//! Only f32 scales are fused (what `--quantize` writes): the dequantized weight is then
//! `code · scale` in f32, and the kernel applies each scale once per group of codes — the
//! same product up to the order of float additions. A chain with f16 scales (an
//! imported model's) dequantizes to f16, rounding every weight; it runs node by node.

use std::rc::Rc;

use memmap2::Mmap;
use ndarray::{ArrayD, ArrayView2, IxDyn};
use shardc_ir::ops::Gemm;
use shardc_ir::{DType, Graph, Op, ValueDef, ValueId};

use crate::tensor::{Data, Tensor};

/// A product node whose second operand is a dequantized weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    /// The quantized data and scale weights.
    pub data: ValueId,
    pub scale: ValueId,
    /// The `DequantizeLinear` attributes.
    pub axis: usize,
    pub block: Option<usize>,
    /// The nodes of the chain (dequantize, cast), which never run.
    pub chain: Vec<usize>,
    /// `Gemm` attributes, or `None` for `MatMul` (and for a lookup).
    pub gemm: Option<Gemm>,
    /// A `Gather` of rows of the weight (an embedding table), not a product.
    pub gather: bool,
}

impl Fused {
    /// The node's input slot the quantized weight stands in for.
    pub fn operand(&self) -> usize {
        if self.gather {
            0
        } else {
            1
        }
    }
}

/// For every node, the fused product (or lookup) it is, if it is one.
pub fn fused_products(graph: &Graph) -> Vec<Option<Fused>> {
    let uses = graph.uses();
    let producer = |v: ValueId| match graph.value(v).def {
        ValueDef::Node(n) => Some(n.index()),
        _ => None,
    };
    let single_use = |v: ValueId| uses[v.index()].len() == 1 && !graph.outputs.contains(&v);
    graph
        .nodes
        .iter()
        .map(|node| {
            let (gemm, gather) = match &node.op {
                Op::Gemm(g) if g.transA == 0 => (Some(g.clone()), false),
                Op::MatMul(_) => (None, false),
                Op::Gather(g) if g.axis == 0 => (None, true),
                _ => return None,
            };
            let b = node.inputs.get(usize::from(!gather)).copied().flatten()?;
            if !single_use(b) {
                return None;
            }
            // DequantizeLinear with f32 scales (f32 output), perhaps cast to f32 again.
            let mut chain = Vec::new();
            let mut at = producer(b)?;
            if let Op::Cast(c) = &graph.nodes[at].op {
                let input = graph.nodes[at].inputs.first().copied().flatten()?;
                if c.to != DType::F32 || !single_use(input) {
                    return None;
                }
                chain.push(at);
                at = producer(input)?;
            }
            let dq = &graph.nodes[at];
            let Op::DequantizeLinear(d) = &dq.op else { return None };
            if dq.inputs.len() > 2 && dq.inputs[2].is_some() || d.output_dtype.is_some() {
                return None;
            }
            chain.push(at);
            let (data, scale) = (dq.inputs.first().copied().flatten()?, dq.inputs.get(1).copied().flatten()?);
            let (ValueDef::Weight(dw), ValueDef::Weight(sw)) = (&graph.value(data).def, &graph.value(scale).def) else {
                return None;
            };
            if !matches!(dw.dtype, DType::I8 | DType::I4) || dw.shape.len() != 2 {
                return None;
            }
            if sw.dtype != DType::F32 {
                return None;
            }
            let axis = usize::try_from(if d.axis < 0 { d.axis + 2 } else { d.axis }).ok().filter(|&a| a < 2)?;
            let block = usize::try_from(d.block_size).ok().filter(|&b| b > 0);
            let (rows, cols) = (dw.shape[0], dw.shape[1]);
            let scale_ok = match block {
                Some(b) if axis == 0 => sw.shape == [rows.div_ceil(b), cols],
                Some(b) => sw.shape == [rows, cols.div_ceil(b)],
                None if axis == 0 => sw.shape == [rows],
                None => sw.shape == [cols],
            };
            if !scale_ok {
                return None;
            }
            chain.reverse();
            Some(Fused { data, scale, axis, block, chain, gemm, gather })
        })
        .collect()
}

/// A quantized matrix read from its memory map, with its scales.
pub struct QuantMatrix {
    map: Rc<Mmap>,
    offset: usize,
    int4: bool,
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    axis: usize,
    block: Option<usize>,
}

/// How the scales of a storage row run.
enum RowScales<'a> {
    /// One scale per segment of `len` consecutive columns (the last may be shorter).
    Segments { scales: &'a [f32], len: usize },
    /// One scale per column.
    Columns(&'a [f32]),
}

impl QuantMatrix {
    /// `data` bytes `offset..` of `map` (checked to hold `rows × cols` codes), scales
    /// as decoded.
    pub fn new(
        map: Rc<Mmap>,
        offset: usize,
        dtype: DType,
        [rows, cols]: [usize; 2],
        scales: Vec<f32>,
        axis: usize,
        block: Option<usize>,
    ) -> Result<QuantMatrix, String> {
        let int4 = dtype == DType::I4;
        let bytes = if int4 { (rows * cols).div_ceil(2) } else { rows * cols };
        if offset.checked_add(bytes).is_none_or(|end| end > map.len()) {
            return Err(format!("{bytes} bytes of codes at {offset} lie past the end of the file"));
        }
        let expected = match (block, axis) {
            (Some(b), 0) => rows.div_ceil(b) * cols,
            (Some(b), _) => rows * cols.div_ceil(b),
            (None, 0) => rows,
            (None, _) => cols,
        };
        if scales.len() != expected {
            return Err(format!("{} scales for a [{rows}, {cols}] matrix that needs {expected}", scales.len()));
        }
        Ok(QuantMatrix { map, offset, int4, rows, cols, scales, axis, block })
    }

    fn row_scales(&self, r: usize) -> RowScales<'_> {
        let cols = self.cols;
        match (self.block, self.axis) {
            (Some(b), 0) => RowScales::Columns(&self.scales[(r / b) * cols..(r / b + 1) * cols]),
            (Some(b), _) => {
                let n = cols.div_ceil(b);
                RowScales::Segments { scales: &self.scales[r * n..(r + 1) * n], len: b }
            }
            (None, 0) => RowScales::Segments { scales: &self.scales[r..r + 1], len: cols },
            (None, _) => RowScales::Columns(&self.scales),
        }
    }

    /// The codes of storage row `r` as f32, unscaled.
    fn codes(&self, r: usize, out: &mut [f32]) {
        let bytes = &self.map[self.offset..];
        let start = r * self.cols;
        if !self.int4 {
            for (o, &b) in out.iter_mut().zip(&bytes[start..start + self.cols]) {
                *o = f32::from(b as i8);
            }
        } else if start % 2 == 0 {
            // Two codes a byte, low nibble first.
            let row = &bytes[start / 2..(start + self.cols).div_ceil(2)];
            for (pair, &b) in out.chunks_mut(2).zip(row) {
                pair[0] = f32::from(((b << 4) as i8) >> 4);
                if let Some(hi) = pair.get_mut(1) {
                    *hi = f32::from((b as i8) >> 4);
                }
            }
        } else {
            for (c, o) in out.iter_mut().enumerate() {
                let i = start + c;
                let b = bytes[i / 2];
                let nibble = if i % 2 == 0 { b & 0x0F } else { b >> 4 };
                *o = f32::from(((nibble << 4) as i8) >> 4);
            }
        }
    }

    /// Storage row `r` dequantized into `out` (`cols` values).
    fn row(&self, r: usize, out: &mut [f32]) {
        self.codes(r, out);
        match self.row_scales(r) {
            RowScales::Segments { scales, len } => {
                for (seg, &s) in out.chunks_mut(len).zip(scales) {
                    seg.iter_mut().for_each(|v| *v *= s);
                }
            }
            RowScales::Columns(scales) => out.iter_mut().zip(scales).for_each(|(v, s)| *v *= s),
        }
    }
}

/// Σ a·b with eight independent sums (so the loop vectorises without reassociating).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ x · code · scale along a row of int8 codes whose scales change every `len` codes,
/// `len` a multiple of 8: one pass, eight partial sums, the scale read per 8 codes
/// (`seg_of`: the segment of each chunk of 8).
#[inline(always)]
fn row_dot_i8(x: &[f32], q: &[u8], scales: &[f32], len: usize, seg_of: &[u32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, qc) = (x.chunks_exact(8), q.chunks_exact(8));
    let done = x.len() - xc.remainder().len();
    let mut tail = 0f32;
    for (c, (x, &q)) in xc.remainder().iter().zip(qc.remainder()).enumerate() {
        tail += x * f32::from(q as i8) * scales[(done + c) / len];
    }
    for ((x, q), &g) in xc.zip(qc).zip(seg_of) {
        let s = scales[g as usize];
        for i in 0..8 {
            acc[i] += s * (x[i] * f32::from(q[i] as i8));
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The signed low and high 4-bit codes of a byte, as f32 (in i32 arithmetic, which
/// vectorises where byte shifts do not).
#[inline(always)]
fn nibbles(b: u8) -> (f32, f32) {
    let v = i32::from(b);
    ((((v & 15) ^ 8) - 8) as f32, (((v >> 4) ^ 8) - 8) as f32)
}

/// Σ x · code · scale along a row of int4 codes (two a byte; `xe`, `xo` the even and odd
/// elements of x) whose scales change every `len` codes, `len` a multiple of 16
/// (`seg_of`: the segment of each chunk of 16 codes).
#[inline(always)]
fn row_dot_i4(xe: &[f32], xo: &[f32], q: &[u8], scales: &[f32], len: usize, seg_of: &[u32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ec, oc, qc) = (xe.chunks_exact(8), xo.chunks_exact(8), q.chunks_exact(8));
    let done = q.len() - qc.remainder().len();
    let mut tail = 0f32;
    for (c, ((e, o), &b)) in ec.remainder().iter().zip(oc.remainder()).zip(qc.remainder()).enumerate() {
        let (lo, hi) = nibbles(b);
        tail += (e * lo + o * hi) * scales[2 * (done + c) / len];
    }
    for (((e, o), q), &g) in ec.zip(oc).zip(qc).zip(seg_of) {
        let s = scales[g as usize];
        for i in 0..8 {
            let (lo, hi) = nibbles(q[i]);
            acc[i] += s * (e[i] * lo + o[i] * hi);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `t += x · codes` over int8 codes.
#[inline(always)]
fn axpy_i8(x: f32, q: &[u8], t: &mut [f32]) {
    for (t, &q) in t.iter_mut().zip(q) {
        *t += x * f32::from(q as i8);
    }
}

/// `te += x · low codes`, `to += x · high codes` (int4 pairs along the row).
#[inline(always)]
fn axpy_i4(x: f32, q: &[u8], te: &mut [f32], to: &mut [f32]) {
    for ((e, o), &b) in te.iter_mut().zip(to.iter_mut()).zip(q) {
        let (lo, hi) = nibbles(b);
        *e += x * lo;
        *o += x * hi;
    }
}

/// Run `body` compiled for AVX2 where the processor has it (x86-64 builds target the
/// baseline; other targets have their vector units in the baseline).
macro_rules! vectorised {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor has AVX2 (checked just now).
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Rows of codes asked for ahead of the one being read: a row is a few hundred bytes to
/// a few KiB, and the product's loop alone leaves memory idle between rows.
const PREFETCH_ROWS: usize = 8;

/// Ask for `len` bytes of `bytes` from `start` to be brought into the cache.
#[inline(always)]
fn prefetch(bytes: &[u8], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let end = (start + len).min(bytes.len());
        let mut at = start;
        while at < end {
            // SAFETY: a prefetch of an address inside `bytes`; it reads nothing.
            unsafe {
                std::arch::x86_64::_mm_prefetch(bytes.as_ptr().add(at) as *const i8, std::arch::x86_64::_MM_HINT_T0)
            };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, start, len);
}

vectorised!(nk_rows, nk_rows_body, (w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32));
vectorised!(kn_rows, kn_rows_body, (w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32));

/// `[N, K]` storage with scales per segment of each row (groups along K, or one per
/// row), few rows of x: out[i, r] += alpha · Σ_seg scale · (x_i · codes).
#[inline(always)]
fn nk_rows_body(w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32) {
    let (n, k) = (w.rows, w.cols);
    let bytes = &w.map[w.offset..];
    let RowScales::Segments { len, .. } = w.row_scales(0) else { return };
    // Even and odd elements of each row of x, for int4 codes.
    let halves: Vec<(Vec<f32>, Vec<f32>)> = if w.int4 {
        (0..m)
            .map(|i| {
                let x = &xs[i * k..(i + 1) * k];
                (x.iter().step_by(2).copied().collect(), x.iter().skip(1).step_by(2).copied().collect())
            })
            .collect()
    } else {
        Vec::new()
    };
    // The segment of each chunk of codes the loops read at once (the same in every row).
    let chunk = if w.int4 { 16 } else { 8 };
    let seg_of: Vec<u32> = (0..k / chunk).map(|j| (j * chunk / len) as u32).collect();
    let row_bytes = if w.int4 { k / 2 } else { k };
    for r in 0..n {
        let RowScales::Segments { scales, .. } = w.row_scales(r) else { return };
        prefetch(bytes, (r + PREFETCH_ROWS) * row_bytes, row_bytes);
        for i in 0..m {
            let sum = if w.int4 {
                let (xe, xo) = &halves[i];
                row_dot_i4(xe, xo, &bytes[r * k / 2..(r + 1) * k / 2], scales, len, &seg_of)
            } else {
                row_dot_i8(&xs[i * k..(i + 1) * k], &bytes[r * k..(r + 1) * k], scales, len, &seg_of)
            };
            out[i * n + r] += alpha * sum;
        }
    }
}

/// `[K, N]` storage with scales per column (for each group of rows along K, or one per
/// column), few rows of x: out[i, :] += alpha · Σ_group scales ⊙ Σ_{r ∈ group} x[i, r] · codes_r.
#[inline(always)]
fn kn_rows_body(w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32) {
    let (k, n) = (w.rows, w.cols);
    let bytes = &w.map[w.offset..];
    let group = w.block.unwrap_or(k);
    let half = n / 2;
    let mut t = vec![0f32; n];
    for i in 0..m {
        let x = &xs[i * k..(i + 1) * k];
        for g0 in (0..k).step_by(group) {
            let g1 = (g0 + group).min(k);
            t.iter_mut().for_each(|v| *v = 0.0);
            let row_bytes = if w.int4 { n / 2 } else { n };
            for r in g0..g1 {
                prefetch(bytes, (r + PREFETCH_ROWS) * row_bytes, row_bytes);
                if x[r] == 0.0 {
                    continue;
                }
                if w.int4 {
                    let (te, to) = t.split_at_mut(half);
                    axpy_i4(x[r], &bytes[r * n / 2..(r + 1) * n / 2], te, to);
                } else {
                    axpy_i8(x[r], &bytes[r * n..(r + 1) * n], &mut t);
                }
            }
            let RowScales::Columns(scales) = w.row_scales(g0) else { return };
            let o = &mut out[i * n..(i + 1) * n];
            if w.int4 {
                // t holds the even columns, then the odd ones.
                for j in 0..half {
                    o[2 * j] += alpha * scales[2 * j] * t[j];
                    o[2 * j + 1] += alpha * scales[2 * j + 1] * t[half + j];
                }
            } else {
                for ((o, s), v) in o.iter_mut().zip(scales).zip(&t) {
                    *o += alpha * s * v;
                }
            }
        }
    }
}

/// Rows of the weight dequantized at a time for a matrix product: about 256 KiB.
fn tile_rows(cols: usize) -> usize {
    ((64 << 10) / cols.max(1)).max(1)
}

/// Fewest rows of `x` that go through the tiled matrix product; fewer (decode steps)
/// use per-row products with the scale applied per group.
const TILED_FROM_ROWS: usize = 4;

/// `x · B` (plus, for `Gemm`, `alpha`, `beta · C`), `B` the logical `[K, N]` operand the
/// quantized matrix `w` stores as `[N, K]` (`Gemm` with `transB`) or `[K, N]`.
pub fn product(f: &Fused, w: &QuantMatrix, x: &Tensor, c: Option<&Tensor>) -> Result<Tensor, String> {
    let a = x.as_f32().ok_or_else(|| format!("A must be a float tensor, got {}", x.describe()))?;
    let trans_b = f.gemm.as_ref().is_some_and(|g| g.transB != 0);
    let (k, n) = if trans_b { (w.cols, w.rows) } else { (w.rows, w.cols) };
    if a.ndim() == 0 || *a.shape().last().unwrap_or(&0) != k || f.gemm.is_some() && a.ndim() != 2 {
        return Err(format!("A {:?} does not multiply a [{k}, {n}] weight", a.shape()));
    }
    let lead: Vec<usize> = a.shape()[..a.ndim() - 1].to_vec();
    let m: usize = lead.iter().product();
    let a = a.as_standard_layout();
    let xs = a.as_slice().ok_or("A is not contiguous")?;
    let (alpha, beta) = f.gemm.as_ref().map_or((1.0, 0.0), |g| (g.alpha, g.beta));
    let mut out = match c {
        Some(c) if f.gemm.is_some() => {
            let c = c.as_f32().ok_or("C must be a float tensor")?;
            let cb = c
                .broadcast(IxDyn(&[m, n]))
                .ok_or_else(|| format!("C {:?} does not broadcast to [{m}, {n}]", c.shape()))?;
            let mut init = ArrayD::<f32>::zeros(IxDyn(&[m, n]));
            init.assign(&cb);
            init.mapv_inplace(|v| v * beta);
            init.into_raw_vec_and_offset().0
        }
        _ => vec![0f32; m * n],
    };
    if m < TILED_FROM_ROWS {
        rows_product(w, trans_b, xs, m, &mut out, alpha);
    } else {
        tiled_product(w, trans_b, xs, m, &mut out, alpha)?;
    }
    let mut shape = lead;
    shape.push(n);
    let out = ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?;
    Ok(Tensor::with_dtype(x.dtype, Data::F32(out)))
}

/// `Gather(axis 0)` of rows of the quantized table `w`: each row dequantized as it is
/// read (negative indices count from the end, as ONNX's do).
pub fn gather(w: &QuantMatrix, indices: &Tensor) -> Result<Tensor, String> {
    let idx = indices.as_i64().ok_or_else(|| format!("indices must be integers, got {}", indices.describe()))?;
    let mut out = vec![0f32; idx.len() * w.cols];
    for (row, &i) in out.chunks_mut(w.cols.max(1)).zip(idx.iter()) {
        let r = if i < 0 { i + w.rows as i64 } else { i };
        if r < 0 || r >= w.rows as i64 {
            return Err(format!("index {i} is out of range for {} rows", w.rows));
        }
        w.row(r as usize, row);
    }
    let mut shape = idx.shape().to_vec();
    shape.push(w.cols);
    let out = ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?;
    Ok(Tensor::f32(out))
}

/// Few rows of `x` (decode steps): the codes read once, each scale applied once per
/// segment (`[N, K]` storage) or per group of rows (`[K, N]`). Int4 rows whose codes do
/// not start on a byte (odd widths or group sizes) take the general path.
fn rows_product(w: &QuantMatrix, trans_b: bool, xs: &[f32], m: usize, out: &mut [f32], alpha: f32) {
    // The fast paths read whole bytes of int4 codes and change scales only between
    // chunks of 8 (int8) or 16 (int4) codes.
    let chunk = if w.int4 { 16 } else { 8 };
    match (trans_b, w.row_scales(0)) {
        (true, RowScales::Segments { len, .. }) if len % chunk == 0 && (!w.int4 || w.cols % 2 == 0) => {
            return nk_rows(w, xs, m, out, alpha)
        }
        (false, RowScales::Columns(_)) if !w.int4 || w.cols % 2 == 0 => return kn_rows(w, xs, m, out, alpha),
        _ => {}
    }
    let cols = w.cols;
    let mut row = vec![0f32; cols];
    if trans_b {
        // Storage row r is output column r.
        let (k, n) = (cols, w.rows);
        for r in 0..w.rows {
            w.row(r, &mut row);
            for i in 0..m {
                out[i * n + r] += alpha * dot(&xs[i * k..(i + 1) * k], &row);
            }
        }
    } else {
        // Storage row r is input r: out[i, :] += alpha · x[i, r] · row.
        let (k, n) = (w.rows, cols);
        for r in 0..w.rows {
            w.row(r, &mut row);
            for i in 0..m {
                let coef = alpha * xs[i * k + r];
                out[i * n..(i + 1) * n].iter_mut().zip(&row).for_each(|(o, v)| *o += coef * v);
            }
        }
    }
}

/// Many rows of `x` (prefill): tiles of storage rows dequantized into a small f32
/// buffer, each multiplied by the matrix product.
fn tiled_product(
    w: &QuantMatrix,
    trans_b: bool,
    xs: &[f32],
    m: usize,
    out: &mut [f32],
    alpha: f32,
) -> Result<(), String> {
    let k = if trans_b { w.cols } else { w.rows };
    let n = if trans_b { w.rows } else { w.cols };
    let a2 = ArrayView2::from_shape((m, k), xs).map_err(|e| e.to_string())?;
    let rows_per_tile = tile_rows(w.cols);
    let mut tile = vec![0f32; rows_per_tile * w.cols];
    let mut part = Vec::new();
    for r0 in (0..w.rows).step_by(rows_per_tile) {
        let r1 = (r0 + rows_per_tile).min(w.rows);
        let t = &mut tile[..(r1 - r0) * w.cols];
        for (i, row) in t.chunks_mut(w.cols).enumerate() {
            w.row(r0 + i, row);
        }
        let tv = ArrayView2::from_shape((r1 - r0, w.cols), &*t).map_err(|e| e.to_string())?;
        if trans_b {
            // Rows r0..r1 are outputs r0..r1: out[:, r0..r1] += alpha · x · tileᵀ.
            part.clear();
            part.resize(m * (r1 - r0), 0.0);
            sgemm(&a2, &tv.t(), &mut part, alpha);
            for (row, p) in out.chunks_mut(n).zip(part.chunks(r1 - r0)) {
                for (o, v) in row[r0..r1].iter_mut().zip(p) {
                    *o += v;
                }
            }
        } else {
            // Rows r0..r1 are inputs r0..r1: out += alpha · x[:, r0..r1] · tile.
            let xs = a2.slice(ndarray::s![.., r0..r1]);
            sgemm_acc(&xs, &tv, out, alpha);
        }
    }
    Ok(())
}

/// `c = alpha · a · b` into row-major `c` (overwritten).
fn sgemm(a: &ArrayView2<f32>, b: &ArrayView2<f32>, c: &mut [f32], alpha: f32) {
    gemm_into(a, b, c, false, alpha);
}

/// `c += alpha · a · b`.
fn sgemm_acc(a: &ArrayView2<f32>, b: &ArrayView2<f32>, c: &mut [f32], alpha: f32) {
    gemm_into(a, b, c, true, alpha);
}

fn gemm_into(a: &ArrayView2<f32>, b: &ArrayView2<f32>, c: &mut [f32], accumulate: bool, alpha: f32) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    debug_assert_eq!(c.len(), m * n);
    // SAFETY: the views describe live m×k and k×n elements with these strides, and `c`
    // holds m×n row-major elements nothing else aliases. `gemm` computes
    // dst = alpha·dst + beta·lhs·rhs (its names are swapped from BLAS).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            csa,
            rsa,
            b.as_ptr(),
            csb,
            rsb,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quantized matrix over an anonymous map holding `codes` (int4 packed when asked).
    fn matrix(
        codes: &[i8],
        int4: bool,
        shape: [usize; 2],
        scales: Vec<f32>,
        axis: usize,
        block: Option<usize>,
    ) -> QuantMatrix {
        let bytes: Vec<u8> = if int4 {
            codes.chunks(2).map(|p| (p[0] as u8 & 0x0F) | ((*p.get(1).unwrap_or(&0) as u8 & 0x0F) << 4)).collect()
        } else {
            codes.iter().map(|&c| c as u8).collect()
        };
        let mut m = memmap2::MmapMut::map_anon(bytes.len().max(1)).unwrap();
        m[..bytes.len()].copy_from_slice(&bytes);
        let dtype = if int4 { DType::I4 } else { DType::I8 };
        QuantMatrix::new(Rc::new(m.make_read_only().unwrap()), 0, dtype, shape, scales, axis, block).unwrap()
    }

    #[test]
    fn lookups_dequantize_the_rows_they_read() {
        let codes: Vec<i8> = (0..24).map(|i| (i % 15) as i8 - 7).collect();
        let scales: Vec<f32> = (0..8).map(|i| 0.5 + i as f32).collect();
        for int4 in [false, true] {
            // 4 rows of 6, groups of 3 along the row.
            let w = matrix(&codes, int4, [4, 6], scales.clone(), 1, Some(3));
            let ids = Tensor::from_i64(&[2], vec![3, -4]).unwrap();
            let got = gather(&w, &ids).unwrap();
            assert_eq!(got.shape(), [2, 6]);
            let want: Vec<f32> = [3usize, 0]
                .iter()
                .flat_map(|&r| (0..6).map(move |c| (r, c)))
                .map(|(r, c)| f32::from(codes[r * 6 + c]) * scales[r * 2 + c / 3])
                .collect();
            assert_eq!(got.to_f32_vec(), want);
            let err = gather(&w, &Tensor::from_i64(&[1], vec![4]).unwrap()).unwrap_err();
            assert!(err.contains("index 4 is out of range for 4 rows"), "{err}");
        }
    }

    #[test]
    fn fused_products_equal_dequantizing_first() {
        let mut seed = 0x9E37_79B9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for int4 in [false, true] {
            for trans_b in [false, true] {
                for (block, rows, cols) in
                    [(Some(4usize), 12usize, 10usize), (None, 12, 10), (Some(5), 9, 7), (Some(32), 40, 36)]
                {
                    for m in [1, 3, 5] {
                        let max = if int4 { 7 } else { 127 };
                        let codes: Vec<i8> =
                            (0..rows * cols).map(|_| ((next() % (2 * max + 1)) as i32 - max as i32) as i8).collect();
                        // Groups run along the reduction axis: storage cols with transB.
                        let axis = match (block, trans_b) {
                            (Some(_), true) | (None, false) => 1,
                            _ => 0,
                        };
                        let n_scales = match (block, axis) {
                            (Some(b), 0) => rows.div_ceil(b) * cols,
                            (Some(b), _) => rows * cols.div_ceil(b),
                            (None, 0) => rows,
                            (None, _) => cols,
                        };
                        let scales: Vec<f32> = (0..n_scales).map(|i| 0.01 * (1 + i % 7) as f32).collect();
                        let w = matrix(&codes, int4, [rows, cols], scales.clone(), axis, block);
                        let mut dense = vec![0f32; rows * cols];
                        for r in 0..rows {
                            w.row(r, &mut dense[r * cols..(r + 1) * cols]);
                        }
                        // The dequantized weight by the definition, element by element.
                        for r in 0..rows {
                            for c in 0..cols {
                                let s = match (block, axis) {
                                    (Some(b), 0) => scales[(r / b) * cols + c],
                                    (Some(b), _) => scales[r * cols.div_ceil(b) + c / b],
                                    (None, 0) => scales[r],
                                    (None, _) => scales[c],
                                };
                                assert_eq!(dense[r * cols + c], f32::from(codes[r * cols + c]) * s);
                            }
                        }
                        let (k, n) = if trans_b { (cols, rows) } else { (rows, cols) };
                        let x: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect();
                        let mut want = vec![0f32; m * n];
                        for i in 0..m {
                            for j in 0..n {
                                want[i * n + j] = (0..k)
                                    .map(|t| {
                                        x[i * k + t] * if trans_b { dense[j * cols + t] } else { dense[t * cols + j] }
                                    })
                                    .sum();
                            }
                        }
                        let gemm = trans_b.then_some(Gemm { alpha: 1.0, beta: 1.0, transA: 0, transB: 1 });
                        let f = Fused {
                            data: ValueId(0),
                            scale: ValueId(1),
                            axis,
                            block,
                            chain: vec![],
                            gemm,
                            gather: false,
                        };
                        let xt = Tensor::f32(ArrayD::from_shape_vec(IxDyn(&[m, k]), x.clone()).unwrap());
                        let got = product(&f, &w, &xt, None).unwrap().to_f32_vec();
                        for (g, e) in got.iter().zip(&want) {
                            assert!(
                                (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                                "int4 {int4} transB {trans_b} block {block:?} m {m}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dot_products_of_any_length() {
        for n in [0, 1, 7, 8, 9, 33] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 / 2.0).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - want).abs() <= 1e-4 * want.abs().max(1.0), "{n}");
        }
    }
}
