//! The policy flags of every command that runs a policy (`fuzz`, `embed`, `explain`): one
//! set of flags, flattened into each, and one way to build the plan from them.

use std::ffi::OsString;

use anyhow::{Context, Result};
use clap::Args;

use esmfuzz::backend::BackendKind;
use esmfuzz::model::{
    AttentionKernel, ComputePlan, EsmConfig, Fp32Places, Gemm, Precision, resolve_gemm,
};
use esmfuzz::named::Named;

use super::named;

/// Help text of every `--fp32-places` option.
const FP32_PLACES_HELP: &str = "Places computed in FP32 within the policy (a mixed policy, as `bisect-precision` prints it): attention:I, norms:I, ffn:I, layer:I (I or I-J), final-norm, embeddings, residual, all, none";

/// A precision policy as the command line gives it.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct PolicyArgs {
    /// Precision policy: for `fuzz` and `explain` the policy under test (compared with FP32
    /// on the same backend), for `embed` the one that embeds.
    #[arg(long, value_parser = named::<Precision>(), default_value = "f16")]
    pub precision: Precision,
    #[arg(long, default_value = "none", help = FP32_PLACES_HELP)]
    pub fp32_places: String,
    /// Attention kernel of the reduced policy: `composed` (esmfuzz's own ops) or `fused`
    /// (esmfuzz's varlen flash kernel on CUDA, true FP32 for f32; burn's fused op on the CPU).
    #[arg(long, value_parser = named::<AttentionKernel>(), default_value = "composed")]
    pub attention: AttentionKernel,
    /// Matrix products: `cublas` (cuBLAS GEMMs, the default on CUDA when it loads; true
    /// FP32 with TF32 off for f32) or `burn` (burn's kernels; the only choice on the CPU).
    #[arg(long, value_parser = named::<Gemm>())]
    pub gemm: Option<Gemm>,
}

impl PolicyArgs {
    /// The matrix-product engine: `--gemm`, else the backend's default, checked against this
    /// machine ([`resolve_gemm`]). Settle it only once the backend is known to be there: on
    /// CUDA it loads cuBLAS on the device.
    pub fn gemm(&self, backend: BackendKind) -> Result<Gemm> {
        Ok(resolve_gemm(self.gemm, backend)?)
    }

    /// The policy's plan on `backend`, its products computed by `gemm`.
    pub fn plan(&self, backend: BackendKind, gemm: Gemm) -> Result<ComputePlan> {
        Ok(ComputePlan::new(self.precision, backend)
            .with_attention(self.attention)
            .with_gemm(gemm)?)
    }

    /// The FP32 reference the policy is compared with: FP32 on `backend`, its products
    /// computed by the same `gemm`.
    pub fn reference_plan(backend: BackendKind, gemm: Gemm) -> Result<ComputePlan> {
        Ok(ComputePlan::new(Precision::F32, backend).with_gemm(gemm)?)
    }

    /// `--fp32-places` read against the model's layer count.
    pub fn places(&self, config: &EsmConfig) -> Result<Fp32Places> {
        Fp32Places::parse_for(&self.fp32_places, config.num_hidden_layers).context("--fp32-places")
    }

    /// These flags again, as a command line gives them.
    pub fn to_args(&self, args: &mut Vec<OsString>) {
        // Every field named: a new flag that is not passed on does not compile.
        let Self {
            precision,
            fp32_places,
            attention,
            gemm,
        } = self;
        args.extend(["--precision", Named::name(*precision)].map(OsString::from));
        args.extend(["--fp32-places", fp32_places].map(OsString::from));
        args.extend(["--attention", Named::name(*attention)].map(OsString::from));
        if let Some(gemm) = gemm {
            args.extend(["--gemm", Named::name(*gemm)].map(OsString::from));
        }
    }
}

/// A policy's one-line description, with its FP32 places when there are any.
pub fn describe_policy(plan: &ComputePlan, places: &Fp32Places) -> String {
    if places.is_empty() {
        plan.describe()
    } else {
        format!("{}; FP32 places: {places}", plan.describe())
    }
}
