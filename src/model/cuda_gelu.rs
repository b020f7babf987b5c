//! The FFN's bias add and exact GELU on CUDA in one kernel (`bias_gelu.cu`), instead of the
//! kernel burn's fusion compiles from the six composed element-wise steps.
//!
//! It keeps the composition's arithmetic: the same operations in the same order, each
//! rounded to the storage dtype through the same CUDA operators cubecl's kernels use, so its
//! values are the composition's bit for bit (`tests/suite/bias_gelu_kernels.rs`). It runs as
//! a custom operation in burn's fusion stream on cubecl's stream, like the LayerNorm kernel
//! ([`super::cuda_norm`]); where the kernel does not load (or the tensor is not on esmfuzz's
//! CUDA backend in f32, f16 or bf16) the composition runs instead, as it does everywhere
//! under `ESMFUZZ_COMPOSED_GELU=1` (to compare the two, or to time them).

use burn::tensor::{DType, Tensor, backend::Backend};

/// Whether `ESMFUZZ_COMPOSED_GELU=1` asks for burn's composition instead of the kernel (read
/// once; the policy description says which runs).
pub fn composed_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var_os("ESMFUZZ_COMPOSED_GELU").is_some_and(|v| v == "1"))
}

/// The kernel's name for `dtype` with `lanes` values per access (one where not vectorised).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn kernel_name(dtype: DType, vectorised: bool) -> Option<String> {
    let name = super::kernel_names::storage_suffix(dtype)?;
    let lanes = if vectorised {
        super::kernel_names::lanes(dtype)
    } else {
        1
    };
    Some(format!("esm_bias_gelu_{name}_v{lanes}"))
}

/// `gelu(x + bias)` by the CUDA kernel, in `x`'s dtype, as the composed ops compute it, when
/// `x` is on esmfuzz's CUDA backend in a dtype the kernel exists for (`bias` of that dtype)
/// and the kernel loads; `x` back otherwise.
///
/// # Shapes
/// `x: [rows, width]`, `bias: [width]` -> `[rows, width]`
pub fn bias_gelu<B: Backend>(
    x: Tensor<B, 2>,
    bias: &Tensor<B, 1>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    return cuda::bias_gelu(x, bias);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = bias;
        Err(x)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::tensor::{Tensor, backend::Backend};
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::cuda::CudaRuntime;

    use crate::model::fusion_op::{self, FloatKernel};
    use crate::model::kernel_names::lanes;
    use crate::model::nvrtc;

    /// Threads per block (`THREADS` in the kernel).
    const THREADS: usize = 256;
    /// Blocks per launch at most; the kernel strides over the rest.
    const MAX_BLOCKS: usize = 65_536;

    pub(super) fn bias_gelu<B: Backend>(
        x: Tensor<B, 2>,
        bias: &Tensor<B, 1>,
    ) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let dtype = x.dtype();
        let [rows, width] = x.dims();
        let fits = rows > 0
            && width > 0
            && i32::try_from(width).is_ok()
            && i64::try_from(rows * width).is_ok()
            && bias.dtype() == dtype
            && bias.dims() == [width];
        let accepted = fusion_op::is_cuda::<B>()
            && !super::composed_asked()
            && fits
            && super::kernel_name(dtype, false).is_some_and(|name| {
                // The program compiles and loads here (checked once per process).
                let ordinal = fusion_op::ordinal::<B>(&x.device());
                nvrtc::function(ordinal, &nvrtc::BIAS_GELU, &name).is_ok()
            });
        if !accepted {
            return Err(x);
        }
        let [out] = fusion_op::register_float(
            BiasGelu,
            vec![
                fusion_op::float_primitive(x),
                fusion_op::float_primitive(bias.clone()),
            ],
        );
        Ok(fusion_op::float_tensor::<B, 2>(out))
    }

    /// The kernel on `[x, bias]` into `[out]`.
    #[derive(Debug, Clone, Copy)]
    struct BiasGelu;

    impl FloatKernel for BiasGelu {
        const OP: &'static str = "esmfuzz_bias_gelu";
        const WHAT: &'static str = "bias + GELU kernel";

        fn launch(
            &self,
            inputs: &[CubeTensor<CudaRuntime>],
            outputs: &[CubeTensor<CudaRuntime>],
        ) -> Result<(), String> {
            let x = &inputs[0];
            let (rows, width) = (x.meta.shape()[0], x.meta.shape()[1]);
            let dtype = x.dtype;
            let tensors: Vec<_> = inputs.iter().chain(outputs).collect();
            fusion_op::with_device_pointers(&tensors, |pointers, stream| {
                // Pointers in the kernel's order: x, bias, out.
                let mut pointers = pointers.to_vec();
                let vectorised = fusion_op::vectorisable(width, dtype, &pointers);
                let name = super::kernel_name(dtype, vectorised)
                    .ok_or_else(|| format!("no bias + GELU kernel for {dtype:?}"))?;
                let kernel = nvrtc::function(x.device.index, &nvrtc::BIAS_GELU, &name)?;
                let values = rows * width;
                let per_thread = if vectorised { lanes(dtype) } else { 1 };
                let blocks = values.div_ceil(per_thread * THREADS).min(MAX_BLOCKS);
                let mut p_values = values as i64;
                let mut p_width = width as i32;
                let mut params = fusion_op::pointer_params(&mut pointers);
                params.extend([
                    (&mut p_values as *mut i64).cast(),
                    (&mut p_width as *mut i32).cast(),
                ]);
                // SAFETY: the parameters match `esm_bias_gelu_*` (bias_gelu.cu); the buffers
                // are held until the launch is enqueued.
                unsafe {
                    nvrtc::launch(
                        kernel,
                        (blocks as u32, 1, 1),
                        THREADS as u32,
                        stream,
                        &mut params,
                    )
                }
                .map_err(|e| format!("launch failed ({rows} rows of {width}): {e}"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_match_the_programs_instances() {
        let source = include_str!("bias_gelu.cu");
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            for vectorised in [true, false] {
                let name = kernel_name(dtype, vectorised).unwrap();
                let core = name.strip_prefix("esm_").unwrap();
                assert!(source.contains(&format!("INSTANCE({core},")), "{name}");
            }
        }
        assert_eq!(
            kernel_name(DType::F16, true).as_deref(),
            Some("esm_bias_gelu_f16_v8")
        );
        assert_eq!(
            kernel_name(DType::F32, true).as_deref(),
            Some("esm_bias_gelu_f32_v4")
        );
        assert_eq!(kernel_name(DType::I32, true), None);
    }
}
