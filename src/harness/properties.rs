//! The properties: pure functions from host states to [`Verdict`]s. None runs a model (that
//! is [`super::cases`]' job); each takes the states of the policy under test and, where it
//! compares, of the FP32 reference, `[n + 2, hidden]` per sequence.

use statrs::statistics::Statistics;

use super::metrics;
use super::verdict::{PropertyId, Tolerances, Verdict};
use crate::batch::{Batch, LayerStates, pool_residues, sequence_states};

/// Properties 1 and 2 and the relative-L2 regression bound.
pub fn equivalence(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    names: &[String],
    hidden: usize,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let c = metrics::compare_states(test, reference, hidden);
    let worst = names
        .get(c.pooled_cosine_argmin)
        .cloned()
        .unwrap_or_default();
    vec![
        Verdict::above(
            PropertyId::PooledCosine,
            c.pooled_cosine_min,
            tol.pooled_cosine,
            worst,
        ),
        Verdict::above(
            PropertyId::TokenCosineMean,
            c.token_cosine_mean,
            tol.token_cosine_mean,
            String::new(),
        ),
        Verdict::above(
            PropertyId::TokenCosineMin,
            c.token_cosine_min,
            tol.token_cosine_min,
            String::new(),
        ),
        Verdict::below(
            PropertyId::RelativeL2,
            c.relative_l2,
            tol.relative_l2,
            String::new(),
        ),
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
            if (c < worst.0 || c.is_nan()) && !worst.0.is_nan() {
                worst = (c, format!("sequence {i} {what}"));
            }
        }
    }
    Verdict::above(
        PropertyId::BoundaryTokenCosine,
        worst.0,
        tol.token_cosine_min,
        worst.1,
    )
}

/// Property 3: no NaN or Inf in any layer's output at any real (non-pad) token; the detail
/// names the first layer, sequence and token that is not finite.
pub fn finite_layers(layers: &LayerStates, batch: &dyn Batch) -> Verdict {
    let mut bad = 0usize;
    let mut first = String::new();
    for (layer, states) in layers {
        for i in 0..batch.len() {
            let seq = sequence_states(states, batch, i);
            let n = metrics::count_non_finite(seq);
            if n > 0 && first.is_empty() {
                let at = seq.iter().position(|v| !v.is_finite()).unwrap_or(0);
                first = format!(
                    "first non-finite after layer {layer} (0: the embeddings), sequence {i}, token {}",
                    at / states.hidden
                );
            }
            bad += n;
        }
    }
    Verdict::below(PropertyId::NonFinite, bad as f64, 0.5, first)
}

/// Property 4: every pooled embedding has a finite L2 norm within
/// (`tol.pooled_norm_min`, `tol.pooled_norm_max`).
pub fn pooled_norms(test: &[Vec<f32>], hidden: usize, tol: &Tolerances) -> Vec<Verdict> {
    let norms: Vec<f64> = test
        .iter()
        .map(|s| metrics::l2_norm(&pool_residues(s, hidden)))
        .collect();
    vec![
        Verdict::above(
            PropertyId::PooledNormMin,
            metrics::min(&norms),
            tol.pooled_norm_min,
            String::new(),
        ),
        Verdict::below(
            PropertyId::PooledNormMax,
            metrics::max(&norms),
            tol.pooled_norm_max,
            String::new(),
        ),
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

/// Property 5: global mean, std, mean per-token L2 norm and |z| > 3 outlier counts. A NaN
/// anywhere makes the mean, std and norm NaN, and their verdicts fail.
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
            PropertyId::MeanDifference,
            (tm - rm).abs(),
            tol.mean_abs_diff,
            format!("{tm:.5} vs {rm:.5}"),
        ),
        Verdict::below(
            PropertyId::StdRelative,
            ((ts - rs) / rs).abs(),
            tol.std_rel,
            format!("{ts:.5} vs {rs:.5}"),
        ),
        Verdict::below(
            PropertyId::TokenNormRelative,
            ((tn - rn) / rn).abs(),
            tol.l2_norm_rel,
            format!("{tn:.4} vs {rn:.4}"),
        ),
        Verdict::below(
            PropertyId::OutlierRelative,
            outlier_rel,
            tol.outlier_rel,
            format!("{to} vs {ro}"),
        ),
    ]
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
        PropertyId::KolmogorovSmirnov,
        metrics::ks_statistic(&t, &r),
        bound,
        format!("{} values", t.len()),
    )
}

