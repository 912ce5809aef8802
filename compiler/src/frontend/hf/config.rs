//! `config.json`: the architecture facts the lowering needs, with every option it does
//! not handle rejected by name.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use shardc_ir::DType;

use super::HfError;

/// Which lowering a `model_type` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// GPT-2: learned positions, LayerNorm, fused Conv1D attention, GELU MLP.
    Gpt2,
    /// Llama, Mistral, Qwen2: RMSNorm, rotary positions, grouped-query attention,
    /// SwiGLU MLP; optional q/k/v bias.
    Llama,
    /// BLOOM: ALiBi, LayerNorm after the embeddings, fused per-head q/k/v.
    Bloom,
}

/// The `model_type`s shardc lowers.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "llama", "mistral", "qwen2", "bloom"];

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
    pub rope_theta: f64,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    /// `torch_dtype`: the weights' dtype for a config-only (shape-only) graph.
    pub dtype: DType,
    /// The longest context the graph supports.
    pub max_context: usize,
    /// BLOOM: the residual is taken after the layer norm.
    pub residual_post_layernorm: bool,
    /// GPT-2: scale attention scores by 1/sqrt(head_dim).
    pub scale_attention: bool,
}

struct Keys<'a> {
    file: PathBuf,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn err(&self, key: &str, message: String) -> HfError {
        HfError::ConfigKey { file: self.file.clone(), key: key.to_string(), message }
    }

    fn usize(&self, key: &str) -> Result<usize, HfError> {
        self.opt_usize(key)?.ok_or_else(|| self.err(key, "is missing".into()))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, HfError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(key, format!("must be a positive integer, is {v}"))),
        }
    }

    fn first_usize(&self, keys: &[&str]) -> Result<usize, HfError> {
        for k in keys {
            if let Some(v) = self.opt_usize(k)? {
                return Ok(v);
            }
        }
        Err(self.err(keys[0], format!("is missing (also looked for {})", keys[1..].join(", "))))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, HfError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, format!("must be a number, is {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, HfError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("must be true or false, is {v}"))),
        }
    }

    fn str_or<'s>(&'s self, key: &str, default: &'s str) -> Result<&'s str, HfError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, format!("must be a string, is {v}"))),
        }
    }

    /// A key that must be absent, null, or equal to `allowed`.
    fn require(&self, key: &str, allowed: &Value, what: &str) -> Result<(), HfError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(v) if v == allowed => Ok(()),
            Some(v) => Err(self.err(key, format!("{v} is not supported ({what})"))),
        }
    }
}

fn activation(keys: &Keys, key: &str, default: &str) -> Result<Activation, HfError> {
    match keys.str_or(key, default)? {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "gelu" => Ok(Activation::Gelu),
        other => Err(keys.err(
            key,
            format!("activation `{other}` is not supported (supported: silu, gelu, gelu_new, gelu_pytorch_tanh)"),
        )),
    }
}

fn torch_dtype(keys: &Keys) -> Result<DType, HfError> {
    match keys.str_or("torch_dtype", "float32")? {
        "float32" => Ok(DType::F32),
        "float16" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        other => {
            Err(keys.err("torch_dtype", format!("`{other}` is not supported (supported: float32, float16, bfloat16)")))
        }
    }
}

