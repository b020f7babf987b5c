//! Measures what a policy's matrix product really computes: the relative L2 error of a
//! product of random f32 matrices against the same product in f64 on the host.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::ops;
use super::precision::ComputePlan;
use crate::batch::HostStates;

/// Uniform values in [-1, 1), `[n, n]` row-major, deterministic in `seed`.
pub fn random_matrix(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `a @ b` for `[n, n]` row-major matrices, in f64.
pub fn matmul_f64(a: &[f32], b: &[f32], n: usize) -> Vec<f64> {
    let mut c = vec![0f64; n * n];
    for i in 0..n {
        let row = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k] as f64;
            for (cj, &bkj) in row.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                *cj += aik * bkj as f64;
            }
        }
    }
    c
}

/// Relative L2 error of the plan's product of `a` and `b` (`[n, n]`) against `exact`.
pub fn matmul_relative_error<B: Backend>(
    plan: &ComputePlan,
    a: &[f32],
    b: &[f32],
    exact: &[f64],
    n: usize,
    device: &B::Device,
) -> f64 {
    let upload = |v: &[f32]| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [n, n]), device).cast(plan.dtype())
    };
    let c = HostStates::fetch(ops::matmul(plan, upload(a), upload(b)));
    relative_error(&c.data, exact)
}

/// `||c - exact|| / ||exact||` (L2), accumulated in f64.
fn relative_error(c: &[f32], exact: &[f64]) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&t, &e) in c.iter().zip(exact) {
        diff += (t as f64 - e).powi(2);
        norm += e * e;
    }
    (diff / norm).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, cpu_device};
    use crate::model::{BackendKind, Precision};

    #[test]
    fn cpu_f32_is_true_f32_and_tf32_emulation_loses_bits() {
        let n = 128;
        let (a, b) = (random_matrix(n, 1), random_matrix(n, 2));
        let exact = matmul_f64(&a, &b, n);
        let err = |p| {
            matmul_relative_error::<Cpu>(
                &ComputePlan::new(p, BackendKind::Cpu),
                &a,
                &b,
                &exact,
                n,
                &cpu_device(),
            )
        };
        let (f32_err, tf32_err) = (err(Precision::F32), err(Precision::Tf32));
        assert!(f32_err < 1e-6, "f32 {f32_err:e}");
        assert!(tf32_err > 5e-5 && tf32_err < 1e-3, "tf32 {tf32_err:e}");
    }

    #[test]
    fn split_bf16x6_product_is_true_f32_even_on_a_tf32_matmul() {
        // On the CPU the parts are multiplied in f32; rounding each part to TF32 first
        // (what tensor cores do) must not change the result beyond f32 accuracy, since the
        // parts a1, a2 are TF32-exact and a3 is tiny.
        let n = 600; // not a multiple of SPLIT_K_CHUNK: exercises the chunked reduction
        let (a, b) = (random_matrix(n, 3), random_matrix(n, 4));
        let exact = matmul_f64(&a, &b, n);
        let device = cpu_device();
        let upload =
            |v: &[f32]| Tensor::<Cpu, 2>::from_data(TensorData::new(v.to_vec(), [n, n]), &device);
        let tf32_product = |x: Tensor<Cpu, 2>, y: Tensor<Cpu, 2>| {
            ops::round_to_tf32(x).matmul(ops::round_to_tf32(y))
        };
        let c = HostStates::fetch(ops::split_bf16x6_matmul(
            upload(&a),
            upload(&b),
            tf32_product,
        ));
        let err = relative_error(&c.data, &exact);
        assert!(err < 1e-6, "split over TF32 products {err:e}");
    }
}
