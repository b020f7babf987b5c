//! The properties: plain functions from host states to [`Verdict`]s that carry the measured
//! value, the threshold and the margin. A failed property is data, not an error.
//!
//! Thresholds live in [`Tolerances`]: the origin plan's (ANCHORS.md) for every reduced
//! policy, plus a tighter per-policy bound on the relative L2 error and the KS distance,
//! set from measurements so that a 10x degradation fails even where 0.99 would still pass.

use std::fmt;

use burn::tensor::backend::Backend;
use statrs::statistics::Statistics;

use crate::batch::{Batch, PaddedBatch};
use crate::input::Protein;
use crate::metrics;
use crate::model::{Esm2, Precision};
use crate::pack::PackedBatch;
use crate::parity::pool_residues;
use crate::runner::{LayerStates, run_batch, sequence_states};

/// The outcome of one property on one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub property: String,
    pub measured: f64,
    pub threshold: f64,
    /// Distance to the threshold, positive when the property holds.
    pub margin: f64,
    pub passed: bool,
    /// Which sequence or tensor was worst.
    pub detail: String,
}

impl Verdict {
    /// Holds when `measured > threshold` (NaN fails).
    pub fn above(property: &str, measured: f64, threshold: f64, detail: String) -> Self {
        Self {
            property: property.to_string(),
            measured,
            threshold,
            margin: measured - threshold,
            passed: measured > threshold,
            detail,
        }
    }

    /// Holds when `measured < threshold` (NaN fails).
    pub fn below(property: &str, measured: f64, threshold: f64, detail: String) -> Self {
        Self {
            property: property.to_string(),
            measured,
            threshold,
            margin: threshold - measured,
            passed: measured < threshold,
            detail,
        }
    }

    /// Holds when `measured <= threshold` (NaN fails): for bounds that may be 0.
    pub fn at_most(property: &str, measured: f64, threshold: f64, detail: String) -> Self {
        Self {
            passed: measured <= threshold,
            ..Self::below(property, measured, threshold, detail)
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: measured {:.6e}, threshold {:.6e}, margin {:+.3e}{}",
            if self.passed { "ok  " } else { "FAIL" },
            self.property,
            self.measured,
            self.threshold,
            self.margin,
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.detail)
            }
        )
    }
}

/// The verdict closest to failing (smallest margin; a NaN margin counts as smallest). A failed
/// verdict always wins; among passing ones, exact-equality checks (threshold 0, where a pass
/// always has margin 0) are skipped when any other verdict exists, since they say nothing
/// about how close a tolerance is to its edge.
pub fn tightest(verdicts: &[Verdict]) -> Option<&Verdict> {
    let informative = |v: &&Verdict| !v.passed || v.threshold != 0.0;
    let pool: Vec<&Verdict> = if verdicts.iter().any(|v| informative(&v)) {
        verdicts.iter().filter(informative).collect()
    } else {
        verdicts.iter().collect()
    };
    pool.into_iter().min_by(|a, b| {
        if a.margin.is_nan() {
            std::cmp::Ordering::Less
        } else if b.margin.is_nan() {
            std::cmp::Ordering::Greater
        } else {
            a.margin.total_cmp(&b.margin)
        }
    })
}

/// The verdicts as a proptest case result: a failure carries every failed verdict.
pub fn case_result(verdicts: &[Verdict]) -> Result<(), proptest::test_runner::TestCaseError> {
    match failures(verdicts) {
        None => Ok(()),
        Some(msg) => Err(proptest::test_runner::TestCaseError::fail(msg)),
    }
}

/// The failed verdicts as one message, or `None` when all held.
pub fn failures(verdicts: &[Verdict]) -> Option<String> {
    let failed: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.to_string())
        .collect();
    if failed.is_empty() {
        None
    } else {
        Some(failed.join("\n"))
    }
}

