//! Nodes in an order that defines every value before its use (ONNX only recommends
//! one), or an error naming a cycle.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use onnx_protobuf::NodeProto;
use shardc_ir::ValueId;

use super::error::OnnxErrorKind;
use super::node_label;

/// Node indices in an order where every input is defined first: the file order when
/// it already is one, otherwise the earliest ready node first (deterministic).
pub(super) fn topological_order(
    nodes: &[NodeProto],
    defined: &HashMap<String, ValueId>,
) -> Result<Vec<usize>, OnnxErrorKind> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains_key(out) || producer.insert(out.as_str(), i).is_some() {
                return Err(OnnxErrorKind::Redefined { value: out.clone() });
            }
        }
    }
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut pending = vec![0usize; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        for input in node.input.iter().filter(|n| !n.is_empty()) {
            match producer.get(input.as_str()) {
                Some(&p) => {
                    consumers[p].push(i);
                    pending[i] += 1;
                }
                None if defined.contains_key(input) => {}
                None => {
                    return Err(OnnxErrorKind::Undefined {
                        value: input.clone(),
                        role: format!("input of node `{}`", node_label(node, i)),
                    })
                }
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len()).filter(|&i| pending[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &consumers[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(Reverse(c));
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    Err(OnnxErrorKind::Cycle { nodes: find_cycle(nodes, &consumers, &pending) })
}

/// Name the nodes of one cycle among the nodes that never became ready.
fn find_cycle(nodes: &[NodeProto], consumers: &[Vec<usize>], pending: &[usize]) -> Vec<String> {
    let mut g = petgraph::graph::DiGraph::<usize, ()>::new();
    let stuck: Vec<usize> = (0..nodes.len()).filter(|&i| pending[i] > 0).collect();
    let index: HashMap<usize, petgraph::graph::NodeIndex> = stuck.iter().map(|&i| (i, g.add_node(i))).collect();
    for &i in &stuck {
        for c in &consumers[i] {
            if let Some(&ci) = index.get(c) {
                g.add_edge(index[&i], ci, ());
            }
        }
    }
    let cycle = petgraph::algo::tarjan_scc(&g)
        .into_iter()
        .filter(|scc| scc.len() > 1 || scc.iter().any(|&n| g.contains_edge(n, n)))
        .min_by_key(|scc| scc.iter().map(|&n| g[n]).min())
        .unwrap_or_default();
    let mut members: Vec<usize> = cycle.iter().map(|&n| g[n]).collect();
    members.sort_unstable();
    members.into_iter().map(|i| node_label(&nodes[i], i)).collect()
}
