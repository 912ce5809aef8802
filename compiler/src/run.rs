//! `shardc run MODEL --inputs FILE --outputs FILE`: any graph, every input by name from
//! a safetensors file, every output by name into one.
//!
//! Tensors are read and written with the `safetensors` crate. Dtypes safetensors
//! lacks (`i4`, `u4`, `f4e2m1`, `f8e4m3fnuz`, `f8e5m2fnuz`) travel as their ONNX bytes
//! (4-bit elements packed two to a byte, low nibble first): a `U8` tensor of shape
//! `[bytes]`, with `__metadata__` entry `shardc.dtype.NAME` = `i4[3, 4]` giving the
//! dtype and shape as the text IR spells them. The same convention serves compiled
//! `weights.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use shardc_ir::{DType, Dim, Graph, TensorData, TensorType};
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::{Session, Tensor};

/// Largest tensor file `run` reads (a bound before anything is allocated).
pub const MAX_TENSOR_FILE: u64 = 16 << 30;

/// Inputs up to this many elements are handed to shape inference as known values.
const KNOWN_INPUT_ELEMENTS: usize = 64;

/// Why a run could not read its inputs, run, or write its outputs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("{}: tensor `{tensor}`: {message}", file.display())]
    Tensor { file: PathBuf, tensor: String, message: String },
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Pass(#[from] shardc_passes::PassError),
    #[error(transparent)]
    Runtime(#[from] shardc_runtime::RuntimeError),
}

fn st_dtype(dtype: DType) -> Option<StDtype> {
    Some(match dtype.safetensors_name()? {
        "F32" => StDtype::F32,
        "F16" => StDtype::F16,
        "BF16" => StDtype::BF16,
        "F64" => StDtype::F64,
        "I8" => StDtype::I8,
        "I16" => StDtype::I16,
        "I32" => StDtype::I32,
        "I64" => StDtype::I64,
        "U8" => StDtype::U8,
        "U16" => StDtype::U16,
        "U32" => StDtype::U32,
        "U64" => StDtype::U64,
        "BOOL" => StDtype::BOOL,
        "F8_E4M3" => StDtype::F8_E4M3,
        "F8_E5M2" => StDtype::F8_E5M2,
        "F8_E8M0" => StDtype::F8_E8M0,
        _ => return None,
    })
}

fn ir_dtype(dtype: StDtype) -> Option<DType> {
    DType::ALL.iter().copied().find(|&d| st_dtype(d) == Some(dtype))
}

/// `i4[3, 4]` → (dtype, shape).
fn parse_declared(text: &str) -> Result<(DType, Vec<usize>), String> {
    let (name, rest) = text.split_once('[').ok_or_else(|| format!("`{text}` is not `dtype[dims]`"))?;
    let dtype: DType = name.trim().parse()?;
    let dims = rest.strip_suffix(']').ok_or_else(|| format!("`{text}` lacks the closing `]`"))?;
    let shape = if dims.trim().is_empty() {
        Vec::new()
    } else {
        dims.split(',')
            .map(|d| d.trim().parse::<usize>().map_err(|_| format!("`{d}` in `{text}` is not a size")))
            .collect::<Result<_, _>>()?
    };
    Ok((dtype, shape))
}

/// Read every tensor of a safetensors file, in the file's name order.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, TensorData)>, RunError> {
    let fail = |message: String| RunError::File { file: path.to_path_buf(), message };
    let bytes =
        shardc_format::files::read_bounded(path, MAX_TENSOR_FILE).map_err(|e| fail(format!("cannot read: {e}")))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(format!("not a safetensors file: {e}")))?;
    let declared: HashMap<String, String> = metadata.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| fail(format!("not a safetensors file: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for key in declared.keys() {
        if let Some(name) = key.strip_prefix("shardc.dtype.") {
            if !names.iter().any(|n| n == name) {
                return Err(fail(format!("metadata `{key}` names no tensor of the file")));
            }
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let bad = |message: String| RunError::Tensor { file: path.to_path_buf(), tensor: name.clone(), message };
        let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
        let data = match declared.get(&format!("shardc.dtype.{name}")) {
            Some(text) => {
                let (dtype, shape) = parse_declared(text).map_err(|e| bad(format!("metadata: {e}")))?;
                if view.dtype() != StDtype::U8 || view.shape().len() != 1 {
                    return Err(bad(format!("declared {text}, so it must be stored as U8 [bytes]")));
                }
                TensorData::from_le_bytes(dtype, shape, view.data().to_vec()).map_err(|e| bad(e.to_string()))?
            }
            None => {
                let dtype = ir_dtype(view.dtype()).ok_or_else(|| {
                    bad(format!("dtype {:?} is not one shardc reads (declare it in the metadata)", view.dtype()))
                })?;
                TensorData::from_le_bytes(dtype, view.shape().to_vec(), view.data().to_vec())
                    .map_err(|e| bad(e.to_string()))?
            }
        };
        out.push((name, data));
    }
    Ok(out)
}

/// Write tensors as a safetensors file (names sorted by the format).
pub fn write_tensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<(), RunError> {
    let fail = |message: String| RunError::File { file: path.to_path_buf(), message };
    let mut metadata = HashMap::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let view = match st_dtype(t.dtype) {
            Some(dtype) => TensorView::new(dtype, t.shape.clone(), t.bytes()),
            None => {
                let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
                metadata.insert(format!("shardc.dtype.{name}"), format!("{}[{}]", t.dtype, dims.join(", ")));
                TensorView::new(StDtype::U8, vec![t.bytes().len()], t.bytes())
            }
        }
        .map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, if metadata.is_empty() { None } else { Some(metadata) })
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| fail(format!("cannot write: {e}")))
}

