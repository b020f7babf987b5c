//! The test backend's LayerNorm kernel (the CPU kernel, or on CUDA `layer_norm.cu`) against
//! the composed LayerNorm it replaces, on the same backend, per policy and statistics mode,
//! at ESM-2's widths (320: 8M, 1280: 650M) and one that no vector access divides (20).
//!
//! The kernel must have run (a composed fallback would make this test pass on nothing). Only
//! the order of the two row sums may differ, so half results equal the composition's but
//! where that order flips a rounding: of a statistic stored in the half type (the row moves by
//! a few ulps), or, with f32 statistics, of a quotient that lies next to a rounding boundary
//! (one value moves by one ulp). At most 2% of the values may differ, each by at most 4 ulps
//! of the storage type; f32 within 1e-5 of values of order 5.

use burn::tensor::{DType, Distribution, Tensor};
use esmfuzz::model::{BackendKind, ComputePlan, Precision, cpu_kernels, cuda_norm, ops, to_host};

use crate::common::{TestBackend, test_backend, test_device};

/// Relative spacing of the storage dtype's values (its machine epsilon).
fn epsilon(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2f32.powi(-10),
        DType::BF16 => 2f32.powi(-7),
        _ => f32::EPSILON,
    }
}

/// The backend's LayerNorm kernel on `x`, or `None` where it did not run.
fn kernel<const D: usize>(
    plan: &ComputePlan,
    x: Tensor<TestBackend, D>,
    w: &Tensor<TestBackend, 1>,
    b: &Tensor<TestBackend, 1>,
    unshifted: bool,
) -> Option<Tensor<TestBackend, D>> {
    let cpu = cpu_kernels::layer_norm(plan, x, w, b, 1e-5, unshifted);
    let x = match cpu {
        Ok(y) => return Some(y),
        Err(x) => x,
    };
    cuda_norm::layer_norm(plan, x, w, b, 1e-5, unshifted).ok()
}

