//! Stages in one process: each stage's graph runs in its own [`Session`], and tensors
//! move between stages by name, as a transmission map says they travel.

use std::collections::{BTreeSet, HashMap};

use shardc_ir::TensorType;

use crate::generate::Runner;
use crate::{RuntimeError, Session, Tensor};

/// A chain of stages.
pub struct Pipeline {
    pub stages: Vec<Session>,
    /// Values moved between stages in the last run: (tensor, from stage, to stage).
    pub moved: std::cell::RefCell<Vec<(String, usize, usize)>>,
}

impl Pipeline {
    pub fn new(stages: Vec<Session>) -> Pipeline {
        Pipeline { stages, moved: std::cell::RefCell::new(Vec::new()) }
    }

    fn produced_before(&self, stage: usize) -> BTreeSet<String> {
        self.stages[..stage].iter().flat_map(|s| s.outputs()).collect()
    }
}

impl Runner for Pipeline {
    /// Inputs no earlier stage produces: what the client sends.
    fn inputs(&self) -> Vec<(String, Option<TensorType>)> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            let before = self.produced_before(i);
            for (name, ty) in s.inputs() {
                if !before.contains(&name) && seen.insert(name.clone()) {
                    out.push((name, ty));
                }
            }
        }
        out
    }

    /// Outputs no later stage reads: what the client receives.
    fn outputs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            let later: BTreeSet<String> =
                self.stages[i + 1..].iter().flat_map(|x| x.inputs().into_iter().map(|(n, _)| n)).collect();
            out.extend(s.outputs().into_iter().filter(|n| !later.contains(n)));
        }
        out
    }

    /// Every stage's cache entries.
    fn cache(&self) -> Vec<crate::generate::CacheEntry> {
        self.stages.iter().flat_map(|s| s.cache()).collect()
    }

    fn recompute_beyond(&self) -> Option<u64> {
        self.stages.iter().filter_map(|s| s.recompute_beyond()).min()
    }

    fn max_context(&self) -> Option<u64> {
        self.stages.iter().filter_map(|s| s.max_context()).min()
    }

    fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let mut bus: HashMap<String, (Option<usize>, Tensor)> =
            inputs.into_iter().map(|(n, t)| (n, (None, t))).collect();
        let mut moved = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let mut ins = Vec::new();
            for (name, _) in stage.inputs() {
                let (from, t) = bus.get(&name).ok_or_else(|| RuntimeError::Input {
                    name: name.clone(),
                    message: format!("stage {i} needs it, but neither the client nor an earlier stage provides it"),
                })?;
                if let Some(f) = from {
                    moved.push((name.clone(), *f, i));
                }
                ins.push((name, t.clone()));
            }
            for (name, t) in stage.run(ins)? {
                bus.insert(name, (Some(i), t));
            }
        }
        *self.moved.borrow_mut() = moved;
        let wanted = self.outputs();
        Ok(wanted.into_iter().filter_map(|n| bus.remove(&n).map(|(_, t)| (n, t))).collect())
    }
}
