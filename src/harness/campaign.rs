//! A campaign: every saved failure of the policy replayed first, then the property families
//! over generated proteins, all through the one family driver. What `esmfuzz fuzz` runs.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use super::cases::Models;
use super::family::{
    Family, FamilyResult, Observer, Replay, RunOptions, replay_counterexample, replay_seeds,
    run_family, run_proteins, saved_files,
};
use super::strategies::GENERATOR_VERSION;
use super::verdict::{Selection, Tolerances};
use crate::input::{Protein, write_fasta};
use crate::model::Precision;

/// What a campaign runs.
#[derive(Debug, Clone)]
pub struct CampaignSpec {
    pub families: Vec<Family>,
    /// New cases per family.
    pub cases: NonZeroU32,
    /// Generator seed: the same seed, version and backend give the same cases and verdicts.
    pub seed: u64,
    /// Saved seeds and counterexamples to replay first; new failures persist here too.
    pub regressions: PathBuf,
    /// Shrunk counterexamples of this campaign are also written here as `<family>.fasta`.
    pub out_dir: PathBuf,
    /// Real proteins to judge as well, by name (`fasta-<file stem>`): every record once.
    pub real_proteins: Vec<(String, Vec<Protein>)>,
    /// Families a stopped run of this same campaign (same seed, policy, generator version
    /// and case count) finished: kept as they are, not run again.
    pub completed: Vec<FamilyResult>,
}

/// What a campaign found.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CampaignReport {
    pub precision: Precision,
    pub seed: u64,
    pub generator_version: u32,
    pub cases_per_family: u32,
    pub regressions: PathBuf,
    pub tolerances: Tolerances,
    /// Saved counterexample FASTA files of this policy, replayed first.
    pub replayed_counterexamples: Vec<Replay>,
    /// Saved seeds of families this campaign does not run, replayed first (the seeds of
    /// the families it runs are replayed at the start of each family).
    pub replayed_seed_families: Vec<FamilyResult>,
    /// Saved files of this policy naming no known family: they cannot be replayed.
    pub unreplayable: Vec<PathBuf>,
    pub families: Vec<FamilyResult>,
    /// Families taken from a stopped run instead of being run again.
    #[serde(default)]
    pub resumed: Vec<String>,
}

impl CampaignReport {
    /// Whether every replay and every family held, and every saved file could be replayed.
    pub fn passed(&self) -> bool {
        self.unreplayable.is_empty()
            && self.replayed_counterexamples.iter().all(|r| r.passed)
            && self.replayed_seed_families.iter().all(|f| f.passed)
            && self.families.iter().all(|f| f.passed)
    }
}

/// Runs a campaign on `models`; `progress` sees the report after the replays and after each
/// family, so a stopped run keeps what it found.
pub fn run_campaign<B: Backend>(
    models: Models<'_, B>,
    tol: &Tolerances,
    spec: &CampaignSpec,
    observer: &mut dyn Observer,
    progress: &mut dyn FnMut(&CampaignReport) -> std::io::Result<()>,
) -> std::io::Result<CampaignReport> {
    let precision = models.test.plan.precision;
    let options = RunOptions {
        cases: spec.cases,
        seed: Some(spec.seed),
        regressions: Some(spec.regressions.clone()),
        selection: Selection::all(),
        localise: true,
    };
    let saved = saved_files(&spec.regressions, precision)?;
    let mut report = CampaignReport {
        precision,
        seed: spec.seed,
        generator_version: GENERATOR_VERSION,
        cases_per_family: spec.cases.get(),
        regressions: spec.regressions.clone(),
        tolerances: *tol,
        replayed_counterexamples: Vec::new(),
        replayed_seed_families: Vec::new(),
        unreplayable: saved.unknown.clone(),
        families: Vec::new(),
        resumed: Vec::new(),
    };
    for (family, seeds, counterexample) in &saved.families {
        if let Some(path) = counterexample {
            report.replayed_counterexamples.push(replay_counterexample(
                *family,
                path,
                models,
                tol,
                &options.selection,
            ));
        }
        if seeds.is_some() && !spec.families.contains(family) {
            let result = replay_seeds(*family, models, tol, &options, observer);
            keep_counterexample(&result, &spec.out_dir);
            report.replayed_seed_families.push(result);
        }
    }
    progress(&report)?;
    for &family in &spec.families {
        if let Some(done) = spec.completed.iter().find(|r| r.family == family.name()) {
            report.resumed.push(done.family.clone());
            report.families.push(done.clone());
            progress(&report)?;
            continue;
        }
        let result = run_family(family, models, tol, &options, observer);
        keep_counterexample(&result, &spec.out_dir);
        report.families.push(result);
        progress(&report)?;
    }
    for (name, proteins) in &spec.real_proteins {
        if let Some(done) = spec.completed.iter().find(|r| &r.family == name) {
            report.resumed.push(done.family.clone());
            report.families.push(done.clone());
            progress(&report)?;
            continue;
        }
        let result = run_proteins(name, proteins, models, tol, &options);
        keep_counterexample(&result, &spec.out_dir);
        report.families.push(result);
        progress(&report)?;
    }
    Ok(report)
}

/// Copies a failed family's shrunk input to `out_dir/<family>.fasta` (best effort: the
/// regressions folder holds it already, and the report holds it as text).
fn keep_counterexample(result: &FamilyResult, out_dir: &Path) {
    if let Some(failure) = &result.failure
        && !failure.minimal.is_empty()
    {
        let path = out_dir.join(format!("{}.fasta", result.family));
        if let Err(e) = write_fasta(&path, &failure.minimal) {
            eprintln!("warning: cannot write {}: {e}", path.display());
        }
    }
}
