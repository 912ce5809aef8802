//! Many rows of `x` (prefill): a quantized or f16/bf16 weight dequantized a tile of
//! storage rows at a time into a small f32 buffer, each tile multiplied by `sgemm`.

use std::ops::Range;

use ndarray::ArrayView2;

use super::QuantMatrix;
use crate::kernels::sgemm;

/// Rows of the weight dequantized at a time for a matrix product: about 256 KiB.
pub(super) fn tile_rows(cols: usize) -> usize {
    ((64 << 10) / cols.max(1)).max(1)
}

/// Storage rows `rows` of `w` as f32, in `tile` (room for a whole tile).
fn dequantize<'t>(w: &QuantMatrix, rows: Range<usize>, tile: &'t mut [f32]) -> Result<ArrayView2<'t, f32>, String> {
    let (r0, height) = (rows.start, rows.len());
    let t = &mut tile[..height * w.cols];
    for (i, row) in t.chunks_mut(w.cols).enumerate() {
        w.row(r0 + i, row);
    }
    ArrayView2::from_shape((height, w.cols), &*t).map_err(|e| e.to_string())
}

/// Many rows of `x` (prefill): tiles of storage rows dequantized into a small f32
/// buffer, each multiplied by the matrix product. With `[N, K]` storage each tile is a
/// block of output columns, so runs of whole tiles go to the run's threads (each tile
/// and its sums exactly as one thread forms them); `[K, N]` tiles all add into every
/// output, so they stay in order.
pub(super) fn tiled_product(
    w: &QuantMatrix,
    trans_b: bool,
    xs: &[f32],
    m: usize,
    out: &mut [f32],
    alpha: f32,
) -> Result<(), String> {
    let k = if trans_b { w.cols } else { w.rows };
    let n = if trans_b { w.rows } else { w.cols };
    let a2 = ArrayView2::from_shape((m, k), xs).map_err(|e| e.to_string())?;
    let rows_per_tile = tile_rows(w.cols);
    if trans_b {
        let tiles = w.rows.div_ceil(rows_per_tile);
        let pool = crate::threads::current().filter(|_| tiles > 1 && m * k * n >= crate::kernels::SPLIT_FROM);
        // Several runs per thread, so that one slow run does not hold the others up.
        let runs = pool.map_or(1, |p| (4 * p.current_num_threads()).min(tiles));
        let per = tiles.div_ceil(runs) * rows_per_tile;
        let ranges: Vec<(usize, usize)> = (0..w.rows).step_by(per).map(|r0| (r0, (r0 + per).min(w.rows))).collect();
        // Outputs r0..r1 of every row of x, tile by tile.
        let columns = |&(r0, r1): &(usize, usize)| -> Result<Vec<f32>, String> {
            let width = r1 - r0;
            let mut block = vec![0f32; m * width];
            let mut tile = vec![0f32; rows_per_tile * w.cols];
            let mut part = Vec::new();
            for t0 in (r0..r1).step_by(rows_per_tile) {
                let t1 = (t0 + rows_per_tile).min(r1);
                let tv = dequantize(w, t0..t1, &mut tile)?;
                part.clear();
                part.resize(m * (t1 - t0), 0.0);
                sgemm(&a2.into_dyn(), &tv.t().into_dyn(), &mut part, 0.0, alpha);
                for (row, p) in block.chunks_mut(width).zip(part.chunks(t1 - t0)) {
                    row[t0 - r0..t1 - r0].copy_from_slice(p);
                }
            }
            Ok(block)
        };
        let blocks: Vec<Vec<f32>> = match pool {
            Some(pool) => {
                use rayon::prelude::*;
                pool.install(|| ranges.par_iter().map(columns).collect::<Result<_, String>>())?
            }
            None => ranges.iter().map(columns).collect::<Result<_, String>>()?,
        };
        for (&(r0, r1), block) in ranges.iter().zip(&blocks) {
            for (row, p) in out.chunks_mut(n).zip(block.chunks(r1 - r0)) {
                for (o, v) in row[r0..r1].iter_mut().zip(p) {
                    *o += v;
                }
            }
        }
        return Ok(());
    }
    let mut tile = vec![0f32; rows_per_tile * w.cols];
    for r0 in (0..w.rows).step_by(rows_per_tile) {
        let r1 = (r0 + rows_per_tile).min(w.rows);
        let tv = dequantize(w, r0..r1, &mut tile)?;
        // Rows r0..r1 are inputs r0..r1: out += alpha · x[:, r0..r1] · tile.
        let xs = a2.slice(ndarray::s![.., r0..r1]);
        sgemm(&xs.into_dyn(), &tv.into_dyn(), out, 1.0, alpha);
    }
    Ok(())
}
