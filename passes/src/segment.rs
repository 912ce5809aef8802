//! `segment`: group nodes into units, the atoms of partitioning — the embedding, one
//! attention and one MLP sub-block per transformer layer (or one unit per layer where
//! the two are not separate sub-blocks), and the head — and record every tensor that
//! crosses from one unit to a later one.
//!
//! Units are the frontends' typed facts ([`shardc_ir::Unit`] on every node): the
//! Hugging Face lowering knows them, the ONNX frontend derives them from the graph's
//! structure. Nodes that read only weights and constants go to their earliest
//! consumer (and, like weights, are repeated on every device that reads them, so they
//! never cross a cut). Every edge then goes from a unit to the same or a later one.

use crate::plan::{StageId, UnitId};
use std::collections::{BTreeMap, BTreeSet};

use shardc_ir::{Graph, Unit as UnitFact, ValueId};

/// What a unit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    Embed,
    Attention,
    Mlp,
    /// A whole layer (attention and MLP not separate sub-blocks).
    Layer,
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
    pub producer: UnitId,
    /// Consumer units after the producer, sorted.
    pub consumers: Vec<UnitId>,
    /// Also a graph output.
    pub output: bool,
}

/// The units of a graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Segmentation {
    pub units: Vec<Unit>,
    pub layers: usize,
    /// Unit of every node.
    pub unit_of: Vec<UnitId>,
    pub crossings: Vec<Crossing>,
}

/// Why a graph cannot be segmented.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("segment: {0}")]
pub struct SegmentError(pub String);

fn describe(u: UnitFact) -> (String, UnitKind, Option<usize>) {
    match u {
        UnitFact::Embed => ("embed".into(), UnitKind::Embed, None),
        UnitFact::Attention(l) => (format!("layer {l} attention"), UnitKind::Attention, Some(l as usize)),
        UnitFact::Mlp(l) => (format!("layer {l} mlp"), UnitKind::Mlp, Some(l as usize)),
        UnitFact::Layer(l) => (format!("layer {l}"), UnitKind::Layer, Some(l as usize)),
        UnitFact::Head => ("head".into(), UnitKind::Head, None),
    }
}

/// Segment a graph into units.
pub fn segment(graph: &Graph) -> Result<Segmentation, SegmentError> {
    let constant_node = graph.constants().node;
    // The units present, in model order.
    let mut present: BTreeMap<u64, UnitFact> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if constant_node[i] {
            continue;
        }
        let u = node.unit.ok_or_else(|| {
            SegmentError(format!(
                "node `{}` ({}) has no unit: the graph carries no unit facts, so it cannot be cut into units",
                node.name,
                node.op.name()
            ))
        })?;
        present.insert(u.order(), u);
    }
    if !present.values().any(|u| u.layer().is_some()) {
        return Err(SegmentError("no transformer layers: no node belongs to a layer's unit".into()));
    }
    let index: BTreeMap<u64, usize> = present.keys().enumerate().map(|(i, &k)| (k, i)).collect();
    let head = present.len() - 1;
    let mut unit = vec![0usize; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if let (false, Some(u)) = (constant_node[i], node.unit) {
            unit[i] = index[&u.order()];
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
                    producer: UnitId(unit[i]),
                    consumers: consumers.into_iter().map(UnitId).collect(),
                    output: outputs.contains(&o),
                });
            }
        }
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); present.len()];
    for (i, &u) in unit.iter().enumerate() {
        members[u].push(i);
    }
    let units: Vec<Unit> = present
        .values()
        .zip(members)
        .map(|(&fact, nodes)| {
            let (name, kind, layer) = describe(fact);
            Unit { name, kind, layer, nodes }
        })
        .collect();
    let layers = units.iter().filter_map(|u| u.layer).max().map_or(0, |l| l + 1);
    Ok(Segmentation { units, layers, unit_of: unit.into_iter().map(UnitId).collect(), crossings })
}

impl Segmentation {
    /// Stage of every node under a plan (stages are unit ranges).
    pub fn stage_of_nodes(&self, plan: &[crate::plan::Stage]) -> Vec<StageId> {
        let mut stage_of_unit = vec![StageId(0); self.units.len()];
        for (s, st) in plan.iter().enumerate() {
            stage_of_unit[st.start..st.end].fill(StageId(s));
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
