//! Padded batches: every sequence in its own row of `seq_len` tokens, `<pad>` after its EOS,
//! and the grouping of proteins into padded batches under a token budget.

use std::ops::Range;

use super::Batch;
use crate::alphabet::PAD;
use crate::input::Protein;
use crate::model::blocks::{HostBlocks, ModelInput, token_dropout_scale};

/// Sequences padded to a common length.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    /// Tokens per row (the longest sequence, BOS and EOS included).
    pub seq_len: usize,
    /// Token count of each sequence, BOS and EOS included.
    pub token_lens: Vec<usize>,
    /// Caller's index of each sequence.
    pub records: Vec<usize>,
    input: ModelInput,
}

impl PaddedBatch {
    /// Pads tokenised sequences (each `[<cls>, .., <eos>]`) with the caller's indices.
    pub fn new(sequences: &[(usize, Vec<u32>)], token_dropout: bool) -> Self {
        Self::with_len_multiple(sequences, token_dropout, 1)
    }

    /// Like [`PaddedBatch::new`], with the row length rounded up to a multiple of
    /// `multiple`: fewer distinct shapes for backends that compile and tune per shape.
    pub fn with_len_multiple(
        sequences: &[(usize, Vec<u32>)],
        token_dropout: bool,
        multiple: usize,
    ) -> Self {
        let batch = sequences.len();
        let longest = sequences.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        let seq_len = longest.div_ceil(multiple.max(1)) * multiple.max(1);
        let mut tokens = Vec::with_capacity(batch * seq_len);
        let mut token_scale = Vec::with_capacity(batch * seq_len);
        let mut key_padding = Vec::with_capacity(batch * seq_len);
        for (_, seq) in sequences {
            let pad = seq_len - seq.len();
            tokens.extend_from_slice(seq);
            tokens.extend(std::iter::repeat_n(PAD, pad));
            token_scale.extend(token_dropout_scale(seq, token_dropout));
            token_scale.extend(std::iter::repeat_n(0.0, pad));
            key_padding.extend(std::iter::repeat_n(false, seq.len()));
            key_padding.extend(std::iter::repeat_n(true, pad));
        }
        let layout = HostBlocks::padded(batch, seq_len, key_padding);
        Self {
            seq_len,
            token_lens: sequences.iter().map(|(_, t)| t.len()).collect(),
            records: sequences.iter().map(|(r, _)| *r).collect(),
            input: ModelInput {
                tokens,
                token_scale,
                layout,
            },
        }
    }
}

impl Batch for PaddedBatch {
    fn input(&self) -> &ModelInput {
        &self.input
    }

    fn len(&self) -> usize {
        self.token_lens.len()
    }

    fn sequence_rows(&self, i: usize) -> Range<usize> {
        let start = i * self.seq_len;
        start..start + self.token_lens[i]
    }

    fn record(&self, i: usize) -> usize {
        self.records[i]
    }
}

/// Groups protein indices into padded batches: longest first, each batch's
/// `batch_size * longest` at most `budget` (a longer protein gets a batch of its own).
pub fn padded_batches(proteins: &[Protein], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..proteins.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(proteins[i].token_len()));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_len = 0;
    for i in order {
        let len = proteins[i].token_len();
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
        let lens: Vec<usize> = b.iter().map(|&i| proteins[i].token_len()).collect();
        real += lens.iter().sum::<usize>();
        padded += lens.len() * lens.iter().max().copied().unwrap_or(0);
    }
    real as f64 / padded.max(1) as f64
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
            let longest = b.iter().map(|&i| p[i].token_len()).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= 1024, "{b:?}");
        }
        assert_eq!(batches[0], vec![3], "1024 tokens fill a batch alone");
    }

    #[test]
    fn padding_follows_eos_and_is_masked() {
        let b = PaddedBatch::new(&[(3, vec![0, 5, 2]), (7, vec![0, 5, 6, 7, 2])], true);
        assert_eq!(b.seq_len, 5);
        assert_eq!(b.input().tokens, vec![0, 5, 2, 1, 1, 0, 5, 6, 7, 2]);
        assert_eq!(
            b.input().layout.groups[0].key_padding,
            vec![
                false, false, false, true, true, false, false, false, false, false
            ]
        );
        assert_eq!(b.input().token_scale[3], 0.0);
        assert_eq!(b.input().token_scale[0], 0.88);
        assert_eq!(b.sequence_rows(1), 5..10);
        assert_eq!(b.record(1), 7);
    }
}
