//! A safetensors file read tensor by tensor: the header is parsed and checked against the
//! file's length when the file opens, and each tensor's bytes are read from disk only when
//! asked for, so loading never holds the whole file in memory (a 3B FP32 checkpoint is
//! 11.3 GB). Every length and offset in the header is checked before anything is allocated
//! from it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest header accepted: safetensors' own limit.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Why a safetensors file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable safetensors file: {detail}")]
    Format { path: PathBuf, detail: String },
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The safetensors dtype name (`F32`, `F16`, `BF16`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    start: u64,
    end: u64,
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// An open safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    file: Mutex<File>,
    tensors: BTreeMap<String, TensorEntry>,
}

/// Bytes per element of a safetensors dtype.
fn dtype_bytes(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Opens `path` and checks its header: every tensor's byte range lies within the file and
    /// matches its shape and dtype.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let format = |detail: String| SafetensorsError::Format {
            path: path.to_path_buf(),
            detail,
        };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|_| {
            format(format!(
                "{file_len} bytes: shorter than the 8-byte header length"
            ))
        })?;
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(format(format!(
                "the header claims {header_len} bytes; the file has {} after the length",
                file_len - 8
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| format(format!("header is not a JSON object: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for (key, value) in raw {
            if key == "__metadata__" {
                continue;
            }
            // The name as messages show it (control bytes escaped); the key as stored.
            let name = crate::input::escaped(&key);
            let entry: RawEntry = serde_json::from_value(value)
                .map_err(|e| format(format!("tensor '{name}': {e}")))?;
            let [rel_start, rel_end] = entry.data_offsets;
            let bytes = dtype_bytes(&entry.dtype)
                .ok_or_else(|| format(format!("tensor '{name}': unknown dtype {}", entry.dtype)))?;
            let claimed = format!("{} {:?}", entry.dtype, entry.shape);
            let expected = entry
                .shape
                .iter()
                .try_fold(bytes as u64, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(|| {
                    format(format!(
                        "tensor '{name}': the header claims {claimed}, more bytes than a file \
                         can address"
                    ))
                })?;
            if rel_end < rel_start {
                return Err(format(format!(
                    "tensor '{name}': data_offsets [{rel_start}, {rel_end}] run backwards"
                )));
            }
            let span = rel_end - rel_start;
            if expected != span {
                return Err(format(format!(
                    "tensor '{name}': the header claims {claimed}, which is {expected} bytes \
                     ({bytes} per value), but its data_offsets [{rel_start}, {rel_end}] span \
                     {span} bytes; the shape or the dtype is wrong"
                )));
            }
            let data_len = file_len - data_start;
            let (Some(start), Some(end)) = (
                data_start.checked_add(rel_start),
                data_start.checked_add(rel_end),
            ) else {
                return Err(format(format!("tensor '{name}': offsets overflow")));
            };
            if rel_end > data_len {
                return Err(format(format!(
                    "tensor '{name}' ({claimed}, {expected} bytes) claims data bytes \
                     {rel_start}..{rel_end}, but the file holds {data_len} bytes of data \
                     after its header (truncated?)"
                )));
            }
            tensors.insert(
                key,
                TensorEntry {
                    dtype: entry.dtype,
                    shape: entry.shape,
                    start,
                    end,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            tensors,
        })
    }

    /// Every tensor's entry by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorEntry> {
        &self.tensors
    }

    /// The raw little-endian bytes of tensor `name` (`None` if the file has no such tensor).
    pub fn read_bytes(&self, name: &str) -> Option<Result<Vec<u8>, SafetensorsError>> {
        let entry = self.tensors.get(name)?;
        let io = |source| SafetensorsError::Io {
            path: self.path.clone(),
            source,
        };
        let read = || {
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            file.seek(SeekFrom::Start(entry.start)).map_err(io)?;
            let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
            file.read_exact(&mut bytes).map_err(io)?;
            Ok(bytes)
        };
        Some(read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let path = dir.join("x.safetensors");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_what_the_safetensors_crate_writes() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = vec![7, 8];
        let views = [
            (
                "a",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &a).unwrap(),
            ),
            (
                "b",
                safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![1, 2], &b)
                    .unwrap(),
            ),
        ];
        let path = dir.path().join("y.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.tensors()["a"].shape, vec![2]);
        assert_eq!(file.read_bytes("a").unwrap().unwrap(), a);
        assert_eq!(file.read_bytes("b").unwrap().unwrap(), b);
        assert!(file.read_bytes("c").is_none());
    }

    #[test]
    fn claims_beyond_the_file_are_errors_before_any_allocation() {
        let dir = tempfile::tempdir().unwrap();
        for header in [
            r#"{"a":{"dtype":"F32","shape":[268435456,1024],"data_offsets":[0,1099511627776]}}"#,
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,8]}}"#,
            r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
            r#"[1, 2]"#,
        ] {
            let path = write(dir.path(), header, &[0u8; 8]);
            let e = SafetensorsFile::open(&path)
                .err()
                .expect(header)
                .to_string();
            assert!(e.contains("x.safetensors"), "{e}");
        }
        let path = dir.path().join("z.safetensors");
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, bytes).unwrap();
        let e = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(e.contains("claims"), "{e}");
    }

    #[test]
    fn a_header_that_lies_about_shape_or_dtype_names_the_tensor_and_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        // Shape [3] of F32 is 12 bytes; the offsets span 8.
        let path = write(
            dir.path(),
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0u8; 8],
        );
        let e = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("tensor 'w'")
                && e.contains("F32 [3], which is 12 bytes")
                && e.contains("span 8 bytes"),
            "{e}"
        );
        // F16 claimed over F32 data: 4 bytes claimed, 8 spanned.
        let path = write(
            dir.path(),
            r#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#,
            &[0u8; 8],
        );
        let e = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("which is 4 bytes") && e.contains("span 8"),
            "{e}"
        );
        // Consistent, but past the end of the data: the data's size is named.
        let path = write(
            dir.path(),
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0u8; 8],
        );
        let e = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(e.contains("holds 8 bytes of data"), "{e}");
    }
}
