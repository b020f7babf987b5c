//! `esmfuzz synth`: a random-weight checkpoint of a published ESM-2 size, initialised as HF
//! does, for proving the pipeline on real shapes where real weights cannot be fetched.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use esmfuzz::model::EsmConfig;
use esmfuzz::model::checkpoint::synth::{StoredDtype, SynthFormat, tensors, write_checkpoint};

use esmfuzz::named::Named;

use super::{Outcome, named};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Published size, e.g. esm2_t33_650M_UR50D or esm2_t36_3B_UR50D.
    #[arg(long)]
    pub preset: String,
    /// Stored dtype.
    #[arg(long, value_parser = named::<DtypeName>(), default_value = "f32")]
    pub dtype: DtypeName,
    /// File format: HF `model.safetensors`, or `pytorch_model.bin` as `torch.save` writes it.
    #[arg(long, value_parser = ["safetensors", "bin"], default_value = "safetensors")]
    pub format: String,
    /// Seed of the weights (the same seed writes the same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder to write config.json and the checkpoint into (must not hold a checkpoint).
    #[arg(long)]
    pub out: PathBuf,
}

/// A stored dtype as named on the command line.
#[derive(Debug, Clone, Copy)]
pub enum DtypeName {
    F32,
    F16,
    Bf16,
}

impl Named for DtypeName {
    const VALUES: &'static [Self] = &[DtypeName::F32, DtypeName::F16, DtypeName::Bf16];
    const WHAT: &'static str = "dtype";

    fn name(self) -> &'static str {
        match self {
            DtypeName::F32 => "f32",
            DtypeName::F16 => "f16",
            DtypeName::Bf16 => "bf16",
        }
    }
}

esmfuzz::impl_named!(DtypeName);

impl DtypeName {
    fn stored(self) -> StoredDtype {
        match self {
            DtypeName::F32 => StoredDtype::F32,
            DtypeName::F16 => StoredDtype::F16,
            DtypeName::Bf16 => StoredDtype::Bf16,
        }
    }
}

pub fn run(args: SynthArgs) -> Result<Outcome> {
    let config = EsmConfig::preset(&args.preset)?;
    let format = if args.format == "bin" {
        SynthFormat::TorchBin
    } else {
        SynthFormat::Safetensors
    };
    for existing in ["model.safetensors", "pytorch_model.bin", "config.json"] {
        let path = args.out.join(existing);
        if path.exists() {
            anyhow::bail!("{}: already exists; choose an empty folder", path.display());
        }
    }
    let values: usize = tensors(&config).iter().map(|t| t.len()).sum();
    eprintln!(
        "writing {} ({values} parameters, {:?}) to {}",
        args.preset,
        args.dtype.stored(),
        args.out.display()
    );
    let start = Instant::now();
    let path = write_checkpoint(&config, args.dtype.stored(), format, args.seed, &args.out)
        .with_context(|| format!("writing into {}", args.out.display()))?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.2} GB) in {:.1} s",
        path.display(),
        bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(Outcome::Passed)
}
