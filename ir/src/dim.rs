//! Symbolic dimensions.
//!
//! A [`Dim`] is either unknown (`?`, before shape inference) or a polynomial with
//! integer coefficients over named symbols (`batch`, `seq`, `past`): known sizes are
//! constant polynomials, and the sums and products that reshapes and KV caches produce
//! (`batch*seq`, `past+seq`) stay exact. The polynomial is kept in a canonical form
//! (no zero coefficients, sorted monomials), so equal dimensions compare equal and print
//! identically.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// A monomial: a sorted multiset of symbol names; empty for the constant term.
type Monomial = Vec<String>;

/// A tensor dimension.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Dim {
    /// Not known (yet).
    Unknown,
    /// A polynomial over symbols; a constant when it has no symbols.
    Poly(Poly),
}

/// A polynomial in canonical form: monomial -> non-zero coefficient.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Poly {
    terms: BTreeMap<Monomial, i64>,
}

impl Poly {
    fn constant(c: i64) -> Poly {
        let mut terms = BTreeMap::new();
        if c != 0 {
            terms.insert(Vec::new(), c);
        }
        Poly { terms }
    }

    fn add_term(&mut self, mono: Monomial, coeff: i64) {
        let entry = self.terms.entry(mono).or_insert(0);
        *entry += coeff;
        if *entry == 0 {
            self.terms.retain(|_, c| *c != 0);
        }
    }

    fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    fn mul(&self, other: &Poly) -> Poly {
        let mut out = Poly::default();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m = ma.clone();
                m.extend(mb.iter().cloned());
                m.sort();
                out.add_term(m, ca * cb);
            }
        }
        out
    }

    /// Divide by a single monomial term `coeff * mono`, if every term divides exactly.
    fn div_monomial(&self, mono: &Monomial, coeff: i64) -> Option<Poly> {
        let mut out = Poly::default();
        for (m, c) in &self.terms {
            if c % coeff != 0 {
                return None;
            }
            let mut rest = m.clone();
            for s in mono {
                let pos = rest.iter().position(|x| x == s)?;
                rest.remove(pos);
            }
            out.add_term(rest, c / coeff);
        }
        Some(out)
    }

    /// Monomials ordered for printing: higher degree first, then by name.
    fn ordered_terms(&self) -> Vec<(&Monomial, i64)> {
        let mut v: Vec<_> = self.terms.iter().map(|(m, c)| (m, *c)).collect();
        v.sort_by(|(a, _), (b, _)| match b.len().cmp(&a.len()) {
            Ordering::Equal => a.cmp(b),
            o => o,
        });
        v
    }
}

impl Dim {
    /// A known size.
    pub fn known(n: i64) -> Dim {
        Dim::Poly(Poly::constant(n))
    }

    /// A named symbol such as `batch` or `seq`.
    pub fn sym(name: &str) -> Dim {
        let mut p = Poly::default();
        p.add_term(vec![name.to_string()], 1);
        Dim::Poly(p)
    }

    /// The constant value, if this dimension is a known size.
    pub fn as_known(&self) -> Option<i64> {
        match self {
            Dim::Unknown => None,
            Dim::Poly(p) => p.as_const(),
        }
    }

    /// True unless [`Dim::Unknown`].
    pub fn is_determined(&self) -> bool {
        !matches!(self, Dim::Unknown)
    }

    /// The symbols this dimension mentions, sorted and deduplicated.
    pub fn symbols(&self) -> Vec<String> {
        let mut out: Vec<String> = match self {
            Dim::Unknown => Vec::new(),
            Dim::Poly(p) => p.terms.keys().flatten().cloned().collect(),
        };
        out.sort();
        out.dedup();
        out
    }

    fn zip(&self, other: &Dim, f: impl FnOnce(&Poly, &Poly) -> Poly) -> Dim {
        match (self, other) {
            (Dim::Poly(a), Dim::Poly(b)) => Dim::Poly(f(a, b)),
            _ => Dim::Unknown,
        }
    }

