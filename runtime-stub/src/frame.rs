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
pub use shardc_format::frame::{Kind, KvMove, Meta, Ready, Rebalance, Timing};

use crate::tensor::{Data, Tensor};

/// Largest frame accepted by default (bytes).
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// What a message says, by kind: tensors, or a typed control body.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// Inputs of a step (token ids from the client, activations from a device).
    Tensors(Vec<(String, Tensor)>),
    /// A stage finished a step.
    Done(Timing),
    /// Free a request's KV cache.
    End,
    /// Stop serving.
    Stop,
    /// Move to a new plan.
    Rebalance(Rebalance),
    /// KV cache handed from device to device while moving to plan `epoch`.
    Kv {
        epoch: u64,
        tensors: Vec<(String, Tensor)>,
    },
    /// A device switched plans (or says why it could not).
    Ready(Ready),
    /// The client opens a session; devices answer `Opened`.
    Open,
    Opened,
    /// The client ends its session.
    Close,
    /// The client is still there (keeps its session open).
    Alive,
    /// A device could not do what a message asked: why.
    Error(String),
    /// An authenticated message whose metadata was readable but whose body was not
    /// (another version of shardc?): its kind and why, so the receiver can answer.
    Unreadable {
        kind: Kind,
        why: String,
    },
}

impl Body {
    /// The kind frames carry for this body.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Tensors(_) => Kind::Tensors,
            Body::Done(_) => Kind::Done,
            Body::End => Kind::End,
            Body::Stop => Kind::Stop,
            Body::Rebalance(_) => Kind::Rebalance,
            Body::Kv { .. } => Kind::Kv,
            Body::Ready(_) => Kind::Ready,
            Body::Open => Kind::Open,
            Body::Opened => Kind::Opened,
            Body::Close => Kind::Close,
            Body::Alive => Kind::Alive,
            Body::Error(_) => Kind::Error,
            Body::Unreadable { kind, .. } => *kind,
        }
    }
}

/// A decoded frame: who sent it, which request and step it belongs to, and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub request: u64,
    pub step: u64,
    pub sender: String,
    pub body: Body,
}

impl Frame {
    pub fn new(request: u64, step: u64, sender: &str, body: Body) -> Frame {
        Frame { request, step, sender: sender.into(), body }
    }

    /// A control message outside any request.
    pub fn control(sender: &str, body: Body) -> Frame {
        Frame::new(0, 0, sender, body)
    }

    pub fn kind(&self) -> Kind {
        self.body.kind()
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// This side could not encode a frame (a body that does not serialise, tensors the
    /// codec refuses): a defect, reported rather than sent half-made.
    #[error("cannot encode a `{kind}` frame: {message}")]
    Encode { kind: Kind, message: String },
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

/// Encode a frame: a safetensors buffer (the `safetensors` crate's; it lays tensors out
/// by dtype size, then name) with the [`Meta`] as its `__metadata__`.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let failed = |message: String| FrameError::Encode { kind: frame.kind(), message };
    let json = |body: serde_json::Result<String>| body.map_err(|e| failed(e.to_string()));
    let (info, tensors): (String, &[(String, Tensor)]) = match &frame.body {
        Body::Tensors(t) => (String::new(), t),
        Body::Kv { epoch, tensors } => (json(serde_json::to_string(&KvMove { epoch: *epoch }))?, tensors),
        Body::Done(t) => (json(serde_json::to_string(t))?, &[]),
        Body::Rebalance(r) => (json(serde_json::to_string(r))?, &[]),
        Body::Ready(r) => (json(serde_json::to_string(r))?, &[]),
        Body::Error(why) | Body::Unreadable { why, .. } => (why.clone(), &[]),
        Body::End | Body::Stop | Body::Open | Body::Opened | Body::Close | Body::Alive => (String::new(), &[]),
    };
    let meta =
        Meta { kind: frame.kind(), request: frame.request, step: frame.step, sender: frame.sender.clone(), info };
    let views: Vec<(&str, View)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match &t.data {
                Data::F32(a) => (Dtype::F32, le_bytes(a, f32::to_le_bytes)),
                Data::I64(a) => (Dtype::I64, le_bytes(a, i64::to_le_bytes)),
                Data::Bool(a) => (Dtype::BOOL, a.iter().map(|&v| u8::from(v)).collect()),
            };
            (name.as_str(), View { dtype, shape: t.shape(), bytes })
        })
        .collect();
    safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(meta.to_map())).map_err(|e| failed(e.to_string()))
}

