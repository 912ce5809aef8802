//! Shape inference and simplification on small graphs written in the text form.

use shardc_ir::text::{parse, print};
use shardc_ir::verify;
use shardc_passes::{run_pipeline, Ctx, PassError};

/// Run the pipeline up to `pass` and return the printed graph.
fn run(text: &str, pass: &str) -> Result<String, PassError> {
    let mut graph = parse(text).expect("test graph parses");
    verify(&graph).expect("test graph verifies");
    run_pipeline(&mut graph, &mut Ctx { verify_each: true, ..Ctx::default() }, Some(pass))?;
    let printed = print(&graph);
    assert_eq!(print(&parse(&printed).unwrap()), printed, "round trip");
    Ok(printed)
}

fn type_of(printed: &str, name: &str) -> String {
    let key = format!("\"{name}\": ");
    let line = printed.lines().find(|l| l.contains(&key)).unwrap_or_else(|| panic!("no `{name}` in\n{printed}"));
    let rest = &line[line.find(&key).unwrap() + key.len()..];
    rest.split(" = ").next().unwrap().split(", %").next().unwrap().to_string()
}

#[test]
fn reshape_through_shape_arithmetic_keeps_symbols() {
    let g = r#"graph "t" {
  input %0 "x": f32[batch, seq, 64]
  const %1 "zero": i64[1] [0]
  const %2 "one": i64[1] [1]
  const %3 "tail": i64[2] [4, 16]
  const %4 "flat": i64[2] [-1, 64]
  n0 "shape" Shape(%0) -> %5 "s": ?
  n1 "b" Gather(%5, %1) -> %6 "b": ?
  n2 "q" Gather(%5, %2) -> %7 "q": ?
  n3 "cat" Concat{axis=0}(%6, %7, %3) -> %8 "target": ?
  n4 "heads" Reshape(%0, %8) -> %9 "heads": ?
  n5 "rows" Reshape(%0, %4) -> %10 "rows": ?
  output %9
  output %10
}
"#;
    let out = run(g, "infer-shapes").unwrap();
    assert_eq!(type_of(&out, "heads"), "f32[batch, seq, 4, 16]");
    assert_eq!(type_of(&out, "rows"), "f32[batch*seq, 64]");
    assert_eq!(type_of(&out, "target"), "i64[4]");
}

#[test]
fn expand_with_minus_one_pattern_resolves() {
    // torch's expand(-1, ...) exports as Where(Equal(shape, -1), ones, shape).
    let g = r#"graph "t" {
  input %0 "x": f32[batch, 1, seq]
  const %1 "minus": i64[] [-1]
  const %2 "heads": i64[1] [4]
  const %3 "axes": i64[1] [0]
  const %4 "ones": i64[3] [1, 1, 1]
  const %5 "start": i64[1] [2]
  const %6 "end": i64[1] [3]
  n0 "shape" Shape(%0) -> %7 "s": ?
  n1 "b" Gather{axis=0}(%7, %3) -> %8 "b1": ?
  n2 "last" Slice(%7, %5, %6) -> %9 "q1": ?
  n3 "cat" Concat{axis=0}(%8, %2, %9) -> %10 "target": ?
  n4 "eq" Equal(%10, %1) -> %11 "is_minus": ?
  n5 "where" Where(%11, %4, %10) -> %12 "target2": ?
  n6 "expand" Expand(%0, %12) -> %13 "expanded": ?
  output %13
}
"#;
    let out = run(g, "simplify").unwrap();
    assert_eq!(type_of(&out, "expanded"), "f32[batch, 4, seq]");
    // Equal(shape, -1) is provably false for sizes, so `is_minus` folds away.
    assert!(!out.contains("\"is_minus\""), "{out}");
}

