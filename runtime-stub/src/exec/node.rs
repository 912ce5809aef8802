//! One node of a step: its arguments, its kernel, its outputs kept and checked.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardc_ir::NodeId;

use super::{Session, Slots};
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
                Some(v) => Some(match &values[v.index()] {
                    Some(t) => t.clone(),
                    None => self.constant(*v)?,
                }),
            });
        }
        Ok(args)
    }

    /// Node `i`'s kernel on `refs` (timed when profiling).
    pub(super) fn compute(&self, i: usize, refs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, RuntimeError> {
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
            None => kernels::run(self.transposed.op(i).unwrap_or(&node.op), refs, node.outputs.len()),
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
        sizes: &HashMap<String, i64>,
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
    pub(super) fn run_node(
        &self,
        i: usize,
        values: &mut Slots,
        sizes: &HashMap<String, i64>,
    ) -> Result<(), RuntimeError> {
        let args = self.args(i, values)?;
        let refs: Vec<Option<&Tensor>> = args.iter().map(|a| a.as_deref()).collect();
        let outs = self.compute(i, &refs)?;
        drop(refs);
        drop(args);
        self.store(i, outs, values, sizes)
    }
}
