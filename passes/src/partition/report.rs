//! The planner's view of a model ([`prepare`]), the report of a plan (`plan.json`)
//! and every strategy side by side ([`compare`]).

use std::fmt::Write;

use serde::Serialize;
use shardc_format::plan::{CalibrationReport, HeldReport, PlanReport, Predictions, StageReport};
use shardc_ir::Graph;

use super::{Names, PartitionError, Request};
use crate::devices::Profile;
use crate::plan::model::{build, Model, PlanInputs};
use crate::plan::{solve, Outcome, SolveOptions, Strategy};
use crate::quantity::bytes_text;
use crate::segment::{segment, Segmentation};

/// The planner's view of a model: segmentation and problem.
pub struct Prepared {
    /// A language model (token by token), else one forward pass per request.
    pub generative: bool,
    pub seg: Segmentation,
    pub model: Model,
    pub opts: SolveOptions,
    /// What `--calibrate` measured and multiplied the device times by.
    pub calibration: Option<CalibrationReport>,
}

/// Segment and build the problem.
pub fn prepare(graph: &Graph, profile: &Profile, req: &Request) -> Result<Prepared, PartitionError> {
    let seg = segment(graph)?;
    let inputs = PlanInputs {
        workload: req.workload,
        objective: req.objective,
        margin: req.margin,
        compute_dtype: req
            .compute_dtype
            .clone()
            .unwrap_or_else(|| crate::cost::dominant_weight_dtype(graph).map_or("f32".into(), |d| d.to_string())),
        kv_bytes: None,
    };
    profile.check_compute_dtype(&inputs.compute_dtype).map_err(PartitionError::Unsupported)?;
    crate::kernels::check(profile, graph).map_err(PartitionError::Unsupported)?;
    let mut model = build(graph, &seg, profile, &inputs)?;
    // Device times corrected by what a run measured, against what this model predicts
    // for that run's own work.
    let calibration = match &req.calibration {
        Some(run) => {
            let at_run = PlanInputs { workload: run.workload(req.workload.batch), ..inputs.clone() };
            let predicted = build(graph, &seg, profile, &at_run)?;
            let report = crate::calibrate::factors(run, &predicted.problem, &seg, profile)?;
            crate::calibrate::apply(&mut model.problem, &report, profile);
            Some(report)
        }
        None => None,
    };
    let opts = SolveOptions {
        time_limit: req.time_limit,
        node_limit: req.node_limit,
        search_nodes: req.search_nodes,
        groups: seg.groups(),
        engine: None,
    };
    let generative = crate::roles::lm_roles(graph).is_some();
    Ok(Prepared { generative, seg, model, opts, calibration })
}

pub(super) fn does_not_fit(prep: &Prepared, profile: &Profile, margin: f64) -> PartitionError {
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
    PartitionError::DoesNotFit(msg)
}

/// Report an outcome.
pub(super) fn report(
    names: Names,
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
        model: names.model.to_string(),
        generative: prep.generative,
        devices: names.devices.to_string(),
        inputs: names.inputs.to_vec(),
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
        quantization: None,
        calibration: prep.calibration.clone(),
    })
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

/// Every strategy on one problem (weights sized as `req.dtype` says).
pub fn compare(graph: &Graph, profile: &Profile, req: &Request) -> Result<Vec<CompareRow>, PartitionError> {
    let (sized, _) = super::sized(graph, req.dtype, req.quantize.as_ref());
    let graph = &*sized;
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

/// One row of `shardc compare --quantize`: the exact (`ilp`) plan with the weights
/// stored one way.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WeightsRow {
    /// `bf16`, `f16`, `f32` (as stored without quantizing), `int8` or `int4`.
    pub weights: String,
    /// The weights' bytes, and all the model needs (weights once, KV cache, largest
    /// activation).
    pub weight_bytes: f64,
    pub need_bytes: f64,
    pub fits: bool,
    pub stages: usize,
    pub prefill_ms: Option<f64>,
    pub decode_ms_per_token: Option<f64>,
    pub pipelined_tokens_per_s: Option<f64>,
}

/// The exact plan with the weights as stored (at `req.dtype`), int8 and int4 side by
/// side; the scheme `req.quantize` names keeps its group size and embedding choice,
/// the other takes the defaults.
pub fn compare_weights(graph: &Graph, profile: &Profile, req: &Request) -> Result<Vec<WeightsRow>, PartitionError> {
    use crate::quantize::{Quantization, Scheme};
    let embeddings = req.quantize.is_some_and(|q| q.embeddings);
    let variants = [None, Some(Scheme::Int8), Some(Scheme::Int4)].map(|scheme| {
        scheme.map(|s| match req.quantize {
            Some(q) if q.scheme == s => Ok(q),
            _ => Quantization::new(s, None, embeddings),
        })
    });
    let mut rows = Vec::new();
    for variant in variants {
        let quantize = variant.transpose().map_err(PartitionError::Unsupported)?;
        let (sized, report) = super::sized(graph, req.dtype, quantize.as_ref());
        // Which weights quantize does not depend on the scheme: a quantization that
        // finds none is refused, by the name of the one asked for.
        if let (Some(asked), Some(r)) = (req.quantize.as_ref(), &report) {
            if r.weights == 0 {
                return Err(super::nothing_to_quantize(graph, asked));
            }
        }
        let g = &*sized;
        let prep = prepare(g, profile, req)?;
        let m = &prep.model;
        let weight_bytes =
            m.memory.iter().map(|u| u.weights).sum::<f64>() + m.problem.shared.iter().map(|w| w.bytes).sum::<f64>();
        let o = solve(&m.problem, Strategy::Ilp, &prep.opts);
        let f = o.figures.as_ref().filter(|f| f.feasible);
        let name = match quantize {
            Some(q) => q.scheme.name().to_string(),
            None => crate::cost::dominant_weight_dtype(g).map_or("f32".into(), |d| d.to_string()),
        };
        rows.push(WeightsRow {
            weights: name,
            weight_bytes,
            need_bytes: m.total_need,
            fits: f.is_some(),
            stages: if f.is_some() { o.plan.as_ref().map_or(0, Vec::len) } else { 0 },
            prefill_ms: f.map(|f| f.prefill_s * 1e3),
            decode_ms_per_token: f.map(|f| f.decode_s * 1e3),
            pipelined_tokens_per_s: f.map(|f| if f.bottleneck_s > 0.0 { 1.0 / f.bottleneck_s } else { f64::INFINITY }),
        });
    }
    Ok(rows)
}
