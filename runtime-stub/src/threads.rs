//! How many threads the kernels of a run may use.
//!
//! A [`crate::Session`] runs its graph with a thread count: its own
//! ([`crate::Session::set_threads`]) or the process's ([`set_threads`]; 1 until set).
//! For the length of a run the calling thread holds a pool of that many threads, and
//! the kernels that split their work (matrix products, products over heads) hand the
//! parts to it; on the pool's own threads nothing splits again. Work is split only
//! across outputs, never along a sum, so every element is computed by the same
//! operations in the same order whatever the count: results are bit-identical.

use std::cell::Cell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::ThreadPool;

use crate::kernels::simd::{map_into, map_slice_in_place};

/// Most threads a run takes (a bound on what a command line can ask for).
pub const MAX_THREADS: usize = 256;

static DEFAULT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: Cell<Option<&'static ThreadPool>> = const { Cell::new(None) };
}

/// The process's thread count for sessions that set none.
pub fn set_threads(n: usize) -> Result<(), String> {
    check(n)?;
    DEFAULT.store(n, Ordering::Relaxed);
    Ok(())
}

/// The process's thread count as a command line asks for it: `requested`, or the
/// cores available (`--threads N` of `shardc` and `shardc-run`).
pub fn set_threads_or_available(requested: Option<usize>) -> Result<(), String> {
    set_threads(requested.unwrap_or_else(available))
}

/// The process's thread count for sessions that set none.
pub fn threads() -> usize {
    DEFAULT.load(Ordering::Relaxed)
}

/// The cores this process may run on (1 if the system does not say).
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
}

pub(crate) fn check(n: usize) -> Result<(), String> {
    if (1..=MAX_THREADS).contains(&n) {
        Ok(())
    } else {
        Err(format!("threads must be 1 to {MAX_THREADS}, got {n}"))
    }
}

/// The pool of `n` threads this thread's runs split work over. The first one a thread
/// asks for counts the thread itself among its `n` (it takes the first part of each
/// split, and the others wait on it asleep while it runs the nodes that do not split:
/// `n` threads busy, not `n + 1`); that pool is kept as long as the thread. Another count
/// later on the same thread takes a shared pool of `n` threads of its own.
fn pool(n: usize) -> Result<&'static ThreadPool, String> {
    thread_local! {
        static OWN: Cell<Option<(usize, &'static ThreadPool)>> = const { Cell::new(None) };
    }
    let leak = |built: ThreadPool| -> &'static ThreadPool { Box::leak(Box::new(built)) };
    match OWN.with(Cell::get) {
        Some((m, p)) if m == n => return Ok(p),
        Some(_) => {}
        None => {
            let built = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .use_current_thread()
                .thread_name(|i| format!("shardc-kernel-{i}"))
                .build();
            // Refused on a thread that is already one of a pool's: a shared pool then.
            if let Ok(built) = built {
                let p = leak(built);
                OWN.with(|o| o.set(Some((n, p))));
                return Ok(p);
            }
        }
    }
    static SHARED: OnceLock<Mutex<HashMap<usize, &'static ThreadPool>>> = OnceLock::new();
    let mut pools = SHARED.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(p);
    }
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("shardc-kernel-{i}"))
        .build()
        .map_err(|e| format!("cannot start {n} threads: {e}"))?;
    let p = leak(built);
    pools.insert(n, p);
    Ok(p)
}

