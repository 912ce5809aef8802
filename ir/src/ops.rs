//! The op set: one closed enum with typed attributes.
//!
//! Op names and attribute names are ONNX's (operator specs:
//! <https://onnx.ai/onnx/operators/>), at the semantics of opset 17 unless a field says
//! otherwise. Every attribute of the spec is a typed field, so nothing the exporter wrote
//! is dropped; an attribute an op does not know is an error naming it. Passes match on
//! [`Op`] exhaustively; only frontends and the text parser look ops up by name.

use std::collections::BTreeMap;

use crate::attr::{AttrType, AttrValue};
use crate::{DType, TensorData};

/// Why an op could not be built from a name and attributes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    #[error("unsupported op `{0}` (shardc's op set: {list})", list = Op::NAMES.join(", "))]
    UnknownOp(String),
    #[error("op `{op}` has no attribute `{attr}` (it takes: {known})")]
    UnknownAttr { op: &'static str, attr: String, known: String },
    #[error("op `{op}` needs attribute `{attr}`")]
    MissingAttr { op: &'static str, attr: &'static str },
    #[error("attribute `{attr}` of op `{op}` must be {expected}, got {got}")]
    BadAttr { op: &'static str, attr: &'static str, expected: &'static str, got: &'static str },
}

/// Attributes as read, keyed by name.
pub type Attrs = BTreeMap<String, AttrValue>;

/// Arity of an op: inclusive ranges of input and output counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arity {
    pub min_inputs: usize,
    pub max_inputs: usize,
    pub min_outputs: usize,
    pub max_outputs: usize,
}

macro_rules! attr_default {
    ($op:expr, $attr:expr) => {
        return Err(OpError::MissingAttr { op: $op, attr: $attr })
    };
    ($op:expr, $attr:expr, $default:expr) => {
        $default
    };
}

macro_rules! attr_is_default {
    ($value:expr) => {
        false
    };
    ($value:expr, $default:expr) => {
        *$value == $default
    };
}

macro_rules! define_ops {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident ($min_in:literal ..= $max_in:literal -> $min_out:literal ..= $max_out:literal) {
            $( $field:ident : $fty:ty $(= $default:expr)? ),* $(,)?
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Clone, Debug, PartialEq)]
            #[allow(non_snake_case)]
            pub struct $name { $( pub $field: $fty, )* }
        )*

        /// Every op shardc knows.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op { $( $name($name), )* }

        impl Op {
            /// Every op name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[ $( stringify!($name), )* ];

            /// The op's name (ONNX `op_type`).
            pub fn name(&self) -> &'static str {
                match self { $( Op::$name(_) => stringify!($name), )* }
            }

            /// Input and output counts the op accepts.
            pub fn arity(&self) -> Arity {
                match self {
                    $( Op::$name(_) => Arity {
                        min_inputs: $min_in, max_inputs: $max_in,
                        min_outputs: $min_out, max_outputs: $max_out,
                    }, )*
                }
            }

            /// Attributes that differ from their defaults, in declaration order.
            #[allow(unused_variables, unused_mut)]
            pub fn attributes(&self) -> Vec<(&'static str, AttrValue)> {
                let mut out = Vec::new();
                match self {
                    $( Op::$name(op) => {
                        $(
                            if !attr_is_default!(&op.$field $(, $default)?) {
                                if let Some(v) = AttrType::to_attr(&op.$field) {
                                    out.push((stringify!($field), v));
                                }
                            }
                        )*
                    } )*
                }
                out
            }

            /// Build an op from its name and attributes; every attribute must be known.
            #[allow(unused_mut, non_snake_case)]
            pub fn from_attrs(name: &str, mut attrs: Attrs) -> Result<Op, OpError> {
                match name {
                    $( stringify!($name) => {
                        const OP: &str = stringify!($name);
                        $(
                            let $field: $fty = match attrs.remove(stringify!($field)) {
                                Some(value) => {
                                    let got = value.kind();
                                    <$fty as AttrType>::from_attr(value).ok_or(OpError::BadAttr {
                                        op: OP,
                                        attr: stringify!($field),
                                        expected: <$fty as AttrType>::EXPECTED,
                                        got,
                                    })?
                                }
                                None => { attr_default!(OP, stringify!($field) $(, $default)?) }
                            };
                        )*
                        if let Some(attr) = attrs.keys().next() {
                            let known: &[&str] = &[ $( stringify!($field), )* ];
                            return Err(OpError::UnknownAttr {
                                op: OP,
                                attr: attr.clone(),
                                known: if known.is_empty() { "none".into() } else { known.join(", ") },
                            });
                        }
                        Ok(Op::$name($name { $( $field, )* }))
                    } )*
                    other => Err(OpError::UnknownOp(other.to_string())),
                }
            }
        }
    };
}

