//! The text parser's cursor: tokens of one line (names, numbers, dims, types,
//! attribute values), each error naming the line.

use crate::attr::AttrValue;
use crate::dim::parse_dim;
use crate::{DType, Dim, TensorData, TensorType};

use super::parse::{known_shape, ParseError};

pub(super) struct Cursor<'a> {
    pub(super) s: &'a str,
    pub(super) pos: usize,
    pub(super) line: usize,
}

impl Cursor<'_> {
    pub(super) fn error(&self, message: String) -> ParseError {
        ParseError { line: self.line, message: format!("{message} (at column {})", self.pos + 1) }
    }

    pub(super) fn skip_ws(&mut self) {
        while self.rest().starts_with([' ', '\t']) {
            self.pos += 1;
        }
    }

    pub(super) fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    pub(super) fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.rest().chars().next()
    }

    pub(super) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    pub(super) fn end(&mut self) -> Result<(), ParseError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.error(format!("unexpected `{}`", self.rest())))
        }
    }

    pub(super) fn eat(&mut self, ch: char) -> bool {
        if self.peek() == Some(ch) {
            self.pos += ch.len_utf8();
            true
        } else {
            false
        }
    }

    pub(super) fn expect(&mut self, ch: char) -> Result<(), ParseError> {
        if self.eat(ch) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{ch}`")))
        }
    }

    pub(super) fn word(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a word".into()));
        }
        let w = self.rest()[..len].to_string();
        self.pos += len;
        Ok(w)
    }

    pub(super) fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.try_keyword(kw) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{kw}`")))
        }
    }

    pub(super) fn try_keyword(&mut self, kw: &str) -> bool {
        let save = self.pos;
        match self.word() {
            Ok(w) if w == kw => true,
            _ => {
                self.pos = save;
                false
            }
        }
    }

    pub(super) fn unsigned(&mut self) -> Result<u64, ParseError> {
        let w = self.word()?;
        w.parse().map_err(|_| self.error(format!("expected a non-negative integer, found `{w}`")))
    }

    pub(super) fn value_id(&mut self) -> Result<u32, ParseError> {
        self.expect('%')?;
        let w = self.word()?;
        w.parse().map_err(|_| self.error(format!("bad value id `%{w}`")))
    }

    pub(super) fn string(&mut self) -> Result<String, ParseError> {
        self.expect('"')?;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'u')) => {
                        let mut hex = String::new();
                        if !matches!(chars.next(), Some((_, '{'))) {
                            return Err(self.error("bad \\u escape".into()));
                        }
                        for (_, h) in chars.by_ref() {
                            if h == '}' {
                                break;
                            }
                            hex.push(h);
                        }
                        let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        out.push(ch.ok_or_else(|| self.error(format!("bad \\u{{{hex}}} escape")))?);
                    }
                    _ => return Err(self.error("bad escape in string".into())),
                },
                c => out.push(c),
            }
        }
        Err(self.error("unterminated string".into()))
    }

    pub(super) fn dtype(&mut self) -> Result<DType, ParseError> {
        let w = self.word()?;
        w.parse().map_err(|e: String| self.error(e))
    }

    /// `?` or `dtype[dims]`.
    pub(super) fn type_(&mut self) -> Result<Option<TensorType>, ParseError> {
        if self.eat('?') {
            return Ok(None);
        }
        let dtype = self.dtype()?;
        let shape = self.dims()?;
        Ok(Some(TensorType::new(dtype, shape)))
    }

    pub(super) fn dims(&mut self) -> Result<Vec<Dim>, ParseError> {
        self.expect('[')?;
        let close = self.rest().find(']').ok_or_else(|| self.error("missing `]`".into()))?;
        let inner = &self.rest()[..close];
        let dims = if inner.trim().is_empty() {
            Vec::new()
        } else {
            inner.split(',').map(parse_dim).collect::<Result<Vec<_>, _>>().map_err(|e| self.error(e))?
        };
        self.pos += close + 1;
        Ok(dims)
    }

    /// `dtype[shape] [values]`.
    pub(super) fn tensor(&mut self) -> Result<TensorData, ParseError> {
        let dtype = self.dtype()?;
        let dims = self.dims()?;
        let ty = TensorType::new(dtype, dims);
        let shape = known_shape(&ty, self)?;
        let items = self.list_items()?;
        let mut values = Vec::with_capacity(items.len());
        for item in &items {
            let v = match item.as_str() {
                "true" => 1.0,
                "false" => 0.0,
                s => s.parse::<f64>().map_err(|_| self.error(format!("bad tensor element `{s}`")))?,
            };
            values.push(v);
        }
        let expected: usize = shape.iter().product();
        if values.len() != expected {
            return Err(
                self.error(format!("tensor of shape {shape:?} needs {expected} elements, found {}", values.len()))
            );
        }
        if dtype == DType::I64 || dtype == DType::U64 {
            // Parse exactly, not through f64.
            let ints = items
                .iter()
                .map(|s| s.parse::<i128>().map_err(|_| self.error(format!("bad integer `{s}`"))))
                .collect::<Result<Vec<_>, _>>()?;
            let bytes: Vec<u8> = if dtype == DType::I64 {
                ints.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect()
            } else {
                ints.iter().flat_map(|&v| (v as u64).to_le_bytes()).collect()
            };
            return TensorData::from_le_bytes(dtype, shape, bytes).map_err(|e| self.error(e.to_string()));
        }
        Ok(TensorData::from_f64_values(dtype, shape, &values))
    }

    /// `[a, b, c]` as raw item texts.
    pub(super) fn list_items(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect('[')?;
        let close = self.rest().find(']').ok_or_else(|| self.error("missing `]`".into()))?;
        let inner = self.rest()[..close].to_string();
        self.pos += close + 1;
        if inner.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(inner.split(',').map(|s| s.trim().to_string()).collect())
    }

    pub(super) fn attr_value(&mut self) -> Result<AttrValue, ParseError> {
        match self.peek() {
            Some('"') => Ok(AttrValue::Str(self.string()?)),
            Some('[') => {
                let items = self.list_items()?;
                if items.iter().all(|s| s.parse::<i64>().is_ok()) {
                    Ok(AttrValue::Ints(items.iter().filter_map(|s| s.parse().ok()).collect()))
                } else {
                    items
                        .iter()
                        .map(|s| s.parse::<f32>().map_err(|_| self.error(format!("bad list element `{s}`"))))
                        .collect::<Result<Vec<_>, _>>()
                        .map(AttrValue::Floats)
                }
            }
            Some(c)
                if c.is_ascii_alphabetic() && !self.rest().starts_with("inf") && !self.rest().starts_with("NaN") =>
            {
                let save = self.pos;
                let dtype = self.dtype()?;
                if self.peek() == Some('[') {
                    self.pos = save;
                    Ok(AttrValue::Tensor(self.tensor()?))
                } else {
                    Ok(AttrValue::DType(dtype))
                }
            }
            _ => {
                self.skip_ws();
                let len =
                    self.rest().find(|c: char| c == ',' || c == '}' || c.is_whitespace()).unwrap_or(self.rest().len());
                let tok = self.rest()[..len].to_string();
                self.pos += len;
                if let Ok(i) = tok.parse::<i64>() {
                    Ok(AttrValue::Int(i))
                } else {
                    tok.parse::<f32>()
                        .map(AttrValue::Float)
                        .map_err(|_| self.error(format!("bad attribute value `{tok}`")))
                }
            }
        }
    }
}
