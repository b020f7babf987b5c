//! Packed (varlen) batches: sequences back to back in one token stream delimited by
//! `cu_seqlens`, and a first-fit-decreasing packer under a token budget.
//!
//! The model runs its linear layers and FFN on the `[tokens, hidden]` stream with no padding
//! work. Attention gathers the sequences, longest first, into groups of padded blocks
//! (`[blocks, block_len]`, empty slots read a zero row and are masked as keys; a group holds
//! at most [`ATTENTION_GROUP_SLOTS`] slots or one sequence as built; the model regroups
//! under its backend's own budget, 1024 on the CPU, 4096 on CUDA) and runs once per group.
//! Its cost
//! is `O(sum_g blocks_g * heads * block_len_g^2)` time and, for one group at a time,
//! `O(blocks_g * heads * block_len_g^2)` memory for the scores plus
//! `O(slots * hidden)` for the gathered q, k, v; with `T` tokens and `max_seqlen` the longest,
//! that is at most `O(heads * T * max_seqlen)` time and `O(heads * max(1024, max_seqlen) *
//! max_seqlen)` memory. No dense `T x T` mask is ever built. RoPE positions restart at 0 in
//! every block.

use std::ops::Range;

use super::Batch;
use crate::input::Protein;
use crate::model::blocks::{HostBlocks, ModelInput, token_dropout_scale};

/// Slots per attention group inside a packed batch as built: sequences of similar length are
/// padded into blocks together while `blocks x longest` stays within this. The model
/// regroups under its backend's own budget (`BackendKind::attention_group_slots`).
pub const ATTENTION_GROUP_SLOTS: usize = crate::backend::CPU_ATTENTION_GROUP_SLOTS;

/// One packed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedBatch {
    /// Sequence boundaries in the token stream, `[batch + 1]`, starting at 0, strictly
    /// increasing.
    pub cu_seqlens: Vec<i32>,
    /// The longest sequence, BOS and EOS included.
    pub max_seqlen: usize,
    /// Caller's index of each sequence.
    pub records: Vec<usize>,
    input: ModelInput,
}

impl PackedBatch {
    /// Packs tokenised sequences (each `[<cls>, .., <eos>]`, non-empty) in the given order.
    pub fn new(sequences: &[(usize, Vec<u32>)], token_dropout: bool) -> Self {
        let batch = sequences.len();
        let mut cu_seqlens = Vec::with_capacity(batch + 1);
        cu_seqlens.push(0i32);
        let mut tokens = Vec::new();
        let mut token_scale = Vec::new();
        for (_, seq) in sequences {
            tokens.extend_from_slice(seq);
            token_scale.extend(token_dropout_scale(seq, token_dropout));
            cu_seqlens.push(tokens.len() as i32);
        }
        let max_seqlen = sequences.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
        let layout = HostBlocks::packed(&cu_seqlens, ATTENTION_GROUP_SLOTS);
        Self {
            cu_seqlens,
            max_seqlen,
            records: sequences.iter().map(|(r, _)| *r).collect(),
            input: ModelInput {
                tokens,
                token_scale,
                layout,
            },
        }
    }

    /// Packs the given proteins, in the given order.
    pub fn from_proteins(proteins: &[Protein], indices: &[usize], token_dropout: bool) -> Self {
        let seqs: Vec<(usize, Vec<u32>)> =
            indices.iter().map(|&i| (i, proteins[i].tokens())).collect();
        Self::new(&seqs, token_dropout)
    }
}

impl Batch for PackedBatch {
    fn input(&self) -> &ModelInput {
        &self.input
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn sequence_rows(&self, i: usize) -> Range<usize> {
        self.cu_seqlens[i] as usize..self.cu_seqlens[i + 1] as usize
    }

    fn record(&self, i: usize) -> usize {
        self.records[i]
    }
}

/// The result of packing: which sequences go in which batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Packing {
    /// Token budget per batch.
    pub budget: usize,
    /// Indices of the sequences in each batch, in packing order.
    pub bins: Vec<Vec<usize>>,
    /// Tokens in each batch.
    pub bin_tokens: Vec<usize>,
}

