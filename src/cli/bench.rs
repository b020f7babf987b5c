//! `esmfuzz bench`: throughput of padded versus packed batches, first (cold) passes apart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::Backend;
use serde::Serialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::batch::{self, Batching, pack_proteins, padding_efficiency};
use esmfuzz::input::{NormaliseOptions, Protein};
use esmfuzz::model::{ComputePlan, Esm2, FaultSet, Precision};
use esmfuzz::with_backend;

use super::{DEFAULT_CORPUS, ModelArgs, Outcome, named, read_proteins, token_count, write_report};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences to embed (their lengths are what matters).
    #[arg(long, default_value = DEFAULT_CORPUS)]
    pub fasta: PathBuf,
    /// Policies to time.
    #[arg(long, value_parser = named::<Precision>(), value_delimiter = ',', default_value = "f32,f16")]
    pub precisions: Vec<Precision>,
    /// Tokens per batch for both layouts (default: 1024 on the CPU, 16384 on CUDA).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_budget: Option<u64>,
    /// Slots per attention group of packed batches; several values give one row each
    /// (default: 1024 on the CPU, 4096 on CUDA).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub attention_group_slots: Vec<u64>,
    /// Timed passes over the file per layout after the first (the best is reported; the
    /// first pass, which compiles and tunes kernels on CUDA, is reported apart).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
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
fn pass_seconds<B: Backend>(model: &Esm2<B>, proteins: &[Protein], batching: Batching) -> f64 {
    let start = Instant::now();
    let _ = batch::embed(model, proteins, batching, |_, _| Ok::<(), ()>(()));
    start.elapsed().as_secs_f64()
}

/// The first (cold) pass and the best of `repeat` later passes, in seconds, with progress
/// on stderr.
fn timed_passes<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
    repeat: usize,
) -> (f64, f64) {
    let name = batching.layout;
    let first = pass_seconds(model, proteins, batching);
    eprintln!("  {name}: first pass {first:.2} s");
    let best = (0..repeat.max(1))
        .map(|i| {
            let t = pass_seconds(model, proteins, batching);
            eprintln!("  {name}: pass {} {t:.2} s", i + 2);
            t
        })
        .fold(f64::INFINITY, f64::min);
    (first, best)
}

pub fn run(args: BenchArgs) -> Result<Outcome> {
    let proteins = read_proteins(&args.fasta, NormaliseOptions::default())?;
    let checkpoint = args.model.load()?;
    let backend = args.model.backend;
    let budget = args.model.budget(args.token_budget.map(|b| b as usize));
    super::warn_if_over_budget(&proteins, budget);
    let repeat = args.repeat as usize;
    let tokens = token_count(&proteins);
    let packing = pack_proteins(&proteins, budget);
    let report = with_backend!(backend, |B, device| {
        let mut report = BenchReport {
            backend,
            device: format!("{device:?}"),
            fasta: args.fasta.clone(),
            sequences: proteins.len(),
            tokens,
            token_budget: budget,
            padding_efficiency: padding_efficiency(&proteins, budget),
            packing_efficiency: packing.efficiency(),
            packed_batches: packing.bins.len(),
            repeat,
            rows: Vec::new(),
        };
        for &precision in &args.precisions {
            let plan = ComputePlan::new(precision, backend);
            eprintln!("policy: {}", plan.describe());
            let mut model = Esm2::<B>::new(&checkpoint.weights, plan, FaultSet::none(), &device);
            let (padded_first, padded) =
                timed_passes(&model, &proteins, Batching::padded(budget), repeat);
            let slots: Vec<usize> = if args.attention_group_slots.is_empty() {
                vec![backend.attention_group_slots()]
            } else {
                args.attention_group_slots
                    .iter()
                    .map(|&s| s as usize)
                    .collect()
            };
            for slots in slots {
                eprintln!("  attention groups of {slots} slots");
                model.attention_group_slots = slots;
                let (packed_first, packed) =
                    timed_passes(&model, &proteins, Batching::packed(budget), repeat);
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
