//! A `.npy` writer that fills rows as they complete and never touches its target until the
//! last row is in: rows go to `<target>.partial` (header and a NaN-filled body first, so a
//! run that stops early leaves a valid file whose unfinished rows are NaN), which
//! [`NpyRowWriter::finish`] renames onto the target. (ndarray-npy writes whole arrays only.)
//! The target is resolved first ([`crate::safe_file::resolve_target`]): a symlink is
//! followed (the file it names is replaced, the link stays), anything but a regular file is
//! refused. The `.partial` file is opened without following a symlink, refused when it holds
//! something other than an earlier run's `.npy`, and locked while a run writes it: a second
//! run on the same output fails at once instead of mixing its rows into the first's.
//!
//! And a reader of float arrays that checks the header (magic, version, dtype, shape) and
//! the file's size against the shape before it reads the payload, so a hostile or mistaken
//! file (`/dev/zero`, a large file that is not `.npy`) is refused after a few KB.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::safe_file::{Target, open_no_follow, resolve_target, still_named};

/// The largest header [`NpyFile::open`] reads. numpy's own reader refuses headers over
/// 10,000 bytes unless told otherwise; a `[records, hidden]` header is under 128.
pub const MAX_HEADER_BYTES: usize = 1 << 16;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: cannot write .npy")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read .npy")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Refused { path: PathBuf, detail: String },
}

impl NpyError {
    fn write(path: &Path) -> impl Fn(std::io::Error) -> NpyError + '_ {
        move |source| NpyError::Write {
            path: path.to_path_buf(),
            source,
        }
    }

    fn read(path: &Path) -> impl Fn(std::io::Error) -> NpyError + '_ {
        move |source| NpyError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Why an output that exists but is not a regular file is refused.
const NOT_REGULAR: &str = "is not a regular file (a device node, FIFO or socket); embed writes \
                           a regular .npy file, filled in as batches finish: name a file";
/// Why a `.partial` holding something else is refused.
const NOT_A_PARTIAL: &str = "exists and is not a partial .npy of an earlier run; esmfuzz would \
                             overwrite it: move it away or choose another --out";
/// Why a `.partial` another run holds is refused.
const BUSY: &str = "another esmfuzz run is writing this output now; wait for it to end or \
                    choose another --out";

/// A `[rows, cols]` little-endian f32 `.npy` file written row by row, in any order.
#[derive(Debug)]
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

