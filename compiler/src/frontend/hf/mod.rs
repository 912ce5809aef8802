//! Hugging Face checkpoint frontend: a checkpoint folder (`config.json` plus
//! `model.safetensors`, or shards with `model.safetensors.index.json`), or a bare
//! `config.json`, lowered straight into the IR — without PyTorch and without reading a
//! weight: safetensors headers give every tensor's dtype, shape and byte range.
//!
//! The lowered graph carries a KV cache. Inputs: `input_ids [batch, seq]` and, per
//! layer `i`, `past_key_values.{i}.key` / `.value` `[batch, kv_heads, past, head_dim]`;
//! outputs: `logits [batch, seq, vocab]` and `present.{i}.key` / `.value`
//! `[batch, kv_heads, past+seq, head_dim]`. `past = 0` is the prefill; the same graph
//! serves decode steps. Weights stored as f16 or bf16 are cast to f32 on use.

mod bloom;
mod builder;
pub mod config;
mod error;
mod gpt2;
mod keys;
mod layers;
mod llama;
pub mod rope;
pub mod safetensors;
pub mod sparse;

use std::path::{Path, PathBuf};

use shardc_ir::ops::*;
use shardc_ir::{CachePair, DType, Dim, Graph, Op, Unit, ValueId};

use builder::Builder;
pub use config::{Arch, Family};
pub use error::HfError;
use safetensors::Checkpoint;
pub use safetensors::Digest;

/// Lowering options.
#[derive(Clone, Debug, Default)]
pub struct LowerOptions {
    /// The longest context the graph must serve (default: what the model supports).
    pub max_context: Option<usize>,
    /// `config.json` keys the user says do not change the model (`--ignore-config-key`).
    pub ignore_config_keys: Vec<String>,
}

/// A lowered checkpoint.
#[derive(Debug)]
pub struct HfModel {
    pub graph: Graph,
    pub arch: Arch,
    /// The checkpoint folder (weight files are relative to it).
    pub dir: PathBuf,
    /// False for a bare `config.json`: weights have dtype and shape but no file.
    pub has_weights: bool,
    /// The safetensors files read.
    pub files: Vec<String>,
    /// What was read, by content: `config.json`, the index of a sharded checkpoint, and
    /// the header of each safetensors file.
    pub config: Digest,
    pub index: Option<Digest>,
    pub headers: Vec<Digest>,
    /// Checkpoint tensors the lowering does not use.
    pub unused_tensors: Vec<String>,
}

