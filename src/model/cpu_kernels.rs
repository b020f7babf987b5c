//! esmfuzz's CPU kernels ([`esmfuzz_kernels`]) on burn tensors: where they replace a
//! composition of burn ops, and the hand-over (the tensor's host buffer, moved without a copy
//! when burn-flex owns it alone).
//!
//! They run only where their arithmetic is the composition's, on the CPU: they compute in f32
//! and round to the storage dtype (f32, f16, bf16) wherever the composition stores a tensor.
//! The attention kernel keeps the composed attention's rounding points (only the order of
//! summation inside a reduction differs; `esmfuzz_kernels::attention` says where), for plans
//! whose products are the backend's own gemm (f32 accumulation); the bias + GELU kernel is
//! bit-identical to the composed ops.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use esmfuzz_kernels::attention::{self as kernel, Heads, Rope, Sequence, Statistics};
use esmfuzz_kernels::storage::Dtype;

use super::flash::SeqTable;
use super::precision::{AttentionKernel, ComputePlan, MatmulMode};
use crate::backend::BackendKind;

/// Whether the attention kernel computes the composed attention of `plan`: the CPU, a
/// storage dtype it rounds to, the backend's own products (not the emulated TF32, nor the
/// noise floor's split reductions), composed attention (fused asks for burn's fused op).
pub fn attention_runs_for(plan: &ComputePlan) -> bool {
    plan.backend == BackendKind::Cpu
        && kernel_dtype(plan.dtype()).is_some()
        && plan.matmul == MatmulMode::Native
        && plan.attention == AttentionKernel::Composed
}

/// The kernels' name for `dtype`, where they round to it.
fn kernel_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::Bf16),
        _ => None,
    }
}

/// The attention contexts of `qkv`'s sequences under `plan` (see
/// [`esmfuzz_kernels::attention`]), in `qkv`'s dtype (one [`attention_runs_for`] accepts).
///
/// # Shapes
/// `qkv: [tokens, 3 hidden]` -> `[tokens, hidden]`
pub fn attention<B: Backend>(
    plan: &ComputePlan,
    qkv: Tensor<B, 2>,
    table: &SeqTable,
    heads: usize,
    inv_freq: &[f32],
) -> Tensor<B, 2> {
    let statistics = if plan.precision.statistics_in_f32() {
        Statistics::F32
    } else {
        Statistics::Storage
    };
    let dtype = qkv.dtype();
    let Some(storage) = kernel_dtype(dtype) else {
        unreachable!("attention_runs_for accepted {dtype:?}")
    };
    let device = qkv.device();
    let [tokens, width] = qkv.dims();
    let hidden = width / 3;
    let seqs: Vec<Sequence> = (0..table.q_start.len())
        .map(|s| Sequence {
            q_start: table.q_start[s] as usize,
            q_len: table.q_len[s] as usize,
            k_len: table.k_len[s] as usize,
        })
        .collect();
    let rope = Rope::new(inv_freq, table.longest(), storage);
    let qkv = host_f32(qkv);
    let mut out = vec![0.0f32; tokens * hidden];
    let shape = Heads { hidden, heads };
    kernel::attention(&qkv, shape, &seqs, &rope, storage, statistics, &mut out);
    from_host(out, [tokens, hidden], dtype, &device)
}

/// `gelu(x + bias)` by the fused kernel, in `x`'s dtype, when `x` is on the CPU backend in a
/// dtype the kernel rounds to; `x` back otherwise.
///
/// # Shapes
/// `x: [rows, width]`, `bias: [width]` -> `[rows, width]`
pub fn bias_gelu<B: Backend>(
    backend: BackendKind,
    x: Tensor<B, 2>,
    bias: &Tensor<B, 1>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let dtype = x.dtype();
    let storage = match kernel_dtype(dtype) {
        Some(storage) if backend == BackendKind::Cpu && bias.dtype() == dtype => storage,
        _ => return Err(x),
    };
    let device = x.device();
    let shape = x.dims();
    let bias = host_f32(bias.clone());
    let mut values = host_f32(x);
    esmfuzz_kernels::gelu::bias_gelu(&mut values, &bias, storage);
    Ok(from_host(values, shape, dtype, &device))
}

/// The values of a tensor widened to f32: an f32 tensor's buffer moved out of burn-flex when
/// nothing else holds it (else copied); f16 and bf16 widened by `half`'s slice conversion
/// (F16C instructions where the CPU has them; burn-flex's cast converts value by value).
fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    let data = t.into_data();
    let widened = |n: usize, widen: &dyn Fn(&mut [f32])| {
        let mut out = vec![0.0f32; n];
        widen(&mut out);
        out
    };
    match data.dtype {
        DType::F16 => {
            let values = data
                .as_slice::<half::f16>()
                .unwrap_or_else(|e| unreachable!("{e:?}"));
            widened(values.len(), &|out| values.convert_to_f32_slice(out))
        }
        DType::BF16 => {
            let values = data
                .as_slice::<half::bf16>()
                .unwrap_or_else(|e| unreachable!("{e:?}"));
            widened(values.len(), &|out| values.convert_to_f32_slice(out))
        }
        _ => data
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_else(|e| unreachable!("an f32 tensor yields f32 data: {e:?}")),
    }
}

/// A tensor of `shape` in `dtype` holding `values`, which are values of `dtype` already (the
/// kernels round to it), so narrowing them is exact.
fn from_host<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, D> {
    use half::slice::HalfFloatSliceExt;
    let data = match dtype {
        DType::F16 => {
            let mut narrow = vec![half::f16::ZERO; values.len()];
            narrow.convert_from_f32_slice(&values);
            TensorData::new(narrow, shape)
        }
        DType::BF16 => {
            let mut narrow = vec![half::bf16::ZERO; values.len()];
            narrow.convert_from_f32_slice(&values);
            TensorData::new(narrow, shape)
        }
        _ => TensorData::new(values, shape),
    };
    Tensor::from_data(data, (device, dtype))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::backend::{Cpu, cpu_device};
    use crate::model::ops;

    #[test]
    fn bias_gelu_is_bit_identical_to_the_composed_ops_in_f32_f16_and_bf16() {
        let device = cpu_device();
        let x = Tensor::<Cpu, 2>::random([37, 24], Distribution::Normal(0.0, 3.0), &device);
        let bias = Tensor::<Cpu, 1>::random([24], Distribution::Normal(0.0, 1.0), &device);
        let composed = ops::gelu_exact(x.clone() + bias.clone().unsqueeze::<2>());
        let fused = bias_gelu(BackendKind::Cpu, x.clone(), &bias).ok().unwrap();
        let bits = |t: Tensor<Cpu, 2>| -> Vec<u32> {
            crate::model::to_host(t)
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(fused), bits(composed));
        for dtype in [DType::F16, DType::BF16] {
            let (x, bias) = (x.clone().cast(dtype), bias.clone().cast(dtype));
            let composed = ops::gelu_exact(x.clone() + bias.clone().unsqueeze::<2>());
            let fused = bias_gelu(BackendKind::Cpu, x.clone(), &bias).ok().unwrap();
            assert_eq!(fused.dtype(), dtype);
            assert_eq!(bits(fused), bits(composed), "{dtype:?}");
        }
        let wide = x.cast(DType::F64);
        assert!(bias_gelu(BackendKind::Cpu, wide.clone(), &bias.cast(DType::F64)).is_err());
    }
}
