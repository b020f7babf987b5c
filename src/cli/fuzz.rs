//! `esmfuzz fuzz`: a campaign of the property families against FP32 on any backend, saved
//! failures replayed first; `report.json` is rewritten as the campaign goes.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use esmfuzz::backend::BackendKind;
use esmfuzz::harness::campaign::{CampaignReport, CampaignSpec, run_campaign};
use esmfuzz::harness::cases::Models;
use esmfuzz::harness::family::{Family, FamilyResult, Observer};
use esmfuzz::harness::strategies::Stratum;
use esmfuzz::harness::verdict::Tolerances;
use esmfuzz::input::Protein;
use esmfuzz::model::{ComputePlan, Esm2, FaultSet, Precision};
use esmfuzz::with_backend;

use super::{ModelArgs, Outcome, precision_parser, stratum_parser, write_report};

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Policy under test (compared with FP32 on the same backend).
    #[arg(long, value_parser = precision_parser(), default_value = "f16")]
    pub precision: Precision,
    /// New cases per family (at least 1).
    #[arg(long, default_value_t = NonZeroU32::new(8).expect("8 is not zero"))]
    pub cases: NonZeroU32,
    /// Longest stratum to generate (one family per stratum, plus mixed, packed and
    /// isolation batches).
    #[arg(long, value_parser = stratum_parser(), default_value = "very-long")]
    pub max_stratum: Stratum,
    /// Generator seed (default: a fresh one, printed first and stored in report.json). The
    /// same seed, esmfuzz version and backend give the same cases and verdicts.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder of saved failures: `<policy>__<family>.txt` seeds and
    /// `counterexamples/<policy>__<family>.fasta`, replayed first; new failures are saved here.
    #[arg(long, default_value = "proptest-regressions")]
    pub regressions: PathBuf,
    /// Folder for report.json (rewritten after each family) and shrunk counterexamples.
    #[arg(long, default_value = "fuzz-out")]
    pub out: PathBuf,
}

/// The campaign report with what it ran on.
#[derive(Debug, Serialize)]
struct FuzzReport<'a> {
    esmfuzz_version: &'static str,
    backend: BackendKind,
    device: String,
    weights: &'a Path,
    policy: String,
    reference_policy: String,
    passed: bool,
    #[serde(flatten)]
    campaign: &'a CampaignReport,
}

/// A seed for a campaign nobody seeded: the clock's nanoseconds mixed with the process id.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Shows each model run on the progress bar, or as a log line when stderr is no terminal
/// (logs of long unattended runs, e.g. on the GPU machine, show progress).
struct ProgressObserver {
    bar: ProgressBar,
    started: Instant,
}

impl Observer for ProgressObserver {
    fn case_started(&mut self, family: Family, run: usize, proteins: &[Protein]) {
        let lens: Vec<usize> = proteins.iter().map(|p| p.residues.len()).collect();
        let msg = format!(
            "{family}: run {run} at {:.1} s, lengths {lens:?}",
            self.started.elapsed().as_secs_f64()
        );
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.set_message(msg);
        }
    }
}

fn family_line(result: &FamilyResult) -> String {
    format!(
        "{:<24} {} {} cases ({} runs, {} saved seeds) {:>7.1} s  tightest: {}",
        result.family,
        if result.passed { "ok  " } else { "FAIL" },
        result.cases,
        result.runs,
        result.replayed_seeds,
        result.seconds,
        result
            .tightest
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default()
    )
}

pub fn run(args: FuzzArgs) -> Result<Outcome> {
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("seed: {seed} (rerun with --seed {seed})");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let checkpoint = args.model.load()?;
    let backend = args.model.backend;
    let report_path = args.out.join("report.json");
    let tol = Tolerances::for_precision(args.precision);
    let spec = CampaignSpec {
        families: Family::campaign(args.max_stratum),
        cases: args.cases,
        seed,
        regressions: args.regressions.clone(),
        out_dir: args.out.clone(),
    };
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
        let models = Models {
            reference: &reference,
            test: &test,
        };
        let bar = ProgressBar::new(spec.families.len() as u64);
        let mut observer = ProgressObserver {
            bar: bar.clone(),
            started: Instant::now(),
        };
        let mut printed = 0usize;
        let mut write = |campaign: &CampaignReport| -> std::io::Result<()> {
            if printed == 0 {
                for r in &campaign.replayed_counterexamples {
                    let verdict = if r.passed { "ok  " } else { "FAIL" };
                    bar.suspend(|| eprintln!("replay {verdict} {}", r.file.display()));
                }
                for f in &campaign.replayed_seed_families {
                    bar.suspend(|| eprintln!("replay {}", family_line(f)));
                }
                for path in &campaign.unreplayable {
                    bar.suspend(|| {
                        eprintln!("replay FAIL {}: names no known family", path.display())
                    });
                }
            }
            for result in &campaign.families[printed..] {
                bar.inc(1);
                // Printed whether or not stderr is a terminal (a hidden bar drops println).
                bar.suspend(|| eprintln!("{}", family_line(result)));
                if let Some(failure) = &result.failure {
                    bar.suspend(|| {
                        eprintln!(
                            "{}\nshrunk counterexample:\n{}",
                            failure.message, failure.minimal_fasta
                        )
                    });
                    if let Some(l) = &result.localisation {
                        bar.suspend(|| eprintln!("where the error is born:\n{}", l.to_markdown()));
                    }
                }
            }
            printed = campaign.families.len();
            let full = FuzzReport {
                esmfuzz_version: env!("CARGO_PKG_VERSION"),
                backend,
                device: format!("{device:?}"),
                weights: &checkpoint.path,
                policy: plan.describe(),
                reference_policy: ref_plan.describe(),
                passed: campaign.passed(),
                campaign,
            };
            write_report(&report_path, &full).map_err(std::io::Error::other)
        };
        let report = run_campaign(models, &tol, &spec, &mut observer, &mut write)?;
        bar.finish_and_clear();
        report
    });
    eprintln!(
        "seed {seed}: {}; report: {}",
        if report.passed() {
            "all held"
        } else {
            "FAILED"
        },
        report_path.display()
    );
    Ok(if report.passed() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
