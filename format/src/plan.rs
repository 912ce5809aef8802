//! `plan.json`: the plan a compile chose, with what it predicts, and the vocabulary
//! of planning requests (strategies, workloads, solver status) it is written in.

use serde::{Deserialize, Serialize};

use crate::problem::Objective;

/// A partitioning strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Uniform,
    Proportional,
    Dp,
    Ilp,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [Strategy::Uniform, Strategy::Proportional, Strategy::Dp, Strategy::Ilp];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Uniform => "uniform",
            Strategy::Proportional => "proportional",
            Strategy::Dp => "dp",
            Strategy::Ilp => "ilp",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown strategy `{s}` (uniform, proportional, dp, ilp)"))
    }
}

/// How a solve went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SolverStatus {
    /// What computed the plan (`uniform`, `proportional`, `order-dp`, `class-dp`, `milp`).
    pub engine: String,
    /// The plan is proven optimal for what the strategy optimises.
    pub optimal: bool,
    /// Relative gap to the best bound, when stopped early.
    pub gap: Option<f64>,
    #[serde(skip)]
    pub time_ms: f64,
    /// Why there is no plan, when there is none.
    pub note: Option<String>,
}

/// The work one request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub batch: u64,
    pub prompt_len: u64,
    pub max_context: u64,
}

/// One stage of a reported plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldReport>,
}

/// The units a stage holds weights for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldReport {
    pub first_unit: String,
    pub last_unit: String,
    /// `[start, end)` unit indices.
    pub units: [usize; 2],
    pub memory_bytes: f64,
}

/// Predicted figures of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predictions {
    pub prefill_ms: f64,
    pub decode_ms_per_token: f64,
    /// Pipelined decode with requests in flight: 1 / slowest stage or link (infinite,
    /// written `null`, when nothing takes time).
    #[serde(with = "crate::problem::infinite_as_null")]
    pub pipelined_tokens_per_s: f64,
    /// The objective's value, seconds.
    pub objective_s: f64,
}

/// What an input's digest covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Covers {
    /// The whole file.
    File,
    /// A safetensors file's header (every tensor's name, dtype, shape and byte range):
    /// all a plan depends on. The weights' bytes are in the packages, whose manifests
    /// hash them.
    Header,
    /// Only the size: raw ONNX external data, whose layout the ONNX file (hashed)
    /// describes.
    Size,
}

/// One file a plan was computed from, recorded by its content, never by its path, so
/// the same inputs give the same `plan.json` wherever they lie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// `config`, `index`, `weights`, `onnx`, `external data` or `devices`.
    pub role: String,
    /// Its name in the model's folder when the model itself names it (checkpoint
    /// shards, external data); none for the file given on the command line.
    pub name: Option<String>,
    pub bytes: u64,
    pub covers: Covers,
    /// blake3 of what `covers` says; none for [`Covers::Size`].
    pub blake3: Option<String>,
}

/// `plan.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanReport {
    /// The model, described from its content (architecture, or ONNX opset and producer).
    pub model: String,
    /// A language model generating token by token (else one forward pass per request,
    /// an encoder: "decode" figures are that pass).
    pub generative: bool,
    /// The device profile, described from its content.
    pub devices: String,
    /// Every file read, by content.
    pub inputs: Vec<InputFile>,
    pub strategy: Strategy,
    pub objective: Objective,
    pub workload: Workload,
    pub margin: f64,
    pub units: usize,
    pub stages: Vec<StageReport>,
    pub predictions: Predictions,
    pub solver: SolverStatus,
    /// Weight-only quantization of the matrix weights, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationReport>,
    /// Device times corrected from a measured run (`--calibrate`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationReport>,
}

/// What `--calibrate RUN.json` measured and corrected: per device of the run, its
/// stage's measured and predicted times (predicted for the run's own prompt and
/// context) and the factor every unit's time on that device was multiplied by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationReport {
    /// The run: prompt tokens and new tokens per request.
    pub prompt_tokens: u64,
    pub new_tokens: u64,
    pub devices: Vec<DeviceCalibration>,
    /// Devices of the profile the run did not use: their figures are as profiled.
    pub uncalibrated: Vec<String>,
}

/// One device's correction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCalibration {
    pub device: String,
    /// The units its stage ran in the run.
    pub units: [String; 2],
    /// The prefill (median over requests) and one decode step (median over steps and
    /// requests), milliseconds.
    pub measured_prefill_ms: f64,
    pub predicted_prefill_ms: f64,
    pub prefill_factor: f64,
    /// None when the run decoded nothing (its decode factor is then the prefill's).
    pub measured_decode_ms: Option<f64>,
    pub predicted_decode_ms: f64,
    pub decode_factor: f64,
}

/// What `--quantize` did to the weights the plan sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizationReport {
    /// `int8` or `int4`.
    pub scheme: String,
    /// Elements per scale along the reduction axis; none: one scale per output channel.
    pub group_size: Option<u64>,
    /// The scales' dtype.
    pub scale_dtype: String,
    /// The embedding table and the head are quantized too.
    pub embeddings: bool,
    /// Weight matrices quantized.
    pub weights: u64,
    /// Their bytes before (at the stored dtype) and after (data and scales).
    pub bytes_before: u64,
    pub bytes_after: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> PlanReport {
        let stage = StageReport {
            device: "a".into(),
            first_unit: "embed".into(),
            last_unit: "head".into(),
            layers: Some([0, 1]),
            memory_bytes: 10.0,
            budget_bytes: 20.0,
            prefill_ms: 1.0,
            decode_ms: 0.5,
            link_prefill_ms: 0.0,
            link_decode_ms: 0.0,
            held: Some(HeldReport {
                first_unit: "embed".into(),
                last_unit: "head".into(),
                units: [0, 4],
                memory_bytes: 12.0,
            }),
        };
        PlanReport {
            model: "m".into(),
            generative: true,
            devices: "d".into(),
            inputs: vec![InputFile {
                role: "config".into(),
                name: Some("config.json".into()),
                bytes: 3,
                covers: Covers::File,
                blake3: Some("ab".into()),
            }],
            strategy: Strategy::Ilp,
            objective: Objective::Throughput,
            workload: Workload { batch: 1, prompt_len: 16, max_context: 64 },
            margin: 0.1,
            units: 4,
            stages: vec![stage],
            predictions: Predictions {
                prefill_ms: 1.0,
                decode_ms_per_token: 0.5,
                pipelined_tokens_per_s: f64::INFINITY,
                objective_s: 0.0,
            },
            solver: SolverStatus { engine: "class-dp".into(), optimal: true, gap: None, time_ms: 0.0, note: None },
            quantization: None,
            calibration: None,
        }
    }

    #[test]
    fn plan_json_round_trips_infinite_rates_included() {
        let text = serde_json::to_string(&report()).unwrap();
        assert!(text.contains(r#""pipelined_tokens_per_s":null"#), "{text}");
        let back: PlanReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report());
    }

    #[test]
    fn unknown_fields_and_names_are_refused() {
        let mut json = serde_json::to_value(report()).unwrap();
        json["solver"]["engine2"] = "x".into();
        assert!(serde_json::from_value::<PlanReport>(json).unwrap_err().to_string().contains("engine2"));
        assert_eq!("dp".parse::<Strategy>(), Ok(Strategy::Dp));
        assert!("greedy".parse::<Strategy>().unwrap_err().contains("unknown strategy `greedy`"));
    }
}