/// Property 8: the same sequence's states in two runs (other batch-mates, order, or a
/// repeat) differ by at most `threshold`.
pub fn isolation(
    property: PropertyId,
    a: &[f32],
    b: &[f32],
    threshold: f64,
    detail: String,
) -> Verdict {
    Verdict::at_most(property, metrics::max_abs_diff(a, b), threshold, detail)
}

/// Property 7: the policy's packed states against its own padded ones, per sequence; the
/// detail names the worst sequence.
pub fn packed_vs_padded(packed: &[Vec<f32>], padded: &[Vec<f32>], tol: &Tolerances) -> Verdict {
    let diffs: Vec<f64> = packed
        .iter()
        .zip(padded)
        .map(|(a, b)| metrics::max_abs_diff(a, b))
        .collect();
    let (worst, at) = metrics::argmax(&diffs);
    Verdict::at_most(
        PropertyId::PackedVsPadded,
        worst,
        tol.packed_abs,
        format!("sequence {at}"),
    )
}

/// The twin property's bound on the error ratio: FlashAttention's rule, a kernel's error
/// within twice the reference implementation's in the same dtype.
pub const TWIN_RATIO: f64 = 2.0;
/// The small absolute term of the twin property, in relative L2: 1e-4, FP32's own bound
/// (`Tolerances::for_precision(F32).relative_l2`) and 1/20 to 1/100 of f16's error on
/// generated cases (2e-3..1e-2), so a twin that happens to be nearly exact on a case does not
/// turn any rounding into a failure while a 2x worse variant still fails.
pub const TWIN_ABS_L2: f64 = 1e-4;

/// The twin property: per sequence, the variant's relative L2 error against FP32 over its
/// plain twin's (same precision, composed attention, default gemm, no FP32 places) on the
/// same input, regularised as `e_variant / (e_twin + TWIN_ABS_L2 / 2)`; it holds below
/// [`TWIN_RATIO`], i.e. while `e_variant < 2 e_twin + TWIN_ABS_L2`. The measured value is
/// the largest ratio of the case (NaN first), the detail names its sequence and both errors.
pub fn within_twin(
    test: &[Vec<f32>],
    twin: &[Vec<f32>],
    reference: &[Vec<f32>],
    names: &[String],
) -> Verdict {
    let errors: Vec<(f64, f64)> = test
        .iter()
        .zip(twin)
        .zip(reference)
        .map(|((t, w), r)| (metrics::relative_l2(t, r), metrics::relative_l2(w, r)))
        .collect();
    let ratios: Vec<f64> = errors
        .iter()
        .map(|&(v, w)| v / (w + TWIN_ABS_L2 / 2.0))
        .collect();
    let (worst, at) = metrics::argmax(&ratios);
    let (variant, plain) = errors.get(at).copied().unwrap_or((f64::NAN, f64::NAN));
    Verdict::below(
        PropertyId::TwinErrorRatio,
        worst,
        TWIN_RATIO,
        format!(
            "{}: variant {variant:.3e}, twin {plain:.3e} relative L2",
            names.get(at).map_or("no sequence", String::as_str)
        ),
    )
}

