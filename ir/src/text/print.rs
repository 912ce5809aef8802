//! Printer of the canonical text form.

use std::fmt::Write;

use super::quote;
use crate::{AttrValue, DType, Dim, Graph, TensorData, TensorType, ValueDef, ValueId};

/// Print a graph in the canonical text form.
pub fn print(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph {} {{", quote(&graph.name));
    for &id in &graph.inputs {
        let v = graph.value(id);
        let _ = writeln!(out, "  input {id} {}: {}", quote(&v.name), type_text(v.ty.as_ref()));
    }
    for id in graph.value_ids() {
        let v = graph.value(id);
        match &v.def {
            ValueDef::Weight(w) => {
                let location = match &w.location {
                    Some(l) => format!("{} @ {} + {}", quote(&l.file), l.offset, l.length),
                    None => "none".into(),
                };
                let ty = TensorType::known(w.dtype, &w.shape);
                let _ = writeln!(out, "  weight {id} {}: {} = {location}", quote(&v.name), type_text(Some(&ty)));
            }
            ValueDef::Const(t) => {
                let _ = writeln!(out, "  const {id} {}: {}", quote(&v.name), tensor_text(t));
            }
            ValueDef::Input | ValueDef::Node(_) => {}
        }
    }
    for nid in graph.node_ids() {
        let node = graph.node(nid);
        let _ = write!(out, "  {nid}");
        if let Some(unit) = node.unit {
            let _ = write!(out, " @{}", unit.text());
        }
        let _ = write!(out, " {} {}", quote(&node.name), node.op.name());
        let attrs = node.op.attributes();
        if !attrs.is_empty() {
            out.push('{');
            for (i, (name, value)) in attrs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{name}={}", attr_text(value));
            }
            out.push('}');
        }
        out.push('(');
        for (i, input) in node.inputs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match input {
                Some(v) => {
                    let _ = write!(out, "{v}");
                }
                None => out.push('_'),
            }
        }
        out.push_str(") -> ");
        for (i, &o) in node.outputs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&value_decl(graph, o));
        }
        out.push('\n');
    }
    for &id in &graph.outputs {
        let _ = writeln!(out, "  output {id}");
    }
    for c in &graph.cache {
        let _ = writeln!(out, "  cache {} -> {} axis {}", c.past, c.present, c.axis);
    }
    if let Some(n) = graph.recompute_beyond {
        let _ = writeln!(out, "  recompute beyond {n}");
    }
    if let Some(n) = graph.max_context {
        let _ = writeln!(out, "  max context {n}");
    }
    out.push_str("}\n");
    out
}

fn value_decl(graph: &Graph, id: ValueId) -> String {
    match graph.values.get(id.index()) {
        Some(v) => format!("{id} {}: {}", quote(&v.name), type_text(v.ty.as_ref())),
        None => format!("{id} \"<missing>\": ?"),
    }
}

/// `f32[batch, seq, 64]`, or `?` when unknown.
pub fn type_text(ty: Option<&TensorType>) -> String {
    match ty {
        None => "?".into(),
        Some(t) => format!("{}[{}]", t.dtype, dims_text(&t.shape)),
    }
}

/// `batch, seq, 64`.
pub fn dims_text(dims: &[Dim]) -> String {
    dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")
}

/// `i64[2] [1, 2]`.
pub fn tensor_text(t: &TensorData) -> String {
    let shape = t.shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
    format!("{}[{shape}] [{}]", t.dtype, tensor_values_text(t))
}

fn tensor_values_text(t: &TensorData) -> String {
    let items: Vec<String> = match t.dtype {
        DType::F64 => t.to_f64_vec().into_iter().map(|v| format!("{v:?}")).collect(),
        d if d.is_float() => t.to_f64_vec().into_iter().map(|v| float_text(v as f32)).collect(),
        DType::Bool => t.to_f64_vec().into_iter().map(|v| (v != 0.0).to_string()).collect(),
        DType::I64 => t.i64_elements().unwrap_or_default().iter().map(i64::to_string).collect(),
        DType::U64 => t
            .bytes()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()).to_string())
            .collect(),
        _ => t.to_f64_vec().into_iter().map(|v| (v as i64).to_string()).collect(),
    };
    items.join(", ")
}

fn float_text(v: f32) -> String {
    // `{:?}` is the shortest text that parses back to the same f32.
    format!("{v:?}")
}

/// An attribute value in the text form.
pub fn attr_text(value: &AttrValue) -> String {
    match value {
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(f) => float_text(*f),
        AttrValue::Ints(v) => format!("[{}]", v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")),
        AttrValue::Floats(v) => format!("[{}]", v.iter().map(|f| float_text(*f)).collect::<Vec<_>>().join(", ")),
        AttrValue::Str(s) => quote(s),
        AttrValue::DType(d) => d.to_string(),
        AttrValue::Tensor(t) => tensor_text(t),
    }
}
