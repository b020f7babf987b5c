//! esmfuzz: property-based fuzzing of reduced-precision ESM-2 inference against FP32.
//!
//! Four wings, each calling only the ones before it:
//! - [`model`]: ESM-2 in burn under explicit precision policies (with [`alphabet`],
//!   [`input`] for reading proteins, and [`backend`] for where it runs);
//! - [`batch`]: padded and packed batches, running them, pooling, the embedding pipeline;
//! - [`harness`]: generators, properties, verdicts and the one family driver;
//! - the command line (`src/cli/`, in the binary).

pub mod alphabet;
pub mod backend;
pub mod batch;
pub mod deployment;
pub mod harness;
pub mod input;
pub mod model;
pub mod named;
pub mod npy;
pub mod safe_file;
