//! Element-wise sums in the storage dtype, `round(x + y)`, as burn-flex adds two tensors of a
//! half dtype (each value widened to f32, added, rounded back): bit-identical to it. The
//! caller widens and narrows a slice at a time.

use rayon::prelude::*;

use super::multiversion;
use super::storage::{Bf16, Dtype, F16, F32, Storage};

/// Values per rayon task.
const CHUNK: usize = 1 << 16;

/// `x[r, c] = round(x[r, c] + row[c])` in `dtype`: a bias added to every row.
///
/// # Shapes
/// `x: [rows, width]`, `row: [width]`
///
/// # Panics
/// When `x` is not a whole number of rows.
pub fn add_rows(x: &mut [f32], row: &[f32], dtype: Dtype) {
    let width = row.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "{} by {width}",
        x.len()
    );
    let rows_per_task = (CHUNK / width).max(1);
    x.par_chunks_mut(rows_per_task * width)
        .for_each(|part| match dtype {
            Dtype::F32 => add_rows_part::<F32>(part, row),
            Dtype::F16 => add_rows_part::<F16>(part, row),
            Dtype::Bf16 => add_rows_part::<Bf16>(part, row),
        });
}

/// `x[i] = round(x[i] + y[i])` in `dtype`.
///
/// # Panics
/// When the lengths differ.
pub fn add_same(x: &mut [f32], y: &[f32], dtype: Dtype) {
    assert_eq!(x.len(), y.len());
    x.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(part, other)| match dtype {
            Dtype::F32 => add_same_part::<F32>(part, other),
            Dtype::F16 => add_same_part::<F16>(part, other),
            Dtype::Bf16 => add_same_part::<Bf16>(part, other),
        });
}

multiversion! {
    fn add_rows_part<S: Storage>(part: &mut [f32], row: &[f32]) => add_rows_body
}

multiversion! {
    fn add_same_part<S: Storage>(part: &mut [f32], other: &[f32]) => add_same_body
}

#[inline(always)]
fn add_rows_body<S: Storage>(part: &mut [f32], row: &[f32]) {
    for values in part.chunks_exact_mut(row.len()) {
        add_same_body::<S>(values, row);
    }
}

#[inline(always)]
fn add_same_body<S: Storage>(part: &mut [f32], other: &[f32]) {
    for (x, &y) in part.iter_mut().zip(other) {
        *x = S::round(*x + y);
    }
}
