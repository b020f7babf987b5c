//! Padded batches: every sequence in its own row of `seq_len` tokens, `<pad>` after its EOS.
//! [`Batch`] is what the model runners need from any batch, padded or packed.

use std::ops::Range;

use crate::alphabet::PAD;
use crate::model::layout::{HostLayout, ModelInput, token_dropout_scale};

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
        let layout = HostLayout::padded(batch, seq_len, key_padding);
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

#[cfg(test)]
mod tests {
    use super::*;

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
