//! Plumbing shared by esmfuzz's custom operations in burn-cuda's fusion stream (the cuBLAS
//! products, the flash-attention and LayerNorm kernels): the backend types, and the moves of
//! a tensor into and out of the fusion backend's primitive once `B` is known to be it.

use std::any::{Any, TypeId};

use burn::tensor::{Int, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::CubeBackend;
use burn_fusion::{FusionBackend, FusionTensor};
use cubecl::cuda::CudaRuntime;

/// burn-cuda's backend below fusion.
pub type Inner = CubeBackend<CudaRuntime, f32, i32, u8>;
/// The fused backend esmfuzz runs ([`crate::backend::Cuda`]).
pub type Outer = crate::backend::Cuda;
pub type Runtime = <Inner as FusionBackend>::FusionRuntime;

/// Moves `value` into `U` when `T` is `U`.
pub fn downcast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
}

/// Whether `B` is esmfuzz's CUDA backend.
pub fn is_cuda<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Outer>()
}

/// `t`'s fusion primitive.
///
/// # Panics
/// When `B` is not the CUDA backend (check [`is_cuda`] first).
pub fn float_primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FusionTensor<Runtime> {
    downcast(t.into_primitive().tensor()).expect("is_cuda was checked: B is the CUDA backend")
}

/// `t`'s fusion primitive.
///
/// # Panics
/// When `B` is not the CUDA backend (check [`is_cuda`] first).
pub fn int_primitive<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> FusionTensor<Runtime> {
    downcast(t.into_primitive()).expect("is_cuda was checked: B is the CUDA backend")
}

/// The tensor of a fusion primitive.
///
/// # Panics
/// When `B` is not the CUDA backend (check [`is_cuda`] first).
pub fn float_tensor<B: Backend, const D: usize>(t: FusionTensor<Runtime>) -> Tensor<B, D> {
    let t = downcast::<_, B::FloatTensorPrimitive>(t)
        .expect("is_cuda was checked: B is the CUDA backend");
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The CUDA device ordinal of `B`'s device `device`.
///
/// # Panics
/// When `B` is not the CUDA backend (check [`is_cuda`] first).
pub fn ordinal<B: Backend>(device: &B::Device) -> usize {
    let device: &dyn Any = device;
    device
        .downcast_ref::<cubecl::cuda::CudaDevice>()
        .expect("is_cuda was checked: B is the CUDA backend")
        .index
}
