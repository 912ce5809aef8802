//! ONNX frontend: an `.onnx` file (opsets 7–24 of the default domain, converted to
//! the IR's op forms by [`opset`]) into a [`shardc_ir::Graph`].
//!
//! The file is memory-mapped and weight bytes are never copied: tensor payloads are
//! lifted out of the message by [`wire`] before `onnx-protobuf` parses the rest, and
//! initializers become [`WeightRef`](shardc_ir::WeightRef)s (file, offset, length) into the model file or its
//! external data files. Small integer initializers (at most [`INLINE_MAX_ELEMENTS`]
//! elements, the shape arithmetic of exports) and small `Constant` nodes are held
//! inline. Every node attribute is kept as a typed op field; anything outside the op
//! set is an error naming the node.

mod error;
pub mod opset;
mod order;
pub mod structure;
mod tensor;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use onnx_protobuf::{attribute_proto::AttributeType, Message, ModelProto, NodeProto, ValueInfoProto};
use shardc_ir::ops::Attrs;
use shardc_ir::{AttrValue, DType, Dim, Graph, Op, TensorType, ValueDef, ValueId};

pub use error::{OnnxError, OnnxErrorKind};
use order::topological_order;
use tensor::TensorReader;
use wire::PayloadOwner;

/// Constants with at most this many elements are held inline in the IR.
pub const INLINE_MAX_ELEMENTS: usize = 64;

pub use opset::OPSETS;

/// An imported ONNX model.
#[derive(Debug)]
pub struct OnnxModel {
    pub graph: Graph,
    /// The `.onnx` file.
    pub path: PathBuf,
    /// Opset of the default domain.
    pub opset: i64,
    /// `producer_name producer_version`.
    pub producer: String,
    /// Initializers no node or output uses (dropped from the graph).
    pub unused_initializers: Vec<String>,
    /// The `.onnx` file's size and blake3.
    pub bytes: u64,
    pub blake3: String,
    /// External data files read, relative to the model's folder, sorted.
    pub external: Vec<String>,
    /// The transformer structure found (units, cache pairs), or why none was: such a
    /// graph runs, but cannot be cut into units.
    pub structure: Result<structure::Structure, String>,
}

