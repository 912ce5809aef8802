//! `shardc plan` and `shardc compare`: run the cost, segment and partition passes for
//! a device profile and report the plan (text, `plan.json`) and its transmission map.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;
use shardc_ir::{Graph, ValueDef};
use shardc_passes::cost::{CostError, Workload};
use shardc_passes::devices::Profile;
use shardc_passes::plan::model::{build, Model, PlanInputs};
use shardc_passes::plan::{solve, Objective, Outcome, SolveOptions, SolverStatus, Strategy};
use shardc_passes::quantity::bytes_text;
use shardc_passes::segment::{segment, SegmentError, Segmentation};
use shardc_passes::transmission::{self, TransmissionMap};

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Cost(#[from] CostError),
    #[error("{0}")]
    DoesNotFit(String),
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub workload: Workload,
    pub objective: Objective,
    pub margin: f64,
    pub time_limit: Duration,
    pub compute_dtype: Option<String>,
    /// Units beyond each stage boundary whose weights a stage also holds, so runtime
    /// load balancing can move the boundary (memory permitting).
    pub standby: usize,
}

/// One stage of a reported plan.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub device: String,
    /// First and last unit (`embed`, `layer 3 attention`, …).
    pub first_unit: String,
    pub last_unit: String,
    /// Transformer layers with at least one unit here, `[first, last]`.
    pub layers: Option<[usize; 2]>,
    pub memory_bytes: f64,
    pub budget_bytes: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// To the next stage.
    pub link_prefill_ms: f64,
    pub link_decode_ms: f64,
    /// With standby units: every unit whose weights the stage holds, and the memory
    /// that takes (weights and KV cache of all of them, the largest activation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldReport>,
}

/// The units a stage holds weights for.
#[derive(Clone, Debug, Serialize)]
pub struct HeldReport {
    pub first_unit: String,
    pub last_unit: String,
    /// `[start, end)` unit indices.
    pub units: [usize; 2],
    pub memory_bytes: f64,
}

/// Predicted figures of a plan.
#[derive(Clone, Debug, Serialize)]
pub struct Predictions {
    pub prefill_ms: f64,
    pub decode_ms_per_token: f64,
    /// Pipelined decode with requests in flight: 1 / slowest stage or link.
    pub pipelined_tokens_per_s: f64,
    /// The objective's value, seconds.
    pub objective_s: f64,
}

/// `plan.json`.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub model: String,
    /// A language model generating token by token (else one forward pass per request,
    /// an encoder: "decode" figures are that pass).
    pub generative: bool,
    pub devices: String,
    pub strategy: Strategy,
    pub objective: Objective,
    pub workload: Workload,
    pub margin: f64,
    pub units: usize,
    pub stages: Vec<StageReport>,
    pub predictions: Predictions,
    pub solver: SolverStatus,
}

/// The planner's view of a model: segmentation and problem.
pub struct Prepared {
    /// A language model (token by token), else one forward pass per request.
    pub generative: bool,
    pub seg: Segmentation,
    pub model: Model,
    pub opts: SolveOptions,
}

/// Size every floating-point weight as `dtype` (planning only: the graph keeps its
/// computations, the weights lose their file locations).
pub fn retype_weights(graph: &mut Graph, dtype: shardc_ir::DType) {
    for v in &mut graph.values {
        if let ValueDef::Weight(w) = &mut v.def {
            if w.dtype.is_ieee_float() {
                w.dtype = dtype;
                w.location = None;
                v.ty = Some(shardc_ir::TensorType::known(dtype, &w.shape));
            }
        }
    }
}

/// Segment and build the problem.
pub fn prepare(graph: &Graph, profile: &Profile, req: &Request) -> Result<Prepared, PlanError> {
    let seg = segment(graph)?;
    let inputs = PlanInputs {
        workload: req.workload,
        objective: req.objective,
        margin: req.margin,
        compute_dtype: req.compute_dtype.clone().unwrap_or_else(|| {
            shardc_passes::cost::dominant_weight_dtype(graph).map_or("f32".into(), |d| d.to_string())
        }),
        kv_bytes: None,
    };
    let model = build(graph, &seg, profile, &inputs)?;
    let opts = SolveOptions { time_limit: req.time_limit, groups: seg.groups(), force_milp: false };
    let generative = shardc_passes::roles::lm_roles(graph).is_some();
    Ok(Prepared { generative, seg, model, opts })
}

