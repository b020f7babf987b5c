//! The integration suite, one binary with a module per family (one link, one set of loaded
//! models shared by every test). The real 8M weights, corpus and HF references come from
//! `../shared` (or `ESMFUZZ_WEIGHTS`); a test that needs them fails loudly when absent.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod binary;
mod common;

mod bias_gelu_kernels;
mod bisection;
mod bounded_input;
mod campaign_folder;
mod cli_behaviour;
mod deployment;
mod device_memory;
mod device_pooling;
mod equivalence_by_stratum;
mod explain_pooled;
mod fault_injection;
mod fused_attention;
mod hostile_input;
mod layer_norm_kernels;
mod loader_errors;
mod localisation;
mod numerical_stability;
mod output_safety;
mod packed_equivalence;
mod power;
mod reader_fuzz;
mod real_outliers;
mod reference_parity;
mod regression_replay;
mod report_honesty;
mod statistical_validation;
mod task_heads;
mod tiny_reference;
