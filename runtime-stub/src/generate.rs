//! Token-level driving of a model — one [`Session`] or a [`crate::pipeline::Pipeline`]
//! of stages: logits of a prompt, greedy generation re-running the prefix (graphs
//! without a KV cache) or feeding one token and the cache (graphs with one).
//!
//! Inputs and outputs are named as the graph names them; what is a KV cache is the
//! graph's typed facts ([`shardc_ir::CachePair`]): each past input is fed from its
//! present output of the previous step. The token input is the one i64 `[batch, seq]`
//! input that is not a cache; the logits are the first output that is not a cache.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use shardc_ir::{DType, Graph, TensorType};

use crate::{RuntimeError, Session, Tensor};

/// One KV-cache entry of a graph, by name.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheEntry {
    /// The input holding the entries of earlier steps.
    pub past: String,
    /// The output holding them with this step's added: the next step's past.
    pub present: String,
    /// Shape of an empty cache for one request: the sequence axis 0, other symbolic
    /// dims (the batch) 1.
    pub empty_shape: Vec<usize>,
}

/// The KV-cache entries of a graph, from its cache facts.
pub fn cache_entries(g: &Graph) -> Vec<CacheEntry> {
    g.cache
        .iter()
        .map(|c| {
            let past = g.value(c.past);
            let empty_shape = past.ty.as_ref().map_or(Vec::new(), |t| {
                t.shape
                    .iter()
                    .enumerate()
                    .map(|(i, d)| if i == c.axis { 0 } else { d.as_known().map_or(1, |n| n.max(0) as usize) })
                    .collect()
            });
            CacheEntry { past: past.name.clone(), present: g.value(c.present).name.clone(), empty_shape }
        })
        .collect()
}

/// Something that runs a model: named inputs in, named outputs out.
pub trait Runner {
    /// Inputs the caller provides, with their types.
    fn inputs(&self) -> Vec<(String, Option<TensorType>)>;
    /// Outputs the caller receives, in order.
    fn outputs(&self) -> Vec<String>;
    /// The KV-cache entries among those inputs and outputs.
    fn cache(&self) -> Vec<CacheEntry>;
    /// The context past which the cache is recomputed (`Graph::recompute_beyond`).
    fn recompute_beyond(&self) -> Option<u64>;
    /// The longest context the model serves, when it says (`Graph::max_context`).
    fn max_context(&self) -> Option<u64>;
    /// Run once.
    fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RuntimeError>;
}

impl Runner for Session {
    fn inputs(&self) -> Vec<(String, Option<TensorType>)> {
        let g = self.graph();
        g.inputs.iter().map(|&v| (g.value(v).name.clone(), g.value(v).ty.clone())).collect()
    }
    fn outputs(&self) -> Vec<String> {
        let g = self.graph();
        g.outputs.iter().map(|&v| g.value(v).name.clone()).collect()
    }
    fn cache(&self) -> Vec<CacheEntry> {
        cache_entries(self.graph())
    }
    fn recompute_beyond(&self) -> Option<u64> {
        self.graph().recompute_beyond
    }
    fn max_context(&self) -> Option<u64> {
        self.graph().max_context
    }
    fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        Session::run(self, inputs)
    }
}

/// Logits of every position for one sequence: `[seq, vocab]` flattened row-major,
/// with the vocabulary size.
pub struct Logits {
    pub values: Vec<f32>,
    pub vocab: usize,
}

impl Logits {
    /// The logits of the last position.
    pub fn last(&self) -> &[f32] {
        &self.values[self.values.len() - self.vocab..]
    }
}

/// The name of the token input: the one i64 `[batch, seq]` input that is not a cache.
pub fn ids_input(model: &dyn Runner) -> Result<String, RuntimeError> {
    let cache: Vec<String> = model.cache().into_iter().map(|c| c.past).collect();
    let inputs: Vec<(String, Option<TensorType>)> =
        model.inputs().into_iter().filter(|(n, _)| !cache.contains(n)).collect();
    let bad = |name: &str, message: String| RuntimeError::Input { name: name.to_string(), message };
    match inputs.as_slice() {
        [(name, ty)] => match ty {
            Some(t) if t.dtype == DType::I64 && t.rank() == 2 => Ok(name.clone()),
            _ => Err(bad(name, "token generation needs an i64 [batch, seq] input".into())),
        },
        inputs => Err(bad(
            &inputs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>().join(", "),
            format!(
                "token generation needs exactly one token input besides the KV cache; the model has {}",
                inputs.len()
            ),
        )),
    }
}

