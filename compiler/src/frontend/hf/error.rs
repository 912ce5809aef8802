//! Errors of the Hugging Face checkpoint frontend: each names the file, the config key
//! or the tensor.

use std::path::PathBuf;

/// A checkpoint or config that could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{}: cannot read: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: no config.json (a Hugging Face checkpoint folder holds config.json and model.safetensors, or shards with model.safetensors.index.json)", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("{}: no model.safetensors and no model.safetensors.index.json", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("{}: {message}", file.display())]
    Config { file: PathBuf, message: String },
    #[error("{}: config key `{key}`: {message}", file.display())]
    ConfigKey { file: PathBuf, key: String, message: String },
    #[error("{}: {message}", file.display())]
    Safetensors { file: PathBuf, message: String },
    #[error("{}: {message}", file.display())]
    Index { file: PathBuf, message: String },
    #[error("{}: tensor `{tensor}` {message}", dir.display())]
    Tensor { dir: PathBuf, tensor: String, message: String },
    #[error("lowered graph fails verification: {0}")]
    Verify(#[from] shardc_ir::VerifyError),
}