/// Thresholds for comparing a policy with the FP32 reference.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Tolerances {
    /// Property 1: pooled cosine per sequence, `>`. Plan: 0.99.
    pub pooled_cosine: f64,
    /// Property 2: per-token cosine mean, `>`. Plan: 0.99.
    pub token_cosine_mean: f64,
    /// Property 2: per-token cosine minimum, `>`. Plan: 0.98.
    pub token_cosine_min: f64,
    /// Regression bound on `||test - ref|| / ||ref||` over all token states, `<`.
    pub relative_l2: f64,
    /// Property 5: |mean difference| of all values, `<`. Plan: 0.01.
    pub mean_abs_diff: f64,
    /// Property 5: relative std difference, `<`. Plan: 5%.
    pub std_rel: f64,
    /// Property 5: relative difference of the mean per-token L2 norm, `<`. Plan: 5%.
    pub l2_norm_rel: f64,
    /// Property 5: relative difference of |z| > 3 outlier counts, `<`. Plan: 10%, with a
    /// Poisson slack of `sqrt(count)` outliers so that small samples do not fail on noise.
    pub outlier_rel: f64,
    /// Property 6: two-sample Kolmogorov-Smirnov distance D of all values, `<`.
    pub ks_d: f64,
    /// Property 8: max |diff| of one sequence's states across batch-mates and orders, `<`.
    pub isolation_abs: f64,
}

impl Tolerances {
    /// The origin plan's thresholds with per-policy regression bounds on the relative L2
    /// error, set about 2.5x above the worst figure measured so that a 10x degradation of the
    /// typical error fails even where the plan's 0.99 cosines would pass:
    /// - f16: 3.0e-3 on the 196-protein corpus (CPU), up to 1.07e-2 on generated sequences
    ///   of 8 residues and 1.2e-2 for f16-mixed on a mixed batch (`equivalence_by_stratum`,
    ///   generator v2) -> bound 0.03 for f16, f16-mixed and tf32 (tf32: 1.1e-3 on the corpus).
    /// - bf16: 2.3e-2 on the corpus, up to 0.108 on generated sequences of 5 residues
    ///   (counterexample kept in `proptest-regressions/counterexamples/`), cosines still
    ///   above 0.997 -> bound 0.25.
    /// - f32 (another f32 run, e.g. a fault-injected one): bounds at f32 noise.
    ///
    /// KS distance: on generated mixed batches f16 measured D of 4.4e-4 to 1.3e-3 and bf16
    /// stayed under 0.01 (`statistical_validation` prints the smallest margin per case);
    /// bounds 0.01 (f16) and 0.02 (bf16) leave about 8x and 2x. p-values are not used: with
    /// 10^5 values even a 1e-3 shift is "significant", which says nothing about whether the
    /// embeddings stay useful.
    pub fn for_precision(precision: Precision) -> Self {
        let plan = Self {
            pooled_cosine: 0.99,
            token_cosine_mean: 0.99,
            token_cosine_min: 0.98,
            relative_l2: 0.03,
            mean_abs_diff: 0.01,
            std_rel: 0.05,
            l2_norm_rel: 0.05,
            outlier_rel: 0.10,
            ks_d: 0.01,
            isolation_abs: 1e-5,
        };
        match precision {
            Precision::F16 | Precision::F16Mixed | Precision::Tf32 => Self {
                isolation_abs: 0.05,
                ..plan
            },
            Precision::Bf16 => Self {
                relative_l2: 0.25,
                ks_d: 0.02,
                isolation_abs: 0.5,
                ..plan
            },
            Precision::F32 => Self {
                pooled_cosine: 0.999_999,
                token_cosine_mean: 0.999_999,
                token_cosine_min: 0.999_99,
                relative_l2: 1e-4,
                mean_abs_diff: 1e-4,
                std_rel: 1e-3,
                l2_norm_rel: 1e-3,
                outlier_rel: 0.01,
                ks_d: 0.005,
                // A sequence alone vs padded beside longer batch-mates measured 1.9e-5 (gemm
                // blocking follows the padded width; states reach |x| ~ 10, so ~2e-6
                // relative). Packed batches, whose blocks do not change, meet 1e-5
                // (packed_equivalence).
                isolation_abs: 1e-4,
            },
        }
    }
}

