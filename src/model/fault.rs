//! Fault injection: deliberate defects that the properties must catch. Each switch breaks one
//! thing the harness guards, so tests (and the CLI) can show that a property can fail.
//!
//! A [`FaultSet`] is part of the model it was built with; [`FaultSet::none`] is the default.

use std::fmt;

use super::weights::EsmWeights;

/// The deliberate defects a model can carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct FaultSet {
    /// Packed input: RoPE positions run on across the packed stream instead of restarting
    /// at 0 for every sequence.
    pub rope_not_restarted: bool,
    /// Packed input: attention sees every token of the packed stream, across sequences.
    pub attention_leaks_across_sequences: bool,
    /// Softmax and LayerNorm statistics in the storage dtype, softmax without max-shift
    /// (overflows in f16 once a score exceeds ~11).
    pub unshifted_half_statistics: bool,
    /// One layer's softmax (0-based layer index) without max-shift, in the storage dtype:
    /// the unshifted fault limited to one place, which FP32 there repairs.
    pub unshifted_softmax_in_layer: Option<usize>,
    /// Multiply one layer's output (0-based layer index) by a factor.
    pub scale_layer_output: Option<(usize, f32)>,
    /// Perturb one layer's weights (0-based layer index) by a relative amount: every weight
    /// w becomes w * (1 + eps * s) with a fixed pseudo-random sign s.
    pub perturb_layer_weights: Option<(usize, f32)>,
    /// Multiply one layer's attention logits (0-based layer index) by a factor: its query
    /// projection (weight and bias) is scaled, so `q k^T` is, whatever the attention kernel.
    pub scale_attention_logits: Option<(usize, f32)>,
    /// Round one layer's output (0-based layer index) to f16 and back: one intermediate
    /// computed in half precision within an otherwise wider model.
    pub round_layer_output_to_f16: Option<usize>,
    /// One weight of one layer's FFN (0-based layer index) is NaN, as in a corrupted
    /// checkpoint loaded with `--allow-nonfinite-weights`.
    pub nan_weight: Option<usize>,
    /// One attention head (layer, head; 0-based) contributes nothing.
    pub zeroed_attention_head: Option<(usize, usize)>,
    /// The device holds batches of at most this many tokens: a larger one panics with an
    /// out-of-memory message, as burn-cuda does when an allocation fails (to exercise the
    /// budget back-off without a GPU).
    pub device_memory_tokens: Option<usize>,
}

impl FaultSet {
    /// No fault: the faithful model.
    pub fn none() -> Self {
        Self::default()
    }

    /// Both sets' faults; where both set one switch, `other`'s value.
    pub fn with(self, other: FaultSet) -> Self {
        let FaultSet {
            rope_not_restarted,
            attention_leaks_across_sequences,
            unshifted_half_statistics,
            unshifted_softmax_in_layer,
            scale_layer_output,
            perturb_layer_weights,
            scale_attention_logits,
            round_layer_output_to_f16,
            nan_weight,
            zeroed_attention_head,
            device_memory_tokens,
        } = other;
        Self {
            rope_not_restarted: rope_not_restarted || self.rope_not_restarted,
            attention_leaks_across_sequences: attention_leaks_across_sequences
                || self.attention_leaks_across_sequences,
            unshifted_half_statistics: unshifted_half_statistics || self.unshifted_half_statistics,
            unshifted_softmax_in_layer: unshifted_softmax_in_layer
                .or(self.unshifted_softmax_in_layer),
            scale_layer_output: scale_layer_output.or(self.scale_layer_output),
            perturb_layer_weights: perturb_layer_weights.or(self.perturb_layer_weights),
            scale_attention_logits: scale_attention_logits.or(self.scale_attention_logits),
            round_layer_output_to_f16: round_layer_output_to_f16.or(self.round_layer_output_to_f16),
            nan_weight: nan_weight.or(self.nan_weight),
            zeroed_attention_head: zeroed_attention_head.or(self.zeroed_attention_head),
            device_memory_tokens: device_memory_tokens.or(self.device_memory_tokens),
        }
    }

    /// Whether a fault changes the weights themselves.
    pub fn changes_weights(&self) -> bool {
        self.perturb_layer_weights.is_some()
            || self.scale_attention_logits.is_some()
            || self.nan_weight.is_some()
            || self.zeroed_attention_head.is_some()
    }

    /// `weights` with this set's weight faults applied.
    pub fn apply_to(&self, weights: &EsmWeights) -> EsmWeights {
        let mut w = weights.clone();
        if let Some((layer, eps)) = self.perturb_layer_weights {
            w.perturb_layer(layer, eps);
        }
        if let Some((layer, factor)) = self.scale_attention_logits {
            w.scale_queries(layer, factor);
        }
        if let Some(layer) = self.nan_weight {
            w.poison_layer(layer);
        }
        if let Some((layer, head)) = self.zeroed_attention_head {
            w.zero_attention_head(layer, head);
        }
        w
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.rope_not_restarted {
            parts.push("rope-not-restarted".to_string());
        }
        if self.attention_leaks_across_sequences {
            parts.push("attention-leak".to_string());
        }
        if self.unshifted_half_statistics {
            parts.push("unshifted-half-statistics".to_string());
        }
        if let Some(layer) = self.unshifted_softmax_in_layer {
            parts.push(format!("unshifted-softmax(layer {layer})"));
        }
        if let Some((layer, factor)) = self.scale_layer_output {
            parts.push(format!("scale-layer-output(layer {layer}, x{factor})"));
        }
        if let Some((layer, eps)) = self.perturb_layer_weights {
            parts.push(format!("perturb-layer-weights(layer {layer}, eps {eps})"));
        }
        if let Some((layer, factor)) = self.scale_attention_logits {
            parts.push(format!("scale-attention-logits(layer {layer}, x{factor})"));
        }
        if let Some(layer) = self.round_layer_output_to_f16 {
            parts.push(format!("round-layer-output-to-f16(layer {layer})"));
        }
        if let Some(layer) = self.nan_weight {
            parts.push(format!("nan-weight(layer {layer})"));
        }
        if let Some((layer, head)) = self.zeroed_attention_head {
            parts.push(format!("zeroed-attention-head(layer {layer}, head {head})"));
        }
        if let Some(tokens) = self.device_memory_tokens {
            parts.push(format!("device-memory({tokens} tokens)"));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_keeps_every_fault_of_both_sets() {
        let a = FaultSet {
            attention_leaks_across_sequences: true,
            scale_layer_output: Some((1, 1.1)),
            ..FaultSet::none()
        };
        let b = FaultSet {
            perturb_layer_weights: Some((2, 0.01)),
            scale_layer_output: Some((3, 1.2)),
            ..FaultSet::none()
        };
        let both = a.with(b);
        assert!(both.attention_leaks_across_sequences);
        assert_eq!(both.perturb_layer_weights, Some((2, 0.01)));
        assert_eq!(
            both.scale_layer_output,
            Some((3, 1.2)),
            "the later set wins"
        );
    }
}
