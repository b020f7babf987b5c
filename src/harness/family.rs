//! The family driver: the one way a property family runs, for `cargo test`, `esmfuzz fuzz`
//! and replay alike.
//!
//! A [`Family`] is a strategy (what inputs) and a check (what is compared); its name is the
//! same everywhere. Failures persist as `<regressions>/<policy>__<family>.txt` (proptest
//! seeds, replayed first by the next run of that family) and
//! `<regressions>/counterexamples/<policy>__<family>.fasta` (the shrunk input, replayed by
//! [`replay_counterexample`] whatever the strategies become), so a failure saved by a test
//! replays in every later campaign on any backend, and the other way round.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use burn::tensor::backend::Backend;
use proptest::strategy::{BoxedStrategy, Strategy};
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cases::{Models, check_against_reference, check_isolation, localise_case};
use super::localise::Localisation;
use super::metrics;
use super::strategies::{Stratum, mixed_batch, protein, protein_up_to};
use super::verdict::{PropertyId, Selection, Tolerances, Verdict, f64_or_nan, failures, tightest};
use crate::batch::Layout;
use crate::input::{NormaliseOptions, Protein, fasta_text, read_fasta, write_fasta};
use crate::model::Precision;

/// Most proteins in one batch of a mixed family.
pub const MIXED_BATCH_MAX: usize = 4;
/// A protein this long or longer makes [`Family::PackedWithLong`]'s long batch-mate.
pub const PACKED_LONG_MIN_RESIDUES: usize = 401;
/// Shrink steps allowed per failure. Each step is a model run: enough to take a 50-residue
/// case down to one residue (the stratum shrinks only after its residues), bounded in time.
pub const MAX_SHRINK_ITERS: u32 = 1024;

/// A property family: which inputs are generated and what they are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// One protein of a stratum, padded, against FP32.
    Stratum(Stratum),
    /// One protein of any stratum up to this one, padded, against FP32.
    UpTo(Stratum),
    /// 2..=[`MIXED_BATCH_MAX`] proteins up to a stratum in one padded batch, against FP32.
    Mixed(Stratum),
    /// The same batches packed (varlen), against padded FP32.
    Packed(Stratum),
    /// A protein of over 400 residues among medium ones, packed, against padded FP32.
    PackedWithLong,
    /// Mixed batches up to a stratum: each protein alone vs among batch-mates (padded, and
    /// packed in reverse order), and a repeat bit-identical; the policy under test only.
    Isolation(Stratum),
}

/// What a family compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Properties 1-6: the policy under test, laid out so, against padded FP32.
    AgainstReference(Layout),
    /// Property 8 on the policy under test.
    Isolation,
}

impl Family {
    /// Every family, for every stratum: what a saved file name can refer to.
    pub fn catalogue() -> Vec<Family> {
        let mut all = vec![Family::PackedWithLong];
        for s in Stratum::ALL {
            all.extend([
                Family::Stratum(s),
                Family::UpTo(s),
                Family::Mixed(s),
                Family::Packed(s),
                Family::Isolation(s),
            ]);
        }
        all
    }

    /// The families of a campaign up to `max`: each stratum alone, then mixed, packed and
    /// isolation batches up to `max` (at most `long`, so a batch stays a few thousand tokens).
    pub fn campaign(max: Stratum) -> Vec<Family> {
        let mut families: Vec<Family> = Stratum::ALL
            .into_iter()
            .filter(|s| *s <= max)
            .map(Family::Stratum)
            .collect();
        let mixed = max.min(Stratum::Long);
        families.extend([
            Family::Mixed(mixed),
            Family::Packed(mixed),
            Family::Isolation(mixed),
        ]);
        families
    }

    /// The family's name in file names and reports.
    pub fn name(&self) -> String {
        match self {
            Family::Stratum(s) => format!("stratum-{s}"),
            Family::UpTo(s) => format!("up-to-{s}"),
            Family::Mixed(s) => format!("mixed-up-to-{s}"),
            Family::Packed(s) => format!("packed-up-to-{s}"),
            Family::PackedWithLong => "packed-with-long".to_string(),
            Family::Isolation(s) => format!("isolation-up-to-{s}"),
        }
    }

