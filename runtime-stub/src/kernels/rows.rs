//! Products of a few rows (decode steps, one row per request in flight) by an f32
//! matrix: the matrix read once for all rows, and each output element summed in an
//! order that depends on neither the number of rows nor the number of threads — so a
//! request's step gives the same bits alone and batched with others.

use rayon::prelude::*;

/// Most rows the loops here take; more go to the blocked product (`gemm`).
pub(crate) const MAX_ROWS: usize = 8;

/// Columns of a block: its sums (64 KiB a row) stay in L2 while the block's panels
/// pass. The width of a block does not change any sum's order.
const BLOCK_FLOATS: usize = 16384;

/// `c = alpha · a · b + beta · c` for `m ≤ MAX_ROWS` rows of `a` (row-major, `k`
/// columns) and `b` of `k × n` with strides `(rsb, csb)` in elements: either rows
/// contiguous (`csb == 1`: a weight stored `[K, N]`) or columns (`rsb == 1`: one stored
/// `[N, K]` read transposed). Returns `false` (nothing written) for other layouts.
///
/// Each output is Σ over k in ascending order for `[K, N]`, and eight interleaved
/// partial sums then their sum for `[N, K]`; the threads split columns, never a sum.
///
/// # Safety
/// `b` must point to a live `k × n` matrix with those strides.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    a: &[f32],
    m: usize,
    k: usize,
    b: *const f32,
    (rsb, csb): (isize, isize),
    n: usize,
    c: &mut [f32],
    (alpha, beta): (f32, f32),
) -> bool {
    debug_assert!(m <= MAX_ROWS && a.len() == m * k && c.len() == m * n);
    if n == 0 || m == 0 {
        return true;
    }
    if k == 0 {
        c.iter_mut().for_each(|v| *v = if beta == 0.0 { 0.0 } else { beta * *v });
        return true;
    }
    if !(csb == 1 && rsb >= n as isize || rsb == 1 && csb >= k as isize) {
        return false;
    }
    // SAFETY: `b` holds k rows (or n columns) at those strides (the caller's promise).
    let bm = unsafe {
        let extent = if csb == 1 { (k - 1) * rsb as usize + n } else { (n - 1) * csb as usize + k };
        std::slice::from_raw_parts(b, extent)
    };
    // Column blocks, over the run's threads when worth it: for `[K, N]`, at most
    // BLOCK_FLOATS wide, as many as a multiple of the threads and about equal (a decode
    // step's products are a few hundred to a few thousand columns wide; a head of 50257
    // in blocks of 16384 gave one of two threads twice the other's columns).
    let pool = crate::threads::current()
        .filter(|p| p.current_num_threads() > 1 && m.saturating_mul(n).saturating_mul(k) >= super::SPLIT_FROM);
    let width = match pool {
        _ if csb != 1 => 64,
        Some(p) => super::part_width(n, p.current_num_threads(), 64, BLOCK_FLOATS),
        None => BLOCK_FLOATS,
    };
    let blocks: Vec<usize> = (0..n).step_by(width).collect();
    let sums = |&j0: &usize| -> Vec<f32> {
        let w = width.min(n - j0);
        let mut sums = vec![0f32; m * w];
        if csb == 1 {
            axpy_rows(a, k, bm, rsb as usize, j0, &mut sums);
        } else {
            dot_rows(a, k, bm, csb as usize, j0, &mut sums);
        }
        sums
    };
    let all: Vec<Vec<f32>> = match pool {
        Some(pool) if blocks.len() > 1 => pool.install(|| blocks.par_iter().map(sums).collect()),
        _ => blocks.iter().map(sums).collect(),
    };
    for (&j0, sums) in blocks.iter().zip(all) {
        let w = width.min(n - j0);
        for (r, row) in sums.chunks(w).enumerate() {
            for (out, &s) in c[r * n + j0..r * n + j0 + w].iter_mut().zip(row) {
                *out = if beta == 0.0 { alpha * s } else { alpha * s + beta * *out };
            }
        }
    }
    true
}

use super::simd::widest;

/// `$name` runs `$body::<M>` for the number of rows M.
macro_rules! by_rows {
    ($name:ident, $body:ident) => {
        #[inline(always)]
        fn $name(a: &[f32], k: usize, b: &[f32], stride: usize, j0: usize, sums: &mut [f32]) {
            match a.len() / k {
                1 => $body::<1>(a, k, b, stride, j0, sums),
                2 => $body::<2>(a, k, b, stride, j0, sums),
                3 => $body::<3>(a, k, b, stride, j0, sums),
                4 => $body::<4>(a, k, b, stride, j0, sums),
                5 => $body::<5>(a, k, b, stride, j0, sums),
                6 => $body::<6>(a, k, b, stride, j0, sums),
                7 => $body::<7>(a, k, b, stride, j0, sums),
                _ => $body::<8>(a, k, b, stride, j0, sums),
            }
        }
    };
}
by_rows!(axpy_by_rows, axpy_loop);
by_rows!(dot_by_rows, dot_loop);

