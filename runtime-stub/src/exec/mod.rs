//! The executor: runs a graph's nodes in order, frees each value after its last use,
//! and checks every output against the type shape inference gave it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use shardc_ir::{Dim, Graph, ValueDef, ValueId};

use crate::quantized::{fused_products, Fused, QuantMatrix};
use crate::tensor::{storage_of, Tensor};
use crate::threads;
use crate::transposed::Transposed;
use crate::weights::WeightFiles;
use crate::RuntimeError;

mod batch;
mod node;
mod views;

/// One slot per graph value: the tensor once computed.
type Slots = Vec<Option<Rc<Tensor>>>;

/// The sizes a step's inputs bind their symbols to, by name in order: a handful, found
/// by binary search (every node's outputs are checked against them: no hashing there).
#[derive(Default)]
struct Sizes(Vec<(String, i64)>);

impl Sizes {
    fn get(&self, symbol: &str) -> Option<i64> {
        self.0.binary_search_by(|(s, _)| s.as_str().cmp(symbol)).ok().map(|i| self.0[i].1)
    }

    fn insert(&mut self, symbol: String, size: i64) {
        match self.0.binary_search_by(|(s, _)| s.cmp(&symbol)) {
            Ok(i) => self.0[i].1 = size,
            Err(i) => self.0.insert(i, (symbol, size)),
        }
    }
}

/// A graph ready to run, with its weights read lazily and kept once read.
pub struct Session {
    graph: Graph,
    weights: WeightFiles,
    loaded: RefCell<Vec<Option<Rc<Tensor>>>>,
    /// For each value, the last node that reads it (`None`: never read by a node).
    last_use: Vec<Option<usize>>,
    is_output: Vec<bool>,
    /// Nodes whose inputs are all weights, constants or outputs of such nodes: computed
    /// once (a weight's cast to f32, say) and kept with the loaded weights.
    constant_node: Vec<bool>,
    /// Values some non-constant node or the graph output still needs once every
    /// constant node has run; the others are dropped from the cache after a run.
    needed_at_run_time: Vec<bool>,
    /// Set after the first complete run: every constant result a run needs is cached.
    warm: std::cell::Cell<bool>,
    /// Time spent per op kind, when profiling is on.
    profile: RefCell<Option<BTreeMap<&'static str, OpTime>>>,
    /// Time spent per node (indexed as the graph's nodes), when profiling is on.
    node_time: RefCell<Vec<Duration>>,
    /// Products whose second operand is a dequantized weight, computed from the
    /// quantized bytes ([`crate::quantized`]); the dequantizing nodes never run.
    fused: Vec<Option<Fused>>,
    skipped: Vec<bool>,
    quantized: RefCell<HashMap<usize, Rc<QuantMatrix>>>,
    /// Threads the kernels of a run may use (None: the process's, [`threads::threads`]).
    threads: Option<usize>,
    /// Weights kept transposed for the products that read them so ([`Transposed`]).
    transposed: Transposed,
    /// Products reading their second operand through a transpose that does not run
    /// ([`views`]).
    views: Vec<Option<views::View>>,
}

/// Calls of one op kind and the time they took.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpTime {
    pub calls: usize,
    pub time: Duration,
}

impl Session {
    /// Prepare `graph`, whose weight files are relative to `model_dir` (and inside it).
    pub fn new(graph: Graph, model_dir: &Path) -> Session {
        Session::with_weights(graph, WeightFiles::new(model_dir))
    }

