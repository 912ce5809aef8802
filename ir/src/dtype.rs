//! Element types.

use std::fmt;
use std::str::FromStr;

use crate::minifloat::Format;

/// Element type of a tensor. The discriminant-free enum maps to ONNX's
/// `TensorProto.DataType` codes through [`DType::from_onnx`] / [`DType::onnx_code`].
///
/// Besides the usual floats and integers it has ONNX's 8-bit floats, the 4-bit float
/// `f4e2m1` and the 4-bit integers `i4`/`u4`; 4-bit elements are packed two to a byte,
/// low nibble first, as ONNX stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    F8E8M0,
    F4E2M1,
    I4,
    U4,
}

impl DType {
    /// Every dtype, in text-format order.
    pub const ALL: [DType; 21] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F8E8M0,
        DType::F4E2M1,
        DType::I4,
        DType::U4,
    ];

    /// Bits of one element.
    pub fn bits(self) -> u32 {
        match self {
            DType::F4E2M1 | DType::I4 | DType::U4 => 4,
            DType::I8
            | DType::U8
            | DType::Bool
            | DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0 => 8,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 16,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F64 | DType::I64 | DType::U64 => 64,
        }
    }

    /// Bytes `elements` elements take when stored (4-bit elements packed two to a
    /// byte); `None` on overflow.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        elements.checked_mul(u64::from(self.bits())).map(|b| b.div_ceil(8))
    }

    /// Floating-point types (what counts as a parameter).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32
                | DType::F16
                | DType::BF16
                | DType::F64
                | DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1
        )
    }

    /// The IEEE floats of 16 bits and more (`f16`, `bf16`, `f32`, `f64`): what weights
    /// are converted between, unlike the 8- and 4-bit floats that only a quantiser
    /// produces.
    pub fn is_ieee_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// Integer types, signed or not (not bool).
    pub fn is_integer(self) -> bool {
        !self.is_float() && self != DType::Bool
    }

    /// Unsigned integer types.
    pub fn is_unsigned(self) -> bool {
        matches!(self, DType::U4 | DType::U8 | DType::U16 | DType::U32 | DType::U64)
    }

    /// The range of an integer type (`None` for floats and bool); u64 is given up to
    /// `i64::MAX`, which is what shardc's integer arithmetic holds.
    pub fn int_range(self) -> Option<(i64, i64)> {
        Some(match self {
            DType::I4 => (-8, 7),
            DType::U4 => (0, 15),
            DType::I8 => (i8::MIN.into(), i8::MAX.into()),
            DType::U8 => (0, u8::MAX.into()),
            DType::I16 => (i16::MIN.into(), i16::MAX.into()),
            DType::U16 => (0, u16::MAX.into()),
            DType::I32 => (i32::MIN.into(), i32::MAX.into()),
            DType::U32 => (0, u32::MAX.into()),
            DType::I64 | DType::U64 => (i64::MIN, i64::MAX),
            _ => return None,
        })
    }

    /// The minifloat format of an 8- or 4-bit float (not `f8e8m0`, which has no sign
    /// or mantissa and rounds by its own rule).
    pub fn minifloat(self) -> Option<Format> {
        Some(match self {
            DType::F8E4M3FN => Format::E4M3FN,
            DType::F8E4M3FNUZ => Format::E4M3FNUZ,
            DType::F8E5M2 => Format::E5M2,
            DType::F8E5M2FNUZ => Format::E5M2FNUZ,
            DType::F4E2M1 => Format::E2M1,
            _ => return None,
        })
    }

    /// The text-format spelling (`f32`, `bf16`, `i64`, `bool`, `f8e4m3fn`, `i4`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Bool => "bool",
            DType::F8E4M3FN => "f8e4m3fn",
            DType::F8E4M3FNUZ => "f8e4m3fnuz",
            DType::F8E5M2 => "f8e5m2",
            DType::F8E5M2FNUZ => "f8e5m2fnuz",
            DType::F8E8M0 => "f8e8m0",
            DType::F4E2M1 => "f4e2m1",
            DType::I4 => "i4",
            DType::U4 => "u4",
        }
    }

    /// From an ONNX `TensorProto.DataType` code; `None` for types shardc does not model
    /// (strings, complex numbers, 2-bit integers).
    pub fn from_onnx(code: i32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::U16,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            12 => DType::U32,
            13 => DType::U64,
            16 => DType::BF16,
            17 => DType::F8E4M3FN,
            18 => DType::F8E4M3FNUZ,
            19 => DType::F8E5M2,
            20 => DType::F8E5M2FNUZ,
            21 => DType::U4,
            22 => DType::I4,
            23 => DType::F4E2M1,
            24 => DType::F8E8M0,
            _ => return None,
        })
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::BF16 => 16,
            DType::F8E4M3FN => 17,
            DType::F8E4M3FNUZ => 18,
            DType::F8E5M2 => 19,
            DType::F8E5M2FNUZ => 20,
            DType::U4 => 21,
            DType::I4 => 22,
            DType::F4E2M1 => 23,
            DType::F8E8M0 => 24,
        }
    }

    /// The safetensors spelling (`F32`, `BF16`, `I64`, `BOOL`, `F8_E4M3`, ...) of a
    /// dtype safetensors stores one element per byte or more; `None` for the types it
    /// lacks (`f8e4m3fnuz`, `f8e5m2fnuz`) or stores packed (the 4-bit types).
    pub fn safetensors_name(self) -> Option<&'static str> {
        Some(match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::U8 => "U8",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::Bool => "BOOL",
            DType::F8E4M3FN => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E8M0 => "F8_E8M0",
            DType::F8E4M3FNUZ | DType::F8E5M2FNUZ | DType::F4E2M1 | DType::I4 | DType::U4 => return None,
        })
    }

    /// The dtype of a safetensors spelling that [`DType::safetensors_name`] writes.
    pub fn from_safetensors(name: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.safetensors_name() == Some(name))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL.iter().copied().find(|d| d.name() == s).ok_or_else(|| format!("unknown dtype `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_sizes_agree() {
        for d in DType::ALL {
            assert_eq!(DType::from_onnx(d.onnx_code()), Some(d));
            assert_eq!(d.name().parse::<DType>(), Ok(d));
            if let Some(st) = d.safetensors_name() {
                assert_eq!(DType::from_safetensors(st), Some(d));
            }
        }
        assert_eq!(DType::I4.byte_len(3), Some(2));
        assert_eq!(DType::F32.byte_len(3), Some(12));
        assert_eq!(DType::U64.byte_len(u64::MAX), None);
    }
}
