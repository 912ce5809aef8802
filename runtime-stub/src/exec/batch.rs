//! Steps of several requests run together (batched decode): node by node in lock step,
//! each step with its own values (its KV cache, its positions, its length), and each
//! product by a stored matrix computed once for the rows of all the steps — the matrix
//! read once for every request instead of once per request. The few-rows product
//! kernels sum each row on its own ([`crate::kernels::MAX_ROWS`],
//! [`crate::quantized::MAX_ROWS`]), so each step's outputs are the bits it gives alone.

use std::rc::Rc;

use ndarray::{ArrayD, Axis, IxDyn};
use shardc_ir::{Op, ValueDef, ValueId};

use super::{Session, Sizes, Slots};
use crate::tensor::{Data, Tensor};
use crate::{kernels, quantized, RuntimeError};

/// A step's state: its values and symbol sizes, or the error that ended it.
type Step = Result<(Slots, Sizes), RuntimeError>;

impl Session {
    /// Run several steps (each the named inputs of one [`Session::run`]) together. Each
    /// gets the outputs it would get alone, bit for bit, or the error that ended it; an
    /// error in one step does not end the others.
    pub fn run_batch(&self, steps: Vec<Vec<(String, Tensor)>>) -> Vec<Result<Vec<(String, Tensor)>, RuntimeError>> {
        let mut states: Vec<Step> = steps.into_iter().map(|s| self.bind_inputs(s)).collect();
        if let Err(e) = self.threaded(|| {
            self.lock_step(&mut states);
            Ok(())
        }) {
            let why = e.to_string();
            return states.iter().map(|_| Err(RuntimeError::Threads(why.clone()))).collect();
        }
        states.into_iter().map(|s| s.and_then(|(mut values, _)| self.take_outputs(&mut values))).collect()
    }

    fn lock_step(&self, states: &mut [Step]) {
        for i in 0..self.graph.nodes.len() {
            match self.batched_rows(i) {
                Some(limit) => self.batched_node(i, limit, states),
                None => {
                    for state in states.iter_mut() {
                        node_alone(self, i, state);
                    }
                }
            }
        }
        self.finish();
    }

    /// For a product by a stored matrix (a weight, a constant or what constant nodes
    /// make of them) whose other operand is a step's rows: the most rows its few-rows
    /// kernel takes. `None` for any other node.
    fn batched_rows(&self, i: usize) -> Option<usize> {
        if !self.runs(i) || self.constant_node[i] || self.transposed.lookup(i) {
            return None;
        }
        let node = &self.graph.nodes[i];
        let stored = |slot: usize| match node.inputs.get(slot).copied().flatten() {
            None => true,
            Some(_) if self.transposed.reads(i, slot) => true,
            Some(v) => self.is_stored(v),
        };
        let op = self.transposed.op(i).unwrap_or(&node.op);
        if let Some(f) = &self.fused[i] {
            let plain = f.gemm.as_ref().is_none_or(|g| g.transA == 0);
            return (!f.gather && plain && stored(2)).then_some(quantized::MAX_ROWS);
        }
        match op {
            Op::MatMul(_) if node.inputs.len() == 2 && stored(1) => Some(kernels::MAX_ROWS),
            Op::Gemm(g) if g.transA == 0 && stored(1) && stored(2) => Some(kernels::MAX_ROWS),
            _ => None,
        }
    }

    fn is_stored(&self, v: ValueId) -> bool {
        match self.graph.value(v).def {
            ValueDef::Weight(_) | ValueDef::Const(_) => true,
            ValueDef::Node(n) => self.constant_node[n.index()],
            ValueDef::Input => false,
        }
    }

    /// Node `i` (a product by a stored matrix) over the steps: those with few enough
    /// rows in groups of at most `limit` rows, each group one product; the rest alone.
    fn batched_node(&self, i: usize, limit: usize, states: &mut [Step]) {
        let mut group: Vec<Member> = Vec::new();
        let mut rows_in_group = 0;
        for s in 0..states.len() {
            let Ok((values, _)) = &states[s] else { continue };
            let args = match self.args(i, values) {
                Ok(a) => a,
                Err(e) => {
                    states[s] = Err(e);
                    continue;
                }
            };
            let rows = match rows_of(&args) {
                Some(r) if r <= limit => r,
                _ => {
                    node_alone(self, i, &mut states[s]);
                    continue;
                }
            };
            if rows_in_group + rows > limit {
                self.group_product(i, std::mem::take(&mut group), states);
                rows_in_group = 0;
            }
            rows_in_group += rows;
            group.push(Member { step: s, rows, args });
        }
        self.group_product(i, group, states);
    }

