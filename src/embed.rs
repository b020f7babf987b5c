//! The embedding pipeline: groups proteins into batches under a token budget, runs them and
//! hands each finished batch's pooled rows to the caller (who writes them at once, so
//! nothing is lost if a long run stops).

use burn::tensor::backend::Backend;

use crate::batch::{Batch, PaddedBatch};
use crate::input::Protein;
use crate::model::Esm2;
use crate::pack::{PackedBatch, pack_proteins};
use crate::runner;

/// Default tokens per batch (padded or packed) on the CPU. Padded, 8M model, 2 cores, 40
/// corpus records: 1024 gave 991 tokens/s, 2048 gave 862 (mimalloc); 4096 and 8192 gave 620
/// and 416 (glibc malloc): big batches churn memory faster than the extra width pays.
pub const DEFAULT_CPU_BUDGET: usize = 1024;
/// Default tokens per batch on CUDA, where larger batches keep the GPU busy.
pub const DEFAULT_CUDA_BUDGET: usize = 16384;

/// The default budget for a backend.
pub fn default_budget(backend: crate::model::BackendKind) -> usize {
    match backend {
        crate::model::BackendKind::Cpu => DEFAULT_CPU_BUDGET,
        crate::model::BackendKind::Cuda => DEFAULT_CUDA_BUDGET,
    }
}

/// Groups protein indices into padded batches: longest first, each batch's
/// `batch_size * longest` at most `budget` (a longer protein gets a batch of its own).
pub fn padded_batches(proteins: &[Protein], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..proteins.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(proteins[i].residues.len()));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_len = 0;
    for i in order {
        let len = proteins[i].residues.len() + 2;
        let longest = current_len.max(len);
        if !current.is_empty() && (current.len() + 1) * longest > budget {
            batches.push(std::mem::take(&mut current));
            current_len = 0;
        }
        current_len = current_len.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Real tokens / padded tokens over the padded batches of `budget`.
pub fn padding_efficiency(proteins: &[Protein], budget: usize) -> f64 {
    let (mut real, mut padded) = (0usize, 0usize);
    for b in padded_batches(proteins, budget) {
        let lens: Vec<usize> = b.iter().map(|&i| proteins[i].residues.len() + 2).collect();
        real += lens.iter().sum::<usize>();
        padded += lens.len() * lens.iter().max().copied().unwrap_or(0);
    }
    real as f64 / padded.max(1) as f64
}

/// Builds the padded batch of `indices` for `model`, rows rounded up to the plan's
/// [`crate::model::precision::ComputePlan::block_multiple`] (so the model need not regroup them).
pub fn padded_batch<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    indices: &[usize],
) -> PaddedBatch {
    let seqs: Vec<(usize, Vec<u32>)> = indices.iter().map(|&i| (i, proteins[i].tokens())).collect();
    PaddedBatch::with_len_multiple(
        &seqs,
        model.config.token_dropout,
        model.plan.block_multiple(),
    )
}

/// How `embed` lays sequences out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Padded batches of at most `budget` padded tokens.
    Padded { budget: usize },
    /// Packed batches of at most `budget` tokens (first-fit-decreasing).
    Packed { budget: usize },
}

/// Embeds every protein, calling `on_row(index, pooled)` for each as its batch completes.
/// Returns the number of tokens processed (BOS/EOS included, no padding).
pub fn embed<B: Backend, E>(
    model: &Esm2<B>,
    proteins: &[Protein],
    layout: Layout,
    mut on_row: impl FnMut(usize, Vec<f32>) -> Result<(), E>,
) -> Result<usize, E> {
    let dropout = model.config.token_dropout;
    let mut tokens = 0;
    let mut run = |batch: &dyn Batch| -> Result<(), E> {
        for (k, row) in runner::pooled_batch(model, batch).into_iter().enumerate() {
            let i = batch.record(k);
            tokens += proteins[i].residues.len() + 2;
            on_row(i, row)?;
        }
        Ok(())
    };
    match layout {
        Layout::Padded { budget } => {
            for indices in padded_batches(proteins, budget) {
                run(&padded_batch(model, proteins, &indices))?;
            }
        }
        Layout::Packed { budget } => {
            for indices in pack_proteins(proteins, budget).bins {
                run(&PackedBatch::from_proteins(proteins, &indices, dropout))?;
            }
        }
    }
    Ok(tokens)
}

/// The last-layer token states of every protein, each `[n + 2, hidden]` flat with BOS and
/// EOS, in protein order.
pub fn token_states<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    layout: Layout,
) -> Vec<Vec<f32>> {
    let last = model.config.num_hidden_layers;
    let mut out = vec![Vec::new(); proteins.len()];
    let mut collect = |batch: &dyn Batch| {
        let states = runner::run_batch(model, batch, &[last]);
        for k in 0..batch.len() {
            out[batch.record(k)] = runner::sequence_states(&states[&last], batch, k).to_vec();
        }
    };
    match layout {
        Layout::Padded { budget } => {
            for indices in padded_batches(proteins, budget) {
                collect(&padded_batch(model, proteins, &indices));
            }
        }
        Layout::Packed { budget } => {
            for indices in pack_proteins(proteins, budget).bins {
                collect(&PackedBatch::from_proteins(
                    proteins,
                    &indices,
                    model.config.token_dropout,
                ));
            }
        }
    }
    out
}

/// [`token_states`] with padded batches of `budget` tokens.
pub fn token_states_padded<B: Backend>(
    model: &Esm2<B>,
    proteins: &[Protein],
    budget: usize,
) -> Vec<Vec<f32>> {
    token_states(model, proteins, Layout::Padded { budget })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proteins(lens: &[usize]) -> Vec<Protein> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| Protein::from_letters(&format!("p{i}"), &"A".repeat(n)))
            .collect()
    }

    #[test]
    fn padded_batches_respect_the_budget_and_keep_every_protein() {
        let p = proteins(&[10, 300, 48, 1022, 5, 90]);
        let batches = padded_batches(&p, 1024);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| p[i].residues.len() + 2).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= 1024, "{b:?}");
        }
        assert_eq!(batches[0], vec![3], "1024 tokens fill a batch alone");
    }
}