/// The little-endian bytes of `a`'s elements in logical order, written into a buffer of
/// their size (collecting byte by byte took 0.13 ms for a 32000-float row of logits).
fn le_bytes<T: Copy, const N: usize>(a: &ArrayD<T>, bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = vec![0u8; a.len() * N];
    match a.as_slice() {
        Some(values) => out.chunks_exact_mut(N).zip(values).for_each(|(o, &v)| o.copy_from_slice(&bytes(v))),
        None => out.chunks_exact_mut(N).zip(a.iter()).for_each(|(o, &v)| o.copy_from_slice(&bytes(v))),
    }
    out
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
    Ok(Frame {
        request: meta.request,
        step: meta.step,
        sender: meta.sender,
        body: body(meta.kind, meta.info, tensors)?,
    })
}

/// The typed body of a message of `kind`. Tensors where the kind takes none are a
/// malformed frame; a body that does not parse is [`Body::Unreadable`].
fn body(kind: Kind, info: String, tensors: Vec<(String, Tensor)>) -> Result<Body, FrameError> {
    let takes_tensors = matches!(kind, Kind::Tensors | Kind::Kv);
    if !takes_tensors && !tensors.is_empty() {
        return Err(malformed(format!("a `{kind}` message carries no tensors")));
    }
    let takes_info =
        !matches!(kind, Kind::Tensors | Kind::End | Kind::Stop | Kind::Open | Kind::Opened | Kind::Close | Kind::Alive);
    if !takes_info && !info.is_empty() {
        return Err(malformed(format!("a `{kind}` message carries no body")));
    }
    fn parse<T: serde::de::DeserializeOwned>(kind: Kind, info: &str) -> Result<T, Body> {
        serde_json::from_str(info).map_err(|e| Body::Unreadable { kind, why: format!("malformed `{kind}` body: {e}") })
    }
    Ok(match kind {
        Kind::Tensors => Body::Tensors(tensors),
        Kind::Kv => match parse::<KvMove>(kind, &info) {
            Ok(m) => Body::Kv { epoch: m.epoch, tensors },
            Err(b) => b,
        },
        Kind::Done => parse(kind, &info).map_or_else(|b| b, Body::Done),
        Kind::Rebalance => parse(kind, &info).map_or_else(|b| b, Body::Rebalance),
        Kind::Ready => parse(kind, &info).map_or_else(|b| b, Body::Ready),
        Kind::Error => Body::Error(info),
        Kind::End => Body::End,
        Kind::Stop => Body::Stop,
        Kind::Open => Body::Open,
        Kind::Opened => Body::Opened,
        Kind::Close => Body::Close,
        Kind::Alive => Body::Alive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors() -> Vec<(String, Tensor)> {
        vec![
            (
                "hidden".into(),
                Tensor::f32(ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![1.0, -2.0, 3.5, 0.0]).unwrap()),
            ),
            ("ids".into(), Tensor::i64(ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![42]).unwrap())),
            ("mask".into(), Tensor::bool(ArrayD::from_shape_vec(IxDyn(&[2]), vec![true, false]).unwrap())),
        ]
    }

    fn frame() -> Frame {
        Frame::new(7, 3, "dev-a", Body::Tensors(tensors()))
    }

    /// A tensor whose elements are not in memory in logical order (a transposed view, as
    /// a step's outputs can be) travels in logical order.
    #[test]
    fn tensors_out_of_memory_order_travel_in_logical_order() {
        let values: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let t = ArrayD::from_shape_vec(IxDyn(&[2, 3]), values).unwrap().reversed_axes();
        assert!(t.as_slice().is_none());
        let sent = Frame::new(1, 0, "a", Body::Tensors(vec![("x".into(), Tensor::f32(t.clone()))]));
        let got = decode(&encode(&sent).unwrap(), DEFAULT_MAX_FRAME).unwrap();
        let Body::Tensors(got) = got.body else { panic!("tensors") };
        assert_eq!(got[0].1.as_f32().unwrap(), &t);
        assert_eq!(got[0].1.as_f32().unwrap().as_slice().unwrap(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    /// Every body survives encoding, tensors in name order (the crate lays them out by
    /// dtype size, then name).
    #[test]
    fn every_body_round_trips() {
        let rebalance = Rebalance {
            epoch: 2,
            stages: vec!["a".into(), "b".into()],
            ranges: vec![[0, 3], [3, 6]],
            requests: vec![0, 1],
            routes: Default::default(),
        };
        let ready = Ready { epoch: 2, error: Some("no".into()), rebuild_ms: 1.5, kv_sent_bytes: 8 };
        let bodies = [
            Body::Tensors(tensors()),
            Body::Done(Timing { compute_ms: 1.25, waiting_ms: 0.5, send_ms: 0.0 }),
            Body::End,
            Body::Stop,
            Body::Rebalance(rebalance),
            Body::Kv { epoch: 2, tensors: tensors() },
            Body::Ready(ready),
            Body::Open,
            Body::Opened,
            Body::Close,
            Body::Alive,
            Body::Error("out of memory".into()),
        ];
        assert_eq!(bodies.len(), Kind::ALL.len());
        for body in bodies {
            let f = Frame::new(7, 3, "dev-a", body);
            let mut back = decode(&encode(&f).unwrap(), DEFAULT_MAX_FRAME).unwrap();
            if let Body::Tensors(t) | Body::Kv { tensors: t, .. } = &mut back.body {
                t.sort_by(|a, b| a.0.cmp(&b.0));
            }
            assert_eq!(back, f);
        }
    }

    /// A frame with any metadata: what another version, or an attacker with the key,
    /// could send.
    fn raw(kind: &str, info: &str, tensors: &[(String, Tensor)]) -> Vec<u8> {
        let mut meta =
            Meta { kind: Kind::Tensors, request: 0, step: 0, sender: "client".into(), info: info.into() }.to_map();
        meta.insert("kind".into(), kind.into());
        let views: Vec<(&str, View)> = tensors
            .iter()
            .map(|(name, t)| {
                let bytes = match &t.data {
                    Data::F32(a) => le_bytes(a, f32::to_le_bytes),
                    _ => unreachable!("f32 only here"),
                };
                (name.as_str(), View { dtype: Dtype::F32, shape: t.shape(), bytes })
            })
            .collect();
        safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(meta)).unwrap()
    }

    #[test]
    fn bodies_that_do_not_fit_their_kind_are_refused_or_unreadable() {
        let hidden = vec![tensors().remove(0)];
        let refused = |bytes: Vec<u8>, what: &str| match decode(&bytes, DEFAULT_MAX_FRAME) {
            Err(FrameError::Malformed(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{other:?}"),
        };
        refused(raw("end", "", &hidden), "a `end` message carries no tensors");
        refused(raw("open", "{}", &[]), "a `open` message carries no body");
        refused(raw("teleport", "", &[]), "unknown message kind");
        // Readable metadata, unreadable body: the receiver learns the kind and why.
        let f = decode(&raw("rebalance", r#"{"epoch": 1}"#, &[]), DEFAULT_MAX_FRAME).unwrap();
        assert!(matches!(f.body, Body::Unreadable { kind: Kind::Rebalance, ref why } if why.contains("missing field")));
    }

    #[test]
    fn refuses_oversized_and_malformed_frames() {
        let bytes = encode(&frame()).unwrap();
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
