//! Products and lookups whose weight is read as stored: quantized codes, or f16/bf16.
//!
//! A `Gemm` or `MatMul` whose second operand — or an axis-0 `Gather` whose table — is a
//! weight reached only through `DequantizeLinear(data, scale)` (and a `Cast` to f32),
//! what `--quantize` writes or a QDQ model's weight, or through a `Cast` of an f16/bf16
//! weight to f32, never materialises that weight in f32: the executor recognises the
//! chain when a session is made ([`fused_products`]), skips its nodes, and the kernel
//! reads the stored bytes straight from the package's memory map. Decode steps (a few
//! rows of x) read each row once ([`rows`]: codes with each scale applied once per
//! chunk, or f16/bf16 widened a row at a time); prefill dequantizes a tile of rows at a
//! time into a small f32 buffer for the matrix product. A device's memory then holds
//! the stored bytes (mapped), not the weight in f32.
//!
//! Only f32 scales are fused (what `--quantize` writes): the dequantized weight is then
//! `(code − zero point) · scale` in f32, and the kernel applies each scale once per
//! group of codes — the same product up to the order of float additions. A chain with
//! f16 scales (an imported model's) dequantizes to f16, rounding every weight; it runs
//! node by node. Signed codes without zero points (or with all-zero ones, as
//! onnxruntime writes for symmetric int8) take the decode loops; unsigned codes and
//! non-zero zero points (an imported asymmetric model's) are dequantized a row at a
//! time — still never the whole weight.

use std::sync::Arc;

use memmap2::Mmap;
use ndarray::{ArrayD, IxDyn};
use shardc_ir::ops::Gemm;
use shardc_ir::{DType, ValueId};

use crate::tensor::{Data, Tensor};

mod avx512;
mod fuse;
mod rows;
mod tiled;

pub use fuse::fused_products;

use rows::{dot, kn_rows, nk_rows};
#[cfg(test)]
use tiled::tile_rows;
use tiled::tiled_product;

/// A product node whose second operand is a dequantized weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    /// The quantized data and scale weights; or an f16/bf16 weight (no scale) that a
    /// cast widens to f32, read as stored.
    pub data: ValueId,
    pub scale: Option<ValueId>,
    /// The `DequantizeLinear` zero point, when it has one.
    pub zero: Option<ValueId>,
    /// The `DequantizeLinear` attributes; with one scale for the whole weight
    /// (`per_tensor`), axis 0 and the scale repeated for every row.
    pub axis: usize,
    pub block: Option<usize>,
    pub per_tensor: bool,
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

/// A quantized matrix (or an f16/bf16 one) read from its memory map, with its scales.
pub struct QuantMatrix {
    map: Arc<Mmap>,
    offset: usize,
    int4: bool,
    /// Codes 0..256 (uint8) or 0..16 (uint4), not two's complement.
    unsigned: bool,
    /// Zero points, one per scale (none: all zero).
    zeros: Option<Vec<f32>>,
    /// An f16 or bf16 matrix, widened row by row (no codes, no scales).
    half: Option<DType>,
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

impl RowScales<'_> {
    /// Where these scales start in `all`, the matrix's scales (they are a slice of it).
    fn offset(&self, all: &[f32]) -> usize {
        let part = match self {
            RowScales::Segments { scales, .. } | RowScales::Columns(scales) => scales,
        };
        (part.as_ptr() as usize - all.as_ptr() as usize) / std::mem::size_of::<f32>()
    }
}

impl QuantMatrix {
    /// `data` bytes `offset..` of `map` (checked to hold `rows × cols` codes), scales
    /// as decoded.
    pub fn new(
        map: Arc<Mmap>,
        offset: usize,
        dtype: DType,
        [rows, cols]: [usize; 2],
        scales: Vec<f32>,
        axis: usize,
        block: Option<usize>,
    ) -> Result<QuantMatrix, String> {
        if !matches!(dtype, DType::I8 | DType::I4 | DType::U8 | DType::U4) {
            return Err(format!("{dtype} codes are not 8- or 4-bit integers"));
        }
        let (int4, unsigned) = (matches!(dtype, DType::I4 | DType::U4), matches!(dtype, DType::U8 | DType::U4));
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
        Ok(QuantMatrix { map, offset, int4, unsigned, zeros: None, half: None, rows, cols, scales, axis, block })
    }

    /// The same matrix with zero points, one per scale (all zero: none).
    pub fn with_zero_points(mut self, zeros: Vec<f32>) -> Result<QuantMatrix, String> {
        if zeros.len() != self.scales.len() {
            return Err(format!("{} zero points for {} scales", zeros.len(), self.scales.len()));
        }
        self.zeros = zeros.iter().any(|&z| z != 0.0).then_some(zeros);
        Ok(self)
    }

    /// Bring the mapped bytes into memory (a read of each page), so the first product
    /// that reads them does not wait for the disk.
    pub fn touch(&self) {
        let bytes = if self.half.is_some() {
            self.rows * self.cols * 2
        } else if self.int4 {
            (self.rows * self.cols).div_ceil(2)
        } else {
            self.rows * self.cols
        };
        let data = &self.map[self.offset..self.offset + bytes];
        let sum = data.iter().step_by(4096).fold(0u8, |a, &b| a ^ b);
        std::hint::black_box(sum);
    }

