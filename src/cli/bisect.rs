//! `esmfuzz bisect-precision`: the smallest set of places a reduced policy must run in FP32
//! for the properties to hold with a stated margin, then a confirming run of that mixed
//! policy on fresh cases.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Serialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::harness::bisect::{
    BisectSpec, Bisection, Trial, UsedBound, bisect_precision, judge_places,
};
use esmfuzz::harness::deployment::generate_cases;
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::input::{NormaliseOptions, Protein};
use esmfuzz::model::{ComputePlan, FaultSet, Fp32Places, Precision};
use esmfuzz::with_backend;

use super::{ModelArgs, Outcome, check_outputs, named, read_proteins, write_report};

#[derive(clap::Args, Debug)]
pub struct BisectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub fasta_limits: super::FastaLimitArgs,
    /// Reduced policy to repair.
    #[arg(long, value_parser = named::<Precision>(), default_value = "f16")]
    pub precision: Precision,
    /// Generated proteins per stratum, tiny up to --max-stratum.
    #[arg(long, default_value_t = 4)]
    pub cases: usize,
    /// Longest stratum generated.
    #[arg(long, value_parser = named::<Stratum>(), default_value = "long")]
    pub max_stratum: Stratum,
    /// Generator seed of the bisection's cases; the confirming run uses seed + 1.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Judge these FASTA files' records too (e.g. the corpus), in batches of similar length.
    #[arg(long, value_delimiter = ',')]
    pub fasta: Vec<PathBuf>,
    /// Proteins per padded batch (one case).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// A mixed policy holds when every property holds using at most this fraction of its
    /// tolerance (1: just hold; 0.5: with half of it to spare).
    #[arg(long, default_value_t = 1.0, conflicts_with = "reach", value_parser = positive_fraction)]
    pub max_used: f64,
    /// Instead of --max-used: reach the margins of this plain policy on the same cases (its
    /// largest fraction of tolerance used becomes the bound), e.g. `--precision bf16 --reach f16`.
    #[arg(long, value_parser = named::<Precision>())]
    pub reach: Option<Precision>,
    /// Also write the bisection (every trial) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// The JSON report.
#[derive(Serialize)]
struct BisectReport<'a> {
    precision: Precision,
    backend: esmfuzz::backend::BackendKind,
    /// The tolerances judged against (the reached policy's with --reach).
    tolerances: &'a Tolerances,
    bound: &'a UsedBound,
    reached_policy: Option<Precision>,
    cases: usize,
    proteins: usize,
    bisection: &'a Bisection,
    /// The minimal mixed policy on fresh cases (seed + 1).
    confirmation: &'a Trial,
}

/// `args.cases` generated proteins of each stratum up to `args.max_stratum` (drawn with
/// `seed`) plus `real` proteins, in batches of `args.batch` proteins of similar length.
fn cases(args: &BisectArgs, seed: u64, real: &[Protein]) -> Result<Vec<Vec<Protein>>> {
    let strata: Vec<Stratum> = Stratum::ALL
        .into_iter()
        .filter(|s| *s <= args.max_stratum)
        .collect();
    let mut proteins = generate_cases(&strata, args.cases, seed);
    proteins.extend(real.iter().cloned());
    if proteins.is_empty() {
        bail!("no proteins to bisect on: give --cases >= 1 or --fasta");
    }
    proteins.sort_by_key(|p| p.residues.len());
    Ok(proteins
        .chunks(args.batch as usize)
        .map(<[Protein]>::to_vec)
        .collect())
}

fn trial_line(t: &Trial) -> String {
    let verb = if t.held { "holds" } else { "fails" };
    let why = match (&t.broke, &t.worst) {
        (Some(v), _) => format!("outside the bound: {v}"),
        (None, Some(v)) => format!("closest: {v}"),
        (None, None) => String::new(),
    };
    format!(
        "{verb:5} fp32[{}] after {} case(s); {why}",
        t.places, t.cases_run
    )
}

/// `--max-used`: a finite number above 0 (a fraction of each property's tolerance).
fn positive_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!(
            "{v} is not a finite number above 0 (a fraction of each property's tolerance, \
             e.g. 1 or 0.5)"
        )),
        Err(e) => Err(format!("{text:?} is not a number: {e}")),
    }
}

