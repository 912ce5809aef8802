//! The partition pipeline: one ordered function from a graph (after the pass pipeline),
//! a device profile and a request to a typed [`Partition`] — the plan and its report,
//! the transmission map, one graph per stage with its weights retyped as they will be
//! stored, the standby graphs and `balance.json` when asked for. Callers render and
//! write what it returns; nothing here touches the file system.
//!
//! ```text
//! partition = size weights → segment → cost model → solve → report
//!           → transmission map → split → held graphs, crossings → store weights
//! ```
//!
//! [`plan`] stops after the transmission map (`shardc plan`), [`compare`] runs every
//! strategy on one problem (`shardc compare`).

mod held;
mod report;
mod store;

use std::time::Duration;

use shardc_format::balance::{self, BalanceSpec};
use shardc_format::manifest::{Port, Standby};
use shardc_format::plan::{InputFile, PlanReport};
use shardc_format::Endpoint;
use shardc_ir::{DType, Graph, ValueId};

use crate::cost::{CostError, Workload};
use crate::devices::Profile;
use crate::plan::{solve, Objective, Outcome, Plan, Strategy};
use crate::segment::SegmentError;
use crate::transmission::TransmissionMap;

pub use held::{crossings, held_graph, Held};
pub use report::{compare, compare_weights, prepare, CompareRow, Prepared, WeightsRow};
pub use store::{
    derivations, nothing_to_quantize, quantization_report, quantized, quantized_or_refused, retype_weights, sized,
    store_weights, Derived, Part, Stored,
};

/// Why partitioning failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Cost(#[from] CostError),
    /// The devices cannot hold the model (the message has the figures).
    #[error("{0}")]
    DoesNotFit(String),
    /// A stage, standby or balance result failed its own check (a defect, reported).
    #[error("{0}")]
    Check(String),
    /// The request asks for what this version cannot do yet (the message says what).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Calibration(#[from] crate::calibrate::CalibrationError),
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub workload: Workload,
    pub objective: Objective,
    pub margin: f64,
    pub time_limit: Duration,
    /// Branch-and-bound node budget of the integer program (what bounds its search:
    /// the plan depends on the inputs alone).
    pub node_limit: u64,
    /// Node budget of the search over all-different devices (likewise).
    pub search_nodes: u64,
    pub compute_dtype: Option<String>,
    /// Units beyond each stage boundary whose weights a stage also holds, so runtime
    /// load balancing can move the boundary (memory permitting).
    pub standby: usize,
    /// Store (and so size) every float weight as this dtype; `None` keeps the model's.
    pub dtype: Option<DType>,
    /// Quantize the matrix weights (sized so for planning; compiling quantized packages
    /// is refused until their weights can be written).
    pub quantize: Option<crate::quantize::Quantization>,
    /// Correct each device's times from a measured run (`--calibrate`).
    pub calibration: Option<crate::calibrate::Run>,
}

/// Fraction of each device's memory kept free unless asked otherwise (`--margin`).
pub const DEFAULT_MARGIN: f64 = 0.1;

/// Time limit of the exact search unless asked otherwise, seconds (`--time-limit`).
pub const DEFAULT_TIME_LIMIT_S: f64 = 10.0;

impl Request {
    /// A request for `workload` and `objective` with the command line's defaults: the
    /// default margin, time limit and node budgets, the model's dtypes, no standby
    /// units, quantization or calibration.
    pub fn new(workload: Workload, objective: Objective) -> Self {
        Request {
            workload,
            objective,
            margin: DEFAULT_MARGIN,
            time_limit: Duration::from_secs_f64(DEFAULT_TIME_LIMIT_S),
            node_limit: crate::plan::DEFAULT_NODE_LIMIT,
            search_nodes: crate::plan::distinct::DEFAULT_NODES,
            compute_dtype: None,
            standby: 0,
            dtype: None,
            quantize: None,
            calibration: None,
        }
    }
}

/// How `plan.json` names the model and the device profile, and the files read (by
/// content: the caller describes them without their paths).
#[derive(Clone, Copy, Debug)]
pub struct Names<'a> {
    pub model: &'a str,
    pub devices: &'a str,
    pub inputs: &'a [InputFile],
}

