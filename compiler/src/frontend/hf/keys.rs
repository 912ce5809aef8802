//! Reading `config.json` keys: every read remembered (so no key goes unread), integers
//! bounded before anything is sized by them, and the keys known not to change what is
//! computed.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::config::{LAYER_KEYS, MAX_LAYERS, MAX_SIZE, MAX_WIDTH, WIDTH_KEYS};
use super::HfError;

/// Keys every model's `config.json` may hold that do not change what shardc
/// computes: bookkeeping, token ids, training-only settings (dropout, initialisation,
/// gradient tricks), generation defaults (shardc computes logits and greedy tokens;
/// sampling settings are the caller's), and settings transformers itself ignores.
pub(super) const INERT: &[&str] = &[
    // Bookkeeping.
    "_name_or_path",
    "_commit_hash",
    "architectures",
    "auto_map",
    "transformers_version",
    "model_type",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "finetuning_task",
    "task_specific_params",
    "tokenizer_class",
    "prefix",
    // Token ids (the tokenizer's business).
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "unk_token_id",
    "decoder_start_token_id",
    // Outputs and caching (what is returned, not what is computed).
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "torchscript",
    "cache_implementation",
    "attn_implementation",
    "_attn_implementation",
    "chunk_size_feed_forward",
    // transformers' decoder-only models attend causally whatever it says.
    "is_decoder",
    // Training only.
    "initializer_range",
    "initializer_factor",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "pretraining_tp",
    // Generation defaults.
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// Keys only some model types may hold without effect, and why.
pub(super) fn inert_for(model_type: &str) -> &'static [&'static str] {
    match model_type {
        // The double-heads model's summary head; the LM head does not use it.
        "gpt2" => &[
            "summary_activation",
            "summary_first_dropout",
            "summary_proj_to_labels",
            "summary_type",
            "summary_use_proj",
            // Attention upcast to f32, which shardc always computes in.
            "reorder_and_upcast_attn",
        ],
        // Megatron training settings transformers' BLOOM ignores; shardc computes in f32.
        "bloom" => &[
            "attention_softmax_in_fp32",
            "bias_dropout_fusion",
            "masked_softmax_fusion",
            "offset_alibi",
            "skip_bias_add",
            "skip_bias_add_qkv",
            "slow_but_exact",
            "n_inner",
        ],
        // nanotron's marker (SmolLM).
        "llama" => &["is_llama_config"],
        _ => &[],
    }
}

/// Reads a config object, remembering which keys were read.
pub(super) struct Keys<'a> {
    pub(super) file: PathBuf,
    pub(super) map: &'a Map<String, Value>,
    pub(super) used: RefCell<BTreeSet<String>>,
}

impl Keys<'_> {
    pub(super) fn err(&self, key: &str, message: String) -> HfError {
        HfError::ConfigKey { file: self.file.clone(), key: key.to_string(), message }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.used.borrow_mut().insert(key.to_string());
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(super) fn usize(&self, key: &str) -> Result<usize, HfError> {
        self.opt_usize(key)?.ok_or_else(|| self.err(key, "is missing".into()))
    }

    pub(super) fn opt_usize(&self, key: &str) -> Result<Option<usize>, HfError> {
        let limit = if LAYER_KEYS.contains(&key) {
            MAX_LAYERS
        } else if WIDTH_KEYS.contains(&key) {
            MAX_WIDTH
        } else {
            MAX_SIZE
        };
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.err(key, format!("must be a positive integer, is {v}")))?;
                if n > limit {
                    return Err(self.err(key, format!("{n} is more than the {limit} shardc accepts")));
                }
                Ok(Some(n))
            }
        }
    }

    pub(super) fn first_usize(&self, keys: &[&str]) -> Result<usize, HfError> {
        for k in keys {
            if let Some(v) = self.opt_usize(k)? {
                // The alternatives are the same setting under other names.
                for other in keys {
                    self.get(other);
                }
                return Ok(v);
            }
        }
        Err(self.err(keys[0], format!("is missing (also looked for {})", keys[1..].join(", "))))
    }

    pub(super) fn opt_f64(&self, key: &str) -> Result<Option<f64>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(key, format!("must be a number, is {v}"))),
        }
    }

    pub(super) fn f64_or(&self, key: &str, default: f64) -> Result<f64, HfError> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub(super) fn bool_or(&self, key: &str, default: bool) -> Result<bool, HfError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("must be true or false, is {v}"))),
        }
    }

    pub(super) fn str_or<'s>(&'s self, key: &str, default: &'s str) -> Result<&'s str, HfError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, format!("must be a string, is {v}"))),
        }
    }

    /// A key that must be absent, null, or equal to `allowed`.
    pub(super) fn require(&self, key: &str, allowed: &Value, what: &str) -> Result<(), HfError> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if v == allowed => Ok(()),
            Some(v) => Err(self.err(key, format!("{v} is not supported ({what})"))),
        }
    }

    /// Every key neither read nor known to be inert (nor ignored by the user) is an error.
    pub(super) fn check_all_read(&self, model_type: &str, ignore: &[String]) -> Result<(), HfError> {
        let used = self.used.borrow();
        let unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| {
                !used.contains(k.as_str())
                    && !INERT.contains(&k.as_str())
                    && !inert_for(model_type).contains(&k.as_str())
                    && !ignore.iter().any(|i| i == *k)
            })
            .collect();
        match unknown.first() {
            None => Ok(()),
            Some(k) => Err(self.err(
                k,
                format!(
                    "is not a key shardc knows for `{model_type}`, so it may change what the model computes; if it \
                     does not, pass --ignore-config-key {k}{}",
                    if unknown.len() > 1 {
                        format!(
                            " (other unknown keys: {})",
                            unknown[1..].iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    } else {
                        String::new()
                    }
                ),
            )),
        }
    }
}

/// What the rotary parser needs of the key reader.
pub(crate) struct KeysView<'a> {
    pub file: &'a Path,
    pub map: &'a Map<String, Value>,
    used: &'a RefCell<BTreeSet<String>>,
}

impl KeysView<'_> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.used.borrow_mut().insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn err(&self, key: &str, message: String) -> HfError {
        HfError::ConfigKey { file: self.file.to_path_buf(), key: key.to_string(), message }
    }
}

pub(super) fn keys_view<'a>(keys: &'a Keys) -> KeysView<'a> {
    KeysView { file: &keys.file, map: keys.map, used: &keys.used }
}

pub(super) fn divide(keys: &Keys, key: &str, hidden: usize, heads: usize) -> Result<usize, HfError> {
    if !hidden.is_multiple_of(heads) {
        return Err(keys.err(key, format!("{hidden} is not divisible by the head count {heads}")));
    }
    Ok(hidden / heads)
}

/// The context the graph supports: what the caller asks, at most the position limit.
pub(super) fn context(keys: &Keys, asked: Option<usize>, max_positions: usize) -> Result<usize, HfError> {
    match asked {
        Some(c) if c > max_positions => Err(keys.err(
            if keys.map.contains_key("max_position_embeddings") { "max_position_embeddings" } else { "n_positions" },
            format!("the model supports {max_positions} positions, {c} were asked for"),
        )),
        Some(c) => Ok(c),
        None => Ok(max_positions),
    }
}
