//! From a shape-inferred graph, its segmentation, a device profile and a workload to a
//! partitioning [`Problem`], with the per-unit figures reports show.

use std::collections::{BTreeMap, BTreeSet};

use shardc_ir::{Graph, ValueDef};

use super::problem::{Objective, Problem, SharedWeight, UnitId};
use crate::cost::{dominant_weight_dtype, has_past, node_costs, sizes, CostError, NodeCost, Phase, Workload};
use crate::devices::{Device, Profile};
use crate::kernels::{works, Work};
use crate::segment::Segmentation;

/// Everything the planner was told.
#[derive(Clone, Debug)]
pub struct PlanInputs {
    pub workload: Workload,
    pub objective: Objective,
    /// Fraction of each device's memory kept free (0.1 = 10%).
    pub margin: f64,
    /// Compute dtype name for the FLOP/s lookup (`f32`, `f16`, …).
    pub compute_dtype: String,
    /// Bytes per KV-cache element (the weights' element size when not given).
    pub kv_bytes: Option<f64>,
}

/// Memory of one unit, split by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct UnitMemory {
    pub weights: f64,
    pub kv_cache: f64,
    pub activations: f64,
}

/// The problem and what it was built from.
#[derive(Clone, Debug)]
pub struct Model {
    pub problem: Problem,
    pub memory: Vec<UnitMemory>,
    /// Bytes the whole model needs on one device (weights once, all KV, largest activation).
    pub total_need: f64,
}

