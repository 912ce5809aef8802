//! `shardc verify`: the packages of a compile output, chained in one process as the
//! transmission map says, against the whole model — after the same checks `shardc-run`
//! makes before it runs them (hashes, the map against every manifest).

use std::collections::HashMap;
use std::path::Path;

use shardc_ir::TensorData;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{self, CacheLayout, Runner};
use shardc_runtime::package;

use crate::frontend::hf::LowerOptions;
use crate::load::{load, LoadError};
use crate::run::{read_tensors, run_graph, RunError};

/// Why a verification could not run (a disagreement is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Runtime(#[from] shardc_runtime::RuntimeError),
    #[error(transparent)]
    Pass(#[from] shardc_passes::PassError),
    #[error("{0}")]
    Mismatch(String),
    /// `--tolerance` is not a finite fraction ≥ 0, or `--min-agreement` not one in
    /// [0, 1] (a usage error).
    #[error("{0}")]
    Tolerance(String),
}

/// Logits and greedy tokens of the model and of its packages.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenReport {
    /// Devices in pipeline order.
    pub devices: Vec<String>,
    /// Largest |difference| of the prompt's logits, its limit, and the largest |logit|.
    pub max_diff: f32,
    pub limit: f32,
    pub max_logit: f32,
    pub model_tokens: Vec<i64>,
    pub package_tokens: Vec<i64>,
    /// Fraction of the greedy tokens the packages must agree on, as a prefix.
    pub min_agreement: f64,
    /// The prompt's logits, `[seq, vocab]`: the model's and the packages'.
    pub logits: [TensorData; 2],
}

impl TokenReport {
    /// The packages' greedy tokens that agree with the model's before the first that
    /// does not, as a fraction of the tokens compared (1 when none were).
    pub fn agreement(&self) -> f64 {
        let same = self.model_tokens.iter().zip(&self.package_tokens).take_while(|(a, b)| a == b).count();
        let n = self.model_tokens.len().max(self.package_tokens.len());
        if n == 0 {
            1.0
        } else {
            same as f64 / n as f64
        }
    }

    /// Logits within the limit and the tokens agreeing as much as asked (all of them
    /// unless `--min-agreement` says less).
    pub fn agrees(&self) -> bool {
        self.max_diff <= self.limit && self.agreement() >= self.min_agreement
    }
}

/// One output of [`verify_outputs`].
#[derive(Clone, Debug, PartialEq)]
pub struct OutputCheck {
    pub name: String,
    /// `None`: the packages do not produce it.
    pub max_diff: Option<f64>,
    pub limit: f64,
}

impl OutputCheck {
    pub fn agrees(&self) -> bool {
        self.max_diff.is_some_and(|d| d <= self.limit)
    }
}

/// Every output of the model and of its packages on the same named inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputReport {
    pub devices: Vec<String>,
    pub outputs: Vec<OutputCheck>,
    /// The outputs themselves, by name: the model's and the packages'.
    pub tensors: Vec<(String, [TensorData; 2])>,
}

impl OutputReport {
    pub fn agrees(&self) -> bool {
        self.outputs.iter().all(OutputCheck::agrees)
    }
}

/// The largest |a − b|: infinite when the lengths differ or exactly one side is NaN
/// (`f64::max` would skip a NaN and call the values equal), 0 where both are NaN.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0.0, |m, (x, y)| match (x.is_nan(), y.is_nan()) {
        (true, true) => m,
        (false, false) if x == y => m,
        (false, false) => m.max((x - y).abs()),
        _ => f64::INFINITY,
    })
}

/// A tolerance is a finite fraction ≥ 0 (a NaN would make every comparison pass).
fn check_tolerance(tolerance: f64) -> Result<(), VerifyError> {
    if !(tolerance.is_finite() && tolerance >= 0.0) {
        return Err(VerifyError::Tolerance(format!("--tolerance must be a fraction ≥ 0, got {tolerance}")));
    }
    Ok(())
}

/// The packages of `out` as `shardc-run` would load them, chained in this process.
fn packages(out: &Path) -> Result<(Vec<String>, shardc_runtime::pipeline::Pipeline), VerifyError> {
    package::load_output(out, true)?;
    let (manifests, pipeline) = package::load_pipeline(out)?;
    Ok((manifests.iter().map(|m| m.device.clone()).collect(), pipeline))
}