#[test]
fn slices_with_symbolic_bounds() {
    let g = r#"graph "t" {
  input %0 "mask": bool[1, 1, 64, 64]
  input %1 "x": f32[batch, seq, 8]
  const %2 "zero": i64[1] [0]
  const %3 "one": i64[1] [1]
  const %4 "axes": i64[2] [2, 3]
  const %5 "big": i64[1] [9223372036854775807]
  const %6 "minus1": i64[1] [-1]
  n0 "shape" Shape(%1) -> %7 "s": ?
  n1 "q" Slice(%7, %3, %8) -> %9 "q": ?
  n2 "cat_start" Concat{axis=0}(%2, %2) -> %10 "starts": ?
  n3 "cat_end" Concat{axis=0}(%9, %9) -> %11 "ends": ?
  n4 "causal" Slice(%0, %10, %11, %4) -> %12 "causal": ?
  n5 "tail" Slice(%1, %6, %5, %3) -> %13 "tail": ?
  const %8 "two": i64[1] [2]
  output %12
  output %13
}
"#;
    let out = run(g, "infer-shapes").unwrap();
    assert_eq!(type_of(&out, "causal"), "bool[1, 1, seq, seq]");
    assert_eq!(type_of(&out, "tail"), "f32[batch, 1, 8]");
}

#[test]
fn matmul_broadcasts_batch_dims_and_checks_inner_dims() {
    let g = r#"graph "t" {
  input %0 "q": f32[batch, 4, seq, 16]
  input %1 "k": f32[batch, 4, 16, seq]
  input %2 "w": f32[16, 32]
  n0 "scores" MatMul(%0, %1) -> %3 "scores": ?
  n1 "proj" MatMul(%0, %2) -> %4 "proj": ?
  output %3
  output %4
}
"#;
    let out = run(g, "infer-shapes").unwrap();
    assert_eq!(type_of(&out, "scores"), "f32[batch, 4, seq, seq]");
    assert_eq!(type_of(&out, "proj"), "f32[batch, 4, seq, 32]");
    let bad = g.replace("f32[16, 32]", "f32[8, 32]");
    let err = run(&bad, "infer-shapes").unwrap_err();
    assert_eq!(err.to_string(), "pass `infer-shapes`: node `proj` (MatMul): inner dims differ (16 vs 8)");
}

#[test]
fn simplify_folds_constants_bypasses_identity_and_drops_dead_nodes() {
    let g = r#"graph "t" {
  input %0 "x": f32[2, 3]
  const %1 "one": i64[] [1]
  n0 "shape" Shape(%0) -> %2 "s": ?
  n1 "cols" Gather(%2, %1) -> %3 "cols": ?
  n2 "double" Add(%3, %3) -> %4 "six": ?
  n3 "id" Identity(%0) -> %5 "x_copy": ?
  n4 "unused" Neg(%5) -> %6 "dead": ?
  n5 "scale" Reshape(%5, %7) -> %8 "y": ?
  n6 "flat" Unsqueeze(%4, %9) -> %7 "target": ?
  const %9 "axes": i64[1] [0]
  output %8
}
"#;
    // The graph lists n6 after its use: the verifier rejects it...
    assert!(verify(&parse(g).unwrap()).is_err());
    // ...so fix the order and simplify.
    let g = g.replace(
        "  n5 \"scale\" Reshape(%5, %7) -> %8 \"y\": ?\n  n6 \"flat\" Unsqueeze(%4, %9) -> %7 \"target\": ?\n",
        "  n5 \"flat\" Unsqueeze(%4, %9) -> %7 \"target\": ?\n  n6 \"scale\" Reshape(%5, %7) -> %8 \"y\": ?\n",
    );
    let out = run(&g, "simplify").unwrap();
    let expected = r#"graph "t" {
  input %0 "x": f32[2, 3]
  const %1 "target": i64[1] [6]
  n0 "scale" Reshape(%0, %1) -> %2 "y": f32[6]
}
"#;
    assert_eq!(out.replace("  output %2\n", ""), expected, "{out}");
}
