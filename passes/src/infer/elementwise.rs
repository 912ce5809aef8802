//! Elementwise ops: numpy broadcasting; contents for integer shape arithmetic.

use shardc_ir::ops::Cast;
use shardc_ir::{DType, Dim, Op};

use super::{broadcast, broadcast_contents, required, In, Out};

fn all_inputs<'a>(inputs: &[Option<In<'a>>]) -> Result<Vec<In<'a>>, String> {
    (0..inputs.len()).map(|i| required(inputs, i)).collect()
}

fn same_dtype(ins: &[In]) -> Result<DType, String> {
    let d = ins[0].dtype();
    if let Some(other) = ins.iter().find(|i| i.dtype() != d) {
        return Err(format!("operand dtypes differ ({d} vs {})", other.dtype()));
    }
    Ok(d)
}

fn broadcast_all(ins: &[In]) -> Result<Vec<Dim>, String> {
    ins.iter().skip(1).try_fold(ins[0].shape().to_vec(), |acc, i| broadcast(&acc, i.shape()))
}

/// `Add`, `Sub`, `Mul`, `Div`, `Pow`, `Mod`, `Max`, `Min`.
pub fn arithmetic(op: &Op, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins = all_inputs(inputs)?;
    let dtype = if matches!(op, Op::Pow(_)) { ins[0].dtype() } else { same_dtype(&ins)? };
    let shape = broadcast_all(&ins)?;
    let contents = broadcast_contents(&ins, &shape, |args| match op {
        Op::Add(_) => Some(args[0].add(args[1])),
        Op::Sub(_) => Some(args[0].sub(args[1])),
        Op::Mul(_) => Some(args[0].mul(args[1])),
        Op::Div(_) => match (args[0].as_known(), args[1].as_known()) {
            (Some(a), Some(b)) => a.checked_div(b).map(Dim::known),
            _ => args[0].div_exact(args[1]),
        },
        Op::Pow(_) => {
            let (a, b) = (args[0].as_known()?, args[1].as_known()?);
            a.checked_pow(u32::try_from(b).ok()?).map(Dim::known)
        }
        Op::Mod(m) => {
            let (a, b) = (args[0].as_known()?, args[1].as_known()?);
            if b == 0 {
                None
            } else if m.fmod == 1 {
                Some(Dim::known(a % b))
            } else {
                // Integer Mod takes the sign of the divisor, like Python's `%`.
                Some(Dim::known(((a % b) + b) % b))
            }
        }
        Op::Max(_) => extreme(args, true),
        Op::Min(_) => extreme(args, false),
        _ => None,
    });
    Ok(vec![Out::with_contents(dtype, shape, contents)])
}

/// The largest (or smallest) argument, when it is provably so.
fn extreme(args: &[&Dim], max: bool) -> Option<Dim> {
    args.iter()
        .find(|a| args.iter().all(|b| if max { a.provably_ge(b) } else { b.provably_ge(a) }))
        .map(|d| (*d).clone())
}

/// Comparisons and logical `And`/`Or`: bool results.
pub fn comparison(op: &Op, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins = all_inputs(inputs)?;
    same_dtype(&ins)?;
    let shape = broadcast_all(&ins)?;
    let truth = |b: bool| Some(Dim::known(i64::from(b)));
    let contents = broadcast_contents(&ins, &shape, |args| {
        let (a, b) = (args[0], args[1]);
        let lt = || {
            if b.sub(a).lower_bound().is_some_and(|lb| lb >= 1) {
                Some(true)
            } else if a.provably_ge(b) {
                Some(false)
            } else {
                None
            }
        };
        let gt = || {
            if a.sub(b).lower_bound().is_some_and(|lb| lb >= 1) {
                Some(true)
            } else if b.provably_ge(a) {
                Some(false)
            } else {
                None
            }
        };
        match op {
            Op::Equal(_) if a == b => truth(true),
            Op::Equal(_) => {
                let differ = a.sub(b).lower_bound().is_some_and(|lb| lb >= 1)
                    || b.sub(a).lower_bound().is_some_and(|lb| lb >= 1);
                if differ {
                    truth(false)
                } else {
                    None
                }
            }
            Op::Less(_) => truth(lt()?),
            Op::Greater(_) => truth(gt()?),
            Op::LessOrEqual(_) => truth(!gt()?),
            Op::GreaterOrEqual(_) => truth(!lt()?),
            Op::And(_) => truth(a.as_known()? != 0 && b.as_known()? != 0),
            Op::Or(_) => truth(a.as_known()? != 0 || b.as_known()? != 0),
            _ => None,
        }
    });
    Ok(vec![Out::with_contents(DType::Bool, shape, contents)])
}

/// `Where(cond, x, y)`.
pub fn where_(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins = all_inputs(inputs)?;
    if ins[0].dtype() != DType::Bool {
        return Err(format!("condition must be bool, is {}", ins[0].dtype()));
    }
    let dtype = same_dtype(&ins[1..])?;
    let shape = broadcast_all(&ins)?;
    let contents = broadcast_contents(&ins, &shape, |args| {
        Some(if args[0].as_known()? != 0 { args[1].clone() } else { args[2].clone() })
    });
    Ok(vec![Out::with_contents(dtype, shape, contents)])
}

/// `Neg`, `Abs`, `Identity`, `Not`: same type, contents carried through.
pub fn unary_exact(op: &Op, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    if matches!(op, Op::Not(_)) && x.dtype() != DType::Bool {
        return Err(format!("Not takes bool, got {}", x.dtype()));
    }
    let contents = x.contents.and_then(|c| {
        c.iter()
            .map(|d| match op {
                Op::Neg(_) => Some(d.neg()),
                Op::Abs(_) if d.lower_bound().is_some_and(|lb| lb >= 0) => Some(d.clone()),
                Op::Abs(_) => d.as_known().map(|v| Dim::known(v.abs())),
                Op::Not(_) => d.as_known().map(|v| Dim::known(i64::from(v == 0))),
                _ => Some(d.clone()),
            })
            .collect()
    });
    Ok(vec![Out::with_contents(x.dtype(), x.shape().to_vec(), contents)])
}

/// Float functions: same type, no contents.
pub fn unary_float(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    Ok(vec![Out::new(x.dtype(), x.shape().to_vec())])
}

/// Ops whose output has the type of their first input.
pub fn same_as_first(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    Ok(vec![Out::new(x.dtype(), x.shape().to_vec())])
}

/// `Cast{to}`.
pub fn cast(c: &Cast, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let contents = x.contents.and_then(|cs| {
        cs.iter()
            .map(|d| {
                if c.to == DType::Bool {
                    match d.as_known() {
                        Some(v) => Some(Dim::known(i64::from(v != 0))),
                        None if d.lower_bound().is_some_and(|lb| lb >= 1) => Some(Dim::known(1)),
                        None => None,
                    }
                } else {
                    Some(d.clone())
                }
            })
            .collect()
    });
    Ok(vec![Out::with_contents(c.to, x.shape().to_vec(), contents)])
}
