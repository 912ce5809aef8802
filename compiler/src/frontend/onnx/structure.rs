//! The transformer structure of an imported ONNX graph, derived from the graph alone
//! (never from node or value names, which exporters choose freely): the KV-cache
//! pairs, the canonical symbols (`batch`, `seq`, `past`), and every node's unit.
//!
//! - **Cache pairs**: a graph output computed by `Concat` (through `Cast`/`Identity`)
//!   of a graph input and new entries, or the present key/value output of an
//!   `Attention` node whose past key/value input is a graph input.
//! - **Symbols**: a token input (an integer `[a, b]` input that indexes an embedding
//!   table) names the batch and sequence symbols; a cache input names the batch and,
//!   on its sequence axis, the past. Exported names (`batch_size`, `s0`, …) are
//!   renamed to those everywhere.
//! - **Units**: the residual stream is the chain of `Add`s that join a tensor `x` with
//!   a transform of `x` through a weighted product (`MatMul`/`Gemm`/`Einsum` with a
//!   weight); each link of the chain closes one sub-block. A node belongs to the first
//!   sub-block whose residual `Add` it feeds; nodes that do not depend on the stream
//!   (embeddings, positions, masks, rotary tables) form the embedding; nodes after the
//!   last residual `Add` the head. A sub-block that mixes positions (a softmax, an
//!   `Attention` node, or a product of two computed tensors) is attention, else MLP;
//!   each attention sub-block starts a layer, as the repeated block pattern has it.

use std::collections::{BTreeSet, HashMap, VecDeque};

use shardc_ir::{CachePair, Dim, Graph, NodeId, Op, Unit, ValueDef, ValueId};

/// What was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Structure {
    /// Transformer layers.
    pub layers: usize,
    /// KV-cache pairs.
    pub cache_pairs: usize,
}

fn producer(graph: &Graph, v: ValueId) -> Option<NodeId> {
    match graph.value(v).def {
        ValueDef::Node(n) => Some(n),
        _ => None,
    }
}

/// Follow `Identity` and `Cast` back to the value they pass on.
fn through_copies(graph: &Graph, mut v: ValueId) -> ValueId {
    while let Some(n) = producer(graph, v) {
        let node = graph.node(n);
        match (&node.op, node.inputs.first().copied().flatten()) {
            (Op::Identity(_) | Op::Cast(_), Some(i)) => v = i,
            _ => break,
        }
    }
    v
}

fn find_cache_pairs(graph: &Graph) -> Vec<CachePair> {
    let mut pairs = Vec::new();
    let is_input = |v: ValueId| graph.inputs.contains(&v);
    for &out in &graph.outputs {
        let Some(n) = producer(graph, through_copies(graph, out)) else { continue };
        let node = graph.node(n);
        let pair = match &node.op {
            Op::Concat(c) => node.inputs.first().copied().flatten().and_then(|first| {
                let past = through_copies(graph, first);
                let rank = graph.value(past).ty.as_ref()?.rank() as i64;
                let axis = if c.axis < 0 { c.axis + rank } else { c.axis };
                (is_input(past) && node.inputs.len() >= 2 && (0..rank).contains(&axis)).then_some(CachePair {
                    past,
                    present: out,
                    axis: axis as usize,
                })
            }),
            Op::Attention(_) => {
                let k = node.outputs.iter().position(|&o| o == through_copies(graph, out));
                k.filter(|&k| k == 1 || k == 2).and_then(|k| {
                    let past = through_copies(graph, node.inputs.get(k + 3).copied().flatten()?);
                    is_input(past).then_some(CachePair { past, present: out, axis: 2 })
                })
            }
            _ => None,
        };
        if let Some(p) = pair {
            if !pairs.iter().any(|q: &CachePair| q.past == p.past) {
                pairs.push(p);
            }
        }
    }
    pairs
}

