//! The tensors of a checkpoint file, read on demand: safetensors (tensor by tensor from disk)
//! or a torch pickle/zip (HF `pytorch_model.bin`, fair-esm `.pt`), each widened to f32.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{DType, TensorData};
use burn_store::pytorch::{PytorchError, PytorchReader};

use super::error::LoadError;
use super::safetensors::SafetensorsFile;

/// The file formats this loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CheckpointFormat {
    /// HF `model.safetensors`.
    Safetensors,
    /// A torch pickle/zip: HF `pytorch_model.bin` or fair-esm `.pt`.
    Torch,
}

/// Raw tensors of a checkpoint file, read on demand.
pub(super) enum TensorSource {
    Safetensors(SafetensorsFile),
    Torch(PytorchReader),
}

/// Shape and dtype of one stored tensor.
pub(super) struct StoredInfo {
    pub(super) shape: Vec<usize>,
    pub(super) dtype: String,
}

impl TensorSource {
    pub(super) fn open(path: &Path) -> Result<Self, LoadError> {
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        if is_safetensors {
            return SafetensorsFile::open(path)
                .map(Self::Safetensors)
                .map_err(LoadError::from);
        }
        check_torch_magic(path)?;
        let torch_error = |e: PytorchError| LoadError::Format {
            path: path.to_path_buf(),
            format: "torch",
            detail: e.to_string(),
        };
        // fair-esm keeps the state dict under "model"; HF files are the state dict itself.
        let reader = match PytorchReader::with_top_level_key(path, "model") {
            Ok(r) if !r.is_empty() => r,
            _ => PytorchReader::new(path).map_err(torch_error)?,
        };
        if reader.is_empty() {
            return Err(LoadError::Format {
                path: path.to_path_buf(),
                format: "torch",
                detail: "no tensors in the file".into(),
            });
        }
        Ok(Self::Torch(reader))
    }

    pub(super) fn format(&self) -> CheckpointFormat {
        match self {
            Self::Safetensors(_) => CheckpointFormat::Safetensors,
            Self::Torch(_) => CheckpointFormat::Torch,
        }
    }

    /// Every stored key with its shape and dtype.
    pub(super) fn infos(&self) -> BTreeMap<String, StoredInfo> {
        match self {
            Self::Safetensors(file) => file
                .tensors()
                .iter()
                .map(|(k, t)| {
                    let info = StoredInfo {
                        shape: t.shape.clone(),
                        dtype: t.dtype.to_lowercase(),
                    };
                    (k.clone(), info)
                })
                .collect(),
            Self::Torch(reader) => reader
                .tensors()
                .iter()
                .map(|(k, snap)| {
                    let info = StoredInfo {
                        shape: snap.shape.to_vec(),
                        dtype: dtype_name(snap.dtype),
                    };
                    (k.clone(), info)
                })
                .collect(),
        }
    }

    /// The values of `key` widened to f32.
    pub(super) fn read_f32(&self, path: &Path, key: &str) -> Result<Vec<f32>, LoadError> {
        let data_error = |detail: String| LoadError::TensorData {
            path: path.to_path_buf(),
            key: key.to_string(),
            detail,
        };
        let unsupported = |dtype: String| LoadError::UnsupportedDtype {
            path: path.to_path_buf(),
            key: key.to_string(),
            dtype,
        };
        match self {
            Self::Safetensors(file) => {
                let dtype = file
                    .tensors()
                    .get(key)
                    .map(|t| t.dtype.clone())
                    .ok_or_else(|| data_error("key vanished".into()))?;
                let raw = file
                    .read_bytes(key)
                    .ok_or_else(|| data_error("key vanished".into()))??;
                let values = match dtype.as_str() {
                    "F32" => raw
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    "F16" => raw
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    "BF16" => raw
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    other => return Err(unsupported(other.to_lowercase())),
                };
                Ok(values)
            }
            Self::Torch(reader) => {
                let snap = reader
                    .get(key)
                    .ok_or_else(|| data_error("key vanished".into()))?;
                if !matches!(
                    snap.dtype,
                    DType::F32 | DType::F16 | DType::BF16 | DType::F64
                ) {
                    return Err(unsupported(dtype_name(snap.dtype)));
                }
                let data: TensorData = snap.to_data().map_err(|e| data_error(format!("{e:?}")))?;
                data.convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| data_error(format!("{e:?}")))
            }
        }
    }
}

/// The first bytes of a zip archive (`torch.save` since torch 1.6).
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// The first bytes of a legacy (pre-1.6) `torch.save` file: pickle protocol 2, then the
/// torch magic number 0x1950a86a20f9469cfc6c as a LONG1.
const LEGACY_TORCH_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// Refuses a file that is neither a torch zip nor a legacy torch pickle before the pickle
/// reader sees it: that reader allocates whatever a string length in the file claims (up to
/// 4 GiB for a few random bytes), so a foreign file must not reach it.
fn check_torch_magic(path: &Path) -> Result<(), LoadError> {
    use std::io::Read;
    let io_error = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(LEGACY_TORCH_MAGIC.len());
    std::fs::File::open(path)
        .map_err(io_error)?
        .take(LEGACY_TORCH_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(io_error)?;
    if head.starts_with(ZIP_MAGIC) || head.starts_with(LEGACY_TORCH_MAGIC) {
        return Ok(());
    }
    Err(LoadError::Format {
        path: path.to_path_buf(),
        format: "torch",
        detail: format!(
            "starts with {} (bytes 0..{}), neither a zip archive (50 4b 03 04) nor a legacy torch pickle",
            head.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            head.len()
        ),
    })
}

fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}