/// Import an ONNX file.
pub fn import(path: &Path) -> Result<OnnxModel, OnnxError> {
    let err = |kind: OnnxErrorKind| OnnxError { file: path.to_path_buf(), kind };
    let file = File::open(path).map_err(|e| err(e.into()))?;
    let len = file.metadata().map_err(|e| err(e.into()))?.len();
    if len == 0 {
        return Err(err(OnnxErrorKind::NotAModel("the file is empty".into())));
    }
    // SAFETY: the map is read-only and lives as long as this import; shardc does not
    // write model files, and a concurrent writer is outside what it supports.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(e.into()))?;
    let stripped = wire::strip_tensor_payloads(&map).map_err(|e| err(OnnxErrorKind::Protobuf(e.to_string())))?;
    let proto =
        ModelProto::parse_from_bytes(&stripped.message).map_err(|e| err(OnnxErrorKind::Protobuf(e.to_string())))?;
    let Some(graph_proto) = proto.graph.as_ref() else {
        return Err(err(OnnxErrorKind::NotAModel("it has no graph".into())));
    };
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| err(OnnxErrorKind::NotAModel("it imports no opset of the default domain".into())))?;
    if opset > *OPSETS.end() || opset < 1 {
        return Err(err(OnnxErrorKind::Opset { version: opset, older: None }));
    }
    if opset < *OPSETS.start() {
        // An older opset is read when every op in it is defined as at opset 7.
        if let Some(node) = graph_proto.node.iter().find(|n| !opset::same_since_opset_1(&n.op_type)) {
            return Err(err(OnnxErrorKind::Opset { version: opset, older: Some(node.op_type.clone()) }));
        }
    }

    // A bare file name lives in the current folder.
    let model_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let model_file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let reader = TensorReader {
        map: &map,
        model_dir: &model_dir,
        model_file_name: &model_file_name,
        payloads: &stripped.payloads,
        external: Default::default(),
    };

    // Never the file's name: what is compiled depends on the content alone.
    let name = if graph_proto.name.is_empty() { "model".to_string() } else { graph_proto.name.clone() };
    let mut graph = Graph::new(name);
    let mut defined: HashMap<String, ValueId> = HashMap::new();
    let mut from_initializer: HashSet<ValueId> = HashSet::new();

    let initializer_names: HashSet<&str> = graph_proto.initializer.iter().map(|t| t.name.as_str()).collect();
    for input in &graph_proto.input {
        // Before IR version 4 initializers were also listed as inputs.
        if initializer_names.contains(input.name.as_str()) {
            continue;
        }
        let ty = input_type(input).map_err(err)?;
        let id = graph.add_input(input.name.clone(), ty);
        define(&input.name, id, &mut defined).map_err(err)?;
    }
    for (i, init) in graph_proto.initializer.iter().enumerate() {
        let payload = reader.read(init, PayloadOwner::Initializer(i)).map_err(|e| e.at(path))?;
        let def = payload.into_def(&reader, false).map_err(|e| e.at(path))?;
        let ty = def_type(&def);
        let id = graph.add_value(init.name.clone(), ty, def);
        from_initializer.insert(id);
        define(&init.name, id, &mut defined).map_err(err)?;
    }

    for index in topological_order(&graph_proto.node, &defined).map_err(err)? {
        let node = &graph_proto.node[index];
        let node_err = |message: String| {
            err(OnnxErrorKind::Node { node: node_label(node, index), op: node.op_type.clone(), message })
        };
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(node_err(format!("domain `{}` is not supported (only the default ONNX domain)", node.domain)));
        }
        if node.op_type == "Constant" {
            let def = constant_node(node, index, &reader).map_err(|e| e.at(path))?;
            let out = node.output.first().ok_or_else(|| node_err("Constant has no output".into()))?;
            let ty = def_type(&def);
            let id = graph.add_value(out.clone(), ty, def);
            define(out, id, &mut defined).map_err(err)?;
            continue;
        }
        let mut attrs = Attrs::new();
        for (a, attr) in node.attribute.iter().enumerate() {
            let owner = PayloadOwner::NodeAttribute { node: index, attr: a };
            let value = attr_value(attr, owner, &reader).map_err(node_err)?;
            attrs.insert(attr.name.clone(), value);
        }
        let mut inputs = Vec::with_capacity(node.input.len());
        for name in &node.input {
            if name.is_empty() {
                inputs.push(None);
            } else {
                let id = defined.get(name).copied().ok_or_else(|| {
                    err(OnnxErrorKind::Undefined {
                        value: name.clone(),
                        role: format!("input of node `{}`", node_label(node, index)),
                    })
                })?;
                inputs.push(Some(id));
            }
        }
        // Trailing omitted inputs are the same as absent ones.
        while inputs.last() == Some(&None) {
            inputs.pop();
        }
        let label = format!("{}#{index}", node_label(node, index));
        let mut sink = Upgrades { graph: &mut graph, defined: &defined, label, count: 0 };
        let (op, inputs) = opset::convert(&node.op_type, opset, attrs, inputs, &mut sink).map_err(node_err)?;
        // Trailing omitted outputs are dropped; omitted ones in between get a name.
        let last = node.output.iter().rposition(|o| !o.is_empty()).map_or(0, |p| p + 1);
        let outputs: Vec<String> = node.output[..last]
            .iter()
            .enumerate()
            .map(
                |(k, o)| {
                    if o.is_empty() {
                        format!("{}:unused_output_{k}", node_label(node, index))
                    } else {
                        o.clone()
                    }
                },
            )
            .collect();
        let nid = graph.add_node(node.name.clone(), op, inputs, &outputs);
        for (k, out) in outputs.iter().enumerate() {
            let id = graph.node(nid).outputs[k];
            define(out, id, &mut defined).map_err(err)?;
        }
    }
    for output in &graph_proto.output {
        let id = defined
            .get(&output.name)
            .copied()
            .ok_or_else(|| err(OnnxErrorKind::Undefined { value: output.name.clone(), role: "graph output".into() }))?;
        graph.outputs.push(id);
    }

    let unused_initializers = drop_unused_constants(&mut graph, &from_initializer);
    shardc_ir::verify(&graph).map_err(|e| err(e.into()))?;
    let structure = structure::derive(&mut graph).and_then(|s| match shardc_ir::verify(&graph) {
        Ok(()) => Ok(s),
        Err(e) => Err(format!("the units derived from the graph's structure are inconsistent: {e}")),
    });
    if structure.is_err() {
        for node in &mut graph.nodes {
            node.unit = None;
        }
    }
    shardc_ir::verify(&graph).map_err(|e| err(e.into()))?;
    Ok(OnnxModel {
        graph,
        path: path.to_path_buf(),
        opset,
        producer: format!("{} {}", proto.producer_name, proto.producer_version).trim().to_string(),
        unused_initializers,
        structure,
        bytes: len,
        blake3: blake3::hash(&map).to_hex().to_string(),
        external: reader.external.take().into_iter().collect(),
    })
}

