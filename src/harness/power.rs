//! Detection power, measured as mutation testing measures a test suite: a degradation of
//! size e is injected into the policy under test ([`crate::model::FaultSet`], set at
//! construction), each property family judges fresh generated cases against the FP32
//! reference, and the fraction of independent trials (one generator seed each) in which the
//! family reports a failure within n cases is its probability of detection at n cases.
//!
//! A trial judges up to the largest case count and records the case at which the family
//! first failed, so one set of trials gives the detection at every smaller count (the CI
//! count and the campaign count are prefixes of one run). The FP32 reference's states of a
//! case are computed once and shared by every degradation.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::backend::Backend;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::cases::{CaseStates, Models, Oracle, check_against_states, run_case};
use super::driver::family_seed;
use super::family::{Check, Family};
use super::subject::Subject;
use super::verdict::{PropertyId, Tolerances, Verdict, tightest};
use crate::batch::Layout;
use crate::input::Protein;
use crate::model::{Esm2, FaultSet};

/// Detection probability that counts as detected: "detected with >= 95% probability".
pub const DETECTED: f64 = 0.95;

/// A degradation of the policy under test, of size e where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Degradation {
    /// One layer's output multiplied by 1 + e.
    ScaleLayerOutput,
    /// Every weight and bias of one layer's linear maps multiplied by 1 +- e (fixed
    /// pseudo-random signs).
    PerturbWeights,
    /// One layer's attention logits multiplied by 1 + e (its query projection scaled).
    ScaleAttentionLogits,
    /// One layer's output rounded to f16 and back (no size: one f16 rounding, relative
    /// 2^-11 per value). A no-op where that output is f16 already.
    RoundToF16,
    /// Attention of packed batches leaks across sequences (no size; every layer): what the
    /// isolation and packed families exist to catch.
    LeakAcrossSequences,
}

impl Degradation {
    pub const ALL: [Degradation; 5] = [
        Degradation::ScaleLayerOutput,
        Degradation::PerturbWeights,
        Degradation::ScaleAttentionLogits,
        Degradation::RoundToF16,
        Degradation::LeakAcrossSequences,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Degradation::ScaleLayerOutput => "scale-layer-output",
            Degradation::PerturbWeights => "perturb-weights",
            Degradation::ScaleAttentionLogits => "scale-attention-logits",
            Degradation::RoundToF16 => "round-to-f16",
            Degradation::LeakAcrossSequences => "leak-across-sequences",
        }
    }

    /// Whether the degradation has a size e.
    pub fn is_sized(self) -> bool {
        !matches!(
            self,
            Degradation::RoundToF16 | Degradation::LeakAcrossSequences
        )
    }

    /// The faults of this degradation of size `e` in layer `layer` (0-based).
    pub fn faults(self, layer: usize, e: f64) -> FaultSet {
        let factor = (1.0 + e) as f32;
        match self {
            Degradation::ScaleLayerOutput => FaultSet {
                scale_layer_output: Some((layer, factor)),
                ..FaultSet::none()
            },
            Degradation::PerturbWeights => FaultSet {
                perturb_layer_weights: Some((layer, e as f32)),
                ..FaultSet::none()
            },
            Degradation::ScaleAttentionLogits => FaultSet {
                scale_attention_logits: Some((layer, factor)),
                ..FaultSet::none()
            },
            Degradation::RoundToF16 => FaultSet {
                round_layer_output_to_f16: Some(layer),
                ..FaultSet::none()
            },
            Degradation::LeakAcrossSequences => FaultSet {
                attention_leaks_across_sequences: true,
                ..FaultSet::none()
            },
        }
    }
}

impl crate::named::Named for Degradation {
    const VALUES: &'static [Self] = &Degradation::ALL;
    const WHAT: &'static str = "degradation";

    fn name(self) -> &'static str {
        Degradation::name(self)
    }
}

crate::impl_named!(Degradation);