    /// One product for the rows of every step in `group`, its rows handed back to each
    /// step; a group of one, operands that do not stack or a product that fails run step
    /// by step (so an error names its own step).
    fn group_product(&self, i: usize, group: Vec<Member>, states: &mut [Step]) {
        let alone = |states: &mut [Step], group: &[Member]| {
            for m in group {
                node_alone(self, i, &mut states[m.step]);
            }
        };
        if group.len() < 2 {
            return alone(states, &group);
        }
        let Some(stacked) = stack(group.iter().map(|m| m.args[0].as_deref())) else {
            return alone(states, &group);
        };
        let first = &group[0].args;
        let mut refs: Vec<Option<&Tensor>> = first.iter().map(|a| a.as_deref()).collect();
        refs[0] = Some(&stacked);
        // Operands every step reads alike: a matrix, and a bias of one row at most.
        let shared = refs[1].is_none_or(|b| b.shape().len() == 2)
            && refs.get(2).copied().flatten().is_none_or(|c| c.shape().len() < 2 || c.shape()[0] == 1);
        if !shared {
            return alone(states, &group);
        }
        let out = match self.compute(i, &refs, None).map(|mut o| (o.pop(), o.is_empty())) {
            Ok((Some(Tensor { data: Data::F32(out), .. }), true)) => out,
            _ => return alone(states, &group),
        };
        let dtype = stacked.dtype;
        let n = out.shape().last().copied().unwrap_or(0);
        let mut start = 0;
        for Member { step: s, rows, args } in &group {
            let Ok((values, sizes)) = &mut states[*s] else { continue };
            // The step's leading dims (its A's, all but the last), then the product's width.
            let mut shape = args[0].as_deref().map(|t| t.shape().to_vec()).unwrap_or_default();
            shape.pop();
            shape.push(n);
            let part = out.slice_axis(Axis(0), (start..start + rows).into()).to_owned();
            start += rows;
            let t = match part.into_shape_with_order(IxDyn(&shape)) {
                Ok(p) => Tensor::with_dtype(dtype, Data::F32(p)),
                Err(e) => {
                    let (node, op) = (self.label(i), self.graph.nodes[i].op.name());
                    states[*s] = Err(RuntimeError::Kernel { node, op, message: e.to_string() });
                    continue;
                }
            };
            if let Err(e) = self.store(i, vec![t], values, sizes) {
                states[*s] = Err(e);
            }
        }
    }
}

/// A step in a group of one product: its index, its rows, its node's arguments.
struct Member {
    step: usize,
    rows: usize,
    args: Vec<Option<Rc<Tensor>>>,
}

/// Node `i` for one step on its own (if it still runs and the node runs at all).
fn node_alone(session: &Session, i: usize, state: &mut Step) {
    if !session.runs(i) {
        return;
    }
    if let Ok((values, sizes)) = state {
        if let Err(e) = session.run_node(i, values, sizes) {
            *state = Err(e);
        }
    }
}

/// Rows of the first operand (all its dims but the last), when it has a rank of 2 or
/// more and f32 values.
fn rows_of(args: &[Option<Rc<Tensor>>]) -> Option<usize> {
    let a = args.first()?.as_deref()?;
    let shape = a.shape();
    (shape.len() >= 2 && a.as_f32().is_some()).then(|| shape[..shape.len() - 1].iter().product())
}

/// The rows of each operand, one after another, as one `[rows, k]` matrix; `None` when
/// their widths or types differ.
fn stack<'a>(operands: impl Iterator<Item = Option<&'a Tensor>>) -> Option<Tensor> {
    let mut data = Vec::new();
    let (mut k, mut dtype) = (None, None);
    for t in operands {
        let t = t?;
        let a = t.as_f32()?;
        let width = *a.shape().last()?;
        if k.is_some_and(|k| k != width) || dtype.is_some_and(|d| d != t.dtype) {
            return None;
        }
        (k, dtype) = (Some(width), Some(t.dtype));
        match a.as_slice() {
            Some(rows) => data.extend_from_slice(rows),
            None => data.extend(a.iter().copied()),
        }
    }
    let k = k?;
    let rows = data.len().checked_div(k)?;
    let m = ArrayD::from_shape_vec(IxDyn(&[rows, k]), data).ok()?;
    Some(Tensor::with_dtype(dtype?, Data::F32(m)))
}
