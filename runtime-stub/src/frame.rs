//! Frames: the tensors one message carries between devices, as safetensors bytes.
//!
//! Written and read with the `safetensors` crate (the codec that serves weights too).
//! The header's `__metadata__` holds a [`Meta`] (`shardc_format::frame`): the message
//! kind, the request id, the decode step, the sender and, for control messages, a body
//! (`info`); tensor names are the transmission map's. Frames travel sealed in the
//! envelope of [`crate::wire`] (encrypted and authenticated). Decoding trusts nothing:
//! the size limit, then the crate's checks (header length, JSON, dtypes, shapes,
//! offsets that tile the data exactly), then the metadata, before a tensor is built.

use std::borrow::Cow;

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};
pub use shardc_format::frame::{Kind, Meta};

use crate::tensor::{Data, Tensor};

/// Largest frame accepted by default (bytes).
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

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

/// A tensor's bytes as the safetensors crate writes them.
struct View<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl safetensors::View for &View<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

impl Frame {
    /// The frame's metadata.
    pub fn meta(&self) -> Meta {
        Meta {
            kind: self.kind,
            request: self.request,
            step: self.step,
            sender: self.sender.clone(),
            info: self.info.clone(),
        }
    }
}

/// Encode a frame: a safetensors buffer (the `safetensors` crate's; it lays tensors out
/// by dtype size, then name) with the [`Meta`] as its `__metadata__`.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let views: Vec<(&str, View)> = frame
        .tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match &t.data {
                Data::F32(a) => (Dtype::F32, a.iter().flat_map(|v| v.to_le_bytes()).collect()),
                Data::I64(a) => (Dtype::I64, a.iter().flat_map(|v| v.to_le_bytes()).collect()),
                Data::Bool(a) => (Dtype::BOOL, a.iter().map(|&v| u8::from(v)).collect()),
            };
            (name.as_str(), View { dtype, shape: t.shape(), bytes })
        })
        .collect();
    // The crate refuses only inconsistent views (a length that is not dtype × shape),
    // which these are not by construction; and tensor names are unique in a frame.
    safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(frame.meta().to_map()))
        .unwrap_or_else(|e| unreachable!("frame tensors are consistent views: {e}"))
}

/// Decode and check a frame: the `safetensors` crate checks the header (its length,
/// JSON, dtypes, shapes and offsets that tile the data exactly); this checks the
/// metadata and builds the tensors.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Frame, FrameError> {
    if bytes.len() > limit {
        return Err(FrameError::TooLarge { size: bytes.len(), limit });
    }
    let (n, header) = SafeTensors::read_metadata(bytes).map_err(|e| malformed(format!("{e}")))?;
    let meta = header.metadata().as_ref().ok_or_else(|| malformed("no __metadata__"))?;
    let meta = Meta::from_map(meta).map_err(malformed)?;
    let data = &bytes[8 + n..];
    let mut tensors = Vec::new();
    for name in header.offset_keys() {
        let bad = |m: &str| malformed(format!("tensor `{name}`: {m}"));
        let info = header.info(&name).ok_or_else(|| bad("missing"))?;
        let (begin, end) = info.data_offsets;
        let raw = data.get(begin..end).ok_or_else(|| bad("data_offsets beyond the frame"))?;
        let shape = IxDyn(&info.shape);
        let t = match info.dtype {
            Dtype::F32 => Tensor::f32(
                ArrayD::from_shape_vec(
                    shape,
                    raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                )
                .map_err(|e| bad(&e.to_string()))?,
            ),
            Dtype::I64 => Tensor::i64(
                ArrayD::from_shape_vec(
                    shape,
                    raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
                )
                .map_err(|e| bad(&e.to_string()))?,
            ),
            Dtype::BOOL => Tensor::bool(
                ArrayD::from_shape_vec(shape, raw.iter().map(|&b| b != 0).collect())
                    .map_err(|e| bad(&e.to_string()))?,
            ),
            other => return Err(bad(&format!("dtype {other:?}: frames carry F32, I64 and BOOL"))),
        };
        tensors.push((name, t));
    }
    Ok(Frame { kind: meta.kind, request: meta.request, step: meta.step, sender: meta.sender, info: meta.info, tensors })
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
        // The crate lays tensors out by dtype size, then name.
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
