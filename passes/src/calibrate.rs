//! Calibration from a measured run (`--calibrate RUN.json`): what `shardc-run generate
//! --json` (or `local --json`) reported — each stage's device, units and compute time
//! per step — turned into a factor per device by which every unit's predicted time on
//! that device is multiplied, so that a second plan predicts what the run measured.
//!
//! The factors are measured against predictions for the run's own work (its prompt,
//! and a decode step at the middle of its context), one for prefill and one for a
//! decode step: prefill is mostly compute, a decode step mostly memory, and a device
//! can be off by different amounts in each. A device the run did not use keeps its
//! profiled figures (the report lists it).

use shardc_format::plan::{CalibrationReport, DeviceCalibration};
use shardc_format::problem::Problem;

use crate::devices::Profile;
use crate::segment::Segmentation;

/// Largest run report read (bytes): a report is a few hundred bytes per step.
pub const MAX_RUN_BYTES: usize = 64 << 20;

/// Why a run cannot calibrate a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--calibrate: {0}")]
pub struct CalibrationError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, CalibrationError> {
    Err(CalibrationError(message.into()))
}

/// What a run measured, per stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub prompt_tokens: u64,
    pub new_tokens: u64,
    pub stages: Vec<StageRun>,
}

/// One stage of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct StageRun {
    pub device: String,
    pub units: [String; 2],
    /// Median over requests of the prompt's step, milliseconds.
    pub prefill_ms: f64,
    /// Median over the decode steps of every request (none if the run decoded nothing).
    pub decode_ms: Option<f64>,
}

/// The parts of a run report read here (the rest is ignored).
#[derive(serde::Deserialize)]
struct Report {
    prompt_tokens: u64,
    new_tokens: u64,
    stages: Vec<StageTiming>,
    balance: Option<Balance>,
}

#[derive(serde::Deserialize)]
struct StageTiming {
    device: String,
    units: [String; 2],
    per_step: Vec<(u64, u64, f64, f64, f64)>,
}

#[derive(serde::Deserialize)]
struct Balance {
    moves: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

impl Run {
    /// Read a run report (`shardc-run … --json`).
    pub fn parse(text: &str) -> Result<Run, CalibrationError> {
        if text.len() > MAX_RUN_BYTES {
            return err(format!("the run report is {} bytes, more than {MAX_RUN_BYTES}", text.len()));
        }
        let report: Report = serde_json::from_str(text).map_err(|e| {
            CalibrationError(format!("not a run report of `shardc-run generate --json` or `local --json`: {e}"))
        })?;
        if report.balance.as_ref().is_some_and(|b| b.moves > 0) {
            return err("load balancing moved stage boundaries during the run, so its stages ran other units than \
                 they started with: use a run with --no-balance");
        }
        if report.stages.is_empty() {
            return err("the run report has no stages");
        }
        let mut stages = Vec::with_capacity(report.stages.len());
        for s in report.stages {
            if let Some(bad) = s.per_step.iter().find(|p| !(p.2.is_finite() && p.2 >= 0.0)) {
                return err(format!("{}: a step's compute time is {}", s.device, bad.2));
            }
            let prefill = median(s.per_step.iter().filter(|p| p.1 == 0).map(|p| p.2).collect());
            let Some(prefill_ms) = prefill else {
                return err(format!("{}: the run has no prompt step to measure", s.device));
            };
            let decode_ms = median(s.per_step.iter().filter(|p| p.1 > 0).map(|p| p.2).collect());
            stages.push(StageRun { device: s.device, units: s.units, prefill_ms, decode_ms });
        }
        Ok(Run { prompt_tokens: report.prompt_tokens, new_tokens: report.new_tokens, stages })
    }

