//! Attribute values, as the frontend reads them and the text format spells them.

use crate::{DType, TensorData};

/// An attribute value before it is checked against an op's typed field.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    DType(DType),
    Tensor(TensorData),
}

impl AttrValue {
    /// Short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            AttrValue::Int(_) => "int",
            AttrValue::Float(_) => "float",
            AttrValue::Ints(_) => "ints",
            AttrValue::Floats(_) => "floats",
            AttrValue::Str(_) => "string",
            AttrValue::DType(_) => "dtype",
            AttrValue::Tensor(_) => "tensor",
        }
    }
}

/// A Rust type an op field can have, converted from and to [`AttrValue`].
pub trait AttrType: Sized {
    /// What the field expects, for error messages.
    const EXPECTED: &'static str;
    /// Convert, or `None` when the value has the wrong kind.
    fn from_attr(value: AttrValue) -> Option<Self>;
    /// The value to print; `None` leaves the attribute out.
    fn to_attr(&self) -> Option<AttrValue>;
}

impl AttrType for i64 {
    const EXPECTED: &'static str = "int";
    fn from_attr(value: AttrValue) -> Option<Self> {
        match value {
            AttrValue::Int(i) => Some(i),
            _ => None,
        }
    }
    fn to_attr(&self) -> Option<AttrValue> {
        Some(AttrValue::Int(*self))
    }
}

impl AttrType for f32 {
    const EXPECTED: &'static str = "float";
    fn from_attr(value: AttrValue) -> Option<Self> {
        match value {
            AttrValue::Float(f) => Some(f),
            AttrValue::Int(i) => Some(i as f32),
            _ => None,
        }
    }
    fn to_attr(&self) -> Option<AttrValue> {
        Some(AttrValue::Float(*self))
    }
}

impl AttrType for Vec<i64> {
    const EXPECTED: &'static str = "ints";
    fn from_attr(value: AttrValue) -> Option<Self> {
        match value {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }
    fn to_attr(&self) -> Option<AttrValue> {
        Some(AttrValue::Ints(self.clone()))
    }
}

impl AttrType for String {
    const EXPECTED: &'static str = "string";
    fn from_attr(value: AttrValue) -> Option<Self> {
        match value {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
    fn to_attr(&self) -> Option<AttrValue> {
        Some(AttrValue::Str(self.clone()))
    }
}

impl AttrType for DType {
    const EXPECTED: &'static str = "dtype (or ONNX data type code)";
    fn from_attr(value: AttrValue) -> Option<Self> {
        match value {
            AttrValue::DType(d) => Some(d),
            AttrValue::Int(code) => i32::try_from(code).ok().and_then(DType::from_onnx),
            _ => None,
        }
    }
    fn to_attr(&self) -> Option<AttrValue> {
        Some(AttrValue::DType(*self))
    }
}

impl AttrType for TensorData {
    const EXPECTED: &'static str = "tensor";
    fn from_attr(value: AttrValue) -> Option<Self> {
        match value {
            AttrValue::Tensor(t) => Some(t),
            _ => None,
        }
    }
    fn to_attr(&self) -> Option<AttrValue> {
        Some(AttrValue::Tensor(self.clone()))
    }
}

impl<T: AttrType> AttrType for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_attr(value: AttrValue) -> Option<Self> {
        T::from_attr(value).map(Some)
    }
    fn to_attr(&self) -> Option<AttrValue> {
        self.as_ref().and_then(T::to_attr)
    }
}
