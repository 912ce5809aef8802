//! One node of a step: its arguments, its kernel, its outputs kept and checked.

use std::rc::Rc;
use std::time::{Duration, Instant};

use shardc_ir::NodeId;

use super::{Session, Sizes, Slots};
use crate::kernels;
use crate::quantized;
use crate::tensor::Tensor;
use crate::RuntimeError;

impl Session {
    /// The node's name, or its id when it has none.
    pub(super) fn label(&self, i: usize) -> String {
        let node = &self.graph.nodes[i];
        if node.name.is_empty() {
            NodeId(i as u32).to_string()
        } else {
            node.name.clone()
        }
    }

    /// The tensors node `i` reads from `values` (or the weights); `None` for an absent
    /// optional input and for a fused product's quantized operand.
    pub(super) fn args(&self, i: usize, values: &Slots) -> Result<Vec<Option<Rc<Tensor>>>, RuntimeError> {
        let node = &self.graph.nodes[i];
        let fused = self.fused[i].as_ref();
        let mut args = Vec::with_capacity(node.inputs.len());
        for (slot, input) in node.inputs.iter().enumerate() {
            args.push(match input {
                None => None,
                // A fused product reads its quantized operand from the map.
                Some(_) if fused.is_some_and(|f| slot == f.operand()) => None,
                Some(_) if self.transposed.reads(i, slot) => Some(self.flipped_weight(i)?),
                Some(v) => {
                    let v = match &self.views[i] {
                        Some(view) if slot == 1 => &view.source,
                        _ => v,
                    };
                    Some(match &values[v.index()] {
                        Some(t) => t.clone(),
                        None => self.constant(*v)?,
                    })
                }
            });
        }
        Ok(args)
    }

    /// An input of node `i` its kernel may write its output into ([`kernels::takes_over`]):
    /// one read here for the last time, by no other slot of the node, not a graph
    /// output, held nowhere else (not a weight, a kept constant, another step's).
    /// Taken out of `values` and `args`; `None` when there is none.
    pub(super) fn hand_over(
        &self,
        i: usize,
        args: &mut [Option<Rc<Tensor>>],
        values: &mut Slots,
    ) -> Option<(usize, Tensor)> {
        let node = &self.graph.nodes[i];
        if super::planned_apart(&self.fused, &self.transposed, i) {
            return None;
        }
        for (k, input) in node.inputs.iter().enumerate() {
            let Some(v) = *input else { continue };
            if !kernels::takes_over(&node.op, k)
                || self.last_use[v.index()] != Some(i)
                || self.is_output[v.index()]
                || node.inputs.iter().filter(|u| **u == Some(v)).count() != 1
            {
                continue;
            }
            // Held by `values` and by `args` only.
            if values[v.index()].as_ref().is_none_or(|t| Rc::strong_count(t) != 2 || Rc::weak_count(t) != 0) {
                continue;
            }
            args[k] = None;
            let held = values[v.index()].take()?;
            match Rc::try_unwrap(held) {
                Ok(t) => return Some((k, t)),
                Err(held) => {
                    args[k] = Some(held.clone());
                    values[v.index()] = Some(held);
                }
            }
        }
        None
    }

    /// Node `i`'s kernel on `refs` (timed when profiling).
    /// `owned` is an input handed over by [`Session::hand_over`] (`refs` has `None` in
    /// its slot).
    pub(super) fn compute(
        &self,
        i: usize,
        refs: &[Option<&Tensor>],
        owned: Option<(usize, Tensor)>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let node = &self.graph.nodes[i];
        let fail = |message: String| RuntimeError::Kernel { node: self.label(i), op: node.op.name(), message };
        let started = Instant::now();
        let outs = match self.fused[i].as_ref() {
            Some(f) => {
                let w = self.quant_matrix(i, f)?;
                let other = refs
                    .get(1 - f.operand())
                    .copied()
                    .flatten()
                    .ok_or_else(|| fail(format!("input {} is missing", 1 - f.operand())))?;
                if f.gather {
                    quantized::gather(&w, other).map(|t| vec![t])
                } else {
                    quantized::product(f, &w, other, refs.get(2).copied().flatten()).map(|t| vec![t])
                }
            }
            None if self.transposed.lookup(i) => kernels::gather_columns(refs).map(|t| vec![t]),
            None => match (owned, &self.views[i]) {
                (_, Some(view)) => match view.perm.as_deref() {
                    Some(perm) => kernels::matmul(refs, Some(perm)),
                    None => {
                        // No perm: the axes reversed, as `Transpose` reads it.
                        let rank = refs.get(1).copied().flatten().map_or(0, |b| b.shape().len());
                        let reversed: Vec<i64> = (0..rank as i64).rev().collect();
                        kernels::matmul(refs, Some(&reversed))
                    }
                },
                (Some((k, x)), None) => kernels::run_into(&node.op, k, x, refs, node.outputs.len()),
                (None, None) => kernels::run(self.transposed.op(i).unwrap_or(&node.op), refs, node.outputs.len()),
            },
        }
        .map_err(fail)?;
        if let Some(p) = self.profile.borrow_mut().as_mut() {
            let entry = p.entry(node.op.name()).or_default();
            entry.calls += 1;
            let spent = started.elapsed();
            entry.time += spent;
            let mut nodes = self.node_time.borrow_mut();
            nodes.resize(self.graph.nodes.len(), Duration::ZERO);
            nodes[i] += spent;
        }
        if outs.len() != node.outputs.len() {
            return Err(fail(format!("kernel produced {} outputs for {}", outs.len(), node.outputs.len())));
        }
        Ok(outs)
    }

    /// Keep node `i`'s outputs in `values` (checked against their inferred types; a
    /// constant node's also with the weights) and drop the inputs it read last.
    pub(super) fn store(
        &self,
        i: usize,
        outs: Vec<Tensor>,
        values: &mut Slots,
        sizes: &Sizes,
    ) -> Result<(), RuntimeError> {
        let node = &self.graph.nodes[i];
        for (&v, t) in node.outputs.iter().zip(outs) {
            let t = t.normalize();
            self.check_output(v, &t, sizes).map_err(|message| RuntimeError::Kernel {
                node: self.label(i),
                op: node.op.name(),
                message,
            })?;
            let t = Rc::new(t);
            if self.constant_node[i] {
                self.loaded.borrow_mut()[v.index()] = Some(t.clone());
            }
            values[v.index()] = Some(t);
        }
        for v in node.inputs.iter().flatten() {
            if self.last_use[v.index()] == Some(i) && !self.is_output[v.index()] {
                values[v.index()] = None;
            }
        }
        Ok(())
    }

    /// Run node `i` of one step.
    pub(super) fn run_node(&self, i: usize, values: &mut Slots, sizes: &Sizes) -> Result<(), RuntimeError> {
        let mut args = self.args(i, values)?;
        let owned = self.hand_over(i, &mut args, values);
        let refs: Vec<Option<&Tensor>> = args.iter().map(|a| a.as_deref()).collect();
        let outs = self.compute(i, &refs, owned)?;
        drop(refs);
        drop(args);
        self.store(i, outs, values, sizes)
    }
}
