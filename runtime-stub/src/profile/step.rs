//! Product rates measured inside a model's own step: the graph run as it is, at each
//! row count, every product timed where it runs. A product is slower after the rest of
//! a step than after a cache flush (the tied head of GPT-2-small by up to a third,
//! BENCHMARKS "Fidelity of the cost model"), which products measured alone cannot see.

use std::collections::{BTreeMap, HashMap};

use ndarray::{ArrayD, IxDyn};
use shardc_ir::{DType, Graph};
use shardc_passes::kernels::{works, Curve, ProductShape, Work};

use super::{median, values};
use crate::tensor::Tensor;
use crate::Session;

/// Whether `graph`'s step can run here to be timed: its weights take at most half of
/// the memory available once read (f16 and bf16 counted as f32, the most they take).
pub fn fits(graph: &Graph) -> Result<(), String> {
    let bytes: f64 = graph
        .values
        .iter()
        .filter_map(|v| match &v.def {
            shardc_ir::ValueDef::Weight(w) => Some(w.elements() as f64 * 4.0),
            _ => None,
        })
        .sum();
    let available = super::available_memory();
    if bytes > available / 2.0 {
        return Err(format!(
            "its weights take {:.1} GB as the runtime reads them, more than half of the {:.1} GB available",
            bytes / 1e9,
            available / 1e9
        ));
    }
    Ok(())
}

/// Most elements of one input a step profile makes (1 GiB of f32).
const MAX_INPUT_ELEMENTS: usize = 1 << 28;

/// Keys a decode step finds in its cache when the rows are 1.
const DECODE_PAST: usize = 32;

/// Values for every input of `graph` at `rows` new positions after `past` cached ones:
/// token ids 1..=100 (in any vocabulary), positions counted from `past`, masks of ones,
/// small deterministic floats elsewhere (hidden states, cached keys and values).
fn step_inputs(graph: &Graph, bindings: &HashMap<String, i64>) -> Result<Vec<(String, Tensor)>, String> {
    let past = bindings.get("past").copied().unwrap_or(0);
    graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let value = graph.value(v);
            let ty = value.ty.as_ref().ok_or_else(|| format!("input `{}` has no type", value.name))?;
            let shape = ty
                .shape
                .iter()
                .map(|d| d.eval(bindings).filter(|&n| n >= 0).map(|n| n as usize))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| format!("input `{}` has a size the step does not set", value.name))?;
            let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_INPUT_ELEMENTS);
            let n =
                n.ok_or_else(|| format!("input `{}` ({shape:?}) is larger than a step profile makes", value.name))?;
            let last = shape.last().copied().unwrap_or(1).max(1);
            let name = value.name.to_ascii_lowercase();
            let t = match ty.dtype {
                DType::I64 | DType::I32 => {
                    let data: Vec<i64> = (0..n)
                        .map(|j| {
                            if name.contains("mask") {
                                1
                            } else if name.contains("position") {
                                past + (j % last) as i64
                            } else {
                                (j * 37 % 100 + 1) as i64
                            }
                        })
                        .collect();
                    Tensor::with_dtype(ty.dtype, crate::Data::I64(to_array(&shape, data)?))
                }
                DType::F32 | DType::F16 | DType::BF16 => {
                    Tensor::with_dtype(ty.dtype, crate::Data::F32(to_array(&shape, values(n, i as u64 + 11))?))
                }
                DType::Bool => Tensor::bool(to_array(&shape, vec![true; n])?),
                other => {
                    return Err(format!("input `{}` is {other:?}, which a step profile does not make", value.name))
                }
            };
            Ok((value.name.clone(), t))
        })
        .collect()
}

fn to_array<T>(shape: &[usize], data: Vec<T>) -> Result<ArrayD<T>, String> {
    ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())
}