/// Rename the exporter's symbols to `batch`, `seq` and `past`, from the token inputs
/// and the cache inputs.
fn canonical_symbols(graph: &mut Graph, pairs: &[CachePair], weight_derived: &[bool]) {
    let mut rename: HashMap<String, Dim> = HashMap::new();
    let claim = |d: &Dim, canonical: &str, rename: &mut HashMap<String, Dim>| {
        if let [sym] = d.symbols().as_slice() {
            if *d == Dim::sym(sym) && sym != canonical {
                rename.entry(sym.clone()).or_insert_with(|| Dim::sym(canonical));
            }
        }
    };
    let uses = graph.uses();
    for &input in &graph.inputs {
        let Some(ty) = graph.value(input).ty.clone() else { continue };
        let indexes_table = uses[input.index()].iter().any(|&n| {
            let node = graph.node(n);
            matches!(node.op, Op::Gather(_))
                && node.inputs.get(1) == Some(&Some(input))
                && node.inputs.first().copied().flatten().is_some_and(|t| weight_derived[t.index()])
        });
        if ty.dtype.is_integer() && ty.rank() == 2 && indexes_table {
            claim(&ty.shape[0], "batch", &mut rename);
            claim(&ty.shape[1], "seq", &mut rename);
        }
    }
    for p in pairs {
        if let Some(ty) = graph.value(p.past).ty.clone() {
            claim(&ty.shape[0], "batch", &mut rename);
            claim(&ty.shape[p.axis], "past", &mut rename);
        }
    }
    // A canonical name the exporter already used for another dim cannot be taken.
    let taken: BTreeSet<String> = graph
        .values
        .iter()
        .filter_map(|v| v.ty.as_ref())
        .flat_map(|t| t.shape.iter().flat_map(Dim::symbols))
        .filter(|s| !rename.contains_key(s))
        .collect();
    rename.retain(|_, to| to.symbols().iter().all(|s| !taken.contains(s)));
    let targets: Vec<String> = rename.values().flat_map(Dim::symbols).collect();
    if targets.len() != targets.iter().collect::<BTreeSet<_>>().len() {
        // Two exported symbols would become one: keep the exporter's names.
        return;
    }
    if rename.is_empty() {
        return;
    }
    for v in &mut graph.values {
        if let Some(ty) = &mut v.ty {
            for d in &mut ty.shape {
                *d = d.substitute(&rename);
            }
        }
    }
}

/// Whether a path from `src` reaches `dst` through a weighted product, among nodes
/// before `limit`.
fn reaches_through_weights(
    graph: &Graph,
    uses: &[Vec<NodeId>],
    weighted: &[bool],
    src: ValueId,
    dst: ValueId,
    limit: usize,
) -> bool {
    // Per value: 0 unseen, 1 reached, 2 reached through a weighted product.
    let mut seen = vec![0u8; graph.values.len()];
    let mut queue = VecDeque::from([(src, false)]);
    seen[src.index()] = 1;
    while let Some((v, through)) = queue.pop_front() {
        for &n in &uses[v.index()] {
            if n.index() >= limit {
                continue;
            }
            let t = through || weighted[n.index()];
            for &o in &graph.node(n).outputs {
                if o == dst && t {
                    return true;
                }
                let mark = if t { 2 } else { 1 };
                if seen[o.index()] < mark {
                    seen[o.index()] = mark;
                    queue.push_back((o, t));
                }
            }
        }
    }
    false
}

