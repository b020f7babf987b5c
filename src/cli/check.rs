//! `esmfuzz check`: another deployment's pooled embeddings of a FASTA file against this
//! project's FP32 on the same weights: per-record cosine under a policy's bound, the pooling
//! convention they match, smallest failing records first, and a diagnosis.

use std::path::PathBuf;

use anyhow::{Result, bail};

use esmfuzz::batch::{Batching, token_states};
use esmfuzz::harness::deployment::{DeploymentBounds, DeploymentCheck, check_pooled};
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::input::NormaliseOptions;
use esmfuzz::model::{ComputePlan, Esm2, FaultSet, Precision};
use esmfuzz::npy::NpyFile;
use esmfuzz::with_backend;

use super::{ModelArgs, Outcome, check_outputs, named, read_unique_proteins, write_report};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The proteins they embedded (e.g. from `esmfuzz cases`), in the order of their rows.
    #[arg(long)]
    pub fasta: PathBuf,
    /// Their pooled embeddings, `[records, hidden]` float32 or float16 `.npy`; several
    /// (comma-separated) are each checked against one oracle run.
    #[arg(long, value_delimiter = ',', required = true)]
    pub embeddings: Vec<PathBuf>,
    /// Hold their embeddings to this policy's bounds: pooled cosine, relative L2 and the
    /// norm ratio, per record.
    #[arg(long, value_parser = named::<Precision>(), default_value = "f16")]
    pub bound_of: Precision,
    /// Write the checks as JSON here (one entry per embeddings file).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(args: CheckArgs) -> Result<Outcome> {
    let mut inputs: Vec<Option<&std::path::Path>> = vec![Some(&args.fasta)];
    inputs.extend(args.embeddings.iter().map(|p| Some(p.as_path())));
    check_outputs(&[args.report.as_deref()], Some(&args.model), &inputs)?;
    let proteins = read_unique_proteins(&args.fasta, NormaliseOptions::default())?;
    let hidden = args.model.config_only()?.hidden_size;
    // Every file's header is read and its shape checked before any payload is read, and
    // every payload before the weights load and the oracle runs (minutes on a large corpus).
    let mut opened = Vec::with_capacity(args.embeddings.len());
    for path in &args.embeddings {
        let file = NpyFile::open(path)?;
        if file.shape != [proteins.len(), hidden] {
            bail!(
                "{}: shape {:?}, expected [{}, {hidden}] (one pooled row per record of {})",
                path.display(),
                file.shape,
                proteins.len(),
                args.fasta.display()
            );
        }
        opened.push((path, file));
    }
    let mut embeddings = Vec::with_capacity(opened.len());
    for (path, file) in opened {
        let values = file.read_values()?;
        let rows: Vec<Vec<f32>> = values.chunks_exact(hidden).map(<[f32]>::to_vec).collect();
        embeddings.push((path.clone(), rows));
    }
    let checkpoint = args.model.load()?;
    let backend = args.model.backend;
    let budget = args.model.budget(None, &checkpoint.weights.config);
    let states = with_backend!(backend, |B, device| {
        let plan = ComputePlan::new(Precision::F32, backend);
        eprintln!("oracle: {}", plan.describe());
        let model = Esm2::<B>::new(&checkpoint.weights, plan, FaultSet::none(), &device);
        token_states(&model, &proteins, Batching::padded(budget))
    });
    let bounds = DeploymentBounds::of(&Tolerances::for_precision(args.bound_of));
    let mut checks = Vec::with_capacity(embeddings.len());
    for (path, theirs) in &embeddings {
        let check = check_pooled(&proteins, &states, theirs, hidden, bounds);
        println!("{}:", path.display());
        print_check(&check);
        checks.push(CheckedFile {
            embeddings: path.clone(),
            check,
        });
    }
    if let Some(path) = &args.report {
        write_report(path, &checks)?;
    }
    Ok(if checks.iter().all(|c| c.check.passed()) {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

/// One embeddings file's check, as the JSON report lists it.
#[derive(serde::Serialize)]
struct CheckedFile {
    embeddings: PathBuf,
    check: DeploymentCheck,
}

fn print_check(c: &DeploymentCheck) {
    let b = &c.bounds;
    println!(
        "{} records, per record: pooled cosine > {}, relative L2 < {}, norm ratio within 1 +- {}: {}",
        c.records,
        b.cosine,
        b.relative_l2,
        b.norm_ratio,
        if c.passed() {
            "all held".to_string()
        } else {
            format!("{} FAILED", c.failures.len())
        }
    );
    for (bound, n) in c.broken_bounds() {
        println!(
            "  FAILED bound {}: {n} record(s) outside it",
            bound.describe(b)
        );
    }
    for (pooling, median) in &c.median_cosine_by_pooling {
        println!("  median cosine if pooled as {pooling:?}: {median:.6}");
    }
    match c.pooling_detected {
        Some(p) => println!("  pooling detected: {p:?}"),
        None => println!("  pooling not detected: fewer than half the rows are finite"),
    }
    for d in &c.diagnosis {
        println!("  diagnosis: {d}");
    }
    for f in c.failures.iter().take(10) {
        let broke: Vec<String> = f.broke.iter().map(|x| x.describe(b)).collect();
        println!(
            "  FAIL {} ({} residues): cosine {:.6}, relative L2 {:.3e}, norm ratio {:.4} (breaks {})",
            f.name,
            f.residues,
            f.cosine,
            f.relative_l2,
            f.norm_ratio,
            broke.join(", ")
        );
    }
    if let Some(w) = &c.worst_passing {
        println!(
            "  worst passing: {} ({} residues), cosine {:.6}, relative L2 {:.3e}, norm ratio {:.4}",
            w.name, w.residues, w.cosine, w.relative_l2, w.norm_ratio
        );
    }
}
