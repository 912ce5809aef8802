//! The op set: one closed enum with typed attributes.
//!
//! Op names and attribute names are ONNX's (operator specs:
//! <https://onnx.ai/onnx/operators/>), at the semantics of each op's latest version up
//! to opset 24: inputs that were attributes in older opsets (axes, split sizes, slice
//! bounds, clip bounds, pads, `k`) are inputs here, and the ONNX frontend converts
//! older models on import. Every attribute of the spec is a typed field, so nothing the exporter wrote
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

define_ops! {
    // ---- elementwise, binary with broadcasting ----
    /// `A + B` (numpy broadcasting; integers wrap).
    Add (2..=2 -> 1..=1) {}
    /// `A - B`.
    Sub (2..=2 -> 1..=1) {}
    /// `A * B`.
    Mul (2..=2 -> 1..=1) {}
    /// `A / B` (integer division truncates toward zero).
    Div (2..=2 -> 1..=1) {}
    /// `A ^ B`; the exponent may have another numeric type.
    Pow (2..=2 -> 1..=1) {}
    /// Remainder: with the divisor's sign (`fmod = 0`, integers), or C's `fmod` (`fmod = 1`).
    Mod (2..=2 -> 1..=1) { fmod: i64 = 0 }
    /// `X << Y` or `X >> Y` on unsigned integers (`direction` is `LEFT` or `RIGHT`).
    BitShift (2..=2 -> 1..=1) { direction: String }
    /// Bitwise and of integers.
    BitwiseAnd (2..=2 -> 1..=1) {}
    /// Bitwise or of integers.
    BitwiseOr (2..=2 -> 1..=1) {}
    /// Bitwise exclusive or of integers.
    BitwiseXor (2..=2 -> 1..=1) {}
    /// `x < 0 ? slope · x : x`, the slope broadcast to `x`.
    PRelu (2..=2 -> 1..=1) {}
    /// Elementwise maximum of the inputs (NaN wins).
    Max (1..=255 -> 1..=1) {}
    /// Elementwise minimum of the inputs (NaN wins).
    Min (1..=255 -> 1..=1) {}
    /// Elementwise sum of the inputs.
    Sum (1..=255 -> 1..=1) {}
    /// Elementwise mean of the inputs.
    Mean (1..=255 -> 1..=1) {}
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
    /// Logical exclusive or.
    Xor (2..=2 -> 1..=1) {}
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
    /// Tangent.
    Tan (1..=1 -> 1..=1) {}
    /// Arcsine.
    Asin (1..=1 -> 1..=1) {}
    /// Arccosine.
    Acos (1..=1 -> 1..=1) {}
    /// Arctangent.
    Atan (1..=1 -> 1..=1) {}
    /// Hyperbolic sine.
    Sinh (1..=1 -> 1..=1) {}
    /// Hyperbolic cosine.
    Cosh (1..=1 -> 1..=1) {}
    /// Inverse hyperbolic sine.
    Asinh (1..=1 -> 1..=1) {}
    /// Inverse hyperbolic cosine.
    Acosh (1..=1 -> 1..=1) {}
    /// Inverse hyperbolic tangent.
    Atanh (1..=1 -> 1..=1) {}
    /// Error function.
    Erf (1..=1 -> 1..=1) {}
    /// `max(X, 0)`.
    Relu (1..=1 -> 1..=1) {}
    /// Logical not.
    Not (1..=1 -> 1..=1) {}
    /// Bitwise not of integers.
    BitwiseNot (1..=1 -> 1..=1) {}
    /// Round down.
    Floor (1..=1 -> 1..=1) {}
    /// Round up.
    Ceil (1..=1 -> 1..=1) {}
    /// Round to nearest, halves to even.
    Round (1..=1 -> 1..=1) {}
    /// −1, 0 or 1 by the sign of X.
    Sign (1..=1 -> 1..=1) {}
    /// NaN test → bool.
    IsNaN (1..=1 -> 1..=1) {}
    /// Infinity test → bool, for the signs asked for.
    IsInf (1..=1 -> 1..=1) { detect_negative: i64 = 1, detect_positive: i64 = 1 }
    /// `ln(1 + e^X)`.
    Softplus (1..=1 -> 1..=1) {}
    /// `X / (1 + |X|)`.
    Softsign (1..=1 -> 1..=1) {}
    /// `X < 0 ? alpha · X : X`.
    LeakyRelu (1..=1 -> 1..=1) { alpha: f32 = 0.01 }
    /// `X < 0 ? alpha · (e^X − 1) : X`.
    Elu (1..=1 -> 1..=1) { alpha: f32 = 1.0 }
    /// `gamma · (X <= 0 ? alpha · (e^X − 1) : X)`.
    Selu (1..=1 -> 1..=1) { alpha: f32 = 1.673_263_2, gamma: f32 = 1.050_701 }
    /// `max(0, X) + min(0, alpha · (e^(X / alpha) − 1))`.
    Celu (1..=1 -> 1..=1) { alpha: f32 = 1.0 }
    /// `max(0, min(1, alpha · X + beta))`.
    HardSigmoid (1..=1 -> 1..=1) { alpha: f32 = 0.2, beta: f32 = 0.5 }
    /// `X · max(0, min(1, X / 6 + 1/2))`.
    HardSwish (1..=1 -> 1..=1) {}
    /// `X > alpha ? X : 0`.
    ThresholdedRelu (1..=1 -> 1..=1) { alpha: f32 = 1.0 }
    /// `X < −lambd ? X + bias : X > lambd ? X − bias : 0`.
    Shrink (1..=1 -> 1..=1) { bias: f32 = 0.0, lambd: f32 = 0.5 }
    /// `X · tanh(softplus(X))`.
    Mish (1..=1 -> 1..=1) {}
    /// `X · sigmoid(alpha · X)`.
    Swish (1..=1 -> 1..=1) { alpha: f32 = 1.0 }
    /// GELU: exact (`approximate = "none"`) or with tanh (`"tanh"`).
    Gelu (1..=1 -> 1..=1) { approximate: String = String::from("none") }
    /// Copy.
    Identity (1..=1 -> 1..=1) {}
    /// Convert elements to `to`; `saturate` and `round_mode` apply to 8-bit float targets.
    Cast (1..=1 -> 1..=1) { to: DType, saturate: i64 = 1, round_mode: String = String::from("up") }
    /// Convert elements to the dtype of input 1.
    CastLike (2..=2 -> 1..=1) { saturate: i64 = 1, round_mode: String = String::from("up") }
    /// Clamp to the scalars `min` (input 1) and `max` (input 2), each optional.
    Clip (1..=3 -> 1..=1) {}
    /// Inference: the input; with `training_mode` (input 2) true, only ratio 0 is deterministic.
    Dropout (1..=3 -> 1..=2) { seed: Option<i64> = None }

    // ---- shape and data movement ----
    /// The shape of the input as a 1-D i64 tensor, dims `start..end`.
    Shape (1..=1 -> 1..=1) { start: i64 = 0, end: Option<i64> = None }
    /// The number of elements as an i64 scalar.
    Size (1..=1 -> 1..=1) {}
    /// Gather slices along `axis` at the given indices.
    Gather (2..=2 -> 1..=1) { axis: i64 = 0 }
    /// `out[i][j] = data[indices[i][j]][j]` along `axis` (indices shaped like the output).
    GatherElements (2..=2 -> 1..=1) { axis: i64 = 0 }
    /// Gather slices addressed by index tuples (the last axis of `indices`).
    GatherND (2..=2 -> 1..=1) { batch_dims: i64 = 0 }
    /// Reshape to the shape in input 1 (`0` copies a dim unless `allowzero`, `-1` infers).
    Reshape (2..=2 -> 1..=1) { allowzero: i64 = 0 }
    /// Insert size-1 axes listed in input 1.
    Unsqueeze (2..=2 -> 1..=1) {}
    /// Remove the size-1 axes listed in input 1 (all size-1 axes when absent).
    Squeeze (1..=2 -> 1..=1) {}
    /// Reshape to 2-D: dims before `axis` and from `axis` on.
    Flatten (1..=1 -> 1..=1) { axis: i64 = 1 }
    /// Concatenate along `axis`.
    Concat (1..=255 -> 1..=1) { axis: i64 }
    /// Permute axes (reverse them when `perm` is absent).
    Transpose (1..=1 -> 1..=1) { perm: Option<Vec<i64>> = None }
    /// Slice with starts, ends, axes and steps given as inputs.
    Slice (3..=5 -> 1..=1) {}
    /// Split along `axis` into the sizes of input 1, or `num_outputs` parts.
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
    /// Write `updates` into a copy of `data` at index tuples (`reduction`: none, add, mul, max, min).
    ScatterND (3..=3 -> 1..=1) { reduction: String = String::from("none") }
    /// Write `updates` into a copy of `data` at `indices` along `axis`.
    ScatterElements (3..=3 -> 1..=1) { axis: i64 = 0, reduction: String = String::from("none") }
    /// Pad by the begin/end amounts of input 1 (over the axes of input 3): constant, edge, reflect or wrap.
    Pad (2..=4 -> 1..=1) { mode: String = String::from("constant") }
    /// Indices of the non-zero elements, `[rank, count]` (count known at run time only).
    NonZero (1..=1 -> 1..=1) {}
    /// One-hot encoding: `values[1]` at each index along `axis`, `values[0]` elsewhere.
    OneHot (3..=3 -> 1..=1) { axis: i64 = -1 }
    /// A 2-D tensor shaped like the input with ones on diagonal `k`.
    EyeLike (1..=1 -> 1..=1) { dtype: Option<DType> = None, k: i64 = 0 }
    /// The `K` (input 1) largest or smallest elements along `axis`, and their indices.
    TopK (2..=2 -> 2..=2) { axis: i64 = -1, largest: i64 = 1, sorted: i64 = 1 }
    /// Reverse the first `sequence_lens[b]` steps of each batch entry along `time_axis`.
    ReverseSequence (2..=2 -> 1..=1) { batch_axis: i64 = 1, time_axis: i64 = 0 }
    /// Write `update` into a copy of a cache along `axis`, at `write_indices` per batch (`linear` or `circular`).
    TensorScatter (2..=3 -> 1..=1) { axis: i64 = -2, mode: String = String::from("linear") }

    // ---- linear algebra and normalisation ----
    /// Matrix product with numpy broadcasting of batch dims.
    MatMul (2..=2 -> 1..=1) {}
    /// `alpha * A' * B' + beta * C` for 2-D A and B.
    Gemm (2..=3 -> 1..=1) { alpha: f32 = 1.0, beta: f32 = 1.0, transA: i64 = 0, transB: i64 = 0 }
    /// Einstein summation over the inputs.
    Einsum (1..=255 -> 1..=1) { equation: String }
    /// Integer matrix product with zero points (inputs 2 and 3), i32 result.
    MatMulInteger (2..=4 -> 1..=1) {}
    /// Softmax along `axis`.
    Softmax (1..=1 -> 1..=1) { axis: i64 = -1 }
    /// Log of the softmax along `axis`.
    LogSoftmax (1..=1 -> 1..=1) { axis: i64 = -1 }
    /// 1 at the first maximum along `axis`, 0 elsewhere.
    Hardmax (1..=1 -> 1..=1) { axis: i64 = -1 }
    /// Layer normalisation over `axis..rank`, with scale and optional bias.
    LayerNormalization (2..=3 -> 1..=3) { axis: i64 = -1, epsilon: f32 = 1e-5, stash_type: i64 = 1 }
    /// `X / sqrt(mean(X²) + epsilon) · scale`, the mean over `axis..rank`.
    RMSNormalization (2..=2 -> 1..=1) { axis: i64 = -1, epsilon: f32 = 1e-5, stash_type: i64 = 1 }
    /// `X / ‖X‖_p` along `axis` (p = 1 or 2).
    LpNormalization (1..=1 -> 1..=1) { axis: i64 = -1, p: i64 = 2 }
    /// `(X − mean) / sqrt(variance)` over `axes`.
    MeanVarianceNormalization (1..=1 -> 1..=1) { axes: Vec<i64> = vec![0, 2, 3] }
    /// Scaled dot-product attention (ONNX opset 23/24): Q, K, V, optional mask, past key
    /// and value, and (opset 24) lengths of the unpadded keys.
    Attention (3..=7 -> 1..=4) {
        is_causal: i64 = 0,
        kv_num_heads: Option<i64> = None,
        q_num_heads: Option<i64> = None,
        qk_matmul_output_mode: i64 = 0,
        scale: Option<f32> = None,
        softcap: f32 = 0.0,
        softmax_precision: Option<i64> = None,
    }
    /// Rotary position embedding of X with cos/sin caches, at optional position ids.
    RotaryEmbedding (3..=4 -> 1..=1) { interleaved: i64 = 0, num_heads: Option<i64> = None, rotary_embedding_dim: i64 = 0 }

    // ---- reductions (axes in input 1; all axes when absent, unless `noop_with_empty_axes`) ----
    /// Mean.
    ReduceMean (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Sum.
    ReduceSum (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Maximum.
    ReduceMax (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Minimum.
    ReduceMin (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Product.
    ReduceProd (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Sum of absolute values.
    ReduceL1 (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Square root of the sum of squares.
    ReduceL2 (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Log of the sum.
    ReduceLogSum (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Log of the sum of exponentials.
    ReduceLogSumExp (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Sum of squares.
    ReduceSumSquare (1..=2 -> 1..=1) { keepdims: i64 = 1, noop_with_empty_axes: i64 = 0 }
    /// Index of the maximum along `axis`.
    ArgMax (1..=1 -> 1..=1) { axis: i64 = 0, keepdims: i64 = 1, select_last_index: i64 = 0 }
    /// Index of the minimum along `axis`.
    ArgMin (1..=1 -> 1..=1) { axis: i64 = 0, keepdims: i64 = 1, select_last_index: i64 = 0 }

    // ---- quantisation ----
    /// `saturate(round(x / scale) + zero_point)` per tensor, per `axis` or in blocks of `block_size`.
    QuantizeLinear (2..=3 -> 1..=1) {
        axis: i64 = 1,
        block_size: i64 = 0,
        output_dtype: Option<DType> = None,
        precision: Option<DType> = None,
        saturate: i64 = 1,
    }
    /// `(x − zero_point) · scale` per tensor, per `axis` or in blocks of `block_size`.
    DequantizeLinear (2..=3 -> 1..=1) { axis: i64 = 1, block_size: i64 = 0, output_dtype: Option<DType> = None }
    /// u8 quantisation with scale and zero point computed from the input's range.
    DynamicQuantizeLinear (1..=1 -> 3..=3) {}
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
        assert_eq!(
            Op::from_attrs("Cast", attrs).unwrap(),
            Op::Cast(Cast { to: DType::I64, saturate: 1, round_mode: "up".into() })
        );
    }
}
