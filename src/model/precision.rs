//! Precision policies: one type that says, for the whole model, in which dtype weights and
//! activations live, how matrix products are computed, and where statistics are forced to f32.
//!
//! "FP16" on two backends is not the same arithmetic, so [`ComputePlan::describe`] states what
//! each backend really does; reports print it.

use burn::tensor::DType;

use crate::backend::BackendKind;

/// A numeric policy for the whole model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// IEEE f32 everywhere; on CUDA the matmuls avoid TF32 (see [`MatmulMode::SplitBf16x6`]).
    F32,
    /// f32 storage, matmul operands rounded to TF32 (11 significant bits) with f32
    /// accumulation: what CUDA users get by default from tensor cores.
    Tf32,
    /// f16 storage and arithmetic; every op runs in f16 as the backend implements it.
    F16,
    /// bf16 storage and arithmetic.
    Bf16,
    /// f16 storage and matmuls; softmax and LayerNorm statistics computed in f32.
    F16Mixed,
}

impl Precision {
    /// All policies, the reference first.
    pub const ALL: [Precision; 5] = [
        Precision::F32,
        Precision::Tf32,
        Precision::F16,
        Precision::Bf16,
        Precision::F16Mixed,
    ];

    /// The dtype weights and activations are stored in.
    pub fn storage_dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Tf32 => DType::F32,
            Precision::F16 | Precision::F16Mixed => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Whether softmax and LayerNorm statistics are computed in f32 whatever the storage.
    pub fn statistics_in_f32(self) -> bool {
        !matches!(self, Precision::F16 | Precision::Bf16)
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::F16Mixed => "f16-mixed",
        }
    }
}

impl crate::named::Named for Precision {
    const VALUES: &'static [Self] = &Precision::ALL;
    const WHAT: &'static str = "precision";

    fn name(self) -> &'static str {
        Precision::name(self)
    }
}

crate::impl_named!(Precision);

/// How a matrix product is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MatmulMode {
    /// The backend's own matmul in the storage dtype.
    Native,
    /// Operands rounded to TF32 (11 significant bits, Veltkamp splitting) before a true f32
    /// product: the CPU stand-in for tensor-core TF32.
    EmulatedTf32,
    /// True f32 on hardware whose f32 matmul is TF32: each operand is split exactly into three
    /// bf16-representable parts `a = a1 + a2 + a3` and the six products that matter
    /// (`a1b1, a1b2, a2b1, a1b3, a3b1, a2b2`) are summed, smallest first. Parts `a1`, `a2` are
    /// exact in TF32 and `a3 < 2^-16 |a|`, so the result keeps ~f32 accuracy at 6x the work.
    SplitBf16x6,
    /// The FP32 reference's own product with the reduction split into two halves whose
    /// results are added: FP32 with another order of summation, the noise floor that a
    /// reduced policy's errors are read against.
    ReorderedF32,
}

/// How attention (scores, mask, softmax, weighted values) is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKernel {
    /// esmfuzz's own composition of burn ops, each realising the plan (matmul mode,
    /// softmax statistics): the stock path, and the FP32 reference's.
    #[default]
    Composed,
    /// Attention in one fused operation: on CUDA esmfuzz's varlen flash kernel
    /// (`src/model/flash_attention.cu`: q, k rotated once, f32 softmax statistics and
    /// accumulation; tensor-core products on half operands, f32 FMA on f32 storage, so f32
    /// stays true FP32), elsewhere burn's fused op (its unfused fallback).
    Fused,
}

impl AttentionKernel {
    pub const ALL: [AttentionKernel; 2] = [AttentionKernel::Composed, AttentionKernel::Fused];

    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Composed => "composed",
            AttentionKernel::Fused => "fused",
        }
    }
}

impl crate::named::Named for AttentionKernel {
    const VALUES: &'static [Self] = &AttentionKernel::ALL;
    const WHAT: &'static str = "attention kernel";

    fn name(self) -> &'static str {
        AttentionKernel::name(self)
    }
}

crate::impl_named!(AttentionKernel);

/// Which library computes the matrix products (the linear layers and attention's two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gemm {
    /// burn's own matmul (cubek kernels on CUDA, compiled and autotuned per shape; gemm on
    /// the CPU), realising the plan's [`MatmulMode`].
    Burn,
    /// cuBLAS (`cublasGemmStridedBatchedEx`) on burn-cuda's buffers, CUDA only: f32 with
    /// `CUBLAS_COMPUTE_32F` (true FP32, TF32 off: torch's FP32), tf32 with
    /// `CUBLAS_COMPUTE_32F_FAST_TF32`, f16/bf16 operands with f32 accumulation. The default on
    /// CUDA ([`crate::model::resolve_gemm`] falls back to burn's where cuBLAS does not load).
    Cublas,
}

impl Gemm {
    pub const ALL: [Gemm; 2] = [Gemm::Burn, Gemm::Cublas];

