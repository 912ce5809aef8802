//! Quantizing one matrix: its codes and scales, and the bytes a package stores.

use super::Scheme;

/// Quantized data and scales of one matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedMatrix {
    /// One code per element, row-major, in `[-max_level, max_level]`.
    pub codes: Vec<i8>,
    /// Scales, row-major in the scale tensor's shape.
    pub scales: Vec<f32>,
}

impl QuantizedMatrix {
    /// The data tensor's bytes: int8 codes, or int4 codes two to a byte, low nibble
    /// first (ONNX's layout).
    pub fn data_bytes(&self, scheme: Scheme) -> Vec<u8> {
        match scheme {
            Scheme::Int8 => self.codes.iter().map(|&c| c as u8).collect(),
            Scheme::Int4 => {
                let nibbles: Vec<u8> = self.codes.iter().map(|&c| (c as u8) & 0x0F).collect();
                shardc_ir::tensor::pack_nibbles(&nibbles)
            }
        }
    }

    /// The scale tensor's bytes (little-endian f32).
    pub fn scale_bytes(&self) -> Vec<u8> {
        self.scales.iter().flat_map(|s| s.to_le_bytes()).collect()
    }
}

/// Factors of `max|x| / max_level` tried for each scale (1 down to 0.8).
pub const SCALE_FACTORS: [f32; 11] = [1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84, 0.82, 0.8];

/// Quantize a row-major `[rows, cols]` matrix: per group of `block` elements along
/// `axis` (the last group may be shorter), or with `block` `None` one scale per index
/// of `axis` (the output channel). Symmetric: `scale = f · max|x| / max_level`, `f` the
/// factor of [`SCALE_FACTORS`] with the least squared error over the group; codes are
/// `x / scale` rounded half to even and clamped. An all-zero group has scale 0.
/// Deterministic: the same values give the same bytes on any machine.
pub fn quantize_matrix(
    values: &[f32],
    [rows, cols]: [usize; 2],
    axis: usize,
    block: Option<usize>,
    scheme: Scheme,
) -> Result<QuantizedMatrix, String> {
    if values.len() != rows * cols || axis > 1 {
        return Err(format!("a [{rows}, {cols}] matrix holds {} values (axis {axis})", values.len()));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(format!("holds {v}, which cannot be quantized"));
    }
    let max = scheme.max_level();
    // The scale index of element (r, c).
    let (scale_rows, scale_cols) = match (block, axis) {
        (Some(b), 0) => (rows.div_ceil(b), cols),
        (Some(b), _) => (rows, cols.div_ceil(b)),
        (None, 0) => (rows, 1),
        (None, _) => (1, cols),
    };
    let index = |r: usize, c: usize| -> usize {
        match (block, axis) {
            (Some(b), 0) => (r / b) * scale_cols + c,
            (Some(b), _) => r * scale_cols + c / b,
            (None, 0) => r,
            (None, _) => c,
        }
    };
    let mut absmax = vec![0f32; scale_rows * scale_cols];
    for r in 0..rows {
        for c in 0..cols {
            let s = &mut absmax[index(r, c)];
            *s = s.max(values[r * cols + c].abs());
        }
    }
    // Per scale, the factor of `max|x| / max_level` with the least squared error: a
    // slightly smaller scale clips the largest value but rounds the rest more finely.
    let mut error = vec![0f64; absmax.len() * SCALE_FACTORS.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (x, g) = (values[r * cols + c], index(r, c));
            for (f, factor) in SCALE_FACTORS.iter().enumerate() {
                let s = absmax[g] / max * factor;
                let back = if s > 0.0 { (x / s).round_ties_even().clamp(-max, max) * s } else { 0.0 };
                error[g * SCALE_FACTORS.len() + f] += f64::from(x - back).powi(2);
            }
        }
    }
    let scales: Vec<f32> = absmax
        .iter()
        .enumerate()
        .map(|(g, a)| {
            let errs = &error[g * SCALE_FACTORS.len()..(g + 1) * SCALE_FACTORS.len()];
            // The first of equal errors: the largest factor.
            let best = (0..errs.len()).fold(0, |b, f| if errs[f] < errs[b] { f } else { b });
            a / max * SCALE_FACTORS[best]
        })
        .collect();
    let mut codes = Vec::with_capacity(values.len());
    for r in 0..rows {
        for c in 0..cols {
            let s = scales[index(r, c)];
            let q = if s > 0.0 { (values[r * cols + c] / s).round_ties_even().clamp(-max, max) } else { 0.0 };
            codes.push(q as i8);
        }
    }
    Ok(QuantizedMatrix { codes, scales })
}