/// A feasible plan: the planner's view, the solver's answer, the report and the map.
pub struct Planned {
    pub prep: Prepared,
    /// The feasible plan.
    pub plan: Plan,
    pub outcome: Outcome,
    pub report: PlanReport,
    pub map: TransmissionMap,
}

/// Plan with one strategy; an error, with the figures, when nothing fits.
pub fn plan(
    graph: &Graph,
    profile: &Profile,
    req: &Request,
    strategy: Strategy,
    names: Names,
) -> Result<Planned, PartitionError> {
    let (quantized, summary) = quantized_or_refused(graph, req.quantize.as_ref())?;
    let mut planned = plan_graph(&quantized, profile, req, strategy, names)?;
    planned.report.quantization =
        req.quantize.as_ref().zip(summary.as_ref()).map(|(q, s)| quantization_report(q, s, req.dtype));
    Ok(planned)
}

/// Plan `graph` as it is (quantized already when asked) with its weights sized as
/// `req.dtype` says.
fn plan_graph(
    graph: &Graph,
    profile: &Profile,
    req: &Request,
    strategy: Strategy,
    names: Names,
) -> Result<Planned, PartitionError> {
    // Plan with the weights sized as they will be stored.
    let (sized, _) = sized(graph, req.dtype, None);
    let graph = &*sized;
    let prep = prepare(graph, profile, req)?;
    let outcome = solve(&prep.model.problem, strategy, &prep.opts);
    let feasible = outcome.figures.as_ref().is_some_and(|f| f.feasible);
    if !feasible {
        if strategy == Strategy::Ilp || outcome.plan.is_none() {
            return Err(report::does_not_fit(&prep, profile, req.margin));
        }
        return Err(PartitionError::DoesNotFit(format!(
            "the {} plan exceeds a device's memory ({}); try --strategy ilp",
            strategy.name(),
            outcome.status.note.clone().unwrap_or_default()
        )));
    }
    // Feasible figures are those of a plan.
    let plan = outcome.plan.clone().ok_or_else(|| report::does_not_fit(&prep, profile, req.margin))?;
    let report = report::report(names, &prep, profile, req, &outcome)
        .ok_or_else(|| report::does_not_fit(&prep, profile, req.margin))?;
    let device_names: Vec<String> = profile.devices.iter().map(|d| d.name.clone()).collect();
    let map = crate::transmission::build(graph, &prep.seg, &plan, &device_names, &req.workload)?;
    Ok(Planned { prep, plan, outcome, report, map })
}

/// One stage of a partition: what its package holds, ready to write.
pub struct StagePart {
    pub device: String,
    /// First and last unit names.
    pub units: [String; 2],
    /// Tensors it receives and sends, with their peers (device-local state left out).
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Tensors that stay on the device between steps (its KV cache).
    pub device_local: Vec<String>,
    /// The stage's graph, weights retyped as stored and still located in the model.
    pub graph: Stored,
    /// With standby units: every unit whose weights the stage holds.
    pub standby: Option<StandbyPart>,
    /// The dtype of the stage's float weights as stored (`None` without any).
    pub weights_dtype: Option<DType>,
}

/// The units a stage holds beyond its own, as its package carries them.
pub struct StandbyPart {
    /// Their graph, weights retyped as stored (a superset of the stage's weights).
    pub graph: Stored,
    /// `standby.json`: first held unit, unit names, held unit of every node.
    pub map: Standby,
}

/// Everything a compile writes, computed.
pub struct Partition {
    pub report: PlanReport,
    pub map: TransmissionMap,
    /// `balance.json`, with standby units.
    pub balance: Option<BalanceSpec>,
    pub stages: Vec<StagePart>,
}

impl StagePart {
    /// The graph whose weights the package's `weights.safetensors` holds: the standby
    /// graph's (a superset) when there is one, else the stage's.
    pub fn held(&self) -> &Stored {
        self.standby.as_ref().map_or(&self.graph, |s| &s.graph)
    }
}