/// What a power measurement runs.
#[derive(Debug, Clone)]
pub struct PowerSpec {
    /// Families: those that compare with FP32 ([`Check::AgainstReference`]) and the
    /// isolation families ([`Check::Isolation`]: the policy against itself, alone and among
    /// batch-mates, which only degradations that couple sequences can move).
    pub families: Vec<Family>,
    pub degradations: Vec<Degradation>,
    /// Sizes e of the sized degradations.
    pub sizes: Vec<f64>,
    /// Independent trials (generator seeds `seed`, `seed + 1`, ...) per cell.
    pub trials: usize,
    /// Case counts at which detection is read (e.g. the CI count and a campaign's); a trial
    /// judges up to the largest.
    pub counts: Vec<u32>,
    pub seed: u64,
    /// The degraded layer (0-based).
    pub layer: usize,
}

/// Why a power measurement cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerError {
    #[error(
        "family {0} does not compare with FP32 (isolation): degradations of the model do not change what it checks"
    )]
    NotAgainstReference(String),
    #[error(
        "family {0} judges the checkpoint's trained heads: power measures the families of the \
         backbone only (the head bounds' measurements: results/heads-bf16/README.md)"
    )]
    HeadFamily(String),
    #[error("layer {layer} does not exist: the model has {layers} layers (0-based)")]
    NoSuchLayer { layer: usize, layers: usize },
    #[error("nothing to measure: {0}")]
    Empty(&'static str),
    #[error("size e = {0} is not a positive finite number")]
    BadSize(f64),
    #[error("cannot generate a case of {family}: {reason}")]
    Generate { family: String, reason: String },
    #[error("{0}")]
    Subject(String),
}

/// One family under one degradation of one size (or none: the fault-free baseline).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PowerCell {
    pub family: String,
    /// `None` for the fault-free baseline.
    pub degradation: Option<Degradation>,
    /// e; `None` for degradations without a size and the baseline.
    pub size: Option<f64>,
    /// Per trial, the case (1-based) at which the family first failed; `None` when every
    /// case up to the largest count held.
    pub first_failure: Vec<Option<usize>>,
    /// Per count of [`PowerSpec::counts`], the fraction of trials that failed within it.
    pub detection: Vec<(u32, f64)>,
    /// The property that failed first, and in how many trials.
    pub caught_by: BTreeMap<PropertyId, usize>,
    /// Cases judged over all trials (a trial stops at its first failure).
    pub cases_judged: usize,
    /// Failures per case judged (trials that failed over cases judged; the geometric
    /// estimate of one case's probability of failing).
    pub per_case_rate: f64,
    /// The largest fraction of a tolerance any held case used, and by which property: how
    /// far below every threshold an undetected degradation stayed.
    pub max_used: f64,
    pub max_used_property: Option<PropertyId>,
    /// The median over held cases of the fraction of a tolerance the tightest property used.
    pub median_used: f64,
    /// The relative L2 error against FP32 over the cases that held (median, largest): what
    /// the degradation adds to the policy's own error, read against the bound.
    pub relative_l2_median: f64,
    pub relative_l2_max: f64,
    /// Per property, over every case judged (failing ones too) and every verdict (those the
    /// judge does not count too), the measured value that used most of its tolerance: how
    /// far a fault-free subject went (e.g. the largest twin-error ratio a foreign stack
    /// reached, whatever judge decided).
    #[serde(default)]
    pub worst_measured: BTreeMap<PropertyId, f64>,
}

impl PowerCell {
    /// The detection at `count` cases.
    pub fn detection_at(&self, count: u32) -> Option<f64> {
        self.detection
            .iter()
            .find(|(n, _)| *n == count)
            .map(|(_, p)| *p)
    }

    /// Cases one trial needs for [`DETECTED`] probability by the per-case rate:
    /// `ln(0.05) / ln(1 - rate)`; `None` when no case failed.
    pub fn cases_for_detection(&self) -> Option<f64> {
        match self.per_case_rate {
            r if r <= 0.0 || r.is_nan() => None,
            r if r >= 1.0 => Some(1.0),
            r => Some(((1.0 - DETECTED).ln() / (1.0 - r).ln()).ceil()),
        }
    }
}

