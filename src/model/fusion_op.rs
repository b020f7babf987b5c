//! Plumbing shared by esmfuzz's custom operations in burn-cuda's fusion stream (the cuBLAS
//! products, the flash-attention, LayerNorm and bias + GELU kernels): the backend types, the
//! moves of a tensor into and out of the fusion backend's primitive once `B` is known to be
//! it, and [`register_float`], the operation of a kernel whose inputs and outputs are float
//! tensors of its first input's shape.

use std::any::{Any, TypeId};
use std::ffi::c_void;
use std::fmt::Debug;

use burn::tensor::{DType, Int, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use cubecl::cuda::CudaRuntime;
use cudarc::driver::sys::CUstream;

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

/// One of esmfuzz's CUDA kernels on float tensors, run by [`register_float`].
pub trait FloatKernel: Debug + Clone + Send + Sync + 'static {
    /// The operation's name in burn's IR.
    const OP: &'static str;
    /// What a failed launch's panic calls it.
    const WHAT: &'static str;

    /// Launches the kernel on `inputs` (contiguous, in the order registered) into `outputs`
    /// (allocated, contiguous, each of the first input's shape and dtype).
    fn launch(
        &self,
        inputs: &[CubeTensor<CudaRuntime>],
        outputs: &[CubeTensor<CudaRuntime>],
    ) -> Result<(), String>;
}

/// Registers `kernel` on `inputs` in the fusion stream; its `N` outputs, each of the first
/// input's shape and dtype.
pub fn register_float<K: FloatKernel, const N: usize>(
    kernel: K,
    inputs: Vec<FusionTensor<Runtime>>,
) -> [FusionTensor<Runtime>; N] {
    let x = &inputs[0];
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs(&inputs);
    let outputs: Vec<TensorIr> = (0..N)
        .map(|_| TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype))
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(K::OP, &inputs, &outputs);
    let op = FloatOp {
        desc: desc.clone(),
        kernel,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .outputs()
}

#[derive(Debug, Clone)]
struct FloatOp<K> {
    desc: CustomOpIr,
    kernel: K,
}

impl<K: FloatKernel> Operation<Runtime> for FloatOp<K> {
    fn execute(&self, handles: &mut HandleContainer<<Runtime as FusionRuntime>::FusionHandle>) {
        let inputs: Vec<CubeTensor<CudaRuntime>> = self
            .desc
            .inputs
            .iter()
            .map(|t| burn_cubecl::kernel::into_contiguous(handles.get_float_tensor::<Inner>(t)))
            .collect();
        let x = &inputs[0];
        let outputs: Vec<CubeTensor<CudaRuntime>> = self
            .desc
            .outputs
            .iter()
            .map(|_| {
                CubeTensor::new_contiguous(
                    x.client.clone(),
                    x.device.clone(),
                    x.meta.shape().clone(),
                    x.client
                        .empty(x.meta.shape().num_elements() * x.dtype.size()),
                    x.dtype,
                )
            })
            .collect();
        self.kernel
            .launch(&inputs, &outputs)
            .unwrap_or_else(|e| panic!("{}: {e}", K::WHAT));
        for (out, result) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Inner>(&out.id, result);
        }
    }
}

/// Whether a kernel may move rows of `width` values of `dtype` 16 bytes at a time: the width
/// a multiple of the values per access and every buffer in `pointers` 16-byte aligned (else
/// it takes one value at a time).
pub fn vectorisable(width: usize, dtype: DType, pointers: &[u64]) -> bool {
    width.is_multiple_of(super::kernel_names::lanes(dtype)) && pointers.iter().all(|p| p % 16 == 0)
}

/// Kernel parameters for the device pointers `pointers`, in order: each points at its entry,
/// so `pointers` must outlive the launch they are passed to.
pub fn pointer_params(pointers: &mut [u64]) -> Vec<*mut c_void> {
    pointers
        .iter_mut()
        .map(|p| (p as *mut u64).cast())
        .collect()
}

/// Runs `launch` with the device pointers of `tensors`, in order, and the stream cubecl's own
/// kernels on them run on (it already waits on whatever wrote them); the buffers stay held
/// until `launch` returns.
pub fn with_device_pointers<T>(
    tensors: &[&CubeTensor<CudaRuntime>],
    launch: impl FnOnce(&[u64], CUstream) -> Result<T, String>,
) -> Result<T, String> {
    let resources = tensors
        .iter()
        .map(|t| {
            t.client
                .get_resource(t.handle.clone())
                .map_err(|e| format!("operand not resident on the device: {e:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pointers: Vec<u64> = resources.iter().map(|r| r.resource().ptr).collect();
    let stream = resources
        .first()
        .map_or(std::ptr::null_mut(), |r| r.resource().stream);
    launch(&pointers, stream)
}
