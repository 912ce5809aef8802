//! `shardc inspect`: what a model is, at a glance.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;
use shardc_ir::text::print::type_text;
use shardc_ir::{Graph, ValueDef};
use shardc_passes::quantity::bytes_text;
use shardc_passes::quantize::{is_quantization_parameter, is_quantized_data};

/// Everything `inspect` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub format: String,
    pub graph: String,
    pub nodes_imported: usize,
    pub nodes_after_simplify: usize,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Elements of floating-point weights.
    pub parameters: u64,
    /// Per weight dtype: elements and bytes.
    pub weights_by_dtype: BTreeMap<String, DTypeTotals>,
    pub transformer_layers: usize,
    /// Op histogram of the imported graph.
    pub ops: BTreeMap<String, usize>,
    /// Dimensions left unknown after `infer-shapes`.
    pub unknown_dims: usize,
    /// Initializers or checkpoint tensors the graph does not use.
    pub unused_tensors: Vec<String>,
}

/// A graph input or output.
#[derive(Debug, Serialize)]
pub struct Port {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// Totals for one dtype.
#[derive(Debug, Serialize, Default)]
pub struct DTypeTotals {
    pub elements: u64,
    pub bytes: u64,
}

/// Inputs of the report that come from the frontend.
pub struct Source {
    /// The path as the user gave it.
    pub model: String,
    /// One line on the format (see [`crate::load::LoadedModel::format`]).
    pub format: String,
    pub unused_tensors: Vec<String>,
}

/// Build the report from the imported graph and the graph after the pipeline.
pub fn report(source: Source, imported: &Graph, simplified: &Graph) -> Report {
    let port = |g: &Graph, v: shardc_ir::ValueId| Port {
        name: g.value(v).name.clone(),
        ty: type_text(g.value(v).ty.as_ref()),
    };
    let mut weights_by_dtype: BTreeMap<String, DTypeTotals> = BTreeMap::new();
    let mut parameters = 0;
    let uses = imported.uses();
    for (i, value) in imported.values.iter().enumerate() {
        if let ValueDef::Weight(w) = &value.def {
            let t = weights_by_dtype.entry(w.dtype.to_string()).or_default();
            t.elements += w.elements();
            t.bytes += w.byte_len();
            // Float weights and quantized data; not shape constants, scales or zero points.
            let id = shardc_ir::ValueId(i as u32);
            if (w.dtype.is_float() && !is_quantization_parameter(imported, &uses, id))
                || is_quantized_data(imported, &uses, id)
            {
                parameters += w.elements();
            }
        } else if let ValueDef::Const(t) = &value.def {
            // A small quantized weight (a norm's, say) is held inline like any small
            // integer initializer; it is still a parameter.
            if is_quantized_data(imported, &uses, shardc_ir::ValueId(i as u32)) {
                parameters += t.shape.iter().product::<usize>() as u64;
            }
        }
    }
    let unknown_dims = simplified
        .values
        .iter()
        .filter_map(|v| v.ty.as_ref())
        .map(|t| t.shape.iter().filter(|d| !d.is_determined()).count())
        .sum();
    Report {
        model: source.model,
        format: source.format,
        graph: imported.name.clone(),
        nodes_imported: imported.nodes.len(),
        nodes_after_simplify: simplified.nodes.len(),
        inputs: simplified.inputs.iter().map(|&v| port(simplified, v)).collect(),
        outputs: simplified.outputs.iter().map(|&v| port(simplified, v)).collect(),
        parameters,
        weights_by_dtype,
        transformer_layers: count_layers(imported),
        ops: imported.op_histogram().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        unknown_dims,
        unused_tensors: source.unused_tensors,
    }
}

/// Path segments that introduce a transformer layer index (`layers.3`, `h.3`, ...).
const LAYER_CONTAINERS: &[&str] = &["layers", "layer", "h", "blocks", "block"];

/// Count transformer layers: distinct indices after a layer container in node and
/// weight names (`/model/layers.3/self_attn/MatMul`, `transformer.h.3.ln_1.weight`).
pub fn count_layers(graph: &Graph) -> usize {
    let mut indices = BTreeSet::new();
    let names = graph
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(graph.values.iter().filter(|v| matches!(v.def, ValueDef::Weight(_))).map(|v| v.name.as_str()));
    for name in names {
        let tokens: Vec<&str> = name.split(['/', '.', ':']).collect();
        for pair in tokens.windows(2) {
            if LAYER_CONTAINERS.contains(&pair[0]) {
                if let Ok(i) = pair[1].parse::<u32>() {
                    indices.insert(i);
                }
            }
        }
    }
    indices.len()
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// The text form printed by `shardc inspect`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "model       {}", self.model);
        let _ = writeln!(out, "format      {}", self.format);
        let _ = writeln!(
            out,
            "graph       {}: {} nodes imported, {} after simplify",
            self.graph, self.nodes_imported, self.nodes_after_simplify
        );
        for p in &self.inputs {
            let _ = writeln!(out, "input       {}: {}", p.name, p.ty);
        }
        for p in &self.outputs {
            let _ = writeln!(out, "output      {}: {}", p.name, p.ty);
        }
        let total_bytes: u64 = self.weights_by_dtype.values().map(|t| t.bytes).sum();
        let _ =
            writeln!(out, "parameters  {} ({} of weights)", thousands(self.parameters), bytes_text(total_bytes as f64));
        for (dtype, t) in &self.weights_by_dtype {
            let _ = writeln!(out, "  {dtype:<9} {} elements, {}", thousands(t.elements), bytes_text(t.bytes as f64));
        }
        let _ = writeln!(out, "layers      {} transformer layers recognised", self.transformer_layers);
        let ops: Vec<String> = self.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "ops         {}", ops.join(", "));
        if self.unknown_dims > 0 {
            let _ = writeln!(out, "warning     {} dimensions remain unknown after infer-shapes", self.unknown_dims);
        }
        if !self.unused_tensors.is_empty() {
            let _ =
                writeln!(out, "unused      {} tensors: {}", self.unused_tensors.len(), self.unused_tensors.join(", "));
        }
        out
    }
}