/// Where rows of `target` are written until the run completes: `<target>.partial`, beside
/// the file a symlink at `target` names (the rename must stay on its file system).
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = resolve_target(target).path().as_os_str().to_owned();
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
    /// The checks of [`NpyRowWriter::create`] that need no write: whether `target` and its
    /// `.partial` may be written, and no other run holds them. For a refusal before the
    /// weights load; `create` checks again.
    pub fn preflight(target: &Path) -> Result<(), NpyError> {
        let refused = |path: &Path, detail: &str| NpyError::Refused {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        };
        let target = match resolve_target(target) {
            Target::Absent(p) | Target::Regular(p) => p,
            Target::Special(p) => return Err(refused(&p, NOT_REGULAR)),
            Target::Folder(p) => return Err(refused(&p, "is a folder; name a .npy file")),
        };
        let path = partial_path(&target);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => return Ok(()),
        };
        if meta.file_type().is_symlink() {
            return Err(refused(
                &path,
                "is a symlink; esmfuzz does not write through it (remove the link)",
            ));
        }
        if !meta.is_file() {
            return Err(refused(&path, "is not a regular file; move it away"));
        }
        let mut file = File::open(&path).map_err(NpyError::read(&path))?;
        let mut magic = [0u8; 6];
        let got = read_up_to(&mut file, &mut magic).map_err(NpyError::read(&path))?;
        if got > 0 && magic[..got] != b"\x93NUMPY"[..got] {
            return Err(refused(&path, NOT_A_PARTIAL));
        }
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
            return Err(refused(&path, BUSY));
        }
        Ok(())
    }

    /// Creates `<target>.partial` with every value NaN; `target` is not touched. Refused: a
    /// target that exists and is not a regular file (a device node, a FIFO, a folder), a
    /// `.partial` that is a symlink, not a regular file or not an `.npy` (a file of the
    /// user's under that name), and one another run holds locked.
    pub fn create(target: &Path, rows: usize, cols: usize) -> Result<Self, NpyError> {
        let refused = |path: &Path, detail: &str| NpyError::Refused {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        };
        let target = match resolve_target(target) {
            Target::Absent(p) | Target::Regular(p) => p,
            Target::Special(p) => {
                return Err(refused(&p, NOT_REGULAR));
            }
            Target::Folder(p) => return Err(refused(&p, "is a folder; name a .npy file")),
        };
        let path = partial_path(&target);
        let err = NpyError::write(&path);
        let mut file = open_no_follow(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => refused(&path, &e.to_string()),
            _ => err(e),
        })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(refused(&path, BUSY));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        // The file may have been renamed onto its target by a run that held it until now.
        if !still_named(&file, &path) {
            return Err(refused(
                &path,
                "another esmfuzz run finished writing this output while this one started; \
                 run again",
            ));
        }
        let mut magic = [0u8; 6];
        let got = read_up_to(&mut file, &mut magic).map_err(&err)?;
        if got > 0 && magic[..got] != b"\x93NUMPY"[..got] {
            return Err(refused(&path, NOT_A_PARTIAL));
        }
        file.set_len(0).map_err(&err)?;
        file.seek(SeekFrom::Start(0)).map_err(&err)?;
        let header = npy_header(&[rows, cols]);
        file.write_all(&header).map_err(&err)?;
        let nan_row: Vec<u8> = std::iter::repeat_n(f32::NAN.to_le_bytes(), cols)
            .flatten()
            .collect();
        for _ in 0..rows {
            file.write_all(&nan_row).map_err(&err)?;
        }
        file.flush().map_err(&err)?;
        drop(err);
        Ok(Self {
            file,
            path,
            target,
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
        let err = NpyError::write(&self.path);
        self.file.seek(SeekFrom::Start(offset)).map_err(&err)?;
        self.file.write_all(&bytes).map_err(&err)?;
        self.file.flush().map_err(&err)?;
        self.written[row] = true;
        Ok(())
    }

    /// Moves the finished file onto its target; an error (and the `.partial` file kept) when
    /// a row was never written.
    pub fn finish(self) -> Result<PathBuf, NpyError> {
        let err = NpyError::write(&self.path);
        if let Some(row) = self.written.iter().position(|&w| !w) {
            return Err(err(std::io::Error::other(format!(
                "row {row} of {} was never written; the partial file is kept",
                self.rows
            ))));
        }
        self.file.sync_all().map_err(&err)?;
        if !still_named(&self.file, &self.path) {
            return Err(NpyError::Refused {
                path: self.path.clone(),
                detail: "was moved or replaced while this run wrote it; nothing was renamed \
                         onto the output"
                    .into(),
            });
        }
        // Renamed while the lock is held: a run waiting on it finds the name gone.
        std::fs::rename(&self.path, &self.target).map_err(&err)?;
        Ok(self.target)
    }
}

/// An opened float `.npy` file whose header has been read and checked against the file's
/// size; the payload is read by [`NpyFile::read_values`].
#[derive(Debug)]
pub struct NpyFile {
    path: PathBuf,
    file: File,
    /// The array's shape, from the header.
    pub shape: Vec<usize>,
    /// Bytes per value: 4 (`<f4`) or 2 (`<f2`).
    width: usize,
    /// Bytes the payload must hold (`shape` product x `width`).
    payload: u64,
}

