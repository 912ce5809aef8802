//! The verifier. It checks, and reports every violation of, these invariants:
//!
//! 1. **Ids in range**: every value id used by a node, a graph input or a graph output
//!    names a value of the arena; every node id in a [`ValueDef::Node`] names a node.
//! 2. **Definitions agree**: a value defined by `Node(n)` is listed exactly once among
//!    `n`'s outputs, and every node output says it is defined by that node; a value
//!    defined as `Input` is listed exactly once in the graph inputs and graph inputs
//!    are all `Input`s.
//! 3. **Topological order**: every node input is a graph input, a weight, a constant,
//!    or the output of an earlier node (so the graph has no cycle).
//! 4. **Arity**: every node has as many inputs and outputs as its op accepts, and
//!    required (non-trailing) inputs are present.
//! 5. **Unique names**: no two values share a name.
//! 6. **Types agree**: a weight's or constant's value type, when present, equals the
//!    dtype and shape of its data; elementwise arithmetic and comparison operands
//!    have one dtype when both are known, `Where` takes a bool condition, and
//!    comparisons produce bool.
//! 7. **No dangling weights**: a weight's byte length equals elements × dtype size
//!    (its location, when it has one, has exactly that length), and every weight and
//!    constant is used by a node or is a graph output.
//! 8. **Outputs defined**: the graph has at least one output.
//! 9. **Units**: when any node has a unit, every node computed at run time (not from
//!    weights and constants alone) has one, and no node's unit comes before the unit
//!    of a run-time node whose output it reads.
//! 10. **Cache pairs**: each names a graph input (past) and a graph output (present),
//!     neither in another pair, with one dtype and rank, and the axis within it.

use std::collections::HashSet;
use std::fmt;

use crate::{DType, Graph, Op, TensorType, ValueDef, ValueId};

/// Every invariant violation found in a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct VerifyError {
    pub graph: String,
    pub problems: Vec<String>,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "graph `{}` fails verification ({} problem", self.graph, self.problems.len())?;
        if self.problems.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for p in self.problems.iter().take(20) {
            write!(f, "\n  - {p}")?;
        }
        if self.problems.len() > 20 {
            write!(f, "\n  - ... and {} more", self.problems.len() - 20)?;
        }
        Ok(())
    }
}

