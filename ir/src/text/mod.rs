//! The canonical text form of a graph, with a printer and a parser that round-trip:
//! `print(&parse(&print(g))?) == print(g)`.
//!
//! ```text
//! graph "gpt2" {
//!   input %0 "input_ids": i64[batch, seq]
//!   weight %1 "wte.weight": f32[256, 64] = "model.onnx" @ 1234 + 65536
//!   weight %2 "w": f32[64] = none
//!   const %3 "axes": i64[1] = [0]
//!   n0 "/Shape" Shape(%0) -> %4 "/Shape_output_0": i64[2]
//!   n1 "/Gather" Gather{axis=0}(%1, %0) -> %5 "emb": f32[batch, seq, 64]
//!   n2 @attn0 "/Split" Split{axis=2}(%5, _) -> %6 "a": ?, %7 "b": ?
//!   output %5
//!   cache %0 -> %6 axis 2
//! }
//! ```
//!
//! Values are `%id`, nodes `nid`; `_` is an omitted optional input; `?` an unknown
//! type or dimension; `@unit` the unit a node belongs to; `cache %past -> %present
//! axis N` a KV-cache pair; `recompute beyond N` the context past which the cache is
//! recomputed. Weights are references: file, byte offset and length (`none`
//! for a shape-only graph). Attributes equal to their defaults are left out.

mod cursor;
mod parse;
pub mod print;

pub use parse::{parse, ParseError};
pub use print::print;

/// Quote a string for the text form.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
