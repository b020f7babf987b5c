//! A campaign: every saved failure of the policy replayed first, then the property families
//! over generated proteins, all through the one family driver. What `esmfuzz fuzz` runs.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use super::cases::Models;
use super::cases::{Oracle, against_oracle};
use super::driver::{
    FamilySubject, NoProteins, Observer, RunOptions, replay_seeds, run_family, run_family_with,
    run_proteins, run_real_with,
};
use super::family::{Family, HeadsOffered, Skipped};
use super::saved::{
    PolicyKey, Replay, SubjectKey, replay_counterexample, replay_counterexample_with, saved_files,
};
use super::strategies::GENERATOR_VERSION;
use super::subject::Subject;
use super::summary::FamilyResult;
use super::verdict::Verdict;
use super::verdict::{Selection, Tolerances};
use crate::batch::Layout;
use crate::input::{Protein, write_fasta};
use crate::model::Precision;

/// One of `count` disjoint parts of a campaign: the families whose position in the plan
/// is `index` modulo `count` (0-based). The parts' union is the whole campaign, each family
/// drawing the same cases as it would unsharded; part 0 also replays the saved failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether the family at `position` of the plan belongs to this part.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N` with `I < N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}': expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

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
    /// Run only this part of the campaign.
    pub shard: Option<Shard>,
    /// Families of the plan the subject cannot run (a head family on a checkpoint without
    /// the head, or against a deployment), named with the reason in the report.
    pub skipped: Vec<Skipped>,
}

impl CampaignSpec {
    /// Every family of the whole campaign by name, in order: the generated families, then
    /// the user's proteins (a shard runs some of them).
    pub fn planned(&self) -> Vec<String> {
        self.families
            .iter()
            .map(Family::name)
            .chain(self.real_proteins.iter().map(|(name, _)| name.clone()))
            .collect()
    }

    /// How many families of the plan this campaign (or its shard) runs.
    pub fn families_owned(&self) -> usize {
        let planned = self.families.len() + self.real_proteins.len();
        (0..planned)
            .filter(|&position| self.shard.is_none_or(|s| s.owns(position)))
            .count()
    }
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
    /// Every family of the whole campaign, in order (a shard runs some of them).
    #[serde(default)]
    pub planned: Vec<String>,
    /// The part of the campaign this report covers; `None` for all of it.
    #[serde(default)]
    pub shard: Option<Shard>,
    /// Families not run, and why: those of the plan the subject cannot run, and saved
    /// failures of families it cannot replay (a head the checkpoint lacks).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

impl CampaignReport {
    /// How many families of the plan this report's part of the campaign runs (all of them
    /// unsharded).
    pub fn families_planned(&self) -> usize {
        (0..self.planned.len())
            .filter(|&position| self.shard.is_none_or(|s| s.owns(position)))
            .count()
    }

    /// Whether every family of this part of the plan has a result (a stopped run's report,
    /// or one written while the run goes, has fewer).
    pub fn complete(&self) -> bool {
        self.families.len() >= self.families_planned()
    }

    /// Whether every replay and every family held, and every saved file could be replayed
    /// (of the families run so far: see [`CampaignReport::complete`]).
    pub fn passed(&self) -> bool {
        self.unreplayable.is_empty()
            && self.replayed_counterexamples.iter().all(|r| r.passed)
            && self.replayed_seed_families.iter().all(|f| f.passed)
            && self.families.iter().all(|f| f.passed)
    }
}

/// What a campaign runs its families on: our own model under a policy
/// ([`InProcessRunner`]), or a deployment judged by the FP32 oracle (`crate::deployment`).
/// Every method runs through the one family driver, so names, seeds and saved files are the
/// same for both.
pub trait Runner {
    /// Whose saved files are replayed and written.
    fn key(&self) -> SubjectKey;
    /// The precision reports name.
    fn precision(&self) -> Precision;
    /// The tolerances cases are judged by.
    fn tolerances(&self) -> Tolerances;
    /// One family: its saved seeds, then `cases` new cases (0: the seeds only).
    fn family(
        &self,
        family: Family,
        cases: u32,
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> FamilyResult;
    /// A saved counterexample through `family`'s check.
    fn counterexample(&self, family: Family, path: &Path, selection: &Selection) -> Replay;
    /// A user's proteins, every record once.
    fn real(
        &self,
        name: &str,
        proteins: &[Protein],
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<FamilyResult, NoProteins>;
    /// Why the runner cannot go on, once it cannot (a deployment given up).
    fn why_stopped(&self) -> Option<String> {
        None
    }
    /// What the subject offers the head families.
    fn heads_offered(&self) -> HeadsOffered;
}

/// Any [`Subject`] judged against the FP32 oracle through the family's one check: what a
/// deployment campaign runs (`fuzz --deployment`). No localisation or noise floor (they trace
/// our own model); the observer also stops when the subject is exhausted.
pub struct SubjectRunner<'a, B: Backend> {
    pub oracle: Oracle<'a, B>,
    pub subject: &'a dyn Subject,
    /// Our own policy of the same precision, judged beside it (`--twin-judge`).
    pub twin: Option<&'a dyn Subject>,
    pub key: SubjectKey,
    pub precision: Precision,
    pub tol: Tolerances,
}

/// An observer that also asks to stop when the subject can take no further call.
struct UntilExhausted<'a> {
    inner: &'a mut dyn Observer,
    subject: &'a dyn Subject,
}

impl Observer for UntilExhausted<'_> {
    fn stop_requested(&self) -> bool {
        self.inner.stop_requested() || self.subject.exhausted()
    }
    fn case_started(&mut self, family: &str, run: usize, proteins: &[Protein]) {
        self.inner.case_started(family, run, proteins);
    }
    fn case_judged(
        &mut self,
        family: &str,
        run: usize,
        proteins: &[Protein],
        verdicts: &[Verdict],
    ) {
        self.inner.case_judged(family, run, proteins, verdicts);
    }
}

