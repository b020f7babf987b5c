//! Models built layer by layer from an opened checkpoint, every tensor checked for NaN and Inf
//! as it streams by: host memory holds one layer, not the checkpoint.

use std::borrow::Cow;

use burn::tensor::backend::Backend;

use super::{LoadError, OpenCheckpoint};
use crate::model::{Esm2, ModelSpec};

/// What to do with weights holding NaN or Inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFiniteWeights {
    /// Refuse them: an error naming the tensor (by its stored key) and the flat index.
    Refuse,
    /// Load them anyway, with a warning on stderr (to watch what they do).
    Warn,
}

impl OpenCheckpoint {
    /// [`OpenCheckpoint::check_finite`] under `policy`.
    pub fn check_finite_under(
        &self,
        tensors: &[(String, &[f32])],
        policy: NonFiniteWeights,
    ) -> Result<(), LoadError> {
        match (self.check_finite(tensors), policy) {
            (Err(e), NonFiniteWeights::Warn) => {
                eprintln!("warning: {e}");
                Ok(())
            }
            (result, _) => result,
        }
    }
}

/// One model per spec from `checkpoint`, streamed: each layer is read, checked under
/// `non_finite`, uploaded for every spec and dropped. `on_layer` sees each layer's index once
/// it is in (for progress).
pub fn build_streamed<B: Backend>(
    checkpoint: &OpenCheckpoint,
    specs: &[ModelSpec],
    non_finite: NonFiniteWeights,
    device: &B::Device,
    mut on_layer: impl FnMut(usize),
) -> Result<Vec<Esm2<B>>, LoadError> {
    let check = |tensors: &[(String, &[f32])]| checkpoint.check_finite_under(tensors, non_finite);
    let embed_tokens = checkpoint.read_embed_tokens()?;
    let final_norm = checkpoint.read_final_norm()?;
    check(&[
        ("embed_tokens.weight".to_string(), &embed_tokens.data[..]),
        (
            "emb_layer_norm_after.weight".to_string(),
            &final_norm.weight.data[..],
        ),
        (
            "emb_layer_norm_after.bias".to_string(),
            &final_norm.bias.data[..],
        ),
    ])?;
    Esm2::<B>::streamed(
        &checkpoint.config,
        specs,
        &embed_tokens,
        &final_norm,
        |i| -> Result<Cow<'static, _>, LoadError> {
            let layer = checkpoint.read_layer(i)?;
            check(&layer.named_tensors(i))?;
            on_layer(i);
            Ok(Cow::Owned(layer))
        },
        device,
    )
}
