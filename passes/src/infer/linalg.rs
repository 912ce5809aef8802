//! Matrix products and normalisation.

use shardc_ir::ops::{Gemm, LayerNormalization};
use shardc_ir::{DType, Dim};

use super::{axis, broadcast, required, In, Out};

fn same_dims(a: &Dim, b: &Dim) -> bool {
    a == b || !a.is_determined() || !b.is_determined()
}

/// `MatMul` with numpy semantics (1-D operands are promoted, batch dims broadcast).
pub fn matmul(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let a = required(inputs, 0)?;
    let b = required(inputs, 1)?;
    if a.dtype() != b.dtype() {
        return Err(format!("operand dtypes differ ({} vs {})", a.dtype(), b.dtype()));
    }
    Ok(vec![Out::new(a.dtype(), matmul_shape(a.shape(), b.shape())?)])
}

/// `Gemm{transA,transB}(A, B[, C])`.
pub fn gemm(g: &Gemm, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let a = required(inputs, 0)?;
    let b = required(inputs, 1)?;
    if a.rank() != 2 || b.rank() != 2 {
        return Err(format!("Gemm needs 2-D operands, got ranks {} and {}", a.rank(), b.rank()));
    }
    let (m, ka) = if g.transA != 0 { (&a.shape()[1], &a.shape()[0]) } else { (&a.shape()[0], &a.shape()[1]) };
    let (kb, n) = if g.transB != 0 { (&b.shape()[1], &b.shape()[0]) } else { (&b.shape()[0], &b.shape()[1]) };
    if !same_dims(ka, kb) {
        return Err(format!("inner dims differ ({ka} vs {kb})"));
    }
    let shape = vec![m.clone(), n.clone()];
    if let Some(c) = inputs.get(2).copied().flatten() {
        let full = broadcast(c.shape(), &shape)?;
        if full != shape {
            return Err(format!("bias of shape {:?} does not broadcast to the product", c.shape()));
        }
    }
    Ok(vec![Out::new(a.dtype(), shape)])
}

/// `LayerNormalization{axis}`: Y like X; Mean and InvStdDev reduced over `axis..`.
pub fn layer_norm(l: &LayerNormalization, inputs: &[Option<In>], n_outputs: usize) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let ax = axis(l.axis, x.rank())?;
    let mut outs = vec![Out::new(x.dtype(), x.shape().to_vec())];
    let stash = if l.stash_type == 1 { DType::F32 } else { x.dtype() };
    let mut reduced = x.shape()[..ax].to_vec();
    reduced.resize(x.rank(), Dim::known(1));
    for _ in 1..n_outputs {
        outs.push(Out::new(stash, reduced.clone()));
    }
    Ok(outs)
}

/// `MatMulInteger(A, B[, a_zero_point[, b_zero_point]])`: an i32 matrix product.
pub fn matmul_integer(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let a = required(inputs, 0)?;
    let b = required(inputs, 1)?;
    for (x, what) in [(a, "A"), (b, "B")] {
        if !matches!(x.dtype(), DType::I8 | DType::U8) {
            return Err(format!("{what} must be i8 or u8, is {}", x.dtype()));
        }
    }
    let mut shape = matmul_shape(a.shape(), b.shape())?;
    if shape.is_empty() && a.rank() == 1 && b.rank() == 1 {
        shape = vec![];
    }
    Ok(vec![Out::new(DType::I32, shape)])
}

fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("matrix product operands must have rank at least 1".into());
    }
    let mut sa = a.to_vec();
    let mut sb = b.to_vec();
    let (a_vec, b_vec) = (sa.len() == 1, sb.len() == 1);
    if a_vec {
        sa.insert(0, Dim::known(1));
    }
    if b_vec {
        sb.push(Dim::known(1));
    }
    let (m, ka) = (&sa[sa.len() - 2], &sa[sa.len() - 1]);
    let (kb, n) = (&sb[sb.len() - 2], &sb[sb.len() - 1]);
    if !same_dims(ka, kb) {
        return Err(format!("inner dims differ ({ka} vs {kb})"));
    }
    let mut shape = broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2])?;
    if !a_vec {
        shape.push(m.clone());
    }
    if !b_vec {
        shape.push(n.clone());
    }
    Ok(shape)
}

