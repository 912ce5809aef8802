//! Matrix products (through the `gemm` crate), softmax and layer norm.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use shardc_ir::ops::{Gemm, LayerNormalization};
use shardc_ir::DType;

use super::{axis, broadcast_shape, input, optional, KernelResult};
use crate::tensor::Tensor;

fn floats<'a>(t: &'a Tensor, what: &str) -> Result<&'a ArrayD<f32>, String> {
    t.as_f32().ok_or_else(|| format!("{what} must be a float tensor, got {}", t.describe()))
}

/// `C = alpha · A · B + beta · C` for 2-D views of any strides, into row-major `c`
/// (the `gemm` crate, one thread).
fn sgemm(a: &ArrayViewD<f32>, b: &ArrayViewD<f32>, c: &mut [f32], beta: f32, alpha: f32) {
    let (m, k) = (a.shape()[0], a.shape()[1]);
    let n = b.shape()[1];
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    // SAFETY: the pointers and strides describe live views of exactly m×k and k×n
    // elements, and `c` holds m×n row-major elements that nothing else aliases.
    // `gemm` computes dst = alpha·dst + beta·lhs·rhs (its names are swapped from BLAS).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            csa,
            rsa,
            b.as_ptr(),
            csb,
            rsb,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `MatMul` with numpy semantics.
pub fn matmul(inputs: &[Option<&Tensor>]) -> KernelResult {
    let (ta, tb) = (input(inputs, 0)?, input(inputs, 1)?);
    let (a, b) = (floats(ta, "A")?, floats(tb, "B")?);
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
        let mut index = vec![0usize; batch.len()];
        for (i, chunk) in out.chunks_mut(m * n).enumerate() {
            let mut rem = i;
            for d in (0..batch.len()).rev() {
                index[d] = rem % batch[d];
                rem /= batch[d];
            }
            let mut a2 = ab.view();
            let mut b2 = bb.view();
            for &idx in &index {
                a2 = a2.index_axis_move(Axis(0), idx);
                b2 = b2.index_axis_move(Axis(0), idx);
            }
            sgemm(&a2, &b2, chunk, 0.0, 1.0);
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
    let mut out = match optional(inputs, 2) {
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
    sgemm(&av, &bv, &mut out, 1.0, g.alpha);
    let out = ArrayD::from_shape_vec(IxDyn(&[m, n]), out).map_err(|e| e.to_string())?;
    Ok(vec![Tensor::with_dtype(ta.dtype, crate::tensor::Data::F32(out))])
}

/// `Softmax{axis}` (numerically stable).
pub fn softmax(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let t = input(inputs, 0)?;
    let x = floats(t, "input")?;
    let ax = axis(ax, x.ndim())?;
    let mut out = x.as_standard_layout().into_owned();
    for mut lane in out.lanes_mut(Axis(ax)) {
        let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        lane.mapv_inplace(|v| {
            let e = (v - max).exp();
            sum += e;
            e
        });
        let inv = 1.0 / sum;
        lane.mapv_inplace(|v| v * inv);
    }
    Ok(vec![Tensor::with_dtype(t.dtype, crate::tensor::Data::F32(out))])
}

/// `LayerNormalization{axis,epsilon}(X, scale[, bias])` → Y[, Mean, InvStdDev].
pub fn layer_norm(l: &LayerNormalization, inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    let t = input(inputs, 0)?;
    let x = floats(t, "X")?;
    let ax = axis(l.axis, x.ndim())?;
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax..].iter().product();
    let norm_shape = IxDyn(&x.shape()[ax..]);
    let scale = floats(input(inputs, 1)?, "scale")?;
    let scale: Vec<f32> =
        scale.broadcast(norm_shape.clone()).ok_or("scale does not broadcast")?.iter().copied().collect();
    let bias: Option<Vec<f32>> = match optional(inputs, 2) {
        Some(b) => {
            Some(floats(b, "B")?.broadcast(norm_shape).ok_or("bias does not broadcast")?.iter().copied().collect())
        }
        None => None,
    };
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().ok_or("input is not contiguous")?;
    let mut y = vec![0f32; xs.len()];
    let mut means = Vec::with_capacity(outer);
    let mut inv_stds = Vec::with_capacity(outer);
    for r in 0..outer {
        let row = &xs[r * inner..(r + 1) * inner];
        let mean = row.iter().sum::<f32>() / inner as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / inner as f32;
        let inv_std = 1.0 / (var + l.epsilon).sqrt();
        let out = &mut y[r * inner..(r + 1) * inner];
        for i in 0..inner {
            let v = (row[i] - mean) * inv_std * scale[i];
            out[i] = match &bias {
                Some(b) => v + b[i],
                None => v,
            };
        }
        means.push(mean);
        inv_stds.push(inv_std);
    }
    let mut outs = vec![Tensor::with_dtype(
        t.dtype,
        crate::tensor::Data::F32(ArrayD::from_shape_vec(IxDyn(x.shape()), y).map_err(|e| e.to_string())?),
    )];
    let mut stat_shape = x.shape()[..ax].to_vec();
    stat_shape.resize(x.ndim(), 1);
    for stats in [means, inv_stds].into_iter().take(n_outputs.saturating_sub(1)) {
        let a = ArrayD::from_shape_vec(IxDyn(&stat_shape), stats).map_err(|e| e.to_string())?;
        outs.push(Tensor::with_dtype(DType::F32, crate::tensor::Data::F32(a)));
    }
    Ok(outs)
}
