//! `x + bias` then the exact GELU, `x * ((erf(x / sqrt 2) + 1) * 0.5)`, in one pass: the
//! composed path's six element-wise passes (bias add, division, erf, add, multiply, multiply)
//! with the same f32 operations in the same order, each result rounded to the storage dtype
//! as burn-flex rounds each op's result (the constant `sqrt 2` too), and the same erf
//! (`libm::erff`, burn-flex's, in the branch-free form of [`super::erf`], bit for bit), so the
//! result is bit-identical to them.

use rayon::prelude::*;

use super::erf::erf;
use super::multiversion;
use super::storage::{Bf16, Dtype, F16, F32, Storage};

/// Rows per rayon task: enough work per task to amortise the hand-off.
const CHUNK_ROWS: usize = 64;

/// `x[r, c] = gelu(x[r, c] + bias[c])` in place, every step rounded to `dtype` (`x` and
/// `bias` hold values of `dtype`).
///
/// # Shapes
/// `x: [rows, width]`, `bias: [width]`
///
/// # Panics
/// When `x` is not a whole number of rows of `bias.len()`.
pub fn bias_gelu(x: &mut [f32], bias: &[f32], dtype: Dtype) {
    match dtype {
        Dtype::F32 => bias_gelu_in::<F32>(x, bias),
        Dtype::F16 => bias_gelu_in::<F16>(x, bias),
        Dtype::Bf16 => bias_gelu_in::<Bf16>(x, bias),
    }
}

fn bias_gelu_in<S: Storage>(x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "{} values, rows of {width}",
        x.len()
    );
    x.par_chunks_mut(CHUNK_ROWS * width)
        .for_each(|rows| bias_gelu_rows::<S>(rows, bias));
}

multiversion! {
    fn bias_gelu_rows<S: Storage>(rows: &mut [f32], bias: &[f32]) => bias_gelu_rows_body
}

#[inline(always)]
fn bias_gelu_rows_body<S: Storage>(rows: &mut [f32], bias: &[f32]) {
    let sqrt2 = S::round(std::f64::consts::SQRT_2 as f32);
    // Three passes per row, each a loop the compiler vectorises.
    let mut t = vec![0.0f32; bias.len()];
    for row in rows.chunks_exact_mut(bias.len()) {
        for ((x, &b), t) in row.iter_mut().zip(bias).zip(t.iter_mut()) {
            let v = S::round(*x + b);
            *x = v;
            *t = S::round(v / sqrt2);
        }
        for t in t.iter_mut() {
            *t = erf(*t);
        }
        for (x, &erf) in row.iter_mut().zip(&t) {
            let cdf = S::round(S::round(S::round(erf) + 1.0) * 0.5);
            *x = S::round(*x * cdf);
        }
    }
}
