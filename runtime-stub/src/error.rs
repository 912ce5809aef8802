//! Runtime errors.

use std::path::PathBuf;

/// Why a graph could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("weight `{name}` in `{}`: {message}", file.display())]
    Weight { name: String, file: PathBuf, message: String },
    #[error("weight `{name}` has no file (a shape-only graph cannot run)")]
    NoWeightFile { name: String },
    #[error("node `{node}` ({op}): {message}")]
    Kernel { node: String, op: &'static str, message: String },
    #[error("{}: {message}", path.display())]
    Package { path: PathBuf, message: String },
    #[error("{0}")]
    Context(String),
    /// A file's problem, its path already in the message.
    #[error("{0}")]
    File(String),
    #[error("threads: {0}")]
    Threads(String),
    #[error("node `{node}`: op {op} has no kernel in the reference interpreter")]
    NoKernel { node: String, op: &'static str },
}
