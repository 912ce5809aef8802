//! Elementwise ops: numpy broadcasting; contents for integer shape arithmetic.

use shardc_ir::{DType, Dim, Family, Op};

use super::{broadcast, broadcast_contents, element_count, required, In, Out};

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

/// The binary and variadic arithmetic ops (`Add` … `Mod`, bit operations, `PRelu`,
/// `Max`, `Min`, `Sum`, `Mean`).
pub fn arithmetic(op: &Op, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins = all_inputs(inputs)?;
    if ins.is_empty() {
        return Err("needs at least one input".into());
    }
    let dtype = if matches!(op, Op::Pow(_)) { ins[0].dtype() } else { same_dtype(&ins)? };
    if dtype == DType::Bool {
        return Err(format!("{} does not take bool operands", op.name()));
    }
    if matches!(op, Op::BitShift(_) | Op::BitwiseAnd(_) | Op::BitwiseOr(_) | Op::BitwiseXor(_)) && !dtype.is_integer() {
        return Err(format!("{} takes integers, got {dtype}", op.name()));
    }
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
        Op::Sum(_) => Some(args.iter().skip(1).fold(args[0].clone(), |acc, d| acc.add(d))),
        _ => None,
    });
    // Known results outside the type's range would not be what the kernel computes.
    let contents = contents.filter(|c| {
        dtype.int_range().is_some_and(|(lo, hi)| c.iter().all(|d| d.as_known().is_none_or(|v| (lo..=hi).contains(&v))))
    });
    Ok(vec![Out::with_contents(dtype, shape, contents)])
}

/// The largest (or smallest) argument, when it is provably so.
fn extreme(args: &[&Dim], max: bool) -> Option<Dim> {
    args.iter()
        .find(|a| args.iter().all(|b| if max { a.provably_ge(b) } else { b.provably_ge(a) }))
        .map(|d| (*d).clone())
}

/// Comparisons and logical `And`/`Or`/`Xor`: bool results.
pub fn comparison(op: &Op, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins = all_inputs(inputs)?;
    let dtype = same_dtype(&ins)?;
    if op.family() == Family::Logical && dtype != DType::Bool {
        return Err(format!("{} takes bool operands, got {dtype}", op.name()));
    }
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
            Op::Xor(_) => truth((a.as_known()? != 0) != (b.as_known()? != 0)),
            _ => None,
        }
    });
    Ok(vec![Out::with_contents(DType::Bool, shape, contents)])
}

/// `Where(cond, x, y)`.
pub fn where_(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins = all_inputs(inputs)?;
    if ins.len() != 3 {
        return Err("Where takes three inputs".into());
    }
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

/// Elementwise unary ops: the input's type; contents carried through the exact
/// integer ones (`Neg`, `Abs`, `Identity`, `Not`, `Sign`, `Relu`).
pub fn unary(op: &Op, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    match op {
        Op::Not(_) if x.dtype() != DType::Bool => return Err(format!("Not takes bool, got {}", x.dtype())),
        Op::BitwiseNot(_) if !x.dtype().is_integer() => {
            return Err(format!("BitwiseNot takes integers, got {}", x.dtype()))
        }
        Op::Identity(_) | Op::Not(_) | Op::BitwiseNot(_) => {}
        _ if x.dtype() == DType::Bool => return Err(format!("{} does not take bool", op.name())),
        _ => {}
    }
    let contents = x.contents.and_then(|c| {
        c.iter()
            .map(|d| match op {
                Op::Neg(_) if !x.dtype().is_unsigned() => Some(d.neg()),
                Op::Abs(_) if d.lower_bound().is_some_and(|lb| lb >= 0) => Some(d.clone()),
                Op::Abs(_) => d.as_known().map(|v| Dim::known(v.abs())),
                Op::Not(_) => d.as_known().map(|v| Dim::known(i64::from(v == 0))),
                Op::Sign(_) => d.as_known().map(|v| Dim::known(v.signum())),
                Op::Relu(_) if d.lower_bound().is_some_and(|lb| lb >= 0) => Some(d.clone()),
                Op::Relu(_) => d.as_known().map(|v| Dim::known(v.max(0))),
                Op::Identity(_) => Some(d.clone()),
                _ => None,
            })
            .collect()
    });
    Ok(vec![Out::with_contents(x.dtype(), x.shape().to_vec(), contents)])
}

/// `IsNaN`, `IsInf`: a bool of the input's shape.
pub fn predicate(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    if !x.dtype().is_float() {
        return Err(format!("takes a float tensor, got {}", x.dtype()));
    }
    Ok(vec![Out::new(DType::Bool, x.shape().to_vec())])
}

/// `Clip(x[, min[, max]])`: the input's type; bounds must be scalars of that type.
pub fn clip(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    for slot in 1..3 {
        if let Some(b) = inputs.get(slot).copied().flatten() {
            if b.dtype() != x.dtype() {
                return Err(format!("bound (input {slot}) is {}, the input {}", b.dtype(), x.dtype()));
            }
            if element_count(b.shape()).is_some_and(|n| n != 1) {
                return Err(format!("bound (input {slot}) must be a scalar"));
            }
        }
    }
    Ok(vec![Out::new(x.dtype(), x.shape().to_vec())])
}

/// `Dropout(data[, ratio[, training_mode]])`: the data's type, and a bool mask.
pub fn dropout(inputs: &[Option<In>], n_outputs: usize) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let mut outs = vec![Out::with_contents(x.dtype(), x.shape().to_vec(), x.contents.map(<[Dim]>::to_vec))];
    if n_outputs > 1 {
        outs.push(Out::new(DType::Bool, x.shape().to_vec()));
    }
    Ok(outs)
}

/// Ops whose output has the type of their first input.
pub fn same_as_first(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    Ok(vec![Out::new(x.dtype(), x.shape().to_vec())])
}

/// `Cast{to}` (and `CastLike`, with the target's dtype).
pub fn cast(to: DType, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let contents = x.contents.and_then(|cs| {
        cs.iter()
            .map(|d| {
                if to == DType::Bool {
                    match d.as_known() {
                        Some(v) => Some(Dim::known(i64::from(v != 0))),
                        None if d.lower_bound().is_some_and(|lb| lb >= 1) => Some(Dim::known(1)),
                        None => None,
                    }
                } else if let Some(v) = d.as_known() {
                    // A known value keeps its value only if the target holds it.
                    let (lo, hi) = to.int_range()?;
                    (lo..=hi).contains(&v).then(|| d.clone())
                } else if to.int_range().is_some_and(|(_, hi)| hi >= i64::from(i32::MAX)) {
                    // Sizes fit in 32-bit and wider integers.
                    Some(d.clone())
                } else {
                    None
                }
            })
            .collect()
    });
    Ok(vec![Out::with_contents(to, x.shape().to_vec(), contents)])
}