    /// Prepare `graph` to read its weights from `weights` (a package's listed files, say).
    pub fn with_weights(graph: Graph, weights: WeightFiles) -> Session {
        let mut last_use = vec![None; graph.values.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            for v in node.inputs.iter().flatten() {
                last_use[v.index()] = Some(i);
            }
        }
        let mut is_output = vec![false; graph.values.len()];
        for v in &graph.outputs {
            is_output[v.index()] = true;
        }
        let constant_node = graph.constants().node;
        let fused = fused_products(&graph);
        let mut skipped = vec![false; graph.nodes.len()];
        for f in fused.iter().flatten() {
            for &n in &f.chain {
                skipped[n] = true;
            }
        }
        let mut needed_at_run_time = is_output.clone();
        for (i, node) in graph.nodes.iter().enumerate() {
            if !constant_node[i] {
                for v in node.inputs.iter().flatten() {
                    needed_at_run_time[v.index()] = true;
                }
            }
        }
        let transposed = Transposed::plan(&graph, &fused, &is_output);
        let planned = |i: usize| planned_apart(&fused, &transposed, i);
        let (views, gone) = views::plan(&graph, &is_output, &constant_node, &skipped, planned);
        for (reader, view) in views.iter().enumerate() {
            if let Some(view) = view {
                let last = &mut last_use[view.source.index()];
                *last = (*last).max(Some(reader));
            }
        }
        for t in gone {
            skipped[t] = true;
        }
        let loaded = RefCell::new(vec![None; graph.values.len()]);
        Session {
            weights,
            graph,
            loaded,
            last_use,
            is_output,
            constant_node,
            needed_at_run_time,
            warm: std::cell::Cell::new(false),
            profile: RefCell::new(None),
            node_time: RefCell::new(Vec::new()),
            fused,
            skipped,
            quantized: RefCell::default(),
            threads: None,
            transposed,
            views,
        }
    }

    /// The transposed weight that node `node` reads (see [`Transposed::owner`]).
    fn flipped_weight(&self, node: usize) -> Result<Rc<Tensor>, RuntimeError> {
        self.transposed.weight(&self.graph, &self.weights, node)
    }

    /// Threads the kernels of this session's runs may use (see [`crate::threads`]:
    /// the outputs are the same bits whatever the count).
    pub fn set_threads(&mut self, n: usize) -> Result<(), RuntimeError> {
        threads::check(n).map_err(RuntimeError::Threads)?;
        self.threads = Some(n);
        Ok(())
    }

    /// Run `f` with this session's threads for the kernels.
    fn threaded<R>(&self, f: impl FnOnce() -> Result<R, RuntimeError>) -> Result<R, RuntimeError> {
        threads::with(self.threads.unwrap_or_else(threads::threads), f).map_err(RuntimeError::Threads)?
    }

    /// The quantized weight fused product `node` reads, mapped (not copied) on first use.
    fn quant_matrix(&self, node: usize, f: &Fused) -> Result<Rc<QuantMatrix>, RuntimeError> {
        if let Some(q) = self.quantized.borrow().get(&node) {
            return Ok(q.clone());
        }
        let data = self.graph.value(f.data);
        let ValueDef::Weight(w) = &data.def else {
            return Err(RuntimeError::NoWeightFile { name: data.name.clone() });
        };
        let (map, range) = self.weights.located(&data.name, w)?;
        let fail = |message: String| RuntimeError::Weight {
            name: data.name.clone(),
            file: w.location.as_ref().map(|l| std::path::PathBuf::from(&l.file)).unwrap_or_default(),
            message,
        };
        let (shape, offset) = ([w.shape[0], w.shape[1]], range.start);
        let q = match f.scale {
            Some(scale) => {
                // One scale (and zero point) for the whole weight: repeated per row.
                let per_row =
                    |v: Vec<f32>| if f.per_tensor { vec![v.first().copied().unwrap_or(0.0); shape[0]] } else { v };
                let scales = per_row(self.constant(scale)?.to_f32_vec());
                let zeros = f.zero.map(|z| self.constant(z).map(|t| per_row(t.to_f32_vec()))).transpose()?;
                QuantMatrix::new(map, offset, w.dtype, shape, scales, f.axis, f.block).and_then(|q| match zeros {
                    Some(z) => q.with_zero_points(z),
                    None => Ok(q),
                })
            }
            None => QuantMatrix::half(map, offset, w.dtype, shape),
        }
        .map_err(fail)?;
        let q = Rc::new(q);
        self.quantized.borrow_mut().insert(node, q.clone());
        Ok(q)
    }

    /// Start recording time per op kind (cleared by [`Session::take_profile`]) and per
    /// node ([`Session::take_node_times`]), from nothing.
    pub fn enable_profile(&self) {
        *self.profile.borrow_mut() = Some(BTreeMap::new());
        self.node_time.borrow_mut().clear();
    }