/// Parse `config.json` at `file`; `max_context` is the context the caller asks for.
pub fn parse(file: &Path, max_context: Option<usize>) -> Result<Arch, HfError> {
    let text = std::fs::read_to_string(file).map_err(|e| HfError::Io { file: file.to_path_buf(), source: e })?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| HfError::Config { file: file.to_path_buf(), message: format!("not JSON: {e}") })?;
    let map = json
        .as_object()
        .ok_or_else(|| HfError::Config { file: file.to_path_buf(), message: "not a JSON object".into() })?;
    let keys = Keys { file: file.to_path_buf(), map };
    let model_type = keys.str_or("model_type", "")?.to_string();
    let family = match model_type.as_str() {
        "gpt2" => Family::Gpt2,
        "llama" | "mistral" | "qwen2" => Family::Llama,
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
    keys.require("rope_scaling", &Value::Null, "supported: no rope_scaling")?;
    let dtype = torch_dtype(&keys)?;
    let arch = match family {
        Family::Gpt2 => {
            let hidden = keys.usize("n_embd")?;
            let heads = keys.usize("n_head")?;
            keys.require("scale_attn_by_inverse_layer_idx", &Value::Bool(false), "supported: false")?;
            keys.require("add_cross_attention", &Value::Bool(false), "supported: false")?;
            let max_positions = keys.first_usize(&["n_positions", "n_ctx"])?;
            Arch {
                family,
                vocab: keys.usize("vocab_size")?,
                hidden,
                layers: keys.usize("n_layer")?,
                heads,
                kv_heads: heads,
                head_dim: divide(&keys, "n_embd", hidden, heads)?,
                intermediate: keys.opt_usize("n_inner")?.unwrap_or(4 * hidden),
                norm_eps: keys.f64_or("layer_norm_epsilon", 1e-5)?,
                rope_theta: 0.0,
                max_positions,
                tie_embeddings: keys.bool_or("tie_word_embeddings", true)?,
                qkv_bias: true,
                o_bias: true,
                mlp_bias: true,
                activation: activation(&keys, "activation_function", "gelu_new")?,
                dtype,
                max_context: context(&keys, max_context, max_positions, None)?,
                residual_post_layernorm: false,
                scale_attention: keys.bool_or("scale_attn_weights", true)?,
                model_type,
            }
        }
        Family::Llama => {
            let hidden = keys.usize("hidden_size")?;
            let heads = keys.usize("num_attention_heads")?;
            let kv_heads = keys.opt_usize("num_key_value_heads")?.unwrap_or(heads);
            if heads % kv_heads != 0 {
                return Err(
                    keys.err("num_key_value_heads", format!("{kv_heads} does not divide num_attention_heads {heads}"))
                );
            }
            let head_dim = match keys.opt_usize("head_dim")? {
                Some(d) => d,
                None => divide(&keys, "hidden_size", hidden, heads)?,
            };
            if head_dim % 2 != 0 {
                return Err(
                    keys.err("head_dim", format!("{head_dim} is odd; rotary embeddings need an even head size"))
                );
            }
            let max_positions = keys.usize("max_position_embeddings")?;
            let qwen = model_type == "qwen2";
            let window = match model_type.as_str() {
                "mistral" => keys.opt_usize("sliding_window")?,
                "qwen2" if keys.bool_or("use_sliding_window", false)? => keys.opt_usize("sliding_window")?,
                _ => None,
            };
            let attention_bias = keys.bool_or("attention_bias", false)?;
            Arch {
                family,
                vocab: keys.usize("vocab_size")?,
                hidden,
                layers: keys.usize("num_hidden_layers")?,
                heads,
                kv_heads,
                head_dim,
                intermediate: keys.usize("intermediate_size")?,
                norm_eps: keys.f64_or("rms_norm_eps", 1e-6)?,
                rope_theta: keys.f64_or("rope_theta", 10000.0)?,
                max_positions,
                tie_embeddings: keys.bool_or("tie_word_embeddings", false)?,
                qkv_bias: qwen || attention_bias,
                o_bias: attention_bias,
                mlp_bias: keys.bool_or("mlp_bias", false)?,
                activation: activation(&keys, "hidden_act", "silu")?,
                dtype,
                max_context: context(&keys, max_context, max_positions, window)?,
                residual_post_layernorm: false,
                scale_attention: true,
                model_type,
            }
        }
        Family::Bloom => {
            let hidden = keys.first_usize(&["hidden_size", "n_embed"])?;
            let heads = keys.first_usize(&["n_head", "num_attention_heads"])?;
            // ALiBi has no position limit of its own; BLOOM was trained on 2048.
            let max_positions = keys.opt_usize("seq_length")?.unwrap_or(2048);
            Arch {
                family,
                vocab: keys.usize("vocab_size")?,
                hidden,
                layers: keys.first_usize(&["n_layer", "num_hidden_layers"])?,
                heads,
                kv_heads: heads,
                head_dim: divide(&keys, "hidden_size", hidden, heads)?,
                intermediate: 4 * hidden,
                norm_eps: keys.f64_or("layer_norm_epsilon", 1e-5)?,
                rope_theta: 0.0,
                max_positions,
                tie_embeddings: keys.bool_or("tie_word_embeddings", true)?,
                qkv_bias: true,
                o_bias: true,
                mlp_bias: true,
                activation: Activation::GeluTanh,
                dtype,
                max_context: max_context.unwrap_or(max_positions),
                residual_post_layernorm: keys.bool_or("apply_residual_connection_post_layernorm", false)?,
                scale_attention: true,
                model_type,
            }
        }
    };
    Ok(arch)
}

fn divide(keys: &Keys, key: &str, hidden: usize, heads: usize) -> Result<usize, HfError> {
    if hidden % heads != 0 {
        return Err(keys.err(key, format!("{hidden} is not divisible by the head count {heads}")));
    }
    Ok(hidden / heads)
}

/// The context the graph supports: what the caller asks, at most the position limit,
/// and never beyond a sliding window (the lowering has no windowed attention).
fn context(keys: &Keys, asked: Option<usize>, max_positions: usize, window: Option<usize>) -> Result<usize, HfError> {
    let limit = window.map_or(max_positions, |w| w.min(max_positions));
    match asked {
        Some(c) if c > max_positions => Err(keys.err(
            if keys.map.contains_key("max_position_embeddings") { "max_position_embeddings" } else { "n_positions" },
            format!("the model supports {max_positions} positions, {c} were asked for"),
        )),
        Some(c) if window.is_some_and(|w| c > w) => Err(keys.err(
            "sliding_window",
            format!(
                "a sliding window of {} is shorter than the context asked for ({c}); shardc lowers full attention only",
                window.unwrap_or(0)
            ),
        )),
        Some(c) => Ok(c),
        None => Ok(limit),
    }
}
