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

/// A policy realised on a backend: what the model actually computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ComputePlan {
    pub precision: Precision,
    pub backend: BackendKind,
    pub matmul: MatmulMode,
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
        }
    }

    /// FP32 on `backend` with every reduction summed in another order
    /// ([`MatmulMode::ReorderedF32`]): the noise-floor model.
    pub fn reordered_f32(backend: BackendKind) -> Self {
        Self {
            precision: Precision::F32,
            backend,
            matmul: MatmulMode::ReorderedF32,
        }
    }

    /// The dtype weights and activations are stored in.
    pub fn dtype(&self) -> DType {
        self.precision.storage_dtype()
    }

    /// One line saying what this policy computes on this backend.
    pub fn describe(&self) -> String {
        let matmul = match (self.matmul, self.precision, self.backend) {
            (MatmulMode::ReorderedF32, ..) => {
                "matmul: the FP32 reference's, each reduction summed as two halves (noise floor)"
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
            (_, Precision::Bf16, BackendKind::Cpu) => {
                "matmul: bf16 operands widened to f32, f32 gemm, result rounded to bf16"
            }
            (_, _, BackendKind::Cpu) => {
                "matmul: gemm-f16 (operands widened to f32, f32 accumulation, rounded to f16)"
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
        format!(
            "{} on {}: storage {:?}; {matmul}; {stats}; RoPE angles, sin and cos in f32",
            self.precision,
            self.backend,
            self.dtype()
        )
    }
}