// Compiled for AVX-512 or AVX2 where the processor has them (the sums are the same
// bits: no multiply-add is fused in any build).
widest!(
    /// [`axpy_loop`] for the number of rows of `a`.
    axpy_rows<>(a: &[f32], k: usize, b: &[f32], stride: usize, j0: usize, sums: &mut [f32]) = axpy_by_rows
);
widest!(
    /// [`dot_loop`] for the number of rows of `a`.
    dot_rows<>(a: &[f32], k: usize, b: &[f32], stride: usize, j0: usize, sums: &mut [f32]) = dot_by_rows
);

/// Floats ahead of the columns being read that each row of a panel asks the memory for.
const AHEAD: usize = 256;

/// Ask for the cache lines of `b[from..from + len]` (those inside `b`): into L2 when
/// `TO_L2`, else into L1.
#[inline(always)]
fn prefetch<const TO_L2: bool>(b: &[f32], from: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for at in (from..(from + len).min(b.len())).step_by(16) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        let p = b.as_ptr().wrapping_add(at).cast();
        // SAFETY: `at` is inside `b`; a prefetch reads nothing into the program.
        unsafe {
            if TO_L2 {
                _mm_prefetch::<_MM_HINT_T1>(p)
            } else {
                _mm_prefetch::<_MM_HINT_T0>(p)
            }
        };
    }
}

/// Rows of `b` a pass over the columns takes at once (their streams read side by side).
const PANEL: usize = 16;

/// Columns a pass keeps in registers for each of the M rows.
const LANES: usize = 64;

/// `sums[r, ..w] = Σ_k a[r, k] · b[k, j0..j0 + w]` (`w = sums.len() / M`), k ascending:
/// PANEL rows of `b` at a time, LANES columns of every row's sums held in registers
/// while those rows pass (one read of `b` for all M rows).
#[inline(always)]
fn axpy_loop<const M: usize>(a: &[f32], k: usize, b: &[f32], rsb: usize, j0: usize, sums: &mut [f32]) {
    let w = sums.len() / M;
    // The widest lanes over most columns, then 16 at a time (a short product: an
    // attention's values, 64 columns), then one by one. Each sum's order is the same.
    // One row with AVX-512's 32 registers: 256 columns in 16 of them (each row of a
    // panel read 1 KiB at a time: 30.6 → 35 GB/s over 48 weights of [768, 3072]).
    let wide = match M {
        1 if super::simd::avx512() => {
            let wider = axpy_lanes::<M, { 4 * LANES }>(a, k, b, rsb, j0, sums, 0);
            axpy_lanes::<M, { 2 * LANES }>(a, k, b, rsb, j0, sums, wider)
        }
        1 | 2 => axpy_lanes::<M, { 2 * LANES }>(a, k, b, rsb, j0, sums, 0),
        _ => axpy_lanes::<M, LANES>(a, k, b, rsb, j0, sums, 0),
    };
    let narrow = axpy_lanes::<M, 16>(a, k, b, rsb, j0, sums, wide);
    for k0 in (0..k).step_by(PANEL) {
        for j in narrow..w {
            for r in 0..M {
                let mut s = sums[r * w + j];
                for kk in k0..(k0 + PANEL).min(k) {
                    s += a[r * k + kk] * b[kk * rsb + j0 + j];
                }
                sums[r * w + j] = s;
            }
        }
    }
}

