//! Frames: the tensors one message carries between devices, as safetensors bytes.
//!
//! The safetensors header's `__metadata__` holds the message kind, the request id, the
//! decode step, the sender and, for control messages, a JSON text (`info`); tensor
//! names are the transmission map's. Frames travel sealed in the envelope of
//! [`crate::wire`] (encrypted and authenticated). Decoding trusts nothing: size
//! limits, header length, JSON, dtypes, shapes and offsets that tile the data exactly
//! are checked before a tensor is built.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use shardc_ir::DType;

use crate::tensor::{Data, Tensor};

/// Largest frame accepted by default (bytes).
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Inputs of a step (token ids from the client, activations from a device).
    Tensors,
    /// A stage finished a step (its timings).
    Done,
    /// Free a request's KV cache.
    End,
    /// Stop serving.
    Stop,
    /// Move to a new plan (body: [`crate::node::Rebalance`]).
    Rebalance,
    /// KV cache handed from device to device while rebalancing.
    Kv,
    /// A device switched plans (body: [`crate::node::Ready`]).
    Ready,
    /// The client opens a session; devices answer `Opened`.
    Open,
    Opened,
    /// The client ends its session.
    Close,
    /// A device could not do what a message asked (body: why).
    Error,
    /// The client is still there (keeps its session open).
    Alive,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Tensors,
        Kind::Done,
        Kind::End,
        Kind::Stop,
        Kind::Rebalance,
        Kind::Kv,
        Kind::Ready,
        Kind::Open,
        Kind::Opened,
        Kind::Close,
        Kind::Error,
        Kind::Alive,
    ];

    /// The name frames carry.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tensors => "tensors",
            Kind::Done => "done",
            Kind::End => "end",
            Kind::Stop => "stop",
            Kind::Rebalance => "rebalance",
            Kind::Kv => "kv",
            Kind::Ready => "ready",
            Kind::Open => "open",
            Kind::Opened => "opened",
            Kind::Close => "close",
            Kind::Error => "error",
            Kind::Alive => "alive",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    pub request: u64,
    pub step: u64,
    pub sender: String,
    /// Control messages' body (JSON), empty for tensor messages.
    pub info: String,
    pub tensors: Vec<(String, Tensor)>,
}

impl Frame {
    /// A frame without a control body.
    pub fn new(kind: Kind, request: u64, step: u64, sender: &str, tensors: Vec<(String, Tensor)>) -> Frame {
        Frame { kind, request, step, sender: sender.into(), info: String::new(), tensors }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn malformed(m: impl Into<String>) -> FrameError {
    FrameError::Malformed(m.into())
}

/// Encode tensors as a frame.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("kind".into(), frame.kind.name().into());
    meta.insert("request".into(), frame.request.to_string().into());
    meta.insert("step".into(), frame.step.to_string().into());
    meta.insert("sender".into(), frame.sender.clone().into());
    if !frame.info.is_empty() {
        meta.insert("info".into(), frame.info.clone().into());
    }
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut data = Vec::new();
    for (name, t) in &frame.tensors {
        let begin = data.len();
        match &t.data {
            Data::F32(a) => a.iter().for_each(|v| data.extend(v.to_le_bytes())),
            Data::I64(a) => a.iter().for_each(|v| data.extend(v.to_le_bytes())),
            Data::Bool(a) => a.iter().for_each(|v| data.push(u8::from(*v))),
        }
        let dtype = match &t.data {
            Data::F32(_) => "F32",
            Data::I64(_) => "I64",
            Data::Bool(_) => "BOOL",
        };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [begin, data.len()]}),
        );
    }
    let text = serde_json::Value::Object(header).to_string();
    let mut bytes = Vec::with_capacity(8 + text.len() + data.len());
    bytes.extend((text.len() as u64).to_le_bytes());
    bytes.extend(text.as_bytes());
    bytes.extend(data);
    bytes
}