    pub fn name(self) -> &'static str {
        match self {
            Gemm::Burn => "burn",
            Gemm::Cublas => "cublas",
        }
    }

    /// The engine a plan gets unless asked otherwise: cuBLAS on CUDA, burn's elsewhere.
    /// Plain data: whether cuBLAS loads here is settled by [`crate::model::resolve_gemm`].
    pub fn default_for(backend: BackendKind) -> Gemm {
        match backend {
            BackendKind::Cpu => Gemm::Burn,
            BackendKind::Cuda => Gemm::Cublas,
        }
    }
}

impl crate::named::Named for Gemm {
    const VALUES: &'static [Self] = &Gemm::ALL;
    const WHAT: &'static str = "gemm engine";

    fn name(self) -> &'static str {
        Gemm::name(self)
    }
}

crate::impl_named!(Gemm);

/// How cuBLAS accumulates f32 operands (half operands always accumulate in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CublasCompute {
    /// `CUBLAS_COMPUTE_32F`: IEEE f32 products and sums.
    Fp32,
    /// `CUBLAS_COMPUTE_32F_FAST_TF32`: operands rounded to TF32 on tensor cores.
    Tf32,
}

/// cuBLAS asked of a plan that cannot have it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GemmUnavailable {
    #[error("--gemm cublas is for --backend cuda (the CPU computes products with gemm)")]
    NotCuda,
    #[error("{0}")]
    NotLoaded(String),
}

/// A policy realised on a backend: what the model actually computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ComputePlan {
    pub precision: Precision,
    pub backend: BackendKind,
    pub matmul: MatmulMode,
    pub attention: AttentionKernel,
    pub gemm: Gemm,
}

impl ComputePlan {
    pub fn new(precision: Precision, backend: BackendKind) -> Self {
        let matmul = match (precision, backend) {
            (Precision::F32, BackendKind::Cuda) => MatmulMode::SplitBf16x6,
            (Precision::Tf32, BackendKind::Cpu) => MatmulMode::EmulatedTf32,
            _ => MatmulMode::Native,
        };
        Self {
            precision,
            backend,
            matmul,
            attention: AttentionKernel::Composed,
            gemm: Gemm::default_for(backend),
        }
    }

    /// This plan with its products computed by `gemm` (see [`Gemm`]).
    pub fn with_gemm(self, gemm: Gemm) -> Result<Self, GemmUnavailable> {
        if gemm == Gemm::Cublas && self.backend != BackendKind::Cuda {
            return Err(GemmUnavailable::NotCuda);
        }
        Ok(Self { gemm, ..self })
    }

    /// What cuBLAS computes f32 operands with under this plan.
    pub fn cublas_compute(&self) -> CublasCompute {
        match self.precision {
            Precision::Tf32 => CublasCompute::Tf32,
            _ => CublasCompute::Fp32,
        }
    }

    /// This plan with attention computed by `kernel` (see [`AttentionKernel::Fused`]).
    pub fn with_attention(self, kernel: AttentionKernel) -> Self {
        Self {
            attention: kernel,
            ..self
        }
    }

    /// FP32 on `backend` with every reduction summed in another order
    /// ([`MatmulMode::ReorderedF32`]): the noise-floor model.
    pub fn reordered_f32(backend: BackendKind) -> Self {
        Self {
            precision: Precision::F32,
            backend,
            matmul: MatmulMode::ReorderedF32,
            attention: AttentionKernel::Composed,
            gemm: Gemm::default_for(backend),
        }
    }

    /// The dtype weights and activations are stored in.
    pub fn dtype(&self) -> DType {
        self.precision.storage_dtype()
    }