/// A deployment's pooled rows against the oracle's (one row per sequence, same width: the
/// caller checks shapes first): no non-finite value, pooled cosine, relative L2 and norm
/// ratio per row (the worst named), pooled norms within property 4's bounds, and property
/// 5's statistics over the pooled values (each row read as one token). The cosine alone
/// passes a stack that rescales every row; the relative L2 and the norm ratio do not.
pub fn pooled_against(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    names: &[String],
    tol: &Tolerances,
) -> Vec<Verdict> {
    let name = |at: usize| {
        names
            .get(at)
            .map_or("no sequence", String::as_str)
            .to_string()
    };
    let bad: usize = test.iter().map(|row| metrics::count_non_finite(row)).sum();
    let first_bad = test
        .iter()
        .position(|row| metrics::count_non_finite(row) > 0)
        .map_or_else(String::new, |at| format!("first in {}", name(at)));
    let per_row = |f: &dyn Fn(&[f32], &[f32]) -> f64| -> Vec<f64> {
        test.iter().zip(reference).map(|(t, r)| f(t, r)).collect()
    };
    let cosines = per_row(&|t, r| metrics::cosine(t, r));
    let l2 = per_row(&|t, r| metrics::relative_l2(t, r));
    let ratio = per_row(&|t, r| (metrics::l2_norm(t) / metrics::l2_norm(r) - 1.0).abs());
    let (cos, cos_at) = metrics::argmin(&cosines);
    let (worst_l2, l2_at) = metrics::argmax(&l2);
    let (worst_ratio, ratio_at) = metrics::argmax(&ratio);
    let hidden = reference.first().map_or(1, Vec::len).max(1);
    let norms: Vec<f64> = test.iter().map(|row| metrics::l2_norm(row)).collect();
    let mut verdicts = vec![
        Verdict::below(PropertyId::NonFinite, bad as f64, 0.5, first_bad),
        Verdict::above(
            PropertyId::PooledCosine,
            cos,
            tol.pooled_cosine,
            name(cos_at),
        ),
        Verdict::below(
            PropertyId::PooledRelativeL2,
            worst_l2,
            tol.relative_l2,
            name(l2_at),
        ),
        Verdict::below(
            PropertyId::PooledNormRatio,
            worst_ratio,
            tol.l2_norm_rel.max(tol.relative_l2),
            name(ratio_at),
        ),
        Verdict::above(
            PropertyId::PooledNormMin,
            metrics::min(&norms),
            tol.pooled_norm_min,
            String::new(),
        ),
        Verdict::below(
            PropertyId::PooledNormMax,
            metrics::max(&norms),
            tol.pooled_norm_max,
            String::new(),
        ),
    ];
    verdicts.extend(
        statistics(test, reference, hidden, tol)
            .into_iter()
            .filter(|v| v.property != PropertyId::OutlierRelative),
    );
    verdicts
}

/// Two runs of the same proteins by a deployment (alone and among batch-mates, or in two
/// orders) agree per row within `bound` in relative L2; the detail names the worst row.
pub fn rows_agree(
    property: PropertyId,
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    names: &[String],
    bound: f64,
) -> Verdict {
    let (worst, at) = worst_row(a, b, metrics::relative_l2);
    Verdict::below(
        property,
        worst,
        bound,
        names.get(at).cloned().unwrap_or_default(),
    )
}

/// Two runs of the same proteins give each row the same values within `threshold` in max
/// |diff| (0: bit-identical); the detail names the worst row.
pub fn rows_identical_within(
    property: PropertyId,
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    names: &[String],
    threshold: f64,
) -> Verdict {
    let (worst, at) = worst_row(a, b, metrics::max_abs_diff);
    Verdict::at_most(
        property,
        worst,
        threshold,
        names.get(at).cloned().unwrap_or_default(),
    )
}

/// The largest `distance` between paired rows and its row; NaN when the runs hold different
/// numbers of rows (nothing to pair is no agreement).
fn worst_row(a: &[Vec<f32>], b: &[Vec<f32>], distance: fn(&[f32], &[f32]) -> f64) -> (f64, usize) {
    if a.len() != b.len() {
        return (f64::NAN, 0);
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(a, b)| distance(a, b)).collect();
    metrics::argmax(&d)
}

