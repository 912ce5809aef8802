//! shardc's device runtime. For now: the reference CPU interpreter of the IR — an
//! executor ([`Session`]) with f32 kernels for every op of the op set, weights read
//! through memory maps on first use.

pub mod balance;
pub mod cluster;
mod error;
pub mod exec;
pub mod frame;
pub mod generate;
pub mod kernels;
pub mod node;
pub mod package;
pub mod pipeline;
pub mod profile;
pub mod tensor;
pub mod weights;
pub mod wire;

pub use error::RuntimeError;
pub use exec::Session;
pub use tensor::{Data, Tensor};