/// The whole pipeline: plan, split into stage graphs, held graphs and `balance.json`
/// with standby units, weights retyped as stored.
pub fn partition(
    graph: &Graph,
    profile: &Profile,
    req: &Request,
    strategy: Strategy,
    names: Names,
) -> Result<Partition, PartitionError> {
    let (quantized, summary) = quantized_or_refused(graph, req.quantize.as_ref())?;
    // How to compute each weight the quantization created, from the model's own.
    let derive = summary.as_ref().map(|s| derivations(graph, s)).unwrap_or_default();
    let graph = &*quantized;
    let mut planned = plan_graph(graph, profile, req, strategy, names)?;
    planned.report.quantization =
        req.quantize.as_ref().zip(summary.as_ref()).map(|(q, s)| quantization_report(q, s, req.dtype));
    let plan = planned.plan.clone();
    let seg = &planned.prep.seg;
    let device_names: Vec<String> = profile.devices.iter().map(|d| d.name.clone()).collect();
    let stages = crate::split::split(graph, seg, &plan);
    // The held units as planning reported them (every stage has them with --standby).
    let held: Option<Vec<[usize; 2]>> =
        planned.report.stages.iter().map(|s| s.held.as_ref().map(|h| h.units)).collect();
    let balance = match &held {
        Some(held) => {
            let spec = BalanceSpec {
                format: balance::FORMAT,
                units: seg.units.iter().map(|u| u.name.clone()).collect(),
                devices: device_names.clone(),
                plan: plan.clone(),
                held: held.clone(),
                problem: planned.prep.model.problem.clone(),
                crossings: crossings(graph, seg, &planned.map),
            };
            spec.check().map_err(|e| PartitionError::Check(format!("balance.json: {e}")))?;
            Some(spec)
        }
        None => None,
    };
    let mut parts = Vec::with_capacity(stages.len());
    for (s, stage) in stages.into_iter().enumerate() {
        let device = device_names[plan[s].device].clone();
        let stored = store_weights(&stage, req.dtype, &derive);
        let standby = held.as_ref().map(|h| {
            let h = held_graph(graph, seg, h[s][0]..h[s][1]);
            let stored = store_weights(&h.graph, req.dtype, &derive);
            // Casts of stored weights come first in the stored graph; their unit is moot.
            let extra = stored.graph.nodes.len() - h.graph.nodes.len();
            let node_units = std::iter::repeat_n(0, extra).chain(h.node_units.iter().copied()).collect();
            StandbyPart { graph: stored, map: Standby { first: h.units.start, units: h.names, node_units } }
        });
        let local = planned.map.device_local.get(&device).cloned().unwrap_or_default();
        let (inputs, outputs) = ports(&stored.graph, &planned.map, &local);
        let report = &planned.report.stages[s];
        // The dtype float weights are stored as (scales keep theirs).
        let uses = stored.graph.uses();
        let weights_dtype = stored.graph.values.iter().enumerate().find_map(|(i, v)| match &v.def {
            shardc_ir::ValueDef::Weight(w)
                if w.dtype.is_float()
                    && !crate::quantize::is_quantization_parameter(
                        &stored.graph,
                        &uses,
                        shardc_ir::ValueId(i as u32),
                    ) =>
            {
                Some(w.dtype)
            }
            _ => None,
        });
        parts.push(StagePart {
            weights_dtype,
            units: [report.first_unit.clone(), report.last_unit.clone()],
            device,
            inputs,
            outputs,
            device_local: local,
            graph: stored,
            standby,
        });
    }
    Ok(Partition { report: planned.report, map: planned.map, balance, stages: parts })
}

/// A stage's inputs and outputs as ports: dtype, shape and the devices at the other
/// end; tensors that stay on the device (`local`) are no ports.
fn ports(stage: &Graph, map: &TransmissionMap, local: &[String]) -> (Vec<Port>, Vec<Port>) {
    let port = |v: ValueId, peers: Vec<Endpoint>| {
        let value = stage.value(v);
        Port {
            name: value.name.clone(),
            dtype: value.ty.as_ref().map(|t| t.dtype),
            shape: value.ty.as_ref().map(|t| t.shape.clone()),
            peers,
        }
    };
    let ports = |values: &[ValueId], peers: &dyn Fn(&str) -> Vec<Endpoint>| {
        values
            .iter()
            .filter(|&&v| !local.contains(&stage.value(v).name))
            .map(|&v| port(v, peers(&stage.value(v).name)))
            .collect()
    };
    let senders = |name: &str| map.transfers.iter().filter(|t| t.tensor == name).map(|t| t.from.clone()).collect();
    let receivers = |name: &str| map.transfers.iter().filter(|t| t.tensor == name).flat_map(|t| t.to.clone()).collect();
    (ports(&stage.inputs, &senders), ports(&stage.outputs, &receivers))
}