fn define(name: &str, id: ValueId, defined: &mut HashMap<String, ValueId>) -> Result<(), OnnxErrorKind> {
    if defined.insert(name.to_string(), id).is_some() {
        return Err(OnnxErrorKind::Redefined { value: name.to_string() });
    }
    Ok(())
}

pub(super) fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("#{index} {}", node.op_type)
    } else {
        node.name.clone()
    }
}

fn def_type(def: &ValueDef) -> Option<TensorType> {
    match def {
        ValueDef::Weight(w) => Some(TensorType::known(w.dtype, &w.shape)),
        ValueDef::Const(t) => Some(TensorType::known(t.dtype, &t.shape)),
        _ => None,
    }
}

fn input_type(input: &ValueInfoProto) -> Result<TensorType, OnnxErrorKind> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
    use onnx_protobuf::type_proto::Value as TypeValue;
    let bad = |message: String| OnnxErrorKind::Tensor { tensor: input.name.clone(), message };
    let Some(TypeValue::TensorType(t)) = input.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("graph input is not a tensor".into()));
    };
    let dtype =
        DType::from_onnx(t.elem_type).ok_or_else(|| bad(format!("unsupported element type code {}", t.elem_type)))?;
    let Some(shape) = t.shape.as_ref() else {
        return Err(bad("graph input has no shape (its rank must be known)".into()));
    };
    let dims = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(DimValue::DimValue(v)) if *v >= 0 => Dim::known(*v),
            Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::sym(&sanitize_symbol(p)),
            _ => Dim::Unknown,
        })
        .collect();
    Ok(TensorType::new(dtype, dims))
}

