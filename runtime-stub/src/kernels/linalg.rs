//! Matrix products (through the `gemm` crate, and [`super::rows`] for a few rows) and
//! einsum.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use shardc_ir::ops::Gemm;
use shardc_ir::DType;

use super::{broadcast_shape, input, optional, KernelResult};
use crate::tensor::{Data, Tensor};

pub(super) fn floats<'a>(t: &'a Tensor, what: &str) -> Result<&'a ArrayD<f32>, String> {
    t.as_f32().ok_or_else(|| format!("{what} must be a float tensor, got {}", t.describe()))
}

/// Fewest multiply-adds (m·n·k) a product splits over the run's threads for: below it
/// handing out the parts costs more than it saves.
pub(crate) const SPLIT_FROM: usize = 1 << 20;

/// The width of the parts `n` columns split into over `threads`: about equal, a
/// multiple of `multiple`, at most `widest`, and as many as a multiple of the threads
/// (so none takes more parts than another).
pub(crate) fn part_width(n: usize, threads: usize, multiple: usize, widest: usize) -> usize {
    let threads = threads.max(1);
    let parts = threads * n.div_ceil(widest).div_ceil(threads).max(1);
    n.div_ceil(parts).next_multiple_of(multiple).min(widest)
}

/// `C = alpha · A · B + beta · C` for 2-D views of any strides, into row-major `c`
/// (the `gemm` crate; over the run's threads when there are several and the product is
/// large). Split by columns of C, one part per thread, each part a product of its own on
/// one thread: `gemm`'s own threads fork and join for every depth block of the sum, and
/// gave 1.35–1.5× on two threads for 128 rows by 768 or 2048 columns, against 1.9× split so.
/// Never the sum over k (its blocking depends on k alone), so the same bits on any count.
/// Also the matrix product of the quantized kernels.
pub(crate) fn sgemm(a: &ArrayViewD<f32>, b: &ArrayViewD<f32>, c: &mut [f32], beta: f32, alpha: f32) {
    let (m, k) = (a.shape()[0], a.shape()[1]);
    let n = b.shape()[1];
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if m <= super::rows::MAX_ROWS {
        // A few rows (decode steps): the same bits for a row alone or among others.
        // Rows of A as one slice: A itself when it is laid out so, else a copy.
        let copied: Vec<f32>;
        let rows = match a.as_slice() {
            Some(rows) => rows,
            None => {
                copied = a.iter().copied().collect();
                &copied
            }
        };
        let strides = (b.strides()[0], b.strides()[1]);
        // SAFETY: `b` is a live k×n view with these strides.
        if unsafe { super::rows::product(rows, m, k, b.as_ptr(), strides, n, c, (alpha, beta)) } {
            return;
        }
    }
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    let dst = Columns(c.as_mut_ptr());
    // Columns `from..from + width` of C.
    let product = |from: usize, width: usize, parallelism: gemm::Parallelism| {
        // SAFETY: the pointers and strides describe live views of exactly m×k and k×n
        // elements, `c` holds m×n row-major elements that nothing else aliases, and
        // `from + width <= n`: the columns written are C's (each part its own).
        // `gemm` computes dst = alpha·dst + beta·lhs·rhs (its names are swapped from BLAS).
        unsafe {
            gemm::gemm(
                m,
                width,
                k,
                dst.at(from),
                1,
                n as isize,
                beta != 0.0,
                a.as_ptr(),
                csa,
                rsa,
                b.as_ptr().offset(from as isize * csb),
                csb,
                rsb,
                beta,
                alpha,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    match crate::threads::current() {
        Some(pool) if m.saturating_mul(n).saturating_mul(k) >= SPLIT_FROM => {
            let threads = pool.current_num_threads();
            let width = part_width(n, threads, 16, usize::MAX);
            let parts = n.div_ceil(width);
            let last = n - (parts - 1) * width;
            // `gemm` blocks the sum differently for a product of at most 64 × 64: no
            // part may be one unless the whole is.
            if width > 64 && parts > 1 && (m > 64 || last > 64) {
                use rayon::prelude::*;
                pool.install(|| {
                    (0..parts).into_par_iter().for_each(|p| {
                        let from = p * width;
                        product(from, width.min(n - from), gemm::Parallelism::None)
                    })
                })
            } else {
                pool.install(|| product(0, n, gemm::Parallelism::Rayon(threads)))
            }
        }
        _ => product(0, n, gemm::Parallelism::None),
    }
}

/// C's first element, shared by the threads that write its columns apart.
#[derive(Clone, Copy)]
struct Columns(*mut f32);
// SAFETY: each thread writes columns no other writes (`sgemm`).
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

impl Columns {
    fn at(self, column: usize) -> *mut f32 {
        self.0.wrapping_add(column)
    }
}

/// `MatMul` with numpy semantics; `b_perm` reads B as `Transpose{perm}` of input 1
/// would give it (its axes permuted in place, no copy).
pub fn matmul(inputs: &[Option<&Tensor>], b_perm: Option<&[i64]>) -> KernelResult {
    let (ta, tb) = (input(inputs, 0)?, input(inputs, 1)?);
    let (a, b) = (floats(ta, "A")?, floats(tb, "B")?);
    let b = match b_perm {
        Some(p) => b.view().permuted_axes(IxDyn(&super::movement::permutation(Some(p), b.ndim())?)),
        None => b.view(),
    };
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err("MatMul operands must have rank at least 1".into());
    }
    let mut av = a.view();
    let mut bv = b.view();
    if av.ndim() == 1 {
        av.insert_axis_inplace(Axis(0));
    }
    if bv.ndim() == 1 {
        bv.insert_axis_inplace(Axis(1));
    }
    let (ra, rb) = (av.ndim(), bv.ndim());
    let (m, k) = (av.shape()[ra - 2], av.shape()[ra - 1]);
    let (k2, n) = (bv.shape()[rb - 2], bv.shape()[rb - 1]);
    if k != k2 {
        return Err(format!("inner dims differ ({:?} · {:?})", a.shape(), b.shape()));
    }
    let batch = broadcast_shape(&av.shape()[..ra - 2], &bv.shape()[..rb - 2])?;
    let batches: usize = batch.iter().product();
    let mut out = vec![0f32; batches * m * n];

    if rb == 2 && av.is_standard_layout() {
        // A stack of rows times one matrix: a single (batches·m)×k by k×n product.
        let rows = av.into_shape_with_order(IxDyn(&[batches * m, k])).map_err(|e| e.to_string())?;
        sgemm(&rows, &bv, &mut out, 0.0, 1.0);
    } else {
        // Broadcast the batch dims (zero strides, no copies) and multiply each pair of
        // 2-D views with their own strides.
        let mut a_shape = batch.clone();
        a_shape.extend([m, k]);
        let mut b_shape = batch.clone();
        b_shape.extend([k, n]);
        let ab = av.broadcast(IxDyn(&a_shape)).ok_or("cannot broadcast A")?;
        let bb = bv.broadcast(IxDyn(&b_shape)).ok_or("cannot broadcast B")?;
        let one = |(i, chunk): (usize, &mut [f32])| {
            let (mut a2, mut b2) = (ab.view(), bb.view());
            let mut rem = i;
            let mut index = vec![0usize; batch.len()];
            for d in (0..batch.len()).rev() {
                index[d] = rem % batch[d];
                rem /= batch[d];
            }
            for &idx in &index {
                a2 = a2.index_axis_move(Axis(0), idx);
                b2 = b2.index_axis_move(Axis(0), idx);
            }
            sgemm(&a2, &b2, chunk, 0.0, 1.0);
        };
        // Pairs of matrices (heads, say) over the run's threads, each product whole.
        match crate::threads::current() {
            Some(pool) if batches > 1 && batches.saturating_mul(m * n * k) >= SPLIT_FROM => {
                use rayon::prelude::*;
                pool.install(|| out.par_chunks_mut(m * n).enumerate().for_each(one))
            }
            _ => out.chunks_mut(m * n).enumerate().for_each(one),
        }
    }
    let mut shape = batch;
    if a.ndim() > 1 {
        shape.push(m);
    }
    if b.ndim() > 1 {
        shape.push(n);
    }
    let out = ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?;
    Ok(vec![Tensor::with_dtype(ta.dtype, crate::tensor::Data::F32(out))])
}

/// `Gemm{alpha,beta,transA,transB}(A, B[, C])`.
pub fn gemm(g: &Gemm, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (ta, tb) = (input(inputs, 0)?, input(inputs, 1)?);
    let (a, b) = (floats(ta, "A")?, floats(tb, "B")?);
    if a.ndim() != 2 || b.ndim() != 2 {
        return Err(format!("Gemm needs 2-D operands, got {:?} and {:?}", a.shape(), b.shape()));
    }
    let av = if g.transA != 0 { a.view().reversed_axes() } else { a.view() };
    let bv = if g.transB != 0 { b.view().reversed_axes() } else { b.view() };
    let (m, k) = (av.shape()[0], av.shape()[1]);
    let (k2, n) = (bv.shape()[0], bv.shape()[1]);
    if k != k2 {
        return Err(format!("inner dims differ ({:?} · {:?})", av.shape(), bv.shape()));
    }
    let bias = optional(inputs, 2);
    let mut out = match bias {
        Some(c) => {
            let c = floats(c, "C")?;
            let cb = c
                .broadcast(IxDyn(&[m, n]))
                .ok_or_else(|| format!("C {:?} does not broadcast to [{m}, {n}]", c.shape()))?;
            // `assign` walks the broadcast view row by row (a plain iterator over a
            // broadcast view is an order of magnitude slower).
            let mut init = ArrayD::<f32>::zeros(IxDyn(&[m, n]));
            init.assign(&cb);
            if g.beta != 1.0 {
                init.mapv_inplace(|v| v * g.beta);
            }
            init.into_raw_vec_and_offset().0
        }
        None => vec![0f32; m * n],
    };
    // Without C the product is written, not added to zeros: a zeroed buffer read before
    // it is written maps the shared zero page, and each first write then replaces it
    // (a TLB flush on every core the process runs on).
    sgemm(&av, &bv, &mut out, if bias.is_some() { 1.0 } else { 0.0 }, g.alpha);
    let out = ArrayD::from_shape_vec(IxDyn(&[m, n]), out).map_err(|e| e.to_string())?;
    Ok(vec![Tensor::with_dtype(ta.dtype, crate::tensor::Data::F32(out))])
}

/// `MatMulInteger(A, B[, a_zero_point[, b_zero_point]])`: `(A − a0) · (B − b0)` in
/// i32; zero points are scalars, or per row of A / per column of B.
pub fn matmul_integer(inputs: &[Option<&Tensor>]) -> KernelResult {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    let (ai, bi) = (
        a.as_i64().ok_or_else(|| format!("A must be integers, got {}", a.describe()))?,
        b.as_i64().ok_or_else(|| format!("B must be integers, got {}", b.describe()))?,
    );
    let shift = |x: &ArrayD<i64>, zp: Option<&Tensor>, rows: bool| -> Result<ArrayD<f32>, String> {
        let mut out = x.mapv(|v| v as f32);
        if let Some(z) = zp {
            let zv: Vec<i64> = z.to_i64_vec();
            let r = out.ndim();
            if zv.len() == 1 {
                out.mapv_inplace(|v| v - zv[0] as f32);
            } else {
                // Per row of A (axis −2) or per column of B (axis −1).
                let ax = if rows { r.saturating_sub(2) } else { r - 1 };
                if out.shape()[ax] != zv.len() {
                    return Err(format!("{} zero points for axis {ax} of {:?}", zv.len(), out.shape()));
                }
                for (i, mut lane) in out.axis_iter_mut(Axis(ax)).enumerate() {
                    lane.mapv_inplace(|v| v - zv[i] as f32);
                }
            }
        }
        Ok(out)
    };
    let fa = shift(ai, optional(inputs, 2), true)?;
    let fb = shift(bi, optional(inputs, 3), false)?;
    // Products of 8-bit values summed in f32 stay exact up to 2^24 (k < 512 at worst).
    let (ta, tb) = (Tensor::f32(fa), Tensor::f32(fb));
    let product = matmul(&[Some(&ta), Some(&tb)], None)?;
    let p = product.into_iter().next().ok_or("no product")?;
    let values = p.as_f32().ok_or("no product")?.mapv(|v| v.round() as i64);
    Ok(vec![Tensor::with_dtype(DType::I32, Data::I64(values))])
}

/// One operand of an einsum under way: its array and a label per axis.
struct Labeled {
    a: ArrayD<f32>,
    labels: Vec<char>,
}

impl Labeled {
    /// Take the diagonal of repeated labels, so each label names one axis.
    fn diagonal(self) -> Result<Labeled, String> {
        let mut unique: Vec<char> = Vec::new();
        for &l in &self.labels {
            if !unique.contains(&l) {
                unique.push(l);
            }
        }
        if unique.len() == self.labels.len() {
            return Ok(self);
        }
        let mut sizes = Vec::new();
        for &l in &unique {
            let dims: Vec<usize> =
                self.labels.iter().zip(self.a.shape()).filter(|(x, _)| **x == l).map(|(_, &d)| d).collect();
            if dims.iter().any(|&d| d != dims[0]) {
                return Err(format!("a repeated subscript has sizes {dims:?}"));
            }
            sizes.push(dims[0]);
        }
        let out = ArrayD::from_shape_fn(IxDyn(&sizes), |idx| {
            let src: Vec<usize> =
                self.labels.iter().map(|l| idx[unique.iter().position(|u| u == l).unwrap_or(0)]).collect();
            self.a[IxDyn(&src)]
        });
        Ok(Labeled { a: out, labels: unique })
    }

    /// Sum out the axes whose labels `keep` does not hold.
    fn sum_except(mut self, keep: &[char]) -> Labeled {
        for i in (0..self.labels.len()).rev() {
            if !keep.contains(&self.labels[i]) {
                self.a = self.a.sum_axis(Axis(i));
                self.labels.remove(i);
            }
        }
        self
    }

    /// Axes reordered to `order` (a permutation of the labels).
    fn permuted(&self, order: &[char]) -> ArrayD<f32> {
        let perm: Vec<usize> = order.iter().map(|l| self.labels.iter().position(|x| x == l).unwrap_or(0)).collect();
        self.a.view().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned()
    }

    fn size(&self, l: char) -> usize {
        self.labels.iter().position(|x| *x == l).map_or(1, |i| self.a.shape()[i])
    }
}

/// Contract two operands, keeping the labels in `keep`, through one batched matrix product.
fn contract(x: Labeled, y: Labeled, keep: &[char]) -> Result<Labeled, String> {
    let x = x.sum_except(&[keep, &y.labels[..]].concat());
    let y = y.sum_except(&[keep, &x.labels[..]].concat());
    let shared: Vec<char> = x.labels.iter().copied().filter(|l| y.labels.contains(l)).collect();
    let batch: Vec<char> = shared.iter().copied().filter(|l| keep.contains(l)).collect();
    let summed: Vec<char> = shared.iter().copied().filter(|l| !keep.contains(l)).collect();
    let x_only: Vec<char> = x.labels.iter().copied().filter(|l| !shared.contains(l)).collect();
    let y_only: Vec<char> = y.labels.iter().copied().filter(|l| !shared.contains(l)).collect();
    // Shared dims broadcast (size 1 against n, from `...`).
    let size = |l: char| x.size(l).max(y.size(l));
    for &l in &shared {
        let (a, b) = (x.size(l), y.size(l));
        if a != b && a != 1 && b != 1 {
            return Err(format!("subscript sizes disagree ({a} vs {b})"));
        }
    }
    let expand = |op: &Labeled, order: &[char]| -> Result<ArrayD<f32>, String> {
        let p = op.permuted(order);
        let full: Vec<usize> = order.iter().map(|&l| if shared.contains(&l) { size(l) } else { op.size(l) }).collect();
        Ok(p.broadcast(IxDyn(&full)).ok_or("broadcast failed")?.to_owned())
    };
    let prod = |ls: &[char]| ls.iter().map(|&l| size(l)).product::<usize>();
    let (nb, m, k, n) = (
        prod(&batch),
        x_only.iter().map(|&l| x.size(l)).product::<usize>(),
        prod(&summed),
        y_only.iter().map(|&l| y.size(l)).product::<usize>(),
    );
    let xa = expand(&x, &[&batch[..], &x_only[..], &summed[..]].concat())?
        .into_shape_with_order(IxDyn(&[nb, m, k]))
        .map_err(|e| e.to_string())?;
    let ya = expand(&y, &[&batch[..], &summed[..], &y_only[..]].concat())?
        .into_shape_with_order(IxDyn(&[nb, k, n]))
        .map_err(|e| e.to_string())?;
    let (tx, ty) = (Tensor::f32(xa), Tensor::f32(ya));
    let p = matmul(&[Some(&tx), Some(&ty)], None)?.into_iter().next().ok_or("no product")?;
    let mut shape: Vec<usize> = batch.iter().map(|&l| size(l)).collect();
    shape.extend(x_only.iter().map(|&l| x.size(l)));
    shape.extend(y_only.iter().map(|&l| y.size(l)));
    let a = p.as_f32().ok_or("no product")?.to_shape(IxDyn(&shape)).map_err(|e| e.to_string())?.into_owned();
    Ok(Labeled { a, labels: [&batch[..], &x_only[..], &y_only[..]].concat() })
}

/// `Einsum{equation}`: operands contracted left to right, each step one batched
/// matrix product; repeated subscripts take diagonals; `...` broadcasts.
pub fn einsum(equation: &str, inputs: &[Option<&Tensor>]) -> KernelResult {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| input(inputs, i)).collect::<Result<_, _>>()?;
    let eq = shardc_ir::einsum::Equation::parse(equation)?;
    let (labels, out) = eq.labels(&ts.iter().map(|t| t.shape().len()).collect::<Vec<_>>())?;
    let dtype = ts.first().ok_or("Einsum needs an input")?.dtype;
    let mut ops = Vec::new();
    for (t, ls) in ts.iter().zip(labels) {
        let a = t.to_f32_vec();
        let a = ArrayD::from_shape_vec(IxDyn(t.shape()), a).map_err(|e| e.to_string())?;
        ops.push(Labeled { a, labels: ls }.diagonal()?);
    }
    let mut acc = ops.remove(0);
    let rest: Vec<Labeled> = ops;
    for (i, y) in rest.into_iter().enumerate() {
        // Keep what the output or a later operand still needs.
        let mut keep = out.clone();
        let later_labels: Vec<char> = labels_after(&eq, ts.iter().map(|t| t.shape().len()).collect(), i + 2)?;
        keep.extend(later_labels);
        acc = contract(acc, y, &keep)?;
    }
    let acc = acc.sum_except(&out);
    let a = acc.permuted(&out);
    let result = if dtype.is_float() {
        Tensor::with_dtype(dtype, Data::F32(a))
    } else {
        Tensor::with_dtype(dtype, Data::I64(a.mapv(|v| v.round() as i64)))
    };
    Ok(vec![result])
}

/// Labels of the operands from index `from` on.
fn labels_after(eq: &shardc_ir::einsum::Equation, ranks: Vec<usize>, from: usize) -> Result<Vec<char>, String> {
    let (labels, _) = eq.labels(&ranks)?;
    Ok(labels.into_iter().skip(from).flatten().collect())
}
