//! Frontends: model files into [`shardc_ir::Graph`]s.

pub mod hf;
pub mod onnx;
