//! fair-esm `ESM2` (HF `EsmModel` without pooler): token embedding with token dropout, the
//! layers, `emb_layer_norm_after`, and `repr_layers` with the reference's indexing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use super::attention::{ComposedInputs, FlashSeqs, StreamSeqs};
use super::blocks::{HostBlocks, ModelInput};
use super::config::EsmConfig;
use super::device::{DeviceNorm, to_device};
use super::fault::FaultSet;
use super::flash::{self, SeqTable};
use super::fp32_places::{Fp32Place, Fp32Places};
use super::layer::{EsmLayer, LayerPlan};
use super::precision::{ComputePlan, Precision};
use super::weights::{EsmWeights, HostTensor, LayerWeights, NormWeights};

/// ESM-2 on one device under one precision policy. Cloning shares the device tensors.
#[derive(Clone)]
pub struct Esm2<B: Backend> {
    pub config: EsmConfig,
    pub plan: ComputePlan,
    /// Places computed in FP32 whatever the plan (empty for a plain policy).
    pub fp32_places: Fp32Places,
    pub faults: FaultSet,
    /// Slots per attention group for packed input (the plan's default unless set).
    pub attention_group_slots: usize,
    /// `[vocab, hidden]`.
    embed_tokens: Tensor<B, 2>,
    layers: Vec<EsmLayer<B>>,
    emb_layer_norm_after: DeviceNorm<B>,
    device: B::Device,
}

/// What one model built by [`Esm2::streamed`] computes.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub plan: ComputePlan,
    pub fp32_places: Fp32Places,
    pub faults: FaultSet,
}

/// A place in the forward pass where the residual stream can be compared.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Place {
    /// The token embeddings after token dropout.
    Embeddings,
    /// Layer `i` (0-based, HF's `encoder.layer.i`) after its attention block.
    Attention(usize),
    /// Layer `i` after its FFN block: the layer's output.
    Ffn(usize),
    /// After `emb_layer_norm_after`.
    FinalNorm,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Embeddings => f.write_str("embeddings"),
            Place::Attention(i) => write!(f, "layer {i} attention"),
            Place::Ffn(i) => write!(f, "layer {i} FFN"),
            Place::FinalNorm => f.write_str("final LayerNorm"),
        }
    }
}

/// Representations by layer index: 0 is the embedding output (after token dropout), `i` in
/// `1..L` the output of layer `i`, and `L` the output after `emb_layer_norm_after`.
pub struct EsmOutput<B: Backend> {
    /// Each `[tokens, hidden]`, rows in the order of [`ModelInput::tokens`].
    pub representations: BTreeMap<usize, Tensor<B, 2>>,
}

impl<B: Backend> Esm2<B> {
    /// Builds the model from host weights, cast to the plan's storage dtype, with `faults`
    /// built in ([`FaultSet::none`] for the faithful model).
    pub fn new(
        weights: &EsmWeights,
        plan: ComputePlan,
        faults: FaultSet,
        device: &B::Device,
    ) -> Self {
        Self::mixed(weights, plan, Fp32Places::none(), faults, device)
    }

    /// [`Esm2::new`] with `fp32_places` computed in FP32 (their weights kept in f32): a mixed
    /// policy. Places must name layers the weights have ([`Fp32Places::check_layers`]).
    pub fn mixed(
        weights: &EsmWeights,
        plan: ComputePlan,
        fp32_places: Fp32Places,
        faults: FaultSet,
        device: &B::Device,
    ) -> Self {
        let faulty;
        let weights = if faults.changes_weights() {
            faulty = faults.apply_to(weights);
            &faulty
        } else {
            weights
        };
        let spec = ModelSpec {
            plan,
            fp32_places,
            faults,
        };
        // The faults that change weights are in `weights` now.
        let built = Self::build(
            &weights.config,
            std::slice::from_ref(&spec),
            &weights.embed_tokens,
            &weights.emb_layer_norm_after,
            |i| Ok::<_, std::convert::Infallible>(Cow::Borrowed(&weights.layers[i])),
            device,
        );
        match built {
            Ok(mut models) => models.remove(0),
            Err(never) => match never {},
        }
    }

