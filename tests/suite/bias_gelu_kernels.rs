//! The test backend's bias + GELU kernel (the CPU kernel, or on CUDA `bias_gelu.cu`) against
//! the composed ops it replaces (`gelu_exact(x + bias)`), on the same backend, per storage
//! dtype, at ESM-2's FFN widths (1280: 8M, 5120: 650M) and one that no vector access divides
//! (20). Both round every step to the storage dtype in the same order, so the kernel must
//! give the composition's values bit for bit.
//!
//! The kernel must have run (a composed fallback would make this test pass on nothing).

use burn::tensor::{DType, Distribution, Tensor, TensorData};
use esmfuzz::model::{cpu_kernels, cuda_gelu, ops, to_host};

use crate::common::{TestBackend, test_backend, test_device};

/// The backend's bias + GELU kernel on `x`, or `None` where none ran.
fn kernel(x: Tensor<TestBackend, 2>, bias: &Tensor<TestBackend, 1>) -> Option<Vec<f32>> {
    let x = match cpu_kernels::bias_gelu(test_backend(), x, bias) {
        Ok(y) => return Some(to_host(y)),
        Err(x) => x,
    };
    cuda_gelu::bias_gelu(x, bias).ok().map(to_host)
}

#[test]
fn the_bias_gelu_kernel_gives_the_composed_values_bit_for_bit() {
    let device = test_device();
    let backend = test_backend();
    let rows = 48;
    let mut checked = 0;
    for width in [20usize, 1280, 5120] {
        // FFN pre-activations spread over GELU's curved part and both tails; the first row
        // holds the edge values (zero, signed zero, the f16 range, tiny and huge inputs).
        let mut values = Tensor::<TestBackend, 2>::random(
            [rows, width],
            Distribution::Normal(0.0, 3.0),
            &device,
        )
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 values");
        let edges = [
            0.0, -0.0, 1e-6, -1e-6, 0.5, -0.5, 3.0, -3.0, 6.0, -6.0, 12.0, -12.0, 600.0, -600.0,
            6e4, -6e4,
        ];
        for (v, e) in values.iter_mut().zip(edges) {
            *v = e;
        }
        let x =
            Tensor::<TestBackend, 2>::from_data(TensorData::new(values, [rows, width]), &device);
        let bias =
            Tensor::<TestBackend, 1>::random([width], Distribution::Normal(0.0, 0.5), &device);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let (x, bias) = (x.clone().cast(dtype), bias.clone().cast(dtype));
            let what = format!("{dtype:?} width {width} on {backend}");
            let composed = to_host(ops::gelu_exact(x.clone() + bias.clone().unsqueeze::<2>()));
            let Some(fused) = kernel(x, &bias) else {
                panic!("{what}: the bias + GELU kernel did not run");
            };
            assert_eq!(fused.len(), composed.len(), "{what}");
            let differing: Vec<_> = fused
                .iter()
                .zip(&composed)
                .enumerate()
                .filter(|(_, (k, c))| k.to_bits() != c.to_bits())
                .collect();
            assert!(
                differing.is_empty(),
                "{what}: {} of {} values differ, the first (index, (kernel, composed)) {:?}",
                differing.len(),
                fused.len(),
                &differing[..differing.len().min(5)]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

/// Every value of each half type (all 2^16 bit patterns: subnormals, infinities and NaN
/// included) through the kernel and the composition, bias zero: the kernel's own division
/// and paired-lane steps (`bias_gelu.cu`) must agree with the composition on every input
/// GELU can see, not only on sampled ones.
#[test]
fn the_bias_gelu_kernel_gives_the_composed_values_for_every_half_value() {
    let device = test_device();
    let backend = test_backend();
    type ValueOf = fn(u16) -> f32;
    let types: [(DType, ValueOf); 2] = [
        (DType::F16, |b| half::f16::from_bits(b).to_f32()),
        (DType::BF16, |b| half::bf16::from_bits(b).to_f32()),
    ];
    for (dtype, value_of) in types {
        let what = format!("{dtype:?} on {backend}");
        // Exact in f32, so the cast gives every pattern back.
        let values: Vec<f32> = (0..=u16::MAX).map(value_of).collect();
        let x = Tensor::<TestBackend, 2>::from_data(TensorData::new(values, [256, 256]), &device)
            .cast(dtype);
        let bias = Tensor::<TestBackend, 1>::zeros([256], &device).cast(dtype);
        let composed = to_host(ops::gelu_exact(x.clone() + bias.clone().unsqueeze::<2>()));
        let Some(fused) = kernel(x, &bias) else {
            panic!("{what}: the bias + GELU kernel did not run");
        };
        assert_eq!(fused.len(), 1 << 16, "{what}");
        let same = |k: f32, c: f32| k.to_bits() == c.to_bits() || (k.is_nan() && c.is_nan());
        let differing: Vec<_> = fused
            .iter()
            .zip(&composed)
            .enumerate()
            .filter(|(_, (k, c))| !same(**k, **c))
            .map(|(i, (k, c))| (value_of(i as u16), *k, *c))
            .collect();
        assert!(
            differing.is_empty(),
            "{what}: {} of 65536 values differ, the first (input, kernel, composed) {:?}",
            differing.len(),
            &differing[..differing.len().min(5)]
        );
        assert!(
            composed.iter().filter(|v| v.is_finite()).count() > 60_000,
            "{what}"
        );
    }
}