impl Packing {
    /// Tokens packed / (batches x budget); a batch over budget counts as its own size.
    pub fn efficiency(&self) -> f64 {
        let used: usize = self.bin_tokens.iter().sum();
        let capacity: usize = self.bin_tokens.iter().map(|&t| t.max(self.budget)).sum();
        if capacity == 0 {
            return 1.0;
        }
        used as f64 / capacity as f64
    }

    /// Tokens / capacity over every batch but the least filled one: the fill of the batches
    /// a stream keeps producing (any packer leaves one partial batch at the end).
    pub fn full_batch_efficiency(&self) -> f64 {
        if self.bin_tokens.len() < 2 {
            return 1.0;
        }
        let mut fills = self.bin_tokens.clone();
        fills.sort_unstable();
        let kept = &fills[1..];
        let used: usize = kept.iter().sum();
        let capacity: usize = kept.iter().map(|&t| t.max(self.budget)).sum();
        used as f64 / capacity as f64
    }

    /// The fewest batches any packer could use: `ceil(tokens / budget)`, counting each
    /// over-budget sequence as a batch of its own.
    pub fn lower_bound_batches(costs: &[usize], budget: usize) -> usize {
        let (over, fits): (Vec<usize>, Vec<usize>) = costs.iter().partition(|&&c| c > budget);
        over.len() + fits.iter().sum::<usize>().div_ceil(budget)
    }
}

/// First-fit-decreasing: sequences sorted by cost (tokens with BOS and EOS; ties by index, so the
/// result is deterministic), each placed in the first batch with room, else a new one. A
/// sequence costlier than the budget gets a batch of its own. Nothing is split or dropped.
pub fn first_fit_decreasing(costs: &[usize], budget: usize) -> Packing {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(costs[i]), i));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut bin_tokens: Vec<usize> = Vec::new();
    for i in order {
        let cost = costs[i];
        match bin_tokens.iter().position(|&used| used + cost <= budget) {
            Some(b) => {
                bins[b].push(i);
                bin_tokens[b] += cost;
            }
            None => {
                bins.push(vec![i]);
                bin_tokens.push(cost);
            }
        }
    }
    Packing {
        budget,
        bins,
        bin_tokens,
    }
}

/// Packs proteins (already truncated by normalisation) under `budget` tokens per batch.
pub fn pack_proteins(proteins: &[Protein], budget: usize) -> Packing {
    let costs: Vec<usize> = proteins.iter().map(Protein::token_len).collect();
    first_fit_decreasing(&costs, budget)
}

