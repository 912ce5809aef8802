//! Errors of the ONNX frontend. Each names the file and, where there is one, the
//! node or tensor.

use std::path::PathBuf;

/// An ONNX model that could not be imported.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", file.display())]
pub struct OnnxError {
    /// The model file (or the external data file the problem is in).
    pub file: PathBuf,
    pub kind: OnnxErrorKind,
}

/// What was wrong.
#[derive(Debug, thiserror::Error)]
pub enum OnnxErrorKind {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid ONNX protobuf: {0}")]
    Protobuf(String),
    #[error("not an ONNX model: {0}")]
    NotAModel(String),
    #[error("opset {version} of the default domain is not supported (shardc reads opsets 7 to 24{})", older.as_ref().map(|op| format!("; before 7 only ops that did not change until opset 7, and `{op}` did")).unwrap_or_default())]
    Opset { version: i64, older: Option<String> },
    #[error("tensor `{tensor}`: {message}")]
    Tensor { tensor: String, message: String },
    #[error("tensor `{tensor}`: external data location `{location}` {reason}")]
    ExternalPath { tensor: String, location: String, reason: String },
    #[error(
        "tensor `{tensor}`: external data runs past the end of `{data_file}` \
         (offset {offset} + length {length} > file size {file_len})"
    )]
    ExternalRange { tensor: String, data_file: String, offset: u64, length: u64, file_len: u64 },
    #[error("tensor `{tensor}`: {actual} bytes of data, but {dtype} {shape:?} needs {expected}")]
    DataLength { tensor: String, dtype: String, shape: Vec<usize>, expected: u64, actual: u64 },
    #[error("node `{node}` ({op}): {message}")]
    Node { node: String, op: String, message: String },
    #[error("value `{value}` ({role}) is not defined by any input, initializer or node")]
    Undefined { value: String, role: String },
    #[error("the graph has a cycle through nodes {}", nodes.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" -> "))]
    Cycle { nodes: Vec<String> },
    #[error("value `{value}` is defined twice")]
    Redefined { value: String },
    #[error("imported graph fails verification: {0}")]
    Verify(#[from] shardc_ir::VerifyError),
}
