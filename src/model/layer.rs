//! fair-esm `TransformerLayer` (HF `EsmLayer`): pre-LayerNorm attention and FFN blocks, each
//! added to the residual stream.

use burn::tensor::{Tensor, backend::Backend};

use super::attention::SelfAttention;
use super::device::{DeviceLinear, DeviceNorm};
use super::layout::DeviceLayout;
use super::ops;
use super::precision::ComputePlan;
use super::rotary::RotaryTables;
use super::weights::LayerWeights;

/// One transformer layer on the device.
pub struct EsmLayer<B: Backend> {
    pub self_attn: SelfAttention<B>,
    pub self_attn_layer_norm: DeviceNorm<B>,
    pub fc1: DeviceLinear<B>,
    pub fc2: DeviceLinear<B>,
    pub final_layer_norm: DeviceNorm<B>,
}

impl<B: Backend> EsmLayer<B> {
    /// The layer of weights `w` under `plan`; `eps` is the LayerNorm epsilon and
    /// `unshifted_fault` the unshifted-half-statistics fault.
    pub fn new(
        w: &LayerWeights,
        heads: usize,
        plan: &ComputePlan,
        eps: f64,
        unshifted_fault: bool,
        device: &B::Device,
    ) -> Self {
        let norm = |n| DeviceNorm::new(n, plan, eps, unshifted_fault, device);
        Self {
            self_attn: SelfAttention::new(w, heads, plan, unshifted_fault, device),
            self_attn_layer_norm: norm(&w.self_attn_layer_norm),
            fc1: DeviceLinear::new(&w.fc1, plan, device),
            fc2: DeviceLinear::new(&w.fc2, plan, device),
            final_layer_norm: norm(&w.final_layer_norm),
        }
    }

    /// `x + attn(LN(x))`.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn attention_block(
        &self,
        x: Tensor<B, 2>,
        layout: &DeviceLayout<B>,
        rotary: &[RotaryTables<B>],
    ) -> Tensor<B, 2> {
        let h = self.self_attn_layer_norm.forward(x.clone());
        x + self.self_attn.forward(h, layout, rotary)
    }

    /// `x + fc2(gelu(fc1(LN(x))))`.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn ffn_block(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.final_layer_norm.forward(x.clone());
        let h = self.fc2.forward(ops::gelu_exact(self.fc1.forward(h)));
        x + h
    }
}
