//! The burn backends esmfuzz runs on: Flex on the CPU always, burn-cuda with `--features cuda`.

use crate::model::BackendKind;

/// burn's Flex CPU backend.
pub type Cpu = burn::backend::Flex;
/// The Flex device.
pub fn cpu_device() -> burn::backend::flex::FlexDevice {
    burn::backend::flex::FlexDevice
}

/// burn-cuda (cubecl CUDA runtime, fusion and autotune on).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Whether this build can run `kind`.
pub fn available(kind: BackendKind) -> bool {
    match kind {
        BackendKind::Cpu => true,
        BackendKind::Cuda => cfg!(feature = "cuda"),
    }
}

/// Calls `$body` with `B` bound to the backend type of `$kind` and `$device` to its device;
/// CUDA without the feature is an error from the enclosing function.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$b:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::model::BackendKind::Cpu => {
                type $b = $crate::backend::Cpu;
                let $device = $crate::backend::cpu_device();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::model::BackendKind::Cuda => {
                type $b = $crate::backend::Cuda;
                let $device = burn::backend::cuda::CudaDevice::default();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::model::BackendKind::Cuda => {
                return Err(anyhow::anyhow!(
                    "this esmfuzz was built without CUDA: rebuild with `cargo build --release --features cuda`"
                ))
            }
        }
    }};
}