/// Properties 1 and 2 and the relative-L2 regression bound: `test` against `reference`,
/// per-sequence token states `[n + 2, hidden]`.
pub fn equivalence(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    names: &[String],
    hidden: usize,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let c = crate::parity::compare_states(test, reference, hidden);
    let worst = names
        .get(c.pooled_cosine_argmin)
        .cloned()
        .unwrap_or_default();
    vec![
        Verdict::above(
            "pooled cosine (min over sequences)",
            c.pooled_cosine_min,
            tol.pooled_cosine,
            worst,
        ),
        Verdict::above(
            "token cosine mean",
            c.token_cosine_mean,
            tol.token_cosine_mean,
            String::new(),
        ),
        Verdict::above(
            "token cosine min",
            c.token_cosine_min,
            tol.token_cosine_min,
            String::new(),
        ),
        Verdict::below("relative L2", c.relative_l2, tol.relative_l2, String::new()),
    ]
}

/// Boundary tokens: per-token cosine of the first (BOS) and last (EOS) token of every
/// sequence, against the token-cosine minimum.
pub fn boundary_tokens(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    hidden: usize,
    tol: &Tolerances,
) -> Verdict {
    let mut worst = (f64::INFINITY, String::new());
    for (i, (t, r)) in test.iter().zip(reference).enumerate() {
        let rows = t.len() / hidden;
        for (row, what) in [(0, "BOS"), (rows - 1, "EOS")] {
            let c = metrics::cosine(&t[row * hidden..][..hidden], &r[row * hidden..][..hidden]);
            if c < worst.0 || c.is_nan() {
                worst = (c, format!("sequence {i} {what}"));
            }
        }
    }
    Verdict::above(
        "boundary token cosine min",
        worst.0,
        tol.token_cosine_min,
        worst.1,
    )
}

/// Property 3: no NaN or Inf in any layer's output at any real (non-pad) token.
pub fn finite_layers(layers: &LayerStates, batch: &dyn Batch) -> Verdict {
    let mut bad = 0usize;
    let mut first = String::new();
    for (layer, states) in layers {
        for i in 0..batch.len() {
            let n = metrics::count_non_finite(sequence_states(states, batch, i));
            if n > 0 && first.is_empty() {
                first = format!("layer {layer}, sequence {i}");
            }
            bad += n;
        }
    }
    Verdict::below("non-finite values in any layer", bad as f64, 0.5, first)
}

/// Property 4: every pooled embedding has a finite L2 norm in (1, 1000).
pub fn pooled_norms(test: &[Vec<f32>], hidden: usize) -> Vec<Verdict> {
    let norms: Vec<f64> = test
        .iter()
        .map(|s| metrics::l2_norm(&pool_residues(s, hidden)))
        .collect();
    let min =
        norms.iter().copied().fold(
            f64::INFINITY,
            |a, b| if b.is_nan() { f64::NAN } else { a.min(b) },
        );
    let max = norms
        .iter()
        .copied()
        .fold(0f64, |a, b| if b.is_nan() { f64::NAN } else { a.max(b) });
    vec![
        Verdict::above("pooled L2 norm min", min, 1.0, String::new()),
        Verdict::below("pooled L2 norm max", max, 1000.0, String::new()),
    ]
}

/// All values of all token states, as f64.
fn values(states: &[Vec<f32>]) -> Vec<f64> {
    states.iter().flatten().map(|&v| v as f64).collect()
}

/// Number of values with |z| > 3 under their own mean and std.
fn outliers(values: &[f64], mean: f64, std: f64) -> usize {
    values
        .iter()
        .filter(|v| ((*v - mean) / std).abs() > 3.0)
        .count()
}

