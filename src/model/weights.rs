//! Host-side weights in f32, laid out per ESM module: the single source from which every
//! precision's model is built ("the reduced copy is a cast of the same weights").

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::config::EsmConfig;

/// A dense f32 tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// `[rows, cols]` -> `[cols, rows]`.
    pub fn transposed(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        HostTensor::new(vec![cols, rows], data)
    }
}

/// One PyTorch `Linear`: weight `[out, in]` (PyTorch layout) and bias `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearWeights {
    pub weight: HostTensor,
    pub bias: HostTensor,
}

impl LinearWeights {
    /// The `Linear` whose outputs are those of `parts` side by side (weights stacked along
    /// `out`): one product instead of several over the same input (q, k and v).
    pub fn stacked(parts: &[&LinearWeights]) -> LinearWeights {
        let d_in = parts.first().map_or(0, |p| p.weight.shape[1]);
        debug_assert!(parts.iter().all(|p| p.weight.shape[1] == d_in));
        let d_out: usize = parts.iter().map(|p| p.weight.shape[0]).sum();
        let weight = parts.iter().flat_map(|p| p.weight.data.iter().copied());
        let bias = parts.iter().flat_map(|p| p.bias.data.iter().copied());
        LinearWeights {
            weight: HostTensor::new(vec![d_out, d_in], weight.collect()),
            bias: HostTensor::new(vec![d_out], bias.collect()),
        }
    }
}

/// One `LayerNorm`: weight and bias `[hidden]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NormWeights {
    pub weight: HostTensor,
    pub bias: HostTensor,
}

/// fair-esm `TransformerLayer` (HF `EsmLayer`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    pub q_proj: LinearWeights,
    pub k_proj: LinearWeights,
    pub v_proj: LinearWeights,
    pub out_proj: LinearWeights,
    /// `[head_dim / 2]`, as stored in the checkpoint (fp16-rounded in real ESM-2 files).
    pub inv_freq: Vec<f32>,
    pub self_attn_layer_norm: NormWeights,
    pub fc1: LinearWeights,
    pub fc2: LinearWeights,
    pub final_layer_norm: NormWeights,
}

impl LayerWeights {
    /// Every tensor of layer `i` under its canonical fair-esm name, `inv_freq` included.
    pub fn named_tensors(&self, i: usize) -> Vec<(String, &[f32])> {
        let mut out: Vec<(String, &[f32])> = Vec::new();
        let linears = [
            ("self_attn.q_proj", &self.q_proj),
            ("self_attn.k_proj", &self.k_proj),
            ("self_attn.v_proj", &self.v_proj),
            ("self_attn.out_proj", &self.out_proj),
            ("fc1", &self.fc1),
            ("fc2", &self.fc2),
        ];
        for (name, lin) in linears {
            out.push((format!("layers.{i}.{name}.weight"), &lin.weight.data));
            out.push((format!("layers.{i}.{name}.bias"), &lin.bias.data));
        }
        let norms = [
            ("self_attn_layer_norm", &self.self_attn_layer_norm),
            ("final_layer_norm", &self.final_layer_norm),
        ];
        for (name, norm) in norms {
            out.push((format!("layers.{i}.{name}.weight"), &norm.weight.data));
            out.push((format!("layers.{i}.{name}.bias"), &norm.bias.data));
        }
        out.push((
            format!("layers.{i}.self_attn.rot_emb.inv_freq"),
            &self.inv_freq,
        ));
        out
    }
}

/// All weights of an ESM-2 backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct EsmWeights {
    pub config: EsmConfig,
    /// `[vocab, hidden]`.
    pub embed_tokens: HostTensor,
    pub layers: Vec<LayerWeights>,
    pub emb_layer_norm_after: NormWeights,
}

/// `inv_freq` as ESM computes it: `1 / 10000^(2i / head_dim)`, rounded through f16 as the
/// trained checkpoints store it.
pub fn default_inv_freq(head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / 10000f64.powf(2.0 * i as f64 / head_dim as f64);
            half::f16::from_f64(f).to_f32()
        })
        .collect()
}

