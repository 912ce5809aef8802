//! Parser of the canonical text form.

use std::collections::BTreeMap;

use super::cursor::Cursor;
use crate::ops::Attrs;
use crate::{
    CachePair, Graph, Node, NodeId, Op, TensorType, Unit, Value, ValueDef, ValueId, WeightLocation, WeightRef,
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

pub(super) fn known_shape(ty: &TensorType, c: &Cursor) -> Result<Vec<usize>, ParseError> {
    ty.shape
        .iter()
        .map(|d| match d.as_known() {
            Some(n) if n >= 0 => Ok(n as usize),
            _ => Err(c.error(format!("weights and constants need known dims, found `{d}`"))),
        })
        .collect()
}