/// Property 5: global mean, std, mean per-token L2 norm and |z| > 3 outlier counts.
pub fn statistics(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    hidden: usize,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let (t, r) = (values(test), values(reference));
    let (tm, rm) = ((&t).mean(), (&r).mean());
    let (ts, rs) = ((&t).population_std_dev(), (&r).population_std_dev());
    let token_norms = |s: &[Vec<f32>]| -> Vec<f64> {
        s.iter()
            .flat_map(|x| x.chunks_exact(hidden).map(metrics::l2_norm))
            .collect()
    };
    let (tn, rn) = (token_norms(test).mean(), token_norms(reference).mean());
    let (to, ro) = (outliers(&t, tm, ts) as f64, outliers(&r, rm, rs) as f64);
    let larger = to.max(ro).max(1.0);
    let outlier_rel = ((to - ro).abs() - larger.sqrt()).max(0.0) / larger;
    vec![
        Verdict::below(
            "|mean difference|",
            (tm - rm).abs(),
            tol.mean_abs_diff,
            format!("{tm:.5} vs {rm:.5}"),
        ),
        Verdict::below(
            "std relative difference",
            ((ts - rs) / rs).abs(),
            tol.std_rel,
            format!("{ts:.5} vs {rs:.5}"),
        ),
        Verdict::below(
            "mean L2 norm relative difference",
            ((tn - rn) / rn).abs(),
            tol.l2_norm_rel,
            format!("{tn:.4} vs {rn:.4}"),
        ),
        Verdict::below(
            "|z|>3 outlier count relative difference (beyond sqrt(count))",
            outlier_rel,
            tol.outlier_rel,
            format!("{to} vs {ro}"),
        ),
    ]
}

/// The two-sample Kolmogorov-Smirnov statistic D = sup |F_a - F_b| (ties handled by
/// advancing both samples past equal values).
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let sort = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (a, b) = (sort(a), sort(b));
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// Values per comparison at which the KS bounds were calibrated.
pub const KS_REFERENCE_VALUES: f64 = 10_000.0;

/// Property 6: KS distance between the reduced and FP32 value distributions. D of two
/// samples scales like `1 / sqrt(n)`, so below [`KS_REFERENCE_VALUES`] values the bound
/// widens by `sqrt(KS_REFERENCE_VALUES / n)` (measured: f16 D 7.3e-3 on 960 values of a
/// 1-residue case, 5.8e-4 on ~10^5 values).
pub fn distribution(test: &[Vec<f32>], reference: &[Vec<f32>], tol: &Tolerances) -> Verdict {
    let (t, r) = (values(test), values(reference));
    let n = t.len() as f64;
    let bound = tol.ks_d * (KS_REFERENCE_VALUES / n.max(1.0)).sqrt().max(1.0);
    Verdict::below(
        "Kolmogorov-Smirnov D",
        ks_statistic(&t, &r),
        bound,
        format!("{} values", t.len()),
    )
}

/// Property 8: the same sequence's states in two runs (other batch-mates, order, or a
/// repeat) differ by at most `threshold`.
pub fn isolation(property: &str, a: &[f32], b: &[f32], threshold: f64, detail: String) -> Verdict {
    Verdict::at_most(property, metrics::max_abs_diff(a, b), threshold, detail)
}

/// Property 8 for one case: each sequence alone equals itself among batch-mates (padded,
/// and packed in reverse order) within `tol.isolation_abs`, and a repeat of the batch is
/// bit-identical.
pub fn isolation_case<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    tol: &Tolerances,
) -> Vec<Verdict> {
    let (together, _) = run_case(model, proteins, Layout::Padded);
    let (again, _) = run_case(model, proteins, Layout::Padded);
    let reversed: Vec<Protein> = proteins.iter().rev().cloned().collect();
    let (packed_rev, _) = run_case(model, &reversed, Layout::Packed);
    let n = proteins.len();
    let mut verdicts = Vec::with_capacity(3 * n);
    for i in 0..n {
        let (alone, _) = run_case(model, &proteins[i..=i], Layout::Padded);
        let which = || format!("sequence {i}");
        verdicts.push(isolation(
            "repeat is bit-identical",
            &together[i],
            &again[i],
            0.0,
            which(),
        ));
        verdicts.push(isolation(
            "alone vs padded with batch-mates",
            &alone[0],
            &together[i],
            tol.isolation_abs,
            which(),
        ));
        verdicts.push(isolation(
            "alone vs packed in reverse order",
            &alone[0],
            &packed_rev[n - 1 - i],
            tol.isolation_abs,
            which(),
        ));
    }
    verdicts
}

/// How the policy under test lays out its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Padded,
    Packed,
}