fn ids_tensor(name: &str, ids: &[i64]) -> Result<Tensor, RuntimeError> {
    if ids.is_empty() {
        return Err(RuntimeError::Input { name: name.to_string(), message: "no token ids given".into() });
    }
    ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec())
        .map(Tensor::i64)
        .map_err(|e| RuntimeError::Input { name: name.to_string(), message: e.to_string() })
}

/// Pick the logits (the first output that is not a cache) out of a run's outputs and
/// check their shape.
fn take_logits(
    model: &dyn Runner,
    outputs: &mut HashMap<String, Tensor>,
    tokens: usize,
) -> Result<Logits, RuntimeError> {
    let cache: Vec<String> = model.cache().into_iter().map(|c| c.present).collect();
    let name = model.outputs().into_iter().find(|n| !cache.contains(n)).unwrap_or_default();
    let logits = outputs.remove(&name).ok_or_else(|| RuntimeError::Input {
        name: "(logits)".into(),
        message: "the model has no logits output".into(),
    })?;
    let bad = |message: String| RuntimeError::Input { name: name.clone(), message };
    let described = logits.describe();
    let (shape, values) =
        logits.into_f32_values().ok_or_else(|| bad(format!("expected float logits, got {described}")))?;
    if shape.len() != 3 || shape[0] != 1 || shape[1] != tokens {
        return Err(bad(format!("expected logits [1, {tokens}, vocab], got {shape:?}")));
    }
    Ok(Logits { values, vocab: shape[2] })
}

/// The longest context run for a model that does not state its own (an ONNX export).
pub const UNSTATED_MAX_CONTEXT: u64 = 8192;

/// A prompt of `prompt` tokens followed by `new` generated tokens must fit the context
/// `limit` the model serves ([`UNSTATED_MAX_CONTEXT`] when it does not say): checked
/// before anything is computed or allocated for the tokens.
pub fn check_context(limit: Option<u64>, prompt: usize, new: usize) -> Result<(), RuntimeError> {
    let (max, whose) = match limit {
        Some(n) => (n, "the context the model serves"),
        None => (UNSTATED_MAX_CONTEXT, "the context shardc runs for a model that does not state its own"),
    };
    let total = (prompt as u128) + (new as u128);
    if prompt == 0 {
        return Err(RuntimeError::Context("the prompt is empty: give at least one token id".into()));
    }
    if total > u128::from(max) {
        // A step past the context would index past the position tables (or be unplanned).
        return Err(RuntimeError::Context(format!(
            "a prompt of {prompt} tokens and {new} new tokens need a context of {total}, more than {max}, {whose} \
             (fewer --input-ids or --max-new-tokens; a checkpoint compiled with a longer --max-context serves more)"
        )));
    }
    Ok(())
}

/// Run the prompt through a model without a cache and return its logits.
pub fn logits(model: &dyn Runner, ids: &[i64]) -> Result<Logits, RuntimeError> {
    check_context(model.max_context(), ids.len(), 0)?;
    let name = ids_input(model)?;
    let input = ids_tensor(&name, ids)?;
    let mut outputs: HashMap<String, Tensor> = model.run(vec![(name, input)])?.into_iter().collect();
    take_logits(model, &mut outputs, ids.len())
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The `k` largest values with their indices, largest first.
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// Greedy continuation of `prompt` by `n` tokens, re-running the prefix each step.
pub fn greedy(model: &dyn Runner, prompt: &[i64], n: usize) -> Result<Vec<i64>, RuntimeError> {
    check_context(model.max_context(), prompt.len(), n)?;
    let mut ids = prompt.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let l = logits(model, &ids)?;
        let next = argmax(l.last()) as i64;
        out.push(next);
        ids.push(next);
    }
    Ok(out)
}

