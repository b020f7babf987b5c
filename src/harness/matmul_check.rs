//! Measures what a policy's matrix product really computes: the relative L2 error of a
//! product of random f32 matrices against the same product in f64 on the host.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::model::{ComputePlan, ops, to_host};

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
    let c = to_host(ops::matmul(plan, upload(a), upload(b)));
    relative_error(&c, exact)
}

/// The operand layouts the model hands a matrix product, each as `(name, a, b)`, built from
/// random data: contiguous 2-D (a linear layer), a transposed view as `b` (attention's
/// `q k^T`), batched 4-D (`[batch, heads, len, head_dim]` after `swap_dims`), a narrowed
/// view (the split product's chunks) and a `b` broadcast over the batch.
pub fn layout_cases<B: Backend>(
    device: &B::Device,
) -> Vec<(&'static str, Tensor<B, 4>, Tensor<B, 4>)> {
    let tensor = |dims: [usize; 4], seed: u64| {
        let n: usize = dims.iter().product();
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::<B, 4>::from_data(TensorData::new(v, dims), device)
    };
    vec![
        (
            "contiguous [1,1,96,80] @ [1,1,80,72]",
            tensor([1, 1, 96, 80], 1),
            tensor([1, 1, 80, 72], 2),
        ),
        (
            "q @ k^T view, [2,3,40,16] @ [2,3,16,40]",
            tensor([2, 3, 40, 16], 3),
            tensor([2, 3, 40, 16], 4).swap_dims(2, 3),
        ),
        (
            "heads view, [2,40,3,16]->[2,3,40,16] @ [2,3,16,24]",
            tensor([2, 40, 3, 16], 5).swap_dims(1, 2),
            tensor([2, 3, 16, 24], 6),
        ),
        (
            "narrowed columns, [1,2,33,64][..,10..42] @ [1,2,32,17]",
            tensor([1, 2, 33, 64], 7).narrow(3, 10, 32),
            tensor([1, 2, 32, 17], 8),
        ),
        (
            "broadcast b, [2,3,20,8] @ [1,1,8,12]",
            tensor([2, 3, 20, 8], 9),
            tensor([1, 1, 8, 12], 10),
        ),
    ]
}

/// Largest relative L2 difference between `plan`'s and `reference`'s products over
/// [`layout_cases`], with the case's name.
pub fn layout_differences<B: Backend>(
    plan: &ComputePlan,
    reference: &ComputePlan,
    device: &B::Device,
) -> Vec<(&'static str, f64)> {
    layout_cases::<B>(device)
        .into_iter()
        .map(|(name, a, b)| {
            let flat = |t: Tensor<B, 4>| {
                let n = t.dims().iter().product::<usize>();
                to_host(t.reshape([n, 1]))
            };
            let product = |p: &ComputePlan| {
                let (a, b) = (a.clone().cast(p.dtype()), b.clone().cast(p.dtype()));
                flat(ops::matmul(p, a, b))
            };
            let got = product(plan);
            let want: Vec<f64> = product(reference).into_iter().map(f64::from).collect();
            (name, relative_error(&got, &want))
        })
        .collect()
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
    fn layout_cases_agree_between_two_orders_of_summation() {
        // The reordered FP32 product sums each reduction as two halves: the same values as
        // the plain product to f32 rounding, on every layout (and a mistaken stride would
        // not be). Guards the cases cuBLAS is checked on with `matmul-check --backend cuda`.
        let device = cpu_device();
        let plain = ComputePlan::new(Precision::F32, BackendKind::Cpu);
        let reordered = ComputePlan::reordered_f32(BackendKind::Cpu);
        let diffs = layout_differences::<Cpu>(&reordered, &plain, &device);
        assert_eq!(diffs.len(), 5);
        for (name, d) in diffs {
            assert!(d < 1e-6, "{name}: {d:e}");
        }
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
        let c = to_host(ops::split_bf16x6_matmul(
            upload(&a),
            upload(&b),
            tf32_product,
        ));
        let err = relative_error(&c, &exact);
        assert!(err < 1e-6, "split over TF32 products {err:e}");
    }
}
