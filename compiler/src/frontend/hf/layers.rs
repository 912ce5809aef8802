//! Per-layer facts of a config: each layer's attention kind (full or sliding window)
//! and the rotary embeddings each kind uses.

use std::collections::BTreeMap;

use serde_json::Value;

use super::keys::Keys;
use super::rope::Rope;
use super::HfError;

/// Full or sliding-window attention, per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerKind {
    Full,
    Sliding,
}

impl LayerKind {
    /// The name transformers gives the layer type.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Full => "full_attention",
            LayerKind::Sliding => "sliding_attention",
        }
    }
}

/// The layer types: `layer_types`, or as each model type derives them.
pub(super) fn layer_types(keys: &Keys, mt: &str, layers: usize) -> Result<Vec<LayerKind>, HfError> {
    if let Some(v) = keys.get("layer_types") {
        let list = v.as_array().ok_or_else(|| keys.err("layer_types", format!("must be a list, is {v}")))?;
        if list.len() != layers {
            return Err(keys.err("layer_types", format!("has {} entries for {layers} layers", list.len())));
        }
        keys.get("sliding_window_pattern");
        keys.get("_sliding_window_pattern");
        return list
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(LayerKind::Full),
                Some("sliding_attention") => Ok(LayerKind::Sliding),
                _ => Err(keys.err(
                    "layer_types",
                    format!("layer type {t} is not supported (supported: full_attention, sliding_attention)"),
                )),
            })
            .collect();
    }
    Ok(match mt {
        // Gemma 2 alternates, sliding first.
        "gemma2" => (0..layers).map(|i| if (i + 1) % 2 != 0 { LayerKind::Sliding } else { LayerKind::Full }).collect(),
        "gemma3_text" => {
            let pattern = match keys.opt_usize("sliding_window_pattern")? {
                Some(p) => p,
                None => keys.opt_usize("_sliding_window_pattern")?.unwrap_or(6),
            };
            (0..layers).map(|i| if (i + 1) % pattern != 0 { LayerKind::Sliding } else { LayerKind::Full }).collect()
        }
        "qwen2" | "qwen3" => {
            let on = keys.map.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false)
                && keys.map.get("sliding_window").is_some_and(|w| !w.is_null());
            let from = keys.opt_usize("max_window_layers")?.unwrap_or(28);
            (0..layers).map(|i| if on && i >= from { LayerKind::Sliding } else { LayerKind::Full }).collect()
        }
        _ => vec![LayerKind::Full; layers],
    })
}

/// The ropes of a model and which layer kind uses which.
pub(crate) struct Ropes {
    pub ropes: Vec<Rope>,
    pub by_kind: BTreeMap<LayerKind, usize>,
}

impl Ropes {
    pub(super) fn index_of(&self, kind: LayerKind) -> usize {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }
}
