//! ESM-2 in burn: configuration, precision policies, weights, loading, fault switches and
//! the forward pass, one file per reference class.

pub mod attention;
pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod cpu_kernels;
#[cfg(feature = "cuda")]
pub mod cublas;
pub mod cuda_gelu;
pub mod cuda_norm;
pub mod cuda_pool;
pub mod device;
pub mod engine;
pub mod esm2;
pub mod fault;
pub mod flash;
pub mod fp32_places;
#[cfg(feature = "cuda")]
pub mod fusion_op;
pub mod heads;
pub mod host;
pub mod kernel_names;
pub mod layer;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod ops;
pub mod precision;
pub mod rotary;
pub mod weights;

pub use crate::backend::BackendKind;
pub use config::EsmConfig;
pub use engine::resolve_gemm;
pub use esm2::{Esm2, EsmOutput, ModelSpec, Place};
pub use fault::FaultSet;
pub use fp32_places::{Fp32Place, Fp32Places};
pub use host::{HostTensor, PendingRead, Stored, Widen, to_host};
pub use precision::{AttentionKernel, ComputePlan, Gemm, Precision};
pub use weights::EsmWeights;