/// Names of the KV-cache inputs and outputs of layer `i`.
pub fn past_names(i: usize) -> (String, String) {
    (format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value"))
}

/// Names of the present KV-cache outputs of layer `i`.
pub fn present_names(i: usize) -> (String, String) {
    (format!("present.{i}.key"), format!("present.{i}.value"))
}

/// Lower a checkpoint folder, or a bare `config.json` (shape-only).
pub fn lower(path: &Path, options: &LowerOptions) -> Result<HfModel, HfError> {
    let (dir, config_file, shape_only) = if path.is_dir() {
        let config = path.join("config.json");
        if !config.is_file() {
            return Err(HfError::NoConfig { dir: path.to_path_buf() });
        }
        (path.to_path_buf(), config, false)
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, path.to_path_buf(), true)
    };
    let text = shardc_format::files::read_text(&config_file)
        .map_err(|e| HfError::Io { file: config_file.clone(), source: e })?;
    let config_digest = Digest {
        file: config_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        bytes: text.len() as u64,
        blake3: blake3::hash(text.as_bytes()).to_hex().to_string(),
    };
    let arch = config::parse_text(&config_file, &text, options.max_context, &options.ignore_config_keys)?;
    let checkpoint = if shape_only { None } else { Some(safetensors::read_checkpoint(&dir)?) };
    if let Some(c) = &checkpoint {
        // Every layer has weights: a layer count beyond the tensors present is wrong,
        // and is refused before a graph of that many layers is built.
        if arch.layers > c.tensors.len() {
            return Err(HfError::ConfigKey {
                file: config_file.clone(),
                key: "num_hidden_layers".into(),
                message: format!("{} layers, but the checkpoint holds only {} tensors", arch.layers, c.tensors.len()),
            });
        }
    }
    let mut b = Builder::new(&arch.model_type, checkpoint.as_ref(), dir.clone(), arch.dtype);
    let common = prologue(&mut b, &arch);
    // Each lowering registers the logits and present KV outputs itself.
    match arch.family {
        Family::Gpt2 => gpt2::lower(&mut b, &arch, &common)?,
        Family::Llama => llama::lower(&mut b, &arch, &common)?,
        Family::Bloom => bloom::lower(&mut b, &arch, &common)?,
    };
    // Phi-3's longrope frequencies change once the context passes its original length;
    // transformers' Phi-3 generation then recomputes the cache from every token (other
    // models keep the entries cached with the short factors).
    b.graph.max_context = Some(arch.max_context as u64);
    if arch.model_type == "phi3" {
        b.graph.recompute_beyond = arch
            .ropes
            .iter()
            .filter_map(|r| match r.inv_freq {
                config::InvFreq::Switch { threshold, .. } => Some(threshold as u64),
                config::InvFreq::Fixed(_) => None,
            })
            .min();
    }
    let used = std::mem::take(&mut b.used);
    let graph = b.graph;
    shardc_ir::verify(&graph)?;
    let unused_tensors: Vec<String> = checkpoint
        .as_ref()
        .map(|c: &Checkpoint| c.tensors.keys().filter(|k| !used.contains(*k)).cloned().collect())
        .unwrap_or_default();
    // A tensor the lowering does not read may be part of the model it does not know
    // (a norm, a bias): refused, except what transformers itself does not load.
    if let Some(t) = unused_tensors.iter().find(|t| !ignorable_tensor(&arch, t)) {
        return Err(HfError::Tensor {
            dir: dir.clone(),
            tensor: t.clone(),
            message: format!(
                "is in the checkpoint but not part of a `{}` model as its config.json describes it; a model that \
                 uses it would compute something else",
                arch.model_type
            ),
        });
    }
    Ok(HfModel {
        graph,
        arch,
        dir,
        has_weights: !shape_only,
        config: config_digest,
        index: checkpoint.as_ref().and_then(|c| c.index.clone()),
        headers: checkpoint.as_ref().map(|c| c.headers.clone()).unwrap_or_default(),
        files: checkpoint.map(|c| c.files).unwrap_or_default(),
        unused_tensors,
    })
}

/// Checkpoint tensors a model of `arch` may hold without using them: buffers older
/// exports saved (rotary frequencies, GPT-2's attention masks), and a head that tied
/// embeddings replace.
fn ignorable_tensor(arch: &Arch, name: &str) -> bool {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    (name.ends_with("rotary_emb.inv_freq"))
        || (arch.family == Family::Gpt2 && (leaf == "masked_bias" || (leaf == "bias" && name.contains(".attn.bias"))))
        || (arch.tie_embeddings && name == "lm_head.weight")
}

/// What every architecture's layers share.
pub(crate) struct Common {
    pub ids: ValueId,
    /// Per layer: past key and value inputs.
    pub past: Vec<(ValueId, ValueId)>,
    /// Positions of the new tokens, `past .. past+seq` (i64 `[seq]`).
    pub positions: ValueId,
    /// Positions of every key, `0 .. past+seq` (i64 `[past+seq]`).
    pub key_positions: ValueId,
    /// Keys in the cache after this step, `past + seq` (i64 scalar).
    pub total: ValueId,
    /// Additive causal mask `[seq, past+seq]`: 0 where a query may attend, f32 min
    /// elsewhere.
    pub full_mask: ValueId,
    /// The same within each sliding window the layers use.
    pub window_masks: std::collections::BTreeMap<usize, ValueId>,
}

impl Common {
    /// The mask of layer `i` (the prologue builds one for every window).
    pub fn mask(&self, arch: &Arch, layer: usize) -> ValueId {
        let window = arch.layer_attention.get(layer).and_then(|l| l.window);
        window.and_then(|w| self.window_masks.get(&w)).copied().unwrap_or(self.full_mask)
    }
}