    /// One model per spec, built layer by layer: `layer(i)` hands over layer `i`'s host
    /// weights, which are uploaded for every spec and dropped before the next layer is
    /// asked for. Host memory then holds one layer at a time (a 3B checkpoint streamed from
    /// disk never sits in host memory whole). Specs must not carry faults that change
    /// weights ([`FaultSet::changes_weights`]; [`Esm2::mixed`] applies those first).
    ///
    /// # Panics
    /// When a spec's faults change weights.
    pub fn streamed<'w, E>(
        config: &EsmConfig,
        specs: &[ModelSpec],
        embed_tokens: &HostTensor,
        emb_layer_norm_after: &NormWeights,
        layer: impl FnMut(usize) -> Result<Cow<'w, LayerWeights>, E>,
        device: &B::Device,
    ) -> Result<Vec<Self>, E> {
        assert!(
            specs.iter().all(|s| !s.faults.changes_weights()),
            "weight-changing faults are applied to whole weights first (Esm2::mixed)"
        );
        Self::build(
            config,
            specs,
            embed_tokens,
            emb_layer_norm_after,
            layer,
            device,
        )
    }

    /// [`Esm2::streamed`] for weights that already carry the specs' weight faults.
    fn build<'w, E>(
        config: &EsmConfig,
        specs: &[ModelSpec],
        embed_tokens: &HostTensor,
        emb_layer_norm_after: &NormWeights,
        mut layer: impl FnMut(usize) -> Result<Cow<'w, LayerWeights>, E>,
        device: &B::Device,
    ) -> Result<Vec<Self>, E> {
        let eps = config.layer_norm_eps;
        let mut layers: Vec<Vec<EsmLayer<B>>> = specs.iter().map(|_| Vec::new()).collect();
        for index in 0..config.num_hidden_layers {
            let weights = layer(index)?;
            for (spec, built) in specs.iter().zip(&mut layers) {
                let how = LayerPlan {
                    index,
                    plan: &spec.plan,
                    fp32_places: &spec.fp32_places,
                    faults: &spec.faults,
                    heads: config.num_attention_heads,
                    eps,
                };
                built.push(EsmLayer::new(&weights, &how, device));
            }
        }
        Ok(specs
            .iter()
            .zip(layers)
            .map(|(spec, layers)| {
                let plan = spec.plan;
                let places = &spec.fp32_places;
                let final_plan = places.plan_at(Fp32Place::FinalNorm, &plan);
                Self {
                    config: config.clone(),
                    plan,
                    faults: spec.faults,
                    attention_group_slots: plan.backend.attention_group_slots(),
                    embed_tokens: to_device(
                        embed_tokens,
                        &places.plan_at(Fp32Place::Embeddings, &plan),
                        device,
                    ),
                    layers,
                    emb_layer_norm_after: DeviceNorm::new(
                        emb_layer_norm_after,
                        &final_plan,
                        eps,
                        spec.faults.unshifted_half_statistics,
                        device,
                    ),
                    fp32_places: places.clone(),
                    device: device.clone(),
                }
            })
            .collect())
    }

    /// The multiple padded rows are rounded up to. Where the flash kernel attends (fused
    /// attention on CUDA) it reads each sequence's own length, so rows keep the batch's
    /// longest sequence, as torch pads them: rounding to 64 added up to 63 slots of work per
    /// row to every product. Elsewhere the backend's block multiple
    /// ([`crate::backend::BackendKind::block_multiple`]), so that the composed attention's
    /// blocks need no gather. Either is correct for any layer (a layer that runs composed
    /// rounds its blocks itself); this only decides which path pays for rounding.
    pub fn padded_row_multiple(&self) -> usize {
        if flash::runs_for(&self.plan, self.config.head_dim()) {
            1
        } else {
            self.plan.backend.block_multiple()
        }
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The noise-floor model of a plain, fault-free FP32 model: the same device tensors (no
    /// copy) with every reduction summed in another order ([`ComputePlan::reordered_f32`]);
    /// `None` for any other model.
    pub fn noise_floor(&self) -> Option<Self> {
        if self.plan.precision != Precision::F32
            || !self.fp32_places.is_empty()
            || self.faults != FaultSet::none()
        {
            return None;
        }
        let plan = ComputePlan {
            gemm: self.plan.gemm,
            ..ComputePlan::reordered_f32(self.plan.backend)
        };
        let mut floor = self.clone();
        floor.plan = plan;
        floor.layers = floor
            .layers
            .into_iter()
            .map(|l| l.with_plan(&plan))
            .collect();
        floor.emb_layer_norm_after = floor.emb_layer_norm_after.with_plan(&plan);
        Some(floor)
    }

    /// Runs the model; `repr_layers` picks which representations to return (indices above
    /// the layer count are ignored).
    ///
    /// # Shapes
    /// `input.tokens: [tokens]` -> each representation `[tokens, hidden]`
    pub fn forward(&self, input: &ModelInput, repr_layers: &[usize]) -> EsmOutput<B> {
        let last = self.layers.len();
        let mut representations = BTreeMap::new();
        self.run(input, None, |place, x| {
            let index = match place {
                Place::Embeddings => Some(0),
                Place::Ffn(i) if i + 1 < last => Some(i + 1),
                Place::FinalNorm => Some(last),
                _ => None,
            };
            if let Some(index) = index.filter(|i| repr_layers.contains(i)) {
                representations.insert(index, x.clone());
            }
        });
        EsmOutput { representations }
    }

    /// Runs the model and returns the states at every [`Place`], in order: the embeddings,
    /// each layer's residual stream after its attention block and after its FFN block, and
    /// the output of the final LayerNorm.
    ///
    /// # Shapes
    /// `input.tokens: [tokens]` -> each state `[tokens, hidden]`
    pub fn trace(&self, input: &ModelInput) -> Vec<(Place, Tensor<B, 2>)> {
        let mut places = Vec::with_capacity(2 * self.layers.len() + 2);
        self.run(input, None, |place, x| places.push((place, x.clone())));
        places
    }

    /// Runs the model and returns every layer's attention probabilities, per group of the
    /// layout the model uses for `input` (for a padded batch, one group whose rows are the
    /// sequences in input order), as the composed attention computes them under this
    /// model's plan (HF's `output_attentions`; the contact head reads them).
    ///
    /// # Shapes
    /// `input.tokens: [tokens]` -> per layer, per group `[batch, heads, block_len, block_len]`
    pub fn attention_maps(&self, input: &ModelInput) -> Vec<Vec<Tensor<B, 4>>> {
        let mut maps = Vec::with_capacity(self.layers.len());
        self.run(input, Some(&mut maps), |_, _| {});
        maps
    }

    /// The forward pass, showing `observe` the residual stream at every place.
    /// With `maps`, each layer's attention probabilities are pushed there too.
    fn run(
        &self,
        input: &ModelInput,
        mut maps: Option<&mut Vec<Vec<Tensor<B, 4>>>>,
        mut observe: impl FnMut(Place, &Tensor<B, 2>),
    ) {
        let device = &self.device;
        let dtype = self.plan.dtype();
        let n_tokens = input.tokens.len();
        if let Some(limit) = self.faults.device_memory_tokens.filter(|&l| n_tokens > l) {
            panic!(
                "out of memory (simulated device of {limit} tokens, batch of {n_tokens} tokens)"
            );
        }

        let host_layout = self.effective_layout(input);
        // Uploaded only where a layer takes the composed attention.
        let composed = ComposedInputs::<B>::new(&host_layout, dtype, device);
        // The attention kernels (CUDA flash, CPU) read the input's own sequences, unless a
        // fault rewrites the layout.
        let seqs = (!self.faults.attention_leaks_across_sequences
            && !self.faults.rope_not_restarted)
            .then(|| SeqTable::of_blocks(&input.layout))
            .flatten()
            .map(|table| StreamSeqs {
                flash: flash::runs_for(&self.plan, self.config.head_dim())
                    .then(|| FlashSeqs::new(&table, device)),
                table,
            });

        let ids: Vec<i64> = input.tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n_tokens]), device);
        let scale = Tensor::<B, 2>::from_data(
            TensorData::new(input.token_scale.clone(), [n_tokens, 1]),
            device,
        )
        .cast(self.embed_tokens.dtype());
        let stream = if self.fp32_places.contains(Fp32Place::Residual) {
            DType::F32
        } else {
            dtype
        };
        let mut x = (self.embed_tokens.clone().select(0, ids) * scale).cast(stream);
        observe(Place::Embeddings, &x);

        // The next LayerNorm of `x`, where the last block's residual add computed it.
        let mut normed: Option<Tensor<B, 2>> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(maps) = maps.as_deref_mut() {
                maps.push(layer.attention_probabilities(x.clone(), &composed));
            }
            // Each block's residual add is done with the LayerNorm after it (one CUDA kernel
            // where it takes them): `normed` is this layer's first LayerNorm of `x`.
            let attention_input = normed
                .take()
                .unwrap_or_else(|| layer.self_attn_layer_norm.forward(x.clone()));
            let (after_attention, normed_ffn) = layer
                .attention_end(x, attention_input, &composed, seqs.as_ref())
                .finish_normed(&layer.final_layer_norm);
            observe(Place::Attention(i), &after_attention);
            let end = layer.ffn_end(after_attention, normed_ffn);
            let faulty_output = self.faults.scale_layer_output.is_some_and(|(l, _)| l == i)
                || self.faults.round_layer_output_to_f16 == Some(i);
            if faulty_output {
                x = end.finish();
                if let Some((faulty, factor)) = self.faults.scale_layer_output
                    && faulty == i
                {
                    x = x.mul_scalar(factor);
                }
                if self.faults.round_layer_output_to_f16 == Some(i) {
                    let dtype = x.dtype();
                    x = x.cast(DType::F16).cast(dtype);
                }
            } else {
                let next_norm = self
                    .layers
                    .get(i + 1)
                    .map_or(&self.emb_layer_norm_after, |next| {
                        &next.self_attn_layer_norm
                    });
                let (sum, next_normed) = end.finish_normed(next_norm);
                x = sum;
                normed = Some(next_normed);
            }
            observe(Place::Ffn(i), &x);
        }
        x = normed.unwrap_or_else(|| self.emb_layer_norm_after.forward(x));
        observe(Place::FinalNorm, &x);
    }

    /// The layout the model really uses: the input's, packed input regrouped under
    /// [`Esm2::attention_group_slots`], rewritten by any packing fault, with block lengths
    /// rounded up to the backend's [`crate::backend::BackendKind::block_multiple`].
    fn effective_layout(&self, input: &ModelInput) -> HostBlocks {
        let n_tokens = input.tokens.len();
        let mut layout = input.layout.regrouped(self.attention_group_slots);
        if layout.is_packed() && self.faults.attention_leaks_across_sequences {
            layout = layout.as_single_block(n_tokens);
        }
        if layout.is_packed() && self.faults.rope_not_restarted {
            layout = layout.with_stream_positions(n_tokens);
        }
        layout.with_block_multiple(n_tokens, self.plan.backend.block_multiple())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, Cpu, cpu_device};
    use crate::model::attention::StreamSeqs;
    use crate::model::to_host;

    /// The CPU attention kernel's and the composed attention's outputs of one layer (after
    /// `out_proj`) on the same packed input of 64 tokens: the rows on which they differ at
    /// all, and the largest difference relative to the largest value.
    fn kernel_against_composed(precision: Precision, seed: u64) -> (usize, f32) {
        let config = EsmConfig::new(1, 64, 4);
        let weights = EsmWeights::random(&config, 11);
        let device = cpu_device();
        let plan = ComputePlan::new(precision, BackendKind::Cpu);
        let model = Esm2::<Cpu>::new(&weights, plan, FaultSet::none(), &device);
        let cu = [0, 5, 17, 40, 41, 64];
        let input = ModelInput {
            tokens: (0..64).map(|i| 4 + (i * 7) % 20).collect(),
            token_scale: vec![1.0; 64],
            layout: HostBlocks::packed(&cu, 1024),
        };
        let host_layout = model.effective_layout(&input);
        let inputs = ComposedInputs::<Cpu>::new(&host_layout, plan.dtype(), &device);
        let attention = &model.layers[0].self_attn;
        let seqs = StreamSeqs {
            table: SeqTable::of_blocks(&input.layout).unwrap(),
            flash: None,
        };
        let x = crate::model::cpu_kernels::seeded([64, 64], seed, 1.7, 0.0).cast(plan.dtype());
        let attend = |x, seqs| {
            let context = attention.context(x, &inputs, seqs);
            to_host(attention.out_proj.forward(context))
        };
        let kernel = attend(x.clone(), Some(&seqs));
        // Where the kernel runs, it reads none of the composed path's inputs, so none was
        // uploaded (TF32 has no kernel: both passes are the composed path).
        let kernel_ran = crate::model::cpu_kernels::attention_runs_for(&plan);
        assert_eq!(inputs.uploaded(), !kernel_ran, "{precision}");
        let composed = attend(x, None);
        assert!(inputs.uploaded());
        let rows = kernel
            .chunks(64)
            .zip(composed.chunks(64))
            .filter(|(k, c)| k != c)
            .count();
        let scale = composed.iter().fold(0.0f32, |m, c| m.max(c.abs()));
        let worst = kernel
            .iter()
            .zip(&composed)
            .fold(0.0f32, |m, (k, c)| m.max((k - c).abs()));
        (rows, worst / scale)
    }

    /// The kernel rounds where the composition stores a tensor, so in a half dtype their
    /// results are equal but where a sum's order flips one rounding, which out_proj spreads
    /// over that row. Measured on inputs seeded 1..=20: bf16 at most 1 row of 64, f16 at most
    /// 5, f16-mixed at most 4; on seeds 1..=8, 1, 11 and 15 of 512 rows. f32 differs
    /// everywhere by the order of its sums, within 1e-6 of the values. Dropping the kernel's
    /// rounding of the rotary products (f16) makes 63 of 64 rows differ.
    #[test]
    fn the_cpu_attention_kernel_rounds_where_the_composed_attention_does() {
        for precision in Precision::ALL {
            let mut rows = 0;
            for seed in 1..=8 {
                let (differ, worst) = kernel_against_composed(precision, seed);
                rows += differ;
                match precision {
                    Precision::F32 => assert!(worst < 1e-6, "{precision}: {worst:e}"),
                    // Emulated TF32 products: the composed path (no kernel), equal to itself.
                    Precision::Tf32 => assert_eq!((differ, worst), (0, 0.0)),
                    _ => assert!(worst < 1e-2, "{precision}, seed {seed}: {worst:e}"),
                }
            }
            if precision != Precision::F32 {
                assert!(rows <= 48, "{precision}: {rows} of 512 rows differ");
            }
        }
    }
}
