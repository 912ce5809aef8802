//! 8- and 4-bit floating-point formats (ONNX's `FLOAT8E4M3FN`, `FLOAT8E4M3FNUZ`,
//! `FLOAT8E5M2`, `FLOAT8E5M2FNUZ`, `FLOAT8E8M0`, `FLOAT4E2M1`): decoding to f32 and
//! encoding from f32 with round-to-nearest-even, as the ONNX spec defines `Cast` to
//! them (<https://onnx.ai/onnx/technical/float8.html>, `.../float4.html`).
//!
//! With `saturate`, values beyond the largest finite value (and infinities, where
//! the format has none) become that value; without it they become NaN, or infinity
//! for `E5M2`, the one format with infinities. The `…FNUZ` formats have no negative
//! zero: a value that rounds to −0 is +0, and `0x80` is their NaN. `E8M0` holds a
//! power of two only (no sign, no zero); its rounding is a separate `round_mode`.
//! `E2M1` has neither infinity nor NaN: out-of-range values saturate.

/// One of the minifloat formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    E4M3FN,
    E4M3FNUZ,
    E5M2,
    E5M2FNUZ,
    E2M1,
}

struct Layout {
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    /// Largest finite magnitude.
    max: f32,
    /// The encoding of NaN (positive sign), if the format has one.
    nan: Option<u8>,
    /// The encoding of +infinity, if the format has one.
    inf: Option<u8>,
    /// No negative zero; `0x80` is NaN.
    unsigned_zero: bool,
}

impl Format {
    fn layout(self) -> Layout {
        match self {
            Format::E4M3FN => Layout {
                exp_bits: 4,
                man_bits: 3,
                bias: 7,
                max: 448.0,
                nan: Some(0x7F),
                inf: None,
                unsigned_zero: false,
            },
            Format::E4M3FNUZ => Layout {
                exp_bits: 4,
                man_bits: 3,
                bias: 8,
                max: 240.0,
                nan: Some(0x80),
                inf: None,
                unsigned_zero: true,
            },
            Format::E5M2 => Layout {
                exp_bits: 5,
                man_bits: 2,
                bias: 15,
                max: 57344.0,
                nan: Some(0x7E),
                inf: Some(0x7C),
                unsigned_zero: false,
            },
            Format::E5M2FNUZ => Layout {
                exp_bits: 5,
                man_bits: 2,
                bias: 16,
                max: 57344.0,
                nan: Some(0x80),
                inf: None,
                unsigned_zero: true,
            },
            Format::E2M1 => {
                Layout { exp_bits: 2, man_bits: 1, bias: 1, max: 6.0, nan: None, inf: None, unsigned_zero: false }
            }
        }
    }

    /// Bits of one element (8, or 4 for `E2M1`).
    pub fn bits(self) -> u32 {
        let l = self.layout();
        1 + l.exp_bits + l.man_bits
    }

    /// The value of an encoding (only the low [`Format::bits`] bits are read).
    pub fn decode(self, code: u8) -> f32 {
        let l = self.layout();
        let bits = 1 + l.exp_bits + l.man_bits;
        let code = if bits == 8 { code } else { code & ((1u8 << bits) - 1) };
        if l.nan == Some(code) || (!l.unsigned_zero && l.nan.is_some_and(|n| n | 0x80 == code)) {
            return f32::NAN;
        }
        if let Some(inf) = l.inf {
            // E5M2 is IEEE-like: an all-ones exponent is infinity or NaN.
            if code & inf == inf {
                return if code & 0x7F != inf {
                    f32::NAN
                } else if code & 0x80 != 0 {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                };
            }
        }
        let sign = (code >> (bits - 1)) & 1;
        let exp = i32::from((code >> l.man_bits) & ((1u8 << l.exp_bits) - 1));
        let man = f32::from(code & ((1u8 << l.man_bits) - 1));
        let scale = (1u32 << l.man_bits) as f32;
        let magnitude =
            if exp == 0 { man / scale * 2f32.powi(1 - l.bias) } else { (1.0 + man / scale) * 2f32.powi(exp - l.bias) };
        if sign == 1 {
            -magnitude
        } else {
            magnitude
        }
    }

    /// The encoding of `v`, rounded to nearest even.
    pub fn encode(self, v: f32, saturate: bool) -> u8 {
        let l = self.layout();
        let bits = 1 + l.exp_bits + l.man_bits;
        let sign_bit = 1u8 << (bits - 1);
        if v.is_nan() {
            // E2M1 has no NaN. ONNX's expected values come from ml_dtypes, which
            // turns NaN into a zero of the opposite sign; shardc does the same.
            return l.nan.unwrap_or(if v.is_sign_negative() { 0 } else { sign_bit });
        }
        let negative = v.is_sign_negative();
        let a = v.abs();
        let overflow = |negative: bool| -> u8 {
            let sign = if negative { sign_bit } else { 0 };
            if saturate || (l.nan.is_none() && l.inf.is_none()) {
                sign | self.max_code()
            } else if let Some(inf) = l.inf {
                sign | inf
            } else {
                l.nan.unwrap_or(sign_bit - 1)
            }
        };
        if a.is_infinite() {
            return overflow(negative);
        }
        // Enumerate the magnitudes in order and pick the nearest, ties to even code.
        let max_code = self.max_code();
        let mut lo = 0u8;
        let mut hi = max_code;
        // Binary search the largest code whose value is <= a.
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.decode(mid) <= a {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let below = lo;
        let code = if self.decode(below) == a {
            below
        } else if below == max_code {
            // Beyond the largest finite value: round to it if within half an ulp of
            // the next (virtual) step, else overflow.
            let step = self.decode(max_code) - self.decode(max_code - 1);
            if a - self.decode(max_code) < step / 2.0
                || (a - self.decode(max_code) == step / 2.0 && max_code.is_multiple_of(2))
                || saturate
            {
                max_code
            } else {
                return overflow(negative);
            }
        } else {
            let above = below + 1;
            let (d_lo, d_hi) = (a - self.decode(below), self.decode(above) - a);
            if d_lo < d_hi || (d_lo == d_hi && below.is_multiple_of(2)) {
                below
            } else {
                above
            }
        };
        debug_assert!(l.max >= self.decode(code));
        if negative {
            if code == 0 && l.unsigned_zero {
                0
            } else {
                code | sign_bit
            }
        } else {
            code
        }
    }

    /// The code of the largest finite magnitude.
    fn max_code(self) -> u8 {
        match self {
            Format::E4M3FN => 0x7E,
            Format::E4M3FNUZ => 0x7F,
            Format::E5M2 => 0x7B,
            Format::E5M2FNUZ => 0x7F,
            Format::E2M1 => 0x07,
        }
    }
}

/// How `Cast` to `FLOAT8E8M0` rounds (ONNX `round_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundMode {
    Up,
    Down,
    Nearest,
}