/// [`axpy_loop`] over the whole runs of LANES columns from `from`; returns where they end.
#[inline(always)]
fn axpy_lanes<const M: usize, const LANES: usize>(
    a: &[f32],
    k: usize,
    b: &[f32],
    rsb: usize,
    j0: usize,
    sums: &mut [f32],
    from: usize,
) -> usize {
    let w = sums.len() / M;
    let whole = from + (w - from) / LANES * LANES;
    for k0 in (0..k).step_by(PANEL) {
        let k1 = (k0 + PANEL).min(k);
        for j in (from..whole).step_by(LANES) {
            let mut acc = [[0f32; LANES]; M];
            for (r, acc) in acc.iter_mut().enumerate() {
                acc.copy_from_slice(&sums[r * w + j..r * w + j + LANES]);
            }
            for kk in k0..k1 {
                if M > 1 {
                    // With two rows or more the loop computes long enough per line that
                    // the memory falls idle unless asked ahead (one row runs slower with
                    // it). Ahead in the same row, or past the block's last column in the
                    // row a panel further on — the next panel's rows, which a pass over a
                    // block a few lanes wide would otherwise start cold (12 Llama layers'
                    // weights, interleaved runs: two rows 16.0 → 13.0 ms, four 14.7 →
                    // 11.1 ms, 23 → 30–31 GB/s). Into L2 for three to six rows (four:
                    // 22–23 → 27–28 GB/s against into L1), into L1 for two, seven and
                    // eight (faster so).
                    let at = if j + AHEAD < w {
                        kk * rsb + j0 + j + AHEAD
                    } else {
                        (kk + PANEL) * rsb + j0 + (j + AHEAD - w)
                    };
                    if (3..=6).contains(&M) {
                        prefetch::<true>(b, at, LANES);
                    } else {
                        prefetch::<false>(b, at, LANES);
                    }
                }
                let row: &[f32; LANES] = b[kk * rsb + j0 + j..][..LANES].try_into().expect("LANES columns");
                let xs: [f32; M] = std::array::from_fn(|r| a[r * k + kk]);
                for (acc, x) in acc.iter_mut().zip(xs) {
                    for i in 0..LANES {
                        acc[i] += x * row[i];
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                sums[r * w + j..r * w + j + LANES].copy_from_slice(acc);
            }
        }
    }
    whole
}

/// `sums[r, j] = a[r, :] · b[:, j0 + j]` for columns stored contiguously: per column,
/// eight interleaved sums per row, the column read once for all M rows.
#[inline(always)]
fn dot_loop<const M: usize>(a: &[f32], k: usize, b: &[f32], csb: usize, j0: usize, sums: &mut [f32]) {
    let w = sums.len() / M;
    let whole = k - k % 8;
    for j in 0..w {
        let col = &b[(j0 + j) * csb..][..k];
        let mut acc = [[0f32; 8]; M];
        for c in (0..whole).step_by(8) {
            let y = &col[c..c + 8];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = &a[r * k + c..r * k + c + 8];
                for i in 0..8 {
                    acc[i] += x[i] * y[i];
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let tail: f32 = a[r * k + whole..(r + 1) * k].iter().zip(&col[whole..]).map(|(x, y)| x * y).sum();
            sums[r * w + j] = acc.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::threads::tests::values(&[len], seed).to_f32_vec()
    }

    /// Every row of an m-row product is the bits of that row's product alone, and
    /// within rounding of the exact sums, for both layouts, with `alpha`/`beta`, and
    /// widths and depths that leave partial lanes, panels and chunks.
    #[test]
    fn each_row_is_the_bits_it_gives_alone() {
        for (k, n) in [(37, 203), (100, 64), (16, 1), (1, 90), (300, 5000)] {
            let b = values(k * n, 7 + k as u64);
            for (transposed, strides) in [(false, (n as isize, 1)), (true, (1, k as isize))] {
                // Stored [N, K] when read transposed.
                let stored = if transposed { (0..n * k).map(|i| b[(i % k) * n + i / k]).collect() } else { b.clone() };
                for m in 1..=MAX_ROWS {
                    let a = values(m * k, 100 + m as u64);
                    let c0 = values(m * n, 200 + m as u64);
                    let mut c = c0.clone();
                    assert!(unsafe { product(&a, m, k, stored.as_ptr(), strides, n, &mut c, (0.5, 2.0)) });
                    for r in 0..m {
                        let mut alone = c0[r * n..(r + 1) * n].to_vec();
                        let row = &a[r * k..(r + 1) * k];
                        assert!(unsafe { product(row, 1, k, stored.as_ptr(), strides, n, &mut alone, (0.5, 2.0)) });
                        let got = &c[r * n..(r + 1) * n];
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(got), bits(&alone), "row {r} of {m}, [{k}, {n}], transposed {transposed}");
                        for j in 0..n {
                            let exact: f64 = (0..k).map(|i| f64::from(row[i]) * f64::from(b[i * n + j])).sum();
                            let want = 0.5 * exact + 2.0 * f64::from(c0[r * n + j]);
                            assert!((f64::from(got[j]) - want).abs() <= 1e-5 * (k as f64).sqrt() * 4.0, "{got:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn other_layouts_are_left_to_the_blocked_product() {
        let (a, b, mut c) = (vec![1f32; 4], vec![1f32; 16], vec![0f32; 4]);
        // Neither rows nor columns contiguous: not taken.
        assert!(!unsafe { product(&a, 1, 4, b.as_ptr(), (8, 2), 4, &mut c, (1.0, 0.0)) });
    }
}