    /// What the family compares.
    pub fn check(&self) -> Check {
        match self {
            Family::Stratum(_) | Family::UpTo(_) | Family::Mixed(_) => {
                Check::AgainstReference(Layout::Padded)
            }
            Family::Packed(_) | Family::PackedWithLong => Check::AgainstReference(Layout::Packed),
            Family::Isolation(_) => Check::Isolation,
        }
    }

    /// The inputs the family generates.
    pub fn strategy(&self) -> BoxedStrategy<Vec<Protein>> {
        match *self {
            Family::Stratum(s) => protein(s).prop_map(|p| vec![p]).boxed(),
            Family::UpTo(s) => protein_up_to(s).prop_map(|p| vec![p]).boxed(),
            Family::Mixed(s) | Family::Packed(s) | Family::Isolation(s) => {
                mixed_batch(s, MIXED_BATCH_MAX).boxed()
            }
            Family::PackedWithLong => {
                let long = protein(Stratum::Long).prop_filter("over 400 residues", |p| {
                    p.residues.len() >= PACKED_LONG_MIN_RESIDUES
                });
                (long, mixed_batch(Stratum::Medium, MIXED_BATCH_MAX - 1))
                    .prop_map(|(l, mut rest)| {
                        rest.insert(1, l);
                        rest
                    })
                    .boxed()
            }
        }
    }

    /// Runs one case through the models and judges it (every property of the family's
    /// check; callers keep their [`Selection`]).
    pub fn judge<B: Backend>(
        &self,
        models: Models<'_, B>,
        proteins: &[Protein],
        tol: &Tolerances,
    ) -> Vec<Verdict> {
        match self.check() {
            Check::AgainstReference(layout) => {
                check_against_reference(models, proteins, layout, tol)
            }
            Check::Isolation => check_isolation(models.test, proteins, tol),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::catalogue()
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown property family '{s}'"))
    }
}

/// The stem of a family's saved files for a policy: `<policy>__<family>`.
pub fn saved_stem(policy: Precision, family: Family) -> String {
    format!("{}__{}", policy.name(), family.name())
}

/// Where a family's proptest seeds persist.
pub fn seeds_path(regressions: &Path, policy: Precision, family: Family) -> PathBuf {
    regressions.join(format!("{}.txt", saved_stem(policy, family)))
}

/// Where a family's shrunk counterexample persists.
pub fn counterexample_path(regressions: &Path, policy: Precision, family: Family) -> PathBuf {
    regressions
        .join("counterexamples")
        .join(format!("{}.fasta", saved_stem(policy, family)))
}

/// How a family run goes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// New cases to generate (after replaying saved seeds). Never zero: a family that ran no
    /// case has shown nothing.
    pub cases: NonZeroU32,
    /// Seed of the case generator (the same seed, version and backend give the same cases);
    /// `None` lets proptest choose (random unless `PROPTEST_RNG_SEED` is set).
    pub seed: Option<u64>,
    /// The regressions folder to replay seeds from and persist failures to; `None` for runs
    /// expected to fail (fault injection).
    pub regressions: Option<PathBuf>,
    /// The properties judged.
    pub selection: Selection,
    /// Localise the error of the failing case, or of the tightest passing one (families
    /// that compare with FP32 only; two more model runs).
    pub localise: bool,
}

/// Watches a family run; every method has a do-nothing default.
pub trait Observer {
    /// A model run is about to start (generated, replayed and shrinking cases alike).
    fn case_started(&mut self, _family: Family, _run: usize, _proteins: &[Protein]) {}
    /// A case has been judged.
    fn case_judged(
        &mut self,
        _family: Family,
        _run: usize,
        _proteins: &[Protein],
        _verdicts: &[Verdict],
    ) {
    }
}

/// Observes nothing.
impl Observer for () {}

