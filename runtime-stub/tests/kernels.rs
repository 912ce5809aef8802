//! Kernels against values worked out by hand, on graphs written in the text IR.

use ndarray::{ArrayD, IxDyn};
use shardc_ir::text::parse;
use shardc_runtime::{RuntimeError, Session, Tensor};

fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::f32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn i64s(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::i64(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

/// Run a one-node graph `n0 "op" <op>(%0[, ...]) -> out` over the given inputs.
fn run(text: &str, inputs: Vec<(&str, Tensor)>) -> Result<Vec<Tensor>, RuntimeError> {
    let graph = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    shardc_ir::verify(&graph).unwrap();
    let session = Session::new(graph, std::path::Path::new("."));
    let out = session.run(inputs.into_iter().map(|(n, t)| (n.to_string(), t)).collect())?;
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

fn values(t: &Tensor) -> (Vec<usize>, Vec<f32>) {
    (t.shape().to_vec(), t.to_f32_vec())
}

#[test]
fn slice_with_negative_steps_and_clamped_ends() {
    let g = r#"graph "t" {
  input %0 "x": f32[2, 5]
  const %1 "starts": i64[2] [-1, 9223372036854775807]
  const %2 "ends": i64[2] [-9223372036854775807, -6]
  const %3 "axes": i64[2] [0, 1]
  const %4 "steps": i64[2] [-1, -2]
  n0 "s" Slice(%0, %1, %2, %3, %4) -> %5 "y": ?
  output %5
}"#;
    let x = f32s(&[2, 5], &[0., 1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let out = run(g, vec![("x", x)]).unwrap();
    assert_eq!(values(&out[0]), (vec![2, 3], vec![9., 7., 5., 4., 2., 0.]));
}

#[test]
fn gather_with_negative_indices_on_an_inner_axis() {
    let g = r#"graph "t" {
  input %0 "x": f32[2, 3]
  const %1 "idx": i64[2] [-1, 0]
  n0 "g" Gather{axis=1}(%0, %1) -> %2 "y": f32[2, 2]
  output %2
}"#;
    let out = run(g, vec![("x", f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]))]).unwrap();
    assert_eq!(values(&out[0]), (vec![2, 2], vec![3., 1., 6., 4.]));
}

#[test]
fn trilu_cumsum_and_scatter() {
    let g = r#"graph "t" {
  input %0 "x": f32[3, 3]
  const %1 "k": i64[] [1]
  const %2 "axis": i64[] [1]
  const %3 "idx": i64[2, 1] [2, 0]
  const %4 "upd": f32[2, 3] [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
  n0 "lower" Trilu{upper=0}(%0, %1) -> %5 "lower": f32[3, 3]
  n1 "scan" CumSum{exclusive=1, reverse=1}(%0, %2) -> %6 "scan": f32[3, 3]
  n2 "scatter" ScatterND{reduction="add"}(%0, %3, %4) -> %7 "scattered": f32[3, 3]
  output %5
  output %6
  output %7
}"#;
    let x = f32s(&[3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let out = run(g, vec![("x", x)]).unwrap();
    assert_eq!(out[0].to_f32_vec(), vec![1., 2., 0., 4., 5., 6., 7., 8., 9.]);
    assert_eq!(out[1].to_f32_vec(), vec![5., 3., 0., 11., 6., 0., 17., 9., 0.]);
    assert_eq!(out[2].to_f32_vec(), vec![41., 52., 63., 4., 5., 6., 17., 28., 39.]);
}

#[test]
fn matmul_broadcasts_and_gemm_transposes() {
    let g = r#"graph "t" {
  input %0 "a": f32[2, 1, 2, 3]
  input %1 "b": f32[3, 3, 2]
  input %2 "m": f32[3, 2]
  input %3 "n": f32[2, 3]
  const %4 "bias": f32[2] [1.0, 2.0]
  n0 "mm" MatMul(%0, %1) -> %5 "ab": f32[2, 3, 2, 2]
  n1 "gemm" Gemm{alpha=2.0, beta=0.5, transA=1, transB=1}(%2, %3, %4) -> %6 "g": f32[2, 2]
  output %5
  output %6
}"#;
    let a = f32s(&[2, 1, 2, 3], &(0..12).map(|v| v as f32).collect::<Vec<_>>());
    let b = f32s(&[3, 3, 2], &(0..18).map(|v| (v % 5) as f32).collect::<Vec<_>>());
    let m = f32s(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
    let n = f32s(&[2, 3], &[1., 0., 1., 0., 1., 0.]);
    let out = run(g, vec![("a", a.clone()), ("b", b.clone()), ("m", m), ("n", n)]).unwrap();
    // Reference: explicit loops.
    let (av, bv) = (a.to_f32_vec(), b.to_f32_vec());
    let mut expected = Vec::new();
    for i in 0..2 {
        for j in 0..3 {
            for r in 0..2 {
                for c in 0..2 {
                    let s: f32 = (0..3).map(|k| av[i * 6 + r * 3 + k] * bv[j * 6 + k * 2 + c]).sum();
                    expected.push(s);
                }
            }
        }
    }
    assert_eq!(values(&out[0]), (vec![2, 3, 2, 2], expected));
    // Gemm: 2 · mᵀ · nᵀ + 0.5 · bias; mᵀ = [[1,3,5],[2,4,6]], nᵀ = [[1,0],[0,1],[1,0]].
    assert_eq!(values(&out[1]), (vec![2, 2], vec![2. * 6. + 0.5, 2. * 3. + 1., 2. * 8. + 0.5, 2. * 4. + 1.]));
}

#[test]
fn softmax_and_layer_norm() {
    let g = r#"graph "t" {
  input %0 "x": f32[2, 2]
  const %1 "scale": f32[2] [1.0, 2.0]
  const %2 "bias": f32[2] [0.5, 0.5]
  n0 "sm" Softmax{axis=0}(%0) -> %3 "sm": f32[2, 2]
  n1 "ln" LayerNormalization{epsilon=0.0}(%0, %1, %2) -> %4 "ln": f32[2, 2], %5 "mean": f32[2, 1]
  output %3
  output %4
  output %5
}"#;
    let out = run(g, vec![("x", f32s(&[2, 2], &[0., 1., 0., 3.]))]).unwrap();
    let e2 = 1.0 / (1.0 + (2f32).exp());
    // Along axis 0: column [0, 0] → [½, ½]; column [1, 3] → [1/(1+e²), e²/(1+e²)].
    let sm = out[0].to_f32_vec();
    let expected = [0.5, e2, 0.5, 1.0 - e2];
    assert!(sm.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{sm:?}");
    assert_eq!(out[1].to_f32_vec(), vec![-0.5, 2.5, -0.5, 2.5]);
    assert_eq!(out[2].to_f32_vec(), vec![0.5, 1.5]);
}

#[test]
fn reshape_split_expand_tile_range_where_cast() {
    let g = r#"graph "t" {
  input %0 "x": i64[2, 3]
  const %1 "target": i64[2] [0, -1]
  const %2 "sizes": i64[2] [1, 2]
  const %3 "shape": i64[3] [2, 2, 3]
  const %4 "reps": i64[2] [1, 2]
  const %5 "start": i64[] [5]
  const %6 "limit": i64[] [0]
  const %7 "delta": i64[] [-2]
  const %8 "zero": i64[] [3]
  n0 "r" Reshape(%0, %1) -> %9 "r": i64[2, 3]
  n1 "s" Split{axis=1}(%0, %2) -> %10 "s0": i64[2, 1], %11 "s1": i64[2, 2]
  n2 "e" Expand(%0, %3) -> %12 "e": i64[2, 2, 3]
  n3 "t" Tile(%0, %4) -> %13 "t": i64[2, 6]
  n4 "range" Range(%5, %6, %7) -> %14 "range": i64[3]
  n5 "gt" Greater(%0, %8) -> %15 "gt": bool[2, 3]
  n6 "w" Where(%15, %0, %8) -> %16 "w": i64[2, 3]
  n7 "c" Cast{to=i8}(%16) -> %17 "c": i8[2, 3]
  output %9
  output %10
  output %11
  output %12
  output %13
  output %14
  output %17
}"#;
    let out = run(g, vec![("x", i64s(&[2, 3], &[1, 200, 3, 4, 5, 6]))]).unwrap();
    assert_eq!(out[0].to_i64_vec(), vec![1, 200, 3, 4, 5, 6]);
    assert_eq!(out[1].to_i64_vec(), vec![1, 4]);
    assert_eq!(out[2].to_i64_vec(), vec![200, 3, 5, 6]);
    assert_eq!(out[3].shape(), [2, 2, 3]);
    assert_eq!(out[4].to_i64_vec(), vec![1, 200, 3, 1, 200, 3, 4, 5, 6, 4, 5, 6]);
    assert_eq!(out[5].to_i64_vec(), vec![5, 3, 1]);
    // Where picks x above 3, else 3; the i8 cast wraps 200 to -56.
    assert_eq!(out[6].to_i64_vec(), vec![3, -56, 3, 4, 5, 6]);
}

#[test]
fn bad_inputs_are_named() {
    let g = r#"graph "t" {
  input %0 "ids": i64[batch, seq]
  input %1 "x": f32[2, 3]
  n0 "n" Neg(%1) -> %2 "y": f32[2, 3]
  output %2
}"#;
    let ok = vec![("ids", i64s(&[1, 2], &[1, 2])), ("x", f32s(&[2, 3], &[0.; 6]))];
    assert!(run(g, ok).is_ok());
    let cases = [
        (
            vec![("ids", f32s(&[1, 2], &[1., 2.])), ("x", f32s(&[2, 3], &[0.; 6]))],
            "input `ids`: expected i64[batch, seq], got f32[1, 2]",
        ),
        (
            vec![("ids", i64s(&[2], &[1, 2])), ("x", f32s(&[2, 3], &[0.; 6]))],
            "input `ids`: expected rank 2 (i64[batch, seq]), got i64[2]",
        ),
        (
            vec![("ids", i64s(&[1, 2], &[1, 2])), ("x", f32s(&[2, 2], &[0.; 4]))],
            "input `x`: expected f32[2, 3], got f32[2, 2]",
        ),
        (vec![("ids", i64s(&[1, 2], &[1, 2]))], "input `x`: not given"),
    ];
    for (inputs, message) in cases {
        let err = run(g, inputs).unwrap_err().to_string();
        assert_eq!(err, message);
    }
}

#[test]
fn kernel_errors_name_the_node_and_op() {
    let g = r#"graph "t" {
  input %0 "x": f32[2]
  n0 "float_mod" Mod(%0, %0) -> %1 "y": f32[2]
  output %1
}"#;
    let err = run(g, vec![("x", f32s(&[2], &[1., 2.]))]).unwrap_err().to_string();
    assert_eq!(err, "node `float_mod` (Mod): Mod of floats needs fmod = 1");
    // A wrong inferred type is caught at the node that produced it.
    let g = g.replace("Mod(%0, %0) -> %1 \"y\": f32[2]", "Neg(%0) -> %1 \"y\": f32[3]");
    let err = run(&g, vec![("x", f32s(&[2], &[1., 2.]))]).unwrap_err().to_string();
    assert_eq!(err, "node `float_mod` (Neg): output `y` is f32[2], but shape inference says f32[3]");
}

