//! Rotary position embeddings: every rope type transformers defines for the model
//! types shardc lowers — `default`, `linear`, `dynamic`, `llama3`, `yarn`, `longrope`
//! — from either config layout, with `partial_rotary_factor`. Inverse frequencies are
//! computed in f32 the way transformers' `modeling_rope_utils` computes them, so the
//! rotary tables match PyTorch's.
//!
//! `dynamic` (NTK) rescales only once a sequence grows past `max_position_embeddings`,
//! which shardc never lets a graph do (contexts are bounded by it), so within the
//! contexts shardc serves it equals `default`. `longrope` switches from its short to
//! its long factors once the context passes `original_max_position_embeddings`: the
//! graph makes that choice at run time from the context length, as transformers does.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::config::{Arch, KeysView, LayerKind, Ropes};
use super::HfError;

/// Inverse frequencies, `[rotary_dim / 2]`.
#[derive(Clone, Debug, PartialEq)]
pub enum InvFreq {
    Fixed(Vec<f64>),
    /// `long` once the context (past + new tokens) exceeds `threshold`, else `short`.
    Switch {
        short: Vec<f64>,
        long: Vec<f64>,
        threshold: usize,
    },
}

/// One rotary embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// The rope type, as the config names it.
    pub kind: String,
    /// Leading dims of each head that rotate (`head_dim · partial_rotary_factor`).
    pub rotary_dim: usize,
    pub inv_freq: InvFreq,
    /// cos and sin are scaled by this (yarn, longrope).
    pub attention_factor: f64,
}

/// Keys each rope type may hold.
fn allowed(kind: &str) -> &'static [&'static str] {
    match kind {
        "default" => &["rope_type", "type", "rope_theta", "partial_rotary_factor"],
        "linear" | "dynamic" => &["rope_type", "type", "rope_theta", "partial_rotary_factor", "factor"],
        "llama3" => &[
            "rope_type",
            "type",
            "rope_theta",
            "partial_rotary_factor",
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        "yarn" => &[
            "rope_type",
            "type",
            "rope_theta",
            "partial_rotary_factor",
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        "longrope" => &[
            "rope_type",
            "type",
            "rope_theta",
            "partial_rotary_factor",
            "short_factor",
            "long_factor",
            "original_max_position_embeddings",
            "factor",
            "attention_factor",
        ],
        _ => &[],
    }
}

/// Rope dicts by the layer kind they serve.
type RopeDicts = BTreeMap<LayerKind, Map<String, Value>>;

/// The rope dicts per layer kind, in transformers 5's form, from either layout.
fn raw_parameters(keys: &KeysView, arch: &Arch, kinds: &[LayerKind]) -> Result<(RopeDicts, &'static str), HfError> {
    let gemma3 = arch.model_type == "gemma3_text";
    let as_map = |key: &str, v: &Value| -> Result<Map<String, Value>, HfError> {
        v.as_object().cloned().ok_or_else(|| keys.err(key, format!("must be an object, is {v}")))
    };
    let top_theta = keys.get("rope_theta").cloned();
    let top_partial = keys.get("partial_rotary_factor").cloned();
    let scaling = keys.get("rope_scaling").cloned();
    let parameters = keys.get("rope_parameters").cloned();
    let local = if gemma3 { keys.get("rope_local_base_freq").cloned() } else { None };
    let mut out = BTreeMap::new();
    let used: BTreeMap<LayerKind, ()> = kinds.iter().map(|k| (*k, ())).collect();
    let (source, key) = match (&parameters, &scaling) {
        (_, Some(s)) => (Some(as_map("rope_scaling", s)?), "rope_scaling"),
        (Some(p), None) => (Some(as_map("rope_parameters", p)?), "rope_parameters"),
        (None, None) => (None, "rope_theta"),
    };
    let nested = source
        .as_ref()
        .is_some_and(|m| !m.is_empty() && m.keys().all(|k| k == "full_attention" || k == "sliding_attention"));
    for &kind in used.keys() {
        let mut dict = match (&source, nested) {
            (Some(m), true) => match m.get(kind.name()) {
                Some(v) if !v.is_null() => as_map(key, v)?,
                _ => Map::new(),
            },
            // Gemma 3 in transformers 4: `rope_scaling` is the global layers' only.
            (Some(_), false) if gemma3 && key == "rope_scaling" && kind == LayerKind::Sliding => Map::new(),
            (Some(m), false) => m.clone(),
            (None, _) => Map::new(),
        };
        let theta = match (kind, gemma3) {
            (LayerKind::Sliding, true) => local.clone().unwrap_or(Value::from(10_000.0)),
            (LayerKind::Full, true) => top_theta.clone().unwrap_or(Value::from(1_000_000.0)),
            _ => top_theta.clone().unwrap_or(Value::from(10_000.0)),
        };
        dict.entry("rope_theta").or_insert(theta);
        if let Some(p) = &top_partial {
            dict.entry("partial_rotary_factor").or_insert(p.clone());
        }
        out.insert(kind, dict);
    }
    Ok((out, if nested { "rope_parameters" } else { key }))
}

fn num(keys: &KeysView, key: &str, dict: &Map<String, Value>, name: &str) -> Result<Option<f64>, HfError> {
    match dict.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| keys.err(key, format!("`{name}` must be a number, is {v}"))),
    }
}

