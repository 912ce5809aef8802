//! Token-level helpers over a `input_ids [batch, seq] -> logits [batch, seq, vocab]`
//! graph without KV cache: logits of a prompt, and greedy generation that re-runs the
//! whole prefix at every step.

use ndarray::{ArrayD, IxDyn};
use shardc_ir::DType;

use crate::{RuntimeError, Session, Tensor};

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

/// The name of the graph's only input, which must be an i64 `[batch, seq]` tensor.
pub fn ids_input(session: &Session) -> Result<String, RuntimeError> {
    let g = session.graph();
    let bad = |name: &str, message: String| RuntimeError::Input { name: name.to_string(), message };
    match g.inputs.as_slice() {
        [id] => {
            let v = g.value(*id);
            match &v.ty {
                Some(t) if t.dtype == DType::I64 && t.rank() == 2 => Ok(v.name.clone()),
                _ => Err(bad(&v.name, "token generation needs an i64 [batch, seq] input".into())),
            }
        }
        inputs => Err(bad(
            &inputs.iter().map(|&v| g.value(v).name.clone()).collect::<Vec<_>>().join(", "),
            format!("token generation needs exactly one input (input_ids); the graph has {}", inputs.len()),
        )),
    }
}

/// Run the prompt and return its logits.
pub fn logits(session: &Session, ids: &[i64]) -> Result<Logits, RuntimeError> {
    let name = ids_input(session)?;
    if ids.is_empty() {
        return Err(RuntimeError::Input { name, message: "no token ids given".into() });
    }
    let input = ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec())
        .map_err(|e| RuntimeError::Input { name: name.clone(), message: e.to_string() })?;
    let outputs = session.run(vec![(name, Tensor::i64(input))])?;
    let (out_name, logits) = outputs.into_iter().next().ok_or_else(|| RuntimeError::Input {
        name: "logits".into(),
        message: "the graph has no output".into(),
    })?;
    let shape = logits.shape().to_vec();
    let bad = |message: String| RuntimeError::Input { name: out_name.clone(), message };
    let values = logits.as_f32().ok_or_else(|| bad(format!("expected float logits, got {}", logits.describe())))?;
    if shape.len() != 3 || shape[0] != 1 || shape[1] != ids.len() {
        return Err(bad(format!("expected logits [1, {}, vocab], got {shape:?}", ids.len())));
    }
    Ok(Logits { values: values.iter().copied().collect(), vocab: shape[2] })
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
pub fn greedy(session: &Session, prompt: &[i64], n: usize) -> Result<Vec<i64>, RuntimeError> {
    let mut ids = prompt.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let l = logits(session, &ids)?;
        let next = argmax(l.last()) as i64;
        out.push(next);
        ids.push(next);
    }
    Ok(out)
}

/// How a graph with a KV cache names its cache: each `past_key_values.{i}.key|value`
/// input is fed from the `present.{i}.key|value` output of the previous step.
#[derive(Clone, Debug)]
pub struct CacheLayout {
    /// (input name, index among the graph outputs, empty-cache shape with batch 1).
    pub entries: Vec<(String, usize, Vec<usize>)>,
}

impl CacheLayout {
    /// The cache layout of a session's graph, if it has past inputs.
    pub fn of(session: &Session) -> Result<Option<CacheLayout>, RuntimeError> {
        let g = session.graph();
        let mut entries = Vec::new();
        for &input in &g.inputs {
            let value = g.value(input);
            let Some(rest) = value.name.strip_prefix("past_key_values.") else { continue };
            let present = format!("present.{rest}");
            let bad = |message: String| RuntimeError::Input { name: value.name.clone(), message };
            let out = g
                .outputs
                .iter()
                .position(|&o| g.value(o).name == present)
                .ok_or_else(|| bad(format!("no `{present}` output feeds this cache input")))?;
            let ty = value.ty.as_ref().ok_or_else(|| bad("has no type".into()))?;
            // Batch 1, nothing cached yet: every symbolic dim becomes 1 except `past`.
            let shape = ty
                .shape
                .iter()
                .map(|d| match d.as_known() {
                    Some(n) => Ok(n as usize),
                    None if d.symbols() == ["past"] => Ok(0),
                    None if d.symbols() == ["batch"] => Ok(1),
                    None => Err(bad(format!("cache dim `{d}` is neither known, batch nor past"))),
                })
                .collect::<Result<_, _>>()?;
            entries.push((value.name.clone(), out, shape));
        }
        Ok(if entries.is_empty() { None } else { Some(CacheLayout { entries }) })
    }
}