/// Properties 1-6 of `test` states against `reference` states (one case, both complete).
pub fn against_reference(
    test: &[Vec<f32>],
    reference: &[Vec<f32>],
    names: &[String],
    hidden: usize,
    tol: &Tolerances,
) -> Vec<Verdict> {
    let mut verdicts = equivalence(test, reference, names, hidden, tol);
    verdicts.push(boundary_tokens(test, reference, hidden, tol));
    verdicts.extend(pooled_norms(test, hidden, tol));
    verdicts.extend(statistics(test, reference, hidden, tol));
    verdicts.push(distribution(test, reference, tol));
    verdicts
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;
    use crate::model::Precision;

    /// Wall time any metric or property may take on a few hundred values, however hostile.
    const BOUND: Duration = Duration::from_secs(2);

    /// Ordinary values with NaN, +-Inf, subnormals, zeros and huge values mixed in.
    fn hostile_value() -> impl Strategy<Value = f32> {
        prop_oneof![
            6 => -8.0f32..8.0,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::MIN_POSITIVE / 8.0),
            1 => Just(0.0f32),
            1 => prop_oneof![Just(3.0e38f32), Just(-3.0e38f32), Just(65504.0f32)],
        ]
    }

    /// Two cases' states of the same shape: `hidden` 4, 1-3 sequences of 1-6 residues.
    fn state_pairs() -> impl Strategy<Value = (Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        prop::collection::vec(1usize..=6, 1..=3).prop_flat_map(|lens| {
            let one = |lens: &[usize]| {
                lens.iter()
                    .map(|&n| prop::collection::vec(hostile_value(), (n + 2) * 4))
                    .collect::<Vec<_>>()
            };
            (one(&lens), one(&lens))
        })
    }

    fn non_finite(s: &[Vec<f32>]) -> bool {
        s.iter().flatten().any(|v| !v.is_finite())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn hostile_numbers_end_in_bounded_time_and_non_finite_states_fail((test, reference) in state_pairs()) {
            let tol = Tolerances::for_precision(Precision::F16);
            let names: Vec<String> = (0..test.len()).map(|i| format!("s{i}")).collect();
            let start = Instant::now();
            let mut verdicts = against_reference(&test, &reference, &names, 4, &tol);
            verdicts.push(packed_vs_padded(&test, &reference, &tol));
            for (t, r) in test.iter().zip(&reference) {
                verdicts.push(isolation(PropertyId::AloneVsPadded, t, r, 0.05, String::new()));
                let _ = metrics::ks_statistic(
                    &t.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                    &r.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                );
            }
            prop_assert!(start.elapsed() < BOUND, "took {:?}", start.elapsed());
            if non_finite(&test) || non_finite(&reference) {
                prop_assert!(
                    verdicts.iter().any(|v| !v.passed),
                    "non-finite states passed every verdict"
                );
            }
            for v in &verdicts {
                prop_assert!(!v.measured.is_nan() || !v.passed, "a NaN passed: {}", v);
            }
        }
    }

    #[test]
    fn the_twin_property_fails_a_variant_twice_as_far_from_fp32_and_on_nan() {
        let reference = vec![vec![1.0f32; 8], vec![2.0f32; 8]];
        let off = |s: &[Vec<f32>], by: f32| -> Vec<Vec<f32>> {
            s.iter()
                .map(|r| r.iter().map(|v| v * (1.0 + by)).collect())
                .collect()
        };
        let names = vec!["a".to_string(), "b".to_string()];
        let twin = off(&reference, 1e-3);
        assert!(within_twin(&off(&reference, 1.5e-3), &twin, &reference, &names).passed);
        let worse = within_twin(&off(&reference, 3e-3), &twin, &reference, &names);
        assert!(!worse.passed, "{worse}");
        assert!((worse.measured - 3e-3 / 1.05e-3).abs() < 1e-3, "{worse}");
        // An exact twin: only the absolute term is allowed.
        let exact = within_twin(&off(&reference, 5e-5), &reference, &reference, &names);
        assert!(exact.passed, "{exact}");
        let mut nan = twin.clone();
        nan[1][0] = f32::NAN;
        let v = within_twin(&nan, &twin, &reference, &names);
        assert!(!v.passed && v.detail.starts_with("b:"), "{v}");
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
