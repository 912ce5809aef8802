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

/// The part of a transformer a node belongs to: the units partitioning cuts between.
/// Frontends record it (the Hugging Face lowering knows it; the ONNX frontend derives
/// it from the graph's structure); the text IR prints it as `@embed`, `@attn3`,
/// `@mlp3`, `@layer3`, `@head`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Token and position embeddings, and what every layer reads (masks, positions,
    /// rotary tables).
    Embed,
    /// The attention sub-block of a layer.
    Attention(u32),
    /// The MLP sub-block of a layer.
    Mlp(u32),
    /// A layer whose attention and MLP are not two sub-blocks (parallel blocks).
    Layer(u32),
    /// After the last layer: final norm, the head.
    Head,
}

impl Unit {
    /// Position in the model, for the rule that data flows from a unit to itself or a
    /// later one: embed, then per layer attention and MLP, then head.
    pub fn order(self) -> u64 {
        match self {
            Unit::Embed => 0,
            Unit::Attention(l) | Unit::Layer(l) => 1 + 2 * u64::from(l),
            Unit::Mlp(l) => 2 + 2 * u64::from(l),
            Unit::Head => u64::MAX,
        }
    }

    /// The layer, for the units inside one.
    pub fn layer(self) -> Option<u32> {
        match self {
            Unit::Attention(l) | Unit::Mlp(l) | Unit::Layer(l) => Some(l),
            Unit::Embed | Unit::Head => None,
        }
    }

    /// The text-IR spelling (without the `@`).
    pub fn text(self) -> String {
        match self {
            Unit::Embed => "embed".into(),
            Unit::Attention(l) => format!("attn{l}"),
            Unit::Mlp(l) => format!("mlp{l}"),
            Unit::Layer(l) => format!("layer{l}"),
            Unit::Head => "head".into(),
        }
    }

    /// Parse the text-IR spelling.
    pub fn parse(s: &str) -> Option<Unit> {
        let layer = |prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok());
        match s {
            "embed" => Some(Unit::Embed),
            "head" => Some(Unit::Head),
            _ => layer("attn")
                .map(Unit::Attention)
                .or_else(|| layer("mlp").map(Unit::Mlp))
                .or_else(|| layer("layer").map(Unit::Layer)),
        }
    }
}

/// One KV-cache entry: a graph input holding what earlier steps computed and the graph
/// output that holds it with this step's entries added, along `axis` (the sequence
/// axis; an empty cache has size 0 there). The runtime feeds each step's `present`
/// back as the next step's `past`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CachePair {
    pub past: ValueId,
    pub present: ValueId,
    pub axis: usize,
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
    /// The unit it belongs to, when the frontend knows it.
    pub unit: Option<Unit>,
}

/// A graph: nodes in topological order, values, inputs and outputs, and the facts
/// frontends know (each node's [`Unit`], the KV-cache [`CachePair`]s).
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub cache: Vec<CachePair>,
    /// The cache holds entries valid only while the context (past + new tokens) is at
    /// most this: a step that first takes it beyond recomputes every entry, starting
    /// from an empty cache with all the tokens (longrope switching to its long
    /// factors, as transformers' generation does).
    pub recompute_beyond: Option<u64>,
    /// The longest context (past + new tokens) the graph serves, when its frontend
    /// knows it (a checkpoint's lowering does): runtimes refuse longer requests.
    pub max_context: Option<u64>,
}

/// [`Graph::constants`]: per node and per value, whether it is constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constants {
    pub node: Vec<bool>,
    pub value: Vec<bool>,
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
        self.nodes.push(Node { name: name.into(), op, inputs, outputs, unit: None });
        node
    }

    /// Finish a rebuild of all of `src` into this graph: its outputs, KV-cache pairs and
    /// context facts, through `map` (every value of `src` to its id here).
    pub fn carry_over(&mut self, src: &Graph, map: &std::collections::HashMap<ValueId, ValueId>) {
        self.outputs = src.outputs.iter().map(|v| map[v]).collect();
        self.cache = src
            .cache
            .iter()
            .map(|c| CachePair { past: map[&c.past], present: map[&c.present], axis: c.axis })
            .collect();
        self.recompute_beyond = src.recompute_beyond;
        self.max_context = src.max_context;
    }

    /// Append a copy of `node` of `src` reading `inputs` (ids of this graph); its
    /// outputs keep their names and types. Returns, per output of `node`, the pair
    /// (id in `src`, id here).
    pub fn append_copy(&mut self, src: &Graph, node: &Node, inputs: Vec<Option<ValueId>>) -> Vec<(ValueId, ValueId)> {
        let names: Vec<String> = node.outputs.iter().map(|&o| src.value(o).name.clone()).collect();
        let nid = self.add_node(node.name.clone(), node.op.clone(), inputs, &names);
        self.nodes[nid.index()].unit = node.unit;
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
    /// Which values and nodes are constant: weights, inline constants, and the outputs
    /// of nodes whose inputs are all constant (a weight's cast, say), which runtimes
    /// compute once at load and which cost and partitioning place with their readers.
    pub fn constants(&self) -> Constants {
        let mut value: Vec<bool> =
            self.values.iter().map(|v| matches!(v.def, ValueDef::Weight(_) | ValueDef::Const(_))).collect();
        let mut node = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            node[i] = n.inputs.iter().flatten().all(|v| value.get(v.index()).copied().unwrap_or(false));
            for &o in &n.outputs {
                if let Some(slot) = value.get_mut(o.index()) {
                    *slot = node[i];
                }
            }
        }
        Constants { node, value }
    }

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
        for c in &mut self.cache {
            if c.present == from {
                c.present = to;
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
        // A cache pair goes when either end does.
        self.cache = self
            .cache
            .iter()
            .filter_map(|c| {
                Some(CachePair { past: *value_map.get(&c.past)?, present: *value_map.get(&c.present)?, axis: c.axis })
            })
            .collect();
        self.nodes = nodes;
        self.values = values;
    }

    /// The cache pair whose past input is `v`.
    pub fn cache_of_input(&self, v: ValueId) -> Option<&CachePair> {
        self.cache.iter().find(|c| c.past == v)
    }

    /// The cache pair whose present output is `v`.
    pub fn cache_of_output(&self, v: ValueId) -> Option<&CachePair> {
        self.cache.iter().find(|c| c.present == v)
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
