//! `config.json`: the architecture facts the lowering needs.
//!
//! No key goes unread: every key of the file is honoured by the lowering, known not
//! to change what the model computes (listed below, with why), or refused with an
//! error naming it. A key shardc has never heard of is refused too — it may change
//! the model — unless the user names it with `--ignore-config-key`. Both layouts of
//! the rotary parameters are read: transformers 4's `rope_theta` / `rope_scaling`
//! (and Gemma 3's `rope_local_base_freq`), and transformers 5's `rope_parameters`,
//! flat or per layer type (`{full_attention: …, sliding_attention: …}`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use shardc_ir::DType;

pub(crate) use super::keys::KeysView;
use super::keys::{context, divide, keys_view, Keys};
use super::layers::layer_types;
pub use super::layers::LayerKind;
pub(crate) use super::layers::Ropes;
pub use super::rope::{InvFreq, Rope};
use super::HfError;

/// Which lowering a `model_type` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// GPT-2: learned positions, LayerNorm, fused Conv1D attention, GELU MLP.
    Gpt2,
    /// Llama-style decoders: RMSNorm, rotary positions, grouped-query attention, gated
    /// MLP. Llama, Mistral, Qwen2, Qwen3 (q/k norms), Gemma 1/2/3 (RMSNorm of 1 + w,
    /// scaled embeddings, sandwich norms, soft-capping, q/k norms), Phi-3 (fused
    /// projections).
    Llama,
    /// BLOOM: ALiBi, LayerNorm after the embeddings, fused per-head q/k/v.
    Bloom,
}

/// The `model_type`s shardc lowers.
pub const SUPPORTED_MODEL_TYPES: &[&str] =
    &["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "bloom"];

/// MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)`.
    Silu,
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, BLOOM's).
    GeluTanh,
    /// GELU with erf.
    Gelu,
}

/// How one layer attends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerAttention {
    /// Index into [`Arch::ropes`] (0 for models without rotary positions).
    pub rope: usize,
    /// Keys more than this many positions back are not seen (`None`: all are).
    pub window: Option<usize>,
}

/// Largest size any other integer key of a config may give (vocabulary, MLP width,
/// context): 2^24, beyond every published model (the longest context is ~10 M tokens),
/// so parameter, byte and FLOP counts computed from them stay far from overflow.
pub const MAX_SIZE: usize = 1 << 24;

/// Largest hidden size (published models stay below 2^15).
pub const MAX_WIDTH: usize = 1 << 20;

/// The keys that give the hidden size.
pub(super) const WIDTH_KEYS: [&str; 4] = ["hidden_size", "n_embd", "d_model", "head_dim"];

/// Most layers a config may give (published models have at most ~130); a checkpoint
/// must also hold a tensor for each layer.
pub const MAX_LAYERS: usize = 4096;

/// The keys that count layers.
pub(super) const LAYER_KEYS: [&str; 2] = ["num_hidden_layers", "n_layer"];

/// What the lowering needs to know of a model.
#[derive(Clone, Debug)]
pub struct Arch {
    pub family: Family,
    pub model_type: String,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub norm_eps: f64,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    /// The weights' dtype for a config-only (shape-only) graph (`dtype` / `torch_dtype`).
    pub dtype: DType,
    /// The longest context the graph supports.
    pub max_context: usize,
    /// BLOOM: the residual is taken after the layer norm.
    pub residual_post_layernorm: bool,
    /// GPT-2: scale attention scores by 1/sqrt(head_dim).
    pub scale_attention: bool,
    /// The rotary embeddings the layers use (one per layer type).
    pub ropes: Vec<Rope>,
    /// Per layer: its rotary embedding and sliding window.
    pub layer_attention: Vec<LayerAttention>,
    /// Scores scale `1/sqrt(s)` with `s` this instead of the head size (Gemma 2/3's
    /// `query_pre_attn_scalar`).
    pub query_pre_attn_scalar: Option<f64>,
    /// `tanh(x / c) · c` on the attention scores, before the mask (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// `tanh(x / c) · c` on the logits (Gemma 2).
    pub final_softcap: Option<f64>,
    /// RMSNorm of queries and keys over the head size, before the rotary (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm scales by `1 + w` (Gemma).
    pub norm_plus_one: bool,
    /// Embeddings scaled by `sqrt(hidden)`, rounded to the weights' dtype (Gemma).
    pub embed_scale: bool,
    /// Norms after attention and around the MLP as well (Gemma 2/3).
    pub sandwich_norms: bool,
    /// Fused `qkv_proj` and `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
}

