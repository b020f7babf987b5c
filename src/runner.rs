//! Runs batches through a model and brings the results to the host as f32: per-token states
//! and mean-pooled embeddings. Host-side work is in f64 where it sums.

use std::collections::BTreeMap;

use burn::tensor::{DType, Tensor, backend::Backend};

use crate::batch::Batch;
use crate::model::Esm2;

/// `[tokens, hidden]` states on the host, f32, rows in batch-token order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStates {
    pub hidden: usize,
    pub data: Vec<f32>,
}

impl HostStates {
    /// Copies a device tensor to the host (widening to f32).
    pub fn fetch<B: Backend>(t: Tensor<B, 2>) -> Self {
        let [_, hidden] = t.dims();
        let data = t
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_else(|e| unreachable!("an f32 tensor yields f32 data: {e:?}"));
        Self { hidden, data }
    }

    /// The states of `rows`, `[rows.len() * hidden]`.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> &[f32] {
        &self.data[rows.start * self.hidden..rows.end * self.hidden]
    }

    /// Mean over `rows` (accumulated in f64), `[hidden]`.
    pub fn mean_of_rows(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        let n = rows.len().max(1) as f64;
        let mut acc = vec![0f64; self.hidden];
        for row in self.rows(rows).chunks_exact(self.hidden) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
        acc.into_iter().map(|a| (a / n) as f32).collect()
    }
}

/// Per-layer host states of one batch.
pub type LayerStates = BTreeMap<usize, HostStates>;

/// Runs `batch` and fetches the requested representations.
pub fn run_batch<B: Backend>(
    model: &Esm2<B>,
    batch: &(impl Batch + ?Sized),
    repr_layers: &[usize],
) -> LayerStates {
    model
        .forward(batch.input(), repr_layers)
        .representations
        .into_iter()
        .map(|(layer, t)| (layer, HostStates::fetch(t)))
        .collect()
}

/// The last representation of sequence `i`, BOS and EOS included, `[n + 2, hidden]` flat.
pub fn sequence_states<'a>(
    states: &'a HostStates,
    batch: &(impl Batch + ?Sized),
    i: usize,
) -> &'a [f32] {
    states.rows(batch.sequence_rows(i))
}

/// Mean over the residues of sequence `i` (BOS and EOS excluded), `[hidden]`.
pub fn pooled(states: &HostStates, batch: &(impl Batch + ?Sized), i: usize) -> Vec<f32> {
    let rows = batch.sequence_rows(i);
    states.mean_of_rows(rows.start + 1..rows.end - 1)
}

/// Runs `batch` and returns the pooled last representation of each of its sequences.
pub fn pooled_batch<B: Backend>(model: &Esm2<B>, batch: &(impl Batch + ?Sized)) -> Vec<Vec<f32>> {
    let last = model.config.num_hidden_layers;
    let states = run_batch(model, batch, &[last]);
    let states = &states[&last];
    (0..batch.len()).map(|i| pooled(states, batch, i)).collect()
}
