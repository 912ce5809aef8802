//! Op families: which ops the analyses (shape inference, costs) treat alike, and what
//! reductions keep.

use crate::ops::Op;

/// How an op relates its inputs to its outputs, for the analyses that treat whole
/// groups of ops alike (shape inference, costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// One input, one output of the same type and shape.
    Unary,
    /// One input, a bool output of the same shape.
    Predicate,
    /// Two numeric inputs broadcast together, the first input's type.
    Binary,
    /// Any number of inputs of one type broadcast together.
    Variadic,
    /// Two inputs of one type broadcast together, a bool output.
    Comparison,
    /// Two bool inputs broadcast together, a bool output.
    Logical,
    /// Everything else (its own rule).
    Other,
}

impl Op {
    /// The op's [`Family`].
    pub fn family(&self) -> Family {
        use Op::*;
        match self {
            Neg(_) | Abs(_) | Sqrt(_) | Reciprocal(_) | Exp(_) | Log(_) | Tanh(_) | Sigmoid(_) | Sin(_) | Cos(_)
            | Tan(_) | Asin(_) | Acos(_) | Atan(_) | Sinh(_) | Cosh(_) | Asinh(_) | Acosh(_) | Atanh(_) | Erf(_)
            | Relu(_) | Not(_) | BitwiseNot(_) | Floor(_) | Ceil(_) | Round(_) | Sign(_) | Softplus(_)
            | Softsign(_) | LeakyRelu(_) | Elu(_) | Selu(_) | Celu(_) | HardSigmoid(_) | HardSwish(_)
            | ThresholdedRelu(_) | Shrink(_) | Mish(_) | Swish(_) | Gelu(_) | Identity(_) => Family::Unary,
            IsNaN(_) | IsInf(_) => Family::Predicate,
            Add(_) | Sub(_) | Mul(_) | Div(_) | Pow(_) | Mod(_) | BitShift(_) | BitwiseAnd(_) | BitwiseOr(_)
            | BitwiseXor(_) | PRelu(_) => Family::Binary,
            Max(_) | Min(_) | Sum(_) | Mean(_) => Family::Variadic,
            Equal(_) | Less(_) | LessOrEqual(_) | Greater(_) | GreaterOrEqual(_) => Family::Comparison,
            And(_) | Or(_) | Xor(_) => Family::Logical,
            Where(_)
            | Cast(_)
            | CastLike(_)
            | Clip(_)
            | Dropout(_)
            | Shape(_)
            | Size(_)
            | Gather(_)
            | GatherElements(_)
            | GatherND(_)
            | Reshape(_)
            | Unsqueeze(_)
            | Squeeze(_)
            | Flatten(_)
            | Concat(_)
            | Transpose(_)
            | Slice(_)
            | Split(_)
            | Expand(_)
            | Tile(_)
            | Range(_)
            | ConstantOfShape(_)
            | Trilu(_)
            | CumSum(_)
            | ScatterND(_)
            | ScatterElements(_)
            | Pad(_)
            | NonZero(_)
            | OneHot(_)
            | EyeLike(_)
            | TopK(_)
            | ReverseSequence(_)
            | TensorScatter(_)
            | MatMul(_)
            | Gemm(_)
            | Einsum(_)
            | MatMulInteger(_)
            | Softmax(_)
            | LogSoftmax(_)
            | Hardmax(_)
            | LayerNormalization(_)
            | RMSNormalization(_)
            | LpNormalization(_)
            | MeanVarianceNormalization(_)
            | Attention(_)
            | RotaryEmbedding(_)
            | ReduceMean(_)
            | ReduceSum(_)
            | ReduceMax(_)
            | ReduceMin(_)
            | ReduceProd(_)
            | ReduceL1(_)
            | ReduceL2(_)
            | ReduceLogSum(_)
            | ReduceLogSumExp(_)
            | ReduceSumSquare(_)
            | ArgMax(_)
            | ArgMin(_)
            | QuantizeLinear(_)
            | DequantizeLinear(_)
            | DynamicQuantizeLinear(_) => Family::Other,
        }
    }

    /// For the reductions, whether to keep reduced axes and what empty axes mean:
    /// `(keepdims, noop_with_empty_axes)`; `None` for other ops.
    pub fn reduction(&self) -> Option<(bool, bool)> {
        use Op::*;
        let (k, n) = match self {
            ReduceMean(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceSum(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceMax(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceMin(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceProd(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceL1(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceL2(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceLogSum(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceLogSumExp(r) => (r.keepdims, r.noop_with_empty_axes),
            ReduceSumSquare(r) => (r.keepdims, r.noop_with_empty_axes),
            _ => return None,
        };
        Some((k != 0, n != 0))
    }
}