    /// Time per op kind since profiling was enabled; profiling stays on.
    pub fn take_profile(&self) -> BTreeMap<&'static str, OpTime> {
        self.profile.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Time per node (indexed as the graph's nodes; nodes that did not run: zero) since
    /// profiling was enabled or this was last taken; profiling stays on.
    pub fn take_node_times(&self) -> Vec<Duration> {
        let mut times = std::mem::take(&mut *self.node_time.borrow_mut());
        times.resize(self.graph.nodes.len(), Duration::ZERO);
        times
    }

    /// The graph this session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn constant(&self, v: ValueId) -> Result<Rc<Tensor>, RuntimeError> {
        if let Some(t) = &self.loaded.borrow()[v.index()] {
            return Ok(t.clone());
        }
        let value = self.graph.value(v);
        let t = match &value.def {
            ValueDef::Weight(w) => self.weights.load(&value.name, w)?,
            ValueDef::Const(c) => Tensor::from_data(c).map_err(|e| RuntimeError::Weight {
                name: value.name.clone(),
                file: Default::default(),
                message: e.to_string(),
            })?,
            _ => unreachable_def(&value.name)?,
        };
        let t = Rc::new(t);
        self.loaded.borrow_mut()[v.index()] = Some(t.clone());
        Ok(t)
    }

    /// Check the inputs against the graph's input types, binding symbols to sizes.
    /// Returns the value slots with the inputs filled in, and the symbols' sizes.
    fn bind_inputs(&self, inputs: Vec<(String, Tensor)>) -> Result<(Slots, Sizes), RuntimeError> {
        let mut values: Vec<Option<Rc<Tensor>>> = vec![None; self.graph.values.len()];
        let mut sizes = Sizes::default();
        let mut given: HashMap<String, Tensor> = inputs.into_iter().collect();
        for &id in &self.graph.inputs {
            let value = self.graph.value(id);
            let bad = |message: String| RuntimeError::Input { name: value.name.clone(), message };
            let t = given.remove(&value.name).ok_or_else(|| bad("not given".into()))?;
            if let Some(ty) = &value.ty {
                // Its type as text, for an error only.
                let expected = || shardc_ir::text::print::type_text(Some(ty));
                if t.dtype != ty.dtype || storage_of(t.dtype) != storage_of(ty.dtype) {
                    return Err(bad(format!("expected {}, got {}", expected(), t.describe())));
                }
                if t.shape().len() != ty.rank() {
                    return Err(bad(format!("expected rank {} ({}), got {}", ty.rank(), expected(), t.describe())));
                }
                for (d, &n) in ty.shape.iter().zip(t.shape()) {
                    let n = n as i64;
                    match (d.as_known(), d.symbols().as_slice()) {
                        (Some(k), _) if k != n => {
                            return Err(bad(format!("expected {}, got {}", expected(), t.describe())))
                        }
                        (None, [sym]) if *d == Dim::sym(sym) => {
                            if let Some(prev) = sizes.get(sym) {
                                if prev != n {
                                    return Err(bad(format!(
                                        "`{sym}` is {prev} elsewhere but {n} here ({})",
                                        t.describe()
                                    )));
                                }
                            }
                            sizes.insert(sym.clone(), n);
                        }
                        _ => {}
                    }
                }
            }
            values[id.index()] = Some(Rc::new(t));
        }
        if let Some(extra) = given.keys().next() {
            return Err(RuntimeError::Input { name: extra.clone(), message: "the graph has no such input".into() });
        }
        Ok((values, sizes))
    }

    /// Do before any request what the first run would: load every weight and constant,
    /// compute the nodes that depend on them alone (a weight's cast, say), open the
    /// quantized matrices and bring their mapped bytes in — so that the first request
    /// costs what the others do, and a device reports ready with its memory in use.
    pub fn warm(&self) -> Result<(), RuntimeError> {
        if self.warm.get() {
            return Ok(());
        }
        let mut values: Slots = vec![None; self.graph.values.len()];
        self.threaded(|| self.execute(&mut values, &Sizes::default(), true))
    }

