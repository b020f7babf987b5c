//! Synthetic checkpoints of any ESM-2 size: `config.json` and `model.safetensors` (or a
//! torch-zip `pytorch_model.bin`) with HF
//! `EsmModel` key names, every tensor shaped as the published model and drawn as HF
//! initialises it (weights normal with std `initializer_range` = 0.02, the `<pad>` row of
//! the embedding zero, biases 0, LayerNorm weight 1 and bias 0, `inv_freq` computed in f32
//! as the reference does). Written streaming, one tensor at a time: a 3B checkpoint never
//! sits in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use super::torch_zip::{TorchEntry, TorchStorage, TorchZipWriter};
use crate::model::config::EsmConfig;

/// HF's `initializer_range` for ESM-2.
pub const INITIALIZER_RANGE: f32 = 0.02;

/// The dtype tensors are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
}

impl StoredDtype {
    fn bytes(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::Bf16 => 2,
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
            StoredDtype::Bf16 => "BF16",
        }
    }

    fn encode(self, v: f32, out: &mut Vec<u8>) {
        match self {
            StoredDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
            StoredDtype::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            StoredDtype::Bf16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        }
    }
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// Normal(0, 0.02); with `zero_row`, that row is zero (the `<pad>` embedding).
    Normal {
        zero_row: Option<usize>,
    },
    Constant(f32),
    InvFreq,
}

/// One tensor of the checkpoint: HF key, shape, initialisation.
#[derive(Debug, Clone)]
pub struct SynthTensor {
    pub key: String,
    pub shape: Vec<usize>,
    init: Init,
}

/// The tensors of an HF `EsmModel` (no pooler) of `config`, in file order.
pub fn tensors(config: &EsmConfig) -> Vec<SynthTensor> {
    let (h, f) = (config.hidden_size, config.intermediate_size);
    let t = |key: String, shape: Vec<usize>, init| SynthTensor { key, shape, init };
    let normal = Init::Normal { zero_row: None };
    let mut out = vec![t(
        "embeddings.word_embeddings.weight".into(),
        vec![config.vocab_size, h],
        Init::Normal {
            zero_row: Some(crate::alphabet::PAD as usize),
        },
    )];
    for i in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{i}.");
        for name in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            out.push(t(format!("{p}{name}.weight"), vec![h, h], normal));
            out.push(t(format!("{p}{name}.bias"), vec![h], Init::Constant(0.0)));
        }
        out.push(t(
            format!("{p}attention.self.rotary_embeddings.inv_freq"),
            vec![config.head_dim() / 2],
            Init::InvFreq,
        ));
        for norm in ["attention.LayerNorm", "LayerNorm"] {
            out.push(t(format!("{p}{norm}.weight"), vec![h], Init::Constant(1.0)));
            out.push(t(format!("{p}{norm}.bias"), vec![h], Init::Constant(0.0)));
        }
        out.push(t(
            format!("{p}intermediate.dense.weight"),
            vec![f, h],
            normal,
        ));
        out.push(t(
            format!("{p}intermediate.dense.bias"),
            vec![f],
            Init::Constant(0.0),
        ));
        out.push(t(format!("{p}output.dense.weight"), vec![h, f], normal));
        out.push(t(
            format!("{p}output.dense.bias"),
            vec![h],
            Init::Constant(0.0),
        ));
    }
    out.push(t(
        "encoder.emb_layer_norm_after.weight".into(),
        vec![h],
        Init::Constant(1.0),
    ));
    out.push(t(
        "encoder.emb_layer_norm_after.bias".into(),
        vec![h],
        Init::Constant(0.0),
    ));
    out
}

