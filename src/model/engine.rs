//! Which matrix-product engine a run gets, settled once against this machine. A
//! [`ComputePlan`](super::ComputePlan) is plain data (its default engine on CUDA is cuBLAS,
//! whether or not the library loads here); the commands resolve the engine with
//! [`resolve_gemm`] after finding their backend, so a missing cuBLAS is a warning (default)
//! or an error (asked for) before anything runs.

use super::precision::{Gemm, GemmUnavailable};
use crate::backend::BackendKind;

/// `requested`, else the backend's default ([`Gemm::default_for`]), if it runs here.
/// cuBLAS asked for where it cannot run is an error; cuBLAS by default where it does not
/// load falls back to burn's kernels with a warning (printed once). Call it only once the
/// backend is known to work: on CUDA it loads cuBLAS on device 0.
pub fn resolve_gemm(
    requested: Option<Gemm>,
    backend: BackendKind,
) -> Result<Gemm, GemmUnavailable> {
    let gemm = requested.unwrap_or(Gemm::default_for(backend));
    if gemm != Gemm::Cublas {
        return Ok(gemm);
    }
    if backend != BackendKind::Cuda {
        return Err(GemmUnavailable::NotCuda);
    }
    match cublas_loads() {
        Ok(()) => Ok(Gemm::Cublas),
        Err(why) if requested.is_none() => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("warning: {why}; matrix products use burn's kernels"));
            Ok(Gemm::Burn)
        }
        Err(why) => Err(GemmUnavailable::NotLoaded(why)),
    }
}

#[cfg(feature = "cuda")]
fn cublas_loads() -> Result<(), String> {
    super::cublas::available()
}

#[cfg(not(feature = "cuda"))]
fn cublas_loads() -> Result<(), String> {
    Err("this esmfuzz was built without CUDA (cargo build --features cuda)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_resolves_to_burn_and_refuses_cublas() {
        assert_eq!(resolve_gemm(None, BackendKind::Cpu), Ok(Gemm::Burn));
        assert_eq!(
            resolve_gemm(Some(Gemm::Burn), BackendKind::Cpu),
            Ok(Gemm::Burn)
        );
        assert_eq!(
            resolve_gemm(Some(Gemm::Cublas), BackendKind::Cpu),
            Err(GemmUnavailable::NotCuda)
        );
    }
}