/// Decode and check a frame.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Frame, FrameError> {
    if bytes.len() > limit {
        return Err(FrameError::TooLarge { size: bytes.len(), limit });
    }
    let n = bytes.get(..8).ok_or_else(|| malformed("shorter than its 8-byte header length"))?;
    let n = u64::from_le_bytes(n.try_into().map_err(|_| malformed("bad header length"))?) as usize;
    let header = bytes
        .get(8..8usize.saturating_add(n))
        .ok_or_else(|| malformed(format!("header length {n} exceeds the frame")))?;
    let data = &bytes[8 + n..];
    let json: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| malformed(format!("header is not JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| malformed("header is not an object"))?;
    let meta = obj.get("__metadata__").and_then(|m| m.as_object()).ok_or_else(|| malformed("no __metadata__"))?;
    let field =
        |k: &str| meta.get(k).and_then(|v| v.as_str()).ok_or_else(|| malformed(format!("metadata lacks `{k}`")));
    let kind = field("kind")?;
    let kind = Kind::from_name(kind).ok_or_else(|| malformed(format!("unknown message kind `{kind}`")))?;
    let request = field("request")?.parse().map_err(|_| malformed("request is not a number"))?;
    let step = field("step")?.parse().map_err(|_| malformed("step is not a number"))?;
    let sender = field("sender")?.to_string();
    let info = match meta.get("info") {
        None => String::new(),
        Some(v) => v.as_str().ok_or_else(|| malformed("metadata `info` is not a string"))?.to_string(),
    };
    let mut spans: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| malformed(format!("tensor `{name}`: {m}"));
        let dtype = match entry["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("I64") => DType::I64,
            Some("BOOL") => DType::Bool,
            _ => return Err(bad("dtype must be F32, I64 or BOOL")),
        };
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("bad shape"))?;
        let offsets: Vec<u64> = entry["data_offsets"]
            .as_array()
            .ok_or_else(|| bad("no data_offsets"))?
            .iter()
            .filter_map(|v| v.as_u64())
            .collect();
        let [begin, end] = offsets.as_slice() else { return Err(bad("data_offsets must be two numbers")) };
        let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape too large"))?;
        let expected = dtype.byte_len(elements as u64).ok_or_else(|| bad("shape too large"))?;
        if end < begin || end - begin != expected || *end as usize > data.len() {
            return Err(bad("data_offsets disagree with dtype, shape or the frame"));
        }
        spans.insert(*begin, (*end, name.clone()));
        let raw = &data[*begin as usize..*end as usize];
        let t = match dtype {
            DType::F32 => Tensor::f32(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                )
                .map_err(|e| bad(&e.to_string()))?,
            ),
            DType::I64 => Tensor::i64(
                ArrayD::from_shape_vec(
                    IxDyn(&shape),
                    raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
                )
                .map_err(|e| bad(&e.to_string()))?,
            ),
            _ => Tensor::bool(
                ArrayD::from_shape_vec(IxDyn(&shape), raw.iter().map(|&b| b != 0).collect())
                    .map_err(|e| bad(&e.to_string()))?,
            ),
        };
        tensors.push((name.clone(), t));
    }
    // The spans must tile the data exactly: no overlaps, no gaps, nothing trailing.
    let mut next = 0u64;
    for (begin, (end, name)) in &spans {
        if *begin != next {
            return Err(malformed(format!("tensor `{name}` does not start where the previous one ends")));
        }
        next = *end;
    }
    if next as usize != data.len() {
        return Err(malformed(format!("{} trailing bytes after the tensors", data.len() - next as usize)));
    }
    Ok(Frame { kind, request, step, sender, info, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            kind: Kind::Tensors,
            request: 7,
            step: 3,
            sender: "dev-a".into(),
            info: r#"{"epoch": 1}"#.into(),
            tensors: vec![
                (
                    "hidden".into(),
                    Tensor::f32(ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![1.0, -2.0, 3.5, 0.0]).unwrap()),
                ),
                ("ids".into(), Tensor::i64(ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![42]).unwrap())),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&frame());
        let mut back = decode(&bytes, DEFAULT_MAX_FRAME).unwrap();
        back.tensors.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, frame());
    }

    #[test]
    fn refuses_oversized_and_malformed_frames() {
        let bytes = encode(&frame());
        assert!(matches!(decode(&bytes, 16), Err(FrameError::TooLarge { .. })));
        for bad in [&b"short"[..], &[255u8; 64][..], &bytes[..bytes.len() - 3]] {
            assert!(matches!(decode(bad, DEFAULT_MAX_FRAME), Err(FrameError::Malformed(_))), "{bad:?}");
        }
        // Trailing bytes and lying offsets.
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(decode(&trailing, DEFAULT_MAX_FRAME), Err(FrameError::Malformed(_))));
    }
}