fn does_not_fit(prep: &Prepared, profile: &Profile, margin: f64) -> PlanError {
    let m = &prep.model;
    let weights: f64 =
        m.memory.iter().map(|u| u.weights).sum::<f64>() + m.problem.shared.iter().map(|w| w.bytes).sum::<f64>();
    let kv: f64 = m.memory.iter().map(|u| u.kv_cache).sum();
    let act = m.memory.iter().map(|u| u.activations).fold(0.0, f64::max);
    let offered: f64 = m.problem.budget.iter().sum();
    let mut msg = format!(
        "the devices cannot hold the model: it needs {} (weights {}, KV cache {}, peak activations {}) and the {} devices offer {} after a {:.0}% margin",
        bytes_text(m.total_need),
        bytes_text(weights),
        bytes_text(kv),
        bytes_text(act),
        profile.devices.len(),
        bytes_text(offered),
        margin * 100.0
    );
    if offered >= m.total_need {
        let largest_unit = (0..m.problem.units()).map(|u| m.problem.memory(u, u + 1)).fold(0.0, f64::max);
        let largest_device = m.problem.budget.iter().copied().fold(0.0, f64::max);
        let _ = write!(msg, "; in total it would fit, but no split into contiguous stages fits the budgets (the largest unit needs {}, the largest device offers {}; weights read by several units, like tied embeddings, are stored on each stage that reads them)", bytes_text(largest_unit), bytes_text(largest_device));
    }
    PlanError::DoesNotFit(msg)
}

/// Report an outcome.
pub fn report(
    model_name: &str,
    devices_name: &str,
    prep: &Prepared,
    profile: &Profile,
    req: &Request,
    outcome: &Outcome,
) -> Option<PlanReport> {
    let plan = outcome.plan.as_ref()?;
    let figures = outcome.figures.as_ref()?;
    let units = &prep.seg.units;
    let problem = &prep.model.problem;
    let held = (req.standby > 0).then(|| problem.standby(plan, req.standby));
    let stages = plan
        .iter()
        .zip(&figures.stages)
        .enumerate()
        .map(|(i, (s, f))| {
            let layers: Vec<usize> = units[s.start..s.end].iter().filter_map(|u| u.layer).collect();
            StageReport {
                device: profile.devices[s.device].name.clone(),
                first_unit: units[s.start].name.clone(),
                last_unit: units[s.end - 1].name.clone(),
                layers: layers.first().zip(layers.last()).map(|(a, b)| [*a, *b]),
                memory_bytes: f.memory,
                budget_bytes: f.budget,
                prefill_ms: f.prefill_s * 1e3,
                decode_ms: f.decode_s * 1e3,
                link_prefill_ms: f.link_prefill_s * 1e3,
                link_decode_ms: f.link_decode_s * 1e3,
                held: held.as_ref().map(|h| HeldReport {
                    first_unit: units[h[i].start].name.clone(),
                    last_unit: units[h[i].end - 1].name.clone(),
                    units: [h[i].start, h[i].end],
                    memory_bytes: problem.memory(h[i].start, h[i].end),
                }),
            }
        })
        .collect();
    Some(PlanReport {
        model: model_name.to_string(),
        generative: prep.generative,
        devices: devices_name.to_string(),
        strategy: outcome.strategy,
        objective: req.objective,
        workload: req.workload,
        margin: req.margin,
        units: units.len(),
        stages,
        predictions: Predictions {
            prefill_ms: figures.prefill_s * 1e3,
            decode_ms_per_token: figures.decode_s * 1e3,
            pipelined_tokens_per_s: if figures.bottleneck_s > 0.0 { 1.0 / figures.bottleneck_s } else { f64::INFINITY },
            objective_s: figures.objective,
        },
        solver: outcome.status.clone(),
    })
}

