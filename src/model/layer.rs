//! fair-esm `TransformerLayer` (HF `EsmLayer`): pre-LayerNorm attention and FFN blocks, each
//! added to the residual stream.

use burn::tensor::{Tensor, backend::Backend};

use super::attention::SelfAttention;
use super::layout::BlockLayout;
use super::ops;
use super::precision::ComputePlan;
use super::rotary::RotaryTables;
use super::weights::LayerWeights;
use super::{DeviceLinear, DeviceNorm, device_linear};

/// One transformer layer on the device.
pub struct EsmLayer<B: Backend> {
    pub self_attn: SelfAttention<B>,
    pub self_attn_layer_norm: DeviceNorm<B>,
    pub fc1: DeviceLinear<B>,
    pub fc2: DeviceLinear<B>,
    pub final_layer_norm: DeviceNorm<B>,
}

impl<B: Backend> EsmLayer<B> {
    pub fn new(w: &LayerWeights, heads: usize, plan: &ComputePlan, device: &B::Device) -> Self {
        Self {
            self_attn: SelfAttention::new(
                &w.q_proj,
                &w.k_proj,
                &w.v_proj,
                &w.out_proj,
                &w.inv_freq,
                heads,
                plan,
                device,
            ),
            self_attn_layer_norm: DeviceNorm::new(&w.self_attn_layer_norm, plan, device),
            fc1: device_linear(&w.fc1, plan, device),
            fc2: device_linear(&w.fc2, plan, device),
            final_layer_norm: DeviceNorm::new(&w.final_layer_norm, plan, device),
        }
    }

    /// `x + attn(LN(x))`, then `x + fc2(gelu(fc1(LN(x))))`.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn forward(
        &self,
        plan: &ComputePlan,
        x: Tensor<B, 2>,
        layout: &BlockLayout<B>,
        rotary: &[RotaryTables<B>],
        eps: f64,
        unshifted_fault: bool,
    ) -> Tensor<B, 2> {
        let h = self
            .self_attn_layer_norm
            .forward(plan, x.clone(), eps, unshifted_fault);
        let x = x + self
            .self_attn
            .forward(plan, h, layout, rotary, unshifted_fault);
        let h = self
            .final_layer_norm
            .forward(plan, x.clone(), eps, unshifted_fault);
        let h = self.fc1.forward(plan, h);
        let h = self.fc2.forward(plan, ops::gelu_exact(h));
        x + h
    }
}
