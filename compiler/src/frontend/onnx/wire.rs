//! A protobuf wire-format walk over an ONNX `ModelProto` that lifts tensor payloads
//! out of the message without copying them.
//!
//! `onnx-protobuf` decodes `raw_data` into owned `Vec<u8>`s, which would copy every
//! weight. Instead, [`strip_tensor_payloads`] copies the message *without* the
//! `raw_data` fields of initializers and of `Constant`-style node attribute tensors,
//! recording where each payload sits in the (memory-mapped) file; the small remainder
//! is what `onnx-protobuf` parses. Length prefixes of the enclosing messages are
//! rewritten to match.
//!
//! Field numbers (onnx.proto): `ModelProto.graph = 7`; `GraphProto.node = 1`,
//! `GraphProto.initializer = 5`; `NodeProto.attribute = 5`; `AttributeProto.t = 5`;
//! `TensorProto.raw_data = 9`.

use std::collections::HashMap;

const MODEL_GRAPH: u64 = 7;
const GRAPH_NODE: u64 = 1;
const GRAPH_INITIALIZER: u64 = 5;
const NODE_ATTRIBUTE: u64 = 5;
const ATTRIBUTE_T: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// Which tensor a lifted payload belonged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadOwner {
    /// `graph.initializer[i]`.
    Initializer(usize),
    /// `graph.node[node].attribute[attr].t`.
    NodeAttribute { node: usize, attr: usize },
}

/// Where a lifted `raw_data` payload sits in the original bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub length: u64,
}

/// The message without tensor payloads, and where the payloads were.
pub struct Stripped {
    pub message: Vec<u8>,
    pub payloads: HashMap<PayloadOwner, Span>,
}

/// A wire-format error: what went wrong and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

/// Copy `bytes` (a `ModelProto`) without tensor payloads; see the module docs.
pub fn strip_tensor_payloads(bytes: &[u8]) -> Result<Stripped, WireError> {
    let mut state = State { payloads: HashMap::new(), initializers: 0, nodes: 0 };
    let message = state.model(bytes, 0)?;
    Ok(Stripped { message, payloads: state.payloads })
}

struct State {
    payloads: HashMap<PayloadOwner, Span>,
    initializers: usize,
    nodes: usize,
}

struct Field<'a> {
    number: u64,
    wire: u64,
    /// The field's whole encoding (tag, length prefix, payload).
    raw: &'a [u8],
    /// For length-delimited fields: the payload and its offset in the file.
    payload: &'a [u8],
    payload_offset: usize,
}

/// Iterate over the fields of a message that starts at `base` in the file.
fn fields(bytes: &[u8], base: usize) -> impl Iterator<Item = Result<Field<'_>, WireError>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        let result = (|| {
            let tag = varint(bytes, &mut pos, base)?;
            let number = tag >> 3;
            let wire = tag & 7;
            if number == 0 {
                return Err(WireError { offset: base + start, message: "field number 0 is not valid protobuf".into() });
            }
            let (payload_start, payload_end) = match wire {
                WIRE_VARINT => {
                    varint(bytes, &mut pos, base)?;
                    (pos, pos)
                }
                WIRE_FIXED64 => (pos, pos.saturating_add(8)),
                WIRE_FIXED32 => (pos, pos.saturating_add(4)),
                WIRE_LEN => {
                    let len = varint(bytes, &mut pos, base)?;
                    let end = usize::try_from(len).ok().and_then(|l| pos.checked_add(l)).unwrap_or(usize::MAX);
                    (pos, end)
                }
                other => {
                    return Err(WireError {
                        offset: base + start,
                        message: format!("unsupported protobuf wire type {other} (field {number})"),
                    })
                }
            };
            if payload_end > bytes.len() {
                return Err(WireError {
                    offset: base + start,
                    message: format!(
                        "truncated: field {number} needs {} bytes, but only {} remain",
                        payload_end - start,
                        bytes.len() - start
                    ),
                });
            }
            pos = payload_end;
            Ok(Field {
                number,
                wire,
                raw: &bytes[start..payload_end],
                payload: &bytes[payload_start..payload_end],
                payload_offset: base + payload_start,
            })
        })();
        if result.is_err() {
            pos = bytes.len();
        }
        Some(result)
    })
}

