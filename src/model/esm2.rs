//! fair-esm `ESM2` (HF `EsmModel` without pooler): token embedding with token dropout, the
//! layers, `emb_layer_norm_after`, and `repr_layers` with the reference's indexing.

use std::collections::BTreeMap;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::config::EsmConfig;
use super::layer::EsmLayer;
use super::layout::{BlockLayout, ModelInput};
use super::precision::ComputePlan;
use super::rotary::RotaryTables;
use super::weights::EsmWeights;
use super::{DeviceNorm, to_device};
use crate::fault::FaultSet;

/// ESM-2 on one device under one precision policy.
pub struct Esm2<B: Backend> {
    pub config: EsmConfig,
    pub plan: ComputePlan,
    pub faults: FaultSet,
    /// `[vocab, hidden]`.
    embed_tokens: Tensor<B, 2>,
    layers: Vec<EsmLayer<B>>,
    emb_layer_norm_after: DeviceNorm<B>,
    device: B::Device,
}

/// Representations by layer index: 0 is the embedding output (after token dropout), `i` in
/// `1..L` the output of layer `i`, and `L` the output after `emb_layer_norm_after`.
pub struct EsmOutput<B: Backend> {
    /// Each `[tokens, hidden]`, rows in the order of [`ModelInput::tokens`].
    pub representations: BTreeMap<usize, Tensor<B, 2>>,
}

impl<B: Backend> Esm2<B> {
    /// Builds the model from host weights, cast to the plan's storage dtype.
    pub fn new(
        weights: &EsmWeights,
        plan: ComputePlan,
        faults: FaultSet,
        device: &B::Device,
    ) -> Self {
        let perturbed;
        let weights = match faults.perturb_layer_weights {
            Some((layer, eps)) => {
                let mut w = weights.clone();
                w.perturb_layer(layer, eps);
                perturbed = w;
                &perturbed
            }
            None => weights,
        };
        let heads = weights.config.num_attention_heads;
        Self {
            config: weights.config.clone(),
            plan,
            faults,
            embed_tokens: to_device(&weights.embed_tokens, &plan, device),
            layers: weights
                .layers
                .iter()
                .map(|l| EsmLayer::new(l, heads, &plan, device))
                .collect(),
            emb_layer_norm_after: DeviceNorm::new(&weights.emb_layer_norm_after, &plan, device),
            device: device.clone(),
        }
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Runs the model; `repr_layers` picks which representations to return (indices above
    /// the layer count are ignored).
    ///
    /// # Shapes
    /// `input.tokens: [tokens]` -> each representation `[tokens, hidden]`
    pub fn forward(&self, input: &ModelInput, repr_layers: &[usize]) -> EsmOutput<B> {
        let device = &self.device;
        let dtype = self.plan.dtype();
        let n_layers = self.layers.len();
        let n_tokens = input.tokens.len();
        let unshifted = self.faults.unshifted_half_statistics;

        let host_layout = self.faulty_layout(input);
        let layout = BlockLayout::<B>::new(&host_layout, device);

        let ids: Vec<i64> = input.tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n_tokens]), device);
        let scale = Tensor::<B, 2>::from_data(
            TensorData::new(input.token_scale.clone(), [n_tokens, 1]),
            device,
        )
        .cast(dtype);
        let mut x = self.embed_tokens.clone().select(0, ids) * scale;

        let mut representations = BTreeMap::new();
        if repr_layers.contains(&0) {
            representations.insert(0, x.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let rotary: Vec<RotaryTables<B>> = host_layout
                .groups
                .iter()
                .map(|g| {
                    RotaryTables::new(
                        &layer.self_attn.inv_freq,
                        &g.positions,
                        g.position_rows,
                        g.block_len,
                        dtype,
                        device,
                    )
                })
                .collect();
            x = layer.forward(
                &self.plan,
                x,
                &layout,
                &rotary,
                self.config.layer_norm_eps,
                unshifted,
            );
            if let Some((faulty, factor)) = self.faults.scale_layer_output
                && faulty == i
            {
                x = x.mul_scalar(factor);
            }
            if i + 1 == n_layers {
                x = self.emb_layer_norm_after.forward(
                    &self.plan,
                    x,
                    self.config.layer_norm_eps,
                    unshifted,
                );
            }
            if repr_layers.contains(&(i + 1)) {
                representations.insert(i + 1, x.clone());
            }
        }
        EsmOutput { representations }
    }

    /// The layout the model really uses: the input's, unless a packing fault rewrites it.
    fn faulty_layout(&self, input: &ModelInput) -> super::layout::HostLayout {
        let mut layout = input.layout.clone();
        if !layout.is_packed() {
            return layout;
        }
        if self.faults.attention_leaks_across_sequences {
            layout = layout.as_single_block(input.tokens.len());
        }
        if self.faults.rope_not_restarted {
            layout = layout.with_stream_positions(input.tokens.len());
        }
        layout
    }
}
