//! Weights as they will be stored: sized for planning ([`retype_weights`]) and
//! retyped for writing ([`store_weights`]).

use std::borrow::Cow;
use std::collections::HashMap;

use shardc_format::plan::QuantizationReport;
use shardc_ir::{DType, Graph, Op, TensorType, ValueDef, ValueId, WeightLocation};

use crate::quantize::Quantization;

/// Size every floating-point weight as `dtype` (planning only: the graph keeps its
/// computations, the weights lose their file locations).
pub fn retype_weights(graph: &mut Graph, dtype: DType) {
    for v in &mut graph.values {
        if let ValueDef::Weight(w) = &mut v.def {
            if w.dtype.is_ieee_float() {
                w.dtype = dtype;
                w.location = None;
                v.ty = Some(TensorType::known(dtype, &w.shape));
            }
        }
    }
}

/// `graph` with its float weights sized as `dtype` and its matrix weights quantized as
/// `quantization` says (for planning), or `graph` itself; with what quantizing did.
pub fn sized<'g>(
    graph: &'g Graph,
    dtype: Option<DType>,
    quantization: Option<&Quantization>,
) -> (Cow<'g, Graph>, Option<QuantizationReport>) {
    let retyped = match dtype {
        Some(d) => {
            let mut g = graph.clone();
            retype_weights(&mut g, d);
            Cow::Owned(g)
        }
        None => Cow::Borrowed(graph),
    };
    let Some(q) = quantization else { return (retyped, None) };
    let (g, summary) = crate::quantize::quantize(&retyped, q);
    let report = QuantizationReport {
        scheme: q.scheme.name().into(),
        group_size: q.group_size.map(|g| g as u64),
        scale_dtype: crate::quantize::SCALE_DTYPE.to_string(),
        embeddings: q.embeddings,
        weights: summary.weights.len() as u64,
        bytes_before: summary.bytes_before,
        bytes_after: summary.bytes_after,
    };
    (Cow::Owned(g), Some(report))
}

/// A graph with its weights retyped as stored, and where each stored weight comes from.
pub struct Stored {
    /// Weights carry their stored dtype and no location yet.
    pub graph: Graph,
    /// Per weight value (by index into `graph.values`): its dtype and location in the
    /// model's files.
    pub sources: HashMap<usize, (DType, WeightLocation)>,
}

/// Store every float weight as `dtype`. Consumers that are casts read the new dtype
/// directly; others get a cast back to the dtype they were built for.
pub fn store_weights(graph: &Graph, dtype: Option<DType>) -> Stored {
    let mut stored = HashMap::new();
    let mut out = Graph::new(graph.name.clone());
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut recast: Vec<(ValueId, DType)> = Vec::new();
    let uses = graph.uses();
    for (i, v) in graph.values.iter().enumerate() {
        let id = ValueId(i as u32);
        match &v.def {
            ValueDef::Input => {
                map.insert(
                    id,
                    out.add_input(v.name.clone(), v.ty.clone().unwrap_or_else(|| TensorType::new(DType::F32, vec![]))),
                );
            }
            ValueDef::Weight(w) => {
                let target = dtype.filter(|_| w.dtype.is_ieee_float()).unwrap_or(w.dtype);
                let mut nw = w.clone();
                nw.dtype = target;
                nw.location = None;
                let new =
                    out.add_value(v.name.clone(), Some(TensorType::known(target, &w.shape)), ValueDef::Weight(nw));
                if let Some(loc) = &w.location {
                    stored.insert(new.index(), (w.dtype, loc.clone()));
                }
                map.insert(id, new);
                let only_casts = uses[i].iter().all(|n| matches!(graph.node(*n).op, Op::Cast(_)));
                if target != w.dtype && !only_casts {
                    recast.push((id, w.dtype));
                }
            }
            ValueDef::Const(_) => {
                map.insert(id, out.add_value(v.name.clone(), v.ty.clone(), v.def.clone()));
            }
            ValueDef::Node(_) => {}
        }
    }
    // Casts back to the dtype the graph computes with, ahead of every node.
    for (w, original) in recast {
        let name = format!("{}:stored_as", graph.value(w).name);
        let cast = Op::Cast(shardc_ir::ops::Cast { to: original, saturate: 1, round_mode: "up".into() });
        let nid =
            out.add_node(name.clone(), cast, vec![Some(map[&w])], &[format!("{}:as_{original}", graph.value(w).name)]);
        let o = out.node(nid).outputs[0];
        out.value_mut(o).ty = graph.value(w).ty.clone();
        map.insert(w, o);
    }
    for node in &graph.nodes {
        let inputs = node
            .inputs
            .iter()
            .map(|v| {
                v.map(|v| {
                    // Casts read the stored weight itself.
                    if matches!(node.op, Op::Cast(_)) && matches!(graph.value(v).def, ValueDef::Weight(_)) {
                        out.value_by_name(&graph.value(v).name).unwrap_or(map[&v])
                    } else {
                        map[&v]
                    }
                })
            })
            .collect();
        map.extend(out.append_copy(graph, node, inputs));
    }
    out.outputs = graph.outputs.iter().map(|v| map[v]).collect();
    out.cache = graph
        .cache
        .iter()
        .map(|c| shardc_ir::CachePair { past: map[&c.past], present: map[&c.present], axis: c.axis })
        .collect();
    out.recompute_beyond = graph.recompute_beyond;
    out.max_context = graph.max_context;
    Stored { graph: out, sources: stored }
}
