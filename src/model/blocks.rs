//! How a token stream maps onto attention blocks. Layers run on `[tokens, hidden]`; attention
//! regroups the tokens into groups of `[batch, block_len]` blocks, one sequence per block,
//! and back. A padded batch is one group already in block order; a packed one gathers its
//! sequences into groups of similar length (see [`crate::batch::PackedBatch`]).

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

/// The host description of a model input: tokens, token-dropout scales and block layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    /// Token ids, `[tokens]`.
    pub tokens: Vec<u32>,
    /// Per-token embedding multiplier after token dropout (0 for `<pad>` and `<mask>`), `[tokens]`.
    pub token_scale: Vec<f32>,
    /// The attention blocks.
    pub layout: HostBlocks,
}

/// Attention blocks on the host: groups of equally long blocks (one sequence per block),
/// attention running once per group, and where each token's output lands.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBlocks {
    /// The block groups, in the order their slots are concatenated.
    pub groups: Vec<BlockGroup>,
    /// For each token, `[tokens]`, its row among the concatenated slots of all groups.
    /// `None` when the stream is already in block order (a padded batch, one group).
    pub scatter: Option<Vec<i64>>,
    /// The packing this layout groups, so a backend can regroup it under its own slot
    /// budget ([`HostBlocks::regrouped`]); `None` for padded batches, fault layouts and
    /// layouts rounded by [`HostBlocks::with_block_multiple`].
    pub packing: Option<GroupedPacking>,
}

/// A packed stream's boundaries and the slot budget its groups were formed under.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedPacking {
    /// `[sequences + 1]`.
    pub cu_seqlens: Vec<i32>,
    /// Slots per attention group.
    pub group_budget: usize,
}

/// Blocks of one length.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockGroup {
    /// Number of blocks (sequences).
    pub batch: usize,
    /// Slots per block: the group's longest sequence, BOS and EOS included.
    pub block_len: usize,
    /// For each slot, `[batch * block_len]`, the token row it reads; `tokens` means an empty
    /// slot (reads a zero row). `None` when the token stream is this group's slots in order.
    pub gather: Option<Vec<i64>>,
    /// `[batch * block_len]`: true where the key is padding and must be masked.
    pub key_padding: Vec<bool>,
    /// RoPE positions, `[position_rows * block_len]`.
    pub positions: Vec<u32>,
    /// 1 when every block uses positions `0..block_len`, else `batch`.
    pub position_rows: usize,
}

impl BlockGroup {
    /// The RoPE position of slot `slot`.
    fn position_of_slot(&self, slot: usize) -> u32 {
        let (block, offset) = (slot / self.block_len, slot % self.block_len);
        let row = if self.position_rows == 1 { 0 } else { block };
        self.positions[row * self.block_len + offset]
    }

    /// The token row slot `slot` reads.
    fn token_of_slot(&self, slot: usize) -> usize {
        match &self.gather {
            Some(g) => g[slot] as usize,
            None => slot,
        }
    }
}

impl HostBlocks {
    /// A padded batch: one group whose slots are the token stream itself.
    pub fn padded(batch: usize, seq_len: usize, key_padding: Vec<bool>) -> Self {
        HostBlocks {
            groups: vec![BlockGroup {
                batch,
                block_len: seq_len,
                gather: None,
                key_padding,
                positions: (0..seq_len as u32).collect(),
                position_rows: 1,
            }],
            scatter: None,
            packing: None,
        }
    }

