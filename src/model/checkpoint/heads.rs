//! The heads a checkpoint carries besides the backbone (HF `EsmForSequenceClassification`'s
//! `classifier.*`, `contact_head.regression.*`), read on request: opening a checkpoint
//! ignores them by name ([`super::keys`]), so a file without heads loads as before.

use super::error::LoadError;
use super::open::OpenCheckpoint;
use crate::model::heads::{ClassifierWeights, ContactWeights, HeadWeights};
use crate::model::weights::{HostTensor, LinearWeights};

impl OpenCheckpoint {
    /// The classifier and the contact head, each `None` when the file lacks any of its
    /// tensors; a present one with a shape that disagrees with the config is an error naming
    /// the stored key.
    pub fn read_heads(&self) -> Result<HeadWeights, LoadError> {
        let hidden = self.config.hidden_size;
        let channels = self.config.num_hidden_layers * self.config.num_attention_heads;
        let classifier = match (
            self.head_linear("classifier.dense", Some(hidden), hidden)?,
            self.head_linear("classifier.out_proj", None, hidden)?,
        ) {
            (Some(dense), Some(out_proj)) => Some(ClassifierWeights { dense, out_proj }),
            _ => None,
        };
        let contact = self
            .head_linear("contact_head.regression", Some(1), channels)?
            .map(|regression| ContactWeights { regression });
        Ok(HeadWeights {
            classifier,
            contact,
        })
    }

    /// `{prefix}.weight` `[out, d_in]` (`out` any when `None`) and `{prefix}.bias` `[out]`.
    fn head_linear(
        &self,
        prefix: &str,
        out: Option<usize>,
        d_in: usize,
    ) -> Result<Option<LinearWeights>, LoadError> {
        let (Some((wkey, weight)), Some((bkey, bias))) = (
            self.read_ignored(&format!("{prefix}.weight"))?,
            self.read_ignored(&format!("{prefix}.bias"))?,
        ) else {
            return Ok(None);
        };
        let rows = out
            .unwrap_or(weight.shape.first().copied().unwrap_or(0))
            .max(1);
        let check = |key: String, t: &HostTensor, expected: Vec<usize>| {
            if t.shape == expected {
                Ok(())
            } else {
                Err(LoadError::ShapeMismatch {
                    path: self.file.path.clone(),
                    key,
                    expected,
                    found: t.shape.clone(),
                })
            }
        };
        check(wkey, &weight, vec![rows, d_in])?;
        check(bkey, &bias, vec![rows])?;
        Ok(Some(LinearWeights { weight, bias }))
    }
}