/// One step of a cached graph: feed `ids` (the prompt, then one token at a time) and
/// the cache; returns the last position's logits and the new cache.
pub fn cached_step(
    session: &Session,
    layout: &CacheLayout,
    ids: &[i64],
    cache: Vec<Tensor>,
) -> Result<(Vec<f32>, Vec<Tensor>), RuntimeError> {
    let name = "input_ids".to_string();
    let input = ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec())
        .map_err(|e| RuntimeError::Input { name: name.clone(), message: e.to_string() })?;
    let mut inputs = vec![(name, Tensor::i64(input))];
    inputs.extend(layout.entries.iter().map(|(n, _, _)| n.clone()).zip(cache));
    let mut outputs: Vec<Option<(String, Tensor)>> = session.run(inputs)?.into_iter().map(Some).collect();
    let next_cache = layout
        .entries
        .iter()
        .map(|(n, out, _)| {
            outputs[*out].take().map(|(_, t)| t).ok_or_else(|| RuntimeError::Input { name: n.clone(), message: "cache output used twice".into() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (logits_name, logits) = outputs[0].take().ok_or_else(|| RuntimeError::Input { name: "logits".into(), message: "missing".into() })?;
    let values = logits
        .as_f32()
        .ok_or_else(|| RuntimeError::Input { name: logits_name.clone(), message: format!("expected float logits, got {}", logits.describe()) })?;
    let shape = values.shape();
    if shape.len() != 3 || shape[1] != ids.len() {
        return Err(RuntimeError::Input { name: logits_name, message: format!("expected logits [1, {}, vocab], got {shape:?}", ids.len()) });
    }
    let vocab = shape[2];
    let flat: Vec<f32> = values.iter().copied().collect();
    Ok((flat[flat.len() - vocab..].to_vec(), next_cache))
}

/// An empty cache (batch 1, no past) for `layout`.
pub fn empty_cache(layout: &CacheLayout) -> Vec<Tensor> {
    layout.entries.iter().map(|(_, _, shape)| Tensor::f32(ArrayD::zeros(IxDyn(shape)))).collect()
}

/// Prefill logits (every position) of a cached graph, with an empty cache.
pub fn cached_prefill(session: &Session, layout: &CacheLayout, ids: &[i64]) -> Result<Logits, RuntimeError> {
    let name = "input_ids".to_string();
    let input = ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec())
        .map_err(|e| RuntimeError::Input { name: name.clone(), message: e.to_string() })?;
    let mut inputs = vec![(name, Tensor::i64(input))];
    inputs.extend(layout.entries.iter().map(|(n, _, _)| n.clone()).zip(empty_cache(layout)));
    let outputs = session.run(inputs)?;
    let (_, logits) = outputs.into_iter().next().ok_or_else(|| RuntimeError::Input { name: "logits".into(), message: "missing".into() })?;
    let vocab = *logits.shape().last().unwrap_or(&0);
    Ok(Logits { values: logits.to_f32_vec(), vocab })
}

/// Greedy continuation with the KV cache: one prefill step over the prompt, then each
/// decode step feeds only the last token and the cache.
pub fn greedy_cached(session: &Session, layout: &CacheLayout, prompt: &[i64], n: usize) -> Result<Vec<i64>, RuntimeError> {
    let mut out = Vec::with_capacity(n);
    let mut cache = empty_cache(layout);
    let mut feed = prompt.to_vec();
    for _ in 0..n {
        let (last, next_cache) = cached_step(session, layout, &feed, cache)?;
        cache = next_cache;
        let next = argmax(&last) as i64;
        out.push(next);
        feed = vec![next];
    }
    Ok(out)
}