/// How one attention scores.
pub(crate) struct AttnOptions {
    /// Factor on `q · k`.
    pub scale: f64,
    /// `tanh(s / c) · c` on the scaled scores.
    pub softcap: Option<f64>,
    /// Added to the scores before the mask (ALiBi).
    pub bias: Option<ValueId>,
}

fn prologue(b: &mut Builder, arch: &Arch) -> Common {
    let batch = Dim::sym("batch");
    let ids = b.input("input_ids", DType::I64, vec![batch.clone(), Dim::sym("seq")]);
    let mut past = Vec::with_capacity(arch.layers);
    for i in 0..arch.layers {
        let dims =
            vec![batch.clone(), Dim::known(arch.kv_heads as i64), Dim::sym("past"), Dim::known(arch.head_dim as i64)];
        let (k, v) = past_names(i);
        let kv = b.input(&k, DType::F32, dims.clone());
        let vv = b.input(&v, DType::F32, dims);
        past.push((kv, vv));
    }
    b.scoped("model/positions", |b| {
        let shape = b.op("Shape", Op::Shape(Shape { start: 0, end: None }), &[ids]);
        b.batch_seq = Some(shape);
        let one_idx = b.ints("seq_index", &[], &[1]);
        let seq = b.op("Gather", Op::Gather(Gather { axis: 0 }), &[shape, one_idx]);
        let past_shape = b.op("Shape_past", Op::Shape(Shape { start: 2, end: Some(3) }), &[past[0].0]);
        let zero_idx = b.ints("past_index", &[], &[0]);
        let past_len = b.op("Gather_past", Op::Gather(Gather { axis: 0 }), &[past_shape, zero_idx]);
        let total = b.op("Add", Op::Add(Add {}), &[past_len, seq]);
        let one = b.ints("one", &[], &[1]);
        let positions = b.op("Range", Op::Range(Range {}), &[past_len, total, one]);
        let zero = b.ints("zero", &[], &[0]);
        let key_positions = b.op("Range_keys", Op::Range(Range {}), &[zero, total, one]);
        let axes = b.ints("axes", &[1], &[1]);
        let query_col = b.op("Unsqueeze", Op::Unsqueeze(Unsqueeze {}), &[positions, axes]);
        let future = b.op("Greater", Op::Greater(Greater {}), &[key_positions, query_col]);
        let min = b.scalar("masked", f64::from(f32::MIN));
        let open = b.scalar("open", 0.0);
        let full_mask = b.op("Where", Op::Where(Where {}), &[future, min, open]);
        let mut window_masks = std::collections::BTreeMap::new();
        // Sliding windows: key j is seen from query i when i - window < j <= i.
        let windows: std::collections::BTreeSet<usize> = arch.layer_attention.iter().filter_map(|l| l.window).collect();
        for w in windows {
            let width = b.ints(&format!("window_{w}"), &[], &[w as i64]);
            let oldest = b.op(&format!("Sub_window_{w}"), Op::Sub(Sub {}), &[query_col, width]);
            let too_old =
                b.op(&format!("LessOrEqual_window_{w}"), Op::LessOrEqual(LessOrEqual {}), &[key_positions, oldest]);
            let hidden = b.op(&format!("Or_window_{w}"), Op::Or(Or {}), &[future, too_old]);
            window_masks.insert(w, b.op(&format!("Where_window_{w}"), Op::Where(Where {}), &[hidden, min, open]));
        }
        Common { ids, past, positions, key_positions, total, full_mask, window_masks }
    })
}

