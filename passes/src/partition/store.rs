//! Weights as they will be stored: quantized ([`quantized`]), sized for planning
//! ([`retype_weights`]) and retyped for writing ([`store_weights`]), with where each
//! stored weight comes from — a model file's bytes, or ([`Derived`]) a model weight
//! quantized when the package is written.

use std::borrow::Cow;
use std::collections::HashMap;

use shardc_format::plan::QuantizationReport;
use shardc_ir::{DType, Graph, Op, TensorType, ValueDef, ValueId, WeightLocation};

use crate::quantize::{is_quantization_parameter, Quantization, Scheme, Summary};

/// Size every floating-point weight as `dtype` (planning only: the graph keeps its
/// computations, the weights lose their file locations). Quantization parameters
/// (scales) keep their dtype.
pub fn retype_weights(graph: &mut Graph, dtype: DType) {
    let uses = graph.uses();
    let params: Vec<bool> =
        (0..graph.values.len()).map(|i| is_quantization_parameter(graph, &uses, ValueId(i as u32))).collect();
    for (i, v) in graph.values.iter_mut().enumerate() {
        if let ValueDef::Weight(w) = &mut v.def {
            if w.dtype.is_ieee_float() && !params[i] {
                w.dtype = dtype;
                w.location = None;
                v.ty = Some(TensorType::known(dtype, &w.shape));
            }
        }
    }
}

/// `graph` with its matrix weights quantized as `quantization` says (weights it
/// creates have no location: [`derivations`] says how to compute them), or `graph`
/// itself; with what quantizing did.
pub fn quantized<'g>(graph: &'g Graph, quantization: Option<&Quantization>) -> (Cow<'g, Graph>, Option<Summary>) {
    match quantization {
        Some(q) => {
            let (g, summary) = crate::quantize::quantize(graph, q);
            (Cow::Owned(g), Some(summary))
        }
        None => (Cow::Borrowed(graph), None),
    }
}

/// [`quantized`] for a plan or a compile: a quantization that finds no float matrix
/// weight is refused rather than planned as if it had done something (a model
/// already quantized, for instance, whose products read integer weights).
pub fn quantized_or_refused<'g>(
    graph: &'g Graph,
    quantization: Option<&Quantization>,
) -> Result<(Cow<'g, Graph>, Option<Summary>), super::PartitionError> {
    let (g, summary) = quantized(graph, quantization);
    if let (Some(q), Some(s)) = (quantization, &summary) {
        if s.weights.is_empty() {
            return Err(nothing_to_quantize(graph, q));
        }
    }
    Ok((g, summary))
}

/// The refusal of a quantization `q` that found no float matrix weight in `graph`,
/// saying so when the model is quantized already.
pub fn nothing_to_quantize(graph: &Graph, q: &Quantization) -> super::PartitionError {
    let uses = graph.uses();
    let already = (0..graph.values.len())
        .filter(|&i| {
            matches!(graph.values[i].def, shardc_ir::ValueDef::Weight(_))
                && crate::quantize::is_quantized_data(graph, &uses, ValueId(i as u32))
        })
        .count();
    let why = if already > 0 {
        format!("; the model is quantized already ({already} weights are integer data of DequantizeLinear, MatMulInteger or a quantized lookup): plan it without --quantize")
    } else {
        String::new()
    };
    super::PartitionError::Unsupported(format!(
        "--quantize {}: the model has no float matrix weight to quantize{why}",
        q.scheme.name()
    ))
}

/// What `plan.json` says of a quantization (`before` sized as `dtype` would store it).
pub fn quantization_report(q: &Quantization, summary: &Summary, dtype: Option<DType>) -> QuantizationReport {
    QuantizationReport {
        scheme: q.scheme.name().into(),
        group_size: q.group_size.map(|g| g as u64),
        scale_dtype: crate::quantize::SCALE_DTYPE.to_string(),
        embeddings: q.embeddings,
        weights: summary.weights.len() as u64,
        bytes_before: summary.bytes_before_at(dtype),
        bytes_after: summary.bytes_after,
    }
}

/// `graph` with its matrix weights quantized as `quantization` says and its other
/// float weights sized as `dtype` (for planning), or `graph` itself; with what
/// quantizing did.
pub fn sized<'g>(
    graph: &'g Graph,
    dtype: Option<DType>,
    quantization: Option<&Quantization>,
) -> (Cow<'g, Graph>, Option<QuantizationReport>) {
    let (quantized, summary) = quantized(graph, quantization);
    let report = quantization.zip(summary.as_ref()).map(|(q, s)| quantization_report(q, s, dtype));
    match dtype {
        Some(d) => {
            let mut g = quantized.into_owned();
            retype_weights(&mut g, d);
            (Cow::Owned(g), report)
        }
        None => (quantized, report),
    }
}

/// Which part of a quantized weight a derived weight is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Data,
    Scale,
}

/// A weight computed, when a package is written, from a model weight: its quantized
/// data or scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Derived {
    /// The model weight's dtype and bytes in the model's files, and its shape.
    pub source: (DType, WeightLocation),
    pub shape: Vec<usize>,
    pub scheme: Scheme,
    /// As [`crate::quantize::Quantized`] says.
    pub axis: usize,
    pub block: Option<usize>,
    pub part: Part,
}

/// By name of the weight it creates, how to compute each weight a quantization created
/// from `original` (the graph before quantizing, whose weights have their locations).
/// Weights whose source has no file (a `config.json` alone) have none.
pub fn derivations(original: &Graph, summary: &Summary) -> HashMap<String, Derived> {
    let mut out = HashMap::new();
    for q in &summary.weights {
        let Some(ValueDef::Weight(w)) = original.value_by_name(&q.source).map(|id| &original.value(id).def) else {
            continue;
        };
        let Some(location) = &w.location else { continue };
        for (name, part) in [(&q.data, Part::Data), (&q.scale, Part::Scale)] {
            let d = Derived {
                source: (w.dtype, location.clone()),
                shape: q.shape.clone(),
                scheme: q.scheme,
                axis: q.axis,
                block: q.block,
                part,
            };
            out.insert(name.clone(), d);
        }
    }
    out
}

/// A graph with its weights retyped as stored, and where each stored weight comes from.
pub struct Stored {
    /// Weights carry their stored dtype and no location yet.
    pub graph: Graph,
    /// Per weight value (by index into `graph.values`): its dtype and location in the
    /// model's files.
    pub sources: HashMap<usize, (DType, WeightLocation)>,
    /// Per weight value computed from a model weight (quantized data and scales).
    pub derived: HashMap<usize, Derived>,
}

/// Store every float weight as `dtype` (quantization parameters keep theirs).
/// Consumers that are casts read the new dtype directly; others get a cast back to the
/// dtype they were built for. Weights named in `derive` are computed when written.
pub fn store_weights(graph: &Graph, dtype: Option<DType>, derive: &HashMap<String, Derived>) -> Stored {
    let mut derived = HashMap::new();
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
                let param = is_quantization_parameter(graph, &uses, id);
                let target = dtype.filter(|_| w.dtype.is_ieee_float() && !param).unwrap_or(w.dtype);
                let mut nw = w.clone();
                nw.dtype = target;
                nw.location = None;
                let new =
                    out.add_value(v.name.clone(), Some(TensorType::known(target, &w.shape)), ValueDef::Weight(nw));
                if let Some(loc) = &w.location {
                    stored.insert(new.index(), (w.dtype, loc.clone()));
                } else if let Some(d) = derive.get(&v.name) {
                    derived.insert(new.index(), d.clone());
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
    out.carry_over(graph, &map);
    Stored { graph: out, sources: stored, derived }
}
