//! shardc's intermediate representation.
//!
//! A [`Graph`] is an arena of [`Value`]s and [`Node`]s (kept in topological order)
//! addressed by typed ids ([`ValueId`], [`NodeId`]). Ops form one closed enum
//! ([`Op`]) with typed attributes; shapes are symbolic ([`Dim`]); weights are
//! references into files ([`WeightRef`]), never loaded while compiling. The
//! [`text`] module holds the canonical text form and [`verify()`] the verifier.

pub mod attr;
pub mod dim;
pub mod dtype;
pub mod einsum;
pub mod family;
pub mod graph;
pub mod id;
pub mod minifloat;
#[macro_use]
mod ops_macros;
pub mod ops;
pub mod tensor;
pub mod text;
pub mod verify;

pub use attr::{AttrType, AttrValue};
pub use dim::Dim;
pub use dtype::DType;
pub use family::Family;
pub use graph::{CachePair, Constants, Graph, Node, TensorType, Unit, Value, ValueDef};
pub use id::{NodeId, ValueId};
pub use ops::{Op, OpError};
pub use tensor::{TensorData, TensorSizeError, WeightLocation, WeightRef};
pub use verify::{verify, VerifyError};
