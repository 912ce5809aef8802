//! The `[N, K]` decode loops with AVX-512 (x86-64 processors that have AVX-512F,
//! checked at run time): sixteen codes widened and multiplied per instruction, where
//! the portable loops (compiled for AVX2) do eight. The same sums, Σ_seg scale · Σ x ·
//! code, in another order of float additions.
//!
//! Measured (`cargo bench -p shardc-runtime --bench quantized_kernels`, BENCHMARKS.md):
//! the int4 loop is bound by instructions, not memory (as fast in L2 as out of it), and
//! hand-written AVX2 loops ran no faster than what the compiler makes of the portable
//! ones, nor did widening bytes sixteen at a time; int4 codes turned into floats by a
//! table lookup (`dot_i4_lanes`) instead of widening and converting did (10 → 16
//! Gweights/s), as did int8 and f16 rows sixteen at a time.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Whether this processor runs these loops: it has AVX-512F and `SHARDC_NO_AVX512` is
/// unset (set, the portable loops run: how CI tests them on a machine with AVX-512, and
/// how to measure what these loops gain).
pub(super) fn available() -> bool {
    crate::kernels::simd::avx512()
}

/// Σ_seg scale · Σ x · code along a row of int8 codes, `len` codes a segment (a
/// multiple of 16; the last segment may be shorter).
#[target_feature(enable = "avx512f")]
pub(super) fn dot_i8(x: &[f32], q: &[u8], scales: &[f32], len: usize) -> f32 {
    let k = x.len().min(q.len());
    assert!(len.is_multiple_of(16) && scales.len() >= k.div_ceil(len), "{len}-code segments, {} scales", scales.len());
    let (xp, qp) = (x.as_ptr(), q.as_ptr());
    // Sixteen codes as f32, from bytes j..j + 16.
    let codes = |j: usize| {
        // SAFETY: the callers keep j + 16 <= k.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qp.add(j) as *const __m128i))) }
    };
    // SAFETY (below): the loads read floats j..j + 16 with j + 16 <= k.
    let xs = |j: usize| unsafe { _mm512_loadu_ps(xp.add(j)) };
    let (mut total, mut tail) = (_mm512_setzero_ps(), 0f32);
    for (g, &s) in scales.iter().enumerate().take(k.div_ceil(len)) {
        let (start, end) = (g * len, ((g + 1) * len).min(k));
        let full = start + (end - start) / 16 * 16;
        // Four sums: a multiply-add waits for the one before it on the same sum.
        let mut a = [_mm512_setzero_ps(); 4];
        let mut j = start;
        while j + 64 <= full {
            for (u, a) in a.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(xs(j + 16 * u), codes(j + 16 * u), *a);
            }
            j += 64;
        }
        while j < full {
            a[0] = _mm512_fmadd_ps(xs(j), codes(j), a[0]);
            j += 16;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
        total = _mm512_fmadd_ps(_mm512_set1_ps(s), sum, total);
        tail += s * x[full..end].iter().zip(&q[full..end]).map(|(x, &q)| x * f32::from(q as i8)).sum::<f32>();
    }
    _mm512_reduce_add_ps(total) + tail
}

/// Whether [`dot_i4_lanes`] serves rows of `k` int4 codes with a scale every `len`.
pub(super) fn lanes_fit(k: usize, len: usize) -> bool {
    k.is_multiple_of(128) && (len == 32 || len == 64 || len.is_multiple_of(128))
}

/// x rearranged for [`dot_i4_lanes`]: in each block of 128 elements, element 8l + c
/// goes to 16c + l (lane l of the c-th vector).
pub(super) fn lane_order(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / 128 * 128];
    for (block, o) in x.chunks_exact(128).zip(out.chunks_exact_mut(128)) {
        for l in 0..16 {
            for c in 0..8 {
                o[16 * c + l] = block[8 * l + c];
            }
        }
    }
    out
}

