//! Parser of the canonical text form.

use std::collections::BTreeMap;

use crate::attr::AttrValue;
use crate::dim::parse_dim;
use crate::ops::Attrs;
use crate::{
    CachePair, DType, Dim, Graph, Node, NodeId, Op, TensorData, TensorType, Unit, Value, ValueDef, ValueId,
    WeightLocation, WeightRef,
};

/// A text-form syntax or consistency error, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parse the canonical text form back into a graph.
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty());
    let (first_no, first) = lines.next().ok_or(ParseError { line: 1, message: "empty input".into() })?;
    let mut c = Cursor { s: first, pos: 0, line: first_no };
    c.keyword("graph")?;
    let name = c.string()?;
    c.expect('{')?;
    c.end()?;

    let mut values: BTreeMap<u32, (Value, usize)> = BTreeMap::new();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut cache = Vec::new();
    let mut recompute_beyond = None;
    let mut max_context = None;
    let mut closed = false;

    for (line_no, line) in lines {
        if closed {
            return Err(ParseError { line: line_no, message: "text after the closing `}`".into() });
        }
        let mut c = Cursor { s: line, pos: 0, line: line_no };
        if line == "}" {
            closed = true;
            continue;
        }
        let word = c.word()?;
        let mut define = |id: u32, value: Value, c: &Cursor| -> Result<(), ParseError> {
            if values.insert(id, (value, c.line)).is_some() {
                return Err(c.error(format!("value %{id} is defined twice")));
            }
            Ok(())
        };
        match word.as_str() {
            "input" => {
                let id = c.value_id()?;
                let name = c.string()?;
                c.expect(':')?;
                let ty = c.type_()?;
                c.end()?;
                inputs.push(ValueId(id));
                define(id, Value { name, ty, def: ValueDef::Input }, &c)?;
            }
            "weight" => {
                let id = c.value_id()?;
                let name = c.string()?;
                c.expect(':')?;
                let ty = c.type_()?.ok_or_else(|| c.error("a weight needs a type".into()))?;
                let shape = known_shape(&ty, &c)?;
                c.expect('=')?;
                let location = if c.try_keyword("none") {
                    None
                } else {
                    let file = c.string()?;
                    c.expect('@')?;
                    let offset = c.unsigned()?;
                    c.expect('+')?;
                    let length = c.unsigned()?;
                    Some(WeightLocation { file, offset, length })
                };
                c.end()?;
                let w = WeightRef { dtype: ty.dtype, shape, location };
                define(id, Value { name, ty: Some(ty), def: ValueDef::Weight(w) }, &c)?;
            }
            "const" => {
                let id = c.value_id()?;
                let name = c.string()?;
                c.expect(':')?;
                let t = c.tensor()?;
                c.end()?;
                let ty = TensorType::known(t.dtype, &t.shape);
                define(id, Value { name, ty: Some(ty), def: ValueDef::Const(t) }, &c)?;
            }
            "output" => {
                outputs.push(ValueId(c.value_id()?));
                c.end()?;
            }
            "max" => {
                c.keyword("context")?;
                let n = c.unsigned()?;
                c.end()?;
                if max_context.replace(n).is_some() {
                    return Err(c.error("`max context` given twice".into()));
                }
            }
            "recompute" => {
                c.keyword("beyond")?;
                let n = c.unsigned()?;
                c.end()?;
                if recompute_beyond.replace(n).is_some() {
                    return Err(c.error("`recompute beyond` given twice".into()));
                }
            }
            "cache" => {
                let past = ValueId(c.value_id()?);
                c.expect('-')?;
                c.expect('>')?;
                let present = ValueId(c.value_id()?);
                c.keyword("axis")?;
                let axis = c.unsigned()? as usize;
                c.end()?;
                cache.push(CachePair { past, present, axis });
            }
            w if w.starts_with('n') && w[1..].parse::<u32>().is_ok() => {
                let nid: u32 = w[1..].parse().unwrap_or(u32::MAX);
                if nid as usize != nodes.len() {
                    return Err(c.error(format!("expected node n{}, found {w}", nodes.len())));
                }
                let unit = if c.eat('@') {
                    let w = c.word()?;
                    Some(Unit::parse(&w).ok_or_else(|| {
                        c.error(format!("unknown unit `@{w}` (units: @embed, @attnN, @mlpN, @layerN, @head)"))
                    })?)
                } else {
                    None
                };
                let node_name = c.string()?;
                let op_name = c.word()?;
                let mut attrs = Attrs::new();
                if c.eat('{') {
                    loop {
                        let attr = c.word()?;
                        c.expect('=')?;
                        let value = c.attr_value()?;
                        if attrs.insert(attr.clone(), value).is_some() {
                            return Err(c.error(format!("attribute `{attr}` given twice")));
                        }
                        if c.eat('}') {
                            break;
                        }
                        c.expect(',')?;
                    }
                }
                let op = Op::from_attrs(&op_name, attrs).map_err(|e| c.error(e.to_string()))?;
                c.expect('(')?;
                let mut node_inputs = Vec::new();
                if !c.eat(')') {
                    loop {
                        if c.eat('_') {
                            node_inputs.push(None);
                        } else {
                            node_inputs.push(Some(ValueId(c.value_id()?)));
                        }
                        if c.eat(')') {
                            break;
                        }
                        c.expect(',')?;
                    }
                }
                c.expect('-')?;
                c.expect('>')?;
                let mut node_outputs = Vec::new();
                loop {
                    let id = c.value_id()?;
                    let name = c.string()?;
                    c.expect(':')?;
                    let ty = c.type_()?;
                    node_outputs.push(ValueId(id));
                    define(id, Value { name, ty, def: ValueDef::Node(NodeId(nid)) }, &c)?;
                    if c.at_end() {
                        break;
                    }
                    c.expect(',')?;
                }
                nodes.push(Node { name: node_name, op, inputs: node_inputs, outputs: node_outputs, unit });
            }
            other => {
                return Err(c.error(format!(
                    "expected input, weight, const, a node, output, cache or recompute, found `{other}`"
                )))
            }
        }
    }
    if !closed {
        return Err(ParseError { line: text.lines().count(), message: "missing closing `}`".into() });
    }
    let mut graph = Graph::new(name);
    for (expected, (id, (value, line))) in values.into_iter().enumerate() {
        if id as usize != expected {
            return Err(ParseError { line, message: format!("value ids must be dense: %{expected} is missing") });
        }
        graph.values.push(value);
    }
    graph.nodes = nodes;
    graph.inputs = inputs;
    graph.outputs = outputs;
    graph.cache = cache;
    graph.recompute_beyond = recompute_beyond;
    graph.max_context = max_context;
    Ok(graph)
}

