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
    if a.rank() == 0 || b.rank() == 0 {
        return Err("MatMul operands must have rank at least 1".into());
    }
    let mut sa = a.shape().to_vec();
    let mut sb = b.shape().to_vec();
    let a_vec = sa.len() == 1;
    let b_vec = sb.len() == 1;
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
    Ok(vec![Out::new(a.dtype(), shape)])
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
