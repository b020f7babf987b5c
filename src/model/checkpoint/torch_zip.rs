//! Writes a state dict as `torch.save` does since torch 1.6 (the layout HF transformers'
//! `pytorch_model.bin` has): a zip archive, stored uncompressed, holding `archive/data.pkl`
//! (a protocol-2 pickle of an `OrderedDict` of `torch._utils._rebuild_tensor_v2` calls whose
//! storages are persistent ids), one `archive/data/<n>` record of raw little-endian values per
//! tensor (64-byte aligned), `archive/byteorder` and `archive/version`.
//!
//! Tensors are written one at a time through [`TorchZipWriter::tensor`], so a 3B checkpoint
//! never sits in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// The storage classes of the dtypes written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchStorage {
    Float,
    Half,
    BFloat16,
}

impl TorchStorage {
    fn class(self) -> &'static str {
        match self {
            TorchStorage::Float => "FloatStorage",
            TorchStorage::Half => "HalfStorage",
            TorchStorage::BFloat16 => "BFloat16Storage",
        }
    }
}

/// One tensor of the state dict: key, shape, storage.
#[derive(Debug, Clone)]
pub struct TorchEntry {
    pub key: String,
    pub shape: Vec<usize>,
    pub storage: TorchStorage,
}

/// A zip being written; [`TorchZipWriter::finish`] writes the pickle and the central
/// directory.
pub struct TorchZipWriter {
    zip: ZipWriter<BufWriter<File>>,
    entries: Vec<TorchEntry>,
}

fn record_options() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(true)
}

impl TorchZipWriter {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = BufWriter::with_capacity(1 << 22, File::create(path)?);
        Ok(Self {
            zip: ZipWriter::new(file),
            entries: Vec::new(),
        })
    }

    /// Writes the next tensor's record: `fill` is handed a sink and writes every value's
    /// little-endian bytes to it, in row-major order.
    pub fn tensor(
        &mut self,
        entry: TorchEntry,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let name = format!("archive/data/{}", self.entries.len());
        self.zip
            .start_file(name, record_options())
            .map_err(std::io::Error::other)?;
        fill(&mut self.zip)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Writes the pickle and the small records, and closes the archive.
    pub fn finish(mut self) -> std::io::Result<()> {
        let small = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        let pickle = state_dict_pickle(&self.entries)?;
        self.zip
            .start_file("archive/data.pkl", small)
            .map_err(std::io::Error::other)?;
        self.zip.write_all(&pickle)?;
        self.zip
            .start_file("archive/byteorder", small)
            .map_err(std::io::Error::other)?;
        self.zip.write_all(b"little")?;
        self.zip
            .start_file("archive/version", small)
            .map_err(std::io::Error::other)?;
        self.zip.write_all(b"3\n")?;
        let mut file = self.zip.finish().map_err(std::io::Error::other)?;
        file.flush()
    }
}

/// Pickle opcodes used (protocol 2).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(op::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn string(&mut self, s: &str) {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: usize) -> std::io::Result<()> {
        let v = i32::try_from(v).map_err(|_| {
            std::io::Error::other(format!(
                "{v} does not fit a pickle BININT (a tensor of over 2^31 values)"
            ))
        })?;
        self.0.push(op::BININT);
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn tuple_of(&mut self, values: &[usize]) -> std::io::Result<()> {
        self.0.push(op::MARK);
        for &v in values {
            self.int(v)?;
        }
        self.0.push(op::TUPLE);
        Ok(())
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.push(op::EMPTY_TUPLE);
        self.0.push(op::REDUCE);
    }
}

/// `OrderedDict((key, _rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())) ...)`
fn state_dict_pickle(entries: &[TorchEntry]) -> std::io::Result<Vec<u8>> {
    let mut p = Pickle(vec![op::PROTO, 2]);
    p.empty_ordered_dict();
    p.0.push(op::MARK);
    for (i, e) in entries.iter().enumerate() {
        let numel: usize = e.shape.iter().product();
        let strides: Vec<usize> = (0..e.shape.len())
            .map(|d| e.shape[d + 1..].iter().product())
            .collect();
        p.string(&e.key);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.push(op::MARK);
        // The storage: persistent id ('storage', class, record name, location, numel).
        p.0.push(op::MARK);
        p.string("storage");
        p.global("torch", e.storage.class());
        p.string(&i.to_string());
        p.string("cpu");
        p.int(numel)?;
        p.0.push(op::TUPLE);
        p.0.push(op::BINPERSID);
        p.int(0)?;
        p.tuple_of(&e.shape)?;
        p.tuple_of(&strides)?;
        p.0.push(op::NEWFALSE);
        p.empty_ordered_dict();
        p.0.push(op::TUPLE);
        p.0.push(op::REDUCE);
    }
    p.0.push(op::SETITEMS);
    p.0.push(op::STOP);
    Ok(p.0)
}