/// A family that failed: the shrunk input and its failed verdicts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FamilyFailure {
    /// The failed verdicts of the shrunk case (empty when proptest aborted, see `message`).
    pub verdicts: Vec<Verdict>,
    /// Every failed verdict (or the abort reason) as text.
    pub message: String,
    /// The shrunk input, as FASTA.
    pub minimal_fasta: String,
    /// The shrunk input (not serialised: `minimal_fasta` holds it).
    #[serde(skip)]
    pub minimal: Vec<Protein>,
    /// Model runs up to the first failing case (replayed seeds included).
    pub cases_to_failure: usize,
    /// Where the shrunk input was persisted, if it was.
    pub counterexample: Option<PathBuf>,
}

/// The distribution of one property's measured values over a family's cases.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricSummary {
    pub property: PropertyId,
    /// Cases that measured it.
    pub cases: usize,
    pub threshold: f64,
    /// The smallest, 1st percentile, median and largest measured value (NaN first).
    #[serde(deserialize_with = "f64_or_nan")]
    pub min: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub p01: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub median: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub max: f64,
    /// The largest fraction of the tolerance any case used.
    #[serde(deserialize_with = "f64_or_nan")]
    pub worst_used: f64,
}

/// Summaries of every property measured in `verdicts`, in [`PropertyId`] order.
pub fn summarise(verdicts: &[Verdict]) -> Vec<MetricSummary> {
    let mut ids: Vec<PropertyId> = verdicts.iter().map(|v| v.property).collect();
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .map(|id| {
            let of_id: Vec<&Verdict> = verdicts.iter().filter(|v| v.property == id).collect();
            let mut measured: Vec<f64> = of_id.iter().map(|v| v.measured).collect();
            // NaN first: a NaN is the worst a minimum can be.
            measured.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
                _ => a.total_cmp(b),
            });
            let at = |q: f64| measured[((measured.len() - 1) as f64 * q).floor() as usize];
            let used: Vec<f64> = of_id
                .iter()
                .map(|v| {
                    if v.used.is_nan() {
                        f64::INFINITY
                    } else {
                        v.used
                    }
                })
                .collect();
            MetricSummary {
                property: id,
                cases: of_id.len(),
                threshold: of_id[0].threshold,
                min: at(0.0),
                p01: at(0.01),
                median: at(0.5),
                max: measured.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                worst_used: metrics::max(&used),
            }
        })
        .collect()
}

/// One judged case's headline figures, for plots.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CasePoint {
    /// Residues of each protein of the case.
    pub lengths: Vec<usize>,
    #[serde(deserialize_with = "f64_or_nan")]
    pub pooled_cosine: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub relative_l2: f64,
}

/// The outcome of one family run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FamilyResult {
    pub family: String,
    pub policy: Precision,
    /// New cases asked for.
    pub cases: u32,
    /// Model runs: replayed seeds, new cases and shrinking steps.
    pub runs: usize,
    /// Saved seeds replayed before the new cases.
    pub replayed_seeds: usize,
    pub passed: bool,
    /// The verdict with the smallest margin over every case run (the shrunk one on failure).
    pub tightest: Option<Verdict>,
    /// The proteins of the case that gave `tightest`, as FASTA.
    pub tightest_case: String,
    pub failure: Option<FamilyFailure>,
    /// Where the error of the failing (else the tightest) case is born.
    pub localisation: Option<Localisation>,
    /// Every judged property's values over the family's model runs (generated, replayed
    /// and shrinking cases).
    pub metrics: Vec<MetricSummary>,
    /// Pooled cosine and relative L2 of every case that measured both.
    pub points: Vec<CasePoint>,
    /// Per stratum of a case's longest protein, the same summaries, when the family's cases
    /// span more than one stratum (mixed and packed families, real proteins).
    #[serde(default)]
    pub by_stratum: Vec<StratumMetrics>,
    /// The noise floor: FP32 summed in another order against the FP32 reference on the
    /// tightest (or failing) case, judged by the same tolerances; empty without a floor
    /// model or for families that do not compare with the reference.
    #[serde(default)]
    pub noise_floor: Vec<Verdict>,
    pub seconds: f64,
}

/// One stratum's metric summaries within a family.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StratumMetrics {
    /// The stratum of each case's longest protein.
    pub stratum: Stratum,
    pub cases: usize,
    pub metrics: Vec<MetricSummary>,
}