    /// Run the graph; returns the graph outputs in order, with their names.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let (mut values, sizes) = self.bind_inputs(inputs)?;
        self.threaded(|| self.execute(&mut values, &sizes, false))?;
        self.take_outputs(&mut values)
    }

    /// The graph outputs of a finished step, with their names.
    fn take_outputs(&self, values: &mut Slots) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.graph
            .outputs
            .iter()
            .map(|&v| {
                let t = match values[v.index()].take() {
                    Some(t) => t,
                    None => self.constant(v)?,
                };
                Ok((self.graph.value(v).name.clone(), Rc::try_unwrap(t).unwrap_or_else(|rc| (*rc).clone())))
            })
            .collect()
    }

    /// Whether node `i` runs in a step: not fused into a product, not a constant node
    /// whose results are kept.
    fn runs(&self, i: usize) -> bool {
        let kept = || self.graph.nodes[i].outputs.iter().all(|o| self.loaded.borrow()[o.index()].is_some());
        !self.skipped[i] && !(self.constant_node[i] && (self.warm.get() || kept()))
    }

    /// The nodes of a run in order, or (`constants_only`, [`Session::warm`]) just those
    /// that depend on weights and constants alone, and the fused products' matrices.
    fn execute(&self, values: &mut Slots, sizes: &Sizes, constants_only: bool) -> Result<(), RuntimeError> {
        for (i, node) in self.graph.nodes.iter().enumerate() {
            if self.skipped[i] {
                continue;
            }
            if constants_only && !self.constant_node[i] {
                let fused = self.fused[i].as_ref();
                if let Some(f) = fused {
                    self.quant_matrix(i, f)?.touch();
                }
                if self.transposed.owner(i).is_some() {
                    self.flipped_weight(i)?;
                }
                // The weights and constants it reads, loaded as its first run would.
                for (slot, v) in node.inputs.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let stored = matches!(self.graph.value(*v).def, ValueDef::Weight(_) | ValueDef::Const(_));
                    let flipped = self.transposed.reads(i, slot);
                    if stored && !flipped && fused.is_none_or(|f| slot != f.operand()) {
                        self.constant(*v)?;
                    }
                }
                continue;
            }
            if self.runs(i) {
                self.run_node(i, values, sizes)?;
            }
        }
        self.finish();
        Ok(())
    }

    /// After a run: inputs of constant nodes nothing else needs are dropped (their
    /// results are kept), and every constant result a run needs is now cached.
    fn finish(&self) {
        for (v, slot) in self.loaded.borrow_mut().iter_mut().enumerate() {
            if !self.needed_at_run_time[v] {
                *slot = None;
            }
        }
        self.warm.set(true);
    }

    /// An output must have the dtype and (evaluated) shape shape inference gave it.
    fn check_output(&self, v: ValueId, t: &Tensor, sizes: &Sizes) -> Result<(), String> {
        let value = self.graph.value(v);
        let Some(ty) = &value.ty else { return Ok(()) };
        let mismatch = || {
            let expected = shardc_ir::text::print::type_text(Some(ty));
            format!("output `{}` is {}, but shape inference says {expected}", value.name, t.describe())
        };
        if ty.dtype != t.dtype || ty.rank() != t.shape().len() {
            return Err(mismatch());
        }
        for (d, &n) in ty.shape.iter().zip(t.shape()) {
            if let Some(k) = d.eval_with(|s| sizes.get(s)) {
                if k != n as i64 {
                    return Err(mismatch());
                }
            }
        }
        Ok(())
    }
}

/// Whether node `i` runs by a plan of its own: a product fused with its quantized
/// weight, or one reading a weight kept transposed (or looking rows up in it).
fn planned_apart(fused: &[Option<Fused>], transposed: &Transposed, i: usize) -> bool {
    fused[i].is_some() || transposed.op(i).is_some() || transposed.lookup(i)
}

fn unreachable_def(name: &str) -> Result<Tensor, RuntimeError> {
    Err(RuntimeError::Input { name: name.to_string(), message: "is neither given nor computed before its use".into() })
}

#[cfg(test)]
mod tests {
    use super::Sizes;

    #[test]
    fn sizes_are_found_by_name_whatever_the_order_they_came_in() {
        let mut sizes = Sizes::default();
        for (s, n) in [("seq", 7), ("batch", 1), ("past", 30), ("past_len", 2)] {
            sizes.insert(s.to_string(), n);
        }
        sizes.insert("seq".to_string(), 8);
        let got: Vec<Option<i64>> =
            ["batch", "past", "past_len", "seq", "pas", "z"].iter().map(|s| sizes.get(s)).collect();
        assert_eq!(got, [Some(1), Some(30), Some(2), Some(8), None, None]);
        let d = shardc_ir::Dim::sym("past").add(&shardc_ir::Dim::sym("seq"));
        assert_eq!(d.eval_with(|s| sizes.get(s)), Some(38));
    }
}
