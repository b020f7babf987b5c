//! LayerNorm over rows in one pass per row, as esmfuzz's composed LayerNorm computes it:
//! `mean`, `x - mean`, `var = mean((x - mean)^2)`, `sqrt(var + eps)`, the division, then
//! `* weight + bias`. With [`Statistics::Storage`] every one of those is rounded to the
//! storage dtype where the composition stores a tensor (burn-flex's half `mean` sums in f32
//! and rounds the quotient; `eps` itself is rounded, as a scalar op on a half tensor rounds
//! it); with [`Statistics::F32`] they stay f32 and only the normalised value is rounded
//! before the affine steps (the policy's cast back to storage). Only the order of the two
//! row sums differs from the composition: eight interleaved partial sums, then those.

use rayon::prelude::*;

use super::attention::Statistics;
use super::multiversion;
use super::storage::{Bf16, Dtype, F16, F32, Storage};

/// Rows per rayon task.
const CHUNK_ROWS: usize = 64;

/// `x[r] = layer_norm(x[r]) * weight + bias` in place for every row of `weight.len()` values.
///
/// # Shapes
/// `x: [rows, width]`, `weight`, `bias: [width]`
///
/// # Panics
/// When `x` is not a whole number of rows, or `bias` is not as wide as `weight`.
pub fn layer_norm(
    x: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f64,
    dtype: Dtype,
    statistics: Statistics,
) {
    let width = weight.len();
    assert!(width > 0 && x.len().is_multiple_of(width) && bias.len() == width);
    let affine = Affine {
        weight,
        bias,
        eps,
        statistics,
    };
    x.par_chunks_mut(CHUNK_ROWS * width)
        .for_each(|rows| match dtype {
            Dtype::F32 => rows_of::<F32>(rows, affine),
            Dtype::F16 => rows_of::<F16>(rows, affine),
            Dtype::Bf16 => rows_of::<Bf16>(rows, affine),
        });
}

/// The norm's parameters.
#[derive(Clone, Copy)]
struct Affine<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f64,
    statistics: Statistics,
}

multiversion! {
    fn rows_of<S: Storage>(rows: &mut [f32], affine: Affine<'_>) => rows_body
}

#[inline(always)]
fn rows_body<S: Storage>(rows: &mut [f32], affine: Affine<'_>) {
    let Affine {
        weight,
        bias,
        eps,
        statistics,
    } = affine;
    let stored = statistics == Statistics::Storage;
    // A statistic as the composition stores it: rounded in storage statistics, else f32.
    let keep = |v: f32| if stored { S::round(v) } else { v };
    let n = weight.len() as f32;
    let eps = keep(eps as f32);
    for row in rows.chunks_exact_mut(weight.len()) {
        let mean = keep(sum_in_lanes(row, |x| x) / n);
        for x in row.iter_mut() {
            *x = keep(*x - mean);
        }
        let var = keep(sum_in_lanes(row, |c| keep(c * c)) / n);
        let scale = keep(keep(var + eps).sqrt());
        for ((x, &w), &b) in row.iter_mut().zip(weight).zip(bias) {
            let normed = S::round(*x / scale);
            *x = S::round(S::round(normed * w) + b);
        }
    }
}

/// `sum_j f(x_j)` as eight interleaved partial sums (lane `j mod 8`, a tail in lane 0), then
/// those left to right.
#[inline(always)]
fn sum_in_lanes(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    for &v in chunks.remainder() {
        acc[0] += f(v);
    }
    acc.iter().fold(0.0, |total, &a| total + a)
}