    /// A packed stream delimited by `cu_seqlens`: sequences sorted longest first and grouped
    /// while `blocks x longest <= group_budget` slots (a longer sequence forms its own group),
    /// so attention work stays close to the sum of squared lengths.
    pub fn packed(cu_seqlens: &[i32], group_budget: usize) -> Self {
        let n_tokens = *cu_seqlens.last().unwrap_or(&0) as usize;
        let len = |b: usize| (cu_seqlens[b + 1] - cu_seqlens[b]) as usize;
        let mut order: Vec<usize> = (0..cu_seqlens.len().saturating_sub(1)).collect();
        order.sort_by_key(|&b| (std::cmp::Reverse(len(b)), b));
        let mut members: Vec<Vec<usize>> = Vec::new();
        for b in order {
            match members.last_mut() {
                Some(group) if (group.len() + 1) * len(group[0]) <= group_budget => group.push(b),
                _ => members.push(vec![b]),
            }
        }
        let mut scatter = vec![0i64; n_tokens];
        let mut base = 0usize;
        let groups = members
            .iter()
            .map(|seqs| {
                let block_len = len(seqs[0]);
                let mut gather = Vec::with_capacity(seqs.len() * block_len);
                let mut key_padding = Vec::with_capacity(seqs.len() * block_len);
                for (k, &b) in seqs.iter().enumerate() {
                    let start = cu_seqlens[b] as usize;
                    for p in 0..block_len {
                        let inside = p < len(b);
                        gather.push(if inside {
                            (start + p) as i64
                        } else {
                            n_tokens as i64
                        });
                        key_padding.push(!inside);
                        if inside {
                            scatter[start + p] = (base + k * block_len + p) as i64;
                        }
                    }
                }
                base += seqs.len() * block_len;
                BlockGroup {
                    batch: seqs.len(),
                    block_len,
                    gather: Some(gather),
                    key_padding,
                    positions: (0..block_len as u32).collect(),
                    position_rows: 1,
                }
            })
            .collect();
        HostBlocks {
            groups,
            scatter: Some(scatter),
            packing: Some(GroupedPacking {
                cu_seqlens: cu_seqlens.to_vec(),
                group_budget,
            }),
        }
    }

    /// The same packing grouped under `group_budget` slots per attention group (a backend
    /// where launches cost more than padded slots wants bigger groups); other layouts are
    /// returned unchanged.
    pub fn regrouped(&self, group_budget: usize) -> HostBlocks {
        match &self.packing {
            Some(p) if p.group_budget != group_budget => {
                HostBlocks::packed(&p.cu_seqlens, group_budget)
            }
            _ => self.clone(),
        }
    }

    /// Whether tokens are gathered into blocks (a packed stream) rather than already in
    /// block order.
    pub fn is_packed(&self) -> bool {
        self.scatter.is_some()
    }

    /// The same attention with every group's `block_len` rounded up to a multiple of
    /// `multiple`: the added slots of each block are empty (they read the zero row past the
    /// `n_tokens` stream rows and are masked as keys), so results are unchanged while
    /// backends that compile and autotune kernels per shape see far fewer shapes.
    /// Returns `self` unchanged when every group is already aligned.
    pub fn with_block_multiple(&self, n_tokens: usize, multiple: usize) -> HostBlocks {
        let multiple = multiple.max(1);
        if self.groups.iter().all(|g| g.block_len % multiple == 0) {
            return self.clone();
        }
        // Old global slot index -> new global slot index, group by group.
        let mut slot_map: Vec<i64> = Vec::new();
        let mut new_base = 0usize;
        let groups: Vec<BlockGroup> = self
            .groups
            .iter()
            .map(|g| {
                let new_len = g.block_len.div_ceil(multiple) * multiple;
                let extra = new_len - g.block_len;
                let mut gather = Vec::with_capacity(g.batch * new_len);
                let mut key_padding = Vec::with_capacity(g.batch * new_len);
                let mut positions = Vec::with_capacity(g.position_rows * new_len);
                for block in 0..g.batch {
                    for offset in 0..g.block_len {
                        let slot = block * g.block_len + offset;
                        gather.push(g.token_of_slot(slot) as i64);
                        key_padding.push(g.key_padding[slot]);
                        slot_map.push((new_base + block * new_len + offset) as i64);
                    }
                    gather.extend(std::iter::repeat_n(n_tokens as i64, extra));
                    key_padding.extend(std::iter::repeat_n(true, extra));
                }
                for row in 0..g.position_rows {
                    let old = &g.positions[row * g.block_len..(row + 1) * g.block_len];
                    positions.extend_from_slice(old);
                    // Masked slots: any position will do; continue the row's own sequence.
                    let next = old.last().map_or(0, |&p| p + 1);
                    positions.extend((0..extra as u32).map(|i| next + i));
                }
                new_base += g.batch * new_len;
                BlockGroup {
                    batch: g.batch,
                    block_len: new_len,
                    gather: Some(gather),
                    key_padding,
                    positions,
                    position_rows: g.position_rows,
                }
            })
            .collect();
        let scatter = match &self.scatter {
            Some(s) => s.iter().map(|&old| slot_map[old as usize]).collect(),
            // Block order: token `t` is old slot `t`.
            None => slot_map[..n_tokens].to_vec(),
        };
        HostBlocks {
            groups,
            scatter: Some(scatter),
            // The groups are no longer those `HostBlocks::packed` forms, so regrouping this
            // layout would silently drop the rounding.
            packing: None,
        }
    }