    /// `self + other`.
    pub fn add(&self, other: &Dim) -> Dim {
        self.zip(other, |a, b| {
            let mut out = a.clone();
            for (m, c) in &b.terms {
                out.add_term(m.clone(), *c);
            }
            out
        })
    }

    /// `self - other`.
    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.neg())
    }

    /// `-self`.
    pub fn neg(&self) -> Dim {
        self.mul(&Dim::known(-1))
    }

    /// `self * other`.
    pub fn mul(&self, other: &Dim) -> Dim {
        self.zip(other, |a, b| a.mul(b))
    }

    /// Exact division: `Some(q)` with `q * other == self`, when shardc can prove it.
    /// Handles division by a single term (`2*seq`, `batch*seq`, `64`) and by a
    /// polynomial that divides `self` with a constant quotient.
    pub fn div_exact(&self, other: &Dim) -> Option<Dim> {
        let (Dim::Poly(a), Dim::Poly(b)) = (self, other) else {
            return None;
        };
        if b.terms.is_empty() {
            return None;
        }
        if b.terms.len() == 1 {
            let (mono, coeff) = b.terms.iter().next()?;
            return a.div_monomial(mono, *coeff).map(Dim::Poly);
        }
        // Polynomial divisor: try a constant quotient a = k * b.
        let (mono, cb) = b.terms.iter().next()?;
        let ca = a.terms.get(mono)?;
        if ca % cb != 0 {
            return None;
        }
        let k = Dim::known(ca / cb);
        (k.mul(other) == *self).then_some(k)
    }

    /// Floor division for the cases shape arithmetic needs: both constant, or an exact
    /// division; otherwise unknown.
    pub fn div_floor(&self, other: &Dim) -> Dim {
        match (self.as_known(), other.as_known()) {
            (Some(a), Some(b)) if b != 0 => Dim::known(a.div_euclid(b)),
            _ => self.div_exact(other).unwrap_or(Dim::Unknown),
        }
    }

    /// Product of several dimensions (1 for none).
    pub fn product<'a>(dims: impl IntoIterator<Item = &'a Dim>) -> Dim {
        dims.into_iter().fold(Dim::known(1), |acc, d| acc.mul(d))
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Dim {
        Dim::known(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self {
            Dim::Unknown => return f.write_str("?"),
            Dim::Poly(p) => p,
        };
        if p.terms.is_empty() {
            return f.write_str("0");
        }
        for (i, (mono, coeff)) in p.ordered_terms().into_iter().enumerate() {
            let sign = if coeff < 0 {
                "-"
            } else if i > 0 {
                "+"
            } else {
                ""
            };
            f.write_str(sign)?;
            let abs = coeff.unsigned_abs();
            if mono.is_empty() {
                write!(f, "{abs}")?;
            } else {
                if abs != 1 {
                    write!(f, "{abs}*")?;
                }
                f.write_str(&mono.join("*"))?;
            }
        }
        Ok(())
    }
}

/// Parse the text form that [`Dim`]'s `Display` writes: `?`, or a sum of terms
/// `[-]k*a*b+c-3` over integers and identifiers.
pub fn parse_dim(s: &str) -> Result<Dim, String> {
    let s = s.trim();
    if s == "?" {
        return Ok(Dim::Unknown);
    }
    if s.is_empty() {
        return Err("empty dimension".into());
    }
    let mut out = Dim::known(0);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let mut sign = 1i64;
        if bytes[i] == b'+' || bytes[i] == b'-' {
            if bytes[i] == b'-' {
                sign = -1;
            }
            i += 1;
        } else if i > 0 {
            return Err(format!("expected `+` or `-` in dimension `{s}`"));
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'+' && bytes[i] != b'-' {
            i += 1;
        }
        let term = &s[start..i];
        if term.is_empty() {
            return Err(format!("empty term in dimension `{s}`"));
        }
        let mut value = Dim::known(sign);
        for factor in term.split('*') {
            let factor = factor.trim();
            let d = if let Ok(n) = factor.parse::<i64>() {
                Dim::known(n)
            } else if is_symbol(factor) {
                Dim::sym(factor)
            } else {
                return Err(format!("bad factor `{factor}` in dimension `{s}`"));
            };
            value = value.mul(&d);
        }
        out = out.add(&value);
    }
    Ok(out)
}

/// Symbols are identifiers: a letter or `_`, then letters, digits, `_` or `.`.
pub fn is_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The smallest size a symbol can take: `batch` and `seq` count requests and the
/// tokens of a step, at least 1; every other symbol (`past`, …) at least 0.
pub fn symbol_min(symbol: &str) -> i64 {
    match symbol {
        "batch" | "seq" => 1,
        _ => 0,
    }
}

impl Dim {
    /// A lower bound over every size the symbols can take ([`symbol_min`] and up): the
    /// value at the symbols' minimums when no symbol has a negative coefficient,
    /// otherwise none.
    pub fn lower_bound(&self) -> Option<i64> {
        let Dim::Poly(p) = self else { return None };
        let mut bound = 0i64;
        for (mono, c) in &p.terms {
            if *c < 0 && !mono.is_empty() {
                return None;
            }
            let at_min = mono.iter().try_fold(*c, |acc, s| acc.checked_mul(symbol_min(s)))?;
            bound = bound.checked_add(at_min)?;
        }
        Some(bound)
    }

    /// True when `self >= other` for every size the symbols can take.
    pub fn provably_ge(&self, other: &Dim) -> bool {
        self.sub(other).lower_bound().is_some_and(|lb| lb >= 0)
    }
}

impl Dim {
    /// The dimension with symbols replaced by the dims `map` gives them (others kept).
    pub fn substitute(&self, map: &std::collections::HashMap<String, Dim>) -> Dim {
        let Dim::Poly(p) = self else { return Dim::Unknown };
        let mut total = Dim::known(0);
        for (mono, c) in &p.terms {
            let mut term = Dim::known(*c);
            for s in mono {
                term = term.mul(&map.get(s).cloned().unwrap_or_else(|| Dim::sym(s)));
            }
            total = total.add(&term);
        }
        total
    }

    /// The value for given symbol sizes; `None` when unknown or a symbol is unbound.
    pub fn eval(&self, sizes: &std::collections::HashMap<String, i64>) -> Option<i64> {
        self.eval_with(|s| sizes.get(s).copied())
    }

    /// [`Dim::eval`] with the sizes from `size` (`None`: unbound).
    pub fn eval_with(&self, size: impl Fn(&str) -> Option<i64>) -> Option<i64> {
        let Dim::Poly(p) = self else { return None };
        let mut total = 0i64;
        for (mono, c) in &p.terms {
            let mut term = *c;
            for s in mono {
                term = term.checked_mul(size(s)?)?;
            }
            total = total.checked_add(term)?;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_stays_canonical() {
        let b = Dim::sym("batch");
        let s = Dim::sym("seq");
        let bs = b.mul(&s);
        assert_eq!(bs.to_string(), "batch*seq");
        assert_eq!(s.mul(&b), bs);
        let total = bs.mul(&Dim::known(64));
        assert_eq!(total.to_string(), "64*batch*seq");
        assert_eq!(total.div_exact(&bs), Some(Dim::known(64)));
        assert_eq!(total.div_exact(&Dim::known(128)), None);
        assert_eq!(s.sub(&s), Dim::known(0));
        let p = Dim::sym("past").add(&s);
        assert_eq!(p.to_string(), "past+seq");
        assert_eq!(p.mul(&Dim::known(2)).div_exact(&p), Some(Dim::known(2)));
        assert_eq!(Dim::known(7).div_floor(&Dim::known(2)), Dim::known(3));
    }

    #[test]
    fn text_round_trips() {
        for text in ["?", "0", "64", "-3", "batch*seq", "2*seq+1", "past+seq-1", "-seq+4"] {
            let d = parse_dim(text).unwrap();
            assert_eq!(d.to_string(), text, "{text}");
        }
        assert!(parse_dim("3**seq").is_err());
        assert!(parse_dim("").is_err());
    }
}