/// `Einsum{equation}`: every label's size from the operands; the output's labels in order.
pub fn einsum(equation: &str, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins: Vec<In> = (0..inputs.len()).map(|i| required(inputs, i)).collect::<Result<_, _>>()?;
    let eq = shardc_ir::einsum::Equation::parse(equation)?;
    let (labels, out) = eq.labels(&ins.iter().map(In::rank).collect::<Vec<_>>())?;
    let dtype = ins.first().ok_or("Einsum needs an input")?.dtype();
    if let Some(other) = ins.iter().find(|i| i.dtype() != dtype) {
        return Err(format!("operand dtypes differ ({dtype} vs {})", other.dtype()));
    }
    let mut sizes: std::collections::HashMap<char, Dim> = std::collections::HashMap::new();
    for (input, ls) in ins.iter().zip(&labels) {
        for (d, l) in input.shape().iter().zip(ls) {
            let broadcastable = (*l as u32) < 32;
            match sizes.get(l) {
                None => {
                    sizes.insert(*l, d.clone());
                }
                Some(prev) if prev == d || !d.is_determined() => {}
                Some(prev) if broadcastable && prev.as_known() == Some(1) => {
                    sizes.insert(*l, d.clone());
                }
                Some(_) if broadcastable && d.as_known() == Some(1) => {}
                Some(prev) if !prev.is_determined() => {
                    sizes.insert(*l, d.clone());
                }
                Some(prev) => return Err(format!("subscript sizes disagree ({prev} vs {d})")),
            }
        }
    }
    let shape = out.iter().map(|l| sizes.get(l).cloned().unwrap_or(Dim::Unknown)).collect();
    Ok(vec![Out::new(dtype, shape)])
}

/// `Attention`: Y like Q (3-D: `[batch, q_seq, q_heads · v_head]`, 4-D: `[batch,
/// q_heads, q_seq, v_head]`), present key and value with the past's sequence plus
/// the new one, and the QK product `[batch, q_heads, q_seq, total]`.
pub fn attention(a: &shardc_ir::ops::Attention, inputs: &[Option<In>], n_outputs: usize) -> Result<Vec<Out>, String> {
    let q = required(inputs, 0)?;
    let k = required(inputs, 1)?;
    let v = required(inputs, 2)?;
    if q.rank() != k.rank() || q.rank() != v.rank() || !(q.rank() == 3 || q.rank() == 4) {
        return Err(format!(
            "Q, K and V must all be 3-D or all 4-D, got ranks {}, {}, {}",
            q.rank(),
            k.rank(),
            v.rank()
        ));
    }
    let four = q.rank() == 4;
    let heads = |attr: Option<i64>, what: &str| -> Result<Dim, String> {
        match attr {
            Some(n) if n > 0 => Ok(Dim::known(n)),
            Some(n) => Err(format!("{what} is {n}")),
            None if four => Ok(Dim::Unknown),
            None => Err(format!("3-D inputs need {what}")),
        }
    };
    let (batch, q_heads, q_seq, kv_heads, kv_seq, v_head) = if four {
        (
            q.shape()[0].clone(),
            q.shape()[1].clone(),
            q.shape()[2].clone(),
            k.shape()[1].clone(),
            k.shape()[2].clone(),
            v.shape()[3].clone(),
        )
    } else {
        let qh = heads(a.q_num_heads, "q_num_heads")?;
        let kvh = heads(a.kv_num_heads, "kv_num_heads")?;
        let v_head = v.shape()[2].div_exact(&kvh).ok_or("V's hidden size does not divide by kv_num_heads")?;
        (q.shape()[0].clone(), qh, q.shape()[1].clone(), kvh, k.shape()[1].clone(), v_head)
    };
    let past = inputs.get(4).copied().flatten();
    let total = match past {
        Some(p) if p.rank() == 4 => p.shape()[2].add(&kv_seq),
        Some(p) => return Err(format!("past_key must be 4-D, is rank {}", p.rank())),
        None => kv_seq.clone(),
    };
    let k_head = if four { k.shape()[3].clone() } else { k.shape()[2].div_exact(&kv_heads).unwrap_or(Dim::Unknown) };
    let y = if four {
        vec![batch.clone(), q_heads.clone(), q_seq.clone(), v_head.clone()]
    } else {
        vec![batch.clone(), q_seq.clone(), q_heads.mul(&v_head)]
    };
    let mut outs = vec![Out::new(q.dtype(), y)];
    if n_outputs > 1 {
        outs.push(Out::new(k.dtype(), vec![batch.clone(), kv_heads.clone(), total.clone(), k_head]));
    }
    if n_outputs > 2 {
        outs.push(Out::new(v.dtype(), vec![batch.clone(), kv_heads, total.clone(), v_head]));
    }
    if n_outputs > 3 {
        outs.push(Out::new(q.dtype(), vec![batch, q_heads, q_seq, total]));
    }
    Ok(outs)
}
