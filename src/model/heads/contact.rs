//! HF `EsmContactPredictionHead` (fair-esm `ContactPredictionHead`): a logistic regression
//! over every layer's attention probabilities, each map trimmed of BOS and EOS, symmetrised
//! and APC-corrected (average product correction). The maps are a policy's own (from
//! [`crate::model::Esm2::attention_maps`]); the regression over them, 120 weights for the 8M
//! model, is computed here on the host in f64 for every policy, so two policies' contact maps
//! differ only by their attention.

use crate::model::weights::LinearWeights;

/// `contact_head.regression`: `[layers * heads] -> [1]`, PyTorch layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactWeights {
    pub regression: LinearWeights,
}

impl ContactWeights {
    /// Attention maps the regression reads (`layers * heads`).
    pub fn channels(&self) -> usize {
        self.regression.weight.shape.get(1).copied().unwrap_or(0)
    }
}

/// Contact probabilities of one sequence of `n` residues from its attention probabilities.
///
/// # Shapes
/// `attentions: [layers * heads, n + 2, n + 2]` (channel `layer * heads + head`, rows and
/// columns BOS first, EOS last, no padding) -> `[n, n]`, row-major.
///
/// # Panics
/// When `attentions` does not hold `w.channels()` maps of `(n + 2)^2` values (a bug of the
/// caller, which built them from the same model).
pub fn predict_contacts(w: &ContactWeights, attentions: &[f32], n: usize) -> Vec<f32> {
    let channels = w.channels();
    let t = n + 2;
    assert_eq!(
        attentions.len(),
        channels * t * t,
        "{channels} attention maps of {t} x {t} tokens"
    );
    let mut logits = vec![w.regression.bias.data[0] as f64; n * n];
    let mut sym = vec![0f64; n * n];
    for (c, &weight) in w.regression.weight.data.iter().enumerate() {
        let map = &attentions[c * t * t..][..t * t];
        // Residues only (BOS row/column 0 and EOS row/column n + 1 trimmed), symmetrised.
        for i in 0..n {
            for j in 0..n {
                sym[i * n + j] = map[(i + 1) * t + j + 1] as f64 + map[(j + 1) * t + i + 1] as f64;
            }
        }
        // APC: x - (row sum) (column sum) / total.
        let rows: Vec<f64> = (0..n).map(|i| sym[i * n..][..n].iter().sum()).collect();
        let cols: Vec<f64> = (0..n)
            .map(|j| (0..n).map(|i| sym[i * n + j]).sum())
            .collect();
        let total: f64 = rows.iter().sum();
        let weight = weight as f64;
        for i in 0..n {
            for j in 0..n {
                let corrected = sym[i * n + j] - rows[i] * cols[j] / total;
                logits[i * n + j] += weight * corrected;
            }
        }
    }
    logits
        .into_iter()
        .map(|z| (1.0 / (1.0 + (-z).exp())) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::HostTensor;

    fn head(weights: Vec<f32>, bias: f32) -> ContactWeights {
        let c = weights.len();
        ContactWeights {
            regression: LinearWeights {
                weight: HostTensor::new(vec![1, c], weights),
                bias: HostTensor::new(vec![1], vec![bias]),
            },
        }
    }

    /// Uniform attention carries no contact signal: APC removes it entirely, leaving the
    /// bias; the map is symmetric whatever the attention.
    #[test]
    fn uniform_attention_gives_the_bias_and_maps_are_symmetric() {
        let n = 4;
        let t = n + 2;
        let uniform = vec![1.0 / t as f32; 2 * t * t];
        let p = predict_contacts(&head(vec![3.0, -1.0], 0.0), &uniform, n);
        assert!(p.iter().all(|&v| (v - 0.5).abs() < 1e-6), "{p:?}");
        let skewed: Vec<f32> = (0..2 * t * t)
            .map(|k| ((k * 7919) % 13) as f32 / 13.0)
            .collect();
        let p = predict_contacts(&head(vec![3.0, -1.0], 0.2), &skewed, n);
        for i in 0..n {
            for j in 0..n {
                assert_eq!(p[i * n + j], p[j * n + i]);
            }
        }
    }
}