fn activation(keys: &Keys, key: &str, default: &str, gemma: bool) -> Result<Activation, HfError> {
    match keys.str_or(key, default)? {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        // transformers' Gemma reads its legacy "gelu" as the tanh approximation.
        "gelu" if gemma => Ok(Activation::GeluTanh),
        "gelu" => Ok(Activation::Gelu),
        other => Err(keys.err(
            key,
            format!("activation `{other}` is not supported (supported: silu, gelu, gelu_new, gelu_pytorch_tanh)"),
        )),
    }
}

fn dtype(keys: &Keys) -> Result<DType, HfError> {
    // transformers 5 writes `dtype`, 4 wrote `torch_dtype`.
    let key = if keys.map.get("dtype").is_some_and(|v| !v.is_null()) { "dtype" } else { "torch_dtype" };
    keys.get("dtype");
    keys.get("torch_dtype");
    match keys.str_or(key, "float32")? {
        "float32" => Ok(DType::F32),
        "float16" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        other => Err(keys.err(key, format!("`{other}` is not supported (supported: float32, float16, bfloat16)"))),
    }
}

/// Options of the config that change nothing for decoders, or that shardc refuses.
fn common_refusals(keys: &Keys) -> Result<(), HfError> {
    keys.require("is_encoder_decoder", &Value::Bool(false), "shardc lowers decoder-only models")?;
    keys.require("add_cross_attention", &Value::Bool(false), "no cross-attention in decoder-only models")?;
    keys.require("tie_encoder_decoder", &Value::Bool(false), "shardc lowers decoder-only models")?;
    if let Some(v) = keys.get("pruned_heads") {
        if v.as_object().is_none_or(|m| !m.is_empty()) {
            return Err(keys.err("pruned_heads", format!("{v}: pruned attention heads are not supported")));
        }
    }
    if keys.get("quantization_config").is_some() {
        return Err(keys.err(
            "quantization_config",
            "quantized checkpoints are not supported (their weights are not plain f32/f16/bf16 tensors)".into(),
        ));
    }
    Ok(())
}

/// Parse `config.json` at `file`; `max_context` is the context the caller asks for,
/// `ignore` the keys the user said not to worry about.
pub fn parse(file: &Path, max_context: Option<usize>, ignore: &[String]) -> Result<Arch, HfError> {
    let text =
        shardc_format::files::read_text(file).map_err(|e| HfError::Io { file: file.to_path_buf(), source: e })?;
    parse_text(file, &text, max_context, ignore)
}

/// [`parse`] of the text read from `file` (named in errors).
pub fn parse_text(file: &Path, text: &str, max_context: Option<usize>, ignore: &[String]) -> Result<Arch, HfError> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| HfError::Config { file: file.to_path_buf(), message: format!("not JSON: {e}") })?;
    let map = json
        .as_object()
        .ok_or_else(|| HfError::Config { file: file.to_path_buf(), message: "not a JSON object".into() })?;
    let keys = Keys { file: file.to_path_buf(), map, used: RefCell::new(BTreeSet::new()) };
    let model_type = keys.str_or("model_type", "")?.to_string();
    let family = match model_type.as_str() {
        "gpt2" => Family::Gpt2,
        "llama" | "mistral" | "qwen2" | "qwen3" | "gemma" | "gemma2" | "gemma3_text" | "phi3" => Family::Llama,
        "bloom" => Family::Bloom,
        "" => {
            return Err(keys.err("model_type", format!("is missing (supported: {})", SUPPORTED_MODEL_TYPES.join(", "))))
        }
        other => {
            return Err(keys.err(
                "model_type",
                format!("`{other}` is not supported (supported: {})", SUPPORTED_MODEL_TYPES.join(", ")),
            ))
        }
    };
    common_refusals(&keys)?;
    let dtype = dtype(&keys)?;
    let arch = match family {
        Family::Gpt2 => gpt2(&keys, model_type.clone(), dtype, max_context)?,
        Family::Llama => llama(&keys, model_type.clone(), dtype, max_context)?,
        Family::Bloom => bloom(&keys, model_type.clone(), dtype, max_context)?,
    };
    keys.check_all_read(&model_type, ignore)?;
    Ok(arch)
}

