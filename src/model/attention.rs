//! fair-esm `MultiheadAttention` with rotary embedding (HF `EsmSelfAttention` +
//! `EsmSelfOutput.dense`): separate q, k, v projections with bias, `q *= head_dim^-0.5`
//! before the rotation, softmax over keys with padding masked, then `out_proj`.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, backend::Backend};

use super::blocks::{DeviceBlocks, DeviceGroup};
use super::device::DeviceLinear;
use super::ops;
use super::precision::{AttentionKernel, ComputePlan, Precision};
use super::rotary::RotaryTables;
use super::weights::LayerWeights;

/// Self-attention of one layer, weights on the device in the storage dtype. Cloning shares
/// the device tensors.
#[derive(Clone)]
pub struct SelfAttention<B: Backend> {
    pub q_proj: DeviceLinear<B>,
    pub k_proj: DeviceLinear<B>,
    pub v_proj: DeviceLinear<B>,
    pub out_proj: DeviceLinear<B>,
    /// `[head_dim / 2]`, kept on the host: RoPE tables are built in f32 per forward.
    pub inv_freq: Vec<f32>,
    pub heads: usize,
    /// The layer's plan, or FP32 where this layer's attention is an FP32 place.
    plan: ComputePlan,
    /// The unshifted-half-statistics fault (softmax without max-shift, in storage dtype).
    unshifted_fault: bool,
}

impl<B: Backend> SelfAttention<B> {
    /// The attention of layer weights `w`, `heads` heads, under `plan`.
    pub fn new(
        w: &LayerWeights,
        heads: usize,
        plan: &ComputePlan,
        unshifted_fault: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            q_proj: DeviceLinear::new(&w.q_proj, plan, device),
            k_proj: DeviceLinear::new(&w.k_proj, plan, device),
            v_proj: DeviceLinear::new(&w.v_proj, plan, device),
            out_proj: DeviceLinear::new(&w.out_proj, plan, device),
            inv_freq: w.inv_freq.clone(),
            heads,
            plan: *plan,
            unshifted_fault,
        }
    }

    /// The same weights computed under `plan` (of the same storage dtype).
    pub(super) fn with_plan(self, plan: &ComputePlan) -> Self {
        Self {
            q_proj: self.q_proj.with_plan(plan),
            k_proj: self.k_proj.with_plan(plan),
            v_proj: self.v_proj.with_plan(plan),
            out_proj: self.out_proj.with_plan(plan),
            plan: *plan,
            ..self
        }
    }

    /// Computed in the plan's dtype; the result in that dtype too.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        layout: &DeviceBlocks<B>,
        rotary: &[RotaryTables<B>],
    ) -> Tensor<B, 2> {
        let [_tokens, hidden] = x.dims();
        let q = self.q_proj.forward(x.clone());
        // The fused op scales by head_dim^-0.5 itself (after the rotation, which is linear).
        let q = if self.fused() {
            q
        } else {
            q.mul_scalar(((hidden / self.heads) as f64).powf(-0.5))
        };
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        let (q, k, v) = (
            layout.extend_for_gather(q),
            layout.extend_for_gather(k),
            layout.extend_for_gather(v),
        );
        let mut contexts: Vec<Tensor<B, 2>> = layout
            .groups
            .iter()
            .zip(rotary)
            .map(|(group, rot)| self.attend_group(group, rot, [&q, &k, &v]))
            .collect();
        let context = if contexts.len() == 1 {
            contexts.remove(0)
        } else {
            Tensor::cat(contexts, 0)
        };
        self.out_proj.forward(layout.from_blocks(context))
    }

    /// Whether burn's fused attention op runs here: asked by the plan, and neither an FP32
    /// place nor the unshifted-softmax fault (which needs the composed softmax).
    fn fused(&self) -> bool {
        self.plan.attention == AttentionKernel::Fused
            && self.plan.precision != Precision::F32
            && !self.unshifted_fault
    }

    /// Attention within one group of equally long blocks.
    ///
    /// # Shapes
    /// `q, k, v: [tokens (+ 1), hidden]` -> `[batch * block_len, hidden]`
    fn attend_group(
        &self,
        group: &DeviceGroup<B>,
        rotary: &RotaryTables<B>,
        [q, k, v]: [&Tensor<B, 2>; 3],
    ) -> Tensor<B, 2> {
        let plan = &self.plan;
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

        let mask = group.key_padding.clone().expand([batch, heads, len, len]);
        if self.fused() {
            let options = AttentionModuleOptions::default();
            return burn::tensor::module::attention(q, k, v, Some(mask), None, options)
                .swap_dims(1, 2)
                .reshape([batch * len, hidden]);
        }
        // [batch, heads, len, len]
        let scores = ops::matmul(plan, q, k.swap_dims(2, 3));
        let scores = scores.mask_fill(mask, ops::mask_value(plan.dtype()));
        let probs = ops::softmax_last(plan, scores, self.unshifted_fault);
        ops::matmul(plan, probs, v)
            .swap_dims(1, 2)
            .reshape([batch * len, hidden])
    }
}
