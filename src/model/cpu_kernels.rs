//! esmfuzz's CPU kernels ([`esmfuzz_kernels`]) on burn tensors: where they replace a
//! composition of burn ops, and the hand-over (the tensor's host buffer, moved without a copy
//! when burn-flex owns it alone).
//!
//! They run only where their arithmetic is the composition's: f32 storage on the CPU. The
//! attention kernel computes the composed f32 attention with the same rounding points (only
//! the order of summation inside a reduction differs; `esmfuzz_kernels::attention` says
//! where), for plans whose products are the backend's own f32 gemm; the bias + GELU kernel is
//! bit-identical to the composed ops on any f32 tensor.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use esmfuzz_kernels::attention::{self as kernel, Heads, Rope, Sequence};

use super::flash::SeqTable;
use super::precision::{AttentionKernel, ComputePlan, MatmulMode};
use crate::backend::BackendKind;

/// Whether the attention kernel computes the composed attention of `plan`: the CPU, f32
/// storage, the backend's own products (not the emulated TF32, nor the noise floor's split
/// reductions), composed attention (fused asks for burn's fused op).
pub fn attention_runs_for(plan: &ComputePlan) -> bool {
    plan.backend == BackendKind::Cpu
        && plan.dtype() == DType::F32
        && plan.matmul == MatmulMode::Native
        && plan.attention == AttentionKernel::Composed
}

/// The attention contexts of `qkv`'s sequences (see [`esmfuzz_kernels::attention`]).
///
/// # Shapes
/// `qkv: [tokens, 3 hidden]` f32 -> `[tokens, hidden]` f32
pub fn attention<B: Backend>(
    qkv: Tensor<B, 2>,
    table: &SeqTable,
    heads: usize,
    inv_freq: &[f32],
) -> Tensor<B, 2> {
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
    let rope = Rope::new(inv_freq, table.longest());
    let qkv = host_f32(qkv);
    let mut out = vec![0.0f32; tokens * hidden];
    kernel::attention(&qkv, Heads { hidden, heads }, &seqs, &rope, &mut out);
    Tensor::from_data(TensorData::new(out, [tokens, hidden]), &device)
}

/// `gelu(x + bias)` by the fused kernel when `x` is f32 on the CPU backend, else `None`.
///
/// # Shapes
/// `x: [rows, width]`, `bias: [width]` -> `[rows, width]`
pub fn bias_gelu<B: Backend>(
    backend: BackendKind,
    x: Tensor<B, 2>,
    bias: &Tensor<B, 1>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    if backend != BackendKind::Cpu || x.dtype() != DType::F32 || bias.dtype() != DType::F32 {
        return Err(x);
    }
    let device = x.device();
    let shape = x.dims();
    let bias = host_f32(bias.clone());
    let mut values = host_f32(x);
    esmfuzz_kernels::gelu::bias_gelu(&mut values, &bias);
    Ok(Tensor::from_data(TensorData::new(values, shape), &device))
}

/// The values of an f32 tensor, moved out of burn-flex's buffer when it holds the only
/// reference (else copied).
fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .unwrap_or_else(|e| unreachable!("an f32 tensor yields f32 data: {e:?}"))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::backend::{Cpu, cpu_device};
    use crate::model::ops;

    #[test]
    fn bias_gelu_is_bit_identical_to_the_composed_ops_and_declines_other_dtypes() {
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
        let half = x.cast(DType::F16);
        assert!(bias_gelu(BackendKind::Cpu, half, &bias.cast(DType::F16)).is_err());
    }
}
