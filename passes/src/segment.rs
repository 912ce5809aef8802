//! `segment`: group nodes into units, the atoms of partitioning — the embedding, one
//! attention and one MLP sub-block per transformer layer, and the head — and record
//! every tensor that crosses from one unit to a later one.
//!
//! Layers and sub-blocks are read from node names (`…/layers.3/self_attn/…`,
//! `…/h.3/mlp/…`, as exporters and shardc's own lowering write them). A node with a
//! layer but no recognisable sub-block (a residual `Add`) joins the latest unit it
//! reads from; a node outside every layer joins the embedding when it reads only from
//! the embedding (masks, positions, rotary tables), else the head. Nodes that read
//! only weights and constants go to their earliest consumer (and, like weights, are
//! repeated on every device that reads them, so they never cross a cut). Every edge
//! then goes from a unit to the same or a later one.

use std::collections::BTreeSet;

use shardc_ir::{Graph, ValueId};

use crate::cost::constant_nodes;

/// What a unit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    Embed,
    Attention,
    Mlp,
    Head,
}

/// A unit: a set of nodes that always run on one device.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Unit {
    pub name: String,
    pub kind: UnitKind,
    pub layer: Option<usize>,
    /// Node indices, in graph order.
    pub nodes: Vec<usize>,
}

/// A value read by a unit other than the one that computes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Crossing {
    pub value: ValueId,
    pub producer: usize,
    /// Consumer units after the producer, sorted.
    pub consumers: Vec<usize>,
    /// Also a graph output.
    pub output: bool,
}

/// The units of a graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Segmentation {
    pub units: Vec<Unit>,
    pub layers: usize,
    /// Unit of every node.
    pub unit_of: Vec<usize>,
    pub crossings: Vec<Crossing>,
}

/// Why a graph cannot be segmented.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("segment: {0}")]
pub struct SegmentError(pub String);

const CONTAINERS: &[&str] = &["layers", "layer", "h", "blocks", "block"];

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Attention,
    Mlp,
    Unknown,
}

fn classify(name: &str) -> Option<(usize, Class)> {
    let tokens: Vec<&str> = name.split(['/', '.', ':']).collect();
    for (i, pair) in tokens.windows(2).enumerate() {
        if CONTAINERS.contains(&pair[0]) {
            if let Ok(layer) = pair[1].parse::<usize>() {
                let next = tokens.get(i + 2).copied().unwrap_or("").to_ascii_lowercase();
                let class = if next.contains("mlp")
                    || next.contains("feed_forward")
                    || next == "ln_2"
                    || next == "post_attention_layernorm"
                {
                    Class::Mlp
                } else if next.contains("attn")
                    || next.contains("attention")
                    || next == "input_layernorm"
                    || next == "ln_1"
                {
                    Class::Attention
                } else {
                    Class::Unknown
                };
                return Some((layer, class));
            }
        }
    }
    None
}

