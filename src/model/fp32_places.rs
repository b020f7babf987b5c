//! Places of the forward pass that a reduced policy can run in FP32 instead: per layer the
//! attention block, the two LayerNorms, the FFN; the final LayerNorm; the embedding table;
//! and the residual stream between blocks. With every place in FP32 the model is the FP32
//! model. A
//! reduced policy plus a set of such places is a mixed policy (`--precision f16
//! --fp32-places attention:3,final-norm`); `esmfuzz bisect-precision` finds the smallest set.
//!
//! Written and parsed as a comma-separated list: `attention:3`, `norms:0-2`, `ffn:5`,
//! `layer:4` (all three of layer 4), `final-norm`, `embeddings`, `residual`, `all`, `none`.

use std::collections::BTreeSet;
use std::fmt;

use super::precision::{ComputePlan, Precision};

/// One place that can run in FP32.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Fp32Place {
    /// Layer `i`'s attention block: the q, k, v projections, RoPE, the scores `q k^T`,
    /// softmax, `probs @ v` and the output projection.
    Attention(usize),
    /// Layer `i`'s two LayerNorms (before attention and before the FFN).
    Norms(usize),
    /// Layer `i`'s FFN: `fc2(gelu(fc1(x)))`.
    Ffn(usize),
    /// `emb_layer_norm_after`.
    FinalNorm,
    /// The token embedding table (and token-dropout scaling).
    Embeddings,
    /// The residual stream: the embeddings and every block's sum `x + block(x)` kept in f32
    /// (each block still computes in its own dtype).
    Residual,
}

impl Fp32Place {
    fn kind(self) -> &'static str {
        match self {
            Fp32Place::Attention(_) => "attention",
            Fp32Place::Norms(_) => "norms",
            Fp32Place::Ffn(_) => "ffn",
            Fp32Place::FinalNorm => "final-norm",
            Fp32Place::Residual => "residual",
            Fp32Place::Embeddings => "embeddings",
        }
    }

    fn layer(self) -> Option<usize> {
        match self {
            Fp32Place::Attention(i) | Fp32Place::Norms(i) | Fp32Place::Ffn(i) => Some(i),
            Fp32Place::FinalNorm | Fp32Place::Residual | Fp32Place::Embeddings => None,
        }
    }
}

impl fmt::Display for Fp32Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.layer() {
            Some(i) => write!(f, "{}:{i}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// A set of [`Fp32Place`]s; empty for a plain policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fp32Places(BTreeSet<Fp32Place>);

/// A `--fp32-places` list that does not parse, or names a layer the model lacks.
#[derive(Debug, thiserror::Error)]
pub enum Fp32PlacesError {
    #[error(
        "'{item}' is not an FP32 place (expected attention:I, norms:I, ffn:I, layer:I, I-J ranges, final-norm, embeddings, residual, all or none)"
    )]
    Syntax { item: String },
    #[error("'{item}' names layer {layer}, but the model has {layers} layers (0-{last})", last = layers.saturating_sub(1))]
    ItemBeyondModel {
        item: String,
        layer: usize,
        layers: usize,
    },
    #[error("{place} names layer {layer}, but the model has {layers} layers (0-{last})", last = layers.saturating_sub(1))]
    NoSuchLayer {
        place: Fp32Place,
        layer: usize,
        layers: usize,
    },
}

impl Fp32Places {
    /// No place: the plain policy.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every place of a model of `layers` layers.
    pub fn all(layers: usize) -> Self {
        let mut set: BTreeSet<Fp32Place> = (0..layers)
            .flat_map(|i| {
                [
                    Fp32Place::Attention(i),
                    Fp32Place::Norms(i),
                    Fp32Place::Ffn(i),
                ]
            })
            .collect();
        set.insert(Fp32Place::FinalNorm);
        set.insert(Fp32Place::Residual);
        set.insert(Fp32Place::Embeddings);
        Self(set)
    }

    pub fn from_places(places: impl IntoIterator<Item = Fp32Place>) -> Self {
        Self(places.into_iter().collect())
    }

    pub fn contains(&self, place: Fp32Place) -> bool {
        self.0.contains(&place)
    }

