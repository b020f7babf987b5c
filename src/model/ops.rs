//! Numeric building blocks shared by every layer, each realising the [`ComputePlan`]: the
//! matrix product mode, and where softmax and LayerNorm statistics are widened to f32.
//! These are the only places precision is decided; the layers just call them.

use burn::tensor::{DType, Tensor, backend::Backend};

use super::precision::{ComputePlan, MatmulMode};

/// Whether cuBLAS can run a plan that asks for it. The commands settle this before building
/// a plan ([`crate::model::resolve_gemm`]); a plan built by hand on a machine without cuBLAS
/// gets burn's kernels and one warning.
#[cfg(feature = "cuda")]
fn cublas_loads() -> bool {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let loads = super::cublas::available();
    if let Err(why) = &loads {
        WARNED.call_once(|| {
            eprintln!(
                "warning: the plan asks for cuBLAS but {why}; burn's kernels compute the products"
            )
        });
    }
    loads.is_ok()
}

/// `a @ b` under the plan's matmul mode.
///
/// # Shapes
/// `a: [..., m, k]`, `b: [..., k, n]` -> `[..., m, n]`
pub fn matmul<B: Backend, const D: usize>(
    plan: &ComputePlan,
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    let (a, b) = if plan.gemm == super::precision::Gemm::Cublas
        && plan.matmul != MatmulMode::ReorderedF32
        && cublas_loads()
    {
        match super::cublas::matmul(a, b, plan.cublas_compute()) {
            Ok(product) => return product,
            // Not the CUDA backend, or shapes a strided batched GEMM cannot take.
            Err(operands) => operands,
        }
    } else {
        (a, b)
    };
    match plan.matmul {
        MatmulMode::Native => {
            super::cpu_kernels::matmul_half(plan.backend, a, b).unwrap_or_else(|(a, b)| a.matmul(b))
        }
        MatmulMode::EmulatedTf32 => round_to_tf32(a).matmul(round_to_tf32(b)),
        MatmulMode::SplitBf16x6 => split_bf16x6_matmul(a, b, |x, y| x.matmul(y)),
        MatmulMode::ReorderedF32 => {
            let reference = ComputePlan {
                gemm: plan.gemm,
                ..ComputePlan::new(plan.precision, plan.backend)
            };
            let k = a.dims()[D - 1];
            if k < 2 {
                return matmul(&reference, a, b);
            }
            let half = k / 2;
            let first = matmul(
                &reference,
                a.clone().narrow(D - 1, 0, half),
                b.clone().narrow(D - 2, 0, half),
            );
            first
                + matmul(
                    &reference,
                    a.narrow(D - 1, half, k - half),
                    b.narrow(D - 2, half, k - half),
                )
        }
    }
}

/// Rounds f32 values to 11 significant bits (TF32's precision) by Veltkamp splitting:
/// `g = a (2^13 + 1)`, `hi = g - (g - a)`. Exact on a backend that rounds each op separately.
pub fn round_to_tf32<B: Backend, const D: usize>(a: Tensor<B, D>) -> Tensor<B, D> {
    let g = a.clone().mul_scalar(8193.0);
    g.clone() - (g - a)
}

/// Splits `a` exactly into `a1 + a2 + a3`, with `a1`, `a2` bf16-representable (so exact on
/// TF32 tensor cores) and `|a3| <= 2^-16 |a|`.
fn split3<B: Backend, const D: usize>(a: Tensor<B, D>) -> [Tensor<B, D>; 3] {
    let a1 = a.clone().cast(DType::BF16).cast(DType::F32);
    let r = a - a1.clone();
    let a2 = r.clone().cast(DType::BF16).cast(DType::F32);
    let a3 = r - a2.clone();
    [a1, a2, a3]
}

/// Reduction length above which the split product is computed in chunks along `k`, summed
/// with ordinary f32 additions. Tensor-core MMA accumulation is not sequential IEEE f32: on
/// an H100 the unchunked split product of two 1024 x 1024 random matrices measured 1.155e-6
/// relative error against f64 (the CPU's f32 gemm: ~4e-7), so the accumulation is kept short.
pub const SPLIT_K_CHUNK: usize = 256;

