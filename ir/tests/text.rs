//! The text form: canonical text parses and prints back byte for byte, and errors name
//! the line.

use shardc_ir::text::{parse, print};
use shardc_ir::{verify, Op, ValueDef};

const CANONICAL: &str = r#"graph "every \"kind\"\tof\\thing" {
  input %0 "x": f32[batch, seq, 64]
  input %1 "ids": i64[batch, past+seq]
  weight %2 "w": f32[64, 64] = "model.onnx" @ 1234 + 16384
  weight %3 "planned": bf16[64] = none
  const %4 "axes": i64[1] [-1]
  const %5 "flags": bool[2, 2] [true, false, false, true]
  const %6 "eps": f16[] [0.0010004044]
  const %19 "axes": i64[1] [-1]
  n0 "/gemm" Gemm{alpha=0.5, transB=1}(%7, %2) -> %8 "y": ?
  n1 "" Cast{to=f32}(%1) -> %9 "ids_f": f32[batch, past+seq]
  n2 "fill" ConstantOfShape{value=f32[1] [-3.4028235e38]}(%10) -> %11 "filled": ?
  n3 "split" Split{axis=2, num_outputs=2}(%0) -> %12 "a": f32[batch, seq, 32], %13 "b": f32[batch, seq, 32]
  n4 "reduce" ReduceMean(%12, %19) -> %14 "m": f32[batch, seq, 1]
  n5 "scatter" ScatterND{reduction="add"}(%0, %15, %16) -> %17 "s": ?
  n6 "slice" Slice(%0, %4, %4, _, %4) -> %18 "sl": f32[?, 2*seq-1, 64]
  output %8
}
"#;

#[test]
fn canonical_text_round_trips_byte_for_byte() {
    // Values %7, %10, %15, %16 are referenced but never defined, so parse must fail...
    let err = parse(CANONICAL).unwrap_err();
    assert!(err.message.contains("dense"), "{err}");
    // ...and with them defined it round-trips.
    let text = CANONICAL
        .replace("  const %6", "  input %7 \"x2\": f32[4, 64]\n  input %10 \"shape\": i64[2]\n  input %15 \"idx\": i64[1, 1]\n  input %16 \"upd\": f32[1, 64]\n  const %6");
    let graph = parse(&text).unwrap();
    let printed = print(&graph);
    // Inputs print first, in declaration order.
    assert_eq!(print(&parse(&printed).unwrap()), printed);
    assert_eq!(parse(&printed).unwrap(), graph);
    for line in text.lines().filter(|l| l.starts_with("  n") || l.starts_with("  weight") || l.starts_with("  const")) {
        assert!(printed.contains(line), "`{line}` is not printed back verbatim:\n{printed}");
    }
    assert_eq!(graph.name, "every \"kind\"\tof\\thing");
    assert!(matches!(&graph.nodes[0].op, Op::Gemm(g) if g.alpha == 0.5 && g.transB == 1 && g.transA == 0));
    assert!(matches!(&graph.values[3].def, ValueDef::Weight(w) if w.location.is_none()));
    assert_eq!(graph.nodes[6].inputs[3], None);
    assert!(printed.contains(r#"ScatterND{reduction="add"}"#));
    assert!(printed.contains("i64[batch, past+seq]"));
    assert!(printed.contains("f32[?, 2*seq-1, 64]"));
}

#[test]
fn parse_errors_name_the_line() {
    let cases = [
        ("graph \"g\" {\n  input %0 \"x\": f33[2]\n}\n", 2, "unknown dtype `f33`"),
        ("graph \"g\" {\n  n0 \"a\" Frobnicate(%0) -> %1 \"y\": ?\n}\n", 2, "unsupported op `Frobnicate`"),
        ("graph \"g\" {\n  n0 \"a\" Gather{axes=1}(%0) -> %1 \"y\": ?\n}\n", 2, "no attribute `axes`"),
        ("graph \"g\" {\n  const %0 \"c\": i64[2] [1]\n}\n", 2, "needs 2 elements"),
        ("graph \"g\" {\n  input %0 \"x\": f32[2]\n", 2, "missing closing"),
        ("graph \"g\" {\n  n1 \"a\" Neg(%0) -> %1 \"y\": ?\n}\n", 2, "expected node n0"),
        ("graph \"g\" {\n  input %0 \"x\": f32[2]\n  input %0 \"y\": f32[2]\n}\n", 3, "defined twice"),
    ];
    for (text, line, message) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, line, "{text}: {err}");
        assert!(err.message.contains(message), "{text}: {err}");
    }
}

#[test]
fn verifier_lists_every_problem() {
    let text = r#"graph "g" {
  input %0 "x": f32[2]
  const %1 "unused": i64[1] [0]
  n0 "a" Add(%0, %3) -> %2 "y": f32[2]
  n1 "b" Neg(%0) -> %3 "z": f32[2]
  n2 "c" Where(%0, %0, %0) -> %4 "w": f32[2]
  output %2
}
"#;
    let err = verify(&parse(text).unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("3 problems"), "{msg}");
    assert!(msg.contains("node n0 `a` (Add) reads %3 `z` before it is defined"), "{msg}");
    assert!(msg.contains("node n2 `c`: Where condition must be bool"), "{msg}");
    assert!(msg.contains("weight or constant %1 `unused` is never used"), "{msg}");
}
