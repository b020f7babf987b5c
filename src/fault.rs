//! Fault injection: deliberate defects that the properties must catch. Each switch breaks one
//! thing the harness guards, so tests (and the CLI) can show that a property can fail.
//!
//! A [`FaultSet`] is part of the model it was built with; [`FaultSet::none`] is the default.

use std::fmt;

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
    /// Multiply one layer's output (0-based layer index) by a factor.
    pub scale_layer_output: Option<(usize, f32)>,
    /// Perturb one layer's weights (0-based layer index) by a relative amount: every weight
    /// w becomes w * (1 + eps * s) with a fixed pseudo-random sign s.
    pub perturb_layer_weights: Option<(usize, f32)>,
}

impl FaultSet {
    /// No fault: the faithful model.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether any fault is switched on.
    pub fn any(&self) -> bool {
        *self != Self::none()
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
        if let Some((layer, factor)) = self.scale_layer_output {
            parts.push(format!("scale-layer-output(layer {layer}, x{factor})"));
        }
        if let Some((layer, eps)) = self.perturb_layer_weights {
            parts.push(format!("perturb-layer-weights(layer {layer}, eps {eps})"));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}