/// Check every invariant listed in the module documentation.
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let mut problems = Vec::new();
    let n_values = graph.values.len();
    let in_range = |v: ValueId| v.index() < n_values;
    let describe_node = |i: usize| {
        let node = &graph.nodes[i];
        format!("node n{i} `{}` ({})", node.name, node.op.name())
    };

    // 1 + 2: ids and definitions.
    let mut input_seen = HashSet::new();
    for &v in &graph.inputs {
        if !in_range(v) {
            problems.push(format!("graph input {v} is out of range"));
        } else if graph.value(v).def != ValueDef::Input {
            problems.push(format!("graph input {v} `{}` is not defined as an input", graph.value(v).name));
        } else if !input_seen.insert(v) {
            problems.push(format!("graph input {v} is listed twice"));
        }
    }
    for (i, value) in graph.values.iter().enumerate() {
        let id = ValueId(i as u32);
        match &value.def {
            ValueDef::Input if !input_seen.contains(&id) => {
                problems.push(format!("value {id} `{}` is an input but not a graph input", value.name))
            }
            ValueDef::Node(n) => match graph.nodes.get(n.index()) {
                None => problems.push(format!("value {id} `{}` is defined by missing node {n}", value.name)),
                Some(node) if node.outputs.iter().filter(|&&o| o == id).count() != 1 => problems.push(format!(
                    "value {id} `{}` says node {n} defines it, but that node does not list it once",
                    value.name
                )),
                _ => {}
            },
            _ => {}
        }
    }

    // 3 + 4: order and arity.
    let mut defined: Vec<bool> = graph
        .values
        .iter()
        .map(|v| matches!(v.def, ValueDef::Input | ValueDef::Weight(_) | ValueDef::Const(_)))
        .collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        let arity = node.op.arity();
        let mut count = |n: usize, (min, max): (usize, usize), what: &str| {
            if n < min || n > max {
                problems.push(format!("{} has {n} {what}, expected {min}..={max}", describe_node(i)));
            }
        };
        count(node.inputs.len(), (arity.min_inputs, arity.max_inputs), "inputs");
        count(node.outputs.len(), (arity.min_outputs, arity.max_outputs), "outputs");
        for (slot, input) in node.inputs.iter().enumerate().take(arity.min_inputs) {
            if input.is_none() {
                problems.push(format!("{} lacks required input {slot}", describe_node(i)));
            }
        }
        for input in node.inputs.iter().flatten() {
            if !in_range(*input) {
                problems.push(format!("{} reads out-of-range value {input}", describe_node(i)));
            } else if !defined[input.index()] {
                problems.push(format!(
                    "{} reads {input} `{}` before it is defined (not in topological order, or a cycle)",
                    describe_node(i),
                    graph.value(*input).name
                ));
            }
        }
        for &output in &node.outputs {
            if !in_range(output) {
                problems.push(format!("{} writes out-of-range value {output}", describe_node(i)));
                continue;
            }
            if graph.value(output).def != ValueDef::Node(crate::NodeId(i as u32)) {
                problems.push(format!(
                    "{} lists output {output} `{}`, which is not defined by it",
                    describe_node(i),
                    graph.value(output).name
                ));
            }
            defined[output.index()] = true;
        }
        check_node_types(graph, i, &mut problems);
    }

    // 5: names.
    let mut names = HashSet::new();
    for (i, value) in graph.values.iter().enumerate() {
        if !names.insert(value.name.as_str()) {
            problems.push(format!("value %{i} reuses the name `{}`", value.name));
        }
    }

    // 6 + 7: weights and constants.
    let uses = graph.uses();
    let outputs: HashSet<ValueId> = graph.outputs.iter().copied().collect();
    for (i, value) in graph.values.iter().enumerate() {
        let id = ValueId(i as u32);
        let data_type = match &value.def {
            ValueDef::Weight(w) => {
                if let Some(loc) = &w.location {
                    if loc.length != w.byte_len() {
                        problems.push(format!(
                            "weight {id} `{}`: {} bytes at `{}`, but {} {:?} needs {}",
                            value.name,
                            loc.length,
                            loc.file,
                            w.dtype,
                            w.shape,
                            w.byte_len()
                        ));
                    }
                }
                Some(TensorType::known(w.dtype, &w.shape))
            }
            ValueDef::Const(t) => Some(TensorType::known(t.dtype, &t.shape)),
            _ => None,
        };
        if let Some(dt) = data_type {
            if value.ty.as_ref().is_some_and(|ty| *ty != dt) {
                problems.push(format!("value {id} `{}`: type disagrees with its data", value.name));
            }
            if uses.get(i).is_none_or(Vec::is_empty) && !outputs.contains(&id) {
                problems.push(format!("weight or constant {id} `{}` is never used", value.name));
            }
        }
    }

    // 9: units.
    check_units(graph, &mut problems);
    // 10: cache pairs.
    let mut cached = HashSet::new();
    for c in &graph.cache {
        let (p, q) = (c.past, c.present);
        if !in_range(p) || !in_range(q) {
            problems.push(format!("cache pair {p} -> {q} names an out-of-range value"));
            continue;
        }
        if !graph.inputs.contains(&p) {
            problems.push(format!("cache pair: {p} `{}` is not a graph input", graph.value(p).name));
        }
        if !graph.outputs.contains(&q) {
            problems.push(format!("cache pair: {q} `{}` is not a graph output", graph.value(q).name));
        }
        if !cached.insert(p) || !cached.insert(q) {
            problems.push(format!("cache pair {p} -> {q}: a value is in two pairs"));
        }
        if let (Some(a), Some(b)) = (&graph.value(p).ty, &graph.value(q).ty) {
            if a.dtype != b.dtype || a.rank() != b.rank() {
                problems.push(format!(
                    "cache pair {p} -> {q}: `{}` and `{}` differ in dtype or rank",
                    graph.value(p).name,
                    graph.value(q).name
                ));
            } else if c.axis >= a.rank() {
                problems.push(format!("cache pair {p} -> {q}: axis {} is beyond rank {}", c.axis, a.rank()));
            }
        }
    }

    // 8: outputs.
    if graph.outputs.is_empty() {
        problems.push("the graph has no outputs".into());
    }
    for &v in &graph.outputs {
        if !in_range(v) {
            problems.push(format!("graph output {v} is out of range"));
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(VerifyError { graph: graph.name.clone(), problems })
    }
}