/// Prompt logits and `tokens` greedy tokens of `model` and of the packages in `out`;
/// `tolerance` is a fraction of max(1, max |logit|), `min_agreement` the fraction of
/// greedy tokens that must agree (as a prefix: quantized packages may part ways).
pub fn verify_tokens(
    model: &Path,
    out: &Path,
    ids: &[i64],
    tokens: usize,
    tolerance: f64,
    min_agreement: f64,
) -> Result<TokenReport, VerifyError> {
    check_tolerance(tolerance)?;
    if !(0.0..=1.0).contains(&min_agreement) {
        return Err(VerifyError::Tolerance(format!(
            "--min-agreement must be a fraction in [0, 1], got {min_agreement}"
        )));
    }
    let (devices, pipeline) = packages(out)?;
    let loaded = load(model, &LowerOptions::default())?;
    let mut graph = loaded.graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None)?;
    let whole = shardc_runtime::Session::new(graph, &loaded.weights_dir);
    let (reference, parts, model_tokens, package_tokens) = match CacheLayout::of(&whole)? {
        Some(layout) => {
            let parts_layout = CacheLayout::of(&pipeline)?
                .ok_or_else(|| VerifyError::Mismatch("the packages have no KV cache but the model does".into()))?;
            (
                generate::cached_prefill(&whole, &layout, ids)?,
                generate::cached_prefill(&pipeline, &parts_layout, ids)?,
                generate::greedy_cached(&whole, &layout, ids, tokens)?,
                generate::greedy_cached(&pipeline, &parts_layout, ids, tokens)?,
            )
        }
        None => (
            generate::logits(&whole, ids)?,
            generate::logits(&pipeline, ids)?,
            generate::greedy(&whole, ids, tokens)?,
            generate::greedy(&pipeline, ids, tokens)?,
        ),
    };
    let max_logit = reference.values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = max_abs_diff(
        &reference.values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        &parts.values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
    ) as f32;
    let limit = tolerance as f32 * max_logit.max(1.0);
    let as_tensor = |l: &generate::Logits| {
        let rows = l.values.len() / l.vocab.max(1);
        let bytes = l.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData::from_le_bytes(shardc_ir::DType::F32, vec![rows, l.vocab], bytes)
            .map_err(|e| VerifyError::Mismatch(format!("logits: {e}")))
    };
    let logits = [as_tensor(&reference)?, as_tensor(&parts)?];
    Ok(TokenReport { devices, max_diff, limit, max_logit, model_tokens, package_tokens, min_agreement, logits })
}

/// Every output of `model` and of the packages in `out` on the named tensors of the
/// safetensors file `inputs`; `tolerance` is a fraction of max(1, max |value|) per output.
pub fn verify_outputs(model: &Path, out: &Path, inputs: &Path, tolerance: f64) -> Result<OutputReport, VerifyError> {
    check_tolerance(tolerance)?;
    let (devices, pipeline) = packages(out)?;
    let loaded = load(model, &LowerOptions::default())?;
    let tensors = read_tensors(inputs)?;
    let reference = run_graph(loaded.graph, &loaded.weights_dir, tensors.clone())?;
    let feed = tensors
        .iter()
        .map(|(n, t)| {
            let t =
                shardc_runtime::Tensor::from_data(t).map_err(|e| VerifyError::Mismatch(format!("input `{n}`: {e}")))?;
            Ok((n.clone(), t))
        })
        .collect::<Result<Vec<_>, VerifyError>>()?;
    let produced: HashMap<String, shardc_runtime::Tensor> = pipeline.run(feed)?.into_iter().collect();
    let parts: HashMap<&String, Vec<f64>> =
        produced.iter().map(|(n, t)| (n, t.to_f32_vec().into_iter().map(f64::from).collect())).collect();
    let outputs = reference
        .iter()
        .map(|(name, t)| {
            let want = t.to_f64_vec();
            let limit = tolerance * want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1.0);
            let max_diff = parts.get(name).map(|got| max_abs_diff(&want, got));
            OutputCheck { name: name.clone(), max_diff, limit }
        })
        .collect();
    let tensors = reference
        .iter()
        .filter_map(|(name, t)| {
            let got = produced.get(name)?.to_data().ok()?;
            Some((name.clone(), [t.clone(), got]))
        })
        .collect();
    Ok(OutputReport { devices, outputs, tensors })
}

#[cfg(test)]
mod tests {
    use super::max_abs_diff;

    #[test]
    fn a_nan_on_one_side_is_a_difference() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.0, 2.5]), 0.5);
        assert_eq!(max_abs_diff(&[1.0, f64::NAN], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[f64::NAN, 2.0]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[f64::NAN], &[f64::NAN]), 0.0);
        assert_eq!(max_abs_diff(&[f64::INFINITY], &[f64::INFINITY]), 0.0);
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }
}