fn known_shape(ty: &TensorType, c: &Cursor) -> Result<Vec<usize>, ParseError> {
    ty.shape
        .iter()
        .map(|d| match d.as_known() {
            Some(n) if n >= 0 => Ok(n as usize),
            _ => Err(c.error(format!("weights and constants need known dims, found `{d}`"))),
        })
        .collect()
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
}

impl Cursor<'_> {
    fn error(&self, message: String) -> ParseError {
        ParseError { line: self.line, message: format!("{message} (at column {})", self.pos + 1) }
    }

    fn skip_ws(&mut self) {
        while self.rest().starts_with([' ', '\t']) {
            self.pos += 1;
        }
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.rest().chars().next()
    }

    fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    fn end(&mut self) -> Result<(), ParseError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.error(format!("unexpected `{}`", self.rest())))
        }
    }

    fn eat(&mut self, ch: char) -> bool {
        if self.peek() == Some(ch) {
            self.pos += ch.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, ch: char) -> Result<(), ParseError> {
        if self.eat(ch) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{ch}`")))
        }
    }

    fn word(&mut self) -> Result<String, ParseError> {
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

    fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.try_keyword(kw) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{kw}`")))
        }
    }

    fn try_keyword(&mut self, kw: &str) -> bool {
        let save = self.pos;
        match self.word() {
            Ok(w) if w == kw => true,
            _ => {
                self.pos = save;
                false
            }
        }
    }

    fn unsigned(&mut self) -> Result<u64, ParseError> {
        let w = self.word()?;
        w.parse().map_err(|_| self.error(format!("expected a non-negative integer, found `{w}`")))
    }

    fn value_id(&mut self) -> Result<u32, ParseError> {
        self.expect('%')?;
        let w = self.word()?;
        w.parse().map_err(|_| self.error(format!("bad value id `%{w}`")))
    }

    fn string(&mut self) -> Result<String, ParseError> {
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

    fn dtype(&mut self) -> Result<DType, ParseError> {
        let w = self.word()?;
        w.parse().map_err(|e: String| self.error(e))
    }

    /// `?` or `dtype[dims]`.
    fn type_(&mut self) -> Result<Option<TensorType>, ParseError> {
        if self.eat('?') {
            return Ok(None);
        }
        let dtype = self.dtype()?;
        let shape = self.dims()?;
        Ok(Some(TensorType::new(dtype, shape)))
    }

    fn dims(&mut self) -> Result<Vec<Dim>, ParseError> {
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
    fn tensor(&mut self) -> Result<TensorData, ParseError> {
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
    fn list_items(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect('[')?;
        let close = self.rest().find(']').ok_or_else(|| self.error("missing `]`".into()))?;
        let inner = self.rest()[..close].to_string();
        self.pos += close + 1;
        if inner.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(inner.split(',').map(|s| s.trim().to_string()).collect())
    }

    fn attr_value(&mut self) -> Result<AttrValue, ParseError> {
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