/// Runs `family` for the models' policy under test: replays the family's saved seeds, then
/// `options.cases` new cases, judging `options.selection`; a failure is shrunk and, with a
/// regressions folder, persisted as seed and FASTA.
pub fn run_family<B: Backend>(
    family: Family,
    models: Models<'_, B>,
    tol: &Tolerances,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> FamilyResult {
    drive(family, models, tol, options.cases.get(), options, observer)
}

/// Replays a family's saved seeds only (no new case): for saved families a campaign does not
/// otherwise run. Passes when there are no seeds.
pub fn replay_seeds<B: Backend>(
    family: Family,
    models: Models<'_, B>,
    tol: &Tolerances,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> FamilyResult {
    drive(family, models, tol, 0, options, observer)
}

fn drive<B: Backend>(
    family: Family,
    models: Models<'_, B>,
    tol: &Tolerances,
    cases: u32,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> FamilyResult {
    let start = Instant::now();
    let policy = models.test.plan.precision;
    let name = family.name();
    let seeds = options
        .regressions
        .as_deref()
        .map(|dir| seeds_path(dir, policy, family));
    let replayed_seeds = seeds.as_deref().map_or(0, count_seeds);
    let config = Config {
        cases,
        failure_persistence: seeds.as_ref().map(|path| {
            let path: &'static str =
                Box::leak(path.to_string_lossy().into_owned().into_boxed_str());
            Box::new(FileFailurePersistence::Direct(path)) as _
        }),
        max_shrink_iters: MAX_SHRINK_ITERS,
        ..Config::default()
    };
    let mut runner = match options.seed {
        Some(seed) => TestRunner::new_with_rng(
            config,
            TestRng::from_seed(RngAlgorithm::ChaCha, &family_seed(seed, &name)),
        ),
        None => TestRunner::new(config),
    };

    let runs = RefCell::new(0usize);
    let first_failure = RefCell::new(0usize);
    let log = RefCell::new(CaseLog::default());
    // The last failing case and its failed verdicts: proptest keeps a simplification only
    // when it fails, so this is the shrunk case, and it need not be run again.
    let last_failed: RefCell<Option<(Vec<Protein>, Vec<Verdict>)>> = RefCell::new(None);
    let observer = RefCell::new(observer);
    let result = runner.run(&family.strategy(), |proteins| {
        let run = {
            let mut runs = runs.borrow_mut();
            *runs += 1;
            *runs
        };
        observer.borrow_mut().case_started(family, run, &proteins);
        let verdicts = options.selection.keep(family.judge(models, &proteins, tol));
        observer
            .borrow_mut()
            .case_judged(family, run, &proteins, &verdicts);
        log.borrow_mut().record(&proteins, &verdicts);
        if verdicts.is_empty() {
            return Err(TestCaseError::fail(format!(
                "family {name} produced none of the selected properties: nothing was judged"
            )));
        }
        match failures(&verdicts) {
            None => Ok(()),
            Some(message) => {
                let mut first = first_failure.borrow_mut();
                if *first == 0 {
                    *first = run;
                }
                let failed = verdicts.into_iter().filter(|v| !v.passed).collect();
                *last_failed.borrow_mut() = Some((proteins, failed));
                Err(TestCaseError::fail(message))
            }
        }
    });

    let failure = match result {
        Ok(()) => None,
        Err(TestError::Fail(reason, minimal)) => {
            // The shrunk case's failed verdicts, for reports that name the failed property
            // (judged again only if the last failing case is not the shrunk one).
            let verdicts: Vec<Verdict> = match last_failed.into_inner() {
                Some((proteins, failed)) if proteins == minimal => failed,
                _ => options
                    .selection
                    .keep(family.judge(models, &minimal, tol))
                    .into_iter()
                    .filter(|v| !v.passed)
                    .collect(),
            };
            let counterexample = options.regressions.as_deref().and_then(|dir| {
                let path = counterexample_path(dir, policy, family);
                match write_fasta(&path, &minimal) {
                    Ok(()) => Some(path),
                    Err(e) => {
                        eprintln!("warning: cannot write {}: {e}", path.display());
                        None
                    }
                }
            });
            Some(FamilyFailure {
                verdicts,
                message: reason.to_string(),
                minimal_fasta: fasta_text(&minimal),
                minimal,
                cases_to_failure: first_failure.into_inner(),
                counterexample,
            })
        }
        Err(TestError::Abort(reason)) => Some(FamilyFailure {
            verdicts: Vec::new(),
            message: format!("aborted: {reason}"),
            minimal_fasta: String::new(),
            minimal: Vec::new(),
            cases_to_failure: 0,
            counterexample: None,
        }),
    };
    let log = log.into_inner();
    let localisation = match (options.localise, family.check()) {
        (true, Check::AgainstReference(layout)) => {
            log.localise(failure.as_ref(), models, layout, tol)
        }
        _ => None,
    };
    let noise_floor = match family.check() {
        Check::AgainstReference(_) => log.noise_floor(failure.as_ref(), models, tol),
        Check::Isolation => Vec::new(),
    };
    log.into_result(
        name,
        policy,
        cases,
        runs.into_inner(),
        replayed_seeds,
        failure,
        localisation,
        noise_floor,
        start,
    )
}

/// What a family run saw, case by case: the tightest case, every verdict and the headline
/// figures for plots.
#[derive(Default)]
struct CaseLog {
    tightest: Option<(Verdict, Vec<Protein>)>,
    verdicts: Vec<Verdict>,
    /// Verdicts and case counts by the stratum of each case's longest protein.
    by_stratum: BTreeMap<Stratum, (usize, Vec<Verdict>)>,
    points: Vec<CasePoint>,
}

impl CaseLog {
    fn record(&mut self, proteins: &[Protein], verdicts: &[Verdict]) {
        self.verdicts.extend(verdicts.iter().cloned());
        if let Some(longest) = proteins.iter().map(|p| p.residues.len()).max() {
            let (cases, of_stratum) = self
                .by_stratum
                .entry(Stratum::of_length(longest))
                .or_default();
            *cases += 1;
            of_stratum.extend(verdicts.iter().cloned());
        }
        let measured = |id| {
            verdicts
                .iter()
                .find(|v| v.property == id)
                .map(|v| v.measured)
        };
        if let (Some(pooled_cosine), Some(relative_l2)) = (
            measured(PropertyId::PooledCosine),
            measured(PropertyId::RelativeL2),
        ) {
            self.points.push(CasePoint {
                lengths: proteins.iter().map(|p| p.residues.len()).collect(),
                pooled_cosine,
                relative_l2,
            });
        }
        if let Some(v) = tightest(verdicts) {
            let replace = match self.tightest.as_ref() {
                None => true,
                Some((best, _)) => {
                    let pair = [best.clone(), v.clone()];
                    tightest(&pair).is_some_and(|t| std::ptr::eq(t, &pair[1]))
                }
            };
            if replace {
                self.tightest = Some((v.clone(), proteins.to_vec()));
            }
        }
    }

    /// The case a report explains: the shrunk failing one, else the tightest.
    fn explained_case<'a>(
        &'a self,
        failure: Option<&'a FamilyFailure>,
    ) -> Option<&'a Vec<Protein>> {
        failure
            .map(|f| &f.minimal)
            .filter(|m| !m.is_empty())
            .or(self.tightest.as_ref().map(|(_, p)| p))
    }

    /// Localises the [`CaseLog::explained_case`].
    fn localise<B: Backend>(
        &self,
        failure: Option<&FamilyFailure>,
        models: Models<'_, B>,
        layout: Layout,
        tol: &Tolerances,
    ) -> Option<Localisation> {
        self.explained_case(failure)
            .map(|proteins| localise_case(models, proteins, layout, tol.relative_l2))
    }

    /// The floor model against the reference on the [`CaseLog::explained_case`].
    fn noise_floor<B: Backend>(
        &self,
        failure: Option<&FamilyFailure>,
        models: Models<'_, B>,
        tol: &Tolerances,
    ) -> Vec<Verdict> {
        match (models.floor, self.explained_case(failure)) {
            (Some(floor), Some(proteins)) => {
                let floor_models = Models::new(models.reference, floor);
                check_against_reference(floor_models, proteins, Layout::Padded, tol)
            }
            _ => Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn into_result(
        self,
        family: String,
        policy: Precision,
        cases: u32,
        runs: usize,
        replayed_seeds: usize,
        failure: Option<FamilyFailure>,
        localisation: Option<Localisation>,
        noise_floor: Vec<Verdict>,
        start: Instant,
    ) -> FamilyResult {
        let (tightest, tightest_proteins) = self.tightest.unzip();
        let by_stratum = if self.by_stratum.len() > 1 {
            self.by_stratum
                .into_iter()
                .map(|(stratum, (cases, verdicts))| StratumMetrics {
                    stratum,
                    cases,
                    metrics: summarise(&verdicts),
                })
                .collect()
        } else {
            Vec::new()
        };
        FamilyResult {
            family,
            policy,
            cases,
            runs,
            replayed_seeds,
            passed: failure.is_none(),
            tightest,
            tightest_case: tightest_proteins
                .as_deref()
                .map(fasta_text)
                .unwrap_or_default(),
            failure,
            localisation,
            metrics: summarise(&self.verdicts),
            points: self.points,
            by_stratum,
            noise_floor,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// Judges real proteins (a user's FASTA) against FP32: every record once, in padded batches
/// of up to [`MIXED_BATCH_MAX`] records of similar length. Nothing is generated, so nothing
/// shrinks: the failure reported is the failing batch of the shortest records, and the
/// FASTA file itself is what replays it.
pub fn run_proteins<B: Backend>(
    name: &str,
    proteins: &[Protein],
    models: Models<'_, B>,
    tol: &Tolerances,
    options: &RunOptions,
) -> FamilyResult {
    let start = Instant::now();
    let mut order: Vec<&Protein> = proteins.iter().collect();
    order.sort_by_key(|p| p.residues.len());
    let mut log = CaseLog::default();
    let mut failure: Option<FamilyFailure> = None;
    let mut runs = 0usize;
    for chunk in order.chunks(MIXED_BATCH_MAX) {
        let batch: Vec<Protein> = chunk.iter().map(|&p| p.clone()).collect();
        runs += 1;
        let verdicts =
            options
                .selection
                .keep(check_against_reference(models, &batch, Layout::Padded, tol));
        log.record(&batch, &verdicts);
        let failed: Vec<Verdict> = verdicts.iter().filter(|v| !v.passed).cloned().collect();
        if failure.is_none() && (!failed.is_empty() || verdicts.is_empty()) {
            failure = Some(FamilyFailure {
                message: failures(&verdicts)
                    .unwrap_or_else(|| "none of the selected properties was judged".into()),
                verdicts: failed,
                minimal_fasta: fasta_text(&batch),
                minimal: batch,
                cases_to_failure: runs,
                counterexample: None,
            });
        }
    }
    let localisation = if options.localise {
        log.localise(failure.as_ref(), models, Layout::Padded, tol)
    } else {
        None
    };
    let policy = models.test.plan.precision;
    let noise_floor = log.noise_floor(failure.as_ref(), models, tol);
    log.into_result(
        name.to_string(),
        policy,
        proteins.len() as u32,
        runs,
        0,
        failure,
        localisation,
        noise_floor,
        start,
    )
}

/// Seeds saved in a proptest persistence file (lines `cc <hex> ...`); 0 when it is absent.
fn count_seeds(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter(|l| l.starts_with("cc ")).count())
        .unwrap_or(0)
}

/// The generator seed of one family in a campaign seeded with `seed`: families draw
/// different cases, each reproducible on its own.
fn family_seed(seed: u64, family: &str) -> [u8; 32] {
    // FNV-1a of the name: stable across platforms and Rust versions (unlike `Hash`).
    let name_hash = family.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut bytes = [0u8; 32];
    StdRng::seed_from_u64(seed ^ name_hash).fill_bytes(&mut bytes);
    bytes
}

/// Files a regressions folder holds for one policy, by family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedFiles {
    /// Families with saved seeds or counterexamples, each with its files.
    pub families: Vec<(Family, Option<PathBuf>, Option<PathBuf>)>,
    /// Files of this policy whose family name is unknown: they cannot be replayed, and a
    /// replay must say so rather than skip them.
    pub unknown: Vec<PathBuf>,
}

/// Lists the seeds and counterexamples saved for `policy` under `regressions` (nothing when
/// the folder does not exist).
pub fn saved_files(regressions: &Path, policy: Precision) -> std::io::Result<SavedFiles> {
    let prefix = format!("{}__", policy.name());
    let mut saved = SavedFiles::default();
    let mut add = |dir: PathBuf, ext: &str, seeds: bool| -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(ext))
                .and_then(|n| n.strip_prefix(&prefix))
            else {
                continue;
            };
            let Ok(family) = stem.parse::<Family>() else {
                saved.unknown.push(path);
                continue;
            };
            match saved.families.iter_mut().find(|(f, ..)| *f == family) {
                Some(entry) if seeds => entry.1 = Some(path),
                Some(entry) => entry.2 = Some(path),
                None if seeds => saved.families.push((family, Some(path), None)),
                None => saved.families.push((family, None, Some(path))),
            }
        }
        Ok(())
    };
    add(regressions.to_path_buf(), ".txt", true)?;
    add(regressions.join("counterexamples"), ".fasta", false)?;
    Ok(saved)
}

/// The outcome of replaying one saved counterexample.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Replay {
    pub file: PathBuf,
    pub family: String,
    pub sequences: usize,
    pub passed: bool,
    /// The failed verdicts, or why the file could not be replayed.
    pub failure: Option<String>,
    pub tightest: Option<Verdict>,
}

