//! Plumbing shared by esmfuzz's custom operations in burn-cuda's fusion stream (the cuBLAS
//! products, the flash-attention, LayerNorm and bias + GELU kernels): the backend types, the
//! moves of a tensor into and out of the fusion backend's primitive once `B` is known to be
//! it, and [`register_float`], the operation of a kernel whose inputs and outputs are float
//! tensors of its first input's shape.

use std::any::{Any, TypeId};
use std::ffi::c_void;
use std::fmt::Debug;
use std::sync::OnceLock;

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
///
/// `launch` runs on cubecl's device thread, the one that launches cubecl's own kernels,
/// after every kernel queued before it, in one round trip from the calling thread (burn's
/// fusion thread): the pointers are fetched there, where each fetch is a plain call. Fetching
/// them from here costs a blocking round trip each, a thread hand-over that is most of a
/// custom operation's host time. `ESMFUZZ_POINTER_ROUND_TRIPS=1` fetches them from here, one
/// round trip each, as before (the same kernels in the same stream order, so the same bits;
/// `gpu_run.sh same` and `switches` compare them).
pub fn with_device_pointers<T: Send + 'static>(
    tensors: &[&CubeTensor<CudaRuntime>],
    launch: impl FnOnce(&[u64], CUstream) -> Result<T, String>,
) -> Result<T, String> {
    let Some(first) = tensors.first() else {
        return launch(&[], std::ptr::null_mut());
    };
    if pointer_round_trips() {
        return fetch_and_launch(tensors, launch);
    }
    // A panic on the device thread would be caught and logged there, the caller seeing only
    // a closed channel: bring its message back as the error instead.
    let job = AssertSend(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fetch_and_launch(tensors, launch)
        }))
        .unwrap_or_else(|payload| {
            let message = crate::batch::oom::panic_message(payload.as_ref());
            Err(if message.is_empty() {
                "a panic without a message".into()
            } else {
                message
            })
        })
    });
    first
        .client
        .exclusive(move || job.run())
        .map_err(|e| format!("cubecl's device thread did not run the launch: {e:?}"))?
}

/// Whether [`with_device_pointers`] fetches each pointer from the calling thread
/// (`ESMFUZZ_POINTER_ROUND_TRIPS=1`); read once.
fn pointer_round_trips() -> bool {
    static ROUND_TRIPS: OnceLock<bool> = OnceLock::new();
    *ROUND_TRIPS.get_or_init(|| {
        std::env::var("ESMFUZZ_POINTER_ROUND_TRIPS").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// The pointers of `tensors` and their stream, then `launch` of them, on whichever thread
/// calls it.
fn fetch_and_launch<T>(
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

/// A closure moved to cubecl's device thread by [`with_device_pointers`].
struct AssertSend<F>(F);

// SAFETY: `ComputeClient::exclusive` blocks the calling thread until the closure has run on
// the device thread, so what the closure owns or borrows is used by one thread at a time, as
// with a scoped thread. The CUDA handles it may hold (functions, streams, device pointers)
// are valid on every thread of the process, and the device thread has the primary context,
// in which they were made, current.
unsafe impl<F> Send for AssertSend<F> {}

impl<F: FnOnce() -> R, R> AssertSend<F> {
    /// Runs the closure. A method rather than a field access, so that a closure calling it
    /// captures the whole wrapper (Send), not the field (perhaps not).
    fn run(self) -> R {
        (self.0)()
    }
}