/// Dim params become symbols; characters a symbol cannot hold become `_`.
fn sanitize_symbol(p: &str) -> String {
    let mut s: String = p.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn attr_value(
    attr: &onnx_protobuf::AttributeProto,
    owner: PayloadOwner,
    reader: &TensorReader,
) -> Result<AttrValue, String> {
    let kind = attr.type_.enum_value();
    Ok(match kind {
        Ok(AttributeType::FLOAT) => AttrValue::Float(attr.f),
        Ok(AttributeType::INT) => AttrValue::Int(attr.i),
        Ok(AttributeType::FLOATS) => AttrValue::Floats(attr.floats.clone()),
        Ok(AttributeType::INTS) => AttrValue::Ints(attr.ints.clone()),
        Ok(AttributeType::STRING) => AttrValue::Str(
            String::from_utf8(attr.s.clone()).map_err(|_| format!("attribute `{}` is not UTF-8", attr.name))?,
        ),
        Ok(AttributeType::TENSOR) => {
            let t = attr.t.as_ref().ok_or_else(|| format!("attribute `{}` has no tensor", attr.name))?;
            let payload = reader.read(t, owner).map_err(|e| e.to_string())?;
            AttrValue::Tensor(payload.into_inline(reader).map_err(|e| e.to_string())?)
        }
        other => {
            let name = other.map(|k| format!("{k:?}")).unwrap_or_else(|code| format!("code {code}"));
            return Err(format!("attribute `{}` has type {name}, which shardc does not support", attr.name));
        }
    })
}

fn constant_node(node: &NodeProto, index: usize, reader: &TensorReader) -> Result<ValueDef, tensor::TensorError> {
    let fail = |message: String| tensor::TensorError::Node { node: node_label(node, index), message };
    let [attr] = node.attribute.as_slice() else {
        return Err(fail(format!("Constant needs exactly one attribute, found {}", node.attribute.len())));
    };
    let scalar_or_list = |dtype: DType, values: Vec<f64>, scalar: bool| {
        let shape = if scalar { vec![] } else { vec![values.len()] };
        ValueDef::Const(shardc_ir::TensorData::from_f64_values(dtype, shape, &values))
    };
    Ok(match attr.name.as_str() {
        "value" => {
            let t = attr.t.as_ref().ok_or_else(|| fail("`value` has no tensor".into()))?;
            let owner = PayloadOwner::NodeAttribute { node: index, attr: 0 };
            reader.read(t, owner)?.into_def(reader, true)?
        }
        "value_float" => scalar_or_list(DType::F32, vec![f64::from(attr.f)], true),
        "value_floats" => scalar_or_list(DType::F32, attr.floats.iter().map(|&f| f64::from(f)).collect(), false),
        "value_int" => ValueDef::Const(shardc_ir::TensorData::from_i64(vec![], &[attr.i])),
        "value_ints" => ValueDef::Const(shardc_ir::TensorData::from_i64(vec![attr.ints.len()], &attr.ints)),
        "value_string" | "value_strings" => {
            return Err(fail(format!("Constant attribute `{}`: string tensors are not supported", attr.name)))
        }
        "sparse_value" => {
            return Err(fail("Constant attribute `sparse_value`: sparse tensors are not supported".into()))
        }
        other => return Err(fail(format!("Constant attribute `{other}` is not supported"))),
    })
}

/// Adds the constants and nodes an older opset's node converts into, named after it.
struct Upgrades<'a> {
    graph: &'a mut Graph,
    defined: &'a HashMap<String, ValueId>,
    label: String,
    count: usize,
}

impl Upgrades<'_> {
    fn fresh(&mut self, what: &str) -> String {
        loop {
            let name = format!("{}/{what}_{}", self.label, self.count);
            self.count += 1;
            if !self.defined.contains_key(&name) {
                return name;
            }
        }
    }
}

impl opset::Sink for Upgrades<'_> {
    fn constant(&mut self, data: shardc_ir::TensorData) -> ValueId {
        let name = self.fresh("const");
        let ty = TensorType::known(data.dtype, &data.shape);
        self.graph.add_value(name, Some(ty), ValueDef::Const(data))
    }

    fn node(&mut self, op: Op, inputs: Vec<Option<ValueId>>) -> ValueId {
        let name = self.fresh(op.name());
        let output = format!("{name}_output");
        let nid = self.graph.add_node(name, op, inputs, &[output]);
        self.graph.node(nid).outputs[0]
    }
}

/// Remove weights and constants nothing uses; returns the names of dropped initializers.
fn drop_unused_constants(graph: &mut Graph, from_initializer: &HashSet<ValueId>) -> Vec<String> {
    let uses = graph.uses();
    let outputs: HashSet<ValueId> = graph.outputs.iter().copied().collect();
    let unused: HashSet<ValueId> = graph
        .value_ids()
        .filter(|&v| matches!(graph.value(v).def, ValueDef::Weight(_) | ValueDef::Const(_)))
        .filter(|&v| uses[v.index()].is_empty() && !outputs.contains(&v))
        .collect();
    let mut names: Vec<String> =
        unused.iter().filter(|v| from_initializer.contains(v)).map(|&v| graph.value(v).name.clone()).collect();
    names.sort();
    if !unused.is_empty() {
        graph.retain(|_| true, |v| !unused.contains(&v));
    }
    names
}
