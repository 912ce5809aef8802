//! `split`: the subgraph of each stage of a plan.
//!
//! A stage's graph holds the nodes of its units, the weights and constants they read,
//! and the load-time nodes (a weight's cast) they need, repeated on every stage that
//! needs them. Its inputs are the graph inputs it reads (token ids, its layers' KV
//! cache) and the tensors other stages compute; its outputs are the graph outputs it
//! computes and the tensors later stages read; the KV-cache pairs of its layers stay
//! pairs. Values keep their names, which are the names the transmission map uses.

use std::collections::{BTreeSet, HashMap};

use shardc_ir::{Graph, ValueDef, ValueId};

use crate::plan::{Stage, StageId, UnitId};
use crate::segment::Segmentation;

/// The graph of every stage, in plan order.
pub fn split(graph: &Graph, seg: &Segmentation, plan: &[Stage]) -> Vec<Graph> {
    let stage_of_node = seg.stage_of_nodes(plan);
    StageId::all(plan.len()).map(|s| stage_graph(graph, &stage_of_node, s).0).collect()
}

/// The subgraph of the units `units` when node `i` belongs to unit `node_unit[i]` (as
/// [`stage_graph`]: load-time nodes go wherever they are needed), named after them,
/// and the index in `graph` of each of its nodes.
pub fn units_graph(graph: &Graph, node_unit: &[UnitId], units: std::ops::Range<usize>) -> (Graph, Vec<usize>) {
    let side: Vec<StageId> = node_unit
        .iter()
        .map(|&u| StageId(usize::from(u.index() >= units.start) + usize::from(u.index() >= units.end)))
        .collect();
    let (mut sub, members) = stage_graph(graph, &side, StageId(1));
    sub.name = format!("{}.units{}-{}", graph.name, units.start, units.end);
    (sub, members)
}

/// The graph of stage `s` when node `i` runs on stage `stage_of_node[i]` (load-time
/// nodes go wherever they are needed, whatever stage they are given), and the index in
/// `graph` of each of its nodes.
pub fn stage_graph(graph: &Graph, stage_of_node: &[StageId], s: StageId) -> (Graph, Vec<usize>) {
    let constant_node = graph.constants().node;
    let uses = graph.uses();
    let outputs: BTreeSet<ValueId> = graph.outputs.iter().copied().collect();
    // Nodes of the stage, plus the load-time nodes they need (transitively).
    let mut members: BTreeSet<usize> =
        (0..graph.nodes.len()).filter(|&i| !constant_node[i] && stage_of_node[i] == s).collect();
    let mut stack: Vec<usize> = members.iter().copied().collect();
    while let Some(i) = stack.pop() {
        for v in graph.nodes[i].inputs.iter().flatten() {
            if let ValueDef::Node(p) = graph.value(*v).def {
                if constant_node[p.index()] && members.insert(p.index()) {
                    stack.push(p.index());
                }
            }
        }
    }
    let mut sub = Graph::new(format!("{}.stage{s}", graph.name));
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let produced: BTreeSet<ValueId> = members.iter().flat_map(|&i| graph.nodes[i].outputs.iter().copied()).collect();
    // Inputs and data, in the original value order.
    let mut needed: BTreeSet<ValueId> = BTreeSet::new();
    for &i in &members {
        needed.extend(graph.nodes[i].inputs.iter().flatten().copied());
    }
    for &v in &needed {
        if produced.contains(&v) {
            continue;
        }
        let value = graph.value(v);
        let id = match &value.def {
            ValueDef::Weight(_) | ValueDef::Const(_) => {
                sub.add_value(value.name.clone(), value.ty.clone(), value.def.clone())
            }
            ValueDef::Input | ValueDef::Node(_) => {
                let ty = value.ty.clone().unwrap_or_else(|| shardc_ir::TensorType::new(shardc_ir::DType::F32, vec![]));
                sub.add_input(value.name.clone(), ty)
            }
        };
        map.insert(v, id);
    }
    for &i in &members {
        let node = &graph.nodes[i];
        let inputs = node.inputs.iter().map(|v| v.map(|v| map[&v])).collect();
        map.extend(sub.append_copy(graph, node, inputs));
    }
    // Outputs: graph outputs computed here, and what other stages read.
    for &i in &members {
        if constant_node[i] {
            continue;
        }
        for &o in &graph.nodes[i].outputs {
            let read_elsewhere =
                uses[o.index()].iter().any(|c| stage_of_node[c.index()] != s && !constant_node[c.index()]);
            if outputs.contains(&o) || read_elsewhere {
                sub.outputs.push(map[&o]);
            }
        }
    }
    // KV-cache pairs whose past and present both live here stay pairs.
    for c in &graph.cache {
        if let (Some(&past), Some(&present)) = (map.get(&c.past), map.get(&c.present)) {
            if sub.inputs.contains(&past) && sub.outputs.contains(&present) {
                sub.cache.push(shardc_ir::CachePair { past, present, axis: c.axis });
            }
        }
    }
    if !sub.cache.is_empty() {
        sub.recompute_beyond = graph.recompute_beyond;
    }
    sub.max_context = graph.max_context;
    (sub, members.into_iter().collect())
}
