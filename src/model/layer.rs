//! fair-esm `TransformerLayer` (HF `EsmLayer`): pre-LayerNorm attention and FFN blocks, each
//! added to the residual stream.

use burn::tensor::{Tensor, backend::Backend};

use super::attention::{ComposedInputs, SelfAttention, StreamSeqs};
use super::device::{DeviceLinear, DeviceNorm};
use super::fault::FaultSet;
use super::fp32_places::{Fp32Place, Fp32Places};
use super::precision::ComputePlan;
use super::weights::LayerWeights;

/// One transformer layer on the device. Cloning shares the device tensors.
#[derive(Clone)]
pub struct EsmLayer<B: Backend> {
    pub self_attn: SelfAttention<B>,
    pub self_attn_layer_norm: DeviceNorm<B>,
    pub fc1: DeviceLinear<B>,
    pub fc2: DeviceLinear<B>,
    pub final_layer_norm: DeviceNorm<B>,
}

/// How one layer is built: its index, the policy's plan, its FP32 places and faults.
pub struct LayerPlan<'a> {
    pub index: usize,
    pub plan: &'a ComputePlan,
    pub fp32_places: &'a Fp32Places,
    pub faults: &'a FaultSet,
    pub heads: usize,
    pub eps: f64,
}

impl<B: Backend> EsmLayer<B> {
    /// The layer of weights `w` as `how` says.
    pub fn new(w: &LayerWeights, how: &LayerPlan<'_>, device: &B::Device) -> Self {
        let i = how.index;
        let unshifted = how.faults.unshifted_half_statistics;
        let plan_at = |place| how.fp32_places.plan_at(place, how.plan);
        let norms = plan_at(Fp32Place::Norms(i));
        let norm = |n| DeviceNorm::new(n, &norms, how.eps, unshifted, device);
        let ffn = plan_at(Fp32Place::Ffn(i));
        Self {
            self_attn: SelfAttention::new(
                w,
                how.heads,
                &plan_at(Fp32Place::Attention(i)),
                unshifted || how.faults.unshifted_softmax_in_layer == Some(i),
                device,
            ),
            self_attn_layer_norm: norm(&w.self_attn_layer_norm),
            fc1: DeviceLinear::new(&w.fc1, &ffn, device),
            fc2: DeviceLinear::new(&w.fc2, &ffn, device),
            final_layer_norm: norm(&w.final_layer_norm),
        }
    }

    /// The same weights computed under `plan` (of the same storage dtype).
    pub(super) fn with_plan(self, plan: &ComputePlan) -> Self {
        Self {
            self_attn: self.self_attn.with_plan(plan),
            self_attn_layer_norm: self.self_attn_layer_norm.with_plan(plan),
            fc1: self.fc1.with_plan(plan),
            fc2: self.fc2.with_plan(plan),
            final_layer_norm: self.final_layer_norm.with_plan(plan),
        }
    }

    /// `x + attn(LN(x))`.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn attention_block(
        &self,
        x: Tensor<B, 2>,
        composed: &ComposedInputs<'_, B>,
        seqs: Option<&StreamSeqs<B>>,
    ) -> Tensor<B, 2> {
        let h = self.self_attn_layer_norm.forward(x.clone());
        self.attention_end(x, h, composed, seqs).finish()
    }

    /// [`Self::attention_block`] of `x` given `normed = LN(x)` (this layer's
    /// `self_attn_layer_norm`), its residual add left open.
    ///
    /// # Shapes
    /// `x`, `normed: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn attention_end(
        &self,
        x: Tensor<B, 2>,
        normed: Tensor<B, 2>,
        composed: &ComposedInputs<'_, B>,
        seqs: Option<&StreamSeqs<B>>,
    ) -> BlockEnd<B> {
        let context = self.self_attn.context(normed, composed, seqs);
        BlockEnd {
            product: self.self_attn.out_proj.forward_unbiased(context),
            linear: self.self_attn.out_proj.clone(),
            x,
        }
    }

    /// The attention probabilities [`Self::attention_block`] computes on `x`, per group
    /// ([`SelfAttention::probabilities`]).
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> per group `[batch, heads, block_len, block_len]`
    pub fn attention_probabilities(
        &self,
        x: Tensor<B, 2>,
        composed: &ComposedInputs<'_, B>,
    ) -> Vec<Tensor<B, 4>> {
        let h = self.self_attn_layer_norm.forward(x);
        self.self_attn.probabilities(h, composed)
    }

    /// `x + fc2(gelu(fc1(LN(x))))`, the FFN in its weights' dtype.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn ffn_block(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.final_layer_norm.forward(x.clone());
        self.ffn_end(x, h).finish()
    }

    /// [`Self::ffn_block`] of `x` given `normed = LN(x)` (this layer's `final_layer_norm`),
    /// its residual add left open.
    ///
    /// # Shapes
    /// `x`, `normed: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn ffn_end(&self, x: Tensor<B, 2>, normed: Tensor<B, 2>) -> BlockEnd<B> {
        BlockEnd {
            product: self.fc2.forward_unbiased(self.fc1.forward_gelu(normed)),
            linear: self.fc2.clone(),
            x,
        }
    }
}

/// A block's output with its residual add still open: the stream's next value is
/// `x + (product + bias)`, `bias` that of the block's last linear (`out_proj` or `fc2`). The
/// add is done where the next LayerNorm can take it into its kernel.
pub struct BlockEnd<B: Backend> {
    x: Tensor<B, 2>,
    /// The last linear's product, without its bias.
    product: Tensor<B, 2>,
    linear: DeviceLinear<B>,
}

impl<B: Backend> BlockEnd<B> {
    /// `x + (product + bias)`: the bias added in the linear's dtype, the sum in the residual
    /// stream's; on the CPU by one kernel, rounding as burn-flex's add does
    /// ([`super::cpu_kernels::add`]).
    ///
    /// # Shapes
    /// `[tokens, hidden]`
    pub fn finish(self) -> Tensor<B, 2> {
        let dtype = self.x.dtype();
        let h = self.linear.add_bias(self.product).cast(dtype);
        super::cpu_kernels::add(self.linear.backend(), self.x, h).unwrap_or_else(|(x, h)| x + h)
    }

    /// [`Self::finish`] and `norm` of it: one CUDA kernel where it takes them
    /// ([`super::cuda_norm::residual_layer_norm`]: the same values), else the two steps.
    ///
    /// # Shapes
    /// -> (`sum`, `normed`): `[tokens, hidden]` each
    pub fn finish_normed(self, norm: &DeviceNorm<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        match norm.forward_residual(self.x, self.product, &self.linear.bias) {
            Ok(both) => both,
            Err((x, product)) => {
                let sum = BlockEnd {
                    x,
                    product,
                    linear: self.linear,
                }
                .finish();
                let normed = norm.forward(sum.clone());
                (sum, normed)
            }
        }
    }
}