    /// The plan `place` computes under: true FP32 on `plan`'s backend where it is one of
    /// these places, else `plan`.
    pub fn plan_at(&self, place: Fp32Place, plan: &ComputePlan) -> ComputePlan {
        if self.contains(place) {
            ComputePlan::new(Precision::F32, plan.backend)
        } else {
            *plan
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = Fp32Place> + '_ {
        self.0.iter().copied()
    }

    /// An error when a place names a layer a model of `layers` layers lacks.
    pub fn check_layers(&self, layers: usize) -> Result<(), Fp32PlacesError> {
        match self.iter().find(|p| p.layer().is_some_and(|i| i >= layers)) {
            Some(place) => Err(Fp32PlacesError::NoSuchLayer {
                place,
                layer: place.layer().unwrap_or_default(),
                layers,
            }),
            None => Ok(()),
        }
    }

    /// Parses a list against a model of `layers` layers (`all` needs the count).
    pub fn parse_for(text: &str, layers: usize) -> Result<Self, Fp32PlacesError> {
        let mut set = BTreeSet::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let syntax = || Fp32PlacesError::Syntax {
                item: item.to_string(),
            };
            match item {
                "none" => {}
                "all" => set.extend(Self::all(layers).0),
                "final-norm" => {
                    set.insert(Fp32Place::FinalNorm);
                }
                "residual" => {
                    set.insert(Fp32Place::Residual);
                }
                "embeddings" => {
                    set.insert(Fp32Place::Embeddings);
                }
                _ => {
                    let (kind, range) = item.split_once(':').ok_or_else(syntax)?;
                    let (first, last) = match range.split_once('-') {
                        Some((a, b)) => (a.parse().ok(), b.parse().ok()),
                        None => (range.parse().ok(), range.parse().ok()),
                    };
                    let (Some(first), Some(last)) = (first, last) else {
                        return Err(syntax());
                    };
                    if first > last {
                        return Err(syntax());
                    }
                    // Before the range is expanded: `layer:0-99999999999` names no model.
                    if !matches!(kind, "attention" | "norms" | "ffn" | "layer") {
                        return Err(syntax());
                    }
                    if last >= layers {
                        return Err(Fp32PlacesError::ItemBeyondModel {
                            item: item.to_string(),
                            layer: last,
                            layers,
                        });
                    }
                    for i in first..=last {
                        let places: &[Fp32Place] = match kind {
                            "attention" => &[Fp32Place::Attention(i)],
                            "norms" => &[Fp32Place::Norms(i)],
                            "ffn" => &[Fp32Place::Ffn(i)],
                            "layer" => &[
                                Fp32Place::Attention(i),
                                Fp32Place::Norms(i),
                                Fp32Place::Ffn(i),
                            ],
                            _ => return Err(syntax()),
                        };
                        set.extend(places.iter().copied());
                    }
                }
            }
        }
        let places = Self(set);
        places.check_layers(layers)?;
        Ok(places)
    }
}

impl fmt::Display for Fp32Places {
    /// Canonical form: consecutive layers of one kind as ranges, `none` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut items = Vec::new();
        for kind in ["attention", "norms", "ffn"] {
            let layers: Vec<usize> = self
                .iter()
                .filter(|p| p.kind() == kind)
                .filter_map(Fp32Place::layer)
                .collect();
            let mut i = 0;
            while i < layers.len() {
                let mut j = i;
                while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
                    j += 1;
                }
                items.push(if i == j {
                    format!("{kind}:{}", layers[i])
                } else {
                    format!("{kind}:{}-{}", layers[i], layers[j])
                });
                i = j + 1;
            }
        }
        if self.contains(Fp32Place::FinalNorm) {
            items.push("final-norm".into());
        }
        if self.contains(Fp32Place::Embeddings) {
            items.push("embeddings".into());
        }
        if self.contains(Fp32Place::Residual) {
            items.push("residual".into());
        }
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_canonically() {
        let p =
            Fp32Places::parse_for("residual,ffn:2, attention:0-2,final-norm,norms:4", 6).unwrap();
        assert_eq!(
            p.to_string(),
            "attention:0-2,norms:4,ffn:2,final-norm,residual"
        );
        assert_eq!(Fp32Places::parse_for(&p.to_string(), 6).unwrap(), p);
        assert_eq!(Fp32Places::parse_for("layer:1", 6).unwrap().len(), 3);
        assert_eq!(Fp32Places::parse_for("all", 6).unwrap().len(), 21);
        assert_eq!(
            Fp32Places::parse_for("none", 6).unwrap().to_string(),
            "none"
        );
    }

    #[test]
    fn bad_lists_are_errors_that_name_the_item() {
        for bad in ["attention", "ffn:x", "softmax:1", "norms:3-1"] {
            let e = Fp32Places::parse_for(bad, 6).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        let e = Fp32Places::parse_for("ffn:6", 6).unwrap_err().to_string();
        assert!(e.contains("6 layers"), "{e}");
        let e = Fp32Places::parse_for("layer:0-99", 6)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'layer:0-99' names layer 99") && !e.contains("attention:6"),
            "{e}"
        );
        assert!(Fp32Places::parse_for("softmax:99", 6).is_err());
    }
}