#[test]
fn weights_missing_from_disk_are_named() {
    let g = r#"graph "t" {
  input %0 "x": f32[2]
  weight %1 "w": f32[2] = "no-such-file.bin" @ 0 + 8
  n0 "add" Add(%0, %1) -> %2 "y": f32[2]
  output %2
}"#;
    let err = run(g, vec![("x", f32s(&[2], &[1., 2.]))]).unwrap_err().to_string();
    assert!(err.starts_with("weight `w` in `./no-such-file.bin`: "), "{err}");
}

#[test]
fn half_precision_weights_widen_on_load() {
    let dir = std::env::temp_dir().join(format!("shardc-f16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = vec![0xAB; 3]; // weights need not start at an aligned offset
    for v in [1.5f32, -2.25] {
        bytes.extend(half::f16::from_f32(v).to_le_bytes());
    }
    for v in [0.5f32, 3.0] {
        bytes.extend(half::bf16::from_f32(v).to_le_bytes());
    }
    std::fs::write(dir.join("w.bin"), &bytes).unwrap();
    let g = r#"graph "t" {
  input %0 "x": f32[2]
  weight %1 "h": f16[2] = "w.bin" @ 3 + 4
  weight %2 "b": bf16[2] = "w.bin" @ 7 + 4
  n0 "cast" Cast{to=f16}(%0) -> %3 "xh": f16[2]
  n1 "add" Add(%3, %1) -> %4 "y": f16[2]
  n2 "mul" Mul(%2, %2) -> %5 "z": bf16[2]
  output %4
  output %5
}"#;
    let graph = parse(g).unwrap();
    let session = Session::new(graph, &dir);
    session.enable_profile();
    for _ in 0..3 {
        let out = session.run(vec![("x".into(), f32s(&[2], &[1.0, 1.0]))]).unwrap();
        assert_eq!(out[0].1.to_f32_vec(), vec![2.5, -1.25]);
        assert_eq!(out[1].1.to_f32_vec(), vec![0.25, 9.0]);
    }
    // `Mul(b, b)` reads weights only: computed on the first run, cached after.
    let profile = session.take_profile();
    assert_eq!((profile["Mul"].calls, profile["Add"].calls, profile["Cast"].calls), (1, 3, 3));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tied table: looked up by rows (`Gather`) and read transposed by a `Gemm` (the
/// head). The session keeps it transposed (the lookups read its columns); lookups and
/// products give what the table as stored gives, worked out here by hand.
#[test]
fn a_tied_table_kept_transposed_looks_up_rows_and_multiplies() {
    let dir = std::env::temp_dir().join(format!("shardc-tied-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // w: 4 rows (tokens) of 3: row r = [r, 10 + r, 100 + r].
    let w: Vec<f32> = (0..4).flat_map(|r| [r as f32, 10.0 + r as f32, 100.0 + r as f32]).collect();
    std::fs::write(dir.join("w.bin"), w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let g = r#"graph "t" {
  input %0 "ids": i64[2, 2]
  input %1 "x": f32[2, 3]
  weight %2 "w": f32[4, 3] = "w.bin" @ 0 + 48
  n0 "embed" Gather{axis=0}(%2, %0) -> %3 "rows": f32[2, 2, 3]
  n1 "head" Gemm{transB=1}(%1, %2) -> %4 "logits": f32[2, 4]
  output %3
  output %4
}"#;
    let session = Session::new(parse(g).unwrap(), &dir);
    for _ in 0..2 {
        let out = session
            .run(vec![
                ("ids".into(), i64s(&[2, 2], &[3, 0, -1, 2])),
                ("x".into(), f32s(&[2, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.5])),
            ])
            .unwrap();
        let rows: Vec<f32> = [3, 0, 3, 2].iter().flat_map(|&r| w[r * 3..r * 3 + 3].to_vec()).collect();
        assert_eq!(values(&out[0].1), (vec![2, 2, 3], rows));
        // logits[i][r] = x_i · w_r.
        let logits: Vec<f32> = [[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.5]]
            .iter()
            .flat_map(|x| {
                (0..4).map(|r| x[0] * w[r * 3] + x[1] * w[r * 3 + 1] + x[2] * w[r * 3 + 2]).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(values(&out[1].1), (vec![2, 4], logits));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