/// Check `inputs` against the graph's inputs: every one given, none extra, each of the
/// declared dtype and a shape that fits the declared dims (symbols bound consistently).
fn check_inputs(graph: &Graph, inputs: &[(String, TensorData)]) -> Result<(), RunError> {
    let given: BTreeMap<&str, &TensorData> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let declared: Vec<&str> = graph.inputs.iter().map(|&v| graph.value(v).name.as_str()).collect();
    for (name, _) in inputs {
        if !declared.contains(&name.as_str()) {
            return Err(RunError::Input {
                name: name.clone(),
                message: format!("the model has no such input (its inputs: {})", declared.join(", ")),
            });
        }
    }
    let mut symbols: HashMap<String, usize> = HashMap::new();
    for &v in &graph.inputs {
        let value = graph.value(v);
        let bad = |message: String| RunError::Input { name: value.name.clone(), message };
        let t = given.get(value.name.as_str()).ok_or_else(|| bad("is missing from the inputs file".into()))?;
        let Some(ty) = &value.ty else { continue };
        let expected = shardc_ir::text::print::type_text(Some(ty));
        let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        let got = format!("{}[{}]", t.dtype, dims.join(", "));
        if t.dtype != ty.dtype || t.shape.len() != ty.rank() {
            return Err(bad(format!("the model takes {expected}, the file holds {got}")));
        }
        for (d, &n) in ty.shape.iter().zip(&t.shape) {
            match (d.as_known(), d.symbols().as_slice()) {
                (Some(k), _) if k != n as i64 => {
                    return Err(bad(format!("the model takes {expected}, the file holds {got}")))
                }
                (None, [sym]) if *d == Dim::sym(sym) => {
                    if let Some(&prev) = symbols.get(sym) {
                        if prev != n {
                            return Err(bad(format!("`{sym}` is {prev} in another input but {n} here ({got})")));
                        }
                    }
                    symbols.insert(sym.clone(), n);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Run `graph` (as imported) on `inputs`: the graph is specialised to the inputs'
/// shapes (and small integer inputs' values, which shape arithmetic may fold), taken
/// through the pass pipeline and run by the reference interpreter. Returns every
/// graph output, by name, in the graph's order.
pub fn run_graph(
    mut graph: Graph,
    weights_dir: &Path,
    inputs: Vec<(String, TensorData)>,
) -> Result<Vec<(String, TensorData)>, RunError> {
    check_inputs(&graph, &inputs)?;
    let by_name: HashMap<&str, &TensorData> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut ctx = Ctx::default();
    for &v in &graph.inputs.clone() {
        let value = graph.value_mut(v);
        if let Some(t) = by_name.get(value.name.as_str()) {
            value.ty = Some(TensorType::known(t.dtype, &t.shape));
            if !t.dtype.is_float() && t.len() <= KNOWN_INPUT_ELEMENTS {
                if let Some(v) = t.i64_elements() {
                    ctx.input_contents.insert(value.name.clone(), v);
                }
            }
        }
    }
    run_pipeline(&mut graph, &mut ctx, None)?;
    let session = Session::new(graph, weights_dir);
    let mut feed = Vec::with_capacity(inputs.len());
    for (name, t) in &inputs {
        let tensor =
            Tensor::from_data(t).map_err(|e| RunError::Input { name: name.clone(), message: e.to_string() })?;
        feed.push((name.clone(), tensor));
    }
    let outputs = session.run(feed)?;
    outputs
        .into_iter()
        .map(|(name, t)| {
            let data = t.to_data().map_err(|message| RunError::Input { name: name.clone(), message })?;
            Ok((name, data))
        })
        .collect()
}

/// What [`language_model`] computed.
#[derive(Clone, Debug)]
pub struct LmRun {
    pub vocab: usize,
    /// Whether the graph carries a KV cache (greedy decoding then feeds one token per step).
    pub kv_cache: bool,
    /// The `k` largest logits of the last prompt position, best first.
    pub top: Vec<(usize, f32)>,
    pub generated: Vec<i64>,
    pub prefill: std::time::Duration,
    pub generation: std::time::Duration,
}

/// Run a language model on `ids`: the prompt's logits (their top `k`), then
/// `max_new_tokens` greedy tokens — with the KV cache where the graph has one.
pub fn language_model(
    model: crate::load::LoadedModel,
    ids: &[i64],
    max_new_tokens: usize,
    k: usize,
) -> Result<LmRun, RunError> {
    use shardc_runtime::generate::{self, CacheLayout};
    if !model.has_weights {
        return Err(RunError::Model("a config.json alone has no weights to run; give the checkpoint folder".into()));
    }
    let mut graph = model.graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None)?;
    let vocab = graph
        .outputs
        .first()
        .and_then(|&v| graph.value(v).ty.as_ref())
        .and_then(|t| t.shape.last())
        .and_then(Dim::as_known);
    if let Some(vocab) = vocab {
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(RunError::Model(format!("token id {bad} is outside the vocabulary (0..{vocab})")));
        }
    }
    let session = Session::new(graph, &model.weights_dir);
    let cache = CacheLayout::of(&session)?;
    let start = std::time::Instant::now();
    let logits = match &cache {
        Some(layout) => generate::cached_prefill(&session, layout, ids)?,
        None => generate::logits(&session, ids)?,
    };
    let prefill = start.elapsed();
    let top = generate::top_k(logits.last(), k);
    let start = std::time::Instant::now();
    let generated = match &cache {
        Some(layout) => generate::greedy_cached(&session, layout, ids, max_new_tokens)?,
        None => generate::greedy(&session, ids, max_new_tokens)?,
    };
    Ok(LmRun { vocab: logits.vocab, kv_cache: cache.is_some(), top, generated, prefill, generation: start.elapsed() })
}