impl<B: Backend> SubjectRunner<'_, B> {
    fn judge(&self, family: Family) -> impl Fn(&[Protein]) -> Vec<Verdict> + '_ {
        move |proteins| {
            family.judge_subject(self.oracle, self.subject, self.twin, proteins, &self.tol)
        }
    }
}

impl<B: Backend> Runner for SubjectRunner<'_, B> {
    fn key(&self) -> SubjectKey {
        self.key.clone()
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn tolerances(&self) -> Tolerances {
        self.tol
    }

    fn family(
        &self,
        family: Family,
        cases: u32,
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> FamilyResult {
        let judge = self.judge(family);
        let subject = FamilySubject {
            key: self.key.clone(),
            precision: self.precision,
            judge: &judge,
        };
        let mut observer = UntilExhausted {
            inner: observer,
            subject: self.subject,
        };
        run_family_with(family, &subject, cases, options, &mut observer)
    }

    fn counterexample(&self, family: Family, path: &Path, selection: &Selection) -> Replay {
        replay_counterexample_with(family, path, &self.judge(family), selection)
    }

    fn real(
        &self,
        name: &str,
        proteins: &[Protein],
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<FamilyResult, NoProteins> {
        // A user's records are judged as a padded mixed batch is, against the oracle.
        let judge = |batch: &[Protein]| {
            against_oracle(
                self.oracle,
                self.subject,
                self.twin,
                batch,
                Layout::Padded,
                &self.tol,
            )
        };
        let mut observer = UntilExhausted {
            inner: observer,
            subject: self.subject,
        };
        run_real_with(
            name,
            proteins,
            &judge,
            self.precision,
            options,
            &mut observer,
        )
    }

    fn why_stopped(&self) -> Option<String> {
        self.subject
            .exhausted()
            .then(|| "the subject gave up (see the report's call failures)".to_string())
    }

    fn heads_offered(&self) -> HeadsOffered {
        HeadsOffered::PooledRowsOnly
    }
}

/// Our own model under a policy, against FP32 in the same process.
pub struct InProcessRunner<'a, B: Backend> {
    pub models: Models<'a, B>,
    pub tol: Tolerances,
}

impl<B: Backend> Runner for InProcessRunner<'_, B> {
    fn key(&self) -> SubjectKey {
        PolicyKey::of(self.models.test).into()
    }

    fn precision(&self) -> Precision {
        self.models.test.plan.precision
    }

    fn tolerances(&self) -> Tolerances {
        self.tol
    }

    fn family(
        &self,
        family: Family,
        cases: u32,
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> FamilyResult {
        match NonZeroU32::new(cases) {
            Some(cases) => run_family(
                family,
                self.models,
                &self.tol,
                &RunOptions {
                    cases,
                    ..options.clone()
                },
                observer,
            ),
            None => replay_seeds(family, self.models, &self.tol, options, observer),
        }
    }

    fn counterexample(&self, family: Family, path: &Path, selection: &Selection) -> Replay {
        replay_counterexample(family, path, self.models, &self.tol, selection)
    }

    fn real(
        &self,
        name: &str,
        proteins: &[Protein],
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<FamilyResult, NoProteins> {
        run_proteins(name, proteins, self.models, &self.tol, options, observer)
    }

    fn heads_offered(&self) -> HeadsOffered {
        HeadsOffered::of(self.models.heads)
    }
}

/// Runs a campaign on `models`; `progress` sees the report after the replays and after each
/// family, so a stopped run keeps what it found. When `observer` asks to stop, the family
/// under way is discarded and no other is run (finished ones of a stopped run are still
/// kept): the report returned is then not [`CampaignReport::complete`].
pub fn run_campaign<B: Backend>(
    models: Models<'_, B>,
    tol: &Tolerances,
    spec: &CampaignSpec,
    observer: &mut dyn Observer,
    progress: &mut dyn FnMut(&CampaignReport) -> std::io::Result<()>,
) -> std::io::Result<CampaignReport> {
    let runner = InProcessRunner { models, tol: *tol };
    run_campaign_with(
        &runner,
        spec,
        RunOptions::campaign(spec),
        observer,
        progress,
    )
}

/// [`run_campaign`] on any [`Runner`], with `options` (cases, seed and regressions from the
/// spec; selection, localisation and the shrink budget the caller's).
pub fn run_campaign_with(
    runner: &dyn Runner,
    spec: &CampaignSpec,
    options: RunOptions,
    observer: &mut dyn Observer,
    progress: &mut dyn FnMut(&CampaignReport) -> std::io::Result<()>,
) -> std::io::Result<CampaignReport> {
    let precision = runner.precision();
    let saved = saved_files(&spec.regressions, runner.key())?;
    let mut report = CampaignReport {
        precision,
        seed: spec.seed,
        generator_version: GENERATOR_VERSION,
        cases_per_family: spec.cases.get(),
        regressions: spec.regressions.clone(),
        tolerances: runner.tolerances(),
        replayed_counterexamples: Vec::new(),
        replayed_seed_families: Vec::new(),
        unreplayable: saved.unknown.clone(),
        families: Vec::new(),
        resumed: Vec::new(),
        planned: spec.planned(),
        shard: spec.shard,
        skipped: spec.skipped.clone(),
    };
    let owns = |position: usize| spec.shard.is_none_or(|s| s.owns(position));
    let replays = spec.shard.is_none_or(|s| s.index == 0);
    if !replays {
        report.unreplayable.clear();
    }
    for (family, seeds, counterexample) in saved.families.iter().filter(|_| replays) {
        // A saved failure of a head this subject lacks cannot be replayed: named, not run.
        if let Some(reason) = runner.heads_offered().why_not(*family) {
            report.skipped.push(Skipped {
                family: family.name(),
                reason: format!("its saved failures were not replayed: {reason}"),
            });
            continue;
        }
        if let Some(path) = counterexample {
            report.replayed_counterexamples.push(runner.counterexample(
                *family,
                path,
                &options.selection,
            ));
        }
        if seeds.is_some() && !spec.families.contains(family) {
            let result = runner.family(*family, 0, &options, observer);
            if observer.stop_requested() || runner.why_stopped().is_some() {
                break;
            }
            keep_counterexample(&result, &spec.out_dir);
            report.replayed_seed_families.push(result);
        }
    }
    progress(&report)?;
    // The plan: generated families, then the user's proteins; one loop runs both.
    let units = spec
        .families
        .iter()
        .map(|&family| Unit::Generated(family))
        .chain(
            spec.real_proteins
                .iter()
                .map(|(name, proteins)| Unit::Real(name, proteins)),
        );
    for (position, unit) in units.enumerate() {
        if !owns(position) {
            continue;
        }
        let name = &report.planned[position];
        if let Some(done) = spec.completed.iter().find(|r| &r.family == name) {
            report.resumed.push(done.family.clone());
            report.families.push(done.clone());
        } else if observer.stop_requested() || runner.why_stopped().is_some() {
            continue;
        } else {
            let result = match unit {
                Unit::Generated(family) => {
                    runner.family(family, spec.cases.get(), &options, observer)
                }
                Unit::Real(name, proteins) => runner
                    .real(name, proteins, &options, observer)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            };
            // A stopped family is discarded, whoever stopped it.
            if observer.stop_requested() || runner.why_stopped().is_some() {
                continue;
            }
            keep_counterexample(&result, &spec.out_dir);
            report.families.push(result);
        }
        progress(&report)?;
    }
    Ok(report)
}

impl RunOptions {
    /// A campaign's options: its cases, seed and regressions folder, every property, errors
    /// localised, the default shrink budget.
    pub fn campaign(spec: &CampaignSpec) -> Self {
        RunOptions {
            cases: spec.cases,
            seed: Some(spec.seed),
            regressions: Some(spec.regressions.clone()),
            selection: Selection::all(),
            localise: true,
            shrink: Default::default(),
        }
    }
}

/// One entry of a campaign's plan.
enum Unit<'a> {
    Generated(Family),
    Real(&'a str, &'a [Protein]),
}

/// Why shard reports cannot be merged; [`MergeError::report`] says which report (by its
/// position in the list given) is at fault, for the caller to name its folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("no report to merge")]
    Empty,
    #[error("not a shard (it covers the whole campaign)")]
    NotAShard { index: usize },
    #[error("{what} {other} differs from the first shard's {first}")]
    Disagree {
        index: usize,
        what: &'static str,
        first: String,
        other: String,
    },
    #[error("shard {shard}/{count} is given twice")]
    Twice {
        index: usize,
        shard: usize,
        count: usize,
    },
    #[error("shard {shard}/{count} is missing")]
    Missing { shard: usize, count: usize },
    #[error(
        "shard {shard}/{count} is incomplete: {done} of {planned} families (a stopped run; \
         finish it with `esmfuzz fuzz --resume` on its folder)"
    )]
    Incomplete {
        index: usize,
        shard: usize,
        count: usize,
        done: usize,
        planned: usize,
    },
}