/// True-f32 product from six TF32-exact partial products (see [`MatmulMode::SplitBf16x6`]),
/// each computed by `product` (the backend's matmul; tests pass a TF32-rounding one), in
/// chunks of [`SPLIT_K_CHUNK`] along the reduction dimension.
pub fn split_bf16x6_matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    product: impl Fn(Tensor<B, D>, Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let k = a.dims()[D - 1];
    let [a1, a2, a3] = split3(a);
    let [b1, b2, b3] = split3(b);
    let mut total: Option<Tensor<B, D>> = None;
    for start in (0..k).step_by(SPLIT_K_CHUNK) {
        let end = (start + SPLIT_K_CHUNK).min(k);
        let (ac, bc) = if start == 0 && end == k {
            (
                [a1.clone(), a2.clone(), a3.clone()],
                [b1.clone(), b2.clone(), b3.clone()],
            )
        } else {
            let cols = |t: &Tensor<B, D>| t.clone().narrow(D - 1, start, end - start);
            let rows = |t: &Tensor<B, D>| t.clone().narrow(D - 2, start, end - start);
            (
                [cols(&a1), cols(&a2), cols(&a3)],
                [rows(&b1), rows(&b2), rows(&b3)],
            )
        };
        let [x1, x2, x3] = ac;
        let [y1, y2, y3] = bc;
        let small =
            product(x1.clone(), y3) + product(x3, y1.clone()) + product(x2.clone(), y2.clone());
        let middle = product(x1.clone(), y2) + product(x2, y1.clone());
        let chunk = product(x1, y1) + (middle + small);
        total = Some(match total {
            Some(t) => t + chunk,
            None => chunk,
        });
    }
    total.unwrap_or_else(|| unreachable!("a matmul has a non-empty reduction dimension"))
}

/// `x + bias`, the bias added to every row (on the CPU by one kernel, rounding as burn-flex's
/// add does).
///
/// # Shapes
/// `x: [rows, width]`, `bias: [width]` -> `[rows, width]`
pub fn add_bias<B: Backend>(
    plan: &ComputePlan,
    x: Tensor<B, 2>,
    bias: &Tensor<B, 1>,
) -> Tensor<B, 2> {
    super::cpu_kernels::add_bias(plan.backend, x, bias)
        .unwrap_or_else(|x| x + bias.clone().unsqueeze::<2>())
}

/// `x` in the dtype its statistics are computed in: f32 when the plan widens statistics
/// (and the unshifted fault is off), else unchanged.
fn for_statistics<B: Backend, const D: usize>(
    plan: &ComputePlan,
    x: Tensor<B, D>,
    unshifted_fault: bool,
) -> Tensor<B, D> {
    if plan.precision.statistics_in_f32() && !unshifted_fault {
        x.cast(DType::F32)
    } else {
        x
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch), statistics in f32 when
/// the plan asks for it.
///
/// # Shapes
/// `x: [..., hidden]`, `weight`, `bias: [hidden]` -> `[..., hidden]`
pub fn layer_norm<B: Backend, const D: usize>(
    plan: &ComputePlan,
    x: Tensor<B, D>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    eps: f64,
    unshifted_fault: bool,
) -> Tensor<B, D> {
    // On the CPU and on CUDA one kernel computes the same steps, rounded where these ops
    // store them.
    let x = match super::cpu_kernels::layer_norm(plan, x, weight, bias, eps, unshifted_fault) {
        Ok(normed) => return normed,
        Err(x) => x,
    };
    let x = match super::cuda_norm::layer_norm(plan, x, weight, bias, eps, unshifted_fault) {
        Ok(normed) => return normed,
        Err(x) => x,
    };
    composed_layer_norm(plan, x, weight, bias, eps, unshifted_fault)
}

/// [`layer_norm`] composed of burn ops (what the CPU kernel computes, and what runs on CUDA).
///
/// # Shapes
/// `x: [..., hidden]`, `weight`, `bias: [hidden]` -> `[..., hidden]`
pub fn composed_layer_norm<B: Backend, const D: usize>(
    plan: &ComputePlan,
    x: Tensor<B, D>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    eps: f64,
    unshifted_fault: bool,
) -> Tensor<B, D> {
    let storage = x.dtype();
    let x = for_statistics(plan, x, unshifted_fault);
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let var = (centered.clone() * centered.clone()).mean_dim(D - 1);
    let normed = (centered / (var + eps).sqrt()).cast(storage);
    normed * weight.clone().unsqueeze::<D>() + bias.clone().unsqueeze::<D>()
}

/// Softmax over the last dimension with max-shift, computed in f32 when the plan asks for it.
/// The `unshifted_fault` drops the max-shift and the widening (a deliberate defect).
///
/// # Shapes
/// `x: [..., n]` -> `[..., n]`
pub fn softmax_last<B: Backend, const D: usize>(
    plan: &ComputePlan,
    x: Tensor<B, D>,
    unshifted_fault: bool,
) -> Tensor<B, D> {
    let storage = x.dtype();
    let x = for_statistics(plan, x, unshifted_fault);
    if unshifted_fault {
        let e = x.exp();
        let sum = e.clone().sum_dim(D - 1);
        return (e / sum).cast(storage);
    }
    // The backend's fused softmax: max-shifted, one pass over contiguous rows.
    burn::tensor::activation::softmax(x, D - 1).cast(storage)
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, as fair-esm and HF compute it.
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = (x.clone().div_scalar(std::f64::consts::SQRT_2).erf() + 1.0) * 0.5;
    x * cdf
}

/// The most negative finite value of a float dtype: the attention mask value, representable
/// in every storage dtype (so `-inf` arithmetic never produces NaN).
pub fn mask_value(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.389_531_4e38,
        _ => f32::MIN,
    }
}
