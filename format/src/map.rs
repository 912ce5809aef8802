//! `transmission_map.json`: every tensor that crosses devices, who sends it to whom,
//! and the roles a client drives a language model by.

use std::collections::BTreeMap;

use crate::tensor::{DType, Dim, Endpoint};

/// The current `transmission_map.json` format (2: typed dtypes, shapes, endpoints,
/// and this field).
pub const FORMAT: u32 = 2;

/// How a tensor travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferKind {
    /// To the next stage only.
    Sequential,
    /// Straight to non-adjacent stages.
    LongRange,
    /// A graph input, from the client to the stages that read it.
    Input,
    /// A graph output, from its stage to the client.
    Output,
}

/// One entry of the map.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub tensor: String,
    pub from: Endpoint,
    pub to: Vec<Endpoint>,
    /// `null` when not inferred.
    #[serde(with = "crate::tensor::opt_dtype")]
    pub dtype: Option<DType>,
    /// `null` when not inferred.
    #[serde(with = "crate::tensor::opt_shape")]
    pub shape: Option<Vec<Dim>>,
    /// Bytes per decode step (batch as planned).
    pub bytes_per_token: f64,
    /// Bytes of the prefill.
    pub prefill_bytes: f64,
    pub kind: TransferKind,
    /// Computed from graph inputs and constants alone, with fewer FLOPs than bytes to
    /// send: a device could compute it instead of receiving it.
    pub recomputable: bool,
}

/// The tensors a client drives a language model by.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// The token-ids input the client sends.
    pub token_input: String,
    /// The logits output the client reads the next token from.
    pub logits: String,
    /// Whether the graph carries a KV cache. Without one each step runs on every
    /// token so far, which the client re-sends.
    pub kv_cache: bool,
    /// The step that first takes the context beyond this recomputes the KV cache
    /// from all the tokens (see `Graph::recompute_beyond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recompute_beyond: Option<u64>,
    /// The longest context (prompt + generated tokens) the packages serve, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<u64>,
}

/// The transmission map of a plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransmissionMap {
    /// [`FORMAT`].
    pub format: u32,
    /// Device names in pipeline order.
    pub stages: Vec<String>,
    /// For a language model: the token input and the logits (absent for other graphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Device-local state: KV-cache inputs and outputs each stage keeps.
    pub device_local: BTreeMap<String, Vec<String>>,
    pub transfers: Vec<Transfer>,
}
