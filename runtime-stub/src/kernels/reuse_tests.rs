//! Kernels computed into a handed-over input ([`super::run_into`]), a product reading
//! its operand through a permutation, and `Concat`'s layout: the same values as the
//! plain kernels, bit for bit.

use ndarray::{concatenate, ArrayD, Axis, IxDyn, ShapeBuilder};
use shardc_ir::ops::*;
use shardc_ir::{DType, Op};

use super::{matmul, run, run_into, takes_over};
use crate::tensor::{Data, Tensor};
use crate::threads::tests::values;

fn ints(v: &[i64]) -> Tensor {
    Tensor::from_i64(&[v.len()], v.to_vec()).expect("ints")
}

/// `t` with the same values laid out column-major.
fn reversed_layout(t: &Tensor) -> Tensor {
    let a = t.as_f32().expect("floats");
    let mut f = ArrayD::<f32>::zeros(IxDyn(a.shape()).f());
    f.assign(a);
    assert!(!f.is_standard_layout());
    Tensor::f32(f)
}

fn same(a: &[Tensor], b: &[Tensor]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape());
        assert_eq!(x.dtype, y.dtype);
        match (&x.data, &y.data) {
            (Data::F32(p), Data::F32(q)) => {
                assert!(p.iter().zip(q.iter()).all(|(u, v)| u.to_bits() == v.to_bits()), "values differ")
            }
            _ => assert_eq!(x, y),
        }
    }
}

#[test]
fn kernels_into_a_handed_over_input_are_the_bits_of_the_plain_ones() {
    let x = values(&[2, 3, 40, 8], 3);
    let row = values(&[40, 8], 4);
    let per_row = values(&[2, 3, 40, 1], 5);
    let cases: Vec<(Op, Vec<Tensor>, usize)> = vec![
        (Op::Sigmoid(Sigmoid {}), vec![x.clone()], 0),
        (Op::Tanh(Tanh {}), vec![x.clone()], 0),
        (Op::Exp(Exp {}), vec![x.clone()], 0),
        (Op::Gelu(Gelu { approximate: "tanh".into() }), vec![x.clone()], 0),
        (Op::Sigmoid(Sigmoid {}), vec![reversed_layout(&x)], 0),
        (Op::Mul(Mul {}), vec![x.clone(), row.clone()], 0),
        (Op::Sub(Sub {}), vec![row.clone(), x.clone()], 1),
        (Op::Div(Div {}), vec![x.clone(), per_row.clone()], 0),
        (Op::Add(Add {}), vec![x.clone(), values(&[2, 3, 40, 8], 6)], 1),
        // The result takes input 0's type whichever input is handed over.
        (Op::Add(Add {}), vec![Tensor::with_dtype(DType::F16, x.data.clone()), values(&[2, 3, 40, 8], 6)], 1),
        // The handed-over operand is the smaller: computed as usual into a new array.
        (Op::Mul(Mul {}), vec![x.clone(), row.clone()], 1),
        (Op::Mul(Mul {}), vec![reversed_layout(&x), row.clone()], 0),
        (Op::Softmax(Softmax { axis: -1 }), vec![x.clone()], 0),
        (Op::Softmax(Softmax { axis: 2 }), vec![x.clone()], 0),
        (Op::Softmax(Softmax { axis: -1 }), vec![reversed_layout(&x)], 0),
        (Op::Reshape(Reshape { allowzero: 0 }), vec![x.clone(), ints(&[6, -1])], 0),
        (Op::Reshape(Reshape { allowzero: 0 }), vec![reversed_layout(&x), ints(&[0, 0, 320])], 0),
        (Op::Unsqueeze(Unsqueeze {}), vec![x.clone(), ints(&[1])], 0),
        (Op::Flatten(Flatten { axis: 2 }), vec![x.clone()], 0),
        (Op::Squeeze(Squeeze {}), vec![values(&[1, 5, 1], 7)], 0),
        // Ops that cannot take it over run as usual.
        (Op::Transpose(Transpose { perm: Some(vec![0, 2, 1, 3]) }), vec![x.clone()], 0),
        (Op::Neg(Neg {}), vec![Tensor::i64(ArrayD::from_elem(IxDyn(&[3]), 4))], 0),
    ];
    for (op, inputs, k) in cases {
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
        let want = run(&op, &refs, 1).expect("plain");
        let mut rest = refs.clone();
        rest[k] = None;
        let got = run_into(&op, k, inputs[k].clone(), &rest, 1).unwrap_or_else(|e| panic!("{}: {e}", op.name()));
        same(&got, &want);
    }
    // Errors are the plain kernel's.
    let bad = [Some(&x), Some(&ints(&[7, -1]))];
    let want = run(&Op::Reshape(Reshape { allowzero: 0 }), &bad, 1).expect_err("7 does not divide 1920");
    let got = run_into(&Op::Reshape(Reshape { allowzero: 0 }), 0, x.clone(), &[None, bad[1]], 1).expect_err("same");
    assert_eq!(got, want);
    assert!(takes_over(&Op::Mul(Mul {}), 1) && !takes_over(&Op::Softmax(Softmax { axis: -1 }), 1));
    assert!(!takes_over(&Op::MatMul(MatMul {}), 0));
}