/// The smallest size detected with >= [`DETECTED`] probability, per family, degradation and
/// count.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Smallest {
    pub family: String,
    pub degradation: Degradation,
    pub count: u32,
    /// `None` when no size of the grid reached it (for unsized degradations: not detected).
    pub size: Option<f64>,
    /// For unsized degradations: whether it was detected.
    pub detected: bool,
}

/// What a power measurement found.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PowerReport {
    /// Which verdicts decided a failure (in-process power: the bound).
    #[serde(default)]
    pub judge: Judge,
    pub layer: usize,
    pub trials: usize,
    pub counts: Vec<u32>,
    pub seed: u64,
    pub sizes: Vec<f64>,
    pub tolerances: Tolerances,
    /// Fault-free cells, one per family: the false-alarm rate (should be 0).
    pub baseline: Vec<PowerCell>,
    pub cells: Vec<PowerCell>,
    pub smallest: Vec<Smallest>,
    pub seconds: f64,
}

impl PowerSpec {
    /// Checks the spec against a model of `layers` layers.
    pub fn check(&self, layers: usize) -> Result<(), PowerError> {
        if self.families.is_empty() {
            return Err(PowerError::Empty("no family"));
        }
        if let Some(f) = self.families.iter().find(|f| f.head().is_some()) {
            return Err(PowerError::HeadFamily(f.name()));
        }
        if self.degradations.is_empty() {
            return Err(PowerError::Empty("no degradation"));
        }
        if self.trials == 0 {
            return Err(PowerError::Empty("zero trials"));
        }
        if self.counts.is_empty() || self.counts.contains(&0) {
            return Err(PowerError::Empty("case counts must be given and positive"));
        }
        if self.degradations.iter().any(|d| d.is_sized()) && self.sizes.is_empty() {
            return Err(PowerError::Empty("no size e for a sized degradation"));
        }
        if let Some(&e) = self.sizes.iter().find(|e| !(e.is_finite() && **e > 0.0)) {
            return Err(PowerError::BadSize(e));
        }
        if self.layer >= layers {
            return Err(PowerError::NoSuchLayer {
                layer: self.layer,
                layers,
            });
        }
        Ok(())
    }

    /// The report of cells measured under `judge` since `started`.
    pub fn report(
        &self,
        judge: Judge,
        tolerances: Tolerances,
        baseline: Vec<PowerCell>,
        cells: Vec<PowerCell>,
        started: Instant,
    ) -> PowerReport {
        let mut sizes = self.sizes.clone();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        PowerReport {
            judge,
            layer: self.layer,
            trials: self.trials,
            counts: self.counts.clone(),
            seed: self.seed,
            sizes,
            tolerances,
            smallest: smallest_detected(&cells, self),
            baseline,
            cells,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Cells measured per family: the fault-free one and one per (degradation, size).
    pub fn cells_per_family(&self) -> usize {
        self.grid().len() + 1
    }

    fn max_cases(&self) -> usize {
        self.counts.iter().copied().max().unwrap_or(0) as usize
    }

    /// The (degradation, size) pairs measured, sized ones by increasing size.
    fn grid(&self) -> Vec<(Degradation, Option<f64>)> {
        let mut sizes = self.sizes.clone();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        self.degradations
            .iter()
            .flat_map(|&d| {
                if d.is_sized() {
                    sizes.iter().map(|&e| (d, Some(e))).collect::<Vec<_>>()
                } else {
                    vec![(d, None)]
                }
            })
            .collect()
    }
}

/// Which of a case's verdicts decide that it failed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Judge {
    /// The fixed bounds of the precision: every property but the twin-error ratio.
    #[default]
    Bound,
    /// The bounds and the twin-error ratio: each case's error against FP32 held within 2x
    /// our own same-precision policy's on the same case (`fuzz --twin-judge`).
    BoundAndTwin,
}

impl Judge {
    pub fn name(self) -> &'static str {
        match self {
            Judge::Bound => "bound",
            Judge::BoundAndTwin => "bound-and-twin",
        }
    }