    /// Whether the decode loops read this matrix: signed codes, no zero points.
    fn plain_codes(&self) -> bool {
        !self.unsigned && self.zeros.is_none()
    }

    /// An f16 or bf16 matrix at bytes `offset..` of `map`.
    pub fn half(map: Arc<Mmap>, offset: usize, dtype: DType, [rows, cols]: [usize; 2]) -> Result<QuantMatrix, String> {
        if !matches!(dtype, DType::F16 | DType::BF16) {
            return Err(format!("{dtype} is not a 16-bit float"));
        }
        if offset.checked_add(rows * cols * 2).is_none_or(|end| end > map.len()) {
            return Err(format!("{} bytes at {offset} lie past the end of the file", rows * cols * 2));
        }
        let (axis, block, scales) = (0, None, Vec::new());
        let (int4, unsigned, zeros) = (false, false, None);
        Ok(QuantMatrix { map, offset, int4, unsigned, zeros, half: Some(dtype), rows, cols, scales, axis, block })
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
        let byte = |b: u8| if self.unsigned { f32::from(b) } else { f32::from(b as i8) };
        // A nibble (in the low four bits) as a code.
        let nibble = |n: u8| if self.unsigned { f32::from(n & 0x0F) } else { f32::from(((n << 4) as i8) >> 4) };
        if !self.int4 {
            for (o, &b) in out.iter_mut().zip(&bytes[start..start + self.cols]) {
                *o = byte(b);
            }
        } else if start.is_multiple_of(2) {
            // Two codes a byte, low nibble first.
            let row = &bytes[start / 2..(start + self.cols).div_ceil(2)];
            for (pair, &b) in out.chunks_mut(2).zip(row) {
                pair[0] = nibble(b);
                if let Some(hi) = pair.get_mut(1) {
                    *hi = nibble(b >> 4);
                }
            }
        } else {
            for (c, o) in out.iter_mut().enumerate() {
                let i = start + c;
                let b = bytes[i / 2];
                *o = nibble(if i.is_multiple_of(2) { b } else { b >> 4 });
            }
        }
    }

    /// Storage row `r` dequantized into `out` (`cols` values).
    fn row(&self, r: usize, out: &mut [f32]) {
        if let Some(dtype) = self.half {
            let start = self.offset + r * self.cols * 2;
            rows::widen(dtype, &self.map[start..start + self.cols * 2], out);
            return;
        }
        self.codes(r, out);
        // The zero points run as the scales do: the same index.
        let zeros = self.zeros.as_ref().map(|z| {
            let first = self.row_scales(r).offset(&self.scales);
            &z[first..]
        });
        match self.row_scales(r) {
            RowScales::Segments { scales, len } => {
                for (g, (seg, &s)) in out.chunks_mut(len).zip(scales).enumerate() {
                    let z = zeros.map_or(0.0, |z| z[g]);
                    seg.iter_mut().for_each(|v| *v = (*v - z) * s);
                }
            }
            RowScales::Columns(scales) => match zeros {
                Some(z) => out.iter_mut().zip(scales).zip(z).for_each(|((v, s), z)| *v = (*v - z) * s),
                None => out.iter_mut().zip(scales).for_each(|(v, s)| *v *= s),
            },
        }
    }
}

/// Fewest rows of `x` that go through the tiled matrix product; fewer (decode steps)
/// use per-row products with the scale applied per group.
const TILED_FROM_ROWS: usize = MAX_ROWS + 1;

/// Most rows the decode loops take (each row summed on its own: a step's bits are the
/// same alone or batched with others).
pub(crate) const MAX_ROWS: usize = crate::kernels::MAX_ROWS;

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
        // Zeros written, not a zeroed allocation, which the products would read first
        // (the shared zero page, each first write then a TLB flush on every core).
        _ => {
            let mut zeros = Vec::with_capacity(m * n);
            zeros.resize(m * n, 0f32);
            zeros
        }
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
    if w.half.is_some() {
        return rows::half_rows(w, trans_b, xs, m, out, alpha);
    }
    if !w.plain_codes() {
        return general_rows(w, trans_b, xs, m, out, alpha);
    }
    // The fast paths read whole bytes of int4 codes and change scales only between
    // chunks of 8 (int8) or 16 (int4) codes.
    let chunk = if w.int4 { 16 } else { 8 };
    match (trans_b, w.row_scales(0)) {
        (true, RowScales::Segments { len, .. }) if len % chunk == 0 && (!w.int4 || w.cols.is_multiple_of(2)) => {
            return nk_rows(w, xs, m, out, alpha)
        }
        (false, RowScales::Columns(_)) if !w.int4 || w.cols.is_multiple_of(2) => return kn_rows(w, xs, m, out, alpha),
        _ => {}
    }
    general_rows(w, trans_b, xs, m, out, alpha)
}

/// Few rows of `x`, any codes: each storage row dequantized once into a buffer.
fn general_rows(w: &QuantMatrix, trans_b: bool, xs: &[f32], m: usize, out: &mut [f32], alpha: f32) {
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

#[cfg(test)]
mod tests;
