//! Why a checkpoint could not be loaded: one error type for every reader, naming the file
//! and the key.

use std::path::PathBuf;

use super::safetensors::SafetensorsError;
use crate::model::config::{ConfigError, PRESET_NAMES};

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read checkpoint")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable {format} checkpoint (truncated or foreign file?): {detail}")]
    Format {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
    #[error("{dir}: no checkpoint found (looked for model.safetensors, pytorch_model.bin, *.pt)")]
    NoCheckpoint { dir: PathBuf },
    #[error("{path}: missing tensor '{key}' (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor '{key}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor '{key}' has dtype {dtype}, expected f32, f16 or bf16")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: unexpected tensor '{key}' (not part of an ESM-2 backbone or a known head)")]
    UnexpectedTensor { path: PathBuf, key: String },
    #[error(
        "{path}: the checkpoint has {found} layers but the config says {expected} (key '{key}')"
    )]
    LayerCount {
        path: PathBuf,
        expected: usize,
        found: usize,
        key: String,
    },
    #[error("{path}: cannot read tensor '{key}': {detail}")]
    TensorData {
        path: PathBuf,
        key: String,
        detail: String,
    },
    #[error(
        "{path}: no config.json beside the checkpoint and no preset with {layers} layers of width {hidden} (known: {known}); pass a config",
        known = PRESET_NAMES.join(", ")
    )]
    CannotInferConfig {
        path: PathBuf,
        layers: usize,
        hidden: usize,
    },
    #[error(
        "{path}: tensor '{key}' holds {value} at flat index {index}; a model built from it computes \
         nothing meaningful (pass --allow-nonfinite-weights to run it anyway)"
    )]
    NonFinite {
        path: PathBuf,
        key: String,
        index: usize,
        value: f32,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl From<SafetensorsError> for LoadError {
    fn from(e: SafetensorsError) -> Self {
        match e {
            SafetensorsError::Io { path, source } => LoadError::Io { path, source },
            SafetensorsError::Format { path, detail } => LoadError::Format {
                path,
                format: "safetensors",
                detail,
            },
        }
    }
}
