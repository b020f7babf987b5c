//! LayerNorm on CUDA in one kernel per norm (`layer_norm.cu`: one warp per row) instead of
//! burn's composition of two reductions and the element-wise steps between and after them.
//!
//! It keeps the composition's rounding points ([`super::ops::composed_layer_norm`]): the
//! same operations in the same dtypes, the half ones through the same CUDA operators cubecl's
//! kernels use; only the order of the two f32 row sums differs. It runs as a custom operation
//! in burn's fusion stream on cubecl's stream, like the cuBLAS products; where the kernel
//! does not load (or the tensor is not on esmfuzz's CUDA backend in f32, f16 or bf16) the
//! composition runs instead, as it does everywhere under `ESMFUZZ_COMPOSED_LAYER_NORM=1`
//! (to compare the two, or to time them).

use burn::tensor::{DType, Tensor, backend::Backend};

use super::kernel_names::{lanes, storage_suffix};
use super::precision::ComputePlan;

/// Whether `ESMFUZZ_COMPOSED_LAYER_NORM=1` asks for burn's composition instead of the kernel
/// (read once; the policy description says which runs).
pub fn composed_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var_os("ESMFUZZ_COMPOSED_LAYER_NORM").is_some_and(|v| v == "1"))
}

/// Whether the LayerNorm's statistics are kept in the storage dtype: where the plan keeps
/// them there, or the unshifted fault forces it (f32 storage: the same either way).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn statistics_stored(plan: &ComputePlan, unshifted_fault: bool) -> bool {
    !plan.precision.statistics_in_f32() || unshifted_fault
}

/// `eps` as the kernel adds it: rounded to the storage dtype where the statistics are stored
/// (a scalar op on a half tensor rounds its scalar), else f32.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn kernel_eps(eps: f64, dtype: DType, stored: bool) -> f32 {
    let eps = eps as f32;
    match dtype {
        DType::F16 if stored => half::f16::from_f32(eps).to_f32(),
        DType::BF16 if stored => half::bf16::from_f32(eps).to_f32(),
        _ => eps,
    }
}

/// The kernel's name for `dtype` (f32 always runs the stored body: every step f32) with
/// `lanes` values per access; with the residual add before the norm where `residual`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn kernel_name(dtype: DType, stored: bool, vectorised: bool, residual: bool) -> Option<String> {
    let name = storage_suffix(dtype)?;
    let body = if stored || dtype == DType::F32 {
        "stored"
    } else {
        "wide"
    };
    let lanes = if vectorised { lanes(dtype) } else { 1 };
    let residual = if residual { "residual_" } else { "" };
    Some(format!("esm_{residual}layer_norm_{name}_{body}_v{lanes}"))
}

/// LayerNorm of `x` over its last dimension by the CUDA kernel, as
/// [`super::ops::composed_layer_norm`] computes it under `plan`, when `x` is on esmfuzz's
/// CUDA backend in a dtype the kernel exists for (weight and bias of that dtype too) and the
/// kernel loads; `x` back otherwise.
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
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    #[cfg(feature = "cuda")]
    return cuda::layer_norm(plan, x, weight, bias, eps, unshifted_fault);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (plan, weight, bias, eps, unshifted_fault);
        Err(x)
    }
}

