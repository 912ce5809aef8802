//! Fused products and lookups against dequantizing first.

use super::*;

/// A quantized matrix over an anonymous map holding `codes` (int4 packed when asked).
fn matrix(
    codes: &[i8],
    int4: bool,
    shape: [usize; 2],
    scales: Vec<f32>,
    axis: usize,
    block: Option<usize>,
) -> QuantMatrix {
    let bytes: Vec<u8> = if int4 {
        codes.chunks(2).map(|p| (p[0] as u8 & 0x0F) | ((*p.get(1).unwrap_or(&0) as u8 & 0x0F) << 4)).collect()
    } else {
        codes.iter().map(|&c| c as u8).collect()
    };
    let mut m = memmap2::MmapMut::map_anon(bytes.len().max(1)).unwrap();
    m[..bytes.len()].copy_from_slice(&bytes);
    let dtype = if int4 { DType::I4 } else { DType::I8 };
    QuantMatrix::new(std::sync::Arc::new(m.make_read_only().unwrap()), 0, dtype, shape, scales, axis, block).unwrap()
}

/// `product` over `w` against the product with `dense` (`w` dequantized, row-major
/// `[rows, cols]`), for `m` rows of x, stored `[N, K]` (`Gemm` with `transB`) or `[K, N]`.
fn assert_product(w: &QuantMatrix, f: Fused, dense: &[f32], [rows, cols]: [usize; 2], m: usize, what: &str) {
    let trans_b = f.gemm.as_ref().is_some_and(|g| g.transB != 0);
    let (k, n) = if trans_b { (cols, rows) } else { (rows, cols) };
    let x: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect();
    let xt = Tensor::f32(ArrayD::from_shape_vec(IxDyn(&[m, k]), x.clone()).unwrap());
    let got = product(&f, w, &xt, None).unwrap().to_f32_vec();
    for i in 0..m {
        for j in 0..n {
            let want: f32 =
                (0..k).map(|t| x[i * k + t] * if trans_b { dense[j * cols + t] } else { dense[t * cols + j] }).sum();
            let g = got[i * n + j];
            assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "{what} transB {trans_b} m {m}: {g} vs {want}");
        }
    }
}

/// A fused product's description: a `Gemm` with `transB` or a `MatMul`.
fn fused(scale: bool, zero: bool, axis: usize, block: Option<usize>, trans_b: bool) -> Fused {
    Fused {
        data: ValueId(0),
        scale: scale.then_some(ValueId(1)),
        zero: zero.then_some(ValueId(2)),
        axis,
        block,
        per_tensor: false,
        chain: vec![],
        gemm: trans_b.then_some(Gemm { alpha: 1.0, beta: 1.0, transA: 0, transB: 1 }),
        gather: false,
    }
}

#[test]
fn lookups_dequantize_the_rows_they_read() {
    let codes: Vec<i8> = (0..24).map(|i| (i % 15) as i8 - 7).collect();
    let scales: Vec<f32> = (0..8).map(|i| 0.5 + i as f32).collect();
    for int4 in [false, true] {
        // 4 rows of 6, groups of 3 along the row.
        let w = matrix(&codes, int4, [4, 6], scales.clone(), 1, Some(3));
        let ids = Tensor::from_i64(&[2], vec![3, -4]).unwrap();
        let got = gather(&w, &ids).unwrap();
        assert_eq!(got.shape(), [2, 6]);
        let want: Vec<f32> = [3usize, 0]
            .iter()
            .flat_map(|&r| (0..6).map(move |c| (r, c)))
            .map(|(r, c)| f32::from(codes[r * 6 + c]) * scales[r * 2 + c / 3])
            .collect();
        assert_eq!(got.to_f32_vec(), want);
        let err = gather(&w, &Tensor::from_i64(&[1], vec![4]).unwrap()).unwrap_err();
        assert!(err.contains("index 4 is out of range for 4 rows"), "{err}");
    }
}

