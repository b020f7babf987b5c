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

    /// `bias_gelu.cu` divides a half value by T(sqrt 2) = 181/128 as `T(float(y) *
    /// INV_T_SQRT2)`, where the composition calls `__hdiv` (f16: a reciprocal within 1 ulp,
    /// a multiply, a fix-up for subnormal results; bf16: `div.approx.f32`, within 2 ulp). Both
    /// give the correctly rounded quotient for every finite value if that quotient lies more
    /// than 4 f32 ulps from every rounding midpoint of T (then no f32 result within 4 ulps can
    /// round differently), and the multiply's quotient rounds to it. Checked here for all 2^16
    /// bit patterns of each type, exactly: the quotient in f64 (53 bits, far finer than the
    /// margins), the multiply in f32 as the GPU rounds it (`mul.rn.f32`, subnormals kept).
    #[test]
    fn half_division_by_sqrt2_is_one_correctly_rounded_multiply_for_every_value() {
        let source = include_str!("bias_gelu.cu");
        let inv_sqrt2 = 128.0f32 / 181.0;
        assert!(
            source.contains(&format!("#define INV_T_SQRT2 {}", hex_f32(inv_sqrt2))),
            "bias_gelu.cu's INV_T_SQRT2 is not {}",
            hex_f32(inv_sqrt2)
        );
        assert_eq!(
            half::f16::from_f32(std::f32::consts::SQRT_2).to_f64(),
            181.0 / 128.0
        );
        assert_eq!(
            half::bf16::from_f32(std::f32::consts::SQRT_2).to_f64(),
            181.0 / 128.0
        );

        // Each type as its values by bit pattern and the bit pattern nearest to a value (round
        // to nearest even; an f32 widened to f64 exactly rounds as the f32 would).
        struct HalfType {
            name: &'static str,
            value: fn(u16) -> f64,
            nearest: fn(f64) -> u16,
        }
        let types = [
            HalfType {
                name: "f16",
                value: |b| half::f16::from_bits(b).to_f64(),
                nearest: |v| half::f16::from_f64(v).to_bits(),
            },
            HalfType {
                name: "bf16",
                value: |b| half::bf16::from_bits(b).to_f64(),
                nearest: |v| half::bf16::from_f64(v).to_bits(),
            },
        ];
        for HalfType {
            name,
            value,
            nearest,
        } in types
        {
            let mut checked = 0;
            for bits in 0..=u16::MAX {
                let y = value(bits) as f32; // exact
                if !y.is_finite() {
                    continue;
                }
                let q = f64::from(y) / (181.0 / 128.0);
                let r = nearest(q);
                let (nearest_value, below, above) =
                    (value(r), value(step(r, -1, q)), value(step(r, 1, q)));
                let by_multiply = nearest(f64::from(y * inv_sqrt2));
                assert!(
                    by_multiply == r,
                    "{name} {y:e} (bits {bits:#06x}): multiply gives {:e}, the quotient rounds to \
                     {nearest_value:e}",
                    value(by_multiply)
                );
                if q != 0.0 {
                    let to_midpoint = ((nearest_value + below) / 2.0 - q)
                        .abs()
                        .min(((nearest_value + above) / 2.0 - q).abs());
                    let ulp_f32 = (q.abs().log2().floor() - 23.0).max(-149.0).exp2();
                    assert!(
                        to_midpoint > 4.0 * ulp_f32 + q.abs() * f64::EPSILON,
                        "{name} {y:e} (bits {bits:#06x}): quotient {q:e} lies {to_midpoint:e} \
                         from a rounding midpoint"
                    );
                }
                checked += 1;
            }
            assert!(checked > 63_000, "{name}: {checked} values");
        }
    }

    /// `v` as a C hexadecimal float literal (`0x1.6a13cep-1f`).
    fn hex_f32(v: f32) -> String {
        let bits = v.to_bits();
        let exponent = ((bits >> 23) & 0xff) as i32 - 127;
        let mantissa = (bits & 0x7f_ffff) << 1; // 24 bits: six hex digits
        let digits = format!("{mantissa:06x}");
        format!("0x1.{}p{exponent}f", digits.trim_end_matches('0'))
    }

    /// The bit pattern one value below (`dir` -1) or above (+1) `bits`, a value of sign
    /// `q`'s (half types order their magnitudes as their bits).
    fn step(bits: u16, dir: i32, q: f64) -> u16 {
        let magnitude = bits & 0x7fff;
        let sign = bits & 0x8000;
        // Moving away from zero is one more in magnitude; towards zero one less (past zero,
        // the other sign's smallest value).
        let away = (dir > 0) == (q >= 0.0);
        match (away, magnitude) {
            (true, m) => sign | (m + 1),
            (false, 0) => (sign ^ 0x8000) | 1,
            (false, m) => sign | (m - 1),
        }
    }
}
