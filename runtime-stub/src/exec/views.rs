//! Transposes a product reads in place: a `Transpose` whose only reader is a `MatMul`'s
//! second operand (attention's keys, `K^T`) does not run; the product reads the
//! transpose's input with its axes permuted (strides, no copy). In a decode step this
//! spares a copy of the whole key cache per layer.

use shardc_ir::{Graph, Op, ValueId};

/// A product's second operand read through a transpose.
#[derive(Clone, Debug)]
pub(super) struct View {
    /// The transpose's input, read in place.
    pub source: ValueId,
    /// The transpose's perm (reversed axes when absent).
    pub perm: Option<Vec<i64>>,
}

/// For each node, the view its input 1 is read through, if any; and the transposes that
/// no longer run. A transpose qualifies when it computes at run time (not a weight's:
/// those products are another plan's), its output is no graph output and is read by
/// one `MatMul`, once, as its second operand, which no other plan (`planned`: fused,
/// weights kept transposed) computes.
pub(super) fn plan(
    graph: &Graph,
    is_output: &[bool],
    constant_node: &[bool],
    skipped: &[bool],
    planned: impl Fn(usize) -> bool,
) -> (Vec<Option<View>>, Vec<usize>) {
    let mut readers: Vec<Vec<(usize, usize)>> = vec![Vec::new(); graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        for (slot, v) in node.inputs.iter().enumerate() {
            if let Some(v) = v {
                readers[v.index()].push((i, slot));
            }
        }
    }
    let mut views = vec![None; graph.nodes.len()];
    let mut gone = Vec::new();
    for (t, node) in graph.nodes.iter().enumerate() {
        let Op::Transpose(tr) = &node.op else { continue };
        let (Some(&out), Some(Some(source))) = (node.outputs.first(), node.inputs.first()) else { continue };
        if constant_node[t] || skipped[t] || is_output[out.index()] || node.outputs.len() != 1 {
            continue;
        }
        let [(reader, 1)] = readers[out.index()][..] else { continue };
        let op = &graph.nodes[reader].op;
        if !matches!(op, Op::MatMul(_)) || skipped[reader] || constant_node[reader] || planned(reader) {
            continue;
        }
        views[reader] = Some(View { source: *source, perm: tr.perm.clone() });
        gone.push(t);
    }
    (views, gone)
}