fn check_node_types(graph: &Graph, i: usize, problems: &mut Vec<String>) {
    let node = &graph.nodes[i];
    let dtype = |slot: usize| -> Option<DType> {
        let v = (*node.inputs.get(slot)?)?;
        graph.values.get(v.index())?.ty.as_ref().map(|t| t.dtype)
    };
    let out_dtype =
        node.outputs.first().and_then(|v| graph.values.get(v.index())).and_then(|v| v.ty.as_ref()).map(|t| t.dtype);
    let same = |a: usize, b: usize, problems: &mut Vec<String>| {
        if let (Some(x), Some(y)) = (dtype(a), dtype(b)) {
            if x != y {
                problems.push(format!(
                    "node n{i} `{}` ({}): operand dtypes differ ({x} vs {y})",
                    node.name,
                    node.op.name()
                ));
            }
        }
    };
    match &node.op {
        Op::Add(_) | Op::Sub(_) | Op::Mul(_) | Op::Div(_) | Op::Mod(_) | Op::And(_) | Op::Or(_) => same(0, 1, problems),
        Op::Equal(_) | Op::Less(_) | Op::LessOrEqual(_) | Op::Greater(_) | Op::GreaterOrEqual(_) => {
            same(0, 1, problems);
            if out_dtype.is_some_and(|d| d != DType::Bool) {
                problems.push(format!("node n{i} `{}`: comparison must produce bool", node.name));
            }
        }
        Op::Where(_) => {
            same(1, 2, problems);
            if dtype(0).is_some_and(|d| d != DType::Bool) {
                problems.push(format!("node n{i} `{}`: Where condition must be bool", node.name));
            }
        }
        _ => {}
    }
}

fn check_units(graph: &Graph, problems: &mut Vec<String>) {
    if graph.nodes.iter().all(|n| n.unit.is_none()) {
        return;
    }
    // Values computed at run time, and the unit of the node computing each.
    let mut run_time: Vec<bool> = graph.values.iter().map(|v| matches!(v.def, ValueDef::Input)).collect();
    let mut unit_of: Vec<Option<crate::Unit>> = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let inputs: Vec<usize> =
            node.inputs.iter().flatten().map(|v| v.index()).filter(|&v| v < run_time.len()).collect();
        let computed = inputs.iter().any(|&v| run_time[v]);
        if computed && node.unit.is_none() {
            problems.push(format!("node n{i} `{}` ({}) has no unit, but other nodes do", node.name, node.op.name()));
        }
        if let Some(u) = node.unit {
            for &v in &inputs {
                if let Some(from) = unit_of[v] {
                    if u.order() < from.order() {
                        problems.push(format!(
                            "node n{i} `{}` (@{}) reads `{}` from a later unit (@{})",
                            node.name,
                            u.text(),
                            graph.values[v].name,
                            from.text()
                        ));
                    }
                }
            }
        }
        let n = run_time.len();
        for o in node.outputs.iter().map(|o| o.index()).filter(|&o| o < n) {
            run_time[o] = computed;
            if computed {
                unit_of[o] = node.unit;
            }
        }
    }
}