impl NpyFile {
    /// Opens `path` and reads its header only (magic, version, header dict, dtype, shape),
    /// refusing anything but a C-order little-endian float32 or float16 array; for a regular
    /// file, its size must equal header plus payload. At most [`MAX_HEADER_BYTES`] are read.
    pub fn open(path: &Path) -> Result<Self, NpyError> {
        let format = |detail: String| NpyError::Format {
            path: path.to_path_buf(),
            detail,
        };
        if path.is_dir() {
            return Err(format("is a folder; name a .npy file".into()));
        }
        let mut file = File::open(path).map_err(NpyError::read(path))?;
        let mut prefix = [0u8; 10];
        let got = read_up_to(&mut file, &mut prefix).map_err(NpyError::read(path))?;
        if got < prefix.len() || &prefix[..6] != b"\x93NUMPY" {
            return Err(format("not a .npy file (no \\x93NUMPY magic)".into()));
        }
        let (header_len, start) = match prefix[6] {
            1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10),
            2 | 3 => {
                let mut rest = [0u8; 2];
                if read_up_to(&mut file, &mut rest).map_err(NpyError::read(path))? < 2 {
                    return Err(format("truncated header".into()));
                }
                let len = u32::from_le_bytes([prefix[8], prefix[9], rest[0], rest[1]]);
                (len as usize, 12)
            }
            v => return Err(format(format!("unsupported .npy version {v}"))),
        };
        if header_len > MAX_HEADER_BYTES {
            return Err(format(format!(
                "the header claims {header_len} bytes; more than {MAX_HEADER_BYTES} is not a \
                 numpy array header"
            )));
        }
        let mut header = vec![0u8; header_len];
        if read_up_to(&mut file, &mut header).map_err(NpyError::read(path))? < header_len {
            return Err(format("truncated header".into()));
        }
        let header = String::from_utf8_lossy(&header);
        let field = |key: &str| -> Option<String> {
            let at = header.find(&format!("'{key}'"))? + key.len() + 2;
            let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
            Some(rest.to_string())
        };
        let descr = field("descr").ok_or_else(|| format("no 'descr' in the header".into()))?;
        let width = if descr.starts_with("'<f4'") {
            4
        } else if descr.starts_with("'<f2'") {
            2
        } else {
            return Err(format(format!(
                "dtype {} is not float32 or float16 (little-endian)",
                descr.split(',').next().unwrap_or("?")
            )));
        };
        if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
            return Err(format(
                "Fortran-order arrays are not supported; save in C order".into(),
            ));
        }
        let shape_text = field("shape").ok_or_else(|| format("no 'shape' in the header".into()))?;
        let unreadable = || format(format!("unreadable shape {shape_text}"));
        let inside = shape_text
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .ok_or_else(unreadable)?;
        let shape: Vec<usize> = inside
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| unreadable()))
            .collect::<Result<_, _>>()?;
        let payload = shape
            .iter()
            .try_fold(width as u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| format(format!("shape {shape:?} is too large to address")))?;
        let meta = file.metadata().map_err(NpyError::read(path))?;
        if meta.is_file() {
            let holds = meta.len().saturating_sub((start + header_len) as u64);
            if holds != payload {
                return Err(format(format!(
                    "shape {shape:?} needs {payload} bytes of data, the file holds {holds}"
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            shape,
            width,
            payload,
        })
    }

    /// Reads the payload, widened to f32. From a stream that is not a regular file (a pipe,
    /// a device) at most one byte more than the shape needs is read.
    pub fn read_values(self) -> Result<Vec<f32>, NpyError> {
        let Self {
            path,
            file,
            shape,
            width,
            payload,
        } = self;
        let too_large = || NpyError::Format {
            path: path.clone(),
            detail: format!("shape {shape:?} ({payload} bytes) does not fit in memory"),
        };
        let len = usize::try_from(payload).map_err(|_| too_large())?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| too_large())?;
        file.take(payload + 1)
            .read_to_end(&mut data)
            .map_err(NpyError::read(&path))?;
        if data.len() as u64 != payload {
            return Err(NpyError::Format {
                path: path.clone(),
                detail: format!(
                    "shape {shape:?} needs {payload} bytes of data, the file holds {}{}",
                    if data.len() as u64 > payload {
                        "more than "
                    } else {
                        ""
                    },
                    data.len().min(payload as usize)
                ),
            });
        }
        Ok(if width == 4 {
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        })
    }
}

