//! `x + bias` then the exact GELU, `x * ((erf(x / sqrt 2) + 1) * 0.5)`, in one pass: the
//! composed path's six element-wise passes (bias add, division, erf, add, multiply, multiply)
//! with the same f32 operations in the same order and the same erf (`libm::erff`, burn-flex's),
//! so the result is bit-identical to them.

use rayon::prelude::*;

use super::multiversion;

/// Rows per rayon task: enough work per task to amortise the hand-off.
const CHUNK_ROWS: usize = 64;

/// `x[r, c] = gelu(x[r, c] + bias[c])` in place.
///
/// # Shapes
/// `x: [rows, width]`, `bias: [width]`
///
/// # Panics
/// When `x` is not a whole number of rows of `bias.len()`.
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "{} values, rows of {width}",
        x.len()
    );
    x.par_chunks_mut(CHUNK_ROWS * width)
        .for_each(|rows| bias_gelu_rows(rows, bias));
}

multiversion! {
    fn bias_gelu_rows(rows: &mut [f32], bias: &[f32]) => bias_gelu_rows_body
}

#[inline(always)]
fn bias_gelu_rows_body(rows: &mut [f32], bias: &[f32]) {
    let sqrt2 = std::f64::consts::SQRT_2 as f32;
    for row in rows.chunks_exact_mut(bias.len()) {
        for (x, &b) in row.iter_mut().zip(bias) {
            let v = *x + b;
            let cdf = (libm::erff(v / sqrt2) + 1.0) * 0.5;
            *x = v * cdf;
        }
    }
}