    /// One line saying what this policy computes on this backend.
    pub fn describe(&self) -> String {
        let matmul = match (self.matmul, self.precision, self.backend) {
            (MatmulMode::ReorderedF32, ..) if self.gemm == Gemm::Cublas => {
                "matmul: the FP32 reference's (cuBLAS), each reduction summed as two halves \
                 (noise floor)"
            }
            (MatmulMode::ReorderedF32, ..) => {
                "matmul: the FP32 reference's, each reduction summed as two halves (noise floor)"
            }
            (_, Precision::F32, _) if self.gemm == Gemm::Cublas => {
                "matmul: cuBLAS CUBLAS_COMPUTE_32F (true f32, TF32 off)"
            }
            (_, Precision::Tf32, _) if self.gemm == Gemm::Cublas => {
                "matmul: cuBLAS CUBLAS_COMPUTE_32F_FAST_TF32 (TF32 tensor cores, f32 accumulation)"
            }
            (_, _, BackendKind::Cuda) if self.gemm == Gemm::Cublas => {
                "matmul: cuBLAS tensor-core GEMM on half operands, f32 accumulation"
            }
            (MatmulMode::SplitBf16x6, ..) => {
                "matmul: true f32 via 6 split bf16-exact products on TF32 tensor cores"
            }
            (MatmulMode::EmulatedTf32, ..) => {
                "matmul: operands rounded to TF32 (11 bits), f32 accumulation (emulated)"
            }
            (_, Precision::Tf32, BackendKind::Cuda) => {
                "matmul: burn-cuda default f32 (TF32 tensor cores, f32 accumulation)"
            }
            (_, Precision::F32, BackendKind::Cpu) => "matmul: gemm f32",
            (_, Precision::Bf16, BackendKind::Cpu) if super::cpu_kernels::tiles_in_use() => {
                "matmul: AMX tile products of the bf16 operands (exact products, f32 \
                 accumulation), rounded to bf16 (burn-flex's bf16 product where a batch of \
                 matrices is multiplied)"
            }
            (_, _, BackendKind::Cpu) if super::cpu_kernels::tiles_in_use() => {
                "matmul: AMX tile products, each f16 operand split exactly into two bf16 \
                 (exact products, f32 accumulation), rounded to f16 (f16 operands widened to \
                 f32, f32 gemm, rounded to f16 where a batch of matrices is multiplied)"
            }
            (_, Precision::Bf16, BackendKind::Cpu) => {
                "matmul: bf16 operands widened to f32, f32 gemm, result rounded to bf16"
            }
            (_, _, BackendKind::Cpu) => {
                "matmul: f16 operands widened to f32, f32 gemm, result rounded to f16"
            }
            (_, _, BackendKind::Cuda) => {
                "matmul: cubek tensor-core kernels on half operands (f32 accumulation per tile)"
            }
        };
        let stats = if self.precision.statistics_in_f32() {
            "softmax and LayerNorm statistics in f32"
        } else {
            "softmax and LayerNorm in storage dtype (backend reductions may widen internally)"
        };
        let norm = match self.backend {
            BackendKind::Cuda => {
                let norm = if super::cuda_norm::composed_asked() {
                    "; LayerNorm: burn's composition (ESMFUZZ_COMPOSED_LAYER_NORM=1)"
                } else {
                    "; LayerNorm: one CUDA kernel per norm (the composed steps and rounding, \
                     row sums in another order; composed where the kernel does not load)"
                };
                let gelu = if super::cuda_gelu::composed_asked() {
                    "; bias + GELU: burn's composition (ESMFUZZ_COMPOSED_GELU=1)"
                } else {
                    "; bias + GELU: one CUDA kernel (the composed steps and rounding; \
                     composed where it does not load)"
                };
                format!("{norm}{gelu}")
            }
            BackendKind::Cpu => String::new(),
        };
        let attention = match self.attention {
            AttentionKernel::Composed if super::cpu_kernels::attention_runs_for(self) => {
                "; attention: the composed arithmetic and rounding in one CPU kernel per \
                 sequence and head (esmfuzz-kernels; sums in another order, dot products by \
                 fused multiply-add, exact for half operands)"
            }
            AttentionKernel::Composed => "",
            AttentionKernel::Fused if self.backend == BackendKind::Cuda => {
                "; attention: esmfuzz's varlen flash kernel (f32 softmax statistics and \
                 accumulation; tensor cores on half storage, f32 FMA on f32 storage; composed \
                 where the head dim has no kernel)"
            }
            AttentionKernel::Fused => "; attention: burn's fused op (its unfused fallback)",
        };
        format!(
            "{} on {}: storage {:?}; {matmul}; {stats}{norm}; RoPE angles, sin and cos in f32{attention}",
            self.precision,
            self.backend,
            self.dtype()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cublas_is_refused_on_the_cpu_and_burn_is_its_default() {
        assert_eq!(Gemm::default_for(BackendKind::Cpu), Gemm::Burn);
        let plan = ComputePlan::new(Precision::F16, BackendKind::Cpu);
        assert_eq!(plan.gemm, Gemm::Burn);
        assert_eq!(plan.with_gemm(Gemm::Cublas), Err(GemmUnavailable::NotCuda));
        assert_eq!(plan.with_gemm(Gemm::Burn), Ok(plan));
        // Only tf32 asks cuBLAS for TF32; f32 stays true FP32.
        let compute = |p| ComputePlan::new(p, BackendKind::Cpu).cublas_compute();
        assert_eq!(compute(Precision::F32), CublasCompute::Fp32);
        assert_eq!(compute(Precision::Tf32), CublasCompute::Tf32);
        assert_eq!(compute(Precision::F16), CublasCompute::Fp32);
    }

    #[test]
    fn every_policy_can_ask_for_fused_attention_and_nothing_else_changes() {
        for b in [BackendKind::Cpu, BackendKind::Cuda] {
            for p in Precision::ALL {
                let composed = ComputePlan::new(p, b);
                let fused = composed.with_attention(AttentionKernel::Fused);
                assert_eq!(fused.attention, AttentionKernel::Fused);
                assert_eq!(fused.with_attention(AttentionKernel::Composed), composed);
            }
        }
    }
}
