//! shardc's device runtime, what ships to a device (the folder keeps its historical
//! name `runtime-stub/`):
//!
//! - the reference CPU interpreter of the IR: [`exec`] (the [`Session`] executor),
//!   [`kernels`] for every op of the op set, [`weights`] read through memory maps from
//!   hash-checked files, [`tensor`];
//! - packages: [`package`] (manifest, hash checks, standby units), [`output`] (the
//!   compile output: map and manifests checked against each other), [`pipeline`]
//!   (stages chained in one process), [`generate`] (prefill, greedy decoding, the KV
//!   cache, context bounds);
//! - the distributed runtime: [`node`] (devices and the client over ZeroMQ, sessions,
//!   rebalancing, the client's generation state machine), [`wire`] (the encrypted,
//!   authenticated envelope and replay guard), [`frame`] (safetensors bytes with typed
//!   bodies); the file and message shapes are `shardc_format`'s;
//! - load balancing: [`balance`] (the policy: the balancer over `balance.json`'s
//!   problem, which `shardc_format::balance` defines);
//! - [`profile`]: this host's device entry, measured with these kernels;
//! - [`threads`]: how many threads a run's kernels split their work over.

pub mod balance;
mod error;
pub mod exec;
pub mod frame;
pub mod generate;
pub mod kernels;
pub mod node;
pub mod output;
pub mod package;
pub mod pipeline;
pub mod profile;
pub mod quantized;
pub mod tensor;
pub mod threads;
mod transposed;
pub mod weights;
pub mod wire;

pub use error::RuntimeError;
pub use exec::Session;
pub use tensor::{Data, Tensor};