/// Attention over the new keys and values appended to the cache, for layer `i`:
/// returns the context `[batch, heads, seq, head_dim]` and registers the present
/// key and value as graph outputs (and their cache pair).
pub(crate) fn attention(
    b: &mut Builder,
    arch: &Arch,
    common: &Common,
    layer: usize,
    (q, k, v): (ValueId, ValueId, ValueId),
    opts: &AttnOptions,
) -> ValueId {
    let (past_k, past_v) = common.past[layer];
    let concat = || Op::Concat(Concat { axis: 2 });
    let present_k = b.op("Concat_key", concat(), &[past_k, k]);
    let present_v = b.op("Concat_value", concat(), &[past_v, v]);
    let (pk, pv) = present_names(layer);
    b.output(present_k, &pk);
    b.output(present_v, &pv);
    b.graph.cache.push(CachePair { past: past_k, present: present_k, axis: 2 });
    b.graph.cache.push(CachePair { past: past_v, present: present_v, axis: 2 });
    let rep = arch.heads / arch.kv_heads;
    let (q, keys, values) = if rep == 1 {
        (q, present_k, present_v)
    } else {
        // Grouped-query attention without copying the cache: queries as
        // [batch, kv_heads, rep, seq, dim] against keys broadcast over `rep`.
        let target = b.ints("grouped_shape", &[5], &[0, arch.kv_heads as i64, rep as i64, -1, arch.head_dim as i64]);
        let q5 = b.op("Reshape_grouped", Op::Reshape(Reshape { allowzero: 0 }), &[q, target]);
        let axis = b.ints("group_axis", &[1], &[2]);
        let k5 = b.op("Unsqueeze_key", Op::Unsqueeze(Unsqueeze {}), &[present_k, axis]);
        let v5 = b.op("Unsqueeze_value", Op::Unsqueeze(Unsqueeze {}), &[present_v, axis]);
        (q5, k5, v5)
    };
    let rank = if rep == 1 { 4 } else { 5 };
    let mut perm: Vec<i64> = (0..rank).collect();
    perm.swap(rank as usize - 1, rank as usize - 2);
    let kt = b.op("Transpose_key", Op::Transpose(Transpose { perm: Some(perm) }), &[keys]);
    let scores = b.op("MatMul_scores", Op::MatMul(MatMul {}), &[q, kt]);
    let s = b.scalar("scale", opts.scale);
    let mut scores = b.op("Mul_scale", Op::Mul(Mul {}), &[scores, s]);
    if let Some(cap) = opts.softcap {
        let c = b.scalar("softcap", cap);
        let d = b.op("Div_softcap", Op::Div(Div {}), &[scores, c]);
        let t = b.op("Tanh_softcap", Op::Tanh(Tanh {}), &[d]);
        scores = b.op("Mul_softcap", Op::Mul(Mul {}), &[t, c]);
    }
    if let Some(bias) = opts.bias {
        scores = b.op("Add_bias", Op::Add(Add {}), &[scores, bias]);
    }
    let masked = b.op("Add_mask", Op::Add(Add {}), &[scores, common.mask(arch, layer)]);
    let probs = b.op("Softmax", Op::Softmax(Softmax { axis: -1 }), &[masked]);
    let ctx = b.op("MatMul_context", Op::MatMul(MatMul {}), &[probs, values]);
    if rep == 1 {
        ctx
    } else {
        let target = b.ints("heads_shape_4d", &[4], &[0, arch.heads as i64, -1, arch.head_dim as i64]);
        b.op("Reshape_heads", Op::Reshape(Reshape { allowzero: 0 }), &[ctx, target])
    }
}

/// The LM head: `hidden → logits` with `lm_head.weight`, or the embedding when tied.
pub(crate) fn lm_head(b: &mut Builder, arch: &Arch, x: ValueId, embedding: &str) -> Result<ValueId, HfError> {
    b.unit = Unit::Head;
    let weight = if arch.tie_embeddings { embedding } else { "lm_head.weight" };
    let mut logits = b.scoped("lm_head", |b| b.linear("linear", x, weight, None, (arch.hidden, arch.vocab), true))?;
    if let Some(cap) = arch.final_softcap {
        logits = b.scoped("lm_head", |b| {
            let c = b.scalar("softcap", cap);
            let d = b.op("Div_softcap", Op::Div(Div {}), &[logits, c]);
            let t = b.op("Tanh_softcap", Op::Tanh(Tanh {}), &[d]);
            b.op("Mul_softcap", Op::Mul(Mul {}), &[t, c])
        });
    }
    b.output(logits, "logits");
    // `logits` must come first among the outputs.
    let last = b.graph.outputs.pop();
    if let Some(v) = last {
        b.graph.outputs.insert(0, v);
    }
    Ok(logits)
}
