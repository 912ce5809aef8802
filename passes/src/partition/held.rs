//! What a stage holds beyond its own units (standby units), and every tensor that
//! crosses units: what the runtime routes by when boundaries move.

use shardc_format::balance::Crossing;
use shardc_ir::{Graph, ValueDef};

use crate::plan::UnitId;
use crate::segment::Segmentation;
use crate::split::units_graph;
use crate::transmission::TransmissionMap;

/// The units a stage holds (its own and its standby units): their graph, and the held
/// unit of each of its nodes.
pub struct Held {
    pub units: std::ops::Range<usize>,
    pub names: Vec<String>,
    pub graph: Graph,
    pub node_units: Vec<usize>,
}

pub fn held_graph(graph: &Graph, seg: &Segmentation, units: std::ops::Range<usize>) -> Held {
    let (sub, members) = units_graph(graph, &seg.unit_of, units.clone());
    // Load-time nodes may belong to a unit outside (their first reader's); any held
    // unit does, since they run wherever they are needed.
    let last = units.end - units.start - 1;
    let node_units = members.iter().map(|&i| seg.unit_of[i].index().saturating_sub(units.start).min(last)).collect();
    let names = seg.units[units.clone()].iter().map(|u| u.name.clone()).collect();
    Held { units, names, graph: sub, node_units }
}

/// Every tensor that crosses units, with the units that make and read it: what the
/// runtime routes by when boundaries move. KV-cache tensors stay on their device.
pub fn crossings(graph: &Graph, seg: &Segmentation, map: &TransmissionMap) -> Vec<Crossing> {
    let local: std::collections::BTreeSet<&String> = map.device_local.values().flatten().collect();
    let constant_node = graph.constants().node;
    let uses = graph.uses();
    let mut out = Vec::new();
    for &v in &graph.inputs {
        let name = &graph.value(v).name;
        if local.contains(name) {
            continue;
        }
        let mut to: Vec<UnitId> =
            uses[v.index()].iter().filter(|n| !constant_node[n.index()]).map(|n| seg.unit_of[n.index()]).collect();
        to.sort_unstable();
        to.dedup();
        out.push(Crossing { tensor: name.clone(), from: None, to, output: false });
    }
    let mut crossing_values = std::collections::BTreeSet::new();
    for c in &seg.crossings {
        crossing_values.insert(c.value);
        let name = graph.value(c.value).name.clone();
        out.push(Crossing { tensor: name, from: Some(c.producer), to: c.consumers.clone(), output: c.output });
    }
    for &v in &graph.outputs {
        let name = &graph.value(v).name;
        if local.contains(name) || crossing_values.contains(&v) {
            continue;
        }
        if let ValueDef::Node(n) = graph.value(v).def {
            out.push(Crossing { tensor: name.clone(), from: Some(seg.unit_of[n.index()]), to: vec![], output: true });
        }
    }
    out
}