/// Build the partitioning problem.
pub fn build(graph: &Graph, seg: &Segmentation, profile: &Profile, inputs: &PlanInputs) -> Result<Model, CostError> {
    let past = has_past(graph);
    // A graph that is not a language model (an encoder) runs one forward pass per
    // request: its "decode step" is that pass, and a request has no decode steps.
    let generative = crate::roles::lm_roles(graph).is_some();
    let pre_bind = Phase::Prefill.bindings(&inputs.workload, past);
    let dec_bind = if generative { Phase::Decode.bindings(&inputs.workload, past) } else { pre_bind.clone() };
    let pre_cost = node_costs(graph, &pre_bind)?;
    let dec_cost = node_costs(graph, &dec_bind)?;
    let pre_size = sizes(graph, &pre_bind)?;
    let dec_size = sizes(graph, &dec_bind)?;
    let n = seg.units.len();
    let uses = graph.uses();

    let pre_work = works(graph, &pre_bind);
    let dec_work = works(graph, &dec_bind);
    // A device with a kernel table: each node at what the runtime's kernel for its
    // kind and size reached there; else the slower of its FLOPs and bytes at the
    // device's sustained figures. A missing figure is refused before a problem is
    // built (check_compute_dtype, kernels::check).
    let time = |d: &Device, costs: &[NodeCost], work: &[Work], nodes: &[usize]| -> f64 {
        let f = d.flops_for(&inputs.compute_dtype).unwrap_or(0.0);
        nodes
            .iter()
            .map(|&i| match &d.kernels {
                Some(k) => k.time(work[i], &costs[i]).unwrap_or(f64::INFINITY),
                None => (costs[i].flops / f).max(costs[i].bytes / d.bandwidth),
            })
            .sum()
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for d in &profile.devices {
        prefill.push(seg.units.iter().map(|u| time(d, &pre_cost, &pre_work, &u.nodes)).collect());
        decode.push(seg.units.iter().map(|u| time(d, &dec_cost, &dec_work, &u.nodes)).collect());
    }

    // Weights per unit; a weight read by several units is shared.
    let mut weight_units: BTreeMap<usize, BTreeSet<UnitId>> = BTreeMap::new();
    let mut kv_units: BTreeMap<usize, UnitId> = BTreeMap::new();
    for (i, value) in graph.values.iter().enumerate() {
        let readers: BTreeSet<UnitId> = uses[i].iter().map(|c| seg.unit_of[c.index()]).collect();
        match &value.def {
            ValueDef::Weight(_) if !readers.is_empty() => {
                weight_units.insert(i, readers);
            }
            ValueDef::Input if graph.cache_of_input(shardc_ir::ValueId(i as u32)).is_some() => {
                if let Some(&u) = readers.iter().next() {
                    kv_units.insert(i, u);
                }
            }
            _ => {}
        }
    }
    let mut memory = vec![UnitMemory::default(); n];
    let mut shared = Vec::new();
    let weight_bytes = |i: usize| match &graph.values[i].def {
        ValueDef::Weight(w) => w.byte_len() as f64,
        _ => 0.0,
    };
    for (&i, readers) in &weight_units {
        if readers.len() == 1 {
            memory[*readers.iter().next().unwrap_or(&UnitId(0))].weights += weight_bytes(i);
        } else {
            shared.push(SharedWeight { bytes: weight_bytes(i), units: readers.iter().copied().collect() });
        }
    }
    // KV cache at the full context: the past input's elements with past = max_context.
    let kv_element =
        inputs.kv_bytes.unwrap_or_else(|| dominant_weight_dtype(graph).map_or(4.0, |d| f64::from(d.bits()) / 8.0));
    let mut full = Phase::Decode.bindings(&inputs.workload, true);
    full.insert("past".into(), inputs.workload.max_context as i64);
    let full_size = sizes(graph, &full)?;
    for (&i, &u) in &kv_units {
        memory[u].kv_cache += full_size.elements[i] * kv_element;
    }
    // Peak activations: the largest node footprint (computed inputs and outputs) in prefill.
    for (u, unit) in seg.units.iter().enumerate() {
        memory[u].activations = unit
            .nodes
            .iter()
            .map(|&i| {
                let node = &graph.nodes[i];
                let ins: f64 = node
                    .inputs
                    .iter()
                    .flatten()
                    .filter(|v| !pre_size.constant[v.index()])
                    .map(|v| pre_size.bytes[v.index()])
                    .sum();
                let outs: f64 = node
                    .outputs
                    .iter()
                    .filter(|v| !pre_size.constant[v.index()])
                    .map(|v| pre_size.bytes[v.index()])
                    .sum();
                ins + outs
            })
            .fold(0.0, f64::max);
    }

    // Bytes crossing each cut: every computed value made at or before it and read after.
    let mut cut_prefill = vec![0.0; n.saturating_sub(1)];
    let mut cut_decode = vec![0.0; n.saturating_sub(1)];
    for c in &seg.crossings {
        let last = *c.consumers.last().unwrap_or(&c.producer);
        for cut in c.producer.index()..last.index() {
            cut_prefill[cut] += pre_size.bytes[c.value.index()];
            cut_decode[cut] += dec_size.bytes[c.value.index()];
        }
    }

    let nd = profile.devices.len();
    let links = (0..nd).map(|a| (0..nd).map(|b| profile.link(a, b)).collect()).collect();
    let budget = profile.devices.iter().map(|d| d.memory * (1.0 - inputs.margin)).collect();
    let total_need = memory.iter().map(|m| m.weights + m.kv_cache).sum::<f64>()
        + shared.iter().map(|w| w.bytes).sum::<f64>()
        + memory.iter().map(|m| m.activations).fold(0.0, f64::max);
    let problem = Problem {
        prefill,
        decode,
        private_bytes: memory.iter().map(|m| m.weights + m.kv_cache).collect(),
        activation_bytes: memory.iter().map(|m| m.activations).collect(),
        shared,
        budget,
        cut_prefill,
        cut_decode,
        links,
        decode_tokens: if generative {
            inputs.workload.max_context.saturating_sub(inputs.workload.prompt_len) as f64
        } else {
            0.0
        },
        objective: inputs.objective,
    };
    Ok(Model { problem, memory, total_need })
}
