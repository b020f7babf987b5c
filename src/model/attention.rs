//! fair-esm `MultiheadAttention` with rotary embedding (HF `EsmSelfAttention` +
//! `EsmSelfOutput.dense`): q, k, v projections with bias (one product: their weights are
//! stacked at load), `q *= head_dim^-0.5` before the rotation, softmax over keys with padding
//! masked, then `out_proj`.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use super::blocks::{DeviceBlocks, DeviceGroup, HostBlocks};
use super::cpu_kernels;
use super::device::DeviceLinear;
use super::flash::{self, SeqTable};
use super::ops;
use super::precision::{AttentionKernel, ComputePlan};
use super::rotary::RotaryTables;
use super::weights::{LayerWeights, LinearWeights};

/// Self-attention of one layer, weights on the device in the storage dtype. Cloning shares
/// the device tensors.
#[derive(Clone)]
pub struct SelfAttention<B: Backend> {
    /// q, k and v projections stacked: `[hidden] -> [3 hidden]`, q first.
    pub qkv_proj: DeviceLinear<B>,
    pub out_proj: DeviceLinear<B>,
    /// `[head_dim / 2]`, kept on the host: RoPE tables are built in f32 per forward.
    pub inv_freq: Vec<f32>,
    pub heads: usize,
    /// The layer's plan, or FP32 where this layer's attention is an FP32 place.
    plan: ComputePlan,
    /// The unshifted-half-statistics fault (softmax without max-shift, in storage dtype).
    unshifted_fault: bool,
    /// `[ROPE_POSITIONS, head_dim]` f32 for the flash kernel ([`super::flash`]): built when
    /// the plan asks for fused attention on CUDA and the kernel exists for this head dim.
    rope_table: Option<Tensor<B, 2>>,
}

/// Whether `--attention fused` runs burn's fused attention op on `backend`: on the CPU (its
/// unfused fallback); never on CUDA, where burn-cuda 0.21's op (cubek flash kernels) is
/// wrong or fails (`tests/suite/fused_attention.rs` measures it) and esmfuzz's own flash
/// kernel ([`super::flash`]) runs instead.
pub fn uses_burn_fused_op(backend: crate::backend::BackendKind) -> bool {
    backend == crate::backend::BackendKind::Cpu
}

/// One batch's inputs to the composed attention on the device: the layout's gathers,
/// scatter and key-padding masks ([`DeviceBlocks`]) and the RoPE tables of each group, each
/// uploaded the first time a layer asks for it. A layer that the flash kernel or the CPU
/// kernel attends reads none of them, so a batch they take whole uploads none (at 650M's
/// 16,384-token batches the f32 RoPE tables alone were 8 MB of host memory and two casts a
/// batch, all unread).
pub struct ComposedInputs<'a, B: Backend> {
    host: &'a HostBlocks,
    /// The storage dtype the tables are cast to.
    dtype: DType,
    device: &'a B::Device,
    blocks: OnceCell<DeviceBlocks<B>>,
    /// The tables of the last `inv_freq` asked for (checkpoints store one per layer; they
    /// are normally all the same).
    rotary: RefCell<Option<LastRotary<B>>>,
}

/// An `inv_freq` and its RoPE tables, one per group.
type LastRotary<B> = (Vec<f32>, Rc<[RotaryTables<B>]>);

impl<'a, B: Backend> ComposedInputs<'a, B> {
    /// Nothing is uploaded until asked for.
    pub fn new(host: &'a HostBlocks, dtype: DType, device: &'a B::Device) -> Self {
        Self {
            host,
            dtype,
            device,
            blocks: OnceCell::new(),
            rotary: RefCell::new(None),
        }
    }

    /// The layout on the device, uploaded on first use.
    pub fn blocks(&self) -> &DeviceBlocks<B> {
        self.blocks
            .get_or_init(|| DeviceBlocks::new(self.host, self.device))
    }

    /// Whether anything has been uploaded yet.
    #[cfg(test)]
    pub fn uploaded(&self) -> bool {
        self.blocks.get().is_some() || self.rotary.borrow().is_some()
    }

    /// The RoPE tables of `inv_freq`, one per group, built when `inv_freq` differs from the
    /// last asked for.
    pub fn rotary(&self, inv_freq: &[f32]) -> Rc<[RotaryTables<B>]> {
        let mut last = self.rotary.borrow_mut();
        if let Some((freq, tables)) = last.as_ref()
            && freq.as_slice() == inv_freq
        {
            return tables.clone();
        }
        let tables: Rc<[RotaryTables<B>]> = self
            .host
            .groups
            .iter()
            .map(|g| {
                RotaryTables::new(
                    inv_freq,
                    &g.positions,
                    g.position_rows,
                    g.block_len,
                    self.dtype,
                    self.device,
                )
            })
            .collect();
        *last = Some((inv_freq.to_vec(), tables.clone()));
        tables
    }
}

