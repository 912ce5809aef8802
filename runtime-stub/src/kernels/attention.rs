//! `Attention` (ONNX opset 23/24) and `RotaryEmbedding` (opset 23).
//! Specs: <https://onnx.ai/onnx/operators/onnx__Attention.html>,
//! <https://onnx.ai/onnx/operators/onnx__RotaryEmbedding.html>.

use ndarray::{concatenate, ArrayD, Axis, IxDyn};
use shardc_ir::ops::{Attention, RotaryEmbedding};

use super::linalg::matmul;
use super::{input, optional, KernelResult};
use crate::tensor::{Data, Tensor};

fn floats(t: &Tensor, what: &str) -> Result<ArrayD<f32>, String> {
    t.as_f32().cloned().ok_or_else(|| format!("{what} must be a float tensor, got {}", t.describe()))
}

/// `[batch, seq, heads·size]` → `[batch, heads, seq, size]`.
fn split_heads(a: &ArrayD<f32>, heads: usize, what: &str) -> Result<ArrayD<f32>, String> {
    let &[b, s, h] = a.shape() else { return Err(format!("{what} must be 3-D")) };
    if heads == 0 || h % heads != 0 {
        return Err(format!("{what}'s hidden size {h} does not divide into {heads} heads"));
    }
    let r = a.to_shape(IxDyn(&[b, s, heads, h / heads])).map_err(|e| e.to_string())?.into_owned();
    Ok(r.permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned())
}