    /// Fault: all `n_tokens` tokens in one unmasked block, so attention crosses sequences
    /// (RoPE positions still restart per sequence).
    pub fn as_single_block(&self, n_tokens: usize) -> HostBlocks {
        let mut positions = vec![0u32; n_tokens];
        for g in &self.groups {
            for slot in 0..g.batch * g.block_len {
                let token = g.token_of_slot(slot);
                if token < n_tokens && !g.key_padding[slot] {
                    positions[token] = g.position_of_slot(slot);
                }
            }
        }
        let identity: Vec<i64> = (0..n_tokens as i64).collect();
        HostBlocks {
            groups: vec![BlockGroup {
                batch: 1,
                block_len: n_tokens,
                gather: Some(identity.clone()),
                key_padding: vec![false; n_tokens],
                positions,
                position_rows: 1,
            }],
            scatter: Some(identity),
            packing: None,
        }
    }

    /// Fault: RoPE positions run on across the packed stream (each slot gets the stream index
    /// of the token it reads) instead of restarting at 0 for every sequence.
    pub fn with_stream_positions(&self, n_tokens: usize) -> HostBlocks {
        let groups = self
            .groups
            .iter()
            .map(|g| BlockGroup {
                positions: (0..g.batch * g.block_len)
                    .map(|slot| {
                        let token = g.token_of_slot(slot);
                        if token < n_tokens { token as u32 } else { 0 }
                    })
                    .collect(),
                position_rows: g.batch,
                ..g.clone()
            })
            .collect();
        HostBlocks {
            groups,
            scatter: self.scatter.clone(),
            packing: None,
        }
    }
}

/// [`BlockGroup`] on the device.
pub struct DeviceGroup<B: Backend> {
    pub batch: usize,
    pub block_len: usize,
    /// `[batch * block_len]`, rows of the token stream extended by one zero row.
    pub gather: Option<Tensor<B, 1, Int>>,
    /// `[batch, 1, 1, block_len]`.
    pub key_padding: Tensor<B, 4, Bool>,
}

/// [`HostBlocks`] on the device.
pub struct DeviceBlocks<B: Backend> {
    pub groups: Vec<DeviceGroup<B>>,
    /// `[tokens]`.
    pub scatter: Option<Tensor<B, 1, Int>>,
}

