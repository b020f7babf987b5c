//! The backends esmfuzz runs on and every knob that depends on the backend: burn's Flex on
//! the CPU always, burn-cuda with `--features cuda`; default token budgets, attention-group
//! slots and the block-length multiple, each with the measurement behind it.

/// burn's Flex CPU backend.
pub type Cpu = burn::backend::Flex;
/// The Flex device.
pub fn cpu_device() -> burn::backend::flex::FlexDevice {
    burn::backend::flex::FlexDevice
}

/// burn-cuda (cubecl CUDA runtime, fusion and autotune on).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Whether CUDA works here: creates the default device and runs one tiny op. cudarc panics
/// when it cannot load the driver (`libcuda.so`); that panic is caught (and not printed)
/// and returned as an error saying what is missing.
#[cfg(feature = "cuda")]
pub fn probe_cuda() -> Result<(), String> {
    use burn::tensor::Tensor;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let device = burn::backend::cuda::CudaDevice::default();
        Tensor::<Cuda, 1>::zeros([1], &device).into_data();
    });
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let detail = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".to_string());
        format!(
            "CUDA is not usable on this machine (no NVIDIA driver or GPU found: {detail}); \
             run on a machine with a GPU, or use --backend cpu"
        )
    })
}

/// Which device the model runs on; decides how a precision policy is realised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// burn's Flex CPU backend.
    Cpu,
    /// burn-cuda (cubecl), only with the `cuda` feature.
    Cuda,
}

/// Default tokens per batch (padded or packed) on the CPU. Padded, 8M model, 2 cores, 40
/// corpus records: 1024 gave 991 tokens/s, 2048 gave 862 (mimalloc); 4096 and 8192 gave 620
/// and 416 (glibc malloc): big batches churn memory faster than the extra width pays.
pub const CPU_TOKEN_BUDGET: usize = 1024;
/// Default tokens per batch on CUDA, where larger batches keep the GPU busy.
pub const CUDA_TOKEN_BUDGET: usize = 16384;
/// Default tokens per batch on CUDA for models no wider than [`NARROW_MODEL_WIDTH`] (8M):
/// their passes are bound by kernel launches, not arithmetic, so fewer, larger batches pay.
/// H200, 8M FP16 / BF16 fused, corpus packed, warm tokens/s at 16384 / 32768 / 65536 tokens:
/// 944k / 1,051k / 1,093k and 877k / 930k / 1,254k (peak 0.3 / 0.9 GiB at 16384 / 65536);
/// `gpu_run.sh OUT torchbench` with `BENCH_MODELS="8M 8M@32768 8M@65536"`, results/h200-s8.
pub const CUDA_NARROW_MODEL_TOKEN_BUDGET: usize = 65536;
/// Hidden size up to which a model counts as narrow (ESM-2 8M: 320; 35M, 480, is unmeasured).
pub const NARROW_MODEL_WIDTH: usize = 320;

/// Default slots per attention group of a packed batch on the CPU: the padded-batch sweet
/// spot measured there (see [`CPU_TOKEN_BUDGET`]).
pub const CPU_ATTENTION_GROUP_SLOTS: usize = 1024;
/// Default slots per attention group on CUDA, where each group costs a dozen kernel
/// launches per layer. H100, corpus packed at 16384 tokens, warm tokens/s for 1024 / 4096 /
/// 16384 slots: FP32 130k / 166k / 145k, FP16 308k / 649k / 612k (padded: 121k and 568k);
/// `esmfuzz bench --backend cuda --attention-group-slots 1024,4096,16384`, results/h100.
pub const CUDA_ATTENTION_GROUP_SLOTS: usize = 4096;

/// Block-length multiple on CUDA (see [`BackendKind::block_multiple`]).
pub const CUDA_BLOCK_MULTIPLE: usize = 64;

impl BackendKind {
    /// Both backends, the CPU first.
    pub const ALL: [BackendKind; 2] = [BackendKind::Cpu, BackendKind::Cuda];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Default tokens per batch for a model of `hidden_size`.
    pub fn default_token_budget(self, hidden_size: usize) -> usize {
        match self {
            BackendKind::Cpu => CPU_TOKEN_BUDGET,
            BackendKind::Cuda if hidden_size <= NARROW_MODEL_WIDTH => {
                CUDA_NARROW_MODEL_TOKEN_BUDGET
            }
            BackendKind::Cuda => CUDA_TOKEN_BUDGET,
        }
    }

    /// Default slots per attention group when the model regroups a packed batch.
    pub fn attention_group_slots(self) -> usize {
        match self {
            BackendKind::Cpu => CPU_ATTENTION_GROUP_SLOTS,
            BackendKind::Cuda => CUDA_ATTENTION_GROUP_SLOTS,
        }
    }

    /// Attention blocks (and padded rows) are rounded up to a multiple of this many slots.
    /// burn-cuda compiles and autotunes kernels per shape (its matmul tuning key buckets
    /// sizes by powers of two but keys on the power-of-two factor of each dimension), so
    /// unbucketed random lengths cost a compilation per new length; the CPU needs none.
    pub fn block_multiple(self) -> usize {
        match self {
            BackendKind::Cpu => 1,
            BackendKind::Cuda => CUDA_BLOCK_MULTIPLE,
        }
    }
}

impl crate::named::Named for BackendKind {
    const VALUES: &'static [Self] = &BackendKind::ALL;
    const WHAT: &'static str = "backend";

    fn name(self) -> &'static str {
        BackendKind::name(self)
    }
}

crate::impl_named!(BackendKind);

/// Calls `$body` with `B` bound to the backend type of `$kind` and `$device` to its device;
/// CUDA without the feature is an error from the enclosing function.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$b:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::backend::BackendKind::Cpu => {
                type $b = $crate::backend::Cpu;
                let $device = $crate::backend::cpu_device();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                $crate::backend::probe_cuda().map_err(|e| anyhow::anyhow!(e))?;
                type $b = $crate::backend::Cuda;
                let $device = burn::backend::cuda::CudaDevice::default();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::backend::BackendKind::Cuda => {
                return Err(anyhow::anyhow!(
                    "this esmfuzz was built without CUDA: rebuild with `cargo build --release --features cuda`"
                ))
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_models_get_the_larger_cuda_budget_and_the_cpu_one_budget() {
        assert_eq!(
            BackendKind::Cuda.default_token_budget(320),
            CUDA_NARROW_MODEL_TOKEN_BUDGET
        );
        assert_eq!(
            BackendKind::Cuda.default_token_budget(1280),
            CUDA_TOKEN_BUDGET
        );
        assert_eq!(
            BackendKind::Cuda.default_token_budget(2560),
            CUDA_TOKEN_BUDGET
        );
        assert_eq!(BackendKind::Cpu.default_token_budget(320), CPU_TOKEN_BUDGET);
    }
}
