//! `simplify`: fold shape arithmetic whose results are known numbers into constants,
//! bypass nodes that pass an input through unchanged (`Identity`; `Reshape`, `Expand`
//! and `Cast` to the input's own type; `Where` with a uniform known condition), and
//! remove dead nodes, weights and constants.

use std::collections::HashSet;

use shardc_ir::{Graph, NodeId, Op, TensorData, TensorType, ValueDef, ValueId};

use crate::infer::{infer, Facts};
use crate::infer_shapes::node_error;
use crate::{Ctx, Pass, PassError};

/// The `simplify` pass.
#[derive(Debug, Clone, Copy)]
pub struct Simplify;

impl Pass for Simplify {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn run(&self, graph: &mut Graph, ctx: &mut Ctx) -> Result<(), PassError> {
        let facts = infer(graph, &ctx.input_contents).map_err(|e| node_error(graph, self.name(), e))?;
        let mut removed: HashSet<NodeId> = HashSet::new();

        // 1. Fold nodes whose every output has known contents.
        for nid in graph.node_ids().collect::<Vec<_>>() {
            let outputs = graph.node(nid).outputs.clone();
            let consts: Option<Vec<(ValueId, TensorData, TensorType)>> = outputs
                .iter()
                .map(|&v| {
                    let ty = facts.types[v.index()].clone()?;
                    let values: Vec<i64> =
                        facts.contents[v.index()].as_ref()?.iter().map(|d| d.as_known()).collect::<Option<_>>()?;
                    let shape: Vec<usize> =
                        ty.shape.iter().map(|d| usize::try_from(d.as_known()?).ok()).collect::<Option<_>>()?;
                    Some((v, TensorData::from_ints(ty.dtype, shape, &values), ty))
                })
                .collect();
            if let Some(consts) = consts {
                for (v, data, ty) in consts {
                    let value = graph.value_mut(v);
                    value.def = ValueDef::Const(data);
                    value.ty = Some(ty);
                }
                removed.insert(nid);
            }
        }

        // 2. Bypass nodes that pass one input through unchanged (unless their output
        //    is a graph output, whose name matters).
        let outputs: HashSet<ValueId> = graph.outputs.iter().copied().collect();
        for nid in graph.node_ids().collect::<Vec<_>>() {
            let node = graph.node(nid);
            let Some(&output) = node.outputs.first() else { continue };
            if removed.contains(&nid) || outputs.contains(&output) {
                continue;
            }
            if let Some(input) = pass_through(graph, &facts, nid) {
                graph.replace_uses(output, input);
                removed.insert(nid);
            }
        }

        // 3. Dead nodes: walk backwards from the graph outputs.
        let mut live: HashSet<ValueId> = outputs.clone();
        for nid in graph.node_ids().collect::<Vec<_>>().into_iter().rev() {
            if removed.contains(&nid) {
                continue;
            }
            let node = graph.node(nid);
            if node.outputs.iter().any(|o| live.contains(o)) {
                live.extend(node.inputs.iter().flatten().copied());
            } else {
                removed.insert(nid);
            }
        }
        let keep_value = |v: ValueId| -> bool {
            match &graph.value(v).def {
                ValueDef::Input => true,
                ValueDef::Node(n) => !removed.contains(n),
                ValueDef::Weight(_) | ValueDef::Const(_) => live.contains(&v),
            }
        };
        let kept_values: HashSet<ValueId> = graph.value_ids().filter(|&v| keep_value(v)).collect();
        let values_before = graph.values.len();
        if !removed.is_empty() || kept_values.len() != values_before {
            let removed_nodes = removed.clone();
            graph.retain(|n| !removed_nodes.contains(&n), |v| kept_values.contains(&v));
        }
        Ok(())
    }
}

/// The input a node passes through unchanged, if it does.
fn pass_through(graph: &Graph, facts: &Facts, nid: NodeId) -> Option<ValueId> {
    let node = graph.node(nid);
    let input = |slot: usize| node.inputs.get(slot).copied().flatten();
    let ty = |v: ValueId| facts.types[v.index()].as_ref();
    let out_ty = ty(*node.outputs.first()?)?;
    let same_type = |v: ValueId| ty(v) == Some(out_ty);
    match &node.op {
        Op::Identity(_) => input(0),
        Op::Reshape(_) | Op::Expand(_) | Op::Cast(_) => input(0).filter(|&v| same_type(v)),
        Op::Where(_) => {
            let cond: Vec<i64> =
                facts.contents[input(0)?.index()].as_ref()?.iter().map(|d| d.as_known()).collect::<Option<_>>()?;
            let chosen = if cond.iter().all(|&c| c != 0) {
                input(1)?
            } else if cond.iter().all(|&c| c == 0) {
                input(2)?
            } else {
                return None;
            };
            same_type(chosen).then_some(chosen)
        }
        _ => None,
    }
}