/// An architecture with the settings every family shares at their defaults.
fn base(family: Family, model_type: String, dtype: DType) -> Arch {
    Arch {
        family,
        model_type,
        vocab: 0,
        hidden: 0,
        layers: 0,
        heads: 0,
        kv_heads: 0,
        head_dim: 0,
        intermediate: 0,
        norm_eps: 1e-5,
        max_positions: 0,
        tie_embeddings: true,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        activation: Activation::GeluTanh,
        dtype,
        max_context: 0,
        residual_post_layernorm: false,
        scale_attention: true,
        ropes: Vec::new(),
        layer_attention: Vec::new(),
        query_pre_attn_scalar: None,
        attn_softcap: None,
        final_softcap: None,
        qk_norm: false,
        norm_plus_one: false,
        embed_scale: false,
        sandwich_norms: false,
        fused_projections: false,
    }
}

fn gpt2(keys: &Keys, model_type: String, dtype: DType, asked: Option<usize>) -> Result<Arch, HfError> {
    let hidden = keys.usize("n_embd")?;
    let heads = keys.usize("n_head")?;
    keys.require("scale_attn_by_inverse_layer_idx", &Value::Bool(false), "supported: false")?;
    let max_positions = keys.first_usize(&["n_positions", "n_ctx"])?;
    let layers = keys.usize("n_layer")?;
    let mut a = base(Family::Gpt2, model_type, dtype);
    a.vocab = keys.usize("vocab_size")?;
    a.hidden = hidden;
    a.layers = layers;
    a.heads = heads;
    a.kv_heads = heads;
    a.head_dim = divide(keys, "n_embd", hidden, heads)?;
    a.intermediate = keys.opt_usize("n_inner")?.unwrap_or(4 * hidden);
    a.norm_eps = keys.f64_or("layer_norm_epsilon", 1e-5)?;
    a.max_positions = max_positions;
    a.tie_embeddings = keys.bool_or("tie_word_embeddings", true)?;
    a.activation = activation(keys, "activation_function", "gelu_new", false)?;
    a.max_context = context(keys, asked, max_positions)?;
    a.scale_attention = keys.bool_or("scale_attn_weights", true)?;
    a.layer_attention = vec![LayerAttention { rope: 0, window: None }; layers];
    Ok(a)
}

fn bloom(keys: &Keys, model_type: String, dtype: DType, asked: Option<usize>) -> Result<Arch, HfError> {
    let hidden = keys.first_usize(&["hidden_size", "n_embed"])?;
    let heads = keys.first_usize(&["n_head", "num_attention_heads"])?;
    let layers = keys.first_usize(&["n_layer", "num_hidden_layers"])?;
    // ALiBi has no position limit of its own; BLOOM was trained on 2048.
    let max_positions = keys.opt_usize("seq_length")?.unwrap_or(2048);
    let mut a = base(Family::Bloom, model_type, dtype);
    a.vocab = keys.usize("vocab_size")?;
    a.hidden = hidden;
    a.layers = layers;
    a.heads = heads;
    a.kv_heads = heads;
    a.head_dim = divide(keys, "hidden_size", hidden, heads)?;
    a.intermediate = 4 * hidden;
    a.norm_eps = keys.f64_or("layer_norm_epsilon", 1e-5)?;
    a.max_positions = max_positions;
    a.tie_embeddings = keys.bool_or("tie_word_embeddings", true)?;
    a.max_context = asked.unwrap_or(max_positions);
    a.residual_post_layernorm = keys.bool_or("apply_residual_connection_post_layernorm", false)?;
    a.layer_attention = vec![LayerAttention { rope: 0, window: None }; layers];
    Ok(a)
}