fn product(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<ArrayD<f32>, String> {
    let (ta, tb) = (Tensor::f32(a.clone()), Tensor::f32(b.clone()));
    let p = matmul(&[Some(&ta), Some(&tb)], None)?.into_iter().next().ok_or("no product")?;
    p.as_f32().cloned().ok_or_else(|| "no product".into())
}

/// `Attention`: see the module doc; follows the spec's reference computation.
pub fn attention(a: &Attention, inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    let tq = input(inputs, 0)?;
    let (mut q, mut k, mut v) = (floats(tq, "Q")?, floats(input(inputs, 1)?, "K")?, floats(input(inputs, 2)?, "V")?);
    let three = q.ndim() == 3;
    if three {
        let heads = |x: Option<i64>, what| {
            x.filter(|&n| n > 0).map(|n| n as usize).ok_or_else(|| format!("3-D inputs need {what}"))
        };
        let (qh, kvh) = (heads(a.q_num_heads, "q_num_heads")?, heads(a.kv_num_heads, "kv_num_heads")?);
        q = split_heads(&q, qh, "Q")?;
        k = split_heads(&k, kvh, "K")?;
        v = split_heads(&v, kvh, "V")?;
    }
    if q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4 {
        return Err("Q, K and V must be 3-D or 4-D".into());
    }
    let (batch, q_heads, q_seq, head) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let kv_heads = k.shape()[1];
    if let Some(n) = a.q_num_heads {
        if n as usize != q_heads {
            return Err(format!("q_num_heads {n} but Q has {q_heads} heads"));
        }
    }
    let past_len = match optional(inputs, 4) {
        Some(p) => {
            let p = floats(p, "past_key")?;
            let len = p.shape().get(2).copied().unwrap_or(0);
            k = concatenate(Axis(2), &[p.view(), k.view()]).map_err(|e| format!("past_key: {e}"))?;
            len
        }
        None => 0,
    };
    if let Some(p) = optional(inputs, 5) {
        let p = floats(p, "past_value")?;
        v = concatenate(Axis(2), &[p.view(), v.view()]).map_err(|e| format!("past_value: {e}"))?;
    }
    let (present_k, present_v) = (k.clone(), v.clone());
    let total = k.shape()[2];
    if kv_heads == 0 || q_heads % kv_heads != 0 || v.shape()[1] != kv_heads {
        return Err(format!("{q_heads} query heads cannot share {kv_heads} key/value heads"));
    }
    // Grouped-query attention: query head h reads key/value head h / (q_heads / kv_heads).
    let rep = q_heads / kv_heads;
    if rep > 1 {
        let idx: Vec<usize> = (0..q_heads).map(|h| h / rep).collect();
        k = k.select(Axis(1), &idx);
        v = v.select(Axis(1), &idx);
    }
    let scale = a.scale.unwrap_or(1.0 / (head as f32).sqrt());
    let root = scale.sqrt();
    let qs = q.mapv(|x| x * root);
    let kt = k.mapv(|x| x * root).permuted_axes(IxDyn(&[0, 1, 3, 2])).as_standard_layout().into_owned();
    let raw = product(&qs, &kt)?;

    // The additive bias [.., q_seq, total]: mask (padded to `total` with −∞ / false),
    // causal part, and unpadded key lengths.
    let mut bias = ArrayD::<f32>::zeros(IxDyn(&[q_seq, total]));
    if let Some(m) = optional(inputs, 3) {
        let mut mask = match &m.data {
            Data::Bool(b) => b.mapv(|keep| if keep { 0.0 } else { f32::NEG_INFINITY }),
            Data::F32(f) => f.clone(),
            Data::I64(_) => return Err(format!("attn_mask must be bool or float, got {}", m.describe())),
        };
        let last = mask.ndim().checked_sub(1).ok_or("attn_mask must have rank >= 2")?;
        let short = total.checked_sub(mask.shape()[last]).ok_or("attn_mask is longer than the keys")?;
        if short > 0 {
            let mut pad_shape = mask.shape().to_vec();
            pad_shape[last] = short;
            let pad = ArrayD::from_elem(IxDyn(&pad_shape), f32::NEG_INFINITY);
            mask = concatenate(Axis(last), &[mask.view(), pad.view()]).map_err(|e| e.to_string())?;
        }
        let shape = super::broadcast_shape(bias.shape(), mask.shape())?;
        bias = &bias.broadcast(IxDyn(&shape)).ok_or("broadcast failed")? + &mask;
    }
    if a.is_causal != 0 {
        // Query i (after `past_len` cached keys) sees keys up to past_len + i.
        for (flat, b) in bias.iter_mut().enumerate() {
            let j = flat % total;
            let i = (flat / total) % q_seq;
            if j >= past_len && j - past_len > i {
                *b = f32::NEG_INFINITY;
            }
        }
    }
    if let Some(lens) = optional(inputs, 6) {
        let lens = lens.to_i64_vec();
        if lens.len() != batch {
            return Err(format!("{} key lengths for a batch of {batch}", lens.len()));
        }
        let mut pad = ArrayD::<f32>::zeros(IxDyn(&[batch, 1, 1, total]));
        for (b, &n) in lens.iter().enumerate() {
            for j in 0..total {
                if j as i64 >= n {
                    pad[[b, 0, 0, j]] = f32::NEG_INFINITY;
                }
            }
        }
        let shape = super::broadcast_shape(bias.shape(), pad.shape())?;
        bias = &bias.broadcast(IxDyn(&shape)).ok_or("broadcast failed")? + &pad;
    }
    let shape = super::broadcast_shape(raw.shape(), bias.shape())?;
    if shape != raw.shape() {
        return Err(format!(
            "attn_mask of shape {:?} does not broadcast to the scores {:?}",
            bias.shape(),
            raw.shape()
        ));
    }
    let mut scores = &raw + &bias.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    let with_bias = scores.clone();
    if a.softcap > 0.0 {
        let c = a.softcap;
        scores.mapv_inplace(|x| c * super::unary::tanh(x / c));
    }
    let capped = scores.clone();
    for mut lane in scores.lanes_mut(Axis(3)) {
        let max = lane.fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0.0;
        lane.mapv_inplace(|x| {
            let e = (x - max).exp();
            sum += e;
            e
        });
        lane.mapv_inplace(|x| x / sum);
    }
    let qk_out = match a.qk_matmul_output_mode {
        0 => raw,
        1 => with_bias,
        2 => capped,
        3 => scores.clone(),
        m => return Err(format!("qk_matmul_output_mode {m} (expected 0 to 3)")),
    };
    let mut y = product(&scores, &v)?;
    if three {
        let (b, h, s, d) = (y.shape()[0], y.shape()[1], y.shape()[2], y.shape()[3]);
        y = y.permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned();
        y = y.into_shape_with_order(IxDyn(&[b, s, h * d])).map_err(|e| e.to_string())?;
    }
    let dtype = tq.dtype;
    let kd = input(inputs, 1)?.dtype;
    let vd = input(inputs, 2)?.dtype;
    let outs = vec![
        Tensor::with_dtype(dtype, Data::F32(y)),
        Tensor::with_dtype(kd, Data::F32(present_k)),
        Tensor::with_dtype(vd, Data::F32(present_v)),
        Tensor::with_dtype(dtype, Data::F32(qk_out)),
    ];
    Ok(outs.into_iter().take(n_outputs).collect())
}

/// `RotaryEmbedding{interleaved,num_heads,rotary_embedding_dim}(X, cos, sin[, position_ids])`.
pub fn rotary(r: &RotaryEmbedding, inputs: &[Option<&Tensor>]) -> KernelResult {
    let tx = input(inputs, 0)?;
    let x = floats(tx, "X")?;
    let (cos, sin) = (floats(input(inputs, 1)?, "cos_cache")?, floats(input(inputs, 2)?, "sin_cache")?);
    // Work as [batch, seq, heads, head].
    let four = x.ndim() == 4;
    let work = if four {
        x.view().permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned()
    } else if x.ndim() == 3 {
        let heads = r.num_heads.filter(|&n| n > 0).ok_or("3-D input needs num_heads")? as usize;
        let (b, s, h) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        if h % heads != 0 {
            return Err(format!("hidden size {h} does not divide into {heads} heads"));
        }
        x.to_shape(IxDyn(&[b, s, heads, h / heads])).map_err(|e| e.to_string())?.into_owned()
    } else {
        return Err(format!("X must be 3-D or 4-D, got {}", tx.describe()));
    };
    let (b, s, heads, head) = (work.shape()[0], work.shape()[1], work.shape()[2], work.shape()[3]);
    let rot = if r.rotary_embedding_dim > 0 { r.rotary_embedding_dim as usize } else { head };
    if rot > head || rot % 2 != 0 {
        return Err(format!("rotary_embedding_dim {rot} must be even and at most the head size {head}"));
    }
    let half = rot / 2;
    // cos/sin for each (batch, position): [b, s, half].
    let (cos, sin) = match optional(inputs, 3) {
        Some(p) => {
            let pos = p.to_i64_vec();
            if pos.len() != b * s {
                return Err(format!("position_ids {} do not match [{b}, {s}]", p.describe()));
            }
            let rows = cos.shape().first().copied().unwrap_or(0);
            let pick = |c: &ArrayD<f32>| -> Result<ArrayD<f32>, String> {
                let idx: Vec<usize> = pos
                    .iter()
                    .map(|&i| {
                        usize::try_from(i)
                            .ok()
                            .filter(|&i| i < rows)
                            .ok_or(format!("position {i} is outside the cache of {rows}"))
                    })
                    .collect::<Result<_, _>>()?;
                let sel = c.select(Axis(0), &idx);
                sel.into_shape_with_order(IxDyn(&[b, s, half])).map_err(|e| e.to_string())
            };
            (pick(&cos)?, pick(&sin)?)
        }
        None => {
            let shape = IxDyn(&[b, s, half]);
            (
                cos.broadcast(shape.clone()).ok_or("cos_cache must be [batch, seq, rotary/2]")?.to_owned(),
                sin.broadcast(shape).ok_or("sin_cache must be [batch, seq, rotary/2]")?.to_owned(),
            )
        }
    };
    let mut out = work.clone();
    for bi in 0..b {
        for si in 0..s {
            for h in 0..heads {
                for i in 0..half {
                    let (i1, i2) = if r.interleaved != 0 { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (x1, x2) = (work[[bi, si, h, i1]], work[[bi, si, h, i2]]);
                    let (c, sn) = (cos[[bi, si, i]], sin[[bi, si, i]]);
                    out[[bi, si, h, i1]] = c * x1 - sn * x2;
                    out[[bi, si, h, i2]] = sn * x1 + c * x2;
                }
            }
        }
    }
    let out = if four {
        out.permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned()
    } else {
        out.into_shape_with_order(IxDyn(x.shape())).map_err(|e| e.to_string())?
    };
    Ok(vec![Tensor::with_dtype(tx.dtype, Data::F32(out))])
}
