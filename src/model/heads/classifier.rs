//! HF `EsmClassificationHead`, the head of `EsmForSequenceClassification`: the last hidden
//! state's BOS row (after `emb_layer_norm_after`) through `dense`, `tanh` and `out_proj`.
//! HF's two dropouts are identities at inference and are left out.

use burn::tensor::{Tensor, TensorData, activation, backend::Backend};

use crate::model::device::DeviceLinear;
use crate::model::host::to_host;
use crate::model::precision::ComputePlan;
use crate::model::weights::LinearWeights;

/// `classifier.dense` (`[hidden] -> [hidden]`) and `classifier.out_proj`
/// (`[hidden] -> [labels]`), PyTorch layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierWeights {
    pub dense: LinearWeights,
    pub out_proj: LinearWeights,
}

impl ClassifierWeights {
    /// The number of classes (`out_proj`'s outputs).
    pub fn labels(&self) -> usize {
        self.out_proj.weight.shape[0]
    }
}

/// The classifier on the device, computed under a policy's plan (its storage dtype and
/// products), as a model cast whole to that precision computes it. Cloning shares the
/// device tensors.
#[derive(Clone)]
pub struct ClassifierHead<B: Backend> {
    dense: DeviceLinear<B>,
    out_proj: DeviceLinear<B>,
    plan: ComputePlan,
    device: B::Device,
}

impl<B: Backend> ClassifierHead<B> {
    pub fn new(w: &ClassifierWeights, plan: &ComputePlan, device: &B::Device) -> Self {
        Self {
            dense: DeviceLinear::new(&w.dense, plan, device),
            out_proj: DeviceLinear::new(&w.out_proj, plan, device),
            plan: *plan,
            device: device.clone(),
        }
    }

    /// Logits from BOS states, `tanh` in the plan's dtype.
    ///
    /// # Shapes
    /// `bos: [batch, hidden]` -> `[batch, labels]`
    pub fn forward(&self, bos: Tensor<B, 2>) -> Tensor<B, 2> {
        let [_batch, _hidden] = bos.dims();
        let h = activation::tanh(self.dense.forward(bos.cast(self.plan.dtype())));
        self.out_proj.forward(h)
    }

    /// Logits of host BOS rows (`hidden` values each, as a model under this plan output
    /// them), uploaded in the plan's dtype; one `Vec` of `labels` f32 per row.
    pub fn logits(&self, bos_rows: &[&[f32]]) -> Vec<Vec<f32>> {
        let Some(hidden) = bos_rows.first().map(|r| r.len()) else {
            return Vec::new();
        };
        let data: Vec<f32> = bos_rows.iter().flat_map(|r| r.iter().copied()).collect();
        let bos = Tensor::<B, 2>::from_data(
            TensorData::new(data, [bos_rows.len(), hidden]),
            &self.device,
        );
        let logits = self.forward(bos);
        let labels = logits.dims()[1].max(1);
        to_host(logits)
            .chunks(labels)
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// Softmax of one row of logits in f64 (max-shifted): the class probabilities
/// `EsmForSequenceClassification` users read off the logits.
pub fn class_probabilities(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .map(|&l| l as f64)
        .fold(
            f64::NEG_INFINITY,
            |a, b| if b.is_nan() || b > a { b } else { a },
        );
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one_and_nan_stays_nan() {
        let p = class_probabilities(&[-0.3, 0.4]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[1] > p[0]);
        let p = class_probabilities(&[f32::NAN, 0.4]);
        assert!(p.iter().all(|v| v.is_nan()));
    }
}