/// The sequences of one batch's token stream, for the kernels that attend them in place
/// (the CPU kernel reads the table; the CUDA flash kernel its device buffer).
pub struct StreamSeqs<B: Backend> {
    pub table: SeqTable,
    /// Built when the flash kernel runs for the model's plan.
    pub flash: Option<FlashSeqs<B>>,
}

/// The sequences of one batch as the flash kernel reads them ([`super::flash::SeqTable`]).
pub struct FlashSeqs<B: Backend> {
    /// The kernel's `meta` buffer.
    pub meta: Tensor<B, 1, Int>,
    pub tiles: usize,
    /// The longest query range (the RoPE table must cover it).
    pub longest: usize,
}

impl<B: Backend> FlashSeqs<B> {
    pub fn new(table: &SeqTable, device: &B::Device) -> Self {
        let (meta, tiles) = table.meta();
        let len = meta.len();
        Self {
            meta: Tensor::from_data(TensorData::new(meta, [len]), device),
            tiles,
            longest: table.longest(),
        }
    }
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
        let head_dim = w.q_proj.weight.shape[0] / heads.max(1);
        let rope_table = flash::runs_for(plan, head_dim).then(|| {
            let table = flash::rope_table(&w.inv_freq);
            Tensor::from_data(
                TensorData::new(table, [flash::ROPE_POSITIONS, head_dim]),
                device,
            )
        });
        Self {
            rope_table,
            qkv_proj: DeviceLinear::new(
                &LinearWeights::stacked(&[&w.q_proj, &w.k_proj, &w.v_proj]),
                plan,
                device,
            ),
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
            qkv_proj: self.qkv_proj.with_plan(plan),
            out_proj: self.out_proj.with_plan(plan),
            plan: *plan,
            ..self
        }
    }

    /// Each token's attention context (before `out_proj`), heads side by side, computed in
    /// the plan's dtype. With `seqs` (the batch's sequences, absent where a fault rewrites the
    /// layout) one kernel attends every sequence in token order where one runs: the flash
    /// kernel (fused attention on CUDA) or the CPU kernel (composed attention on the CPU,
    /// [`cpu_kernels`]).
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens, hidden]`
    pub fn context(
        &self,
        x: Tensor<B, 2>,
        composed: &ComposedInputs<'_, B>,
        seqs: Option<&StreamSeqs<B>>,
    ) -> Tensor<B, 2> {
        // The flash kernel's pre-pass adds the projections' bias itself.
        let product = self.qkv_proj.forward_unbiased(x);
        let qkv = match self.flash(product, seqs.and_then(|s| s.flash.as_ref())) {
            Ok(context) => return context,
            Err(product) => self.qkv_proj.add_bias(product),
        };
        if let Some(seqs) = seqs
            && self.cpu_kernel_runs()
        {
            return cpu_kernels::attention(
                &self.plan,
                qkv,
                &seqs.table,
                self.heads,
                &self.inv_freq,
            );
        }
        let (layout, rotary) = (composed.blocks(), composed.rotary(&self.inv_freq));
        let qkv = layout.extend_for_gather(qkv);
        let mut contexts: Vec<Tensor<B, 2>> = layout
            .groups
            .iter()
            .zip(rotary.iter())
            .map(|(group, rot)| self.attend_group(group, rot, &qkv))
            .collect();
        let context = if contexts.len() == 1 {
            contexts.remove(0)
        } else {
            Tensor::cat(contexts, 0)
        };
        layout.from_blocks(context)
    }

    /// The flash kernel's contexts of `product + bias` when it runs here (fused, CUDA, a
    /// dtype and head dim it exists for, sequences the RoPE table covers); `product` back
    /// otherwise.
    ///
    /// # Shapes
    /// `product: [tokens, 3 hidden]` (the q, k, v projections without their bias) ->
    /// `[tokens, hidden]`
    fn flash(
        &self,
        qkv: Tensor<B, 2>,
        seqs: Option<&FlashSeqs<B>>,
    ) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let (Some(rope), Some(seqs)) = (&self.rope_table, seqs) else {
            return Err(qkv);
        };
        if !self.fused() || seqs.longest > flash::ROPE_POSITIONS {
            return Err(qkv);
        }
        #[cfg(feature = "cuda")]
        return flash::attention(
            qkv,
            &self.qkv_proj.bias,
            rope,
            &seqs.meta,
            seqs.tiles,
            self.heads,
        );
        #[cfg(not(feature = "cuda"))]
        {
            let _ = rope;
            Err(qkv)
        }
    }

    /// Whether fused attention is asked for here: by the plan (an FP32 place gets the
    /// reference's composed plan), unless the unshifted-softmax fault needs the composed
    /// softmax. f32 storage is fused too: the flash kernel's f32 body is true FP32.
    fn fused(&self) -> bool {
        self.plan.attention == AttentionKernel::Fused && !self.unshifted_fault
    }

    /// Whether the CPU attention kernel computes this layer's composed attention (not with
    /// the unshifted-softmax fault, which needs the composed softmax).
    fn cpu_kernel_runs(&self) -> bool {
        cpu_kernels::attention_runs_for(&self.plan) && !self.unshifted_fault
    }

    /// Whether burn's fused attention op runs here: fused attention off CUDA (on CUDA it is
    /// the flash kernel, or the composed path where that cannot run; see
    /// [`uses_burn_fused_op`]).
    fn burn_fused(&self) -> bool {
        self.fused() && uses_burn_fused_op(self.plan.backend)
    }

    /// The attention probabilities of every group, computed as the composed path computes
    /// them under this plan (also when the plan asks for fused attention, whose kernels
    /// never materialise them): what HF's `output_attentions` returns.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` (after the layer's LayerNorm) -> per group of `layout`
    /// `[batch, heads, block_len, block_len]`, padding keys at probability 0
    pub fn probabilities(
        &self,
        x: Tensor<B, 2>,
        composed: &ComposedInputs<'_, B>,
    ) -> Vec<Tensor<B, 4>> {
        let (layout, rotary) = (composed.blocks(), composed.rotary(&self.inv_freq));
        let qkv = layout.extend_for_gather(self.qkv_proj.forward(x));
        layout
            .groups
            .iter()
            .zip(rotary.iter())
            .map(|(group, rot)| {
                let (q, k, _) = self.heads_of_group(group, rot, &qkv, true);
                self.composed_probs(group, q, k)
            })
            .collect()
    }

    /// Attention within one group of equally long blocks.
    ///
    /// # Shapes
    /// `qkv: [tokens (+ 1), 3 hidden]` -> `[batch * block_len, hidden]`
    fn attend_group(
        &self,
        group: &DeviceGroup<B>,
        rotary: &RotaryTables<B>,
        qkv: &Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let hidden = qkv.dims()[1] / 3;
        let (batch, len) = (group.batch, group.block_len);
        // The fused op scales by head_dim^-0.5 itself (after the rotation, which is linear).
        let fused = self.burn_fused();
        let (q, k, v) = self.heads_of_group(group, rotary, qkv, !fused);
        if fused {
            let mask = group
                .key_padding
                .clone()
                .expand([batch, self.heads, len, len]);
            let options = AttentionModuleOptions::default();
            return burn::tensor::module::attention(q, k, v, Some(mask), None, options)
                .swap_dims(1, 2)
                .reshape([batch * len, hidden]);
        }
        let probs = self.composed_probs(group, q, k);
        ops::matmul(&self.plan, probs, v)
            .swap_dims(1, 2)
            .reshape([batch * len, hidden])
    }

    /// One group's q (times `head_dim^-0.5` when `scale_q`) and k rotated, and v.
    ///
    /// # Shapes
    /// `qkv: [tokens (+ 1), 3 hidden]` -> each `[batch, heads, block_len, head_dim]`
    fn heads_of_group(
        &self,
        group: &DeviceGroup<B>,
        rotary: &RotaryTables<B>,
        qkv: &Tensor<B, 2>,
        scale_q: bool,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let hidden = qkv.dims()[1] / 3;
        let (batch, len, heads) = (group.batch, group.block_len, self.heads);
        let head_dim = hidden / heads;
        let blocks = group.to_blocks(qkv.clone());
        // Part `i` of q, k, v as `[batch, heads, block_len, head_dim]`.
        let part = |i: usize| {
            blocks
                .clone()
                .narrow(1, i * hidden, hidden)
                .reshape([batch, len, heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = if scale_q {
            part(0).mul_scalar((head_dim as f64).powf(-0.5))
        } else {
            part(0)
        };
        (rotary.apply(q), rotary.apply(part(1)), part(2))
    }

    /// `softmax(q k^T)` with padding keys masked, under the plan.
    ///
    /// # Shapes
    /// `q, k: [batch, heads, block_len, head_dim]` -> `[batch, heads, block_len, block_len]`
    fn composed_probs(
        &self,
        group: &DeviceGroup<B>,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [batch, heads, len, _head_dim] = q.dims();
        let plan = &self.plan;
        let mask = group.key_padding.clone().expand([batch, heads, len, len]);
        let scores = ops::matmul(plan, q, k.swap_dims(2, 3));
        let scores = scores.mask_fill(mask, ops::mask_value(plan.dtype()));
        ops::softmax_last(plan, scores, self.unshifted_fault)
    }
}
