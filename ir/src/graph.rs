//! The graph arena.

use std::collections::HashMap;

use crate::{DType, Dim, NodeId, Op, TensorData, ValueId, WeightRef};

/// Element type and shape of a value. Dims may be [`Dim::Unknown`] before shape inference.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    /// A type with the given dtype and dims.
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType { dtype, shape }
    }

    /// A type with known dims.
    pub fn known(dtype: DType, shape: &[usize]) -> TensorType {
        TensorType { dtype, shape: shape.iter().map(|&d| Dim::known(d as i64)).collect() }
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// True when every dim is determined (known or symbolic).
    pub fn is_complete(&self) -> bool {
        self.shape.iter().all(Dim::is_determined)
    }
}

/// What defines a value.
#[derive(Clone, PartialEq, Debug)]
pub enum ValueDef {
    /// A graph input (listed in [`Graph::inputs`]).
    Input,
    /// Output of a node.
    Node(NodeId),
    /// A weight on disk, referenced, never loaded while compiling.
    Weight(WeightRef),
    /// A small constant held inline.
    Const(TensorData),
}

/// A tensor-valued SSA value.
#[derive(Clone, PartialEq, Debug)]
pub struct Value {
    /// The name the model gave it (unique within a graph).
    pub name: String,
    /// `None` until known.
    pub ty: Option<TensorType>,
    pub def: ValueDef,
}

/// An op applied to values.
#[derive(Clone, PartialEq, Debug)]
pub struct Node {
    /// The name the model gave it (may be empty).
    pub name: String,
    pub op: Op,
    /// Inputs; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
}

/// A graph: nodes in topological order, values, inputs and outputs.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// The value behind an id.
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    /// The value behind an id, mutably.
    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.index()]
    }

    /// The node behind an id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// Append a value; returns its id.
    pub fn add_value(&mut self, name: impl Into<String>, ty: Option<TensorType>, def: ValueDef) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name: name.into(), ty, def });
        id
    }

    /// Append a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let id = self.add_value(name, Some(ty), ValueDef::Input);
        self.inputs.push(id);
        id
    }

    /// Append a node after every existing one, creating its output values (untyped).
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        output_names: &[String],
    ) -> NodeId {
        let node = NodeId(self.nodes.len() as u32);
        let outputs = output_names.iter().map(|n| self.add_value(n.clone(), None, ValueDef::Node(node))).collect();
        self.nodes.push(Node { name: name.into(), op, inputs, outputs });
        node
    }

    /// Append a copy of `node` of `src` reading `inputs` (ids of this graph); its
    /// outputs keep their names and types. Returns, per output of `node`, the pair
    /// (id in `src`, id here).
    pub fn append_copy(&mut self, src: &Graph, node: &Node, inputs: Vec<Option<ValueId>>) -> Vec<(ValueId, ValueId)> {
        let names: Vec<String> = node.outputs.iter().map(|&o| src.value(o).name.clone()).collect();
        let nid = self.add_node(node.name.clone(), node.op.clone(), inputs, &names);
        let outs = self.node(nid).outputs.clone();
        node.outputs
            .iter()
            .zip(outs)
            .map(|(&old, new)| {
                self.value_mut(new).ty = src.value(old).ty.clone();
                (old, new)
            })
            .collect()
    }

    /// Node ids in order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// Value ids in order.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> {
        (0..self.values.len() as u32).map(ValueId)
    }

    /// For every value, the nodes that read it (in order, a node once per use).
    pub fn uses(&self) -> Vec<Vec<NodeId>> {
        let mut uses = vec![Vec::new(); self.values.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for v in node.inputs.iter().flatten() {
                if let Some(u) = uses.get_mut(v.index()) {
                    u.push(NodeId(i as u32));
                }
            }
        }
        uses
    }

    /// Look a value up by name.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name).map(|i| ValueId(i as u32))
    }

    /// Replace every use of `from` (node inputs and graph outputs) by `to`.
    pub fn replace_uses(&mut self, from: ValueId, to: ValueId) {
        for node in &mut self.nodes {
            for input in node.inputs.iter_mut().flatten() {
                if *input == from {
                    *input = to;
                }
            }
        }
        for out in &mut self.outputs {
            if *out == from {
                *out = to;
            }
        }
    }

    /// Keep only the nodes and values for which the predicates hold, renumbering ids
    /// densely in their existing order. Values defined by dropped nodes must be dropped
    /// too, and nothing kept may use a dropped value (the verifier checks this after).
    pub fn retain(&mut self, keep_node: impl Fn(NodeId) -> bool, keep_value: impl Fn(ValueId) -> bool) {
        let mut node_map = HashMap::new();
        let mut nodes = Vec::new();
        for (i, node) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            let id = NodeId(i as u32);
            if keep_node(id) {
                node_map.insert(id, NodeId(nodes.len() as u32));
                nodes.push(node);
            }
        }
        let mut value_map = HashMap::new();
        let mut values = Vec::new();
        for (i, value) in std::mem::take(&mut self.values).into_iter().enumerate() {
            let id = ValueId(i as u32);
            if keep_value(id) {
                value_map.insert(id, ValueId(values.len() as u32));
                values.push(value);
            }
        }
        // Ids that were dropped map to an out-of-range id, which the verifier reports.
        let dangling = ValueId(u32::MAX);
        let map_v = |v: ValueId| value_map.get(&v).copied().unwrap_or(dangling);
        for node in &mut nodes {
            for input in node.inputs.iter_mut().flatten() {
                *input = map_v(*input);
            }
            for output in &mut node.outputs {
                *output = map_v(*output);
            }
        }
        for value in &mut values {
            if let ValueDef::Node(n) = &mut value.def {
                *n = node_map.get(n).copied().unwrap_or(NodeId(u32::MAX));
            }
        }
        self.inputs = self.inputs.iter().map(|&v| map_v(v)).collect();
        self.outputs = self.outputs.iter().map(|&v| map_v(v)).collect();
        self.nodes = nodes;
        self.values = values;
    }

    /// Op histogram: op name → node count, sorted by name.
    pub fn op_histogram(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut h = std::collections::BTreeMap::new();
        for node in &self.nodes {
            *h.entry(node.op.name()).or_insert(0) += 1;
        }
        h
    }
}
