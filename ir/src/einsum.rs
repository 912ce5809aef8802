//! `Einsum` equations (<https://onnx.ai/onnx/operators/onnx__Einsum.html>):
//! `term,term,...->term`, each term a string of letters with at most one `...`
//! (the broadcast dims). Without `->` the output holds the letters that appear once,
//! in alphabetical order, after the broadcast dims.

/// One subscript of a term: a letter, or the ellipsis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscript {
    Letter(char),
    Ellipsis,
}

/// A parsed equation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equation {
    pub inputs: Vec<Vec<Subscript>>,
    pub output: Vec<Subscript>,
}

fn term(t: &str) -> Result<Vec<Subscript>, String> {
    let t = t.trim();
    let mut out = Vec::new();
    let mut rest = t;
    let mut ellipsis = false;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("...") {
            if ellipsis {
                return Err(format!("term `{t}` has two ellipses"));
            }
            ellipsis = true;
            out.push(Subscript::Ellipsis);
            rest = &rest[3..];
        } else if c.is_ascii_alphabetic() {
            out.push(Subscript::Letter(c));
            rest = &rest[1..];
        } else if c == ' ' {
            rest = &rest[1..];
        } else {
            return Err(format!("term `{t}` has `{c}`; subscripts are letters and `...`"));
        }
    }
    Ok(out)
}

impl Equation {
    /// Parse an equation.
    pub fn parse(equation: &str) -> Result<Equation, String> {
        let (lhs, rhs) = match equation.split_once("->") {
            Some((l, r)) => (l, Some(r)),
            None => (equation, None),
        };
        let inputs: Vec<Vec<Subscript>> = lhs.split(',').map(term).collect::<Result<_, _>>()?;
        let output = match rhs {
            Some(r) => {
                let out = term(r)?;
                for s in &out {
                    if let Subscript::Letter(c) = s {
                        if !inputs.iter().flatten().any(|x| x == s) {
                            return Err(format!("output subscript `{c}` appears in no input"));
                        }
                        if out.iter().filter(|x| *x == s).count() > 1 {
                            return Err(format!("output subscript `{c}` appears twice"));
                        }
                    }
                }
                out
            }
            None => {
                let mut letters: Vec<char> = inputs
                    .iter()
                    .flatten()
                    .filter_map(|s| match s {
                        Subscript::Letter(c) => Some(*c),
                        Subscript::Ellipsis => None,
                    })
                    .collect();
                letters.sort_unstable();
                let once: Vec<char> =
                    letters.iter().copied().filter(|c| letters.iter().filter(|x| *x == c).count() == 1).collect();
                let mut out = Vec::new();
                if inputs.iter().flatten().any(|s| *s == Subscript::Ellipsis) {
                    out.push(Subscript::Ellipsis);
                }
                out.extend(once.into_iter().map(Subscript::Letter));
                out
            }
        };
        Ok(Equation { inputs, output })
    }

    /// For operands of the given ranks: each operand's dims as labels (letters, and
    /// the broadcast dims as `0`, `1`, … counted from the right), and the output's.
    /// Broadcast dims get labels `'\u{0}'..`; letters keep theirs.
    pub fn labels(&self, ranks: &[usize]) -> Result<(Vec<Vec<char>>, Vec<char>), String> {
        if ranks.len() != self.inputs.len() {
            return Err(format!("the equation has {} terms, the op {} inputs", self.inputs.len(), ranks.len()));
        }
        let mut broadcast_rank = 0;
        let mut labels = Vec::new();
        for (t, &rank) in self.inputs.iter().zip(ranks) {
            let letters = t.iter().filter(|s| matches!(s, Subscript::Letter(_))).count();
            let has_ellipsis = t.contains(&Subscript::Ellipsis);
            if (!has_ellipsis && letters != rank) || (has_ellipsis && letters > rank) {
                return Err(format!("a term has {letters} subscripts for an operand of rank {rank}"));
            }
            let extra = rank - letters;
            broadcast_rank = broadcast_rank.max(extra);
            labels.push(expand(t, extra));
        }
        Ok((labels, expand(&self.output, broadcast_rank)))
    }
}

/// Broadcast dim `k` of `n` (counted so that the last is `n − 1`) as a label below any letter.
fn expand(t: &[Subscript], extra: usize) -> Vec<char> {
    let mut out = Vec::new();
    for s in t {
        match s {
            Subscript::Letter(c) => out.push(*c),
            Subscript::Ellipsis => {
                // Right-aligned: the last broadcast dim is label 31, the one before 30, ...
                for k in 0..extra {
                    out.push(char::from((32 - extra + k) as u8));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_explicit_implicit_and_ellipsis() {
        let e = Equation::parse("bij,bjk->bik").unwrap();
        let (ins, out) = e.labels(&[3, 3]).unwrap();
        assert_eq!(ins, vec![vec!['b', 'i', 'j'], vec!['b', 'j', 'k']]);
        assert_eq!(out, vec!['b', 'i', 'k']);
        let e = Equation::parse("ij,jk").unwrap();
        assert_eq!(e.labels(&[2, 2]).unwrap().1, vec!['i', 'k']);
        let e = Equation::parse("...ii->...i").unwrap();
        let (ins, out) = e.labels(&[4]).unwrap();
        assert_eq!(ins[0].len(), 4);
        assert_eq!(out.len(), 3);
        assert!(Equation::parse("ab->c").is_err());
        assert!(Equation::parse("a1").is_err());
    }
}