impl EsmWeights {
    /// Randomly initialised weights for `config` (uniform, scaled by 1/sqrt(fan_in); LayerNorm
    /// weights near 1), deterministic in `seed`. For tests that need no weight file.
    pub fn random(config: &EsmConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let hidden = config.hidden_size;
        let ffn = config.intermediate_size;
        let mut uniform = |shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let data = (0..n)
                .map(|_| offset + scale * rng.random_range(-1.0f32..1.0))
                .collect();
            HostTensor::new(shape, data)
        };
        let mut linear = |d_out: usize, d_in: usize| LinearWeights {
            weight: uniform(vec![d_out, d_in], 1.0 / (d_in as f32).sqrt(), 0.0),
            bias: uniform(vec![d_out], 0.02, 0.0),
        };
        let mut layers = Vec::new();
        for _ in 0..config.num_hidden_layers {
            layers.push(LayerWeights {
                q_proj: linear(hidden, hidden),
                k_proj: linear(hidden, hidden),
                v_proj: linear(hidden, hidden),
                out_proj: linear(hidden, hidden),
                inv_freq: default_inv_freq(config.head_dim()),
                self_attn_layer_norm: NormWeights {
                    weight: HostTensor::new(vec![hidden], vec![1.0; hidden]),
                    bias: HostTensor::new(vec![hidden], vec![0.0; hidden]),
                },
                fc1: linear(ffn, hidden),
                fc2: linear(hidden, ffn),
                final_layer_norm: NormWeights {
                    weight: HostTensor::new(vec![hidden], vec![1.0; hidden]),
                    bias: HostTensor::new(vec![hidden], vec![0.0; hidden]),
                },
            });
        }
        let embed_tokens = uniform(vec![config.vocab_size, hidden], 1.0, 0.0);
        Self {
            config: config.clone(),
            embed_tokens,
            layers,
            emb_layer_norm_after: NormWeights {
                weight: HostTensor::new(vec![hidden], vec![1.0; hidden]),
                bias: HostTensor::new(vec![hidden], vec![0.0; hidden]),
            },
        }
    }

    /// Multiplies every weight of layer `layer` by `1 + eps * s`, `s` a fixed pseudo-random
    /// sign: the weight-perturbation fault.
    pub fn perturb_layer(&mut self, layer: usize, eps: f32) {
        let Some(l) = self.layers.get_mut(layer) else {
            return;
        };
        let mut rng = StdRng::seed_from_u64(0xFA17 + layer as u64);
        let mut perturb = |t: &mut HostTensor| {
            for w in &mut t.data {
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                *w *= 1.0 + eps * sign;
            }
        };
        for lin in [
            &mut l.q_proj,
            &mut l.k_proj,
            &mut l.v_proj,
            &mut l.out_proj,
            &mut l.fc1,
            &mut l.fc2,
        ] {
            perturb(&mut lin.weight);
            perturb(&mut lin.bias);
        }
    }

    /// Multiplies layer `layer`'s query projection (weight and bias) by `factor`: its
    /// attention logits `q k^T` scale by `factor` (the scale-attention-logits fault).
    pub fn scale_queries(&mut self, layer: usize, factor: f32) {
        if let Some(l) = self.layers.get_mut(layer) {
            for t in [&mut l.q_proj.weight, &mut l.q_proj.bias] {
                t.data.iter_mut().for_each(|w| *w *= factor);
            }
        }
    }

    /// Sets one weight of layer `layer`'s `fc1` to NaN: the NaN-weight fault.
    pub fn poison_layer(&mut self, layer: usize) {
        if let Some(w) = self
            .layers
            .get_mut(layer)
            .and_then(|l| l.fc1.weight.data.first_mut())
        {
            *w = f32::NAN;
        }
    }

    /// Zeroes the columns of layer `layer`'s `out_proj` that read attention head `head`, so
    /// the head contributes nothing: the zeroed-head fault.
    pub fn zero_attention_head(&mut self, layer: usize, head: usize) {
        let heads = self.config.num_attention_heads;
        let Some(l) = self.layers.get_mut(layer) else {
            return;
        };
        let w = &mut l.out_proj.weight;
        let (rows, cols) = (w.shape[0], w.shape[1]);
        let head_dim = cols / heads.max(1);
        for r in 0..rows {
            for c in head * head_dim..((head + 1) * head_dim).min(cols) {
                w.data[r * cols + c] = 0.0;
            }
        }
    }

    /// Every tensor under its canonical fair-esm name, `inv_freq` included.
    pub fn named_tensors(&self) -> Vec<(String, &[f32])> {
        let mut out: Vec<(String, &[f32])> =
            vec![("embed_tokens.weight".into(), &self.embed_tokens.data)];
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(l.named_tensors(i));
        }
        let after = &self.emb_layer_norm_after;
        out.push(("emb_layer_norm_after.weight".into(), &after.weight.data));
        out.push(("emb_layer_norm_after.bias".into(), &after.bias.data));
        out
    }
}

/// The first non-finite value among named tensors (as [`EsmWeights::named_tensors`] or
/// [`LayerWeights::named_tensors`] give them): (tensor name, flat index, value).
pub fn first_non_finite(tensors: &[(String, &[f32])]) -> Option<(String, usize, f32)> {
    tensors.iter().find_map(|(name, data)| {
        data.iter()
            .position(|v| !v.is_finite())
            .map(|i| (name.clone(), i, data[i]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_weight_is_named_with_its_index() {
        let mut w = EsmWeights::random(&EsmConfig::tiny(), 1);
        assert_eq!(first_non_finite(&w.named_tensors()), None);
        w.poison_layer(1);
        let (name, index, value) = first_non_finite(&w.named_tensors()).unwrap();
        assert_eq!((name.as_str(), index), ("layers.1.fc1.weight", 0));
        assert!(value.is_nan());
        let tensors = w.named_tensors().len();
        assert_eq!(tensors, 1 + w.layers.len() * 17 + 2);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let t = HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let tt = t.transposed();
        assert_eq!(tt.shape, vec![3, 2]);
        assert_eq!(tt.data, vec![1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn random_weights_are_deterministic_and_shaped_by_the_config() {
        let c = EsmConfig::tiny();
        let a = EsmWeights::random(&c, 7);
        assert_eq!(a, EsmWeights::random(&c, 7));
        assert_ne!(a, EsmWeights::random(&c, 8));
        assert_eq!(a.layers.len(), 2);
        assert_eq!(a.layers[0].fc1.weight.shape, vec![128, 32]);
        assert_eq!(a.layers[0].inv_freq.len(), 4);
    }

    #[test]
    fn default_inv_freq_starts_at_one_and_decreases() {
        let f = default_inv_freq(16);
        assert_eq!(f[0], 1.0);
        assert!(f.windows(2).all(|w| w[1] < w[0]));
    }
}
