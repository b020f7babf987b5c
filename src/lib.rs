//! esmfuzz: property-based fuzzing of reduced-precision ESM-2 inference against FP32.
//!
//! The path of one case: [`input`] normalises a FASTA record or generated sequence into
//! tokens ([`alphabet`]); a [`batch::PaddedBatch`] or [`pack::PackedBatch`] lays them out;
//! [`model::Esm2`] runs them under a [`model::Precision`] policy; [`runner`] pools and
//! fetches the results to the host; [`metrics`] compares them in f64.

pub mod alphabet;
pub mod backend;
pub mod batch;
pub mod campaign;
pub mod cli;
pub mod embed;
pub mod fault;
pub mod generate;
pub mod input;
pub mod matmul_check;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod pack;
pub mod parity;
pub mod props;
pub mod runner;
