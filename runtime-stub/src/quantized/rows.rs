//! The decode-step loops: a row of codes read once, scales applied per chunk (`[N, K]`
//! storage) or per group of rows (`[K, N]`), compiled for AVX2 where the processor has it.

use shardc_ir::DType;

use super::{QuantMatrix, RowScales};

/// Σ a·b with eight independent sums (so the loop vectorises without reassociating).
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ x · code · scale along a row of int8 codes whose scales change every `len` codes,
/// `len` a multiple of 8: one pass, eight partial sums, the scale read per 8 codes
/// (`seg_of`: the segment of each chunk of 8).
#[inline(always)]
fn row_dot_i8(x: &[f32], q: &[u8], scales: &[f32], len: usize, seg_of: &[u32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, qc) = (x.chunks_exact(8), q.chunks_exact(8));
    let done = x.len() - xc.remainder().len();
    let mut tail = 0f32;
    for (c, (x, &q)) in xc.remainder().iter().zip(qc.remainder()).enumerate() {
        tail += x * f32::from(q as i8) * scales[(done + c) / len];
    }
    for ((x, q), &g) in xc.zip(qc).zip(seg_of) {
        let s = scales[g as usize];
        for i in 0..8 {
            acc[i] += s * (x[i] * f32::from(q[i] as i8));
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The signed low and high 4-bit codes of a byte, as f32 (in i32 arithmetic, which
/// vectorises where byte shifts do not).
#[inline(always)]
fn nibbles(b: u8) -> (f32, f32) {
    let v = i32::from(b);
    ((((v & 15) ^ 8) - 8) as f32, (((v >> 4) ^ 8) - 8) as f32)
}

/// Σ x · code · scale along a row of int4 codes (two a byte; `xe`, `xo` the even and odd
/// elements of x) whose scales change every `len` codes, `len` a multiple of 16
/// (`seg_of`: the segment of each chunk of 16 codes).
#[inline(always)]
fn row_dot_i4(xe: &[f32], xo: &[f32], q: &[u8], scales: &[f32], len: usize, seg_of: &[u32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ec, oc, qc) = (xe.chunks_exact(8), xo.chunks_exact(8), q.chunks_exact(8));
    let done = q.len() - qc.remainder().len();
    let mut tail = 0f32;
    for (c, ((e, o), &b)) in ec.remainder().iter().zip(oc.remainder()).zip(qc.remainder()).enumerate() {
        let (lo, hi) = nibbles(b);
        tail += (e * lo + o * hi) * scales[2 * (done + c) / len];
    }
    for (((e, o), q), &g) in ec.zip(oc).zip(qc).zip(seg_of) {
        let s = scales[g as usize];
        for i in 0..8 {
            let (lo, hi) = nibbles(q[i]);
            acc[i] += s * (e[i] * lo + o[i] * hi);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `t += x · codes` over int8 codes.
#[inline(always)]
fn axpy_i8(x: f32, q: &[u8], t: &mut [f32]) {
    for (t, &q) in t.iter_mut().zip(q) {
        *t += x * f32::from(q as i8);
    }
}

/// `te += x · low codes`, `to += x · high codes` (int4 pairs along the row).
#[inline(always)]
fn axpy_i4(x: f32, q: &[u8], te: &mut [f32], to: &mut [f32]) {
    for ((e, o), &b) in te.iter_mut().zip(to.iter_mut()).zip(q) {
        let (lo, hi) = nibbles(b);
        *e += x * lo;
        *o += x * hi;
    }
}

/// Run `body` compiled for AVX2 where the processor has it (x86-64 builds target the
/// baseline; other targets have their vector units in the baseline).
macro_rules! vectorised {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        pub(super) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor has AVX2 (checked just now).
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Rows of codes asked for ahead of the one being read: a row is a few hundred bytes to
/// a few KiB, and the product's loop alone leaves memory idle between rows.
const PREFETCH_ROWS: usize = 8;

/// Ask for `len` bytes of `bytes` from `start` to be brought into the cache.
#[inline(always)]
fn prefetch(bytes: &[u8], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let end = (start + len).min(bytes.len());
        let mut at = start;
        while at < end {
            // SAFETY: a prefetch of an address inside `bytes`; it reads nothing.
            unsafe {
                std::arch::x86_64::_mm_prefetch(bytes.as_ptr().add(at) as *const i8, std::arch::x86_64::_MM_HINT_T0)
            };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, start, len);
}

vectorised!(half_rows, half_rows_body, (w: &QuantMatrix, trans_b: bool, xs: &[f32], m: usize, out: &mut [f32], alpha: f32));
vectorised!(nk_rows, nk_rows_body, (w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32));
vectorised!(kn_rows, kn_rows_body, (w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32));

/// `[N, K]` storage with scales per segment of each row (groups along K, or one per
/// row), few rows of x: out[i, r] += alpha · Σ_seg scale · (x_i · codes).
#[inline(always)]
fn nk_rows_body(w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32) {
    let (n, k) = (w.rows, w.cols);
    let bytes = &w.map[w.offset..];
    let RowScales::Segments { len, .. } = w.row_scales(0) else { return };
    // With AVX-512: int8 rows whose segments are a multiple of 16 codes, and int4 rows
    // that fit its table-lookup loop (x then rearranged once per row of x).
    #[cfg(target_arch = "x86_64")]
    let wide = super::avx512::available() && if w.int4 { super::avx512::lanes_fit(k, len) } else { len % 16 == 0 };
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    #[cfg(target_arch = "x86_64")]
    let lanes: Vec<Vec<f32>> = if w.int4 && wide {
        (0..m).map(|i| super::avx512::lane_order(&xs[i * k..(i + 1) * k])).collect()
    } else {
        Vec::new()
    };
    // What the portable loops need: the even and odd elements of each row of x (int4),
    // and the segment of each chunk of codes they read at once (the same in every row).
    let halves: Vec<(Vec<f32>, Vec<f32>)> = if w.int4 && !wide {
        (0..m)
            .map(|i| {
                let x = &xs[i * k..(i + 1) * k];
                (x.iter().step_by(2).copied().collect(), x.iter().skip(1).step_by(2).copied().collect())
            })
            .collect()
    } else {
        Vec::new()
    };
    let chunk = if w.int4 { 16 } else { 8 };
    let seg_of: Vec<u32> = if wide { Vec::new() } else { (0..k / chunk).map(|j| (j * chunk / len) as u32).collect() };
    let row_bytes = if w.int4 { k / 2 } else { k };
    for r in 0..n {
        let RowScales::Segments { scales, .. } = w.row_scales(r) else { return };
        prefetch(bytes, (r + PREFETCH_ROWS) * row_bytes, row_bytes);
        let q = &bytes[r * row_bytes..(r + 1) * row_bytes];
        for i in 0..m {
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: the processor has AVX-512F (checked above).
                let sum = unsafe {
                    if let Some(xl) = lanes.get(i) {
                        super::avx512::dot_i4_lanes(xl, q, scales, len)
                    } else {
                        super::avx512::dot_i8(&xs[i * k..(i + 1) * k], q, scales, len)
                    }
                };
                out[i * n + r] += alpha * sum;
                continue;
            }
            let sum = if w.int4 {
                let (xe, xo) = &halves[i];
                row_dot_i4(xe, xo, q, scales, len, &seg_of)
            } else {
                row_dot_i8(&xs[i * k..(i + 1) * k], q, scales, len, &seg_of)
            };
            out[i * n + r] += alpha * sum;
        }
    }
}

/// `[K, N]` storage with scales per column (for each group of rows along K, or one per
/// column), few rows of x: out[i, :] += alpha · Σ_group scales ⊙ Σ_{r ∈ group} x[i, r] · codes_r.
#[inline(always)]
fn kn_rows_body(w: &QuantMatrix, xs: &[f32], m: usize, out: &mut [f32], alpha: f32) {
    let (k, n) = (w.rows, w.cols);
    let bytes = &w.map[w.offset..];
    let group = w.block.unwrap_or(k);
    let half = n / 2;
    let mut t = vec![0f32; n];
    for i in 0..m {
        let x = &xs[i * k..(i + 1) * k];
        for g0 in (0..k).step_by(group) {
            let g1 = (g0 + group).min(k);
            t.iter_mut().for_each(|v| *v = 0.0);
            let row_bytes = if w.int4 { n / 2 } else { n };
            for r in g0..g1 {
                prefetch(bytes, (r + PREFETCH_ROWS) * row_bytes, row_bytes);
                if x[r] == 0.0 {
                    continue;
                }
                if w.int4 {
                    let (te, to) = t.split_at_mut(half);
                    axpy_i4(x[r], &bytes[r * n / 2..(r + 1) * n / 2], te, to);
                } else {
                    axpy_i8(x[r], &bytes[r * n..(r + 1) * n], &mut t);
                }
            }
            let RowScales::Columns(scales) = w.row_scales(g0) else { return };
            let o = &mut out[i * n..(i + 1) * n];
            if w.int4 {
                // t holds the even columns, then the odd ones.
                for j in 0..half {
                    o[2 * j] += alpha * scales[2 * j] * t[j];
                    o[2 * j + 1] += alpha * scales[2 * j + 1] * t[half + j];
                }
            } else {
                for ((o, s), v) in o.iter_mut().zip(scales).zip(&t) {
                    *o += alpha * s * v;
                }
            }
        }
    }
}

/// Little-endian f16 or bf16 values widened to f32 (F16C where the processor has it).
pub(super) fn widen(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    if dtype == DType::BF16 {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "f16c,avx")]
        unsafe fn wide(bytes: &[u8], out: &mut [f32]) {
            use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
            let n = out.len().min(bytes.len() / 2);
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: 16 bytes at 2i and 8 floats at i lie inside the slices.
                unsafe {
                    let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const __m128i);
                    _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                }
                i += 8;
            }
            for j in i..n {
                out[j] = half::f16::from_le_bytes([bytes[2 * j], bytes[2 * j + 1]]).to_f32();
            }
        }
        if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the processor has F16C and AVX (checked just now).
            return unsafe { wide(bytes, out) };
        }
    }
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// An f16/bf16 matrix, few rows of x: each storage row widened once into a buffer, then
/// a dot product per row of x (`[N, K]`) or added in, scaled by x (`[K, N]`).
#[inline(always)]
fn half_rows_body(w: &QuantMatrix, trans_b: bool, xs: &[f32], m: usize, out: &mut [f32], alpha: f32) {
    let cols = w.cols;
    let bytes = &w.map[w.offset..];
    // f16 rows as dot products (a head, say): widened straight into AVX-512's sums.
    #[cfg(target_arch = "x86_64")]
    if trans_b && w.half == Some(DType::F16) && super::avx512::available() {
        let (k, n) = (cols, w.rows);
        for r in 0..n {
            prefetch(bytes, (r + PREFETCH_ROWS) * cols * 2, cols * 2);
            let row = &bytes[r * cols * 2..(r + 1) * cols * 2];
            for i in 0..m {
                // SAFETY: the processor has AVX-512F (checked above).
                out[i * n + r] += alpha * unsafe { super::avx512::dot_f16(&xs[i * k..(i + 1) * k], row) };
            }
        }
        return;
    }
    let mut row = vec![0f32; cols];
    for r in 0..w.rows {
        prefetch(bytes, (r + PREFETCH_ROWS) * cols * 2, cols * 2);
        w.row(r, &mut row);
        if trans_b {
            let (k, n) = (cols, w.rows);
            for i in 0..m {
                out[i * n + r] += alpha * dot(&xs[i * k..(i + 1) * k], &row);
            }
        } else {
            let (k, n) = (w.rows, cols);
            for i in 0..m {
                let coef = alpha * xs[i * k + r];
                out[i * n..(i + 1) * n].iter_mut().zip(&row).for_each(|(o, v)| *o += coef * v);
            }
        }
    }
}
