//! Element loops compiled for the widest vector unit the processor has, and an `exp`
//! they can vectorise (the C library's `expf` is a call per element).
//!
//! Every build computes each element with the same operations in the same order (no
//! multiply-add is fused, sums are split the same way), so AVX-512, AVX2 and the
//! portable build give the same bits, on any number of threads.

use std::mem::MaybeUninit;

/// Whether the AVX-512 builds run: the processor has AVX-512 F and `SHARDC_NO_AVX512`
/// is unset (the CI runs the tests both ways).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f") && std::env::var_os("SHARDC_NO_AVX512").is_none())
}

/// `e^x` to within 2 ulp for normal results (subnormal ones within one rounding of
/// their scale), `0` below about −103.97, `inf` above about 88.72, NaN for NaN. Cephes'
/// reduction (`x = n ln 2 + r`, `|r| ≤ ln 2 / 2`, `ln 2` in two parts) and degree-7
/// polynomial, with neither a branch nor a conversion so a loop of it vectorises.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 × 2^23 rounds to an integer, which then sits in the low bits.
    const ROUND: f32 = 12_582_912.0;
    // e^-104 rounds to 0 and e^89 overflows, so clamping keeps every answer and the
    // powers of two below within range (n in −150..=129). Below −104 the power is of
    // 0 and the answer masked to 0: computing e^-104 would underflow, which costs a
    // processor without flush-to-zero a slow assist per element (a softmax's masked
    // half, say).
    let below = x < -104.0;
    let c = if below { 0.0 } else { x }.clamp(-104.0, 89.0);
    let t = c * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    // 2^n in two factors, each a normal float, so n down to −150 gives subnormals.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = n >> 1;
    let scale = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    let v = p * scale(half) * scale(n - half);
    f32::from_bits(v.to_bits() & (u32::from(below) as i32 - 1) as u32)
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Defines `$name(args)` running `$body(args)` compiled for AVX-512 or AVX2 when the
/// processor has them, else as built. `$body` must be `#[inline(always)]`.
macro_rules! widest {
    ($(#[$doc:meta])* $name:ident<$($g:ident: $bound:path),*>($($arg:ident: $ty:ty),*) = $body:ident) => {
        $(#[$doc])*
        pub(crate) fn $name<$($g: $bound),*>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide512<$($g: $bound),*>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn wide256<$($g: $bound),*>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if $crate::kernels::simd::avx512() {
                    // SAFETY: the processor has AVX-512 F (checked just now).
                    return unsafe { wide512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor has AVX2 (checked just now).
                    return unsafe { wide256($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use widest;

#[inline(always)]
fn map_body<F: Fn(f32) -> f32>(xs: &[f32], out: &mut [MaybeUninit<f32>], f: &F) {
    for (o, &x) in out.iter_mut().zip(xs) {
        o.write(f(x));
    }
}

widest!(
    /// `out[i] = f(xs[i])` for the shorter of the two.
    map_into<F: Fn(f32) -> f32>(xs: &[f32], out: &mut [MaybeUninit<f32>], f: &F) = map_body
);

#[inline(always)]
fn map_in_place_body<F: Fn(f32) -> f32>(xs: &mut [f32], f: &F) {
    for x in xs {
        *x = f(*x);
    }
}

widest!(
    /// `xs[i] = f(xs[i])`.
    map_slice_in_place<F: Fn(f32) -> f32>(xs: &mut [f32], f: &F) = map_in_place_body
);

/// Softmax of one row in place: `e^(x - max)` over their sum, the sum taken in eight
/// interleaved parts added pairwise (the same order in every build). A row that is all
/// `-inf` gives NaN, as `0 / 0`.
#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let mut maxes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, &v) in maxes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut max = maxes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for &v in chunks.remainder() {
        max = max.max(v);
    }
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = exp(*v - max);
            *s += *v;
        }
    }
    for (s, v) in sums.iter_mut().zip(chunks.into_remainder()) {
        *v = exp(*v - max);
        *s += *v;
    }
    let sum = ((sums[0] + sums[4]) + (sums[2] + sums[6])) + ((sums[1] + sums[5]) + (sums[3] + sums[7]));
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn softmax_rows_body(xs: &mut [f32], width: usize) {
    for row in xs.chunks_mut(width) {
        softmax_body(row);
    }
}

widest!(
    /// [`softmax_body`] of each row of `width` values of `xs`.
    softmax_rows<>(xs: &mut [f32], width: usize) = softmax_rows_body
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units of the last place between two floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = (0, 0.0);
        let mut x = -104.0f32;
        while x < 88.7 {
            let want = f64::from(x).exp() as f32;
            let got = exp(x);
            if want >= f32::MIN_POSITIVE {
                let u = ulps(got, want);
                if u > worst.0 {
                    worst = (u, x);
                }
            } else {
                assert!((got - want).abs() <= want.max(1e-45) * 2.0 + 1e-45, "exp({x}) = {got}, want {want}");
            }
            x += 0.000_37;
        }
        assert!(worst.0 <= 2, "exp is {} ulp off at {}", worst.0, worst.1);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_rows_match_a_plain_softmax_and_every_build() {
        let xs: Vec<f32> = (0..7 * 37).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        let mut got = xs.clone();
        softmax_rows(&mut got, 37);
        let mut plain = xs.clone();
        softmax_rows_body(&mut plain, 37);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        for (row, want) in got.chunks(37).zip(xs.chunks(37)) {
            let max = want.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let sum: f64 = want.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            for (&g, &w) in row.iter().zip(want) {
                // `x - max` is rounded to f32 first: an error of |x - max| · 2^-24 in the power.
                let bound = 4e-7 + (f64::from(w) - max).abs() * 6e-8;
                let w = (f64::from(w) - max).exp() / sum;
                assert!((f64::from(g) - w).abs() <= bound * w + 1e-37, "{g} against {w}");
            }
        }
        let mut masked = vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        softmax_rows(&mut masked, 4);
        assert_eq!(masked, [0.0, 0.5, 0.0, 0.5]);
    }
}
