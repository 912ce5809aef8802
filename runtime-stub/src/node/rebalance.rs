//! Rebalancing on a device: cut the stage a `rebalance` message gives it from the
//! held units, check it against the routes, hand the KV cache of layers that leave to
//! their new device, wait for the layers that arrive, and report `ready`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};

use crate::frame::{Body, Frame};
use crate::generate::cache_entries;
use crate::{Session, Tensor};

use super::device::{Device, Handover};
use super::*;

impl Device<'_> {
    /// Switch to the stage a `rebalance` message gives this device: cut it from the held
    /// units, check it against the routes, send away the KV cache of layers that leave,
    /// and wait for the cache of layers that arrive (then report `ready`).
    pub(super) fn on_rebalance(&mut self, plan: &Rebalance) -> Result<(), NetError> {
        let started = Instant::now();
        let mut ready = Ready { epoch: plan.epoch, ..Default::default() };
        match self.switch(plan, &mut ready) {
            Ok(missing) => {
                ready.rebuild_ms = started.elapsed().as_secs_f64() * 1e3;
                self.handover = Some(Handover { ready, missing });
                self.check_handover()
            }
            Err(e) => {
                eprintln!("{}: cannot rebalance: {e}", self.name);
                ready.error = Some(e.to_string());
                self.report_ready(&ready)
            }
        }
    }

    fn switch(&mut self, plan: &Rebalance, ready: &mut Ready) -> Result<BTreeSet<(u64, String)>, NetError> {
        let held =
            self.held.as_ref().ok_or("the package was compiled without --standby: its boundaries cannot move")?;
        let me = plan.stages.iter().position(|d| *d == self.name).ok_or("the plan has no stage for this device")?;
        if plan.ranges.len() != plan.stages.len()
            || plan.ranges.first().is_none_or(|r| r[0] != 0)
            || plan.ranges.windows(2).any(|w| w[0][1] != w[1][0] || w[0][0] >= w[0][1])
        {
            return Err(format!("the plan's unit ranges {:?} do not tile the model", plan.ranges).into());
        }
        let range = plan.ranges[me];
        let owner = |u: usize| plan.ranges.iter().position(|r| (r[0]..r[1]).contains(&u)).map(|s| &plan.stages[s]);
        let active = if self.active.range == Some(range) {
            None
        } else {
            let graph = held.stage(range)?;
            let session = Session::with_weights(graph, self.weights.clone());
            let cache = cache_entries(session.graph());
            Some((session, cache))
        };
        // The new stage must take and give exactly what the routes say.
        let (inputs, outputs): (Vec<String>, Vec<String>) = {
            let g = active.as_ref().map_or(self.active.session.graph(), |(s, _)| s.graph());
            (
                g.inputs.iter().filter(|&&v| g.cache_of_input(v).is_none()).map(|&v| g.value(v).name.clone()).collect(),
                g.outputs
                    .iter()
                    .filter(|&&v| g.cache_of_output(v).is_none())
                    .map(|&v| g.value(v).name.clone())
                    .collect(),
            )
        };
        let routed_in: BTreeSet<&String> =
            plan.routes.iter().filter(|(_, r)| r.to.iter().any(|e| e.is_device(&self.name))).map(|(t, _)| t).collect();
        let routed_out: BTreeSet<&String> =
            plan.routes.iter().filter(|(_, r)| r.from.is_device(&self.name)).map(|(t, _)| t).collect();
        if inputs.iter().collect::<BTreeSet<_>>() != routed_in || outputs.iter().collect::<BTreeSet<_>>() != routed_out
        {
            return Err(format!(
                "units {}..{} take {inputs:?} and give {outputs:?}, but the routes bring {routed_in:?} and take {routed_out:?}",
                range[0], range[1]
            ).into());
        }
        let peers =
            |o: &String| plan.routes.get(o).map_or(Vec::new(), |r| r.to.iter().map(|e| e.name().to_string()).collect());
        let peers_of = outputs.iter().map(|o| (o.clone(), peers(o))).collect();
        if let Some((session, cache)) = active {
            self.active.session = session;
            self.active.cache = cache;
        }
        self.active.range = Some(range);
        self.active.needed = inputs;
        self.active.peers_of = peers_of;
        // KV cache: entries of layers that leave go to their new device.
        let keep: BTreeSet<String> = self.active.cache.iter().map(|c| c.past.clone()).collect();
        let mut outgoing: BTreeMap<(String, u64), Vec<(String, Tensor)>> = BTreeMap::new();
        self.caches.retain(|r, _| plan.requests.contains(r));
        for (&r, cache) in &mut self.caches {
            let leaving: Vec<String> = cache.keys().filter(|n| !keep.contains(*n)).cloned().collect();
            for name in leaving {
                let unit = *held.cache_unit.get(&name).ok_or_else(|| format!("no held unit reads `{name}`"))?;
                let to = owner(unit).ok_or_else(|| format!("no stage runs unit {unit}"))?.clone();
                let t = cache.remove(&name).unwrap_or_else(|| Tensor::f32(ArrayD::zeros(IxDyn(&[0]))));
                outgoing.entry((to, r)).or_default().push((name, t));
            }
        }
        for ((to, r), tensors) in outgoing {
            ready.kv_sent_bytes += tensors.iter().map(|(_, t)| t.byte_len() as u64).sum::<u64>();
            let device = self.name.clone();
            self.send_to(&to, &Frame::new(r, 0, &device, Body::Kv { epoch: plan.epoch, tensors }))?;
        }
        // Entries of layers that arrive (some may have come already).
        let mut missing = BTreeSet::new();
        for &r in &plan.requests {
            let have = self.caches.entry(r).or_default();
            for name in &keep {
                if !have.contains_key(name) {
                    missing.insert((r, name.clone()));
                }
            }
        }
        Ok(missing)
    }

    pub(super) fn on_kv(&mut self, request: u64, tensors: Vec<(String, Tensor)>) -> Result<(), NetError> {
        let cache = self.caches.entry(request).or_default();
        for (name, t) in tensors {
            if let Some(h) = &mut self.handover {
                h.missing.remove(&(request, name.clone()));
            }
            cache.insert(name, t);
        }
        self.check_handover()
    }

    fn check_handover(&mut self) -> Result<(), NetError> {
        if self.handover.as_ref().is_some_and(|h| h.missing.is_empty()) {
            if let Some(h) = self.handover.take() {
                return self.report_ready(&h.ready);
            }
        }
        Ok(())
    }

    pub(super) fn report_ready(&mut self, ready: &Ready) -> Result<(), NetError> {
        let f = Frame::control(&self.name.clone(), Body::Ready(ready.clone()));
        self.send_to("client", &f)
    }
}