/// Σ_seg scale · Σ x · code along a row of `k` int4 codes (`k` a multiple of 128, `len`
/// as [`lanes_fit`] allows), `xl` x in [`lane_order`]: 64 bytes read as sixteen 32-bit
/// lanes of eight codes each; the c-th codes of all lanes, shifted down, index a table
/// of the sixteen signed values (`vpermps` reads the low four bits), so a code becomes a
/// float in one instruction, without widening bytes.
#[target_feature(enable = "avx512f")]
pub(super) fn dot_i4_lanes(xl: &[f32], q: &[u8], scales: &[f32], len: usize) -> f32 {
    let k = xl.len();
    assert!(lanes_fit(k, len) && q.len() * 2 >= k && scales.len() >= k.div_ceil(len), "{k} codes, {len} a scale");
    let table = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., -8., -7., -6., -5., -4., -3., -2., -1.);
    // The segment of each lane within a block, from its first code 8l.
    let lane_segment = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let lane_segment = if len == 64 { _mm512_srli_epi32::<1>(lane_segment) } else { lane_segment };
    let (xp, qp, sp) = (xl.as_ptr(), q.as_ptr(), scales.as_ptr());
    let mut total = [_mm512_setzero_ps(); 2];
    for b in 0..k / 128 {
        // SAFETY: bytes 64b..64b + 64 (q holds k / 2), floats 128b..128b + 128 of xl, and
        // (len 32 or 64) scales from 128b / len, at most four of them, all inside the row's
        // k / len scales; masked lanes are not read.
        unsafe {
            let v = _mm512_loadu_si512(qp.add(64 * b) as *const __m512i);
            let x = |c: usize| _mm512_loadu_ps(xp.add(128 * b + 16 * c));
            let code = |w: __m512i| _mm512_permutexvar_ps(w, table);
            let mut a0 = _mm512_mul_ps(x(0), code(v));
            let mut a1 = _mm512_mul_ps(x(1), code(_mm512_srli_epi32::<4>(v)));
            a0 = _mm512_fmadd_ps(x(2), code(_mm512_srli_epi32::<8>(v)), a0);
            a1 = _mm512_fmadd_ps(x(3), code(_mm512_srli_epi32::<12>(v)), a1);
            a0 = _mm512_fmadd_ps(x(4), code(_mm512_srli_epi32::<16>(v)), a0);
            a1 = _mm512_fmadd_ps(x(5), code(_mm512_srli_epi32::<20>(v)), a1);
            a0 = _mm512_fmadd_ps(x(6), code(_mm512_srli_epi32::<24>(v)), a0);
            a1 = _mm512_fmadd_ps(x(7), code(_mm512_srli_epi32::<28>(v)), a1);
            let s = if len.is_multiple_of(128) {
                _mm512_set1_ps(*sp.add(128 * b / len))
            } else {
                let here = 128 / len;
                let mask: __mmask16 = (1u16 << here) - 1;
                _mm512_permutexvar_ps(lane_segment, _mm512_maskz_loadu_ps(mask, sp.add(128 * b / len)))
            };
            total[b % 2] = _mm512_fmadd_ps(s, _mm512_add_ps(a0, a1), total[b % 2]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(total[0], total[1]))
}

/// Σ x · w along a row of f16 weights (little-endian bytes), sixteen widened per
/// instruction straight into the multiply-adds.
#[target_feature(enable = "avx512f")]
pub(super) fn dot_f16(x: &[f32], w: &[u8]) -> f32 {
    let k = x.len().min(w.len() / 2);
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // SAFETY (both closures): the callers keep j + 16 <= k: 16 floats and 32 bytes at j.
    let xs = |j: usize| unsafe { _mm512_loadu_ps(xp.add(j)) };
    let ws = |j: usize| unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(2 * j) as *const __m256i)) };
    let mut a = [_mm512_setzero_ps(); 4];
    let mut j = 0;
    while j + 64 <= k {
        for (u, a) in a.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(xs(j + 16 * u), ws(j + 16 * u), *a);
        }
        j += 64;
    }
    while j + 16 <= k {
        a[0] = _mm512_fmadd_ps(xs(j), ws(j), a[0]);
        j += 16;
    }
    let tail: f32 = (j..k).map(|i| x[i] * half::f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32()).sum();
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))) + tail
}
