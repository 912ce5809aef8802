//! Which nodes are fused products or lookups: the chains of dequantize and cast between
//! a stored weight and the product that reads it.

use shardc_ir::{DType, Graph, Op, ValueDef, ValueId};

use super::Fused;

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
            // DequantizeLinear with f32 scales (f32 output), perhaps cast to f32 again; or
            // an f16/bf16 weight cast to f32.
            let mut chain = Vec::new();
            let mut at = producer(b)?;
            if let Op::Cast(c) = &graph.nodes[at].op {
                let input = graph.nodes[at].inputs.first().copied().flatten()?;
                if c.to != DType::F32 || !single_use(input) {
                    return None;
                }
                chain.push(at);
                match producer(input) {
                    Some(p) => at = p,
                    None => {
                        let ValueDef::Weight(w) = &graph.value(input).def else { return None };
                        if !matches!(w.dtype, DType::F16 | DType::BF16) || w.shape.len() != 2 {
                            return None;
                        }
                        let (scale, zero) = (None, None);
                        let (axis, block, per_tensor) = (0, None, false);
                        return Some(Fused { data: input, scale, zero, axis, block, per_tensor, chain, gemm, gather });
                    }
                }
            }
            let dq = &graph.nodes[at];
            let Op::DequantizeLinear(d) = &dq.op else { return None };
            if d.output_dtype.is_some() {
                return None;
            }
            chain.push(at);
            let (data, scale) = (dq.inputs.first().copied().flatten()?, dq.inputs.get(1).copied().flatten()?);
            let ValueDef::Weight(dw) = &graph.value(data).def else { return None };
            // The scales: a weight, or a small constant (a per-tensor scale, say).
            let (scale_dtype, scale_shape) = typed(graph, scale)?;
            if !matches!(dw.dtype, DType::I8 | DType::I4 | DType::U8 | DType::U4) || dw.shape.len() != 2 {
                return None;
            }
            // A zero point: a weight or constant of the data's type, shaped as the scale.
            let zero = dq.inputs.get(2).copied().flatten();
            if let Some(z) = zero {
                if typed(graph, z)? != (dw.dtype, scale_shape.clone()) {
                    return None;
                }
            }
            if scale_dtype != DType::F32 {
                return None;
            }
            let axis = usize::try_from(if d.axis < 0 { d.axis + 2 } else { d.axis }).ok().filter(|&a| a < 2)?;
            let block = usize::try_from(d.block_size).ok().filter(|&b| b > 0);
            let (rows, cols) = (dw.shape[0], dw.shape[1]);
            if scale_shape.iter().product::<usize>() == 1 && block.is_none() {
                chain.reverse();
                let (axis, per_tensor) = (0, true);
                return Some(Fused { data, scale: Some(scale), zero, axis, block, per_tensor, chain, gemm, gather });
            }
            let scale_ok = match block {
                Some(b) if axis == 0 => scale_shape == [rows.div_ceil(b), cols],
                Some(b) => scale_shape == [rows, cols.div_ceil(b)],
                None if axis == 0 => scale_shape == [rows],
                None => scale_shape == [cols],
            };
            if !scale_ok {
                return None;
            }
            chain.reverse();
            Some(Fused { data, scale: Some(scale), zero, axis, block, per_tensor: false, chain, gemm, gather })
        })
        .collect()
}

/// The dtype and shape of a weight or a constant.
fn typed(graph: &Graph, v: ValueId) -> Option<(DType, Vec<usize>)> {
    match &graph.value(v).def {
        ValueDef::Weight(w) => Some((w.dtype, w.shape.clone())),
        ValueDef::Const(t) => Some((t.dtype, t.shape.clone())),
        _ => None,
    }
}
