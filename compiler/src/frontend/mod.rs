//! Frontends: model files into [`shardc_ir::Graph`]s.

pub mod onnx;
