//! Corpus-level comparison of token states: a test precision against a reference (this
//! project's FP32, or the HF reference outputs).

use serde::Serialize;

use crate::metrics;

/// How far one set of per-sequence token states is from another.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Comparison {
    /// Minimum over sequences of the cosine of the residue-mean-pooled embeddings.
    pub pooled_cosine_min: f64,
    /// Index of that sequence.
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

/// Residue-mean of one sequence's `[n + 2, hidden]` states (BOS and EOS excluded).
pub fn pool_residues(states: &[f32], hidden: usize) -> Vec<f32> {
    let rows = states.len() / hidden;
    let mut acc = vec![0f64; hidden];
    for row in states[hidden..(rows - 1) * hidden].chunks_exact(hidden) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    let n = (rows - 2).max(1) as f64;
    acc.into_iter().map(|a| (a / n) as f32).collect()
}

/// Compares per-sequence token states (`[n_i + 2, hidden]` each).
pub fn compare_states(test: &[Vec<f32>], reference: &[Vec<f32>], hidden: usize) -> Comparison {
    assert_eq!(test.len(), reference.len());
    let mut pooled_cos = Vec::with_capacity(test.len());
    let mut token_cos = Vec::new();
    let mut pooled_max = 0f64;
    let (mut diff2, mut ref2, mut max_abs, mut non_finite) = (0f64, 0f64, 0f64, 0usize);
    for (t, r) in test.iter().zip(reference) {
        let (pt, pr) = (pool_residues(t, hidden), pool_residues(r, hidden));
        pooled_cos.push(metrics::cosine(&pt, &pr));
        pooled_max = pooled_max.max(metrics::max_abs_diff(&pt, &pr));
        token_cos.extend(metrics::row_cosines(t, r, hidden));
        for (&a, &b) in t.iter().zip(r) {
            let d = a as f64 - b as f64;
            diff2 += d * d;
            ref2 += (b as f64) * (b as f64);
            max_abs = if d.is_nan() {
                f64::NAN
            } else {
                max_abs.max(d.abs())
            };
        }
        non_finite += metrics::count_non_finite(t);
    }
    let pooled_cosine_min = metrics::min(&pooled_cos);
    let pooled_cosine_argmin = pooled_cos
        .iter()
        .position(|&c| c == pooled_cosine_min || c.is_nan())
        .unwrap_or(0);
    Comparison {
        pooled_cosine_min,
        pooled_cosine_argmin,
        token_cosine_min: metrics::min(&token_cos),
        token_cosine_mean: metrics::mean(&token_cos),
        relative_l2: (diff2 / ref2).sqrt(),
        max_abs_diff: max_abs,
        pooled_max_abs_diff: pooled_max,
        non_finite,
    }
}

/// Pooled embeddings against a `[N, hidden]` reference: (cosine per row, max |diff|).
pub fn compare_pooled(test: &[Vec<f32>], reference: &[f32], hidden: usize) -> (Vec<f64>, f64) {
    let mut cos = Vec::with_capacity(test.len());
    let mut max = 0f64;
    for (t, r) in test.iter().zip(reference.chunks_exact(hidden)) {
        cos.push(metrics::cosine(t, r));
        max = max.max(metrics::max_abs_diff(t, r));
    }
    (cos, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_states_compare_perfectly() {
        let s = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]];
        let c = compare_states(&s, &s, 2);
        assert_eq!(c.relative_l2, 0.0);
        assert_eq!(c.max_abs_diff, 0.0);
        assert!((c.pooled_cosine_min - 1.0).abs() < 1e-12);
        assert_eq!(pool_residues(&s[0], 2), vec![3.0, 4.0]);
    }

    #[test]
    fn a_changed_residue_lowers_the_pooled_cosine() {
        let r = vec![vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]];
        let t = vec![vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0]];
        let c = compare_states(&t, &r, 2);
        assert!(c.pooled_cosine_min < 0.01);
        assert_eq!(c.token_cosine_min, 0.0);
    }
}
