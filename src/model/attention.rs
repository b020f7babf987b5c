//! fair-esm `MultiheadAttention` with rotary embedding (HF `EsmSelfAttention` +
//! `EsmSelfOutput.dense`): separate q, k, v projections with bias, `q *= head_dim^-0.5`
//! before the rotation, softmax over keys with padding masked, then `out_proj`.

use burn::tensor::{Tensor, backend::Backend};

use super::layout::{BlockLayout, DeviceGroup};
use super::ops;
use super::precision::ComputePlan;
use super::rotary::RotaryTables;
use super::weights::LinearWeights;
use super::{DeviceLinear, device_linear};

/// Self-attention of one layer, weights on the device in the storage dtype.
pub struct SelfAttention<B: Backend> {
    pub q_proj: DeviceLinear<B>,
    pub k_proj: DeviceLinear<B>,
    pub v_proj: DeviceLinear<B>,
    pub out_proj: DeviceLinear<B>,
    /// `[head_dim / 2]`, kept on the host: RoPE tables are built in f32 per forward.
    pub inv_freq: Vec<f32>,
    pub heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q: &LinearWeights,
        k: &LinearWeights,
        v: &LinearWeights,
        out: &LinearWeights,
        inv_freq: &[f32],
        heads: usize,
        plan: &ComputePlan,
        device: &B::Device,
    ) -> Self {
        Self {
            q_proj: device_linear(q, plan, device),
            k_proj: device_linear(k, plan, device),
            v_proj: device_linear(v, plan, device),
            out_proj: device_linear(out, plan, device),
            inv_freq: inv_freq.to_vec(),
            heads,
        }
    }

    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn forward(
        &self,
        plan: &ComputePlan,
        x: Tensor<B, 2>,
        layout: &BlockLayout<B>,
        rotary: &[RotaryTables<B>],
        unshifted_fault: bool,
    ) -> Tensor<B, 2> {
        let [_tokens, hidden] = x.dims();
        let scaling = ((hidden / self.heads) as f64).powf(-0.5);
        let q = self.q_proj.forward(plan, x.clone()).mul_scalar(scaling);
        let k = self.k_proj.forward(plan, x.clone());
        let v = self.v_proj.forward(plan, x);
        let (q, k, v) = (
            layout.extend_for_gather(q),
            layout.extend_for_gather(k),
            layout.extend_for_gather(v),
        );
        let mut contexts: Vec<Tensor<B, 2>> = layout
            .groups
            .iter()
            .zip(rotary)
            .map(|(group, rot)| self.attend_group(plan, group, rot, [&q, &k, &v], unshifted_fault))
            .collect();
        let context = if contexts.len() == 1 {
            contexts.remove(0)
        } else {
            Tensor::cat(contexts, 0)
        };
        self.out_proj.forward(plan, layout.from_blocks(context))
    }

    /// Attention within one group of equally long blocks.
    ///
    /// # Shapes
    /// `q, k, v: [tokens (+ 1), hidden]` -> `[batch * block_len, hidden]`
    fn attend_group(
        &self,
        plan: &ComputePlan,
        group: &DeviceGroup<B>,
        rotary: &RotaryTables<B>,
        [q, k, v]: [&Tensor<B, 2>; 3],
        unshifted_fault: bool,
    ) -> Tensor<B, 2> {
        let [_, hidden] = q.dims();
        let (batch, len, heads) = (group.batch, group.block_len, self.heads);
        let head_dim = hidden / heads;
        let to_heads = |t: &Tensor<B, 2>| {
            group
                .to_blocks(t.clone())
                .reshape([batch, len, heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = rotary.apply(to_heads(q));
        let k = rotary.apply(to_heads(k));
        let v = to_heads(v);

        // [batch, heads, len, len]
        let scores = ops::matmul(plan, q, k.swap_dims(2, 3));
        let mask = group.key_padding.clone().expand([batch, heads, len, len]);
        let scores = scores.mask_fill(mask, ops::mask_value(plan.dtype()));
        let probs = ops::softmax_last(plan, scores, unshifted_fault);
        ops::matmul(plan, probs, v)
            .swap_dims(1, 2)
            .reshape([batch * len, hidden])
    }
}