/// A block's end and the next LayerNorm in one kernel: `sum = x + (product + product_bias)`
/// (the linear's bias add, then the residual add, each rounded to the storage dtype as the
/// composed ops round them) and [`layer_norm`] of `sum`, when every tensor is of one dtype
/// the kernel exists for on esmfuzz's CUDA backend and the kernel loads; `(x, product)` back
/// otherwise.
///
/// # Shapes
/// `x`, `product: [rows, hidden]`, `product_bias`, `weight`, `bias: [hidden]` ->
/// (`sum`, `normed`): `[rows, hidden]` each
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn residual_layer_norm<B: Backend>(
    plan: &ComputePlan,
    x: Tensor<B, 2>,
    product: Tensor<B, 2>,
    product_bias: &Tensor<B, 1>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    eps: f64,
    unshifted_fault: bool,
) -> Result<(Tensor<B, 2>, Tensor<B, 2>), (Tensor<B, 2>, Tensor<B, 2>)> {
    #[cfg(feature = "cuda")]
    return cuda::residual_layer_norm(
        plan,
        x,
        product,
        product_bias,
        weight,
        bias,
        eps,
        unshifted_fault,
    );
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (plan, product_bias, weight, bias, eps, unshifted_fault);
        Err((x, product))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::tensor::{DType, Tensor, backend::Backend};
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::cuda::CudaRuntime;

    use crate::model::fusion_op::{self, FloatKernel};
    use crate::model::nvrtc;
    use crate::model::precision::ComputePlan;

    /// Rows per block (`WARPS` in the kernel).
    const ROWS_PER_BLOCK: usize = 4;

    /// What the kernel computes: whether statistics stay in storage, and its `eps`.
    #[derive(Debug, Clone, Copy)]
    struct Norm {
        stored: bool,
        eps: f32,
        residual: bool,
    }

    /// The norm of `rows` rows of `hidden` in `dtype` under `plan`, when the kernel takes
    /// them on `B` (the CUDA backend, the kernel loaded on `device`), its `row` tensors
    /// (weights, biases) all `[hidden]` of `dtype`.
    #[allow(clippy::too_many_arguments)]
    fn accepted<B: Backend>(
        plan: &ComputePlan,
        dtype: DType,
        [rows, hidden]: [usize; 2],
        row_tensors: &[&Tensor<B, 1>],
        device: &B::Device,
        eps: f64,
        unshifted_fault: bool,
        residual: bool,
    ) -> Option<Norm> {
        let stored = super::statistics_stored(plan, unshifted_fault);
        let name = super::kernel_name(dtype, stored, false, residual)?;
        let fits = rows > 0
            && hidden > 0
            && i32::try_from(rows).is_ok()
            && i32::try_from(hidden).is_ok()
            && row_tensors
                .iter()
                .all(|t| t.dtype() == dtype && t.dims() == [hidden]);
        // The program compiles and loads here (checked once per process).
        let loads =
            || nvrtc::function(fusion_op::ordinal::<B>(device), &nvrtc::LAYER_NORM, &name).is_ok();
        (fusion_op::is_cuda::<B>() && !super::composed_asked() && fits && loads()).then(|| Norm {
            stored,
            eps: super::kernel_eps(eps, dtype, stored),
            residual,
        })
    }

    pub(super) fn layer_norm<B: Backend, const D: usize>(
        plan: &ComputePlan,
        x: Tensor<B, D>,
        weight: &Tensor<B, 1>,
        bias: &Tensor<B, 1>,
        eps: f64,
        unshifted_fault: bool,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let shape = x.dims();
        let hidden = shape[D - 1];
        let rows = shape[..D - 1].iter().product::<usize>();
        let rows_tensors = [weight, bias];
        let Some(norm) = accepted(
            plan,
            x.dtype(),
            [rows, hidden],
            &rows_tensors,
            &x.device(),
            eps,
            unshifted_fault,
            false,
        ) else {
            return Err(x);
        };
        let [out] = fusion_op::register_float(
            norm,
            vec![
                fusion_op::float_primitive(x.reshape([rows, hidden])),
                fusion_op::float_primitive(weight.clone()),
                fusion_op::float_primitive(bias.clone()),
            ],
        );
        Ok(fusion_op::float_tensor::<B, 2>(out).reshape(shape))
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub(super) fn residual_layer_norm<B: Backend>(
        plan: &ComputePlan,
        x: Tensor<B, 2>,
        product: Tensor<B, 2>,
        product_bias: &Tensor<B, 1>,
        weight: &Tensor<B, 1>,
        bias: &Tensor<B, 1>,
        eps: f64,
        unshifted_fault: bool,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), (Tensor<B, 2>, Tensor<B, 2>)> {
        let dims = x.dims();
        let rows_tensors = [product_bias, weight, bias];
        let accepted = (product.dims() == dims && product.dtype() == x.dtype())
            .then(|| {
                accepted(
                    plan,
                    x.dtype(),
                    dims,
                    &rows_tensors,
                    &x.device(),
                    eps,
                    unshifted_fault,
                    true,
                )
            })
            .flatten();
        let Some(norm) = accepted else {
            return Err((x, product));
        };
        let [sum, out] = fusion_op::register_float(
            norm,
            vec![
                fusion_op::float_primitive(x),
                fusion_op::float_primitive(product),
                fusion_op::float_primitive(product_bias.clone()),
                fusion_op::float_primitive(weight.clone()),
                fusion_op::float_primitive(bias.clone()),
            ],
        );
        Ok((
            fusion_op::float_tensor::<B, 2>(sum),
            fusion_op::float_tensor::<B, 2>(out),
        ))
    }

    impl FloatKernel for Norm {
        const OP: &'static str = "esmfuzz_layer_norm";
        const WHAT: &'static str = "LayerNorm kernel";

        /// `inputs`: x, [product, product bias,] weight, bias; `outputs`: [sum,] normed.
        fn launch(
            &self,
            inputs: &[CubeTensor<CudaRuntime>],
            outputs: &[CubeTensor<CudaRuntime>],
        ) -> Result<(), String> {
            let x = &inputs[0];
            let (rows, hidden) = (x.meta.shape()[0], x.meta.shape()[1]);
            let dtype = x.dtype;
            let tensors: Vec<_> = inputs.iter().chain(outputs).collect();
            fusion_op::with_device_pointers(&tensors, |pointers, stream| {
                // Pointers in the kernel's order: x, [product, product bias, sum,] weight,
                // bias, out.
                let mut pointers = pointers.to_vec();
                if self.residual {
                    // Listed as x, product, product bias, weight, bias, sum, out.
                    let sum = pointers.remove(5);
                    pointers.insert(3, sum);
                }
                let vectorised = fusion_op::vectorisable(hidden, dtype, &pointers);
                let name = super::kernel_name(dtype, self.stored, vectorised, self.residual)
                    .ok_or_else(|| format!("no LayerNorm kernel for {dtype:?}"))?;
                let kernel = nvrtc::function(x.device.index, &nvrtc::LAYER_NORM, &name)?;
                let mut p_rows = rows as i32;
                let mut p_hidden = hidden as i32;
                let mut p_eps = self.eps;
                let mut params = fusion_op::pointer_params(&mut pointers);
                params.extend([
                    (&mut p_rows as *mut i32).cast(),
                    (&mut p_hidden as *mut i32).cast(),
                    (&mut p_eps as *mut f32).cast(),
                ]);
                let grid =
                    u32::try_from(rows.div_ceil(ROWS_PER_BLOCK)).map_err(|_| "too many rows")?;
                let block = (ROWS_PER_BLOCK * 32) as u32;
                // SAFETY: the parameters match `esm_[residual_]layer_norm_*` (layer_norm.cu);
                // the buffers are held until the launch is enqueued.
                unsafe { nvrtc::launch(kernel, (grid, 1, 1), block, stream, &mut params) }
                    .map_err(|e| format!("launch failed ({rows} rows of {hidden}): {e}"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::model::Precision;

    #[test]
    fn statistics_are_stored_where_the_plan_or_the_fault_keeps_them_in_storage() {
        let plan = |p| ComputePlan::new(p, BackendKind::Cuda);
        assert!(statistics_stored(&plan(Precision::F16), false));
        assert!(statistics_stored(&plan(Precision::Bf16), false));
        assert!(!statistics_stored(&plan(Precision::F16Mixed), false));
        assert!(statistics_stored(&plan(Precision::F16Mixed), true));
        assert!(!statistics_stored(&plan(Precision::F32), false));
    }

    #[test]
    fn eps_is_rounded_to_the_storage_dtype_only_where_statistics_are_stored() {
        let eps = 1e-5;
        // f16 holds 1e-5 as a subnormal: 168 * 2^-24.
        assert_eq!(kernel_eps(eps, DType::F16, true), 168.0 * 2f32.powi(-24));
        assert_eq!(kernel_eps(eps, DType::F16, false), 1e-5f32);
        assert_eq!(
            kernel_eps(eps, DType::BF16, true),
            half::bf16::from_f32(1e-5).to_f32()
        );
        assert_ne!(kernel_eps(eps, DType::BF16, true), 1e-5f32);
        assert_eq!(kernel_eps(eps, DType::F32, true), 1e-5f32);
    }

    #[test]
    fn kernel_names_match_the_programs_instances() {
        let source = include_str!("layer_norm.cu");
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            for stored in [true, false] {
                for vectorised in [true, false] {
                    let name = kernel_name(dtype, stored, vectorised, false).unwrap();
                    let core = name.strip_prefix("esm_").unwrap();
                    assert!(source.contains(&format!("INSTANCE({core},")), "{name}");
                    let residual = kernel_name(dtype, stored, vectorised, true).unwrap();
                    assert_eq!(residual, format!("esm_residual_{core}"));
                }
            }
        }
        let f32_wide = kernel_name(DType::F32, false, true, false).unwrap();
        assert_eq!(f32_wide, "esm_layer_norm_f32_stored_v4");
        assert_eq!(kernel_name(DType::I32, true, true, false), None);
    }
}