/// Replays a saved counterexample FASTA through `family`'s check and `selection`.
pub fn replay_counterexample<B: Backend>(
    family: Family,
    path: &Path,
    models: Models<'_, B>,
    tol: &Tolerances,
    selection: &Selection,
) -> Replay {
    let proteins = match read_fasta(path, NormaliseOptions::default()) {
        Ok(p) => p,
        Err(e) => {
            return Replay {
                file: path.to_path_buf(),
                family: family.name(),
                sequences: 0,
                passed: false,
                failure: Some(format!("cannot read the counterexample: {e}")),
                tightest: None,
            };
        }
    };
    let verdicts = selection.keep(family.judge(models, &proteins, tol));
    let failure = if verdicts.is_empty() {
        Some("no selected property applies to this family: nothing was judged".to_string())
    } else {
        failures(&verdicts)
    };
    Replay {
        file: path.to_path_buf(),
        family: family.name(),
        sequences: proteins.len(),
        passed: failure.is_none(),
        failure,
        tightest: tightest(&verdicts).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_name_parses_back_to_its_family() {
        let all = Family::catalogue();
        for f in &all {
            assert_eq!(f.name().parse::<Family>(), Ok(*f));
        }
        let mut names: Vec<String> = all.iter().map(Family::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "family names are unique");
        assert!("equivalence_tiny".parse::<Family>().is_err());
    }

    #[test]
    fn family_seeds_differ_by_family_and_repeat_by_seed() {
        assert_eq!(family_seed(7, "a"), family_seed(7, "a"));
        assert_ne!(family_seed(7, "a"), family_seed(7, "b"));
        assert_ne!(family_seed(7, "a"), family_seed(8, "a"));
    }

    #[test]
    fn saved_files_pair_seeds_with_counterexamples_and_flag_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("counterexamples")).unwrap();
        for f in [
            "f16__stratum-tiny.txt",
            "f16__nonsense.txt",
            "bf16__stratum-tiny.txt",
            "counterexamples/f16__stratum-tiny.fasta",
            "counterexamples/f16__up-to-long.fasta",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let saved = saved_files(root, Precision::F16).unwrap();
        assert_eq!(saved.families.len(), 2);
        assert_eq!(saved.families[0].0, Family::Stratum(Stratum::Tiny));
        assert!(saved.families[0].1.is_some() && saved.families[0].2.is_some());
        assert_eq!(saved.families[1].0, Family::UpTo(Stratum::Long));
        assert_eq!(saved.unknown, vec![root.join("f16__nonsense.txt")]);
        let none = saved_files(&root.join("missing"), Precision::F16).unwrap();
        assert_eq!(none, SavedFiles::default());
    }
}