/// The packed batches of `proteins` under `budget`, built one at a time in the order they run:
/// the bins of [`pack_proteins`], each holding its sequences in packing order. The one
/// definition of a packed pass: `embed` runs these and `bench --batches-out` writes them.
pub fn packed_batches(
    proteins: &[Protein],
    budget: usize,
    token_dropout: bool,
) -> impl Iterator<Item = PackedBatch> + '_ {
    pack_proteins(proteins, budget)
        .bins
        .into_iter()
        .map(move |bin| PackedBatch::from_proteins(proteins, &bin, token_dropout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Protein;

    #[test]
    fn packed_layout_gathers_each_sequence_into_its_block() {
        let b = PackedBatch::new(&[(0, vec![0, 5, 2]), (1, vec![0, 5, 6, 7, 2])], true);
        assert_eq!(b.cu_seqlens, vec![0, 3, 8]);
        assert_eq!(b.max_seqlen, 5);
        let l = &b.input().layout;
        // One group, longest first: block 0 is sequence 1, block 1 is sequence 0.
        assert_eq!(l.groups.len(), 1);
        let g = &l.groups[0];
        assert_eq!(
            g.gather.as_ref().unwrap(),
            &vec![3, 4, 5, 6, 7, 0, 1, 2, 8, 8]
        );
        assert_eq!(l.scatter.as_ref().unwrap(), &vec![5, 6, 7, 0, 1, 2, 3, 4]);
        assert_eq!(g.key_padding[8..10], [true, true]);
        assert_eq!(b.sequence_rows(1), 3..8);
    }

    #[test]
    fn long_sequences_get_their_own_attention_group() {
        let short = vec![0u32; 10];
        let long = vec![0u32; 700];
        let b = PackedBatch::new(
            &[(0, short.clone()), (1, long.clone()), (2, long), (3, short)],
            true,
        );
        let groups = &b.input().layout.groups;
        assert_eq!(
            groups
                .iter()
                .map(|g| (g.batch, g.block_len))
                .collect::<Vec<_>>(),
            vec![(1, 700), (1, 700), (2, 10)]
        );
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn packing_respects_the_budget_and_keeps_every_sequence_once(
            costs in proptest::collection::vec(3usize..1100, 0..60),
            budget in 64usize..5000,
        ) {
            let p = first_fit_decreasing(&costs, budget);
            let mut seen: Vec<usize> = p.bins.concat();
            seen.sort();
            prop_assert_eq!(seen, (0..costs.len()).collect::<Vec<_>>());
            for (bin, &tokens) in p.bins.iter().zip(&p.bin_tokens) {
                prop_assert_eq!(tokens, bin.iter().map(|&i| costs[i]).sum::<usize>());
                prop_assert!(tokens <= budget || bin.len() == 1, "bin {:?} holds {} > {}", bin, tokens, budget);
            }
            prop_assert!(p.efficiency() <= 1.0);
        }

        #[test]
        fn packing_is_deterministic_and_independent_of_input_order(
            costs in proptest::collection::vec(3usize..600, 1..40),
            rotation in 0usize..40,
        ) {
            let budget = 1024;
            let p = first_fit_decreasing(&costs, budget);
            prop_assert_eq!(&p, &first_fit_decreasing(&costs, budget));
            // The same sequences in another order pack into bins of the same costs.
            let k = rotation % costs.len();
            let rotated: Vec<usize> = costs[k..].iter().chain(&costs[..k]).copied().collect();
            let q = first_fit_decreasing(&rotated, budget);
            let shape = |p: &Packing, c: &[usize]| -> Vec<Vec<usize>> {
                p.bins.iter().map(|b| b.iter().map(|&i| c[i]).collect()).collect()
            };
            prop_assert_eq!(shape(&p, &costs), shape(&q, &rotated));
        }
    }

    #[test]
    fn empty_input_packs_into_nothing() {
        let p = first_fit_decreasing(&[], 4096);
        assert!(p.bins.is_empty());
        assert_eq!(p.efficiency(), 1.0);
    }

    #[test]
    fn a_single_sequence_gets_one_batch() {
        let p = first_fit_decreasing(&[100], 4096);
        assert_eq!(p.bins, vec![vec![0]]);
    }

    #[test]
    fn a_sequence_longer_than_the_budget_gets_a_batch_of_its_own() {
        let p = first_fit_decreasing(&[10, 5000, 20], 4096);
        assert_eq!(p.bins, vec![vec![1], vec![2, 0]]);
        assert_eq!(p.bin_tokens, vec![5000, 30]);
    }

    #[test]
    fn over_length_proteins_are_packed_truncated() {
        let long = Protein::from_letters("long", &"A".repeat(1500));
        let p = pack_proteins(&[long], 4096);
        assert_eq!(p.bin_tokens, vec![1024]);
    }

    #[test]
    fn ffd_fills_first_fitting_bin() {
        let p = first_fit_decreasing(&[6, 5, 4, 3, 2], 10);
        assert_eq!(p.bins, vec![vec![0, 2], vec![1, 3, 4]]);
        assert_eq!(p.bin_tokens, vec![10, 10]);
        assert_eq!(p.efficiency(), 1.0);
    }
}
