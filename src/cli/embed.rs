//! `esmfuzz embed`: pooled embeddings of a FASTA file to `.npy`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;

use esmfuzz::batch::{self, Batching, Layout, pack_proteins};
use esmfuzz::harness::cases::run_case;
use esmfuzz::input::NormaliseOptions;
use esmfuzz::model::{FaultSet, ModelSpec};
use esmfuzz::npy::{NpyRowWriter, partial_path};
use esmfuzz::with_backend;

use super::policy::{PolicyArgs, describe_policy};
use super::{ModelArgs, Outcome, check_outputs, progress, read_proteins, warn_if_over_budget};

#[derive(Args, Debug)]
#[command(mut_arg("precision", |a| a.default_value("f32")))]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub fasta_limits: super::FastaLimitArgs,
    /// Input FASTA.
    #[arg(long)]
    pub fasta: PathBuf,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Output .npy, `[records, hidden]` float32. Rows go to OUT.partial as batches finish;
    /// OUT itself is written only when every row is in and finite.
    #[arg(long)]
    pub out: PathBuf,
    /// Pack sequences into varlen batches (cu_seqlens) instead of padding them.
    #[arg(long)]
    pub packed: bool,
    /// Tokens per batch: padded (batch size x longest) or packed (sum of lengths + 2 each).
    /// Default: 1024 on the CPU; on CUDA 16384, 65536 for models no wider than 8M.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_budget: Option<u64>,
    /// With --packed: slots per attention group (sequences of similar length padded into
    /// blocks together). Default: 1024 on the CPU, 4096 on CUDA.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub attention_group_slots: Option<u64>,
    /// Read characters outside the ESM-2 alphabet (and the gap tokens `-` `.`) as X instead
    /// of failing.
    #[arg(long)]
    pub map_unknown_to_x: bool,
    /// Keep the gap tokens `-` and `.` (in the ESM-2 vocabulary, but not residues).
    #[arg(long)]
    pub allow_gap_tokens: bool,
}

pub fn run(args: EmbedArgs) -> Result<Outcome> {
    // OUT.partial is written too: it must be no input either.
    let partial = partial_path(&args.out);
    check_outputs(
        &[Some(&args.out), Some(&partial)],
        Some(&args.model),
        &[Some(&args.fasta)],
    )?;
    NpyRowWriter::preflight(&args.out)?;
    let proteins = read_proteins(
        &args.fasta,
        args.fasta_limits.options(NormaliseOptions {
            map_unknown_to_x: args.map_unknown_to_x,
            allow_gap_tokens: args.allow_gap_tokens,
            ..NormaliseOptions::default()
        }),
    )?;
    let checkpoint = args.model.open()?;
    let hidden = checkpoint.config.hidden_size;
    let backend = args.model.backend;
    let plan = args.policy.plan(backend, args.policy.gemm(backend)?)?;
    esmfuzz::model::flash::preflight(&plan, &checkpoint.config)?;
    let places = args.policy.places(&checkpoint.config)?;
    eprintln!("policy: {}", describe_policy(&plan, &places));
    let budget = args
        .model
        .budget(args.token_budget.map(|b| b as usize), &checkpoint.config);
    warn_if_over_budget(&proteins, budget);
    let batching = if args.packed {
        let packing = pack_proteins(&proteins, budget);
        eprintln!(
            "packed {} sequences into {} batches of <= {budget} tokens ({:.1}% efficiency)",
            proteins.len(),
            packing.bins.len(),
            100.0 * packing.efficiency()
        );
        Batching::packed(budget)
    } else {
        Batching::padded(budget)
    };
    let start = Instant::now();
    let (embedded, writer) = with_backend!(args.model.backend, |B, device| {
        // Streamed layer by layer from the file: host memory holds one layer.
        let spec = ModelSpec {
            plan,
            fp32_places: places.clone(),
            faults: FaultSet::none(),
        };
        let mut model = super::build_streamed::<B>(
            &args.model,
            &checkpoint,
            std::slice::from_ref(&spec),
            &device,
        )?
        .remove(0);
        if let Some(slots) = args.attention_group_slots {
            model.attention_group_slots = slots as usize;
        }
        let mut writer = NpyRowWriter::create(&args.out, proteins.len(), hidden)?;
        let bar = progress(proteins.len(), "embedding");
        let embedded = batch::embed(&model, &proteins, batching, |i, row: Vec<f32>| {
            bar.inc(1);
            if let Some(at) = row.iter().position(|v| !v.is_finite()) {
                // Run the record alone through every layer to say where it went non-finite.
                let alone = run_case(&model, &proteins[i..=i], Layout::Padded);
                bail!(
                    "record {} ('{}'): the {} embedding holds {} at dimension {at} ({}); \
                     nothing was written to {} (finished rows are in {})",
                    i + 1,
                    proteins[i].name,
                    args.policy.precision,
                    row[at],
                    alone.finite.detail,
                    args.out.display(),
                    partial.display()
                );
            }
            Ok(writer.write_row(i, &row)?)
        })?;
        bar.finish_and_clear();
        (embedded, writer)
    });
    let out = writer.finish()?;
    let secs = start.elapsed().as_secs_f64();
    let tokens = embedded.tokens;
    if embedded.final_budget < budget {
        eprintln!(
            "note: the device ran out of memory at --token-budget {budget}; the last batches ran \
             at {} (pass --token-budget {} to start there)",
            embedded.final_budget, embedded.final_budget
        );
    }
    eprintln!(
        "wrote {} ({} x {hidden}); {tokens} tokens in {secs:.2} s = {:.0} tokens/s",
        out.display(),
        proteins.len(),
        tokens as f64 / secs
    );
    Ok(Outcome::Passed)
}