/// A model's KV cache: each cache input, the output that feeds it, and its empty shape.
#[derive(Clone, Debug)]
pub struct CacheLayout {
    /// The token input.
    pub ids: String,
    /// (input name, present output name, empty-cache shape with batch 1).
    pub entries: Vec<(String, String, Vec<usize>)>,
    /// The step that first takes the context beyond this starts over with every token.
    pub recompute_beyond: Option<u64>,
}

impl CacheLayout {
    /// The cache layout of a model, if it has cache inputs.
    pub fn of(model: &dyn Runner) -> Result<Option<CacheLayout>, RuntimeError> {
        let entries: Vec<(String, String, Vec<usize>)> =
            model.cache().into_iter().map(|c| (c.past, c.present, c.empty_shape)).collect();
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(CacheLayout { ids: ids_input(model)?, entries, recompute_beyond: model.recompute_beyond() }))
    }
}

/// An empty cache (batch 1, no past) for `layout`.
pub fn empty_cache(layout: &CacheLayout) -> Vec<Tensor> {
    layout.entries.iter().map(|(_, _, shape)| Tensor::f32(ArrayD::zeros(IxDyn(shape)))).collect()
}

/// One step of a cached model: feed `ids` (the prompt, then one token at a time) and
/// the cache; returns the logits of every fed position and the new cache.
pub fn cached_step(
    model: &dyn Runner,
    layout: &CacheLayout,
    ids: &[i64],
    cache: Vec<Tensor>,
) -> Result<(Logits, Vec<Tensor>), RuntimeError> {
    let mut inputs = vec![(layout.ids.clone(), ids_tensor(&layout.ids, ids)?)];
    inputs.extend(layout.entries.iter().map(|(n, _, _)| n.clone()).zip(cache));
    let mut outputs: HashMap<String, Tensor> = model.run(inputs)?.into_iter().collect();
    let next_cache = layout
        .entries
        .iter()
        .map(|(n, present, _)| {
            outputs.remove(present).ok_or_else(|| RuntimeError::Input {
                name: n.clone(),
                message: format!("`{present}` was not produced"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let logits = take_logits(model, &mut outputs, ids.len())?;
    Ok((logits, next_cache))
}

/// Prefill logits (every position) of a cached model, with an empty cache.
pub fn cached_prefill(model: &dyn Runner, layout: &CacheLayout, ids: &[i64]) -> Result<Logits, RuntimeError> {
    check_context(model.max_context(), ids.len(), 0)?;
    Ok(cached_step(model, layout, ids, empty_cache(layout))?.0)
}

/// Whether a step that feeds `fed` tokens after `past` cached ones must start over
/// from an empty cache with every token: it is the first to take the context past
/// `recompute_beyond` (`Graph::recompute_beyond`).
pub fn recomputes(recompute_beyond: Option<u64>, past: usize, fed: usize) -> bool {
    recompute_beyond.is_some_and(|n| past > 0 && past as u64 <= n && (past + fed) as u64 > n)
}

/// Greedy continuation with the KV cache: one prefill step over the prompt, then each
/// decode step feeds only the last token and the cache — except the step that first
/// takes the context past `recompute_beyond`, which feeds every token to an empty cache.
pub fn greedy_cached(
    model: &dyn Runner,
    layout: &CacheLayout,
    prompt: &[i64],
    n: usize,
) -> Result<Vec<i64>, RuntimeError> {
    check_context(model.max_context(), prompt.len(), n)?;
    let mut out = Vec::with_capacity(n);
    let mut cache = empty_cache(layout);
    let mut all = prompt.to_vec();
    let mut feed = prompt.to_vec();
    let mut past = 0;
    for _ in 0..n {
        if recomputes(layout.recompute_beyond, past, feed.len()) {
            feed = all.clone();
            cache = empty_cache(layout);
            past = 0;
        }
        let (logits, next_cache) = cached_step(model, layout, &feed, cache)?;
        cache = next_cache;
        past += feed.len();
        let next = argmax(logits.last()) as i64;
        out.push(next);
        all.push(next);
        feed = vec![next];
    }
    Ok(out)
}