/// A feasible plan with everything reports and the compiler need.
pub struct Planned {
    pub prep: Prepared,
    pub outcome: Outcome,
    pub report: PlanReport,
    pub map: TransmissionMap,
}

/// Plan with one strategy; an error, with the numbers, when nothing fits.
pub fn plan_with(
    graph: &Graph,
    profile: &Profile,
    req: &Request,
    strategy: Strategy,
    names: (&str, &str),
) -> Result<Planned, PlanError> {
    let prep = prepare(graph, profile, req)?;
    let outcome = solve(&prep.model.problem, strategy, &prep.opts);
    let feasible = outcome.figures.as_ref().is_some_and(|f| f.feasible);
    if !feasible {
        if strategy == Strategy::Ilp || outcome.plan.is_none() {
            return Err(does_not_fit(&prep, profile, req.margin));
        }
        return Err(PlanError::DoesNotFit(format!(
            "the {} plan exceeds a device's memory ({}); try --strategy ilp",
            strategy.name(),
            outcome.status.note.clone().unwrap_or_default()
        )));
    }
    let report = report(names.0, names.1, &prep, profile, req, &outcome)
        .ok_or_else(|| does_not_fit(&prep, profile, req.margin))?;
    let device_names: Vec<String> = profile.devices.iter().map(|d| d.name.clone()).collect();
    let map = transmission::build(
        graph,
        &prep.seg,
        outcome.plan.as_deref().unwrap_or_default(),
        &device_names,
        &req.workload,
    )?;
    Ok(Planned { prep, outcome, report, map })
}

/// Plan with one strategy: the report and the transmission map.
pub fn plan(
    graph: &Graph,
    profile: &Profile,
    req: &Request,
    strategy: Strategy,
    names: (&str, &str),
) -> Result<(PlanReport, TransmissionMap), PlanError> {
    let p = plan_with(graph, profile, req, strategy, names)?;
    Ok((p.report, p.map))
}

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1e3)
    } else {
        format!("{x:.2} ms")
    }
}

impl PlanReport {
    /// The text `shardc plan` prints.
    pub fn to_text(&self, timings: bool) -> String {
        let mut out = String::new();
        let s = &self.solver;
        let status = if s.optimal {
            "proven optimal".to_string()
        } else if let Some(g) = s.gap {
            format!("gap {:.2}%", g * 100.0)
        } else {
            "heuristic".to_string()
        };
        let time = if timings { format!(", {:.1} ms", s.time_ms) } else { String::new() };
        let _ = writeln!(
            out,
            "plan        {} ({}, {status}{time}), objective {:?}",
            self.strategy.name(),
            s.engine,
            self.objective
        );
        let w = &self.workload;
        let _ = writeln!(
            out,
            "workload    batch {}, prompt {} tokens, context {} tokens, {} units",
            w.batch, w.prompt_len, w.max_context, self.units
        );
        let _ = writeln!(
            out,
            "{:<5} {:<14} {:<36} {:<7} {:<24} {:>11} {:>12} {:>22}",
            "stage",
            "device",
            "units",
            "layers",
            "memory / budget",
            "prefill",
            "decode/token",
            "link to next (pre/dec)"
        );
        for (i, st) in self.stages.iter().enumerate() {
            let units = if st.first_unit == st.last_unit {
                st.first_unit.clone()
            } else {
                format!("{} .. {}", st.first_unit, st.last_unit)
            };
            let layers =
                st.layers.map_or("-".to_string(), |[a, b]| if a == b { a.to_string() } else { format!("{a}-{b}") });
            let link = if i + 1 < self.stages.len() {
                format!("{} / {}", ms(st.link_prefill_ms), ms(st.link_decode_ms))
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "{:<5} {:<14} {:<36} {:<7} {:<24} {:>11} {:>12} {:>22}",
                i,
                st.device,
                units,
                layers,
                format!("{} / {}", bytes_text(st.memory_bytes), bytes_text(st.budget_bytes)),
                ms(st.prefill_ms),
                ms(st.decode_ms),
                link
            );
        }
        for (i, st) in self.stages.iter().enumerate() {
            if let Some(h) = &st.held {
                let _ = writeln!(
                    out,
                    "standby     stage {i} holds {} .. {} ({} / {})",
                    h.first_unit,
                    h.last_unit,
                    bytes_text(h.memory_bytes),
                    bytes_text(st.budget_bytes)
                );
            }
        }
        let p = &self.predictions;
        if self.generative {
            let _ = writeln!(out, "prefill     {}", ms(p.prefill_ms));
            let _ = writeln!(
                out,
                "decode      {}/token ({:.2} tokens/s for one request)",
                ms(p.decode_ms_per_token),
                1e3 / p.decode_ms_per_token
            );
            let _ = writeln!(out, "pipelined   {:.2} tokens/s with requests in flight", p.pipelined_tokens_per_s);
        } else {
            let _ = writeln!(out, "forward     {} for one request (one pass, no decode steps)", ms(p.prefill_ms));
            let _ = writeln!(out, "pipelined   {:.2} requests/s with requests in flight", p.pipelined_tokens_per_s);
        }
        out
    }
}

