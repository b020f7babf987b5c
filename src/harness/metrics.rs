//! Pure numeric comparisons on host slices, all accumulated in f64, and the corpus-level
//! comparison of one set of per-sequence token states with another.
//!
//! Every function is total: NaN in gives NaN (or a count) out, in bounded time, so a NaN
//! reaches a verdict and fails it; no fold drops it and no loop stops advancing on it.

use serde::Serialize;

use crate::batch::pool_residues;

/// Cosine similarity of two vectors; 1 for two zero vectors (identical), 0 when only one is
/// zero. NaN in either input gives NaN.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
}

/// `||test - reference|| / ||reference||` (L2).
pub fn relative_l2(test: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(test.len(), reference.len());
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&t, &r) in test.iter().zip(reference) {
        diff += (t as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    (diff / norm).sqrt()
}

/// `max |a - b|`; NaN if either holds NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut max = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        max = max.max(d);
    }
    max
}

/// Number of NaN or infinite values.
pub fn count_non_finite(a: &[f32]) -> usize {
    a.iter().filter(|v| !v.is_finite()).count()
}

/// L2 norm.
pub fn l2_norm(a: &[f32]) -> f64 {
    a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
}

/// Per-row cosines of two `[rows, width]` matrices.
pub fn row_cosines(a: &[f32], b: &[f32], width: usize) -> Vec<f64> {
    a.chunks_exact(width)
        .zip(b.chunks_exact(width))
        .map(|(x, y)| cosine(x, y))
        .collect()
}

/// Folds `values` with `pick`, except that a NaN anywhere makes the result NaN (`f64::min`
/// and `f64::max` alone would drop it).
fn fold_keeping_nan(values: &[f64], init: f64, pick: fn(f64, f64) -> f64) -> f64 {
    values.iter().copied().fold(init, |m, v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            pick(m, v)
        }
    })
}

/// Minimum of a slice of f64 (NaN propagates); +inf when empty.
pub fn min(values: &[f64]) -> f64 {
    fold_keeping_nan(values, f64::INFINITY, f64::min)
}

/// Maximum of a slice of f64 (NaN propagates); -inf when empty.
pub fn max(values: &[f64]) -> f64 {
    fold_keeping_nan(values, f64::NEG_INFINITY, f64::max)
}

/// The minimum of `values` and the index of its first place: the first NaN when any (a NaN is
/// the worst a minimum can be); `(+inf, 0)` when empty.
pub fn argmin(values: &[f64]) -> (f64, usize) {
    let worst = min(values);
    (worst, first_place(values, worst))
}

/// The maximum of `values` and the index of its first place: the first NaN when any;
/// `(-inf, 0)` when empty.
pub fn argmax(values: &[f64]) -> (f64, usize) {
    let worst = max(values);
    (worst, first_place(values, worst))
}

/// Where `extreme` (a NaN-propagating min or max of `values`) first stands.
fn first_place(values: &[f64], extreme: f64) -> usize {
    values
        .iter()
        .position(|&v| v == extreme || v.is_nan())
        .unwrap_or(0)
}

/// Arithmetic mean; NaN when empty.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The two-sample Kolmogorov-Smirnov statistic D = sup |F_a - F_b| (ties handled by
/// advancing both samples past equal values). NaN when either sample holds a NaN (a NaN has
/// no place in a distribution function), or when either is empty.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() || a.iter().chain(b).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let sort = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (a, b) = (sort(a), sort(b));
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    // Each pass advances at least one index: x is a[i] or b[j], and both are compared with
    // `<=` against it (no NaN is left to make that comparison false).
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

/// How far one set of per-sequence token states is from another.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Comparison {
    /// Minimum over sequences of the cosine of the residue-mean-pooled embeddings.
    pub pooled_cosine_min: f64,
    /// Index of that sequence (the first NaN one, if any).
    pub pooled_cosine_argmin: usize,
    /// Minimum over every token (BOS and EOS included) of the per-token cosine.
    pub token_cosine_min: f64,
    /// Mean per-token cosine.
    pub token_cosine_mean: f64,
    /// `||test - ref|| / ||ref||` over all token states.
    pub relative_l2: f64,
    /// `max |test - ref|` over all token states.
    pub max_abs_diff: f64,
    /// `max |test - ref|` over the pooled embeddings.
    pub pooled_max_abs_diff: f64,
    /// NaN or Inf values in the test states.
    pub non_finite: usize,
}