pub fn run(args: BisectArgs) -> Result<Outcome> {
    check_outputs(
        &[args.report.as_deref()],
        Some(&args.model),
        &args
            .fasta
            .iter()
            .map(|p| Some(p.as_path()))
            .collect::<Vec<_>>(),
    )?;
    let mut real = Vec::new();
    for path in &args.fasta {
        real.extend(read_proteins(
            path,
            args.fasta_limits.options(NormaliseOptions::default()),
        )?);
    }
    let bisect_cases = cases(&args, args.seed, &real)?;
    // Fresh generated cases; the FASTA records (if any) are judged again.
    // Fresh generated cases; without any, the confirmation is the bisection's own trial of
    // the minimal set (the same records would only be run again).
    let fresh_cases = if args.cases == 0 {
        None
    } else {
        Some(cases(&args, args.seed + 1, &real)?)
    };
    let checkpoint = args.model.load()?;
    let backend = args.model.backend;
    let tol = Tolerances::for_policy(args.precision, backend);
    let reach_tol = reach_tolerances(args.reach, backend).unwrap_or(tol);
    let plan = ComputePlan::new(args.precision, backend);
    eprintln!("under test: {}", plan.describe());
    let (tolerances, bound, bisection, confirmation) = with_backend!(backend, |B, device| {
        let mut spec = BisectSpec {
            weights: &checkpoint.weights,
            plan,
            faults: FaultSet::none(),
            cases: &bisect_cases,
            tolerances: &tol,
            bound: UsedBound::Uniform(args.max_used),
        };
        if let Some(reach) = args.reach {
            // Judged by the reached policy's tolerances, using no more of them than it does.
            let reached = judge_places::<B>(
                &BisectSpec {
                    plan: ComputePlan::new(reach, backend),
                    tolerances: &reach_tol,
                    bound: UsedBound::Uniform(1.0),
                    ..spec
                },
                &Fp32Places::none(),
                &device,
            );
            if !reached.held {
                bail!(
                    "plain {reach} does not hold on these cases: {}",
                    trial_line(&reached)
                );
            }
            spec.tolerances = &reach_tol;
            spec.bound = UsedBound::reaching(&reached.verdicts);
            eprintln!(
                "{} must do as well as plain {reach}, judged by {reach}'s tolerances: {}",
                args.precision, spec.bound
            );
        }
        let bisection = bisect_precision::<B>(&spec, &device, |t| eprintln!("{}", trial_line(t)))?;
        let reused = bisection
            .trials
            .iter()
            .find(|t| t.places == bisection.minimal)
            .cloned();
        let confirmation = match (&fresh_cases, reused) {
            (None, Some(trial)) => trial,
            (fresh, _) => judge_places::<B>(
                &BisectSpec {
                    cases: fresh.as_deref().unwrap_or(&bisect_cases),
                    bound: spec.bound.clone(),
                    ..spec
                },
                &bisection.minimal,
                &device,
            ),
        };
        (
            *spec.tolerances,
            spec.bound.clone(),
            bisection,
            confirmation,
        )
    });
    let held = confirmation.held;
    println!(
        "{} on {backend}, {} cases ({} proteins), bound: {bound}",
        args.precision,
        bisect_cases.len(),
        bisect_cases.iter().map(Vec::len).sum::<usize>(),
    );
    println!("plain {}: {}", args.precision, trial_line(&bisection.plain));
    println!("all places in FP32: {}", trial_line(&bisection.all));
    println!(
        "minimal FP32 places ({} trials): {}",
        bisection.trials.len(),
        bisection.minimal
    );
    let fresh = if args.cases == 0 {
        "the bisection's own records (no generated cases to draw fresh ones)".to_string()
    } else {
        format!("fresh generated cases (seed {})", args.seed + 1)
    };
    println!("confirmation on {fresh}: {}", trial_line(&confirmation));
    println!(
        "run it: esmfuzz fuzz --precision {} --fp32-places {}",
        args.precision, bisection.minimal
    );
    if let Some(path) = &args.report {
        write_report(
            path,
            &BisectReport {
                precision: args.precision,
                backend,
                tolerances: &tolerances,
                bound: &bound,
                reached_policy: args.reach,
                cases: bisect_cases.len(),
                proteins: bisect_cases.iter().map(Vec::len).sum(),
                bisection: &bisection,
                confirmation: &confirmation,
            },
        )?;
    }
    Ok(if held {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

/// The tolerances a `--reach` policy is judged by: that plain precision's own on this
/// backend ([`Tolerances::for_policy`], e.g. CUDA's f32 packed bound), nothing of the policy
/// under test.
fn reach_tolerances(reach: Option<Precision>, backend: BackendKind) -> Option<Tolerances> {
    reach.map(|r| Tolerances::for_policy(r, backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reached_policy_is_judged_by_its_own_backend_tolerances() {
        // On CUDA f32's packed bound is its isolation bound (cuBLAS picks kernels by shape);
        // the bare precision's would fail plain f32 packed there.
        let tol = reach_tolerances(Some(Precision::F32), BackendKind::Cuda).unwrap();
        let policy = Tolerances::for_policy(Precision::F32, BackendKind::Cuda);
        assert_eq!(tol.packed_abs, policy.packed_abs);
        assert_ne!(
            tol.packed_abs,
            Tolerances::for_precision(Precision::F32).packed_abs
        );
        assert!(reach_tolerances(None, BackendKind::Cpu).is_none());
    }
}