/// One row of `shardc compare`.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    pub strategy: Strategy,
    pub engine: String,
    pub fits: bool,
    pub optimal: bool,
    pub stages: usize,
    pub prefill_ms: Option<f64>,
    pub decode_ms_per_token: Option<f64>,
    pub pipelined_tokens_per_s: Option<f64>,
    pub objective_s: Option<f64>,
    /// Objective relative to the best strategy's (1.0 = best).
    pub ratio_to_best: Option<f64>,
    pub note: Option<String>,
}

/// Every strategy on one problem.
pub fn compare(graph: &Graph, profile: &Profile, req: &Request) -> Result<Vec<CompareRow>, PlanError> {
    let prep = prepare(graph, profile, req)?;
    let mut rows: Vec<CompareRow> = Strategy::ALL
        .iter()
        .map(|&s| {
            let o = solve(&prep.model.problem, s, &prep.opts);
            let f = o.figures.as_ref().filter(|f| f.feasible);
            CompareRow {
                strategy: s,
                engine: o.status.engine.clone(),
                fits: f.is_some(),
                optimal: o.status.optimal,
                stages: o.plan.as_ref().map_or(0, Vec::len),
                prefill_ms: f.map(|f| f.prefill_s * 1e3),
                decode_ms_per_token: f.map(|f| f.decode_s * 1e3),
                pipelined_tokens_per_s: f
                    .map(|f| if f.bottleneck_s > 0.0 { 1.0 / f.bottleneck_s } else { f64::INFINITY }),
                objective_s: f.map(|f| f.objective),
                ratio_to_best: None,
                note: o.status.note.clone(),
            }
        })
        .collect();
    let best = rows.iter().filter_map(|r| r.objective_s).fold(f64::INFINITY, f64::min);
    for r in &mut rows {
        r.ratio_to_best = r.objective_s.map(|o| o / best);
    }
    if rows.iter().all(|r| !r.fits) {
        return Err(does_not_fit(&prep, profile, req.margin));
    }
    Ok(rows)
}

/// The text `shardc compare` prints.
pub fn compare_text(rows: &[CompareRow], objective: Objective) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "objective {objective:?}");
    let _ = writeln!(
        out,
        "{:<13} {:<13} {:>6} {:>12} {:>14} {:>16} {:>10}",
        "strategy", "engine", "stages", "prefill", "decode/token", "pipelined tok/s", "vs best"
    );
    for r in rows {
        match (r.prefill_ms, r.decode_ms_per_token, r.pipelined_tokens_per_s, r.ratio_to_best) {
            (Some(p), Some(d), Some(t), Some(x)) => {
                let _ = writeln!(
                    out,
                    "{:<13} {:<13} {:>6} {:>12} {:>14} {:>16.2} {:>9.3}x",
                    r.strategy.name(),
                    r.engine,
                    r.stages,
                    ms(p),
                    ms(d),
                    t,
                    x
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{:<13} {:<13} {:>6} {}",
                    r.strategy.name(),
                    r.engine,
                    r.stages,
                    r.note.clone().unwrap_or_else(|| "does not fit".into())
                );
            }
        }
    }
    out
}
