//! `transmission-map`: for a plan, every tensor that crosses devices — who produces it,
//! who consumes it, its dtype, symbolic shape and bytes — and whether it goes to the
//! next stage (sequential) or straight to a later one (long-range, never relayed), and
//! whether it is cheap enough to recompute where it is needed.

use std::collections::{BTreeMap, BTreeSet};

use shardc_ir::text::print::dims_text;
use shardc_ir::{Graph, ValueDef, ValueId};

use crate::cost::{node_costs, sizes, CostError, Phase, Workload};
use crate::plan::Stage;
use crate::segment::Segmentation;

/// How a tensor travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// To the next stage only.
    Sequential,
    /// Straight to non-adjacent stages.
    LongRange,
    /// A graph input, from the client to the stages that read it.
    Input,
    /// A graph output, from its stage to the client.
    Output,
}

/// One entry of the map.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub tensor: String,
    /// Device name, or `client`.
    pub from: String,
    pub to: Vec<String>,
    pub dtype: String,
    pub shape: String,
    /// Bytes per decode step (batch as planned).
    pub bytes_per_token: f64,
    /// Bytes of the prefill.
    pub prefill_bytes: f64,
    pub kind: Kind,
    /// Computed from graph inputs and constants alone, with fewer FLOPs than bytes to
    /// send: a device could compute it instead of receiving it.
    pub recomputable: bool,
}

/// The tensors a client drives a language model by.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// The token-ids input the client sends.
    pub token_input: String,
    /// The logits output the client reads the next token from.
    pub logits: String,
    /// Whether the graph carries a KV cache. Without one each step runs on every
    /// token so far, which the client re-sends.
    pub kv_cache: bool,
    /// The step that first takes the context beyond this recomputes the KV cache
    /// from all the tokens (see `Graph::recompute_beyond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recompute_beyond: Option<u64>,
    /// The longest context (prompt + generated tokens) the packages serve, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<u64>,
}

/// The transmission map of a plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransmissionMap {
    /// Device names in pipeline order.
    pub stages: Vec<String>,
    /// For a language model: the token input and the logits (absent for other graphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Device-local state: KV-cache inputs and outputs each stage keeps.
    pub device_local: BTreeMap<String, Vec<String>>,
    pub transfers: Vec<Transfer>,
}

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
    let dec = sizes(graph, &workload.bindings(step, has_past))?;
    let pre = sizes(graph, &workload.bindings(Phase::Prefill, has_past))?;
    let costs = node_costs(graph, &workload.bindings(step, has_past))?;
    let stages = seg.stage_of_nodes(plan);
    let stage_of_node = |i: usize| stages[i];
    let device = |s: usize| names[plan[s].device].clone();
    let uses = graph.uses();
    let outputs: BTreeSet<ValueId> = graph.outputs.iter().copied().collect();
    let describe = |v: ValueId| {
        let ty = graph.value(v).ty.as_ref();
        (
            ty.map_or("?".to_string(), |t| t.dtype.to_string()),
            ty.map_or("?".to_string(), |t| format!("[{}]", dims_text(&t.shape))),
        )
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
        let readers: BTreeSet<usize> = uses[input.index()].iter().map(|c| stage_of_node(c.index())).collect();
        if graph.cache_of_input(input).is_some() {
            for s in &readers {
                device_local.entry(device(*s)).or_default().push(v.name.clone());
            }
            continue;
        }
        let (dtype, shape) = describe(input);
        transfers.push(Transfer {
            tensor: v.name.clone(),
            from: "client".into(),
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
            let to: BTreeSet<usize> =
                uses[o.index()].iter().map(|c| stage_of_node(c.index())).filter(|&s| s != from).collect();
            let name = graph.value(o).name.clone();
            let (dtype, shape) = describe(o);
            if outputs.contains(&o) {
                if graph.cache_of_output(o).is_some() {
                    device_local.entry(device(from)).or_default().push(name.clone());
                } else {
                    transfers.push(Transfer {
                        tensor: name.clone(),
                        from: device(from),
                        to: vec!["client".into()],
                        dtype: dtype.clone(),
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
            let kind = if to.iter().all(|&s| s == from + 1) { Kind::Sequential } else { Kind::LongRange };
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
        stages: plan.iter().map(|s| names[s.device].clone()).collect(),
        generation,
        device_local,
        transfers,
    })
}
