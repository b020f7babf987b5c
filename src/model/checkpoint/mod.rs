//! Checkpoint I/O, the model wing's room for files: HF `model.safetensors`, HF
//! `pytorch_model.bin` (torch zip) and fair-esm `.pt`, in f32, f16 or bf16.
//!
//! - [`keys`](canonical_name): the keys table, every stored name to one canonical name;
//! - `source`: a file's tensors read on demand ([`safetensors`] tensor by tensor, torch
//!   pickles through burn-store);
//! - `open`: a checkpoint resolved, its config found, its keys and shapes checked
//!   ([`open_checkpoint`], [`OpenCheckpoint`]), or read whole ([`load_checkpoint`]);
//! - `stream`: models built layer by layer from an opened checkpoint under a policy for NaN
//!   and Inf weights ([`build_streamed`]), the one way the CLI and the tests build models
//!   from a file;
//! - [`hub`]: `hf:<org>/<name>` weights in the Hugging Face cache; [`synth`] and
//!   [`torch_zip`]: random-weight checkpoints written as HF does; `error`: [`LoadError`];
//! - `heads`: the classifier and contact head, read on request ([`OpenCheckpoint::read_heads`]).

mod error;
mod heads;
pub mod hub;
mod keys;
mod open;
pub mod safetensors;
mod source;
mod stream;
pub mod synth;
pub mod torch_zip;

pub use error::LoadError;
pub use keys::{KeyRole, canonical_name};
pub use open::{
    Checkpoint, CheckpointFile, OpenCheckpoint, checkpoint_config, load_checkpoint,
    open_checkpoint, resolve_checkpoint_file,
};
pub use source::CheckpointFormat;
pub use stream::{NonFiniteWeights, build_streamed};
