//! Pure numeric comparisons on host slices, all accumulated in f64.

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

/// Minimum of a slice of f64 (NaN propagates); +inf when empty.
pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, |m, v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.min(v)
        }
    })
}

/// Arithmetic mean; NaN when empty.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
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
    fn min_propagates_nan() {
        assert_eq!(min(&[0.5, 0.2, 0.9]), 0.2);
        assert!(min(&[0.5, f64::NAN]).is_nan());
    }
}
