//! A `.npy` writer that fills rows as they complete and never touches its target until the
//! last row is in: rows go to `<target>.partial` (header and a NaN-filled body first, so a
//! run that stops early leaves a valid file whose unfinished rows are NaN), which
//! [`NpyRowWriter::finish`] renames onto the target. (ndarray-npy writes whole arrays only;
//! reading is left to it.)

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why a `.npy` file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot write .npy")]
pub struct NpyError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A `[rows, cols]` little-endian f32 `.npy` file written row by row, in any order.
pub struct NpyRowWriter {
    file: File,
    /// The `.partial` file being written.
    path: PathBuf,
    target: PathBuf,
    header_len: u64,
    rows: usize,
    cols: usize,
    written: Vec<bool>,
}

/// Where rows of `target` are written until the run completes: `<target>.partial`.
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// The `.npy` v1.0 header for a C-order `<f4` array of `shape`, padded to 64 bytes.
pub fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

impl NpyRowWriter {
    /// Creates `<target>.partial` with every value NaN; `target` is not touched.
    pub fn create(target: &Path, rows: usize, cols: usize) -> Result<Self, NpyError> {
        let path = partial_path(target);
        let err = |source| NpyError {
            path: path.clone(),
            source,
        };
        let mut file = File::create(&path).map_err(err)?;
        let header = npy_header(&[rows, cols]);
        file.write_all(&header).map_err(err)?;
        let nan_row: Vec<u8> = std::iter::repeat_n(f32::NAN.to_le_bytes(), cols)
            .flatten()
            .collect();
        for _ in 0..rows {
            file.write_all(&nan_row).map_err(err)?;
        }
        file.flush().map_err(err)?;
        Ok(Self {
            file,
            path,
            target: target.to_path_buf(),
            header_len: header.len() as u64,
            rows,
            cols,
            written: vec![false; rows],
        })
    }

    /// Writes row `row` (`values.len()` must equal `cols`) and flushes it to the file.
    pub fn write_row(&mut self, row: usize, values: &[f32]) -> Result<(), NpyError> {
        assert!(
            row < self.rows && values.len() == self.cols,
            "row out of range"
        );
        let offset = self.header_len + (row * self.cols * 4) as u64;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = |source| NpyError {
            path: self.path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(offset)).map_err(err)?;
        self.file.write_all(&bytes).map_err(err)?;
        self.file.flush().map_err(err)?;
        self.written[row] = true;
        Ok(())
    }

    /// Moves the finished file onto its target; an error (and the `.partial` file kept) when
    /// a row was never written.
    pub fn finish(self) -> Result<PathBuf, NpyError> {
        let err = |source| NpyError {
            path: self.path.clone(),
            source,
        };
        if let Some(row) = self.written.iter().position(|&w| !w) {
            return Err(err(std::io::Error::other(format!(
                "row {row} of {} was never written; the partial file is kept",
                self.rows
            ))));
        }
        self.file.sync_all().map_err(err)?;
        std::fs::rename(&self.path, &self.target).map_err(err)?;
        Ok(self.target)
    }
}

/// Reads a C-order little-endian float `.npy` of `<f4` or `<f2` values (what numpy writes
/// for float32 and float16 arrays) as its shape and values widened to f32.
pub fn read_float_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let err = |detail: String| NpyError {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, detail),
    };
    let bytes = std::fs::read(path).map_err(|source| NpyError {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(err(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .map(String::from_utf8_lossy)
        .ok_or_else(|| err("truncated header".into()))?;
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr").ok_or_else(|| err("no 'descr' in the header".into()))?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f2'") {
        2
    } else {
        return Err(err(format!(
            "dtype {} is not float32 or float16 (little-endian)",
            descr.split(',').next().unwrap_or("?")
        )));
    };
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(err(
            "Fortran-order arrays are not supported; save in C order".into(),
        ));
    }
    let shape_text = field("shape").ok_or_else(|| err("no 'shape' in the header".into()))?;
    let inside = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err(format!("unreadable shape {shape_text}")))?;
    let shape: Vec<usize> = inside
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| err(format!("unreadable shape {shape_text}")))
        })
        .collect::<Result<_, _>>()?;
    let count: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    if data.len() != count * width {
        return Err(err(format!(
            "shape {shape:?} needs {} bytes of data, the file holds {}",
            count * width,
            data.len()
        )));
    }
    let values = if width == 4 {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        data.chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    };
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_and_float16_arrays_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let a = ndarray::Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, -6.5])
            .unwrap();
        ndarray_npy::write_npy(&path, &a).unwrap();
        let (shape, values) = read_float_npy(&path).unwrap();
        assert_eq!((shape, values), (vec![2, 3], a.iter().copied().collect()));
        // float16: the same header with '<f2' and 2-byte values.
        let mut bytes = npy_header(&[2]);
        let header_end = bytes.len();
        let text = String::from_utf8_lossy(&bytes[10..header_end]).replace("<f4", "<f2");
        bytes.truncate(10);
        bytes.extend_from_slice(text.as_bytes());
        for v in [0.5f32, -2.0] {
            bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_float_npy(&path).unwrap(), (vec![2], vec![0.5, -2.0]));
        std::fs::write(&path, b"not npy").unwrap();
        assert!(read_float_npy(&path).is_err());
    }

    #[test]
    fn rows_written_in_any_order_read_back_with_ndarray_npy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let mut w = NpyRowWriter::create(&path, 3, 2).unwrap();
        w.write_row(2, &[5.0, 6.0]).unwrap();
        w.write_row(0, &[1.0, 2.0]).unwrap();
        drop(w);
        assert!(!path.exists(), "an unfinished run never writes its target");
        let a: ndarray::Array2<f32> = ndarray_npy::read_npy(partial_path(&path)).unwrap();
        assert_eq!(a.shape(), &[3, 2]);
        assert_eq!(a[[0, 1]], 2.0);
        assert_eq!(a[[2, 0]], 5.0);
        assert!(a[[1, 0]].is_nan(), "unfinished rows stay NaN");
    }

    #[test]
    fn finish_replaces_the_target_only_when_every_row_is_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        std::fs::write(&path, b"precious").unwrap();
        let mut w = NpyRowWriter::create(&path, 2, 1).unwrap();
        w.write_row(0, &[1.0]).unwrap();
        assert!(w.finish().is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        let mut w = NpyRowWriter::create(&path, 2, 1).unwrap();
        w.write_row(1, &[2.0]).unwrap();
        w.write_row(0, &[1.0]).unwrap();
        assert_eq!(w.finish().unwrap(), path);
        let a: ndarray::Array2<f32> = ndarray_npy::read_npy(&path).unwrap();
        assert_eq!(a.as_slice().unwrap(), &[1.0, 2.0]);
        assert!(!partial_path(&path).exists());
    }

    #[test]
    fn header_is_64_byte_aligned() {
        assert_eq!(npy_header(&[196, 320]).len() % 64, 0);
    }
}