/// Runs `proteins` as one batch; token states of the last layer per sequence, and every
/// layer's states for the finiteness check.
pub fn run_case<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    layout: Layout,
) -> (Vec<Vec<f32>>, Verdict) {
    let layers: Vec<usize> = (0..=model.config.num_hidden_layers).collect();
    let seqs: Vec<(usize, Vec<u32>)> = proteins
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.tokens()))
        .collect();
    let dropout = model.config.token_dropout;
    let (states, finite) = match layout {
        Layout::Padded => {
            let batch = PaddedBatch::new(&seqs, dropout);
            let states = run_batch(model, &batch, &layers);
            (
                per_sequence(&states, &batch, model.config.num_hidden_layers),
                finite_layers(&states, &batch),
            )
        }
        Layout::Packed => {
            let batch = PackedBatch::new(&seqs, dropout);
            let states = run_batch(model, &batch, &layers);
            (
                per_sequence(&states, &batch, model.config.num_hidden_layers),
                finite_layers(&states, &batch),
            )
        }
    };
    (states, finite)
}

fn per_sequence(states: &LayerStates, batch: &dyn Batch, last: usize) -> Vec<Vec<f32>> {
    (0..batch.len())
        .map(|i| sequence_states(&states[&last], batch, i).to_vec())
        .collect()
}

/// Properties 1-6 for one case: the policy under test (`test`, laid out as `layout`) against
/// the FP32 reference run padded.
pub fn check_case<B: Backend>(
    reference: &Esm2<B>,
    test: &Esm2<B>,
    proteins: &[Protein],
    layout: Layout,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let hidden = reference.config.hidden_size;
    let names: Vec<String> = proteins.iter().map(|p| p.name.clone()).collect();
    let (ref_states, _) = run_case(reference, proteins, Layout::Padded);
    let (states, finite) = run_case(test, proteins, layout);
    let mut verdicts = vec![finite];
    verdicts.extend(equivalence(&states, &ref_states, &names, hidden, tol));
    verdicts.push(boundary_tokens(&states, &ref_states, hidden, tol));
    verdicts.extend(pooled_norms(&states, hidden));
    verdicts.extend(statistics(&states, &ref_states, hidden, tol));
    verdicts.push(distribution(&states, &ref_states, tol));
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_of_a_sample_with_itself_is_zero_and_of_disjoint_samples_one() {
        let a = [0.1, 0.5, -2.0, 3.0, 0.5];
        assert_eq!(ks_statistic(&a, &a), 0.0);
        assert_eq!(ks_statistic(&[0.0, 1.0], &[2.0, 3.0]), 1.0);
        let d = ks_statistic(&[0.0, 1.0, 2.0, 3.0], &[0.5, 1.5, 2.5, 3.5]);
        assert!((d - 0.25).abs() < 1e-12, "{d}");
    }

    #[test]
    fn verdicts_fail_on_nan_and_report_signed_margins() {
        let v = Verdict::above("x", f64::NAN, 0.99, String::new());
        assert!(!v.passed);
        let v = Verdict::below("y", 0.02, 0.01, String::new());
        assert!(!v.passed && v.margin < 0.0);
        let v = Verdict::above("z", 0.995, 0.99, String::new());
        assert!(v.passed && (v.margin - 0.005).abs() < 1e-12);
    }

    #[test]
    fn tightest_skips_passing_exact_checks_but_never_a_failure() {
        let exact = Verdict::at_most("repeat", 0.0, 0.0, String::new());
        let loose = Verdict::above("cosine", 0.995, 0.99, String::new());
        let name = |v: Option<&Verdict>| v.map(|v| v.property.clone());
        assert_eq!(
            name(tightest(&[exact.clone(), loose.clone()])),
            Some("cosine".into())
        );
        assert_eq!(name(tightest(&[exact])), Some("repeat".into()));
        let broken = Verdict::at_most("broken repeat", 1e-7, 0.0, String::new());
        assert_eq!(
            name(tightest(&[loose, broken])),
            Some("broken repeat".into())
        );
    }

    #[test]
    fn identical_states_pass_every_statistic() {
        let s = vec![vec![0.5f32, -1.0, 2.0, 0.1, 0.3, -0.2, 1.5, 0.0]];
        let tol = Tolerances::for_precision(Precision::F32);
        for v in statistics(&s, &s, 2, &tol) {
            assert!(v.passed, "{v}");
        }
        assert!(distribution(&s, &s, &tol).passed);
    }
}