/// FLOP/s of each product shape (with its weight type) of `session`'s graph, measured
/// in its own step at each of `rows` (1: a decode step after [`DECODE_PAST`] cached
/// positions; more: a prompt step), the median of `runs` steps after one untimed step.
/// The products of one shape are summed over the step (every layer's).
pub fn product_curves(
    session: &Session,
    rows: &[usize],
    runs: usize,
) -> Result<BTreeMap<(String, ProductShape), Curve>, String> {
    let graph = session.graph();
    session.warm().map_err(|e| format!("step profile: {e}"))?;
    session.enable_profile();
    let mut points: BTreeMap<(String, ProductShape), Vec<(f64, f64)>> = BTreeMap::new();
    for &r in rows {
        let past = if r == 1 { DECODE_PAST } else { 0 };
        let bindings: HashMap<String, i64> =
            [("batch", 1), ("seq", r as i64), ("past", past as i64)].into_iter().map(|(k, v)| (k.into(), v)).collect();
        let costs = shardc_passes::cost::node_costs(graph, &bindings).map_err(|e| format!("step profile: {e}"))?;
        let work = works(graph, &bindings);
        let inputs = step_inputs(graph, &bindings).map_err(|e| format!("step profile: {e}"))?;
        // Per shape: its rows, the FLOPs of its products in one step, and those nodes.
        let mut shapes: BTreeMap<(String, ProductShape), (f64, f64, Vec<usize>)> = BTreeMap::new();
        for (i, w) in work.iter().enumerate() {
            if let Work::Matmul { weight, rows, shape: Some(shape) } = *w {
                let e = shapes.entry((weight.to_string(), shape)).or_default();
                (e.0, e.1) = (rows, e.1 + costs[i].flops);
                e.2.push(i);
            }
        }
        session.run(inputs.clone()).map_err(|e| format!("step profile at {r} rows: {e}"))?;
        session.take_node_times();
        let mut secs: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
        for _ in 0..runs.max(1) {
            session.run(inputs.clone()).map_err(|e| format!("step profile at {r} rows: {e}"))?;
            let times = session.take_node_times();
            for (s, (_, _, nodes)) in secs.iter_mut().zip(shapes.values()) {
                s.push(nodes.iter().map(|&i| times[i].as_secs_f64()).sum());
            }
        }
        for ((key, (rows, flops, _)), secs) in shapes.into_iter().zip(secs) {
            let t = median(secs);
            let curve = points.entry(key).or_default();
            // A product whose rows do not grow with the step's (a head that reads the
            // last position only) is kept at the first step that measured those rows.
            if t > 0.0 && flops > 0.0 && rows >= 1.0 && curve.iter().all(|p| p.0 != rows) {
                curve.push((rows, flops / t));
            }
        }
    }
    Ok(points
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(k, mut p)| {
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            (k, Curve(p))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::graphs::weights_graph;
    use super::super::Scratch;
    use super::*;

    #[test]
    fn a_step_times_each_product_shape_where_it_runs() {
        let scratch = Scratch::new().unwrap();
        let shape = ProductShape { matmul: false, transposed: true, k: 64, n: 48 };
        // Three products of one shape, their rows the step's new positions.
        let text = shardc_ir::text::print(&weights_graph(&scratch, "f32", shape, 3).unwrap()).replace("rows", "seq");
        let mut graph = shardc_ir::text::parse(&text).unwrap();
        use shardc_passes::Pass;
        shardc_passes::infer_shapes::InferShapes.run(&mut graph, &mut shardc_passes::Ctx::default()).unwrap();
        let session = Session::new(graph, &scratch.0);
        let curves = product_curves(&session, &[1, 4, 16], 2).unwrap();
        assert_eq!(curves.keys().collect::<Vec<_>>(), vec![&("f32".to_string(), shape)]);
        let curve = &curves[&("f32".to_string(), shape)];
        assert_eq!(curve.0.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1.0, 4.0, 16.0]);
        assert!(curve.0.iter().all(|p| p.1.is_finite() && p.1 > 0.0), "{curve:?}");
    }

    #[test]
    fn step_inputs_are_ids_positions_masks_and_values_of_the_step_sizes() {
        let graph = shardc_ir::text::parse(
            "graph \"g\" {\n  input %0 \"input_ids\": i64[batch, seq]\n  input %1 \"position_ids\": i64[batch, seq]\n  \
             input %2 \"attention_mask\": i64[batch, past + seq]\n  input %3 \"past.0.key\": f32[batch, 2, past, 4]\n  \
             n0 \"s\" Shape(%3) -> %4 \"s\": ?\n  output %4\n}\n",
        )
        .unwrap();
        let bindings: HashMap<String, i64> =
            [("batch", 1), ("seq", 3), ("past", 5)].into_iter().map(|(k, v)| (k.into(), v)).collect();
        let inputs: HashMap<String, Tensor> = step_inputs(&graph, &bindings).unwrap().into_iter().collect();
        assert_eq!(inputs["input_ids"].shape(), &[1, 3]);
        assert!(inputs["input_ids"].to_i64_vec().iter().all(|&t| (1..=100).contains(&t)));
        assert_eq!(inputs["position_ids"].to_i64_vec(), vec![5, 6, 7]);
        assert_eq!(inputs["attention_mask"].to_i64_vec(), vec![1; 8]);
        assert_eq!(inputs["past.0.key"].shape(), &[1, 2, 5, 4]);
        let unset: HashMap<String, i64> = [("batch".to_string(), 1)].into_iter().collect();
        let err = step_inputs(&graph, &unset).unwrap_err();
        assert!(err.contains("input_ids") && err.contains("does not set"), "{err}");
        let huge: HashMap<String, i64> =
            [("batch", 1 << 20), ("seq", 1 << 20), ("past", 0)].into_iter().map(|(k, v)| (k.into(), v)).collect();
        let err = step_inputs(&graph, &huge).unwrap_err();
        assert!(err.contains("input_ids") && err.contains("larger than"), "{err}");
    }
}
