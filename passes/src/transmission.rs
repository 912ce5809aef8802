//! `transmission-map`: for a plan, every tensor that crosses devices — who produces it,
//! who consumes it, its dtype, symbolic shape and bytes — and whether it goes to the
//! next stage (sequential) or straight to a later one (long-range, never relayed), and
//! whether it is cheap enough to recompute where it is needed.

use std::collections::{BTreeMap, BTreeSet};

use shardc_format::Endpoint;
use shardc_ir::{Graph, ValueDef, ValueId};

use crate::cost::{node_costs, sizes, CostError, Phase, Workload};
use crate::plan::{Stage, StageId};
use crate::segment::Segmentation;

pub use shardc_format::map::{Generation, Transfer, TransferKind as Kind, TransmissionMap};

/// Build the map; `names` are device names by index.
pub fn build(
    graph: &Graph,
    seg: &Segmentation,
    plan: &[Stage],
    names: &[String],
    workload: &Workload,
) -> Result<TransmissionMap, CostError> {
    let has_past = crate::cost::has_past(graph);
    // Per token for a language model; per forward pass for other graphs.
    let step = if crate::roles::lm_roles(graph).is_some() { Phase::Decode } else { Phase::Prefill };
    let dec = sizes(graph, &step.bindings(workload, has_past))?;
    let pre = sizes(graph, &Phase::Prefill.bindings(workload, has_past))?;
    let costs = node_costs(graph, &step.bindings(workload, has_past))?;
    let stages = seg.stage_of_nodes(plan);
    let stage_of_node = |i: usize| stages[i];
    let name_of = |s: StageId| names[plan[s].device].clone();
    let device = |s: StageId| Endpoint::Device(name_of(s));
    let uses = graph.uses();
    let outputs: BTreeSet<ValueId> = graph.outputs.iter().copied().collect();
    let describe = |v: ValueId| {
        let ty = graph.value(v).ty.as_ref();
        (ty.map(|t| t.dtype), ty.map(|t| t.shape.clone()))
    };
    let producer = |v: ValueId| match graph.value(v).def {
        ValueDef::Node(n) => Some(n.index()),
        _ => None,
    };
    // FLOPs to recompute a value from graph inputs and constants, or None if it needs a weight.
    let mut memo: BTreeMap<usize, Option<f64>> = BTreeMap::new();
    fn recompute_cost(
        graph: &Graph,
        costs: &[crate::cost::NodeCost],
        memo: &mut BTreeMap<usize, Option<f64>>,
        v: ValueId,
    ) -> Option<f64> {
        match graph.value(v).def {
            ValueDef::Weight(_) => None,
            ValueDef::Input | ValueDef::Const(_) => Some(0.0),
            ValueDef::Node(n) => {
                if let Some(c) = memo.get(&n.index()) {
                    return *c;
                }
                let mut total = Some(costs[n.index()].flops);
                for i in graph.node(n).inputs.iter().flatten() {
                    total = match (total, recompute_cost(graph, costs, memo, *i)) {
                        (Some(a), Some(b)) => Some(a + b),
                        _ => None,
                    };
                }
                memo.insert(n.index(), total);
                total
            }
        }
    }

    let mut transfers = Vec::new();
    let mut device_local: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for &input in &graph.inputs {
        let v = graph.value(input);
        let readers: BTreeSet<StageId> = uses[input.index()].iter().map(|c| stage_of_node(c.index())).collect();
        if graph.cache_of_input(input).is_some() {
            for s in &readers {
                device_local.entry(name_of(*s)).or_default().push(v.name.clone());
            }
            continue;
        }
        let (dtype, shape) = describe(input);
        transfers.push(Transfer {
            tensor: v.name.clone(),
            from: Endpoint::Client,
            to: readers.iter().map(|&s| device(s)).collect(),
            dtype,
            shape,
            bytes_per_token: dec.bytes[input.index()],
            prefill_bytes: pre.bytes[input.index()],
            kind: Kind::Input,
            recomputable: false,
        });
    }
    let constant_node = graph.constants().node;
    for (i, node) in graph.nodes.iter().enumerate() {
        if constant_node[i] {
            continue;
        }
        for &o in &node.outputs {
            let from = stage_of_node(i);
            let to: BTreeSet<StageId> =
                uses[o.index()].iter().map(|c| stage_of_node(c.index())).filter(|&s| s != from).collect();
            let name = graph.value(o).name.clone();
            let (dtype, shape) = describe(o);
            if outputs.contains(&o) {
                if graph.cache_of_output(o).is_some() {
                    device_local.entry(name_of(from)).or_default().push(name.clone());
                } else {
                    transfers.push(Transfer {
                        tensor: name.clone(),
                        from: device(from),
                        to: vec![Endpoint::Client],
                        dtype,
                        shape: shape.clone(),
                        bytes_per_token: dec.bytes[o.index()],
                        prefill_bytes: pre.bytes[o.index()],
                        kind: Kind::Output,
                        recomputable: false,
                    });
                }
            }
            if to.is_empty() {
                continue;
            }
            let kind =
                if to.iter().all(|&s| s.index() == from.index() + 1) { Kind::Sequential } else { Kind::LongRange };
            let flops = recompute_cost(graph, &costs, &mut memo, o);
            let recomputable = flops.is_some_and(|f| f <= dec.bytes[o.index()]) && producer(o).is_some();
            transfers.push(Transfer {
                tensor: name,
                from: device(from),
                to: to.iter().map(|&s| device(s)).collect(),
                dtype,
                shape,
                bytes_per_token: dec.bytes[o.index()],
                prefill_bytes: pre.bytes[o.index()],
                kind,
                recomputable,
            });
        }
    }
    let generation = crate::roles::lm_roles(graph).map(|r| Generation {
        token_input: graph.value(r.token_input).name.clone(),
        logits: graph.value(r.logits).name.clone(),
        kv_cache: !graph.cache.is_empty(),
        recompute_beyond: graph.recompute_beyond,
        max_context: graph.max_context,
    });
    Ok(TransmissionMap {
        format: shardc_format::map::FORMAT,
        stages: plan.iter().map(|s| names[s.device].clone()).collect(),
        generation,
        device_local,
        transfers,
    })
}