fn llama(keys: &Keys, model_type: String, dtype: DType, asked: Option<usize>) -> Result<Arch, HfError> {
    let mt = model_type.as_str();
    let gemma = matches!(mt, "gemma" | "gemma2" | "gemma3_text");
    let hidden = keys.usize("hidden_size")?;
    let heads = keys.usize("num_attention_heads")?;
    let kv_heads = keys.opt_usize("num_key_value_heads")?.unwrap_or(heads);
    if heads % kv_heads != 0 {
        return Err(keys.err("num_key_value_heads", format!("{kv_heads} does not divide num_attention_heads {heads}")));
    }
    let head_dim = match keys.opt_usize("head_dim")? {
        Some(d) => d,
        None => divide(keys, "hidden_size", hidden, heads)?,
    };
    let layers = keys.usize("num_hidden_layers")?;
    let max_positions = keys.usize("max_position_embeddings")?;
    let mut a = base(Family::Llama, model_type.clone(), dtype);
    a.vocab = keys.usize("vocab_size")?;
    a.hidden = hidden;
    a.layers = layers;
    a.heads = heads;
    a.kv_heads = kv_heads;
    a.head_dim = head_dim;
    a.intermediate = keys.usize("intermediate_size")?;
    a.norm_eps = keys.f64_or("rms_norm_eps", 1e-6)?;
    a.max_positions = max_positions;
    a.tie_embeddings = keys.bool_or("tie_word_embeddings", gemma)?;
    let attention_bias = keys.bool_or("attention_bias", false)?;
    a.qkv_bias = mt == "qwen2" || attention_bias;
    a.o_bias = attention_bias && mt != "qwen2";
    if mt == "qwen2" {
        keys.require("attention_bias", &Value::Bool(false), "Qwen2 has q/k/v biases and no o_proj bias")?;
    }
    if mt == "phi3" && attention_bias {
        return Err(keys.err("attention_bias", "true is not supported (Phi-3's projections have no bias)".into()));
    }
    a.mlp_bias = keys.bool_or("mlp_bias", false)?;
    if a.mlp_bias && mt != "llama" {
        return Err(keys.err("mlp_bias", format!("true is not supported for `{mt}`")));
    }
    a.activation = match mt {
        "gemma2" | "gemma3_text" => {
            // Gemma 2/3 read `hidden_activation`; `hidden_act` is a leftover they ignore.
            keys.get("hidden_act");
            activation(keys, "hidden_activation", "gelu_pytorch_tanh", true)?
        }
        "gemma" => {
            keys.get("hidden_activation");
            activation(keys, "hidden_act", "gelu_pytorch_tanh", true)?
        }
        _ => activation(keys, "hidden_act", "silu", false)?,
    };
    keys.require("rope_interleaved", &Value::Bool(false), "rotary embeddings rotate halves, not interleaved pairs")?;
    keys.require("use_mrope", &Value::Bool(false), "multimodal rotary embeddings are not supported")?;
    if gemma {
        keys.require("use_bidirectional_attention", &Value::Bool(false), "shardc lowers causal attention")?;
    }
    a.qk_norm = matches!(mt, "qwen3" | "gemma3_text");
    a.norm_plus_one = gemma;
    a.embed_scale = gemma;
    a.sandwich_norms = matches!(mt, "gemma2" | "gemma3_text");
    a.fused_projections = mt == "phi3";
    if matches!(mt, "gemma2" | "gemma3_text") {
        a.query_pre_attn_scalar = Some(keys.f64_or("query_pre_attn_scalar", 256.0)?);
        a.attn_softcap = keys.opt_f64("attn_logit_softcapping")?.filter(|&c| c > 0.0);
        a.final_softcap = keys.opt_f64("final_logit_softcapping")?.filter(|&c| c > 0.0);
    }

    // Which layers attend within a window, and the window.
    let kinds = layer_types(keys, mt, layers)?;
    let window = match mt {
        "mistral" | "phi3" => keys.opt_usize("sliding_window")?,
        "qwen2" | "qwen3" => {
            keys.get("max_window_layers");
            let on = keys.bool_or("use_sliding_window", false)?;
            let w = keys.opt_usize("sliding_window")?;
            if on {
                w
            } else {
                None
            }
        }
        "gemma2" | "gemma3_text" => Some(keys.usize("sliding_window")?),
        _ => None,
    };
    if kinds.contains(&LayerKind::Sliding) && window.is_none() {
        return Err(
            keys.err("layer_types", "names sliding_attention layers, but the config sets no sliding_window".into())
        );
    }
    let ropes = super::rope::parse(keys_view(keys), &a, &kinds, max_positions)?;
    a.layer_attention = kinds
        .iter()
        .map(|k| {
            let sliding = *k == LayerKind::Sliding || matches!(mt, "mistral" | "phi3");
            LayerAttention { rope: ropes.index_of(*k), window: if sliding { window } else { None } }
        })
        .collect();
    a.ropes = ropes.ropes;
    a.max_context = context(keys, asked, max_positions)?;
    Ok(a)
}