#[test]
fn fused_products_equal_dequantizing_first() {
    let mut seed = 0x9E37_79B9u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for int4 in [false, true] {
        for trans_b in [false, true] {
            for (block, rows, cols) in [
                (Some(4usize), 12usize, 10usize),
                (None, 12, 10),
                (Some(5), 9, 7),
                (Some(32), 40, 36),
                (None, 24, 160),
                (Some(64), 24, 160),
                (Some(32), 8, 96),
                (Some(32), 6, 256),
                (Some(64), 6, 256),
                (None, 6, 256),
                (Some(128), 4, 384),
            ] {
                for m in [1, 3, 5] {
                    // Every code the type holds, -8 and -128 included (imported models use them).
                    let levels = if int4 { 16 } else { 256 };
                    let codes: Vec<i8> =
                        (0..rows * cols).map(|_| ((next() % levels) as i32 - levels as i32 / 2) as i8).collect();
                    // Groups run along the reduction axis: storage cols with transB.
                    let axis = match (block, trans_b) {
                        (Some(_), true) | (None, false) => 1,
                        _ => 0,
                    };
                    let n_scales = match (block, axis) {
                        (Some(b), 0) => rows.div_ceil(b) * cols,
                        (Some(b), _) => rows * cols.div_ceil(b),
                        (None, 0) => rows,
                        (None, _) => cols,
                    };
                    let scales: Vec<f32> = (0..n_scales).map(|i| 0.01 * (1 + i % 7) as f32).collect();
                    let w = matrix(&codes, int4, [rows, cols], scales.clone(), axis, block);
                    let mut dense = vec![0f32; rows * cols];
                    for r in 0..rows {
                        w.row(r, &mut dense[r * cols..(r + 1) * cols]);
                    }
                    // The dequantized weight by the definition, element by element.
                    for r in 0..rows {
                        for c in 0..cols {
                            let s = match (block, axis) {
                                (Some(b), 0) => scales[(r / b) * cols + c],
                                (Some(b), _) => scales[r * cols.div_ceil(b) + c / b],
                                (None, 0) => scales[r],
                                (None, _) => scales[c],
                            };
                            assert_eq!(dense[r * cols + c], f32::from(codes[r * cols + c]) * s);
                        }
                    }
                    let what = format!("int4 {int4} block {block:?}");
                    assert_product(&w, fused(true, false, axis, block, trans_b), &dense, [rows, cols], m, &what);
                }
            }
        }
    }
}

#[test]
fn dot_products_of_any_length() {
    for n in [0, 1, 7, 8, 9, 33] {
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 / 2.0).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() <= 1e-4 * want.abs().max(1.0), "{n}");
    }
}

#[test]
fn half_matrices_are_read_as_stored() {
    // Rows of 10 (shorter than a vector) and of 90 (vectors of 16 and 64 and a tail).
    for ((rows, cols), dtype) in
        [(6usize, 10usize), (5, 90)].into_iter().flat_map(|s| [(s, DType::F16), (s, DType::BF16)])
    {
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i % 61) as f32 - 30.0) * 0.125).collect();
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| match dtype {
                DType::F16 => half::f16::from_f32(v).to_le_bytes(),
                _ => half::bf16::from_f32(v).to_le_bytes(),
            })
            .collect();
        let mut m = memmap2::MmapMut::map_anon(bytes.len() + 2).unwrap();
        m[2..].copy_from_slice(&bytes);
        // At an odd-looking offset: rows need no alignment.
        let w = QuantMatrix::half(std::sync::Arc::new(m.make_read_only().unwrap()), 2, dtype, [rows, cols]).unwrap();
        for trans_b in [false, true] {
            for m in [1, 2, 6] {
                let f = fused(false, false, 0, None, trans_b);
                assert_product(&w, f, &values, [rows, cols], m, &dtype.to_string());
            }
        }
        let rows_read = gather(&w, &Tensor::from_i64(&[1], vec![2]).unwrap()).unwrap().to_f32_vec();
        assert_eq!(rows_read, values[2 * cols..3 * cols]);
    }
}