/// Derive the structure and record it in the graph (units, cache pairs, symbols).
pub fn derive(graph: &mut Graph) -> Result<Structure, String> {
    let n_values = graph.values.len();
    let mut run_time: Vec<bool> = graph.values.iter().map(|v| matches!(v.def, ValueDef::Input)).collect();
    let mut weight_derived: Vec<bool> = graph.values.iter().map(|v| matches!(v.def, ValueDef::Weight(_))).collect();
    for node in &graph.nodes {
        let ins: Vec<usize> = node.inputs.iter().flatten().map(|v| v.index()).collect();
        let rt = ins.iter().any(|&v| run_time[v]);
        let wd = !rt && ins.iter().any(|&v| weight_derived[v]);
        for &o in &node.outputs {
            run_time[o.index()] = rt;
            weight_derived[o.index()] = wd;
        }
    }
    let pairs = find_cache_pairs(graph);
    canonical_symbols(graph, &pairs, &weight_derived);
    graph.cache = pairs.clone();

    let weighted: Vec<bool> = graph
        .nodes
        .iter()
        .map(|n| {
            matches!(n.op, Op::MatMul(_) | Op::Gemm(_) | Op::Einsum(_) | Op::MatMulInteger(_))
                && n.inputs.iter().flatten().any(|v| weight_derived[v.index()])
        })
        .collect();
    let uses = graph.uses();

    // Residual adds: x + f(x) with a weighted product inside f.
    struct Residual {
        node: usize,
        skip: ValueId,
        out: ValueId,
    }
    let mut residuals = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let (Op::Add(_), [Some(a), Some(b)]) = (&node.op, node.inputs.as_slice()) else { continue };
        if !run_time[a.index()] || !run_time[b.index()] {
            continue;
        }
        let skip = if reaches_through_weights(graph, &uses, &weighted, *a, *b, i) {
            *a
        } else if reaches_through_weights(graph, &uses, &weighted, *b, *a, i) {
            *b
        } else {
            continue;
        };
        residuals.push(Residual { node: i, skip, out: node.outputs[0] });
    }
    if residuals.is_empty() {
        return Err("no residual stream: no Add joins a tensor with a weighted transform of it".into());
    }
    // The chain: from each residual, the next one whose skip input its output reaches
    // without another weighted product (directly, or through a norm).
    let residual_nodes: BTreeSet<usize> = residuals.iter().map(|r| r.node).collect();
    let mut chain = vec![0usize];
    loop {
        let cur = &residuals[*chain.last().unwrap_or(&0)];
        let mut reach = BTreeSet::from([cur.out]);
        let mut queue = VecDeque::from([cur.out]);
        while let Some(v) = queue.pop_front() {
            for &n in &uses[v.index()] {
                if weighted[n.index()] || residual_nodes.contains(&n.index()) {
                    continue;
                }
                for &o in &graph.node(n).outputs {
                    if reach.insert(o) {
                        queue.push_back(o);
                    }
                }
            }
        }
        let from = *chain.last().unwrap_or(&0);
        match (from + 1..residuals.len()).find(|&k| reach.contains(&residuals[k].skip)) {
            Some(k) => chain.push(k),
            None => break,
        }
    }
    let blocks: Vec<&Residual> = chain.iter().map(|&k| &residuals[k]).collect();
    let x0 = blocks[0].skip;

    // Stream-dependent values: computed from x0.
    let mut stream = vec![false; n_values];
    for node in &graph.nodes {
        let dep = node.inputs.iter().flatten().any(|v| *v == x0 || stream[v.index()]);
        for &o in &node.outputs {
            stream[o.index()] = dep;
        }
    }
    // After the last residual.
    let last_out = blocks[blocks.len() - 1].out;
    let mut after = vec![false; n_values];
    for node in &graph.nodes {
        let dep = node.inputs.iter().flatten().any(|v| *v == last_out || after[v.index()]);
        for &o in &node.outputs {
            after[o.index()] = dep;
        }
    }
    // The first block each node feeds.
    let mut block_of: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    for (k, r) in blocks.iter().enumerate() {
        let mut stack = vec![r.node];
        while let Some(n) = stack.pop() {
            if block_of[n].is_some() {
                continue;
            }
            block_of[n] = Some(k);
            for v in graph.nodes[n].inputs.iter().flatten() {
                if let Some(p) = producer(graph, *v) {
                    if block_of[p.index()].is_none() {
                        stack.push(p.index());
                    }
                }
            }
        }
    }
    // Attention or MLP, per block.
    let mut mixes = vec![false; blocks.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(k) = block_of[i] else { continue };
        let computed = |slot: usize| node.inputs.get(slot).copied().flatten().is_some_and(|v| stream[v.index()]);
        let position_mixing = match node.op {
            Op::Softmax(_) | Op::Attention(_) => computed(0),
            Op::MatMul(_) | Op::Einsum(_) => computed(0) && computed(1),
            _ => false,
        };
        mixes[k] |= position_mixing;
    }
    let mut units = Vec::with_capacity(blocks.len());
    let mut layer: Option<u32> = None;
    let mut previous_attention = false;
    for &m in &mixes {
        if m {
            let l = layer.map_or(0, |l| l + 1);
            layer = Some(l);
            units.push(Unit::Attention(l));
        } else {
            let l = match layer {
                Some(l) if previous_attention => l,
                Some(l) => l + 1,
                None => 0,
            };
            layer = Some(l);
            units.push(Unit::Mlp(l));
        }
        previous_attention = m;
    }

    // Assign every run-time node.
    let mut unit_of_value: Vec<Option<Unit>> = vec![None; n_values];
    #[allow(clippy::needless_range_loop)] // the loop writes the node it reads
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        if !node.inputs.iter().flatten().any(|v| run_time[v.index()]) {
            continue;
        }
        let depends = node.inputs.iter().flatten().any(|v| *v == x0 || stream[v.index()]);
        let unit = if !depends {
            Unit::Embed
        } else if node.outputs.iter().any(|o| after[o.index()]) {
            Unit::Head
        } else if let Some(k) = block_of[i] {
            units[k]
        } else {
            node.inputs
                .iter()
                .flatten()
                .filter_map(|v| unit_of_value[v.index()])
                .max_by_key(|u| u.order())
                .unwrap_or(Unit::Embed)
        };
        for &o in &node.outputs {
            unit_of_value[o.index()] = Some(unit);
        }
        graph.nodes[i].unit = Some(unit);
    }
    let layers = layer.map_or(0, |l| l as usize + 1);
    Ok(Structure { layers, cache_pairs: pairs.len() })
}
