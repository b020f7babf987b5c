//! `esmfuzz parity`: FP32 against the HF transformers reference outputs, then every reduced
//! policy against FP32, on a corpus.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use serde::Serialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::batch::{Batching, token_states};
use esmfuzz::harness::metrics::{Comparison, compare_states};
use esmfuzz::harness::reference::{
    REFERENCE_CORPUS, REFERENCE_FIRST_TOKENS, REFERENCE_POOLED, ReferenceParity,
    compare_with_reference,
};
use esmfuzz::harness::verdict::Verdict;
use esmfuzz::input::{NormaliseOptions, Protein};
use esmfuzz::model::{ComputePlan, Esm2, FaultSet, Precision};
use esmfuzz::with_backend;

use super::{DEFAULT_SHARED, ModelArgs, Outcome, named, read_proteins, token_count, write_report};

#[derive(clap::Args, Debug)]
pub struct ParityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub fasta_limits: super::FastaLimitArgs,
    /// The corpus whose reference outputs are given (default: the shared corpus).
    #[arg(long)]
    pub fasta: Option<PathBuf>,
    /// `[N, hidden]` pooled reference (HF FP32; default: the shared one).
    #[arg(long)]
    pub reference_pooled: Option<PathBuf>,
    /// `[N, positions, hidden]` first-token reference (HF FP32; default: the shared one).
    #[arg(long)]
    pub reference_first_tokens: Option<PathBuf>,
    /// Reduced policies to compare with this project's FP32.
    #[arg(
        long,
        value_parser = named::<Precision>(),
        value_delimiter = ',',
        default_value = "tf32,f16,bf16,f16-mixed"
    )]
    pub precisions: Vec<Precision>,
    /// Padded tokens per batch (default: 1024 on the CPU; on CUDA 16384, 65536 for models no wider than 8M).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_budget: Option<u64>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
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
    reference: ReferenceParity,
    reference_verdicts: Vec<Verdict>,
    reference_passed: bool,
    policies: Vec<PolicyFigures>,
}

fn timed_states<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    budget: usize,
) -> (Vec<Vec<f32>>, f64) {
    let start = Instant::now();
    let states = token_states(model, proteins, Batching::padded(budget));
    (states, start.elapsed().as_secs_f64())
}

/// A float `.npy` of rank `rank`, as its shape and values (C order); the header and the
/// rank are checked before the payload is read (see [`esmfuzz::npy::NpyFile`]).
fn read_reference(path: &std::path::Path, rank: usize) -> Result<(Vec<usize>, Vec<f32>)> {
    let file = esmfuzz::npy::NpyFile::open(path)?;
    if file.shape.len() != rank {
        anyhow::bail!(
            "{}: expected a float32 array of rank {rank}, found shape {:?}",
            path.display(),
            file.shape
        );
    }
    let shape = file.shape.clone();
    Ok((shape, file.read_values()?))
}

pub fn run(args: ParityArgs) -> Result<Outcome> {
    let shared = |relative: &str| PathBuf::from(DEFAULT_SHARED).join(relative);
    let fasta = args.fasta.unwrap_or_else(|| shared(REFERENCE_CORPUS));
    let pooled_path = args
        .reference_pooled
        .unwrap_or_else(|| shared(REFERENCE_POOLED));
    let first_path = args
        .reference_first_tokens
        .unwrap_or_else(|| shared(REFERENCE_FIRST_TOKENS));
    super::check_outputs(
        &[args.report.as_deref()],
        Some(&args.model),
        &[Some(&fasta), Some(&pooled_path), Some(&first_path)],
    )?;
    let proteins = read_proteins(
        &fasta,
        args.fasta_limits.options(NormaliseOptions::default()),
    )?;
    let (_, pooled_ref) = read_reference(&pooled_path, 2)?;
    let (first_shape, first_ref) = read_reference(&first_path, 3)?;
    let checkpoint = args.model.load()?;
    let hidden = checkpoint.weights.config.hidden_size;
    let tokens = token_count(&proteins);
    let backend = args.model.backend;
    let budget = args.model.budget(
        args.token_budget.map(|b| b as usize),
        &checkpoint.weights.config,
    );
    let report = with_backend!(backend, |B, device| {
        let f32_plan = ComputePlan::new(Precision::F32, backend);
        eprintln!("policy: {}", f32_plan.describe());
        let model = Esm2::<B>::new(&checkpoint.weights, f32_plan, FaultSet::none(), &device);
        let (reference_states, secs) = timed_states(&model, &proteins, budget);
        drop(model);
        let reference = compare_with_reference(
            &reference_states,
            &pooled_ref,
            &first_ref,
            first_shape[1],
            hidden,
        )
        .with_context(|| {
            format!(
                "{} and {} against {}",
                pooled_path.display(),
                first_path.display(),
                fasta.display()
            )
        })?;
        eprintln!(
            "FP32 vs HF reference: pooled cosine min {:.8}, max|diff| {:.3e}; first tokens cosine min {:.8}, max|diff| {:.3e}; {:.0} tokens/s",
            reference.pooled_cosine_min,
            reference.pooled_max_abs_diff,
            reference.first_tokens_cosine_min,
            reference.first_tokens_max_abs_diff,
            tokens as f64 / secs
        );

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
                against_f32: compare_states(&states, &reference_states, hidden),
            };
            // Printed as each policy completes, so a run cut short keeps what it measured.
            eprintln!("{}", policy_row(&figures));
            policies.push(figures);
        }
        ParityReport {
            backend,
            device: format!("{device:?}"),
            weights: checkpoint.file.path.clone(),
            corpus: fasta.clone(),
            sequences: proteins.len(),
            tokens,
            f32_policy: f32_plan.describe(),
            f32_tokens_per_second: tokens as f64 / secs,
            reference_verdicts: reference.verdicts(),
            reference_passed: reference.passed(),
            reference,
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
    for v in &r.reference_verdicts {
        println!("  {v}");
    }
    println!("  -> {}", if r.reference_passed { "PASS" } else { "FAIL" });
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
