//! Batches: how sequences are laid out for the model (padded rows or one packed stream
//! delimited by `cu_seqlens`), how proteins are grouped into batches under a token budget,
//! and how batches are run and pooled.

pub mod oom;
mod packed;
mod padded;
mod run;

#[cfg(test)]
mod model_tests;

use std::ops::Range;

use crate::model::blocks::ModelInput;

pub use packed::{PackedBatch, Packing, first_fit_decreasing, pack_proteins, packed_batches};
pub use padded::{PaddedBatch, padded_batches, padding_efficiency};
pub use run::{
    Embedded, ForwardTiming, HostStates, LayerStates, batches, embed, forward_only_seconds,
    pool_residues, pooled_batch, run_batch, sequence_states, token_states,
};

/// What a runner needs from a batch of sequences, however it is laid out.
pub trait Batch {
    /// The model input (tokens, token-dropout scales, attention layout).
    fn input(&self) -> &ModelInput;
    /// Number of sequences.
    fn len(&self) -> usize;
    /// Whether the batch holds no sequence.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows of sequence `i` in the output `[tokens, hidden]`, BOS and EOS included.
    fn sequence_rows(&self, i: usize) -> Range<usize>;
    /// The caller's index (e.g. FASTA record number) of sequence `i`.
    fn record(&self, i: usize) -> usize;
}

/// How sequences are laid out in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// One row per sequence, padded to the longest.
    Padded,
    /// Sequences back to back in one token stream (varlen, `cu_seqlens`).
    Packed,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Padded => "padded",
            Layout::Packed => "packed",
        }
    }
}

impl crate::named::Named for Layout {
    const VALUES: &'static [Self] = &[Layout::Padded, Layout::Packed];
    const WHAT: &'static str = "layout";

    fn name(self) -> &'static str {
        Layout::name(self)
    }
}

crate::impl_named!(Layout);

/// A layout and the token budget per batch: padded batches hold at most `budget` padded
/// tokens (batch size x longest), packed ones at most `budget` tokens (first-fit-decreasing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Batching {
    pub layout: Layout,
    pub budget: usize,
}

impl Batching {
    pub fn padded(budget: usize) -> Self {
        Self {
            layout: Layout::Padded,
            budget,
        }
    }

    pub fn packed(budget: usize) -> Self {
        Self {
            layout: Layout::Packed,
            budget,
        }
    }
}
