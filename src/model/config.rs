//! Model configuration: plain data whose field names are the HF `config.json` keys, the six
//! published ESM-2 sizes by name, and validation done once so `forward` never fails.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alphabet::VOCAB_SIZE;

/// Why a configuration cannot describe an ESM-2 model this crate runs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid HF ESM config.json")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown ESM-2 preset '{0}' (known: {known})", known = PRESET_NAMES.join(", "))]
    UnknownPreset(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// ESM-2 hyper-parameters (HF `EsmConfig` key names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EsmConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_true")]
    pub token_dropout: bool,
    #[serde(default = "default_rotary")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub emb_layer_norm_before: bool,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
}

fn default_vocab_size() -> usize {
    VOCAB_SIZE
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_rotary() -> String {
    "rotary".to_string()
}
fn default_max_positions() -> usize {
    1026
}

/// Names accepted by [`EsmConfig::preset`].
pub const PRESET_NAMES: [&str; 6] = [
    "esm2_t6_8M_UR50D",
    "esm2_t12_35M_UR50D",
    "esm2_t30_150M_UR50D",
    "esm2_t33_650M_UR50D",
    "esm2_t36_3B_UR50D",
    "esm2_t48_15B_UR50D",
];

impl EsmConfig {
    /// A config with ESM-2 defaults for the given sizes (FFN width 4 x hidden).
    pub fn new(layers: usize, hidden: usize, heads: usize) -> Self {
        Self {
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            vocab_size: VOCAB_SIZE,
            layer_norm_eps: default_layer_norm_eps(),
            token_dropout: true,
            position_embedding_type: default_rotary(),
            emb_layer_norm_before: false,
            max_position_embeddings: default_max_positions(),
        }
    }

    /// Floating-point operations of one forward over sequences of these token counts
    /// (BOS and EOS included): the matrix products only, `2 x` multiply-adds: per token and
    /// layer the Q, K, V and output projections (`4 h^2`) and the FFN (`2 h i`), per sequence
    /// and layer the scores and the weighted values (`2 L^2 h`). Embedding lookups, norms and
    /// softmax are left out, so `flops / seconds` slightly understates the work done.
    pub fn forward_flops(&self, lengths: impl IntoIterator<Item = usize>) -> f64 {
        let h = self.hidden_size as f64;
        let i = self.intermediate_size as f64;
        let layers = self.num_hidden_layers as f64;
        lengths
            .into_iter()
            .map(|l| {
                let l = l as f64;
                2.0 * layers * (l * (4.0 * h * h + 2.0 * h * i) + 2.0 * l * l * h)
            })
            .sum()
    }

    /// One of the six published sizes, by its fair-esm / HF name (a `facebook/` prefix is
    /// accepted).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let short = name.strip_prefix("facebook/").unwrap_or(name);
        let (layers, hidden, heads) = match short {
            "esm2_t6_8M_UR50D" => (6, 320, 20),
            "esm2_t12_35M_UR50D" => (12, 480, 20),
            "esm2_t30_150M_UR50D" => (30, 640, 20),
            "esm2_t33_650M_UR50D" => (33, 1280, 20),
            "esm2_t36_3B_UR50D" => (36, 2560, 40),
            "esm2_t48_15B_UR50D" => (48, 5120, 40),
            _ => return Err(ConfigError::UnknownPreset(name.to_string())),
        };
        Ok(Self::new(layers, hidden, heads))
    }

    /// A tiny configuration (2 layers, hidden 32, 4 heads) for tests that need no weight file.
    pub fn tiny() -> Self {
        Self::new(2, 32, 4)
    }

    /// Reads and validates an HF `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::Invalid(m));
        if self.num_hidden_layers == 0 || self.hidden_size == 0 || self.num_attention_heads == 0 {
            return fail("layers, hidden size and heads must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "head_dim {} must be even for the rotary embedding",
                self.head_dim()
            ));
        }
        if self.vocab_size != VOCAB_SIZE {
            return fail(format!(
                "vocab_size {} differs from the ESM-2 alphabet's {VOCAB_SIZE}",
                self.vocab_size
            ));
        }
        if self.position_embedding_type != "rotary" {
            return fail(format!(
                "position_embedding_type '{}' is not supported (ESM-2 uses 'rotary')",
                self.position_embedding_type
            ));
        }
        if self.emb_layer_norm_before {
            return fail("emb_layer_norm_before = true is an ESM-1b setting, not ESM-2".into());
        }
        Ok(())
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_flops_are_twice_the_parameters_per_token_plus_attention() {
        let c = EsmConfig::preset("esm2_t33_650M_UR50D").unwrap();
        // 33 layers x (4 h^2 + 8 h^2) = 648.8 M matmul weights, 2 flops each per token.
        let weights = 33.0 * 12.0 * 1280.0f64.powi(2);
        let one = c.forward_flops([1]);
        assert!((one - 2.0 * (weights + 33.0 * 2.0 * 1280.0)).abs() < 1.0);
        let long = c.forward_flops([1000]);
        let attention = 2.0 * 33.0 * 2.0 * 1000.0f64.powi(2) * 1280.0;
        assert!((long - (2.0 * weights * 1000.0 + attention)).abs() / long < 1e-12);
    }

    #[test]
    fn presets_match_the_published_sizes() {
        for name in PRESET_NAMES {
            let c = EsmConfig::preset(name).unwrap();
            c.validate().unwrap();
        }
        let c = EsmConfig::preset("facebook/esm2_t36_3B_UR50D").unwrap();
        assert_eq!(
            (c.num_hidden_layers, c.hidden_size, c.head_dim()),
            (36, 2560, 64)
        );
        assert_eq!(
            EsmConfig::preset("esm2_t48_15B_UR50D").unwrap().head_dim(),
            128
        );
        assert!(EsmConfig::preset("esm3").is_err());
    }

    #[test]
    fn hf_config_json_deserialises() {
        let json = r#"{"hidden_size": 320, "num_hidden_layers": 6, "num_attention_heads": 20,
            "intermediate_size": 1280, "vocab_size": 33, "token_dropout": true,
            "architectures": ["EsmForSequenceClassification"], "layer_norm_eps": 1e-05}"#;
        let c: EsmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c, EsmConfig::preset("esm2_t6_8M_UR50D").unwrap());
    }

    #[test]
    fn validation_rejects_odd_head_dim_and_bad_division() {
        assert!(EsmConfig::new(1, 30, 4).validate().is_err());
        assert!(
            EsmConfig::new(1, 12, 4).validate().is_err(),
            "head_dim 3 is odd"
        );
    }
}