    /// The workload the run's steps did: its prompt, and a context at the middle of its
    /// decode steps (the step a median stands for).
    pub fn workload(&self, batch: u64) -> crate::cost::Workload {
        crate::cost::Workload {
            batch,
            prompt_len: self.prompt_tokens.max(1),
            max_context: self.prompt_tokens + self.new_tokens.div_ceil(2) + 1,
        }
    }
}

/// The factors: `predicted` is the problem built for [`Run::workload`] (same model,
/// profile and segmentation as the plan's).
pub fn factors(
    run: &Run,
    predicted: &Problem,
    seg: &Segmentation,
    profile: &Profile,
) -> Result<CalibrationReport, CalibrationError> {
    let unit = |name: &str| {
        seg.units.iter().position(|u| u.name == name).ok_or_else(|| {
            CalibrationError(format!("the run's unit `{name}` is not a unit of this model (a run of another model?)"))
        })
    };
    let mut devices = Vec::new();
    for s in &run.stages {
        let d = profile
            .index(&s.device)
            .ok_or_else(|| CalibrationError(format!("the run's device `{}` is not in the device profile", s.device)))?;
        if devices.iter().any(|c: &DeviceCalibration| c.device == s.device) {
            return err(format!("the run lists device `{}` twice", s.device));
        }
        let (first, last) = (unit(&s.units[0])?, unit(&s.units[1])?);
        if first > last {
            return err(format!("{}: units `{}` .. `{}` run backwards", s.device, s.units[0], s.units[1]));
        }
        let predicted_prefill_ms = predicted.prefill[d][first..=last].iter().sum::<f64>() * 1e3;
        let predicted_decode_ms = predicted.decode[d][first..=last].iter().sum::<f64>() * 1e3;
        if !(predicted_prefill_ms > 0.0 && predicted_decode_ms > 0.0) {
            return err(format!("{}: the cost model predicts no time for its units", s.device));
        }
        let prefill_factor = s.prefill_ms / predicted_prefill_ms;
        let decode_factor = s.decode_ms.map_or(prefill_factor, |m| m / predicted_decode_ms);
        if !(prefill_factor > 0.0 && decode_factor > 0.0) {
            return err(format!("{}: measured no time ({} ms prefill)", s.device, s.prefill_ms));
        }
        devices.push(DeviceCalibration {
            device: s.device.clone(),
            units: s.units.clone(),
            measured_prefill_ms: s.prefill_ms,
            predicted_prefill_ms,
            prefill_factor,
            measured_decode_ms: s.decode_ms,
            predicted_decode_ms,
            decode_factor,
        });
    }
    let uncalibrated =
        profile.devices.iter().map(|d| d.name.clone()).filter(|n| !devices.iter().any(|c| &c.device == n)).collect();
    Ok(CalibrationReport { prompt_tokens: run.prompt_tokens, new_tokens: run.new_tokens, devices, uncalibrated })
}

/// Multiply every unit's times on each calibrated device by its factors.
pub fn apply(problem: &mut Problem, report: &CalibrationReport, profile: &Profile) {
    for c in &report.devices {
        if let Some(d) = profile.index(&c.device) {
            problem.prefill[d].iter_mut().for_each(|t| *t *= c.prefill_factor);
            problem.decode[d].iter_mut().for_each(|t| *t *= c.decode_factor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Unit, UnitKind};
    use shardc_format::problem::{Link, Objective};

    /// A stage of a made-up run: device, units, (step, compute ms) per step.
    type Stage<'a> = (&'a str, [&'a str; 2], &'a [(u64, f64)]);

    fn run_json(moves: usize, steps: &[Stage]) -> String {
        let stages: Vec<serde_json::Value> = steps
            .iter()
            .map(|(device, units, per)| {
                let per_step: Vec<_> =
                    per.iter().map(|&(step, ms)| serde_json::json!([0, step, ms, 0.1, 0.2])).collect();
                serde_json::json!({"device": device, "units": units, "steps": per.len(), "compute_ms": 1.0,
                    "waiting_ms": 0.0, "send_ms": 0.0, "per_step": per_step})
            })
            .collect();
        serde_json::json!({"prompt_tokens": 10, "new_tokens": 4, "tokens": [[1, 2, 3, 4]], "stages": stages,
            "balance": {"moves": moves}, "wall_ms": 9.0})
        .to_string()
    }

    fn seg() -> Segmentation {
        let unit = |name: &str, kind| Unit { name: name.into(), kind, layer: None, nodes: vec![] };
        Segmentation {
            units: vec![unit("embed", UnitKind::Embed), unit("layer 0", UnitKind::Layer), unit("head", UnitKind::Head)],
            layers: 1,
            unit_of: vec![],
            crossings: vec![],
        }
    }

    fn profile() -> Profile {
        let text = "[[device]]\nname = \"a\"\nmemory = \"1 GiB\"\nflops = \"1 GFLOP/s\"\nbandwidth = \"1 GB/s\"\n\n\
                    [[device]]\nname = \"b\"\nmemory = \"1 GiB\"\nflops = \"1 GFLOP/s\"\nbandwidth = \"1 GB/s\"\n\n\
                    [default_link]\nbandwidth = \"1 Gbit/s\"\nlatency = \"1 us\"\n";
        crate::devices::parse(text, std::path::Path::new("test.toml")).unwrap()
    }

    fn problem() -> Problem {
        let link = Link { bandwidth: 1e9, latency: 0.0 };
        Problem {
            prefill: vec![vec![0.001, 0.002, 0.003], vec![0.002, 0.004, 0.006]],
            decode: vec![vec![0.0001, 0.0002, 0.0003], vec![0.0002, 0.0004, 0.0006]],
            private_bytes: vec![1.0; 3],
            activation_bytes: vec![1.0; 3],
            shared: vec![],
            budget: vec![1e9; 2],
            cut_prefill: vec![1.0; 2],
            cut_decode: vec![1.0; 2],
            links: vec![vec![link; 2]; 2],
            decode_tokens: 4.0,
            objective: Objective::Latency,
        }
    }

    #[test]
    fn medians_of_the_run_become_factors_on_its_devices_alone() {
        // Device a ran embed..layer 0: prefill 6 ms measured against 3 predicted, decode
        // steps 0.9, 0.6 and 0.3 ms (median 0.6) against 0.3 predicted.
        let text = run_json(0, &[("a", ["embed", "layer 0"], &[(0, 6.0), (1, 0.9), (2, 0.6), (3, 0.3)])]);
        let run = Run::parse(&text).unwrap();
        assert_eq!((run.stages[0].prefill_ms, run.stages[0].decode_ms), (6.0, Some(0.6)));
        assert_eq!(run.workload(1), crate::cost::Workload { batch: 1, prompt_len: 10, max_context: 13 });
        let report = factors(&run, &problem(), &seg(), &profile()).unwrap();
        let c = &report.devices[0];
        assert!((c.prefill_factor - 2.0).abs() < 1e-12 && (c.decode_factor - 2.0).abs() < 1e-12, "{c:?}");
        assert_eq!(report.uncalibrated, ["b"]);
        let mut p = problem();
        apply(&mut p, &report, &profile());
        assert_eq!(p.prefill[0], [0.002, 0.004, 0.006]);
        assert_eq!(p.decode[1], problem().decode[1], "b keeps its figures");
    }

    #[test]
    fn runs_that_cannot_calibrate_are_refused_naming_why() {
        let good: &[(u64, f64)] = &[(0, 6.0), (1, 0.5)];
        let cases: Vec<(String, &str)> = vec![
            (run_json(1, &[("a", ["embed", "head"], good)]), "--no-balance"),
            (run_json(0, &[]), "no stages"),
            (run_json(0, &[("a", ["embed", "head"], &[(1, 0.5)])]), "no prompt step"),
            ("{\"stages\": []}".into(), "not a run report"),
            ("[1, 2".into(), "not a run report"),
            (" ".repeat(MAX_RUN_BYTES + 1), "more than"),
        ];
        for (text, why) in cases {
            let e = Run::parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let nan = run_json(0, &[("a", ["embed", "head"], good)]).replace("6.0", "-1.0");
        assert!(Run::parse(&nan).unwrap_err().to_string().contains("compute time is -1"));
        for (stages, why) in [
            (vec![("z", ["embed", "head"])], "device `z` is not in the device profile"),
            (vec![("a", ["embed", "layer 9"])], "unit `layer 9` is not a unit of this model"),
            (vec![("a", ["head", "embed"])], "run backwards"),
            (vec![("a", ["embed", "head"]), ("a", ["embed", "head"])], "lists device `a` twice"),
        ] {
            let steps: Vec<Stage> = stages.iter().map(|&(d, u)| (d, u, good)).collect();
            let run = Run::parse(&run_json(0, &steps)).unwrap();
            let e = factors(&run, &problem(), &seg(), &profile()).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