/// Fills as much of `buf` as the reader holds; the number of bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads a C-order little-endian float `.npy` of `<f4` or `<f2` values (what numpy writes
/// for float32 and float16 arrays) as its shape and values widened to f32; the header is
/// checked before the payload is read ([`NpyFile::open`]).
pub fn read_float_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let file = NpyFile::open(path)?;
    let shape = file.shape.clone();
    Ok((shape, file.read_values()?))
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
    fn read_errors_say_read_and_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.npy");
        let e = read_float_npy(&missing).unwrap_err().to_string();
        assert!(
            e.contains("cannot read .npy") && e.contains("missing.npy"),
            "{e}"
        );
        let junk = dir.path().join("junk.npy");
        std::fs::write(&junk, vec![b'x'; 100]).unwrap();
        let e = read_float_npy(&junk).unwrap_err().to_string();
        assert!(
            e.contains("no \\x93NUMPY magic") && !e.contains("write"),
            "{e}"
        );
    }

    #[test]
    fn the_size_is_checked_against_the_header_before_the_payload_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        // A header claiming [2, 3] float32 (24 bytes) over a payload of 1 MB.
        let mut bytes = npy_header(&[2, 3]);
        bytes.resize(bytes.len() + (1 << 20), 0);
        std::fs::write(&path, &bytes).unwrap();
        let e = NpyFile::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("needs 24 bytes of data, the file holds 1048576"),
            "{e}"
        );
        // A shape whose size overflows is refused, not allocated.
        let mut bytes = npy_header(&[usize::MAX / 2, 3]);
        bytes.extend_from_slice(&[0; 8]);
        std::fs::write(&path, &bytes).unwrap();
        let e = NpyFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        // An endless stream has no magic and is refused after ten bytes.
        if Path::new("/dev/zero").exists() {
            let e = read_float_npy(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a .npy file"), "{e}");
        }
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
    fn a_partial_path_that_is_an_input_or_a_link_is_refused_and_left_intact() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.npy");
        // A user's file (here, weights) under the partial name: refused, bytes kept.
        std::fs::write(partial_path(&out), b"PK\x03\x04 weights").unwrap();
        let e = NpyRowWriter::create(&out, 1, 1).unwrap_err().to_string();
        assert!(e.contains("not a partial .npy"), "{e}");
        assert_eq!(
            std::fs::read(partial_path(&out)).unwrap(),
            b"PK\x03\x04 weights"
        );
        // A symlink planted there: refused, its target untouched.
        std::fs::remove_file(partial_path(&out)).unwrap();
        let precious = dir.path().join("precious");
        std::fs::write(&precious, b"keep").unwrap();
        std::os::unix::fs::symlink(&precious, partial_path(&out)).unwrap();
        let e = NpyRowWriter::create(&out, 1, 1).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
        // An earlier run's partial .npy is taken over.
        std::fs::remove_file(partial_path(&out)).unwrap();
        drop(NpyRowWriter::create(&out, 2, 1).unwrap());
        let mut w = NpyRowWriter::create(&out, 1, 1).unwrap();
        w.write_row(0, &[3.0]).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn a_symlinked_output_is_followed_and_the_link_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.npy");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.npy");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut w = NpyRowWriter::create(&link, 1, 1).unwrap();
        w.write_row(0, &[7.0]).unwrap();
        w.finish().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let a: ndarray::Array2<f32> = ndarray_npy::read_npy(&real).unwrap();
        assert_eq!(a.as_slice().unwrap(), &[7.0]);
    }

    #[test]
    fn an_output_that_is_not_a_regular_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out.npy");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = NpyRowWriter::create(&fifo, 1, 1).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(!std::fs::symlink_metadata(&fifo).unwrap().is_file());
        assert!(!partial_path(&fifo).exists());
    }

    #[test]
    fn a_second_writer_of_one_output_fails_while_the_first_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.npy");
        let mut first = NpyRowWriter::create(&out, 1, 1).unwrap();
        let e = NpyRowWriter::create(&out, 1, 1).unwrap_err().to_string();
        assert!(e.contains("another esmfuzz run is writing"), "{e}");
        first.write_row(0, &[1.0]).unwrap();
        first.finish().unwrap();
        let a: ndarray::Array2<f32> = ndarray_npy::read_npy(&out).unwrap();
        assert_eq!(a.as_slice().unwrap(), &[1.0]);
    }

    #[test]
    fn header_is_64_byte_aligned() {
        assert_eq!(npy_header(&[196, 320]).len() % 64, 0);
    }
}
