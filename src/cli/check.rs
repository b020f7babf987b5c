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
    #[command(flatten)]
    pub fasta_limits: super::FastaLimitArgs,
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
    let proteins = read_unique_proteins(
        &args.fasta,
        args.fasta_limits.options(NormaliseOptions::default()),
    )?;
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
    let reach = BoundReach::of(args.bound_of, &bounds);
    let mut checks = Vec::with_capacity(embeddings.len());
    for (path, theirs) in &embeddings {
        let check = diagnose_zero_rows(
            check_pooled(&proteins, &states, theirs, hidden, bounds),
            &proteins,
            &states,
            theirs,
            hidden,
        );
        println!("{}:", path.display());
        print_check(&check);
        checks.push(CheckedFile {
            embeddings: path.clone(),
            check,
            bound_reach: reach.clone(),
        });
    }
    println!("{}", reach.describe());
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
    /// What the bound in force can and cannot see.
    bound_reach: BoundReach,
}

/// Where measured detection of `check` per bound is kept (uniform rescales and random
/// errors of each size, by `scripts/check_power.sh`).
const MEASURED: &str = "results/check-power/README.md";

/// What a `--bound-of` can and cannot see, from its own bounds: a record passes while its
/// cosine and relative L2 are inside them, so a pipeline that rescales every row by less
/// than the relative-L2 bound, or adds an error smaller than it, passes unseen.
#[derive(Debug, Clone, serde::Serialize)]
struct BoundReach {
    bound_of: Precision,
    /// A uniform rescale x(1 +- this) of every row passes (relative L2 = |s - 1|).
    rescale_unseen_within: f64,
    /// An error of up to this fraction of a row's norm passes (the relative-L2 bound).
    error_unseen_below: f64,
    /// The same two for `--bound-of f32`, the tightest net.
    f32_rescale_unseen_within: f64,
    measured: &'static str,
}

impl BoundReach {
    fn of(bound_of: Precision, bounds: &DeploymentBounds) -> Self {
        let f32_bounds = DeploymentBounds::of(&Tolerances::for_precision(Precision::F32));
        Self {
            bound_of,
            rescale_unseen_within: bounds.relative_l2.min(bounds.norm_ratio),
            error_unseen_below: bounds.relative_l2,
            f32_rescale_unseen_within: f32_bounds.relative_l2.min(f32_bounds.norm_ratio),
            measured: MEASURED,
        }
    }

    fn describe(&self) -> String {
        let r = self.rescale_unseen_within;
        let mut text = format!(
            "what --bound-of {} can see: rows rescaled by x{:.4}..x{:.4}, or off by less than \
             {:.2e} of their norm, pass unseen (detection measured per bound: {})",
            self.bound_of,
            1.0 - r,
            1.0 + r,
            self.error_unseen_below,
            self.measured
        );
        if self.bound_of != Precision::F32 {
            text.push_str(&format!(
                "; for a tighter net, --bound-of f32 sees rescales beyond x(1 +- {:.1e})",
                self.f32_rescale_unseen_within
            ));
        }
        text
    }
}

/// A row of all zeros is a row nobody wrote (a skipped or crashed batch), not a length limit
/// or a pooling convention: said so first, and the rest of the rows diagnosed without them.
fn diagnose_zero_rows(
    mut check: DeploymentCheck,
    proteins: &[esmfuzz::input::Protein],
    states: &[Vec<f32>],
    theirs: &[Vec<f32>],
    hidden: usize,
) -> DeploymentCheck {
    let zero: Vec<usize> = theirs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.iter().all(|&v| v == 0.0))
        .map(|(i, _)| i)
        .collect();
    if zero.is_empty() {
        return check;
    }
    let named: Vec<String> = zero
        .iter()
        .take(5)
        .map(|&i| {
            format!(
                "{} ('{}')",
                i + 1,
                esmfuzz::input::escaped(&proteins[i].name)
            )
        })
        .collect();
    let line = format!(
        "{} row(s) are all zeros (row {}{}): rows that were never written (a skipped or \
         crashed batch, an unfilled output), not a numerical error",
        zero.len(),
        named.join(", "),
        if zero.len() > 5 { ", ..." } else { "" }
    );
    let keep: Vec<usize> = (0..theirs.len()).filter(|i| !zero.contains(i)).collect();
    if keep.is_empty() {
        check.diagnosis = vec![line];
        check.pooling_detected = None;
        return check;
    }
    let pick = |i: &usize| (proteins[*i].clone(), states[*i].clone(), theirs[*i].clone());
    let (p, (o, t)): (Vec<_>, (Vec<_>, Vec<_>)) =
        keep.iter().map(pick).map(|(p, o, t)| (p, (o, t))).unzip();
    let rest = check_pooled(&p, &o, &t, hidden, check.bounds);
    check.diagnosis = std::iter::once(line).chain(rest.diagnosis).collect();
    check.pooling_detected = rest.pooling_detected;
    check.median_cosine_by_pooling = rest.median_cosine_by_pooling;
    check
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
            esmfuzz::input::escaped(&f.name),
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
            esmfuzz::input::escaped(&w.name),
            w.residues,
            w.cosine,
            w.relative_l2,
            w.norm_ratio
        );
    }
}
