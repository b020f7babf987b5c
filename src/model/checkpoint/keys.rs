//! The keys table: every stored key of an HF or fair-esm checkpoint mapped to one canonical
//! (fair-esm) name, or to a head or table that is ignored. The `esm.` prefix of fine-tuned HF
//! checkpoints and the `encoder.` / `encoder.sentence_encoder.` prefixes of fair-esm files
//! are stripped here; nothing else in the loader knows the stored names.

use crate::model::config::EsmConfig;

/// What a stored key is, once prefixes are stripped.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRole {
    /// A backbone tensor under its canonical fair-esm name.
    Backbone(String),
    /// A RoPE `inv_freq` stored once for every layer: HF transformers 5.x writes
    /// `encoder.layer.*.attention.self.rotary_embeddings.inv_freq`, its current `EsmModel`
    /// keeps one model-level `rotary_embeddings.inv_freq`.
    SharedInvFreq,
    /// A head or unused table, ignored.
    Ignored,
    /// Not an ESM tensor.
    Unknown,
}

/// How a rule of [`KEYS`] matches a stored key (after `esm.` is stripped).
enum Match {
    Exact(&'static str),
    Prefix(&'static str),
}

/// What a rule of [`KEYS`] makes of the keys it matches.
enum Rule {
    SharedInvFreq,
    Ignored,
    /// The matched name (or prefix) becomes this canonical name (or prefix).
    Rename(&'static str),
    /// `encoder.layer.{i}.<HF part>`: renamed through [`HF_LAYER_PARTS`].
    HfLayer,
    /// A fair-esm key under the matched prefix: through [`FAIR_ESM`].
    FairEsm,
}

/// The keys table, first match wins: HF names, then fair-esm ones under each prefix its files
/// use.
const KEYS: &[(Match, Rule)] = &[
    (
        Match::Exact("rotary_embeddings.inv_freq"),
        Rule::SharedInvFreq,
    ),
    (
        Match::Exact("encoder.layer.*.attention.self.rotary_embeddings.inv_freq"),
        Rule::SharedInvFreq,
    ),
    (Match::Prefix("lm_head."), Rule::Ignored),
    (Match::Prefix("contact_head."), Rule::Ignored),
    (Match::Prefix("classifier."), Rule::Ignored),
    (Match::Prefix("pooler."), Rule::Ignored),
    (Match::Prefix("encoder.lm_head."), Rule::Ignored),
    (
        Match::Prefix("embeddings.position_embeddings."),
        Rule::Ignored,
    ),
    (Match::Prefix("embeddings.position_ids"), Rule::Ignored),
    (Match::Prefix("embed_positions."), Rule::Ignored),
    (
        Match::Exact("embeddings.word_embeddings.weight"),
        Rule::Rename("embed_tokens.weight"),
    ),
    (
        Match::Prefix("encoder.emb_layer_norm_after."),
        Rule::Rename("emb_layer_norm_after."),
    ),
    (Match::Prefix("encoder.layer."), Rule::HfLayer),
    (Match::Prefix("encoder.sentence_encoder."), Rule::FairEsm),
    (Match::Prefix("encoder."), Rule::FairEsm),
    (Match::Prefix(""), Rule::FairEsm),
];

/// HF's parts of a layer and fair-esm's names for them: HF's `attention.self.query` is
/// fair-esm's `self_attn.q_proj`, and so on.
const HF_LAYER_PARTS: [(&str, &str); 9] = [
    ("attention.self.query.", "self_attn.q_proj."),
    ("attention.self.key.", "self_attn.k_proj."),
    ("attention.self.value.", "self_attn.v_proj."),
    ("attention.self.rotary_embeddings.", "self_attn.rot_emb."),
    ("attention.output.dense.", "self_attn.out_proj."),
    ("attention.LayerNorm.", "self_attn_layer_norm."),
    ("intermediate.dense.", "fc1."),
    ("output.dense.", "fc2."),
    ("LayerNorm.", "final_layer_norm."),
];

/// Under a fair-esm prefix: heads ignored, backbone tensors already canonical.
const FAIR_ESM: [(&str, bool); 5] = [
    ("lm_head.", false),
    ("contact_head.", false),
    ("embed_tokens.", true),
    ("emb_layer_norm_after.", true),
    ("layers.", true),
];

/// Maps an HF or fair-esm key to its canonical fair-esm name (`layers.{i}.self_attn.q_proj.weight`,
/// `embed_tokens.weight`, `emb_layer_norm_after.bias`, ...) through [`KEYS`].
pub fn canonical_name(key: &str) -> KeyRole {
    let key = key.strip_prefix("esm.").unwrap_or(key);
    match canonical_name_as_stored(key) {
        // Older LayerNorm parameter names (TF-style), as HF's loader also accepts them.
        KeyRole::Backbone(name) => KeyRole::Backbone(match name.rsplit_once('.') {
            Some((module, "gamma")) if module.contains("norm") => format!("{module}.weight"),
            Some((module, "beta")) if module.contains("norm") => format!("{module}.bias"),
            _ => name,
        }),
        other => other,
    }
}

/// [`canonical_name`] before LayerNorm parameter names are unified.
fn canonical_name_as_stored(key: &str) -> KeyRole {
    let Some((rest, rule)) = KEYS.iter().find_map(|(pattern, rule)| match pattern {
        Match::Exact(name) => (key == *name).then_some(("", rule)),
        Match::Prefix(prefix) => key.strip_prefix(prefix).map(|rest| (rest, rule)),
    }) else {
        return KeyRole::Unknown;
    };
    match rule {
        Rule::SharedInvFreq => KeyRole::SharedInvFreq,
        Rule::Ignored => KeyRole::Ignored,
        Rule::Rename(canonical) => KeyRole::Backbone(format!("{canonical}{rest}")),
        Rule::HfLayer => {
            let Some((index, tail)) = rest.split_once('.') else {
                return KeyRole::Unknown;
            };
            HF_LAYER_PARTS
                .iter()
                .find_map(|(hf, fair)| tail.strip_prefix(hf).map(|p| format!("{fair}{p}")))
                .map_or(KeyRole::Unknown, |t| {
                    KeyRole::Backbone(format!("layers.{index}.{t}"))
                })
        }
        Rule::FairEsm => match FAIR_ESM.iter().find(|(prefix, _)| rest.starts_with(prefix)) {
            Some((_, true)) => KeyRole::Backbone(rest.to_string()),
            Some((_, false)) => KeyRole::Ignored,
            None => KeyRole::Unknown,
        },
    }
}

/// The layer index of a canonical `layers.{i}.` name.
pub(super) fn layer_index(canonical: &str) -> Option<usize> {
    canonical
        .strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Canonical names and shapes an ESM-2 of `config` needs.
pub(super) fn expected_tensors(config: &EsmConfig) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let f = config.intermediate_size;
    let mut out = vec![
        (
            "embed_tokens.weight".to_string(),
            vec![config.vocab_size, h],
        ),
        ("emb_layer_norm_after.weight".to_string(), vec![h]),
        ("emb_layer_norm_after.bias".to_string(), vec![h]),
    ];
    for i in 0..config.num_hidden_layers {
        let p = format!("layers.{i}.");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{p}self_attn.{proj}.weight"), vec![h, h]));
            out.push((format!("{p}self_attn.{proj}.bias"), vec![h]));
        }
        out.push((
            format!("{p}self_attn.rot_emb.inv_freq"),
            vec![config.head_dim() / 2],
        ));
        for norm in ["self_attn_layer_norm", "final_layer_norm"] {
            out.push((format!("{p}{norm}.weight"), vec![h]));
            out.push((format!("{p}{norm}.bias"), vec![h]));
        }
        out.push((format!("{p}fc1.weight"), vec![f, h]));
        out.push((format!("{p}fc1.bias"), vec![f]));
        out.push((format!("{p}fc2.weight"), vec![h, f]));
        out.push((format!("{p}fc2.bias"), vec![h]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_and_fair_esm_names_meet_in_one_canonical_name() {
        let b = |s: &str| KeyRole::Backbone(s.to_string());
        assert_eq!(
            canonical_name("esm.encoder.layer.3.attention.self.query.weight"),
            b("layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            canonical_name("encoder.sentence_encoder.layers.3.self_attn.q_proj.weight"),
            b("layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            canonical_name("encoder.layer.0.attention.self.rotary_embeddings.inv_freq"),
            b("layers.0.self_attn.rot_emb.inv_freq")
        );
        assert_eq!(
            canonical_name("esm.encoder.layer.5.LayerNorm.bias"),
            b("layers.5.final_layer_norm.bias")
        );
        assert_eq!(
            canonical_name("esm.encoder.layer.5.output.dense.bias"),
            b("layers.5.fc2.bias")
        );
        assert_eq!(
            canonical_name("esm.embeddings.word_embeddings.weight"),
            b("embed_tokens.weight")
        );
        assert_eq!(
            canonical_name("encoder.emb_layer_norm_after.weight"),
            b("emb_layer_norm_after.weight")
        );
        assert_eq!(
            canonical_name("embed_tokens.weight"),
            b("embed_tokens.weight")
        );
        assert_eq!(canonical_name("classifier.dense.weight"), KeyRole::Ignored);
        assert_eq!(canonical_name("encoder.lm_head.weight"), KeyRole::Ignored);
        assert_eq!(
            canonical_name("esm.contact_head.regression.weight"),
            KeyRole::Ignored
        );
        assert_eq!(canonical_name("decoder.weight"), KeyRole::Unknown);
        assert_eq!(
            canonical_name("encoder.layer.0.attention.self.gate.weight"),
            KeyRole::Unknown
        );
    }

    #[test]
    fn expected_tensors_cover_every_weight() {
        let c = EsmConfig::preset("esm2_t6_8M_UR50D").unwrap();
        // 3 + 6 layers x 17 = 105 backbone tensors (the 8M file adds 8 ignored ones).
        assert_eq!(expected_tensors(&c).len(), 105);
    }
}
