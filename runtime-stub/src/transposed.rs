//! Weights kept transposed for the products that read them transposed.
//!
//! A `Gemm` with `transB` reads its weight `[N, K]` column by column: about half the
//! speed of reading it in the order it is stored, and it does not split over threads.
//! When that product is the weight's only reader — or its others are row lookups
//! (`Gather` on axis 0: a tied embedding, which then reads columns) — the session keeps
//! the weight transposed, `[K, N]` row-major, from the first use on, and never keeps it
//! as stored: the same bytes of memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use shardc_ir::ops::Gemm;
use shardc_ir::{Graph, Op, ValueDef};

use crate::quantized::Fused;
use crate::tensor::{Data, Tensor};
use crate::weights::WeightFiles;
use crate::RuntimeError;

/// Which nodes read a weight kept transposed, and the weights once made.
#[derive(Default)]
pub(crate) struct Transposed {
    /// For such a `Gemm` node: itself without `transB`.
    product: Vec<Option<Op>>,
    /// For such a `Gather` node: the `Gemm` node whose weight it looks rows up in.
    lookup: Vec<Option<usize>>,
    /// By `Gemm` node.
    kept: RefCell<HashMap<usize, Rc<Tensor>>>,
}

impl Transposed {
    /// The `Gemm` nodes of `graph` (not fused with a dequantization) whose `B` is a 2-D
    /// weight read once by them, otherwise only by row lookups, and not a graph output.
    pub fn plan(graph: &Graph, fused: &[Option<Fused>], is_output: &[bool]) -> Transposed {
        let uses = graph.uses();
        let mut product: Vec<Option<Op>> = vec![None; graph.nodes.len()];
        let mut lookup: Vec<Option<usize>> = vec![None; graph.nodes.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            let Op::Gemm(g) = &node.op else { continue };
            let Some(b) = node.inputs.get(1).copied().flatten() else { continue };
            let weight = matches!(&graph.value(b).def, ValueDef::Weight(w) if w.shape.len() == 2);
            let readers: Vec<usize> = uses[b.index()].iter().map(|n| n.index()).collect();
            let rows_only = |n: usize| {
                let other = &graph.nodes[n];
                matches!(&other.op, Op::Gather(a) if a.axis == 0)
                    && other.inputs.first().copied().flatten() == Some(b)
                    && other.inputs.iter().flatten().filter(|&&v| v == b).count() == 1
                    && fused[n].is_none()
            };
            let once = readers.iter().filter(|&&n| n == i).count() == 1;
            let others: Vec<usize> = readers.into_iter().filter(|&n| n != i).collect();
            if g.transA == 0
                && g.transB != 0
                && fused[i].is_none()
                && weight
                && once
                && !is_output[b.index()]
                && others.iter().all(|&n| rows_only(n))
            {
                product[i] = Some(Op::Gemm(Gemm { transB: 0, ..g.clone() }));
                for n in others {
                    lookup[n] = Some(i);
                }
            }
        }
        Transposed { product, lookup, kept: RefCell::default() }
    }

    /// The `Gemm` node keeping the transposed weight node `node` reads, if it reads one.
    pub fn owner(&self, node: usize) -> Option<usize> {
        self.product[node].as_ref().map(|_| node).or(self.lookup[node])
    }

    /// Whether input `slot` of `node` is a weight kept transposed.
    pub fn reads(&self, node: usize, slot: usize) -> bool {
        (slot == 1 && self.product[node].is_some()) || (slot == 0 && self.lookup[node].is_some())
    }

    /// Whether `node` looks rows up in a weight kept transposed.
    pub fn lookup(&self, node: usize) -> bool {
        self.lookup[node].is_some()
    }

    /// The op `node` runs as, if it reads a weight kept transposed as its `B`.
    pub fn op(&self, node: usize) -> Option<&Op> {
        self.product[node].as_ref()
    }

    /// The transposed weight `node` reads (made on first use from the stored one, which
    /// is not kept).
    pub fn weight(&self, graph: &Graph, weights: &WeightFiles, node: usize) -> Result<Rc<Tensor>, RuntimeError> {
        let owner = self.owner(node).unwrap_or(node);
        if let Some(t) = self.kept.borrow().get(&owner) {
            return Ok(t.clone());
        }
        let missing = || RuntimeError::Kernel {
            node: graph.nodes[owner].name.clone(),
            op: "Gemm",
            message: "input 1 is missing".into(),
        };
        let b = graph.nodes[owner].inputs.get(1).copied().flatten().ok_or_else(missing)?;
        let value = graph.value(b);
        let ValueDef::Weight(w) = &value.def else {
            return Err(RuntimeError::NoWeightFile { name: value.name.clone() });
        };
        let stored = weights.load(&value.name, w)?;
        let a = stored.as_f32().ok_or_else(|| RuntimeError::Weight {
            name: value.name.clone(),
            file: w.location.as_ref().map(|l| std::path::PathBuf::from(&l.file)).unwrap_or_default(),
            message: format!("a product's weight must be float, got {}", stored.describe()),
        })?;
        let t = Rc::new(Tensor::with_dtype(stored.dtype, Data::F32(a.t().as_standard_layout().into_owned())));
        self.kept.borrow_mut().insert(owner, t.clone());
        Ok(t)
    }
}