/// Run `f` on this thread with `n` threads for the kernels it calls.
pub(crate) fn with<R>(n: usize, f: impl FnOnce() -> R) -> Result<R, String> {
    let p = if n > 1 { Some(pool(n)?) } else { None };
    let before = CURRENT.with(|c| c.replace(p));
    // Restored on the way out, a panic included.
    struct Restore(Option<&'static ThreadPool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(before);
    Ok(f())
}

/// Fewest elements an element-wise node splits over the run's threads for.
pub(crate) const SPLIT_ELEMENTS: usize = 1 << 16;

/// `f` of every element of `a`; over the run's threads when it holds many and is laid
/// out in order (each element computed alone, so the same bits).
pub(crate) fn map(a: &ndarray::ArrayD<f32>, f: impl Fn(f32) -> f32 + Sync) -> ndarray::ArrayD<f32> {
    let Some(xs) = a.as_slice() else { return a.mapv(f) };
    let out = match current() {
        Some(pool) if xs.len() >= SPLIT_ELEMENTS => split(pool, xs.len(), |range, out: &mut [MaybeUninit<f32>]| {
            map_into(&xs[range], out, &f);
        }),
        _ => {
            let mut out = Vec::with_capacity(xs.len());
            map_into(xs, &mut out.spare_capacity_mut()[..xs.len()], &f);
            // SAFETY: `map_into` wrote every one of the first `xs.len()` values.
            unsafe { out.set_len(xs.len()) };
            out
        }
    };
    ndarray::ArrayD::from_shape_vec(a.raw_dim(), out).unwrap_or_else(|_| a.mapv(&f))
}

/// [`map`] into `a`'s own storage.
pub(crate) fn map_in_place(a: &mut ndarray::ArrayD<f32>, f: impl Fn(f32) -> f32 + Sync) {
    match a.as_slice_mut() {
        Some(xs) => each_row(xs, 1, |xs| map_slice_in_place(xs, &f)),
        None => a.mapv_inplace(f),
    }
}

/// Each row of `width` values of `xs` given to `f` in place; over the run's threads
/// when there are many values (rows computed alone, so the same bits on any count).
pub(crate) fn each_row(xs: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync) {
    each_row_at(xs, width, |_, rows| f(rows))
}

/// [`each_row`], `f` also told the index of the first row it is given.
pub(crate) fn each_row_at(xs: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    let width = width.max(1);
    match current() {
        Some(pool) if xs.len() >= SPLIT_ELEMENTS => {
            let rows = xs.len().div_ceil(width);
            let per = per_task(rows, pool);
            pool.install(|| xs.par_chunks_mut(per * width).enumerate().for_each(|(i, block)| f(i * per, block)));
        }
        _ => f(0, xs),
    }
}

/// `f` on matching blocks of `out` and `src` (of one shape): over the run's threads
/// when there are many elements, in blocks along the first axis longer than one
/// (each element is computed alone, so the same bits on any count); else once, whole.
pub(crate) fn blocks<A: Send, B: Sync>(
    mut out: ndarray::ArrayViewMutD<A>,
    src: ndarray::ArrayViewD<B>,
    f: impl Fn(ndarray::ArrayViewMutD<A>, ndarray::ArrayViewD<B>) + Sync,
) {
    use rayon::prelude::*;
    let axis = out.shape().iter().position(|&d| d > 1);
    match (current(), axis) {
        (Some(pool), Some(axis)) if out.len() >= SPLIT_ELEMENTS && out.shape() == src.shape() => {
            let along = out.shape()[axis];
            let chunk = per_task(along, pool);
            let pairs: Vec<_> = out
                .axis_chunks_iter_mut(ndarray::Axis(axis), chunk)
                .zip(src.axis_chunks_iter(ndarray::Axis(axis), chunk))
                .collect();
            pool.install(|| pairs.into_par_iter().for_each(|(o, s)| f(o, s)));
        }
        _ => f(out.view_mut(), src),
    }
}

/// How many of `n` rows (or blocks) a task takes: four tasks per thread, so a thread
/// held up elsewhere leaves less undone.
fn per_task(n: usize, pool: &ThreadPool) -> usize {
    n.div_ceil(4 * pool.current_num_threads()).max(1)
}

/// `v`'s elements laid out in order (a copy): row by row along its last axis, over the
/// run's threads when many (`ndarray`'s copy of a strided view goes element by element).
pub(crate) fn standard<T: Copy + Send + Sync>(v: ndarray::ArrayViewD<T>) -> ndarray::ArrayD<T> {
    if v.is_standard_layout() {
        return v.to_owned();
    }
    let mut out = ndarray::ArrayD::<T>::uninit(v.raw_dim());
    blocks(out.view_mut(), v, |mut o, s| {
        if o.is_standard_layout() {
            if let Some(dst) = o.as_slice_mut() {
                return rows_into(s, dst);
            }
        }
        s.assign_to(o);
    });
    // SAFETY: `blocks` gave every element of `out` to `rows_into` or `assign_to`, which
    // wrote it.
    unsafe { out.assume_init() }
}

/// `src`'s elements in order into `dst` (of its length), a row of its last axis at a time.
fn rows_into<T: Copy>(src: ndarray::ArrayViewD<T>, dst: &mut [MaybeUninit<T>]) {
    let Some(last) = src.ndim().checked_sub(1) else {
        dst.iter_mut().zip(src.iter()).for_each(|(d, &x)| {
            d.write(x);
        });
        return;
    };
    let width = src.shape()[last].max(1);
    for (lane, row) in src.lanes(ndarray::Axis(last)).into_iter().zip(dst.chunks_mut(width)) {
        row.iter_mut().zip(lane).for_each(|(d, &x)| {
            d.write(x);
        });
    }
}

/// `f` of the elements of `a` and `b` pairwise over `pool`'s threads, when both are
/// laid out in order and `b` is a single value, has `a`'s shape, or trailing dims of it
/// (a bias, a table of positions), or it with the last dim 1 (a value per row). None
/// otherwise (the caller broadcasts another way).
pub(crate) fn zip(
    pool: &ThreadPool,
    a: &ndarray::ArrayD<f32>,
    b: &ndarray::ArrayD<f32>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Option<ndarray::ArrayD<f32>> {
    let (xs, ys) = (a.as_slice()?, b.as_slice()?);
    if ys.is_empty() || a.ndim() < b.ndim() {
        return None;
    }
    if ys.len() == 1 || a.shape() == b.shape() {
        let out = split(pool, xs.len(), |range, out: &mut [MaybeUninit<f32>]| {
            if ys.len() == 1 {
                out.iter_mut().zip(&xs[range]).for_each(|(o, &x)| {
                    o.write(f(x, ys[0]));
                });
            } else {
                out.iter_mut().zip(&xs[range.clone()]).zip(&ys[range]).for_each(|((o, &x), &y)| {
                    o.write(f(x, y));
                });
            }
        });
        return ndarray::ArrayD::from_shape_vec(a.raw_dim(), out).ok();
    }
    // b's dims after any leading 1s.
    let bs: &[usize] = {
        let lead = b.shape().iter().take_while(|&&d| d == 1).count().min(b.ndim().saturating_sub(1));
        &b.shape()[lead..]
    };
    let (ashape, r) = (a.shape(), a.ndim());
    // Rows of `width` values of a, each against the row of b it meets.
    let (width, per_row) = if ashape[r - bs.len()..] == *bs {
        (ys.len(), false)
    } else if b.ndim() == r && b.shape()[r - 1] == 1 && b.shape()[..r - 1] == ashape[..r - 1] {
        (ashape[r - 1], true)
    } else {
        return None;
    };
    if width == 0 {
        return None;
    }
    let rows = |range: Range<usize>, out: &mut [MaybeUninit<f32>]| {
        for (row, (o, x)) in out.chunks_mut(width).zip(xs[range.clone()].chunks(width)).enumerate() {
            if per_row {
                let y = ys[range.start / width + row];
                o.iter_mut().zip(x).for_each(|(o, &x)| {
                    o.write(f(x, y));
                });
            } else {
                o.iter_mut().zip(x).zip(ys).for_each(|((o, &x), &y)| {
                    o.write(f(x, y));
                });
            }
        }
    };
    let out = split_rows(pool, xs.len(), width, rows);
    ndarray::ArrayD::from_shape_vec(a.raw_dim(), out).ok()
}

/// A buffer of `len` values, its ranges filled by `fill` over the pool's threads.
fn split(pool: &ThreadPool, len: usize, fill: impl Fn(Range<usize>, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    split_rows(pool, len, 1, fill)
}

/// [`split`] in ranges of whole rows of `width` values. `fill` must write every value
/// of the range it is given (the buffer is not zeroed first: the threads' first writes
/// are its only ones, each page faulted in by the thread that fills it).
fn split_rows(
    pool: &ThreadPool,
    len: usize,
    width: usize,
    fill: impl Fn(Range<usize>, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let rows = len / width.max(1);
    let chunk = per_task(rows, pool) * width.max(1);
    pool.install(|| {
        out.spare_capacity_mut()[..len].par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
            let start = i * chunk;
            fill(start..start + o.len(), o)
        })
    });
    // SAFETY: the chunks cover 0..len and every caller's `fill` writes each value of
    // its range (a zip of the range with its output slice, element by element).
    unsafe { out.set_len(len) };
    out
}

/// The pool this thread's kernels may split work over, if more than one thread.
pub(crate) fn current() -> Option<&'static ThreadPool> {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
pub(crate) mod tests {
    use ndarray::{ArrayD, IxDyn};
    use shardc_ir::ops::{Gemm, MatMul, Op};

    use super::*;
    use crate::kernels;
    use crate::tensor::Tensor;

    /// Values in [-1, 1] of `shape` from a xorshift seeded with `seed` (also the few-rows
    /// products' tests').
    pub(crate) fn values(shape: &[usize], seed: u64) -> Tensor {
        let mut s = seed | 1;
        Tensor::f32(ArrayD::from_shape_fn(IxDyn(shape), |_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 20_001) as f32 / 10_000.0 - 1.0
        }))
    }

    fn bits(t: &[Tensor]) -> Vec<u32> {
        t.iter().flat_map(|t| t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()).collect()
    }

    #[test]
    fn products_split_over_threads_are_the_same_bits() {
        let gemm = Op::Gemm(Gemm { alpha: 0.5, beta: 1.0, transA: 0, transB: 1 });
        let cases: Vec<(Op, Vec<Tensor>)> = vec![
            // One large product: gemm splits it (120·400·700 multiply-adds).
            (Op::MatMul(MatMul {}), vec![values(&[1, 120, 400], 1), values(&[400, 700], 2)]),
            // A sum over more than one of gemm's depth blocks (k > 512), split by columns.
            (Op::MatMul(MatMul {}), vec![values(&[80, 1100], 26), values(&[1100, 300], 27)]),
            // Rows and a last part of at most 64 (which gemm would sum in other blocks):
            // not split by columns.
            (Op::MatMul(MatMul {}), vec![values(&[40, 1100], 32), values(&[1100, 130], 33)]),
            // Too few columns to split by: gemm's own threads.
            (Op::MatMul(MatMul {}), vec![values(&[300, 700], 28), values(&[700, 100], 29)]),
            // A weight read transposed, with a bias, as projections are.
            (gemm.clone(), vec![values(&[96, 512], 3), values(&[900, 512], 4), values(&[900], 5)]),
            // Pairs of matrices (heads): split pair by pair.
            (Op::MatMul(MatMul {}), vec![values(&[2, 12, 70, 64], 6), values(&[2, 12, 64, 90], 7)]),
            // Decode rows (the few-rows loops), split by columns: [K, N] and [N, K]; one
            // row, in parts of 512, 384 (its 256- and 128-column lanes) and 256 columns.
            (Op::MatMul(MatMul {}), vec![values(&[1, 3, 700], 21), values(&[700, 2000], 22)]),
            (Op::MatMul(MatMul {}), vec![values(&[1, 1, 1100], 30), values(&[1100, 1000], 31)]),
            // Wider than two blocks (a head): about equal parts, a multiple of the threads.
            (Op::MatMul(MatMul {}), vec![values(&[1, 2, 64], 34), values(&[64, 33000], 35)]),
            (gemm, vec![values(&[5, 600], 23), values(&[1900, 600], 24), values(&[1900], 25)]),
            // Too small to split: one thread whatever the count.
            (Op::MatMul(MatMul {}), vec![values(&[3, 40], 8), values(&[40, 50], 9)]),
        ];
        for (op, inputs) in cases {
            let args: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
            let run = |n: usize| with(n, || kernels::run(&op, &args, 1).unwrap()).unwrap();
            let one = bits(&run(1));
            for n in [2, 3, 4] {
                assert_eq!(one, bits(&run(n)), "{op:?} on {n} threads");
            }
        }
    }

    #[test]
    fn element_wise_nodes_split_over_threads_are_the_same_values_and_shapes() {
        use shardc_ir::ops::{Add, LayerNormalization, Mul, ReduceMean, ReduceSum, Tanh};
        let x = values(&[3, 100, 300], 11);
        let norm = LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 };
        let mean = ReduceMean { keepdims: 1, noop_with_empty_axes: 0 };
        let sum = ReduceSum { keepdims: 0, noop_with_empty_axes: 0 };
        let cases: Vec<(Op, Vec<Tensor>)> = vec![
            (Op::Tanh(Tanh {}), vec![x.clone()]),
            (Op::Add(Add {}), vec![x.clone(), values(&[3, 100, 300], 12)]),
            // A single value on either side, of lower and of higher rank.
            (Op::Mul(Mul {}), vec![x.clone(), values(&[1], 13)]),
            (Op::Mul(Mul {}), vec![values(&[], 14), x.clone()]),
            (Op::Mul(Mul {}), vec![x.clone(), values(&[1, 1, 1, 1], 15)]),
            // A bias over the last dim, a table over the last two, a value per row.
            (Op::Add(Add {}), vec![x.clone(), values(&[300], 16)]),
            (Op::Mul(Mul {}), vec![x.clone(), values(&[1, 100, 300], 17)]),
            (Op::Mul(Mul {}), vec![x.clone(), values(&[3, 100, 1], 18)]),
            // Broadcasts it does not split: the same answer on one thread.
            (Op::Mul(Mul {}), vec![x.clone(), values(&[3, 1, 300], 19)]),
            (Op::Add(Add {}), vec![values(&[300], 20), x.clone()]),
            // Row by row: normalisations and reductions, over the last axis or another.
            (Op::LayerNormalization(norm), vec![x.clone(), values(&[300], 30), values(&[300], 31)]),
            (Op::ReduceMean(mean), vec![x.clone(), Tensor::from_i64(&[1], vec![-1]).unwrap()]),
            (Op::ReduceSum(sum), vec![x.clone(), Tensor::from_i64(&[1], vec![1]).unwrap()]),
        ];
        let split = Op::Split(shardc_ir::ops::Split { axis: -1, num_outputs: None });
        let cases = cases.into_iter().map(|(op, inputs)| (op, inputs, 1));
        // Parts of the last axis: copied row by row.
        let cases = cases.chain([(split, vec![x.clone(), Tensor::from_i64(&[2], vec![100, 200]).unwrap()], 2)]);
        for (op, inputs, outputs) in cases {
            let args: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
            let run = |n: usize| with(n, || kernels::run(&op, &args, outputs).unwrap()).unwrap();
            let one = run(1);
            assert_eq!(one.len(), outputs);
            for n in [2, 3] {
                let got = run(n);
                assert_eq!(one[0].shape(), got[0].shape(), "{op:?} on {n} threads");
                assert_eq!(bits(&one), bits(&got), "{op:?} on {n} threads");
            }
        }
    }

    #[test]
    fn a_pool_is_held_only_while_a_run_lasts() {
        assert!(current().is_none());
        with(2, || {
            assert_eq!(current().map(|p| p.current_num_threads()), Some(2));
            with(1, || assert!(current().is_none())).unwrap();
            assert!(current().is_some(), "restored after the inner run");
        })
        .unwrap();
        assert!(current().is_none());
        assert!(check(0).is_err() && check(MAX_THREADS + 1).is_err() && check(MAX_THREADS).is_ok());
    }
}
