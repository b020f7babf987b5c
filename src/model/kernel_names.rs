//! How esmfuzz's CUDA kernels name their instances: `esm_<kernel>_<storage>...`, one per
//! storage type a program instantiates, and the values of that type each vector access moves.
//! [`super::cuda_norm`], [`super::cuda_gelu`], [`super::cuda_pool`] and [`super::flash`] build
//! their names from these.

use burn::tensor::DType;

/// The suffix of `dtype`'s kernel instances (`f16`, `bf16`, `f32`); `None` where no program
/// has an instance for it.
pub fn storage_suffix(dtype: DType) -> Option<&'static str> {
    match dtype {
        DType::F16 => Some("f16"),
        DType::BF16 => Some("bf16"),
        DType::F32 => Some("f32"),
        _ => None,
    }
}

/// Values of `dtype` per vector access of esmfuzz's CUDA kernels (16 bytes: a `Pack` of
/// `storage_types.cuh`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn lanes(dtype: DType) -> usize {
    16 / dtype.size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_storage_type_has_its_suffix_and_a_16_byte_access() {
        assert_eq!(storage_suffix(DType::F16), Some("f16"));
        assert_eq!(storage_suffix(DType::BF16), Some("bf16"));
        assert_eq!(storage_suffix(DType::F32), Some("f32"));
        assert_eq!(storage_suffix(DType::F64), None);
        assert_eq!(lanes(DType::F16), 8);
        assert_eq!(lanes(DType::BF16), 8);
        assert_eq!(lanes(DType::F32), 4);
    }
}