fn list(keys: &KeysView, key: &str, dict: &Map<String, Value>, name: &str, len: usize) -> Result<Vec<f64>, HfError> {
    let v = dict.get(name).ok_or_else(|| keys.err(key, format!("needs `{name}`")))?;
    let items: Vec<f64> = v
        .as_array()
        .and_then(|a| a.iter().map(Value::as_f64).collect())
        .ok_or_else(|| keys.err(key, format!("`{name}` must be a list of numbers")))?;
    if items.len() != len {
        return Err(keys.err(key, format!("`{name}` has {} entries, the rotary size needs {len}", items.len())));
    }
    Ok(items)
}

/// `1 / base^(2i / dim)` in f32, as torch computes it.
fn default_inv(base: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / dim as f32;
            1.0 / (base as f32).powf(exponent)
        })
        .collect()
}

/// Parse the rotary embeddings of a Llama-family config: one per layer kind in use.
pub(crate) fn parse(keys: KeysView, arch: &Arch, kinds: &[LayerKind], max_positions: usize) -> Result<Ropes, HfError> {
    let (raw, key) = raw_parameters(&keys, arch, kinds)?;
    let phi3 = arch.model_type == "phi3";
    let top_original = if phi3 { keys.get("original_max_position_embeddings").and_then(Value::as_u64) } else { None };
    let mut ropes = Vec::new();
    let mut by_kind = BTreeMap::new();
    for (kind, dict) in raw {
        let kind_name = match dict.get("rope_type").or_else(|| dict.get("type")) {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) if s == "su" => "longrope".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(keys.err(key, format!("`rope_type` must be a string, is {v}"))),
        };
        if allowed(&kind_name).is_empty() {
            return Err(keys.err(
                key,
                format!("rope type `{kind_name}` is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)"),
            ));
        }
        if let Some(extra) = dict.keys().find(|k| !allowed(&kind_name).contains(&k.as_str())) {
            return Err(keys.err(key, format!("`{extra}` is not a parameter of rope type `{kind_name}`")));
        }
        let base = num(&keys, key, &dict, "rope_theta")?.unwrap_or(10_000.0);
        let partial = num(&keys, key, &dict, "partial_rotary_factor")?.unwrap_or(1.0);
        if partial != 1.0 && !phi3 {
            return Err(keys.err(
                key,
                format!(
                    "partial_rotary_factor {partial} is not supported for `{}` (its attention rotates whole heads)",
                    arch.model_type
                ),
            ));
        }
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(keys.err(key, format!("partial_rotary_factor {partial} must be in (0, 1]")));
        }
        let dim = (arch.head_dim as f64 * partial) as usize;
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(
                keys.err(key, format!("the rotary size {dim} (head size × partial_rotary_factor) must be even"))
            );
        }
        let original = || -> Result<f64, HfError> {
            Ok(match top_original {
                Some(o) => o as f64,
                None => num(&keys, key, &dict, "original_max_position_embeddings")?.unwrap_or(max_positions as f64),
            })
        };
        let factor = |required: bool| -> Result<Option<f64>, HfError> {
            let f = num(&keys, key, &dict, "factor")?;
            if required && f.is_none() {
                return Err(keys.err(key, format!("rope type `{kind_name}` needs `factor`")));
            }
            Ok(f)
        };
        let fixed = |v: Vec<f32>| InvFreq::Fixed(v.into_iter().map(f64::from).collect());
        let (inv_freq, attention_factor) = match kind_name.as_str() {
            "default" | "dynamic" => {
                factor(kind_name == "dynamic")?;
                (fixed(default_inv(base, dim)), 1.0)
            }
            "linear" => {
                let f = factor(true)?.unwrap_or(1.0) as f32;
                (fixed(default_inv(base, dim).into_iter().map(|v| v / f).collect()), 1.0)
            }
            "llama3" => {
                let f = factor(true)?.unwrap_or(1.0) as f32;
                let low = num(&keys, key, &dict, "low_freq_factor")?
                    .ok_or_else(|| keys.err(key, "llama3 needs `low_freq_factor`".into()))?
                    as f32;
                let high = num(&keys, key, &dict, "high_freq_factor")?
                    .ok_or_else(|| keys.err(key, "llama3 needs `high_freq_factor`".into()))?
                    as f32;
                let old = original()? as f32;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                let inv = default_inv(base, dim)
                    .into_iter()
                    .map(|v| {
                        let wavelen = 2.0 * std::f32::consts::PI / v;
                        let scaled = if wavelen > low_wavelen { v / f } else { v };
                        let smooth = (old / wavelen - low) / (high - low);
                        let smoothed = (1.0 - smooth) * scaled / f + smooth * scaled;
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            smoothed
                        } else {
                            scaled
                        }
                    })
                    .collect();
                (fixed(inv), 1.0)
            }
            "yarn" => {
                let f = match factor(false)? {
                    Some(f) => f,
                    None => max_positions as f64 / original()?,
                };
                let orig = original()?;
                let mscale = num(&keys, key, &dict, "mscale")?;
                let mscale_all = num(&keys, key, &dict, "mscale_all_dim")?;
                let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention = match num(&keys, key, &dict, "attention_factor")? {
                    Some(a) => a,
                    None => match (mscale, mscale_all) {
                        (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => get_mscale(f, m) / get_mscale(f, ma),
                        _ => get_mscale(f, 1.0),
                    },
                };
                let beta_fast = num(&keys, key, &dict, "beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0);
                let beta_slow = num(&keys, key, &dict, "beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0);
                let truncate = match dict.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(v) => {
                        v.as_bool().ok_or_else(|| keys.err(key, format!("`truncate` must be true or false, is {v}")))?
                    }
                };
                let correction =
                    |rot: f64| (dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
                if low == high {
                    high += 0.001;
                }
                let pos: Vec<f32> = (0..dim / 2).map(|i| (base as f32).powf((2 * i) as f32 / dim as f32)).collect();
                let inv = pos
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let extrapolation = 1.0 / p;
                        let interpolation = 1.0 / (f as f32 * p);
                        let ramp = ((i as f32 - low as f32) / ((high - low) as f32)).clamp(0.0, 1.0);
                        let extra = 1.0 - ramp;
                        interpolation * (1.0 - extra) + extrapolation * extra
                    })
                    .collect();
                (fixed(inv), attention)
            }
            "longrope" => {
                let orig = original()?;
                let f = match factor(false)? {
                    Some(f) => f,
                    None => max_positions as f64 / orig,
                };
                let attention = match num(&keys, key, &dict, "attention_factor")? {
                    Some(a) => a,
                    None if f <= 1.0 => 1.0,
                    None => (1.0 + f.ln() / orig.ln()).sqrt(),
                };
                let short = list(&keys, key, &dict, "short_factor", dim / 2)?;
                let long = list(&keys, key, &dict, "long_factor", dim / 2)?;
                let scaled = |ext: &[f64]| -> Vec<f64> {
                    (0..dim / 2)
                        .map(|i| {
                            let shape = (2 * i) as f32 / dim as f32;
                            f64::from(1.0 / (ext[i] as f32 * (base as f32).powf(shape)))
                        })
                        .collect()
                };
                (InvFreq::Switch { short: scaled(&short), long: scaled(&long), threshold: orig as usize }, attention)
            }
            _ => unreachable_kind(&keys, key, &kind_name)?,
        };
        let rope = Rope { kind: kind_name, rotary_dim: dim, inv_freq, attention_factor };
        let index = match ropes.iter().position(|r| *r == rope) {
            Some(i) => i,
            None => {
                ropes.push(rope);
                ropes.len() - 1
            }
        };
        by_kind.insert(kind, index);
    }
    Ok(Ropes { ropes, by_kind })
}

fn unreachable_kind(keys: &KeysView, key: &str, kind: &str) -> Result<(InvFreq, f64), HfError> {
    Err(keys.err(key, format!("rope type `{kind}` is not supported")))
}
