//! `simplify`: fold shape arithmetic whose results are known numbers into constants,
//! bypass `Identity` nodes, and remove dead nodes, weights and constants.

use std::collections::HashSet;

use shardc_ir::{Graph, NodeId, Op, TensorData, TensorType, ValueDef, ValueId};

use crate::infer::infer;
use crate::infer_shapes::node_error;
use crate::{Changed, Ctx, Pass, PassError};

/// The `simplify` pass.
#[derive(Debug, Clone, Copy)]
pub struct Simplify;

impl Pass for Simplify {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn run(&self, graph: &mut Graph, ctx: &mut Ctx) -> Result<Changed, PassError> {
        let facts = infer(graph).map_err(|e| node_error(graph, self.name(), e))?;
        let mut removed: HashSet<NodeId> = HashSet::new();

        // 1. Fold nodes whose every output has known contents.
        let mut folded = 0;
        for nid in graph.node_ids().collect::<Vec<_>>() {
            let outputs = graph.node(nid).outputs.clone();
            let consts: Option<Vec<(ValueId, TensorData, TensorType)>> = outputs
                .iter()
                .map(|&v| {
                    let ty = facts.types[v.index()].clone()?;
                    let values: Vec<i64> = facts.contents[v.index()].as_ref()?.iter().map(|d| d.as_known()).collect::<Option<_>>()?;
                    let shape: Vec<usize> = ty.shape.iter().map(|d| usize::try_from(d.as_known()?).ok()).collect::<Option<_>>()?;
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
                folded += 1;
            }
        }

        // 2. Bypass Identity nodes (unless their output is a graph output, whose name matters).
        let outputs: HashSet<ValueId> = graph.outputs.iter().copied().collect();
        let mut identities = 0;
        for nid in graph.node_ids().collect::<Vec<_>>() {
            let node = graph.node(nid);
            if removed.contains(&nid) || !matches!(node.op, Op::Identity(_)) {
                continue;
            }
            let (Some(Some(input)), Some(&output)) = (node.inputs.first().copied(), node.outputs.first()) else {
                continue;
            };
            if outputs.contains(&output) {
                continue;
            }
            graph.replace_uses(output, input);
            removed.insert(nid);
            identities += 1;
        }

        // 3. Dead nodes: walk backwards from the graph outputs.
        let mut live: HashSet<ValueId> = outputs.clone();
        let mut dead = 0;
        for nid in graph.node_ids().collect::<Vec<_>>().into_iter().rev() {
            if removed.contains(&nid) {
                continue;
            }
            let node = graph.node(nid);
            if node.outputs.iter().any(|o| live.contains(o)) {
                live.extend(node.inputs.iter().flatten().copied());
            } else {
                removed.insert(nid);
                dead += 1;
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
        let dropped_values = values_before - graph.values.len();
        ctx.notes.push((
            self.name().into(),
            format!("folded {folded} nodes into constants, bypassed {identities} Identity nodes, removed {dead} dead nodes and {dropped_values} values"),
        ));
        Ok(if removed.is_empty() && dropped_values == 0 { Changed::No } else { Changed::Yes })
    }
}
