//! What a family run found: the summaries of every property's measured values (over all
//! cases and by stratum), the headline figures of each case, and the [`FamilyResult`] that
//! reports, plots and merges read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::localise::Localisation;
use super::metrics;
use super::strategies::Stratum;
use super::verdict::{PropertyId, Verdict, f64_or_nan, tightest};
use crate::input::{Protein, fasta_text};
use crate::model::Precision;

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
    /// The smallest, 1st percentile, median and largest measured value: NaN first, and a NaN
    /// anywhere makes `min` and `max` NaN (a NaN case never hides behind a finite extreme).
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
            let used: Vec<f64> = of_id.iter().map(|v| v.used_or_infinite()).collect();
            MetricSummary {
                property: id,
                cases: of_id.len(),
                threshold: of_id[0].threshold,
                min: at(0.0),
                p01: at(0.01),
                median: at(0.5),
                max: metrics::max(&measured),
                worst_used: metrics::max(&used),
            }
        })
        .collect()
}

/// The twin property's ratios over a family's model runs: a variant's error against FP32
/// over its plain twin's ([`super::properties::within_twin`]), largest per case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TwinRatios {
    pub cases: usize,
    /// The ratio above which the property fails.
    pub bound: f64,
    /// Median, 95th percentile and largest ratio; a NaN anywhere makes `max` NaN.
    #[serde(deserialize_with = "f64_or_nan")]
    pub median: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub p95: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub max: f64,
}

impl TwinRatios {
    /// The distribution of the twin verdicts among `verdicts`; `None` when there are none
    /// (a plain policy has no twin).
    pub fn of(verdicts: &[Verdict]) -> Option<Self> {
        let twin: Vec<&Verdict> = verdicts
            .iter()
            .filter(|v| v.property == PropertyId::TwinErrorRatio)
            .collect();
        let first = twin.first()?;
        let all: Vec<f64> = twin.iter().map(|v| v.measured).collect();
        let mut finite: Vec<f64> = all.iter().copied().filter(|v| !v.is_nan()).collect();
        finite.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least a fraction q of the values at or
        // below it.
        let at = |q: f64| {
            let rank = (q * finite.len() as f64).ceil() as usize;
            finite.get(rank.max(1) - 1).copied().unwrap_or(f64::NAN)
        };
        Some(Self {
            cases: twin.len(),
            bound: first.threshold,
            median: at(0.5),
            p95: at(0.95),
            max: metrics::max(&all),
        })
    }
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
    /// For a variant policy, its errors over its plain twin's, case by case.
    #[serde(default)]
    pub twin_ratios: Option<TwinRatios>,
    /// Real proteins (`fuzz --fasta`): the records furthest from FP32, localised.
    #[serde(default)]
    pub outliers: Option<super::outliers::Outliers>,
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

/// What a family run saw, case by case: the tightest case, every verdict and the headline
/// figures for plots.
#[derive(Default)]
pub(super) struct CaseLog {
    tightest: Option<(Verdict, Vec<Protein>)>,
    verdicts: Vec<Verdict>,
    /// Verdicts and case counts by the stratum of each case's longest protein.
    by_stratum: BTreeMap<Stratum, (usize, Vec<Verdict>)>,
    points: Vec<CasePoint>,
}

impl CaseLog {
    pub(super) fn record(&mut self, proteins: &[Protein], verdicts: &[Verdict]) {
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
    pub(super) fn explained_case<'a>(
        &'a self,
        failure: Option<&'a FamilyFailure>,
    ) -> Option<&'a Vec<Protein>> {
        failure
            .map(|f| &f.minimal)
            .filter(|m| !m.is_empty())
            .or(self.tightest.as_ref().map(|(_, p)| p))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn into_result(
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
            twin_ratios: TwinRatios::of(&self.verdicts),
            points: self.points,
            by_stratum,
            noise_floor,
            outliers: None,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(cosine: f64) -> Vec<Verdict> {
        vec![Verdict::above(
            PropertyId::PooledCosine,
            cosine,
            0.99,
            String::new(),
        )]
    }

    fn protein(residues: usize) -> Vec<Protein> {
        vec![Protein {
            name: format!("p{residues}"),
            residues: vec![5; residues],
            original_len: residues,
            cut: Vec::new(),
        }]
    }

    #[test]
    fn a_nan_case_makes_its_summary_nan_not_a_finite_extreme() {
        let summary = &summarise(&[case(0.999), case(f64::NAN), case(0.995)].concat())[0];
        assert_eq!(summary.cases, 3);
        assert!(summary.min.is_nan() && summary.max.is_nan(), "{summary:?}");
        assert_eq!(summary.worst_used, f64::INFINITY);
        let clean = &summarise(&[case(0.999), case(0.995)].concat())[0];
        assert_eq!((clean.min, clean.max), (0.995, 0.999));
    }

    #[test]
    fn twin_ratios_give_median_p95_and_a_nan_propagating_max() {
        let twin = |r: f64| Verdict::below(PropertyId::TwinErrorRatio, r, 2.0, String::new());
        let verdicts: Vec<Verdict> = (1..=20).map(|i| twin(i as f64 / 10.0)).collect();
        let r = TwinRatios::of(&verdicts).unwrap();
        assert_eq!((r.cases, r.bound), (20, 2.0));
        assert_eq!((r.median, r.p95, r.max), (1.0, 1.9, 2.0));
        let mut with_nan = verdicts.clone();
        with_nan.push(twin(f64::NAN));
        assert!(TwinRatios::of(&with_nan).unwrap().max.is_nan());
        assert_eq!(TwinRatios::of(&case(0.99)), None, "no twin, no ratios");
    }

    #[test]
    fn a_nan_case_in_one_stratum_shows_in_that_stratum_s_summary() {
        let mut log = CaseLog::default();
        log.record(&protein(10), &case(0.999));
        log.record(&protein(300), &case(f64::NAN));
        log.record(&protein(320), &case(0.998));
        let result = log.into_result(
            "mixed".into(),
            Precision::F16,
            3,
            3,
            0,
            None,
            None,
            Vec::new(),
            Instant::now(),
        );
        assert_eq!(result.by_stratum.len(), 2, "{:?}", result.by_stratum);
        let long = &result.by_stratum[1];
        assert_eq!(long.cases, 2);
        assert!(long.metrics[0].max.is_nan(), "{:?}", long.metrics);
        let short = &result.by_stratum[0];
        assert_eq!(short.metrics[0].max, 0.999);
        assert!(result.metrics[0].max.is_nan());
    }
}
