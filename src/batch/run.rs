//! Runs batches through a model and brings the results to the host as f32: per-token states
//! and mean-pooled embeddings (host-side sums in f64), and the embedding pipeline that groups
//! proteins into batches and hands each finished batch's rows to the caller.

use std::collections::BTreeMap;
use std::ops::Range;

use burn::tensor::{DType, Tensor, backend::Backend};

use super::{Batch, Batching, Layout, PackedBatch, PaddedBatch, pack_proteins, padded_batches};
use crate::input::Protein;
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
    pub fn rows(&self, rows: Range<usize>) -> &[f32] {
        &self.data[rows.start * self.hidden..rows.end * self.hidden]
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

/// The states of sequence `i`, BOS and EOS included, `[n + 2, hidden]` flat.
pub fn sequence_states<'a>(
    states: &'a HostStates,
    batch: &(impl Batch + ?Sized),
    i: usize,
) -> &'a [f32] {
    states.rows(batch.sequence_rows(i))
}

/// The pooled embedding: mean over the residues of one sequence's `[n + 2, hidden]` states,
/// BOS and EOS excluded (the convention of HF and fair-esm users who pool residues),
/// accumulated in f64, `[hidden]`.
pub fn pool_residues(states: &[f32], hidden: usize) -> Vec<f32> {
    let rows = states.len() / hidden;
    let residues = if rows > 2 {
        &states[hidden..(rows - 1) * hidden]
    } else {
        &[][..]
    };
    let mut acc = vec![0f64; hidden];
    for row in residues.chunks_exact(hidden) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    let n = rows.saturating_sub(2).max(1) as f64;
    acc.into_iter().map(|a| (a / n) as f32).collect()
}

/// Runs `batch` and returns the pooled last representation of each of its sequences.
pub fn pooled_batch<B: Backend>(model: &Esm2<B>, batch: &(impl Batch + ?Sized)) -> Vec<Vec<f32>> {
    let last = model.config.num_hidden_layers;
    let states = run_batch(model, batch, &[last]);
    let states = &states[&last];
    (0..batch.len())
        .map(|i| pool_residues(sequence_states(states, batch, i), states.hidden))
        .collect()
}

/// The batches of `proteins` under `batching`, built one at a time for `model` (padded rows
/// rounded up to its backend's block multiple, so the model need not regroup them).
pub fn batches<'a, B: Backend>(
    model: &'a Esm2<B>,
    proteins: &'a [Protein],
    batching: Batching,
) -> impl Iterator<Item = Box<dyn Batch>> + 'a {
    let dropout = model.config.token_dropout;
    let groups = match batching.layout {
        Layout::Padded => padded_batches(proteins, batching.budget),
        Layout::Packed => pack_proteins(proteins, batching.budget).bins,
    };
    groups.into_iter().map(move |indices| -> Box<dyn Batch> {
        let seqs: Vec<(usize, Vec<u32>)> =
            indices.iter().map(|&i| (i, proteins[i].tokens())).collect();
        match batching.layout {
            Layout::Padded => Box::new(PaddedBatch::with_len_multiple(
                &seqs,
                dropout,
                model.plan.backend.block_multiple(),
            )),
            Layout::Packed => Box::new(PackedBatch::new(&seqs, dropout)),
        }
    })
}

/// Embeds every protein, calling `on_row(index, pooled)` for each as its batch completes.
/// Returns the number of tokens processed (BOS/EOS included, no padding).
pub fn embed<B: Backend, E>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
    mut on_row: impl FnMut(usize, Vec<f32>) -> Result<(), E>,
) -> Result<usize, E> {
    let mut tokens = 0;
    for batch in batches(model, proteins, batching) {
        for (k, row) in pooled_batch(model, batch.as_ref()).into_iter().enumerate() {
            let i = batch.record(k);
            tokens += proteins[i].token_len();
            on_row(i, row)?;
        }
    }
    Ok(tokens)
}

/// The last-layer token states of every protein, each `[n + 2, hidden]` flat with BOS and
/// EOS, in protein order.
pub fn token_states<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    batching: Batching,
) -> Vec<Vec<f32>> {
    let last = model.config.num_hidden_layers;
    let mut out = vec![Vec::new(); proteins.len()];
    for batch in batches(model, proteins, batching) {
        let states = run_batch(model, batch.as_ref(), &[last]);
        for k in 0..batch.len() {
            out[batch.record(k)] = sequence_states(&states[&last], batch.as_ref(), k).to_vec();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_averages_the_residues_and_skips_bos_and_eos() {
        let states = [9.0, 9.0, 1.0, 2.0, 3.0, 4.0, -9.0, -9.0];
        assert_eq!(pool_residues(&states, 2), vec![2.0, 3.0]);
        assert_eq!(pool_residues(&[1.0, 1.0, 2.0, 2.0], 2), vec![0.0, 0.0]);
    }
}
