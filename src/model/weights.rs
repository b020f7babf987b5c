//! Host-side weights in f32, laid out per ESM module: the single source from which every
//! precision's model is built ("the reduced copy is a cast of the same weights").

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

/// All weights of an ESM-2 backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct EsmWeights {
    pub config: EsmConfig,
    /// `[vocab, hidden]`.
    pub embed_tokens: HostTensor,
    pub layers: Vec<LayerWeights>,
    pub emb_layer_norm_after: NormWeights,
}

/// A small deterministic generator (SplitMix64) so random weights need no extra dependency
/// and are identical on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
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
        let mut rng = SplitMix(seed);
        let hidden = config.hidden_size;
        let ffn = config.intermediate_size;
        let mut uniform = |shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let data = (0..n).map(|_| offset + scale * rng.symmetric()).collect();
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
        let mut rng = SplitMix(0xFA17 + layer as u64);
        let mut perturb = |t: &mut HostTensor| {
            for w in &mut t.data {
                let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