#[test]
fn the_layer_norm_kernel_rounds_where_the_composed_layer_norm_does() {
    let device = test_device();
    let backend = test_backend();
    let mut checked = 0;
    for width in [20usize, 320, 1280] {
        let rows = 96;
        // Rows with an offset (the centring matters) and a spread like the residual stream.
        let x = Tensor::<TestBackend, 2>::random(
            [rows, width],
            Distribution::Normal(3.0, 4.0),
            &device,
        );
        let w = Tensor::<TestBackend, 1>::random([width], Distribution::Normal(1.0, 0.3), &device);
        let b = Tensor::<TestBackend, 1>::random([width], Distribution::Normal(0.0, 0.5), &device);
        for precision in [
            Precision::F32,
            Precision::F16,
            Precision::Bf16,
            Precision::F16Mixed,
        ] {
            for unshifted in [false, true] {
                let plan = ComputePlan::new(precision, backend);
                let dtype = plan.dtype();
                let (x, w, b) = (
                    x.clone().cast(dtype),
                    w.clone().cast(dtype),
                    b.clone().cast(dtype),
                );
                let what = format!("{precision} width {width} unshifted {unshifted} on {backend}");
                let composed = to_host(ops::composed_layer_norm(
                    &plan,
                    x.clone(),
                    &w,
                    &b,
                    1e-5,
                    unshifted,
                ));
                // Through a 3-d view too: the kernel takes every leading dim as rows.
                let stacked = x.clone().reshape([2, rows / 2, width]);
                let Some(normed) = kernel(&plan, stacked, &w, &b, unshifted) else {
                    panic!("{what}: the LayerNorm kernel did not run");
                };
                assert_eq!(normed.dtype(), dtype, "{what}");
                assert_eq!(normed.dims(), [2, rows / 2, width], "{what}");
                let normed = to_host(normed);
                let worst = normed
                    .iter()
                    .zip(&composed)
                    .fold(0.0f32, |m, (k, c)| m.max((k - c).abs()));
                // Differences in ulps of the storage type at the composed value (at least 1).
                let ulps =
                    |(k, c): (&f32, &f32)| (k - c).abs() / (epsilon(dtype) * c.abs().max(1.0));
                let worst_ulps = normed
                    .iter()
                    .zip(&composed)
                    .map(ulps)
                    .fold(0.0f32, f32::max);
                let differing = normed.iter().zip(&composed).filter(|(k, c)| k != c).count();
                eprintln!(
                    "{what}: {differing} of {} values differ, largest difference {worst:e} \
                     ({worst_ulps:.2} ulps)",
                    normed.len()
                );
                assert!(normed.iter().all(|v| v.is_finite()), "{what}");
                if dtype == DType::F32 {
                    assert!(worst < 1e-5, "{what}: {worst:e}");
                } else {
                    assert!(
                        differing * 50 <= normed.len(),
                        "{what}: {differing} values differ"
                    );
                    assert!(worst_ulps <= 4.0, "{what}: {worst_ulps} ulps");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

/// The residual + LayerNorm kernel (CUDA) against the composed block end and LayerNorm: the
/// residual sum bit for bit (two rounded adds either way), the norm as above. Off CUDA the
/// kernel must be refused, handing both operands back unchanged.
#[test]
fn the_residual_layer_norm_kernel_adds_then_normalises_as_the_composition_does() {
    let device = test_device();
    let backend = test_backend();
    let (rows, width) = (64, 320);
    let normal = |shape: [usize; 2], mean, sd| {
        Tensor::<TestBackend, 2>::random(shape, Distribution::Normal(mean, sd), &device)
    };
    let x = normal([rows, width], 1.0, 6.0);
    let product = normal([rows, width], 0.0, 3.0);
    let product_bias = normal([1, width], 0.0, 0.5).reshape([width]);
    let w = normal([1, width], 1.0, 0.3).reshape([width]);
    let b = normal([1, width], 0.0, 0.5).reshape([width]);
    let mut checked = 0;
    for precision in [
        Precision::F32,
        Precision::F16,
        Precision::Bf16,
        Precision::F16Mixed,
    ] {
        let plan = ComputePlan::new(precision, backend);
        let dtype = plan.dtype();
        let cast = |t: &Tensor<TestBackend, 2>| t.clone().cast(dtype);
        let cast1 = |t: &Tensor<TestBackend, 1>| t.clone().cast(dtype);
        let (x, product, pb, w, b) = (
            cast(&x),
            cast(&product),
            cast1(&product_bias),
            cast1(&w),
            cast1(&b),
        );
        let what = format!("{precision} on {backend}");
        let composed_sum = x.clone() + (product.clone() + pb.clone().unsqueeze::<2>());
        let composed = to_host(ops::composed_layer_norm(
            &plan,
            composed_sum.clone(),
            &w,
            &b,
            1e-5,
            false,
        ));
        let result = cuda_norm::residual_layer_norm(
            &plan,
            x.clone(),
            product.clone(),
            &pb,
            &w,
            &b,
            1e-5,
            false,
        );
        let (sum, normed) = match (backend, result) {
            (BackendKind::Cuda, Ok(both)) => both,
            (BackendKind::Cuda, Err(_)) => panic!("{what}: the residual kernel did not run"),
            (BackendKind::Cpu, Err((x_back, product_back))) => {
                assert_eq!(to_host(x_back), to_host(x), "{what}");
                assert_eq!(to_host(product_back), to_host(product), "{what}");
                checked += 1;
                continue;
            }
            (BackendKind::Cpu, Ok(_)) => panic!("{what}: no residual kernel exists on the CPU"),
        };
        assert_eq!(
            to_host(sum),
            to_host(composed_sum),
            "{what}: the residual sum"
        );
        let normed = to_host(normed);
        let ulps = |(k, c): (&f32, &f32)| (k - c).abs() / (epsilon(dtype) * c.abs().max(1.0));
        let worst_ulps = normed
            .iter()
            .zip(&composed)
            .map(ulps)
            .fold(0.0f32, f32::max);
        let differing = normed.iter().zip(&composed).filter(|(k, c)| k != c).count();
        eprintln!(
            "{what}: residual kernel, {differing} of {} normed values differ ({worst_ulps:.2} ulps)",
            normed.len()
        );
        if dtype == DType::F32 {
            assert!(worst_ulps <= 64.0, "{what}: {worst_ulps} ulps");
        } else {
            assert!(
                differing * 50 <= normed.len(),
                "{what}: {differing} values differ"
            );
            assert!(worst_ulps <= 4.0, "{what}: {worst_ulps} ulps");
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}