fn int_tensor<B: Backend>(v: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::<B, 1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

impl<B: Backend> DeviceBlocks<B> {
    pub fn new(host: &HostBlocks, device: &B::Device) -> Self {
        let groups = host
            .groups
            .iter()
            .map(|g| DeviceGroup {
                batch: g.batch,
                block_len: g.block_len,
                gather: g.gather.as_deref().map(|v| int_tensor::<B>(v, device)),
                key_padding: Tensor::<B, 4, Bool>::from_data(
                    TensorData::new(g.key_padding.clone(), [g.batch, 1, 1, g.block_len]),
                    device,
                ),
            })
            .collect();
        Self {
            groups,
            scatter: host.scatter.as_deref().map(|v| int_tensor::<B>(v, device)),
        }
    }

    /// The token stream with one zero row appended, for gathers that read empty slots;
    /// unchanged when no group gathers.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]` -> `[tokens + 1, hidden]` (or `[tokens, hidden]`)
    pub fn extend_for_gather(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if self.groups.iter().all(|g| g.gather.is_none()) {
            return x;
        }
        let [_, hidden] = x.dims();
        let zero = Tensor::<B, 2>::zeros([1, hidden], &x.device()).cast(x.dtype());
        Tensor::cat(vec![x, zero], 0)
    }

    /// Concatenated group outputs back to token rows.
    ///
    /// # Shapes
    /// `x: [slots, hidden]` -> `[tokens, hidden]`
    pub fn from_blocks(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.scatter {
            None => x,
            Some(index) => x.select(0, index.clone()),
        }
    }
}

impl<B: Backend> DeviceGroup<B> {
    /// This group's block slots from the (extended) token stream.
    ///
    /// # Shapes
    /// `x: [tokens (+ 1), hidden]` -> `[batch * block_len, hidden]`
    pub fn to_blocks(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.gather {
            None => x,
            Some(index) => x.select(0, index.clone()),
        }
    }
}

/// Token-dropout multipliers of one sequence (fair-esm `ESM2.forward`): `<mask>` rows are
/// zeroed and the rest scaled by `(1 - 0.12) / (1 - n_mask / n_tokens)`, where `n_tokens`
/// counts BOS and EOS. With token dropout off every multiplier is 1.
pub fn token_dropout_scale(tokens: &[u32], token_dropout: bool) -> Vec<f32> {
    use crate::alphabet::MASK;
    if !token_dropout {
        return vec![1.0; tokens.len()];
    }
    const MASK_RATIO_TRAIN: f64 = 0.15 * 0.8;
    let n_mask = tokens.iter().filter(|&&t| t == MASK).count();
    let observed = n_mask as f64 / tokens.len() as f64;
    let scale = ((1.0 - MASK_RATIO_TRAIN) / (1.0 - observed)) as f32;
    tokens
        .iter()
        .map(|&t| if t == MASK { 0.0 } else { scale })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For each token: its RoPE position and the tokens it attends to, as attention sees them.
    fn attended(layout: &HostBlocks, n_tokens: usize) -> Vec<(u32, Vec<usize>)> {
        let slots: Vec<(&BlockGroup, usize)> = layout
            .groups
            .iter()
            .flat_map(|g| (0..g.batch * g.block_len).map(move |slot| (g, slot)))
            .collect();
        (0..n_tokens)
            .map(|t| {
                let global = layout.scatter.as_ref().map_or(t, |s| s[t] as usize);
                let (g, slot) = slots[global];
                assert_eq!(
                    g.token_of_slot(slot),
                    t,
                    "token {t} reads back from its slot"
                );
                let first = slot / g.block_len * g.block_len;
                let keys = (first..first + g.block_len)
                    .filter(|&s| !g.key_padding[s])
                    .map(|s| g.token_of_slot(s))
                    .collect();
                (g.position_of_slot(slot), keys)
            })
            .collect()
    }

    #[test]
    fn block_multiple_keeps_every_token_its_position_and_its_keys() {
        let packed = HostBlocks::packed(&[0, 3, 10, 12, 17], 16);
        let bucketed = packed.with_block_multiple(17, 8);
        assert!(bucketed.groups.iter().all(|g| g.block_len % 8 == 0));
        assert_eq!(attended(&packed, 17), attended(&bucketed, 17));

        let key_padding = [vec![false; 3], vec![true; 2], vec![false; 5]].concat();
        let padded = HostBlocks::padded(2, 5, key_padding);
        let bucketed = padded.with_block_multiple(10, 4);
        assert_eq!(bucketed.groups[0].block_len, 8);
        assert_eq!(
            bucketed.groups[0].gather.as_ref().unwrap()[5..8],
            [10, 10, 10]
        );
        assert_eq!(attended(&padded, 10), attended(&bucketed, 10));

        let faulty = packed.with_stream_positions(17);
        assert_eq!(
            attended(&faulty, 17),
            attended(&faulty.with_block_multiple(17, 8), 17)
        );
        assert_eq!(packed.with_block_multiple(17, 1), packed);
    }

    #[test]
    fn regrouping_changes_the_groups_but_not_what_attention_sees() {
        let cu = [0, 3, 10, 12, 17, 30];
        let small = HostBlocks::packed(&cu, 16);
        for budget in [0, 13, 64, 4096] {
            let other = small.regrouped(budget);
            assert_eq!(other, HostBlocks::packed(&cu, budget));
            assert_eq!(
                attended(&small, 30),
                attended(&other, 30),
                "budget {budget}"
            );
        }
        assert_eq!(small.groups.len(), 3);
        assert_eq!(small.regrouped(4096).groups.len(), 1);
        let padded = HostBlocks::padded(1, 4, vec![false; 4]);
        assert_eq!(padded.regrouped(1), padded);
    }

    #[test]
    fn token_dropout_without_masks_is_0_88() {
        assert_eq!(token_dropout_scale(&[0, 4, 5, 2], true), vec![0.88; 4]);
    }

    #[test]
    fn token_dropout_zeroes_masks_and_rescales_the_rest() {
        let s = token_dropout_scale(&[0, 32, 5, 2], true);
        let expected = (0.88 / (1.0 - 0.25)) as f32;
        assert_eq!(s, vec![expected, 0.0, expected, expected]);
    }
}