fn varint(bytes: &[u8], pos: &mut usize, base: usize) -> Result<u64, WireError> {
    let start = *pos;
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = bytes.get(*pos) else {
            return Err(WireError { offset: base + start, message: "truncated varint".into() });
        };
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError { offset: base + start, message: "varint longer than 10 bytes".into() })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | WIRE_LEN);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

impl State {
    fn model(&mut self, bytes: &[u8], base: usize) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        for field in fields(bytes, base) {
            let field = field?;
            if field.number == MODEL_GRAPH && field.wire == WIRE_LEN {
                let graph = self.graph(field.payload, field.payload_offset)?;
                put_len_field(&mut out, MODEL_GRAPH, &graph);
            } else {
                out.extend_from_slice(field.raw);
            }
        }
        Ok(out)
    }

    fn graph(&mut self, bytes: &[u8], base: usize) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(bytes.len().min(1 << 20));
        for field in fields(bytes, base) {
            let field = field?;
            match (field.number, field.wire) {
                (GRAPH_INITIALIZER, WIRE_LEN) => {
                    let owner = PayloadOwner::Initializer(self.initializers);
                    self.initializers += 1;
                    let t = self.tensor(field.payload, field.payload_offset, owner)?;
                    put_len_field(&mut out, GRAPH_INITIALIZER, &t);
                }
                (GRAPH_NODE, WIRE_LEN) => {
                    let node = self.nodes;
                    self.nodes += 1;
                    let n = self.node(field.payload, field.payload_offset, node)?;
                    put_len_field(&mut out, GRAPH_NODE, &n);
                }
                _ => out.extend_from_slice(field.raw),
            }
        }
        Ok(out)
    }

    fn node(&mut self, bytes: &[u8], base: usize, node: usize) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut attr = 0;
        for field in fields(bytes, base) {
            let field = field?;
            if field.number == NODE_ATTRIBUTE && field.wire == WIRE_LEN {
                let owner = PayloadOwner::NodeAttribute { node, attr };
                attr += 1;
                let mut a = Vec::with_capacity(field.payload.len());
                for af in fields(field.payload, field.payload_offset) {
                    let af = af?;
                    if af.number == ATTRIBUTE_T && af.wire == WIRE_LEN {
                        let t = self.tensor(af.payload, af.payload_offset, owner)?;
                        put_len_field(&mut a, ATTRIBUTE_T, &t);
                    } else {
                        a.extend_from_slice(af.raw);
                    }
                }
                put_len_field(&mut out, NODE_ATTRIBUTE, &a);
            } else {
                out.extend_from_slice(field.raw);
            }
        }
        Ok(out)
    }

    fn tensor(&mut self, bytes: &[u8], base: usize, owner: PayloadOwner) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        for field in fields(bytes, base) {
            let field = field?;
            if field.number == TENSOR_RAW_DATA && field.wire == WIRE_LEN {
                self.payloads
                    .insert(owner, Span { offset: field.payload_offset as u64, length: field.payload.len() as u64 });
            } else {
                out.extend_from_slice(field.raw);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifts_raw_data_and_rewrites_lengths() {
        // TensorProto { name: "w" (field 8), raw_data: [1,2,3,4] (field 9) }
        let tensor = [0x42, 1, b'w', 0x4a, 4, 1, 2, 3, 4];
        let mut graph = Vec::new();
        put_len_field(&mut graph, GRAPH_INITIALIZER, &tensor);
        let mut model = vec![0x08, 8]; // ir_version = 8
        put_len_field(&mut model, MODEL_GRAPH, &graph);
        let stripped = strip_tensor_payloads(&model).unwrap();
        let span = stripped.payloads[&PayloadOwner::Initializer(0)];
        assert_eq!(&model[span.offset as usize..][..span.length as usize], &[1, 2, 3, 4]);
        assert_eq!(stripped.message, vec![0x08, 8, 0x3a, 5, 0x2a, 3, 0x42, 1, b'w']);
    }

    #[test]
    fn reports_truncation() {
        let mut model = Vec::new();
        put_len_field(&mut model, MODEL_GRAPH, &[0x2a, 10, 0x42]);
        let err = strip_tensor_payloads(&model[..model.len() - 1]).err().unwrap();
        assert!(err.message.starts_with("truncated"), "{err}");
    }
}