/// Compares per-sequence token states (`[n_i + 2, hidden]` each).
///
/// # Panics
/// When the two sides hold different numbers of sequences or of values: callers pair the
/// outputs of one input, so a mismatch is a bug.
pub fn compare_states(test: &[Vec<f32>], reference: &[Vec<f32>], hidden: usize) -> Comparison {
    assert_eq!(test.len(), reference.len(), "sequence counts differ");
    let mut pooled_cos = Vec::with_capacity(test.len());
    let mut pooled_diff = Vec::with_capacity(test.len());
    let mut token_cos = Vec::new();
    let mut token_diff = Vec::with_capacity(test.len());
    let (mut diff2, mut ref2, mut non_finite) = (0f64, 0f64, 0usize);
    for (t, r) in test.iter().zip(reference) {
        let (pt, pr) = (pool_residues(t, hidden), pool_residues(r, hidden));
        pooled_cos.push(cosine(&pt, &pr));
        pooled_diff.push(max_abs_diff(&pt, &pr));
        token_cos.extend(row_cosines(t, r, hidden));
        token_diff.push(max_abs_diff(t, r));
        for (&a, &b) in t.iter().zip(r) {
            let d = a as f64 - b as f64;
            diff2 += d * d;
            ref2 += (b as f64) * (b as f64);
        }
        non_finite += count_non_finite(t);
    }
    let (pooled_cosine_min, pooled_cosine_argmin) = argmin(&pooled_cos);
    Comparison {
        pooled_cosine_min,
        pooled_cosine_argmin,
        token_cosine_min: min(&token_cos),
        token_cosine_mean: mean(&token_cos),
        relative_l2: (diff2 / ref2).sqrt(),
        max_abs_diff: max(&token_diff),
        pooled_max_abs_diff: max(&pooled_diff),
        non_finite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_symmetric_bounded_and_one_on_itself() {
        let a = [1.0, -2.0, 3.5];
        let b = [0.5, 4.0, -1.0];
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&a, &b), cosine(&b, &a));
        assert!((-1.0..=1.0).contains(&cosine(&a, &b)));
        assert!((cosine(&a, &[-1.0, 2.0, -3.5]) + 1.0).abs() < 1e-12);
        assert!(cosine(&[f32::NAN, 1.0], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn relative_l2_and_max_abs_diff_measure_the_difference() {
        assert_eq!(relative_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_l2(&[3.0, 5.0], &[3.0, 4.0]) - 0.2).abs() < 1e-12);
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        assert!(max_abs_diff(&[f32::NAN], &[0.0]).is_nan());
    }

    #[test]
    fn non_finite_values_are_counted() {
        assert_eq!(count_non_finite(&[1.0, f32::NAN, f32::INFINITY, -2.0]), 2);
    }

    #[test]
    fn min_and_max_propagate_nan_wherever_it_stands() {
        assert_eq!(min(&[0.5, 0.2, 0.9]), 0.2);
        assert_eq!(max(&[0.5, 0.2, 0.9]), 0.9);
        for values in [
            [f64::NAN, 0.5, 0.2],
            [0.5, f64::NAN, 0.2],
            [0.5, 0.2, f64::NAN],
        ] {
            assert!(min(&values).is_nan(), "{values:?}");
            assert!(max(&values).is_nan(), "{values:?}");
        }
    }

    #[test]
    fn ks_of_a_sample_with_itself_is_zero_and_of_disjoint_samples_one() {
        let a = [0.1, 0.5, -2.0, 3.0, 0.5];
        assert_eq!(ks_statistic(&a, &a), 0.0);
        assert_eq!(ks_statistic(&[0.0, 1.0], &[2.0, 3.0]), 1.0);
        let d = ks_statistic(&[0.0, 1.0, 2.0, 3.0], &[0.5, 1.5, 2.5, 3.5]);
        assert!((d - 0.25).abs() < 1e-12, "{d}");
        assert!(ks_statistic(&[0.0, f64::NAN], &[0.0, 1.0]).is_nan());
        assert!(ks_statistic(&[], &[0.0]).is_nan());
        assert_eq!(ks_statistic(&[f64::INFINITY], &[f64::NEG_INFINITY]), 1.0);
    }

    #[test]
    fn identical_states_compare_perfectly() {
        let s = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]];
        let c = compare_states(&s, &s, 2);
        assert_eq!(c.relative_l2, 0.0);
        assert_eq!(c.max_abs_diff, 0.0);
        assert!((c.pooled_cosine_min - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_changed_residue_lowers_the_pooled_cosine() {
        let r = vec![vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]];
        let t = vec![vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0]];
        let c = compare_states(&t, &r, 2);
        assert!(c.pooled_cosine_min < 0.01);
        assert_eq!(c.token_cosine_min, 0.0);
    }

    #[test]
    fn a_nan_anywhere_reaches_every_comparison() {
        let r = vec![vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]; 2];
        let mut t = r.clone();
        t[1][3] = f32::NAN;
        let c = compare_states(&t, &r, 2);
        assert!(c.pooled_cosine_min.is_nan() && c.token_cosine_min.is_nan());
        assert!(c.max_abs_diff.is_nan() && c.pooled_max_abs_diff.is_nan());
        assert!(c.relative_l2.is_nan());
        assert_eq!((c.non_finite, c.pooled_cosine_argmin), (1, 1));
    }
}
