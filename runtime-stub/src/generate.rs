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