impl RoundMode {
    /// From the attribute text (`up`, `down`, `nearest`).
    pub fn parse(s: &str) -> Option<RoundMode> {
        match s {
            "up" => Some(RoundMode::Up),
            "down" => Some(RoundMode::Down),
            "nearest" => Some(RoundMode::Nearest),
            _ => None,
        }
    }
}

/// The value of an `E8M0` code: `2^(code − 127)`, NaN for `0xFF`.
pub fn decode_e8m0(code: u8) -> f32 {
    if code == 0xFF {
        f32::NAN
    } else {
        2f32.powi(i32::from(code) - 127)
    }
}

/// The `E8M0` code of `v`'s magnitude, as ONNX's reference computes it from the f32
/// bits: the exponent field, raised by one when `round_mode` says so.
pub fn encode_e8m0(v: f32, saturate: bool, round_mode: RoundMode) -> u8 {
    let bits = v.to_bits();
    let exponent = (bits >> 23) & 0xFF;
    if exponent == 0xFF {
        return 0xFF;
    }
    let round_up = match round_mode {
        RoundMode::Down => false,
        // The reference tests these fraction bits (not all 23); the spec's tests are
        // generated by it, so shardc follows it.
        RoundMode::Up => bits & 0x4F_FFFF != 0,
        RoundMode::Nearest => {
            let g = bits & 0x40_0000 != 0;
            let r = bits & 0x20_0000 != 0;
            let s = bits & 0x1F_FFFF != 0;
            let lsb = exponent > 0;
            g && (r || s || lsb)
        }
    };
    let exponent = if round_up && !(saturate && exponent == 0xFE) { exponent + 1 } else { exponent };
    exponent as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_known_values() {
        assert_eq!(Format::E4M3FN.decode(0x7E), 448.0);
        assert!(Format::E4M3FN.decode(0x7F).is_nan());
        assert!(Format::E4M3FN.decode(0xFF).is_nan());
        assert_eq!(Format::E4M3FN.decode(0x01), 2f32.powi(-9));
        assert_eq!(Format::E4M3FNUZ.decode(0x7F), 240.0);
        assert!(Format::E4M3FNUZ.decode(0x80).is_nan());
        assert_eq!(Format::E5M2.decode(0x7B), 57344.0);
        assert_eq!(Format::E5M2.decode(0x7C), f32::INFINITY);
        assert_eq!(Format::E5M2.decode(0xFC), f32::NEG_INFINITY);
        assert_eq!(Format::E5M2FNUZ.decode(0x7F), 57344.0);
        let e2m1: Vec<f32> = (0..8).map(|c| Format::E2M1.decode(c)).collect();
        assert_eq!(e2m1, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(Format::E2M1.decode(0x0F), -6.0);
        assert_eq!(decode_e8m0(127), 1.0);
    }

    #[test]
    fn every_code_round_trips() {
        for f in [Format::E4M3FN, Format::E4M3FNUZ, Format::E5M2, Format::E5M2FNUZ, Format::E2M1] {
            for code in 0..(1u16 << f.bits()) {
                let code = code as u8;
                let v = f.decode(code);
                if v.is_nan() || (v == 0.0 && v.is_sign_negative() && f == Format::E2M1) {
                    continue;
                }
                assert_eq!(f.encode(v, false), code, "{f:?} code {code:#x} value {v}");
            }
        }
    }

    #[test]
    fn rounds_to_nearest_even_and_saturates() {
        // 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39) in E4M3FN: even wins.
        assert_eq!(Format::E4M3FN.encode(1.0625, true), 0x38);
        assert_eq!(Format::E4M3FN.encode(1000.0, true), 0x7E);
        assert!(Format::E4M3FN.decode(Format::E4M3FN.encode(1000.0, false)).is_nan());
        assert_eq!(Format::E5M2.encode(1e6, false), 0x7C);
        assert_eq!(Format::E5M2.encode(f32::INFINITY, true), 0x7B);
        assert_eq!(Format::E4M3FNUZ.encode(-0.0, true), 0);
        assert_eq!(Format::E2M1.encode(100.0, false), 0x07);
        assert_eq!(Format::E2M1.encode(-2.5, false), 0x0C);
        assert_eq!(encode_e8m0(1.5, true, RoundMode::Up), 128);
        assert_eq!(encode_e8m0(1.5, true, RoundMode::Down), 127);
    }
}
