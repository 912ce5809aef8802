//! `balance.json`, written by `shardc compile --standby N`: what the runtime's
//! balancer needs to move stage boundaries — the units, the compiled plan, the units
//! each stage's package holds, the compile-time [`Problem`], and every tensor that
//! crosses units, so the runtime can route any plan within the held units.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::problem::{Problem, Stage, UnitId};
use crate::tensor::Endpoint;

/// The current `balance.json` format.
pub const FORMAT: u32 = 1;

/// A tensor that goes from one unit to later ones (or from the client).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Crossing {
    pub tensor: String,
    /// The unit that computes it; `None` for a graph input the client sends.
    pub from: Option<UnitId>,
    /// The units that read it.
    pub to: Vec<UnitId>,
    /// A graph output: the client receives it too.
    pub output: bool,
}

/// `balance.json`: written by `shardc compile --standby N`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BalanceSpec {
    pub format: u32,
    /// Unit names, in order.
    pub units: Vec<String>,
    /// Device names, indexed as the problem's devices.
    pub devices: Vec<String>,
    /// The compiled plan.
    pub plan: Vec<Stage>,
    /// Per stage, the units `[start, end)` whose weights its package holds.
    pub held: Vec<[usize; 2]>,
    /// The compile-time partitioning problem (cost model, memory, links, objective).
    pub problem: Problem,
    /// Every tensor that crosses units, for routing under any plan.
    pub crossings: Vec<Crossing>,
}

/// Who sends a tensor and who receives it (device names, or `client`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub from: Endpoint,
    pub to: Vec<Endpoint>,
}

impl BalanceSpec {
    /// Read `OUT/balance.json`; `Ok(None)` when the output was compiled without standby units.
    pub fn load(out: &Path) -> Result<Option<BalanceSpec>, String> {
        let path = out.join("balance.json");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = crate::files::read_bounded(&path, crate::files::MAX_TEXT)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        BalanceSpec::parse(&bytes, &path).map(Some)
    }

    /// Parse and check the bytes of a balance file (`path` names it in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<BalanceSpec, String> {
        let spec: BalanceSpec =
            serde_json::from_slice(bytes).map_err(|e| format!("{}: not a balance file: {e}", path.display()))?;
        spec.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(spec)
    }

    /// Everything agrees: sizes, the plan tiles the units, each stage inside what it holds.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("balance format {} (this runtime reads {FORMAT})", self.format));
        }
        let (u, d) = (self.units.len(), self.devices.len());
        let p = &self.problem;
        let rows_ok = |m: &[Vec<f64>]| m.len() == d && m.iter().all(|r| r.len() == u);
        if p.units() != u
            || p.devices() != d
            || !rows_ok(&p.prefill)
            || !rows_ok(&p.decode)
            || p.activation_bytes.len() != u
            || p.cut_prefill.len() + 1 < u
            || p.cut_decode.len() + 1 < u
            || p.links.len() != d
            || p.links.iter().any(|l| l.len() != d)
        {
            return Err(format!("the problem does not have {u} units and {d} devices"));
        }
        p.evaluate(&self.plan)?;
        if self.held.len() != self.plan.len() {
            return Err(format!("{} held ranges for {} stages", self.held.len(), self.plan.len()));
        }
        for (s, h) in self.plan.iter().zip(&self.held) {
            if h[0] > s.start || s.end > h[1] || h[1] > u {
                return Err(format!(
                    "stage on `{}` holds units {h:?}, which do not contain its own",
                    self.devices[s.device]
                ));
            }
        }
        for c in &self.crossings {
            if c.from.is_some_and(|f| f.index() >= u)
                || c.to.iter().any(|&t| t.index() >= u || c.from.is_some_and(|f| t <= f))
            {
                return Err(format!("tensor `{}` crosses units that do not exist or go backwards", c.tensor));
            }
        }
        Ok(())
    }

    /// Held unit ranges, as ranges.
    pub fn held_ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.held.iter().map(|h| h[0]..h[1]).collect()
    }

    /// Device name of each stage of `plan`.
    pub fn stage_devices(&self, plan: &[Stage]) -> Vec<String> {
        plan.iter().map(|s| self.devices[s.device].clone()).collect()
    }

    /// Who sends each crossing tensor to whom under `plan` (a plan that tiles the
    /// units, as [`Problem::evaluate`] checks); tensors that stay on one device are left
    /// out.
    pub fn routes(&self, plan: &[Stage]) -> BTreeMap<String, Route> {
        let owner = |u: UnitId| plan.iter().find(|s| s.runs(u)).map(|s| &self.devices[s.device]);
        let mut routes = BTreeMap::new();
        for c in &self.crossings {
            let from = match c.from.map(owner) {
                None => Endpoint::Client,
                Some(Some(device)) => Endpoint::Device(device.clone()),
                Some(None) => continue,
            };
            let mut to: Vec<Endpoint> = Vec::new();
            // In pipeline order.
            for s in plan {
                let name = &self.devices[s.device];
                if !from.is_device(name) && c.to.iter().any(|&u| s.runs(u)) {
                    to.push(Endpoint::Device(name.clone()));
                }
            }
            if c.output {
                to.push(Endpoint::Client);
            }
            if !to.is_empty() {
                routes.insert(c.tensor.clone(), Route { from, to });
            }
        }
        routes
    }

    /// A plan with device and unit names.
    pub fn view(&self, plan: &[Stage]) -> Vec<StageView> {
        plan.iter()
            .map(|s| StageView {
                device: self.devices[s.device].clone(),
                units: [s.start, s.end],
                first_unit: self.units[s.start].clone(),
                last_unit: self.units[s.end - 1].clone(),
            })
            .collect()
    }
}

/// One stage of a plan, for reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageView {
    pub device: String,
    /// Units `[start, end)`.
    pub units: [usize; 2],
    pub first_unit: String,
    pub last_unit: String,
}