impl SynthTensor {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of tensor number `index` of a checkpoint seeded with `seed`, calling `sink`
    /// with each (so a large tensor is never held whole).
    pub fn generate(&self, seed: u64, index: usize, mut sink: impl FnMut(f32)) {
        match self.init {
            Init::Constant(c) => (0..self.len()).for_each(|_| sink(c)),
            Init::InvFreq => {
                let dim = 2 * self.len();
                for k in 0..self.len() {
                    sink(1.0 / 10000f32.powf((2 * k) as f32 / dim as f32));
                }
            }
            Init::Normal { zero_row } => {
                let mut rng = StdRng::seed_from_u64(
                    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let normal = Normal::new(0.0f32, INITIALIZER_RANGE)
                    .unwrap_or_else(|e| unreachable!("0.02 is a valid std: {e}"));
                let cols = self.shape.last().copied().unwrap_or(1);
                for k in 0..self.len() {
                    let v = normal.sample(&mut rng);
                    sink(if zero_row == Some(k / cols) { 0.0 } else { v });
                }
            }
        }
    }
}

/// The file format written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthFormat {
    /// `model.safetensors`.
    Safetensors,
    /// `pytorch_model.bin`, a torch zip as `torch.save` writes it.
    TorchBin,
}

impl SynthFormat {
    /// The checkpoint's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            SynthFormat::Safetensors => "model.safetensors",
            SynthFormat::TorchBin => "pytorch_model.bin",
        }
    }
}

/// Writes `config.json` and the checkpoint for `config` into `dir` (created if need be);
/// returns the checkpoint's path. Both are written as `<name>.partial` and renamed into place
/// once complete, so a run that stops part way leaves no truncated checkpoint under its final
/// name; a `.partial` that is a symlink or not a regular file is refused, not written through.
pub fn write_checkpoint(
    config: &EsmConfig,
    dtype: StoredDtype,
    format: SynthFormat,
    seed: u64,
    dir: &Path,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format.file_name());
    let config_path = dir.join("config.json");
    let (partial, config_partial) = (partial_beside(&path)?, partial_beside(&config_path)?);
    match format {
        SynthFormat::Safetensors => write_safetensors(config, dtype, seed, &partial)?,
        SynthFormat::TorchBin => write_torch_bin(config, dtype, seed, &partial)?,
    }
    std::fs::write(
        &config_partial,
        serde_json::to_string_pretty(config).map_err(std::io::Error::other)?,
    )?;
    File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &path)?;
    std::fs::rename(&config_partial, &config_path)?;
    Ok(path)
}

/// `<path>.partial`, cleared of an earlier run's leftover; a symlink or anything but a
/// regular file there is an error (it would be written through).
fn partial_beside(path: &Path) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    let partial = PathBuf::from(name);
    match std::fs::symlink_metadata(&partial) {
        Ok(m) if m.is_file() => std::fs::remove_file(&partial)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: is a symlink or not a regular file; esmfuzz does not write through it \
                     (remove it)",
                    partial.display()
                ),
            ));
        }
        Err(_) => {}
    }
    Ok(partial)
}