    fn counts(self, verdict: &Verdict) -> bool {
        self == Judge::BoundAndTwin || verdict.property != PropertyId::TwinErrorRatio
    }
}

impl std::fmt::Display for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Judges one case, `(trial, case, proteins)`, into its verdicts.
type JudgeCase<'a> = dyn FnMut(usize, usize, &[Protein]) -> Result<Vec<Verdict>, PowerError> + 'a;

/// The cases of one family's trials: `cases[trial][case]`, generated once and judged under
/// every degradation.
struct Trials {
    family: Family,
    cases: Vec<Vec<Vec<Protein>>>,
}

impl Trials {
    fn generate(family: Family, spec: &PowerSpec) -> Result<Self, PowerError> {
        let strategy = family.strategy();
        let n = spec.max_cases();
        let cases = (0..spec.trials)
            .map(|t| {
                let rng = TestRng::from_seed(
                    RngAlgorithm::ChaCha,
                    &family_seed(spec.seed.wrapping_add(t as u64), &family.name()),
                );
                let mut runner = TestRunner::new_with_rng(Config::default(), rng);
                (0..n)
                    .map(|_| {
                        strategy
                            .new_tree(&mut runner)
                            .map(|tree| tree.current())
                            .map_err(|reason| PowerError::Generate {
                                family: family.name(),
                                reason: reason.to_string(),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { family, cases })
    }

    /// Judges the trials with `judge_case(trial, case, proteins)`, each trial up to its first
    /// failure under every judge (one call per case serves them all); one cell per judge.
    fn judge(
        &self,
        judges: &[Judge],
        spec: &PowerSpec,
        degradation: Option<Degradation>,
        size: Option<f64>,
        judge_case: &mut JudgeCase<'_>,
    ) -> Result<Vec<PowerCell>, PowerError> {
        let mut tallies: Vec<Tally> = judges.iter().map(|_| Tally::default()).collect();
        for (t, cases) in self.cases.iter().enumerate() {
            let mut failed_at: Vec<Option<usize>> = vec![None; judges.len()];
            for (i, proteins) in cases.iter().enumerate() {
                if failed_at.iter().all(Option::is_some) {
                    break;
                }
                let verdicts = judge_case(t, i, proteins)?;
                for ((&judge, tally), failed) in judges.iter().zip(&mut tallies).zip(&mut failed_at)
                {
                    if failed.is_none() && tally.judge(judge, &verdicts) {
                        *failed = Some(i + 1);
                    }
                }
            }
            for (tally, failed) in tallies.iter_mut().zip(failed_at) {
                tally.first_failure.push(failed);
            }
        }
        Ok(tallies
            .into_iter()
            .map(|tally| tally.cell(self.family.name(), spec, degradation, size))
            .collect())
    }
}

/// What one judge saw over a cell's trials.
#[derive(Default)]
struct Tally {
    first_failure: Vec<Option<usize>>,
    caught_by: BTreeMap<PropertyId, usize>,
    cases_judged: usize,
    used: Vec<(f64, PropertyId)>,
    relative_l2: Vec<f64>,
    /// Per property: (largest fraction of the tolerance used, its measured value).
    worst: BTreeMap<PropertyId, (f64, f64)>,
}

impl Tally {
    /// Counts one case; whether it failed under `judge`.
    fn judge(&mut self, judge: Judge, verdicts: &[Verdict]) -> bool {
        for v in verdicts {
            let worst = self
                .worst
                .entry(v.property)
                .or_insert((f64::NEG_INFINITY, f64::NAN));
            if v.used_or_infinite() > worst.0 {
                *worst = (v.used_or_infinite(), v.measured);
            }
        }
        let counted: Vec<Verdict> = verdicts
            .iter()
            .filter(|v| judge.counts(v))
            .cloned()
            .collect();
        self.cases_judged += 1;
        if let Some(v) = counted.iter().find(|v| !v.passed) {
            *self.caught_by.entry(v.property).or_default() += 1;
            return true;
        }
        if let Some(v) = tightest(&counted) {
            self.used.push((v.used_or_infinite(), v.property));
        }
        self.relative_l2.extend(
            counted
                .iter()
                .filter(|v| {
                    matches!(
                        v.property,
                        PropertyId::RelativeL2 | PropertyId::PooledRelativeL2
                    )
                })
                .map(|v| v.measured),
        );
        false
    }

    fn cell(
        mut self,
        family: String,
        spec: &PowerSpec,
        degradation: Option<Degradation>,
        size: Option<f64>,
    ) -> PowerCell {
        let trials = self.first_failure.len().max(1) as f64;
        let detection = spec
            .counts
            .iter()
            .map(|&n| {
                let hits = self
                    .first_failure
                    .iter()
                    .filter(|f| f.is_some_and(|at| at <= n as usize))
                    .count();
                (n, hits as f64 / trials)
            })
            .collect();
        let failures = self.first_failure.iter().filter(|f| f.is_some()).count();
        self.used.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (max_used, max_used_property) = self
            .used
            .last()
            .map_or((f64::NAN, None), |&(u, p)| (u, Some(p)));
        let median_used = self.used.get(self.used.len() / 2).map_or(f64::NAN, |u| u.0);
        self.relative_l2.sort_by(f64::total_cmp);
        let relative_l2_median = self.relative_l2.get(self.relative_l2.len() / 2).copied();
        PowerCell {
            family,
            degradation,
            size,
            first_failure: self.first_failure,
            detection,
            caught_by: self.caught_by,
            cases_judged: self.cases_judged,
            per_case_rate: failures as f64 / self.cases_judged.max(1) as f64,
            max_used,
            max_used_property,
            median_used,
            relative_l2_median: relative_l2_median.unwrap_or(f64::NAN),
            relative_l2_max: self.relative_l2.last().copied().unwrap_or(f64::NAN),
            worst_measured: self.worst.into_iter().map(|(p, (_, m))| (p, m)).collect(),
        }
    }
}

/// Measures `spec` on models built by `build` (the policy under test with the given faults;
/// `FaultSet::none()` for the baseline) against `reference`; `progress` sees each cell.
pub fn run_power<B: Backend>(
    reference: &Esm2<B>,
    build: &mut dyn FnMut(FaultSet) -> Esm2<B>,
    tol: &Tolerances,
    spec: &PowerSpec,
    progress: &mut dyn FnMut(&PowerCell, f64),
) -> Result<PowerReport, PowerError> {
    spec.check(reference.config.num_hidden_layers)?;
    let start = Instant::now();
    let mut baseline = Vec::new();
    let mut cells = Vec::new();
    for &family in &spec.families {
        let trials = Trials::generate(family, spec)?;
        // The FP32 reference's states of a case, computed once for every degradation (for
        // families judged against FP32 in one layout; the others run their check whole).
        let mut reference_states: Vec<Vec<Option<CaseStates>>> =
            trials.cases.iter().map(|t| vec![None; t.len()]).collect();
        let mut cell = |faults: Option<(Degradation, Option<f64>)>| {
            let test = build(faults.map_or(FaultSet::none(), |(d, e)| {
                d.faults(spec.layer, e.unwrap_or(0.0))
            }));
            let mut judge_case = |t: usize, i: usize, proteins: &[Protein]| {
                Ok(match family.check() {
                    Check::AgainstReference(layout) => {
                        let states = reference_states[t][i]
                            .get_or_insert_with(|| run_case(reference, proteins, Layout::Padded));
                        check_against_states(&test, states, proteins, layout, tol)
                    }
                    _ => family.judge(Models::new(reference, &test), proteins, tol),
                })
            };
            let (degradation, size) = faults.unzip();
            let cell = trials
                .judge(
                    &[Judge::Bound],
                    spec,
                    degradation,
                    size.flatten(),
                    &mut judge_case,
                )?
                .remove(0);
            progress(&cell, start.elapsed().as_secs_f64());
            Ok::<_, PowerError>(cell)
        };
        baseline.push(cell(None)?);
        for (degradation, size) in spec.grid() {
            cells.push(cell(Some((degradation, size)))?);
        }
    }
    Ok(spec.report(Judge::Bound, *tol, baseline, cells, start))
}

/// A deployment measured by `power --deployment`: subjects judged by pooled rows against
/// the FP32 oracle, each case once, under every judge at once.
pub struct SubjectPower<'a, B: Backend> {
    /// The FP32 oracle; give it a memo, so a case is run once for every subject.
    pub oracle: Oracle<'a, B>,
    /// Our own policy of the deployment's precision (remembered: [`PooledOnce`]), for the
    /// twin judge; without it only the bound judges.
    pub twin: Option<&'a dyn Subject>,
    /// The fault-free deployment: its failures are false alarms.
    pub baseline: &'a dyn Subject,
}

/// Measures `spec` on subjects: the false alarms of the fault-free `power.baseline`, and the
/// detection of each degradation on the subject `start` starts with it (a deployment with
/// that fault, dropped after its cell). One report per judge (the bound, and the bound with
/// the twin where there is a twin), from one call per case.
pub fn run_power_on_subjects<B: Backend>(
    power: &SubjectPower<'_, B>,
    start: &mut dyn FnMut(Degradation, Option<f64>) -> Result<Box<dyn Subject>, PowerError>,
    tol: &Tolerances,
    spec: &PowerSpec,
    progress: &mut dyn FnMut(Judge, &PowerCell, f64),
) -> Result<Vec<PowerReport>, PowerError> {
    spec.check(power.oracle.model.config.num_hidden_layers)?;
    let started = Instant::now();
    let judges: Vec<Judge> = match power.twin {
        Some(_) => vec![Judge::Bound, Judge::BoundAndTwin],
        None => vec![Judge::Bound],
    };
    let mut baseline = vec![Vec::new(); judges.len()];
    let mut cells = vec![Vec::new(); judges.len()];
    for &family in &spec.families {
        let trials = Trials::generate(family, spec)?;
        let mut measure = |subject: &dyn Subject, degradation: Option<Degradation>, size| {
            let mut judge_case = |_: usize, _: usize, proteins: &[Protein]| {
                let verdicts =
                    family.judge_subject(power.oracle, subject, power.twin, proteins, tol);
                if subject.exhausted() {
                    return Err(PowerError::Subject(format!(
                        "the deployment under test gave up ({})",
                        verdicts
                            .iter()
                            .find(|v| !v.passed)
                            .map_or("no answer", |v| v.detail.as_str())
                    )));
                }
                Ok(verdicts)
            };
            let found = trials.judge(&judges, spec, degradation, size, &mut judge_case)?;
            for (&judge, cell) in judges.iter().zip(&found) {
                progress(judge, cell, started.elapsed().as_secs_f64());
            }
            Ok::<_, PowerError>(found)
        };
        for (to, cell) in baseline
            .iter_mut()
            .zip(measure(power.baseline, None, None)?)
        {
            to.push(cell);
        }
        for (degradation, size) in spec.grid() {
            let subject = start(degradation, size)?;
            let found = measure(subject.as_ref(), Some(degradation), size)?;
            for (to, cell) in cells.iter_mut().zip(found) {
                to.push(cell);
            }
        }
    }
    Ok(judges
        .into_iter()
        .zip(baseline.into_iter().zip(cells))
        .map(|(judge, (baseline, cells))| spec.report(judge, *tol, baseline, cells, started))
        .collect())
}

/// Per family, degradation and count, the smallest size whose detection reached
/// [`DETECTED`] (for unsized degradations, whether it did).
pub fn smallest_detected(cells: &[PowerCell], spec: &PowerSpec) -> Vec<Smallest> {
    let mut out = Vec::new();
    for family in &spec.families {
        for &degradation in &spec.degradations {
            for &count in &spec.counts {
                let of: Vec<&PowerCell> = cells
                    .iter()
                    .filter(|c| c.family == family.name() && c.degradation == Some(degradation))
                    .collect();
                let hits = |c: &PowerCell| c.detection_at(count).is_some_and(|p| p >= DETECTED);
                let size = of
                    .iter()
                    .filter(|c| hits(c))
                    .filter_map(|c| c.size)
                    .min_by(f64::total_cmp);
                out.push(Smallest {
                    family: family.name(),
                    degradation,
                    count,
                    size,
                    detected: of.iter().any(|c| hits(c)),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::strategies::Stratum;

    fn cell(size: f64, first: Vec<Option<usize>>, counts: &[u32]) -> PowerCell {
        let trials = first.len() as f64;
        PowerCell {
            family: "stratum-tiny".into(),
            degradation: Some(Degradation::ScaleLayerOutput),
            size: Some(size),
            detection: counts
                .iter()
                .map(|&n| {
                    let hits = first.iter().filter(|f| f.is_some_and(|a| a <= n as usize));
                    (n, hits.count() as f64 / trials)
                })
                .collect(),
            first_failure: first,
            caught_by: BTreeMap::new(),
            cases_judged: 1,
            per_case_rate: 0.0,
            max_used: 0.0,
            max_used_property: None,
            median_used: 0.0,
            relative_l2_median: 0.0,
            relative_l2_max: 0.0,
            worst_measured: BTreeMap::new(),
        }
    }

    fn spec() -> PowerSpec {
        PowerSpec {
            families: vec![Family::Stratum(Stratum::Tiny)],
            degradations: vec![Degradation::ScaleLayerOutput],
            sizes: vec![1e-3, 1e-2],
            trials: 20,
            counts: vec![8, 64],
            seed: 1,
            layer: 2,
        }
    }

    #[test]
    fn the_smallest_detected_size_needs_95_percent_at_its_count() {
        let counts = [8, 64];
        // 1e-3: 19 of 20 trials fail, but only by case 40; 1e-2: all fail at case 1.
        let mut late = vec![Some(40); 19];
        late.push(None);
        let cells = vec![
            cell(1e-3, late, &counts),
            cell(1e-2, vec![Some(1); 20], &counts),
        ];
        let s = smallest_detected(&cells, &spec());
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].count, s[0].size), (8, Some(1e-2)));
        assert_eq!((s[1].count, s[1].size), (64, Some(1e-3)));
        // 18 of 20 is 90%: not detected.
        let mut short = vec![Some(1); 18];
        short.extend([None, None]);
        let s = smallest_detected(&[cell(1e-3, short, &counts)], &spec());
        assert!(s.iter().all(|s| s.size.is_none() && !s.detected), "{s:?}");
    }

    #[test]
    fn a_spec_that_would_measure_nothing_is_refused() {
        assert_eq!(spec().check(6), Ok(()));
        let bad = |f: fn(&mut PowerSpec)| {
            let mut s = spec();
            f(&mut s);
            s.check(6).unwrap_err()
        };
        assert!(matches!(bad(|s| s.trials = 0), PowerError::Empty(_)));
        assert!(matches!(bad(|s| s.counts = vec![]), PowerError::Empty(_)));
        assert!(matches!(bad(|s| s.sizes = vec![]), PowerError::Empty(_)));
        assert!(matches!(
            bad(|s| s.sizes = vec![0.0]),
            PowerError::BadSize(_)
        ));
        assert!(matches!(
            bad(|s| s.layer = 6),
            PowerError::NoSuchLayer { .. }
        ));
        // Isolation families are measured too (against the policy itself).
        let mut isolation = spec();
        isolation.families = vec![Family::Isolation(Stratum::Tiny)];
        isolation.check(6).unwrap();
    }

    #[test]
    fn the_rate_gives_the_cases_needed_for_95_percent() {
        let mut c = cell(1e-3, vec![None], &[8]);
        assert_eq!(c.cases_for_detection(), None);
        c.per_case_rate = 0.05;
        // 1 - 0.95^59 = 0.952
        assert_eq!(c.cases_for_detection(), Some(59.0));
    }
}
