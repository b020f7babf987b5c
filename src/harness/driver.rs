//! The family driver: the one way a property family runs, for `cargo test`, `esmfuzz fuzz`
//! and replay alike. It replays a family's saved seeds ([`super::saved`]), generates new
//! cases, shrinks a failure and persists it, and hands back a [`FamilyResult`]
//! ([`super::summary`]).

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::Backend;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cases::{Models, check_against_reference, judge_against, localise_case, run_case};
use super::family::{Check, Family, MIXED_BATCH_MAX};
use super::localise::Localisation;
use super::outliers::{rank, record_errors};
use super::saved::{PolicyKey, SeedsFile, SubjectKey, counterexample_path, seeds_path};
use super::summary::{CaseLog, FamilyFailure, FamilyResult};
use super::verdict::{Selection, Tolerances, Verdict, failures};
use crate::batch::Layout;
use crate::input::{Protein, fasta_text, write_fasta};
use crate::model::Precision;

/// Shrink steps allowed per failure. Each step is a model run: enough to take a 50-residue
/// case down to one residue (the stratum shrinks only after its residues), bounded in time.
pub const MAX_SHRINK_ITERS: u32 = 1024;

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
    /// How long a failure may shrink.
    pub shrink: ShrinkBudget,
}

/// How much shrinking a failure may cost: proptest's `max_shrink_iters` (each step is one
/// case judged: model runs, or calls to a deployment) and `max_shrink_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShrinkBudget {
    /// Shrink steps, each one case judged.
    pub calls: u32,
    /// Wall time in milliseconds; 0 for no limit.
    pub millis: u32,
}

impl Default for ShrinkBudget {
    fn default() -> Self {
        Self {
            calls: MAX_SHRINK_ITERS,
            millis: 0,
        }
    }
}

/// Watches a family run; every method has a do-nothing default.
pub trait Observer {
    /// Whether the run should stop at the next case boundary (a signal asked it to): the
    /// driver then judges no further case and the campaign discards the family it was in.
    fn stop_requested(&self) -> bool {
        false
    }
    /// A model run is about to start (generated, replayed and shrinking cases alike); the
    /// family by its name (a generated family's, or `fasta-<stem>` for a user's proteins).
    fn case_started(&mut self, _family: &str, _run: usize, _proteins: &[Protein]) {}
    /// A case has been judged.
    fn case_judged(
        &mut self,
        _family: &str,
        _run: usize,
        _proteins: &[Protein],
        _verdicts: &[Verdict],
    ) {
    }
}

/// Observes nothing.
impl Observer for () {}

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
    let judge = |proteins: &[Protein]| family.judge(models, proteins, tol);
    let subject = FamilySubject {
        // Files are keyed by the whole policy: a variant's never mix with its plain policy's.
        key: PolicyKey::of(models.test).into(),
        precision: models.test.plan.precision,
        judge: &judge,
    };
    let run = drive_cases(family, &subject, cases, options, &mut *observer);
    let log = run.log;
    let failure = run.failure;
    // A stopped family is discarded: no more model runs for it.
    let stopped = observer.stop_requested();
    let localisation = match (options.localise && !stopped, family.check()) {
        (true, Check::AgainstReference(layout)) => {
            log.localise(failure.as_ref(), models, layout, tol)
        }
        _ => None,
    };
    let noise_floor = match family.check() {
        Check::AgainstReference(_) if !stopped => log.noise_floor(failure.as_ref(), models, tol),
        _ => Vec::new(),
    };
    log.into_result(
        family.name(),
        subject.precision,
        cases,
        run.runs,
        run.replayed_seeds,
        failure,
        localisation,
        noise_floor,
        start,
    )
}

/// What the driver needs of the model under test for one family: the key its saved files
/// go under, the precision reports name, and the family's check on a case (which runs the
/// models: in-process, or a deployment and the FP32 oracle).
pub struct FamilySubject<'a> {
    pub key: SubjectKey,
    pub precision: Precision,
    pub judge: &'a dyn Fn(&[Protein]) -> Vec<Verdict>,
}