/// Each tensor's values as `dtype` bytes, in chunks of about 1 MiB handed to `write`.
fn write_values(
    t: &SynthTensor,
    dtype: StoredDtype,
    seed: u64,
    index: usize,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(1 << 20);
    let mut failed = None;
    t.generate(seed, index, |v| {
        dtype.encode(v, &mut chunk);
        if chunk.len() >= 1 << 20 && failed.is_none() {
            failed = out.write_all(&chunk).err();
            chunk.clear();
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    out.write_all(&chunk)
}

fn write_torch_bin(
    config: &EsmConfig,
    dtype: StoredDtype,
    seed: u64,
    path: &Path,
) -> std::io::Result<()> {
    let storage = match dtype {
        StoredDtype::F32 => TorchStorage::Float,
        StoredDtype::F16 => TorchStorage::Half,
        StoredDtype::Bf16 => TorchStorage::BFloat16,
    };
    let mut zip = TorchZipWriter::create(path)?;
    for (index, t) in tensors(config).iter().enumerate() {
        let entry = TorchEntry {
            key: t.key.clone(),
            shape: t.shape.clone(),
            storage,
        };
        zip.tensor(entry, |out| write_values(t, dtype, seed, index, out))?;
    }
    zip.finish()
}

fn write_safetensors(
    config: &EsmConfig,
    dtype: StoredDtype,
    seed: u64,
    path: &Path,
) -> std::io::Result<()> {
    let tensors = tensors(config);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in &tensors {
        let end = offset + t.len() * dtype.bytes();
        header.insert(
            t.key.clone(),
            serde_json::json!({
                "dtype": dtype.safetensors_name(),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    // The data must start 8-byte aligned; safetensors pads the header with spaces.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = BufWriter::with_capacity(1 << 22, File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for (index, t) in tensors.iter().enumerate() {
        write_values(t, dtype, seed, index, &mut out)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::load_checkpoint;

    #[test]
    fn a_synthetic_checkpoint_loads_back_exactly_in_f32_and_within_rounding_in_half() {
        let config = EsmConfig::tiny();
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(
            &config,
            StoredDtype::F32,
            SynthFormat::Safetensors,
            7,
            dir.path(),
        )
        .unwrap();
        let loaded = load_checkpoint(dir.path(), None).unwrap();
        assert_eq!(loaded.weights.config, config);
        // The loaded values are exactly the generated ones.
        let all = tensors(&config);
        let (index, fc1) = all
            .iter()
            .enumerate()
            .find(|(_, t)| t.key == "encoder.layer.1.intermediate.dense.weight")
            .unwrap();
        let mut want = Vec::new();
        fc1.generate(7, index, |v| want.push(v));
        assert_eq!(loaded.weights.layers[1].fc1.weight.data, want);
        let embed = &loaded.weights.embed_tokens.data;
        let h = config.hidden_size;
        assert!(
            embed[h..2 * h].iter().all(|&v| v == 0.0),
            "<pad> row is zero"
        );
        let std = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
        assert!((std - INITIALIZER_RANGE).abs() < 0.002, "std {std}");
        assert_eq!(
            loaded.weights.layers[0].final_layer_norm.weight.data,
            vec![1.0; h]
        );
        for dtype in [StoredDtype::F16, StoredDtype::Bf16] {
            let half_dir = tempfile::tempdir().unwrap();
            write_checkpoint(&config, dtype, SynthFormat::Safetensors, 7, half_dir.path()).unwrap();
            let half = load_checkpoint(half_dir.path(), None).unwrap();
            let got = &half.weights.layers[1].fc1.weight.data;
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
                .fold(0f32, f32::max);
            assert!(worst < 1e-2, "{dtype:?}: {worst}");
        }
    }

    /// The torch zip loads through the torch reader to exactly what the safetensors file
    /// holds, in every stored dtype.
    #[test]
    fn a_synthetic_torch_bin_loads_the_same_weights_as_the_safetensors_file() {
        let config = EsmConfig::tiny();
        for dtype in [StoredDtype::F32, StoredDtype::F16, StoredDtype::Bf16] {
            let (st_dir, bin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            write_checkpoint(&config, dtype, SynthFormat::Safetensors, 3, st_dir.path()).unwrap();
            let bin =
                write_checkpoint(&config, dtype, SynthFormat::TorchBin, 3, bin_dir.path()).unwrap();
            assert!(bin.ends_with("pytorch_model.bin"));
            let a = load_checkpoint(st_dir.path(), None).unwrap();
            let b = load_checkpoint(bin_dir.path(), None).unwrap();
            assert_eq!(
                b.file.format,
                crate::model::checkpoint::CheckpointFormat::Torch
            );
            let (a, b) = (a.weights.named_tensors(), b.weights.named_tensors());
            assert_eq!(a.len(), b.len());
            for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
                assert_eq!(ka, kb);
                assert_eq!(va, vb, "{dtype:?} {ka}");
            }
        }
    }

    #[test]
    fn every_published_size_has_the_tensors_the_loader_expects() {
        for name in crate::model::config::PRESET_NAMES {
            let config = EsmConfig::preset(name).unwrap();
            let n = tensors(&config).len();
            assert_eq!(n, 3 + 17 * config.num_hidden_layers, "{name}");
        }
    }
}