/// uint8/uint4 codes with zero points (an imported asymmetric model's), and int8 with
/// all-zero zero points (onnxruntime's symmetric ones): rows dequantize as
/// (code − zero point) · scale, and products at decode and prefill sizes and lookups
/// equal the product with that weight.
#[test]
fn unsigned_codes_and_zero_points_follow_the_definition() {
    let (rows, cols) = (12usize, 10usize);
    for (dtype, block, axis) in
        [(DType::U8, None, 0), (DType::U4, Some(4), 1), (DType::U4, Some(3), 0), (DType::I8, None, 1)]
    {
        let unsigned = dtype != DType::I8;
        let max: u32 = if dtype == DType::U4 { 16 } else { 256 };
        let codes: Vec<u32> = (0..rows * cols).map(|i| (i as u32 * 37 + 11) % max).collect();
        let bytes: Vec<u8> = if dtype == DType::U4 {
            codes.chunks(2).map(|p| p[0] as u8 | ((*p.get(1).unwrap_or(&0) as u8) << 4)).collect()
        } else {
            codes.iter().map(|&c| c as u8).collect()
        };
        let value = |c: u32| if unsigned { c as f32 } else { f32::from(c as u8 as i8) };
        let n_scales = match (block, axis) {
            (Some(b), 0) => rows.div_ceil(b) * cols,
            (Some(b), _) => rows * cols.div_ceil(b),
            (None, 0) => rows,
            (None, _) => cols,
        };
        let scale_of = |r: usize, c: usize| match (block, axis) {
            (Some(b), 0) => (r / b) * cols + c,
            (Some(b), _) => r * cols.div_ceil(b) + c / b,
            (None, 0) => r,
            (None, _) => c,
        };
        let scales: Vec<f32> = (0..n_scales).map(|i| 0.01 * (1 + i % 5) as f32).collect();
        let zeros: Vec<f32> = (0..n_scales).map(|i| if unsigned { (i as u32 * 7 % max) as f32 } else { 0.0 }).collect();
        let mut map = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
        map.copy_from_slice(&bytes);
        let w = QuantMatrix::new(
            std::sync::Arc::new(map.make_read_only().unwrap()),
            0,
            dtype,
            [rows, cols],
            scales.clone(),
            axis,
            block,
        )
        .unwrap()
        .with_zero_points(zeros.clone())
        .unwrap();
        assert_eq!(w.plain_codes(), !unsigned, "{dtype}: all-zero zero points are none");
        let dense: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let g = scale_of(i / cols, i % cols);
                (value(codes[i]) - zeros[g]) * scales[g]
            })
            .collect();
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            w.row(r, &mut row);
            assert_eq!(row, dense[r * cols..(r + 1) * cols], "{dtype} row {r}");
        }
        for trans_b in [false, true] {
            for m in [1, 5] {
                assert_product(
                    &w,
                    fused(true, true, axis, block, trans_b),
                    &dense,
                    [rows, cols],
                    m,
                    &dtype.to_string(),
                );
            }
        }
        let looked = gather(&w, &Tensor::from_i64(&[2], vec![1, -1]).unwrap()).unwrap().to_f32_vec();
        assert_eq!(looked[..cols], dense[cols..2 * cols]);
        assert_eq!(looked[cols..], dense[(rows - 1) * cols..]);
    }
}

/// Prefill products of `[N, K]` matrices split over threads by runs of tiles: the same
/// bits as on one thread, for f16 and int8 weights of several tiles.
#[test]
fn tiled_products_over_threads_are_the_same_bits() {
    let (rows, cols, m) = (3000usize, 64usize, 16usize);
    let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.0625).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let mut map = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
    map.copy_from_slice(&bytes);
    let half = QuantMatrix::half(std::sync::Arc::new(map.make_read_only().unwrap()), 0, DType::F16, [rows, cols]);
    let codes: Vec<i8> = (0..rows * cols).map(|i| (i * 13 % 255) as i8).collect();
    let int8 = matrix(&codes, false, [rows, cols], (0..rows).map(|r| 0.01 * (1 + r % 7) as f32).collect(), 0, None);
    assert!(tile_rows(cols) < rows, "several tiles");
    let x = Tensor::f32(ArrayD::from_shape_fn(IxDyn(&[m, cols]), |i| ((i[0] * 7 + i[1]) % 13) as f32 * 0.1 - 0.6));
    for (w, what) in [(half.unwrap(), "f16"), (int8, "int8")] {
        let f = fused(what == "int8", false, 0, None, true);
        let run = |n: usize| crate::threads::with(n, || product(&f, &w, &x, None).unwrap().to_f32_vec()).unwrap();
        let one: Vec<u32> = run(1).iter().map(|v| v.to_bits()).collect();
        for n in [2, 3] {
            let got: Vec<u32> = run(n).iter().map(|v| v.to_bits()).collect();
            assert_eq!(one, got, "{what} on {n} threads");
        }
    }
}