#[test]
fn a_product_reads_its_operand_through_a_permutation_as_a_transpose_would_give_it() {
    let q = values(&[1, 4, 3, 16], 8);
    let keys = values(&[1, 4, 21, 16], 9);
    for (a, perm) in [(q.clone(), Some(&[0i64, 1, 3, 2][..])), (values(&[5, 2], 10), None)] {
        let b = if perm.is_some() { keys.clone() } else { values(&[3, 2], 11) };
        let t = run(&Op::Transpose(Transpose { perm: perm.map(<[i64]>::to_vec) }), &[Some(&b)], 1).expect("transpose");
        let want = run(&Op::MatMul(MatMul {}), &[Some(&a), Some(&t[0])], 1).expect("product");
        let reversed: Vec<i64> = (0..b.shape().len() as i64).rev().collect();
        let got = matmul(&[Some(&a), Some(&b)], Some(perm.unwrap_or(&reversed))).expect("read in place");
        assert_eq!(got[0].shape(), want[0].shape());
        let (g, w) = (got[0].as_f32().expect("f"), want[0].as_f32().expect("f"));
        assert!(g.iter().zip(w).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs())), "{g:?} against {w:?}");
    }
    let not_a_perm = matmul(&[Some(&q), Some(&keys)], Some(&[0, 1, 3, 3]));
    assert!(not_a_perm.expect_err("refused").contains("not a permutation"));
}

#[test]
fn concat_lays_its_result_out_in_order_on_any_axis() {
    let (a, b) = (values(&[2, 3, 4], 12), values(&[2, 5, 4], 13));
    for (x, y, axis) in [(a.clone(), b.clone(), 1usize), (a.clone(), reversed_layout(&a), 2), (a.clone(), a.clone(), 0)]
    {
        let got = run(&Op::Concat(Concat { axis: axis as i64 }), &[Some(&x), Some(&y)], 1).expect("concat");
        let got = got[0].as_f32().expect("floats");
        assert!(got.is_standard_layout());
        let views = [x.as_f32().expect("f").view(), y.as_f32().expect("f").view()];
        assert_eq!(*got, concatenate(Axis(axis), &views).expect("ndarray"));
    }
    let err = run(&Op::Concat(Concat { axis: 1 }), &[Some(&a), Some(&values(&[3, 5, 4], 14))], 1);
    assert!(err.expect_err("refused").contains("differ off axis 1"));
    let tiled = run(&Op::Tile(Tile {}), &[Some(&a), Some(&ints(&[2, 0, 1]))], 1).expect("tile");
    assert_eq!(tiled[0].shape(), &[4, 0, 4]);
}