impl MergeError {
    /// The position of the report at fault in the list given, when one is.
    pub fn report(&self) -> Option<usize> {
        match self {
            Self::NotAShard { index }
            | Self::Disagree { index, .. }
            | Self::Twice { index, .. }
            | Self::Incomplete { index, .. } => Some(*index),
            Self::Empty | Self::Missing { .. } => None,
        }
    }
}

/// Merges the reports of every shard of one campaign into the report the whole campaign
/// would have written (families in plan order; the replays of shard 0).
pub fn merge_shards(mut reports: Vec<CampaignReport>) -> Result<CampaignReport, MergeError> {
    let first = reports.first().ok_or(MergeError::Empty)?.clone();
    let shard = first.shard.ok_or(MergeError::NotAShard { index: 0 })?;
    let mut seen = vec![false; shard.count];
    for (i, r) in reports.iter().enumerate() {
        let s = r.shard.ok_or(MergeError::NotAShard { index: i })?;
        let check = |what, a: String, b: String| {
            if a == b {
                Ok(())
            } else {
                Err(MergeError::Disagree {
                    index: i,
                    what,
                    first: a,
                    other: b,
                })
            }
        };
        check("shard count", shard.count.to_string(), s.count.to_string())?;
        check(
            "policy",
            first.precision.to_string(),
            r.precision.to_string(),
        )?;
        check("seed", first.seed.to_string(), r.seed.to_string())?;
        check(
            "generator version",
            first.generator_version.to_string(),
            r.generator_version.to_string(),
        )?;
        check(
            "cases per family",
            first.cases_per_family.to_string(),
            r.cases_per_family.to_string(),
        )?;
        check("plan", first.planned.join(","), r.planned.join(","))?;
        if !r.complete() {
            return Err(MergeError::Incomplete {
                index: i,
                shard: s.index,
                count: s.count,
                done: r.families.len(),
                planned: r.families_planned(),
            });
        }
        if std::mem::replace(&mut seen[s.index], true) {
            return Err(MergeError::Twice {
                index: i,
                shard: s.index,
                count: s.count,
            });
        }
    }
    if let Some(index) = seen.iter().position(|&s| !s) {
        return Err(MergeError::Missing {
            shard: index,
            count: shard.count,
        });
    }
    reports.sort_by_key(|r| r.shard.map_or(0, |s| s.index));
    let mut merged = reports[0].clone();
    merged.shard = None;
    let mut families: Vec<FamilyResult> = reports.iter().flat_map(|r| r.families.clone()).collect();
    let position = |name: &str| {
        merged
            .planned
            .iter()
            .position(|p| p == name)
            .unwrap_or(usize::MAX)
    };
    families.sort_by_key(|f| position(&f.family));
    merged.families = families;
    merged.resumed = reports.iter().flat_map(|r| r.resumed.clone()).collect();
    Ok(merged)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_the_plan_disjointly_and_completely() {
        assert!("3/3".parse::<Shard>().is_err() && "0/0".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for position in 0..10 {
            let owners = shards.iter().filter(|s| s.owns(position)).count();
            assert_eq!(owners, 1, "position {position}");
        }
    }
}