/// Runs `family` through `subject.judge`: the family's saved seeds first, then `cases` new
/// cases (none: replay only), shrinking and persisting a failure as [`run_family`] does. No
/// localisation and no noise floor (they trace our own model); a subject that is
/// [`Observer::stop_requested`] ends the family as a signal does.
pub fn run_family_with(
    family: Family,
    subject: &FamilySubject<'_>,
    cases: u32,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> FamilyResult {
    let start = Instant::now();
    let run = drive_cases(family, subject, cases, options, observer);
    run.log.into_result(
        family.name(),
        subject.precision,
        cases,
        run.runs,
        run.replayed_seeds,
        run.failure,
        None,
        Vec::new(),
        start,
    )
}

/// What [`drive_cases`] found.
struct CasesRun {
    log: CaseLog,
    failure: Option<FamilyFailure>,
    runs: usize,
    replayed_seeds: usize,
}

fn drive_cases(
    family: Family,
    subject: &FamilySubject<'_>,
    cases: u32,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> CasesRun {
    let key = &subject.key;
    let name = family.name();
    let seeds = options
        .regressions
        .as_deref()
        .map(|dir| SeedsFile(seeds_path(dir, key.clone(), family)));
    let replayed_seeds = seeds.as_ref().map_or(0, |file| file.seeds().len());
    let config = Config {
        cases,
        failure_persistence: seeds.map(|file| Box::new(file) as _),
        max_shrink_iters: options.shrink.calls,
        max_shrink_time: options.shrink.millis,
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
    let judge = |proteins: &[Protein]| options.selection.keep((subject.judge)(proteins));
    let result = runner.run(&family.strategy(), |proteins| {
        // A rejected case runs no model; proptest gives up after its reject limit.
        if observer.borrow().stop_requested() {
            return Err(TestCaseError::reject("a stop was requested"));
        }
        let run = {
            let mut runs = runs.borrow_mut();
            *runs += 1;
            *runs
        };
        observer.borrow_mut().case_started(&name, run, &proteins);
        let verdicts = judge(&proteins);
        observer
            .borrow_mut()
            .case_judged(&name, run, &proteins, &verdicts);
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
                _ => judge(&minimal).into_iter().filter(|v| !v.passed).collect(),
            };
            let counterexample = options.regressions.as_deref().and_then(|dir| {
                let path = counterexample_path(dir, key.clone(), family);
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
    CasesRun {
        log: log.into_inner(),
        failure,
        runs: runs.into_inner(),
        replayed_seeds,
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
    observer: &mut dyn Observer,
) -> Result<FamilyResult, NoProteins> {
    if proteins.is_empty() {
        return Err(NoProteins {
            name: name.to_string(),
        });
    }
    let start = Instant::now();
    let hidden = models.reference.config.hidden_size;
    let mut records = Vec::with_capacity(proteins.len());
    // Properties 1-6 as `check_against_reference` judges a padded batch, and each record's
    // own error for the outlier rankings.
    let RealBatches { log, failure, runs } =
        judge_batches(name, proteins, options, observer, &mut |chunk, batch| {
            let reference = run_case(models.reference, batch, Layout::Padded);
            let test = run_case(models.test, batch, Layout::Padded);
            records.extend(record_errors(
                &test.last,
                &reference.last,
                batch,
                chunk,
                hidden,
            ));
            judge_against(&test, &reference, batch, hidden, tol)
        });
    // A stopped family is discarded: no more model runs for it.
    let stopped = observer.stop_requested();
    let localisation = if options.localise && !stopped {
        log.localise(failure.as_ref(), models, Layout::Padded, tol)
    } else {
        None
    };
    let policy = models.test.plan.precision;
    let noise_floor = log.noise_floor(failure.as_ref(), models, tol);
    let mut outliers = rank(records);
    if options.localise {
        for index in outliers.to_localise() {
            let one = std::slice::from_ref(&proteins[index]);
            let l = localise_case(models, one, Layout::Padded, tol.relative_l2);
            outliers.set_localisation(index, &l);
        }
    }
    let mut result = log.into_result(
        name.to_string(),
        policy,
        proteins.len() as u32,
        runs,
        0,
        failure,
        localisation,
        noise_floor,
        start,
    );
    result.outliers = Some(outliers);
    Ok(result)
}

/// Judges real proteins through `judge` (the mixed-batch check on any subject): every record
/// once, in batches of up to [`MIXED_BATCH_MAX`] records of similar length, shortest first.
/// Nothing is generated, so nothing shrinks: the failure reported is the first failing
/// batch. Stops between batches when the observer asks (the family is then discarded).
pub fn run_real_with(
    name: &str,
    proteins: &[Protein],
    judge: &dyn Fn(&[Protein]) -> Vec<Verdict>,
    precision: Precision,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<FamilyResult, NoProteins> {
    if proteins.is_empty() {
        return Err(NoProteins {
            name: name.to_string(),
        });
    }
    let start = Instant::now();
    let RealBatches { log, failure, runs } =
        judge_batches(name, proteins, options, observer, &mut |_, batch| {
            judge(batch)
        });
    Ok(log.into_result(
        name.to_string(),
        precision,
        proteins.len() as u32,
        runs,
        0,
        failure,
        None,
        Vec::new(),
        start,
    ))
}

/// A batch's check, given the batch's indices into the proteins and the batch.
type BatchJudge<'a> = dyn FnMut(&[usize], &[Protein]) -> Vec<Verdict> + 'a;

/// What [`judge_batches`] found.
struct RealBatches {
    log: CaseLog,
    failure: Option<FamilyFailure>,
    runs: usize,
}

/// Every record of `proteins` once, in batches of up to [`MIXED_BATCH_MAX`] records of
/// similar length (shortest first), each judged by `judge` (given the batch's indices into
/// `proteins`) and seen by `observer`; the failure is the first failing batch. Stops between
/// batches when the observer asks.
fn judge_batches(
    name: &str,
    proteins: &[Protein],
    options: &RunOptions,
    observer: &mut dyn Observer,
    judge: &mut BatchJudge<'_>,
) -> RealBatches {
    let mut order: Vec<usize> = (0..proteins.len()).collect();
    order.sort_by_key(|&i| proteins[i].residues.len());
    let mut log = CaseLog::default();
    let mut failure: Option<FamilyFailure> = None;
    let mut runs = 0usize;
    for chunk in order.chunks(MIXED_BATCH_MAX) {
        // A stop (a signal) ends the family between batches; the campaign discards it.
        if observer.stop_requested() {
            break;
        }
        let batch: Vec<Protein> = chunk.iter().map(|&i| proteins[i].clone()).collect();
        runs += 1;
        observer.case_started(name, runs, &batch);
        let verdicts = options.selection.keep(judge(chunk, &batch));
        observer.case_judged(name, runs, &batch, &verdicts);
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
    RealBatches { log, failure, runs }
}

/// A set of real proteins with none in it: judging it would pass on nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} holds no protein: a check of nothing would pass on nothing")]
pub struct NoProteins {
    pub name: String,
}

/// The generator seed of one family in a campaign seeded with `seed`: families draw
/// different cases, each reproducible on its own.
pub(super) fn family_seed(seed: u64, family: &str) -> [u8; 32] {
    // FNV-1a of the name: stable across platforms and Rust versions (unlike `Hash`).
    let name_hash = family.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut bytes = [0u8; 32];
    StdRng::seed_from_u64(seed ^ name_hash).fill_bytes(&mut bytes);
    bytes
}

impl CaseLog {
    /// Localises the [`CaseLog::explained_case`].
    pub(super) fn localise<B: Backend>(
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
    pub(super) fn noise_floor<B: Backend>(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_seeds_differ_by_family_and_repeat_by_seed() {
        assert_eq!(family_seed(7, "a"), family_seed(7, "a"));
        assert_ne!(family_seed(7, "a"), family_seed(7, "b"));
        assert_ne!(family_seed(7, "a"), family_seed(8, "a"));
    }
}