/// Segment a graph into units.
pub fn segment(graph: &Graph) -> Result<Segmentation, SegmentError> {
    let classes: Vec<Option<(usize, Class)>> = graph.nodes.iter().map(|n| classify(&n.name)).collect();
    let layers = classes.iter().flatten().map(|(l, _)| l + 1).max().unwrap_or(0);
    if layers == 0 {
        return Err(SegmentError(
            "no transformer layers recognised in node names (`layers.N`, `h.N`, …); cannot cut the graph into units"
                .into(),
        ));
    }
    let head = 1 + 2 * layers;
    let (constant_node, _) = constant_nodes(graph);
    let mut producer_unit: Vec<Option<usize>> = vec![None; graph.values.len()];
    let mut unit = vec![0usize; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if constant_node[i] {
            continue;
        }
        let from = node.inputs.iter().flatten().filter_map(|v| producer_unit[v.index()]).max().unwrap_or(0);
        unit[i] = match classes[i] {
            Some((l, Class::Attention)) => from.max(1 + 2 * l),
            Some((l, Class::Mlp)) => from.max(2 + 2 * l),
            Some((l, Class::Unknown)) => from.max(1 + 2 * l),
            None if from == 0 => 0,
            None => head.max(from),
        };
        for &o in &node.outputs {
            producer_unit[o.index()] = Some(unit[i]);
        }
    }
    // Load-time nodes run with their earliest consumer.
    let uses = graph.uses();
    let outputs: BTreeSet<ValueId> = graph.outputs.iter().copied().collect();
    for i in (0..graph.nodes.len()).rev() {
        if !constant_node[i] {
            continue;
        }
        let node = &graph.nodes[i];
        let mut u = usize::MAX;
        for &o in &node.outputs {
            for c in &uses[o.index()] {
                u = u.min(unit[c.index()]);
            }
            if outputs.contains(&o) {
                u = u.min(head);
            }
        }
        unit[i] = if u == usize::MAX { head } else { u };
    }
    // Check the order and collect crossings.
    let mut crossings = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        // Load-time results are recomputed where they are read, like weights are copied.
        if constant_node[i] {
            continue;
        }
        for &o in &node.outputs {
            let mut consumers = BTreeSet::new();
            for c in &uses[o.index()] {
                let cu = unit[c.index()];
                if cu < unit[i] {
                    return Err(SegmentError(format!(
                        "node `{}` reads `{}` from a later part of the model (node `{}`)",
                        graph.nodes[c.index()].name,
                        graph.value(o).name,
                        node.name
                    )));
                }
                if cu > unit[i] {
                    consumers.insert(cu);
                }
            }
            if !consumers.is_empty() {
                crossings.push(Crossing {
                    value: o,
                    producer: unit[i],
                    consumers: consumers.into_iter().collect(),
                    output: outputs.contains(&o),
                });
            }
        }
    }
    // Name the units and drop empty ones.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); head + 1];
    for (i, &u) in unit.iter().enumerate() {
        members[u].push(i);
    }
    let mut remap = vec![usize::MAX; head + 1];
    let mut units = Vec::new();
    for (u, nodes) in members.into_iter().enumerate() {
        if nodes.is_empty() {
            continue;
        }
        let (name, kind, layer) = if u == 0 {
            ("embed".to_string(), UnitKind::Embed, None)
        } else if u == head {
            ("head".to_string(), UnitKind::Head, None)
        } else if u % 2 == 1 {
            let l = (u - 1) / 2;
            (format!("layer {l} attention"), UnitKind::Attention, Some(l))
        } else {
            let l = (u - 2) / 2;
            (format!("layer {l} mlp"), UnitKind::Mlp, Some(l))
        };
        remap[u] = units.len();
        units.push(Unit { name, kind, layer, nodes });
    }
    let unit_of = unit.iter().map(|&u| remap[u]).collect();
    for c in &mut crossings {
        c.producer = remap[c.producer];
        for x in &mut c.consumers {
            *x = remap[*x];
        }
    }
    Ok(Segmentation { units, layers, unit_of, crossings })
}

impl Segmentation {
    /// Stage of every node under a plan (stages are unit ranges).
    pub fn stage_of_nodes(&self, plan: &[crate::plan::Stage]) -> Vec<usize> {
        let mut stage_of_unit = vec![0usize; self.units.len()];
        for (s, st) in plan.iter().enumerate() {
            stage_of_unit[st.start..st.end].fill(s);
        }
        self.unit_of.iter().map(|&u| stage_of_unit[u]).collect()
    }

    /// Group (transformer layer) of each unit: the embedding with the first layer, the
    /// head with the last.
    pub fn groups(&self) -> Vec<usize> {
        self.units
            .iter()
            .map(|u| match (u.kind, u.layer) {
                (_, Some(l)) => l,
                (UnitKind::Head, None) => self.layers.saturating_sub(1),
                _ => 0,
            })
            .collect()
    }
}