define_ops! {
    // ---- elementwise, binary with broadcasting ----
    /// `A + B` (numpy broadcasting).
    Add (2..=2 -> 1..=1) {}
    /// `A - B`.
    Sub (2..=2 -> 1..=1) {}
    /// `A * B`.
    Mul (2..=2 -> 1..=1) {}
    /// `A / B` (integer division truncates).
    Div (2..=2 -> 1..=1) {}
    /// `A ^ B`.
    Pow (2..=2 -> 1..=1) {}
    /// Remainder; `fmod = 1` for C-style fmod.
    Mod (2..=2 -> 1..=1) { fmod: i64 = 0 }
    /// Elementwise maximum of the inputs.
    Max (1..=255 -> 1..=1) {}
    /// Elementwise minimum of the inputs.
    Min (1..=255 -> 1..=1) {}
    /// `A == B` → bool.
    Equal (2..=2 -> 1..=1) {}
    /// `A < B` → bool.
    Less (2..=2 -> 1..=1) {}
    /// `A <= B` → bool.
    LessOrEqual (2..=2 -> 1..=1) {}
    /// `A > B` → bool.
    Greater (2..=2 -> 1..=1) {}
    /// `A >= B` → bool.
    GreaterOrEqual (2..=2 -> 1..=1) {}
    /// Logical and.
    And (2..=2 -> 1..=1) {}
    /// Logical or.
    Or (2..=2 -> 1..=1) {}
    /// `cond ? X : Y`, broadcasting all three.
    Where (3..=3 -> 1..=1) {}

    // ---- elementwise, unary ----
    /// `-X`.
    Neg (1..=1 -> 1..=1) {}
    /// `|X|`.
    Abs (1..=1 -> 1..=1) {}
    /// Square root.
    Sqrt (1..=1 -> 1..=1) {}
    /// `1 / X`.
    Reciprocal (1..=1 -> 1..=1) {}
    /// `e ^ X`.
    Exp (1..=1 -> 1..=1) {}
    /// Natural logarithm.
    Log (1..=1 -> 1..=1) {}
    /// Hyperbolic tangent.
    Tanh (1..=1 -> 1..=1) {}
    /// Logistic sigmoid.
    Sigmoid (1..=1 -> 1..=1) {}
    /// Sine.
    Sin (1..=1 -> 1..=1) {}
    /// Cosine.
    Cos (1..=1 -> 1..=1) {}
    /// Error function.
    Erf (1..=1 -> 1..=1) {}
    /// `max(X, 0)`.
    Relu (1..=1 -> 1..=1) {}
    /// Logical not.
    Not (1..=1 -> 1..=1) {}
    /// Round down.
    Floor (1..=1 -> 1..=1) {}
    /// Round up.
    Ceil (1..=1 -> 1..=1) {}
    /// Copy.
    Identity (1..=1 -> 1..=1) {}
    /// Convert elements to `to`; `saturate` applies to 8-bit float targets only.
    Cast (1..=1 -> 1..=1) { to: DType, saturate: i64 = 1 }

    // ---- shape and data movement ----
    /// The shape of the input as a 1-D i64 tensor, dims `start..end`.
    Shape (1..=1 -> 1..=1) { start: i64 = 0, end: Option<i64> = None }
    /// Gather slices along `axis` at the given indices.
    Gather (2..=2 -> 1..=1) { axis: i64 = 0 }
    /// Reshape to the shape in input 1 (`0` copies a dim unless `allowzero`, `-1` infers).
    Reshape (2..=2 -> 1..=1) { allowzero: i64 = 0 }
    /// Insert size-1 axes listed in input 1.
    Unsqueeze (2..=2 -> 1..=1) {}
    /// Remove the size-1 axes listed in input 1 (all size-1 axes when absent).
    Squeeze (1..=2 -> 1..=1) {}
    /// Concatenate along `axis`.
    Concat (1..=255 -> 1..=1) { axis: i64 }
    /// Permute axes (reverse them when `perm` is absent).
    Transpose (1..=1 -> 1..=1) { perm: Option<Vec<i64>> = None }
    /// Slice with starts, ends, axes and steps given as inputs.
    Slice (3..=5 -> 1..=1) {}
    /// Split along `axis` into the sizes of input 1, or `num_outputs` equal parts (opset 18).
    Split (1..=2 -> 1..=255) { axis: i64 = 0, num_outputs: Option<i64> = None }
    /// Broadcast to the shape in input 1.
    Expand (2..=2 -> 1..=1) {}
    /// Repeat along each axis by the counts in input 1.
    Tile (2..=2 -> 1..=1) {}
    /// `start, start+delta, ...` below `limit` (scalar inputs).
    Range (3..=3 -> 1..=1) {}
    /// A tensor of the shape in input 0 filled with `value` (f32 zero when absent).
    ConstantOfShape (1..=1 -> 1..=1) { value: Option<TensorData> = None }
    /// Keep the lower (`upper = 0`) or upper triangle, offset by input 1.
    Trilu (1..=2 -> 1..=1) { upper: i64 = 1 }
    /// Cumulative sum along the axis in input 1.
    CumSum (2..=2 -> 1..=1) { exclusive: i64 = 0, reverse: i64 = 0 }
    /// Write `updates` into a copy of `data` at `indices`.
    ScatterND (3..=3 -> 1..=1) { reduction: String = String::from("none") }

    // ---- linear algebra and normalisation ----
    /// Matrix product with numpy broadcasting of batch dims.
    MatMul (2..=2 -> 1..=1) {}
    /// `alpha * A' * B' + beta * C` for 2-D A and B.
    Gemm (2..=3 -> 1..=1) { alpha: f32 = 1.0, beta: f32 = 1.0, transA: i64 = 0, transB: i64 = 0 }
    /// Softmax along `axis`.
    Softmax (1..=1 -> 1..=1) { axis: i64 = -1 }
    /// Layer normalisation over `axis..rank`, with scale and optional bias.
    LayerNormalization (2..=3 -> 1..=3) { axis: i64 = -1, epsilon: f32 = 1e-5, stash_type: i64 = 1 }

    // ---- reductions ----
    /// Mean over `axes` (attribute up to opset 17, input 1 from opset 18).
    ReduceMean (1..=2 -> 1..=1) { axes: Option<Vec<i64>> = None, keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Sum over the axes in input 1.
    ReduceSum (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Maximum over `axes` (attribute up to opset 17, input 1 from opset 18).
    ReduceMax (1..=2 -> 1..=1) { axes: Option<Vec<i64>> = None, keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Index of the maximum along `axis`.
    ArgMax (1..=1 -> 1..=1) { axis: i64 = 0, keepdims: i64 = 1, select_last_index: i64 = 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_ops_with_defaults_and_rejects_unknown_attributes() {
        let op = Op::from_attrs("Gather", Attrs::new()).unwrap();
        assert_eq!(op, Op::Gather(Gather { axis: 0 }));
        assert!(op.attributes().is_empty());

        let mut attrs = Attrs::new();
        attrs.insert("axis".into(), AttrValue::Int(1));
        let op = Op::from_attrs("Gather", attrs).unwrap();
        assert_eq!(op.attributes(), vec![("axis", AttrValue::Int(1))]);

        let mut attrs = Attrs::new();
        attrs.insert("bogus".into(), AttrValue::Int(1));
        let err = Op::from_attrs("Gather", attrs).unwrap_err();
        assert_eq!(err.to_string(), "op `Gather` has no attribute `bogus` (it takes: axis)");

        assert!(matches!(Op::from_attrs("Concat", Attrs::new()), Err(OpError::MissingAttr { .. })));
        let err = Op::from_attrs("NonMaxSuppression", Attrs::new()).unwrap_err();
        assert!(err.to_string().starts_with("unsupported op `NonMaxSuppression`"));
    }

    #[test]
    fn dtype_attribute_accepts_onnx_codes() {
        let mut attrs = Attrs::new();
        attrs.insert("to".into(), AttrValue::Int(7));
        assert_eq!(Op::from_attrs("Cast", attrs).unwrap(), Op::Cast(Cast { to: DType::I64, saturate: 1 }));
    }
}
