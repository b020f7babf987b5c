//! Device tensors to host memory: the model wing's own way to read a result back (the batch
//! wing's `HostStates` and the measurements build on it).
//!
//! A tensor is read in the dtype it is stored in and widened to f32 on the host, not cast on
//! the device first: for the half policies that moves half the bytes over PCIe, spares a cast
//! kernel, and lets a reader that only reduces the values (pooling) skip the f32 copy
//! altogether. Widening f16 and bf16 to f32 is exact, so the values are those a device-side
//! cast gives.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

/// Values widened per parallel task (large enough that a task outweighs its scheduling).
const WIDEN_CHUNK: usize = 1 << 16;

/// A storage type the host widens to f32 exactly: f32 itself, f16 and bf16.
pub trait Widen: Copy + Send + Sync {
    /// `self` as f32 (exact).
    fn widen(self) -> f32;
    /// Every value of `src` widened into `dst` (same length).
    fn widen_into(src: &[Self], dst: &mut [f32]);
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Widen for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

impl Widen for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// A borrowed view of host values in their storage type.
#[derive(Debug, Clone, Copy)]
pub enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// Runs `$body` with `$values` (a [`Stored`]) bound to `$slice` as the typed slice, whichever
/// storage type it holds (`$body` is generic over [`Widen`]).
#[macro_export]
macro_rules! with_stored {
    ($values:expr, $slice:ident => $body:expr) => {
        match $values {
            $crate::model::Stored::F32($slice) => $body,
            $crate::model::Stored::F16($slice) => $body,
            $crate::model::Stored::BF16($slice) => $body,
        }
    };
}

/// One read of a float tensor to the host, kept in the dtype it was stored in (f32, f16 or
/// bf16; any other float dtype is converted to f32 on the host).
#[derive(Debug, Clone)]
pub struct HostTensor {
    data: TensorData,
}

impl HostTensor {
    /// Reads `t` (waits for whatever computes it).
    pub fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        Self::from_data(t.into_data())
    }

    /// Starts reading `t`: on esmfuzz's CUDA backend under `ESMFUZZ_PIPELINED_READ=1` the copy
    /// to the host is queued on the device's stream now, right behind the work that computes
    /// `t`, and [`PendingRead::finish`] waits for that copy alone, so whatever the host queues
    /// in between (the next batch's forward) keeps the device busy while it waits. Elsewhere
    /// `t` is read here, as [`Self::read`] does.
    pub fn start_read<B: Backend, const D: usize>(t: Tensor<B, D>) -> PendingRead {
        #[cfg(feature = "cuda")]
        if pipelined_read_asked() && crate::model::fusion_op::is_cuda::<B>() {
            return PendingRead(Pending::Copying(cuda::start_read(t)));
        }
        PendingRead(Pending::Done(Self::read(t)))
    }

    fn from_data(data: TensorData) -> Self {
        let data = match data.dtype {
            DType::F32 | DType::F16 | DType::BF16 => data,
            _ => data.convert::<f32>(),
        };
        Self { data }
    }

    /// The tensor's shape.
    pub fn dims(&self) -> &[usize] {
        &self.data.shape
    }

    /// The values, row-major, in their storage type.
    pub fn values(&self) -> Stored<'_> {
        let view = match self.data.dtype {
            DType::F16 => self.data.as_slice().map(Stored::F16),
            DType::BF16 => self.data.as_slice().map(Stored::BF16),
            _ => self.data.as_slice().map(Stored::F32),
        };
        // burn's host buffers are allocated aligned for their dtype, and `from_data` leaves
        // only f32, f16 and bf16.
        view.unwrap_or_else(|e| {
            unreachable!("host data of a float tensor views as its dtype: {e:?}")
        })
    }

    /// The values widened to f32, row-major (in parallel over the host's cores).
    pub fn to_f32(&self) -> Vec<f32> {
        with_stored!(self.values(), values => widened(values))
    }
}

/// Whether `ESMFUZZ_PIPELINED_READ=1` asks [`HostTensor::start_read`] to queue its copy and
/// return (read once). Off by default until timed on a GPU.
pub fn pipelined_read_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var_os("ESMFUZZ_PIPELINED_READ").is_some_and(|v| v == "1"))
}

/// A read [`HostTensor::start_read`] started.
pub struct PendingRead(Pending);

enum Pending {
    Done(HostTensor),
    #[cfg(feature = "cuda")]
    Copying(cuda::Copying),
}

impl PendingRead {
    /// The values, once the copy has landed (waits for it, and for nothing queued after it).
    ///
    /// # Panics
    /// Where the device reports an error, as [`HostTensor::read`] does.
    pub fn finish(self) -> HostTensor {
        match self.0 {
            Pending::Done(read) => read,
            #[cfg(feature = "cuda")]
            Pending::Copying(copying) => HostTensor::from_data(copying.wait()),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;

    use burn::tensor::{Tensor, TensorData, backend::Backend};
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::client::ComputeClient;
    use cubecl::cuda::CudaRuntime;
    use cubecl::server::CopyDescriptor;

    use crate::model::fusion_op::{self, Inner};

    /// A client of `tensor`'s device that lives as long as the process (one per device, made
    /// once, like the kernels' modules): cubecl's read queues the copy when called, but the
    /// future it returns borrows the client it was called on.
    fn process_client(tensor: &CubeTensor<CudaRuntime>) -> &'static ComputeClient<CudaRuntime> {
        type Clients = Vec<(usize, &'static ComputeClient<CudaRuntime>)>;
        static CLIENTS: Mutex<Clients> = Mutex::new(Vec::new());
        let mut clients = CLIENTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ordinal = tensor.device.index;
        if let Some((_, client)) = clients.iter().find(|(o, _)| *o == ordinal) {
            return client;
        }
        let client: &'static _ = Box::leak(Box::new(tensor.client.clone()));
        clients.push((ordinal, client));
        client
    }

    /// A copy to the host queued on the device's stream, with the fence behind it.
    pub struct Copying(Pin<Box<dyn Future<Output = Result<TensorData, String>> + Send>>);

    impl Copying {
        pub fn wait(self) -> TensorData {
            cubecl::future::block_on(self.0)
                .unwrap_or_else(|e| panic!("reading a result from the device failed: {e}"))
        }
    }

    /// Queues `t`'s copy to the host. burn's fusion stream runs what is queued for `t` first
    /// (launches, no wait); cubecl then queues the copy into its pinned staging memory and a
    /// fence behind it, on the same stream, before returning.
    pub fn start_read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Copying {
        let fused = fusion_op::float_primitive(t);
        let client = fused.client.clone();
        let tensor: CubeTensor<CudaRuntime> = client.resolve_tensor_float::<Inner>(fused);
        let tensor = burn_cubecl::kernel::into_contiguous(tensor);
        let shape = tensor.meta.shape().clone();
        let dtype = tensor.dtype;
        let descriptor = CopyDescriptor::new(
            tensor.handle.clone().binding(),
            shape.clone(),
            tensor.meta.strides().clone(),
            tensor.elem_size(),
        );
        let copy = process_client(&tensor).read_tensor_async(vec![descriptor]);
        Copying(Box::pin(async move {
            // `tensor` lives until the copy has landed.
            let bytes = copy.await.map_err(|e| e.to_string());
            drop(tensor);
            let mut bytes = bytes?;
            Ok(TensorData::from_bytes(bytes.remove(0), shape, dtype))
        }))
    }
}

/// `values` widened to f32, chunks in parallel.
fn widened<T: Widen>(values: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(WIDEN_CHUNK)
        .zip(values.par_chunks(WIDEN_CHUNK))
        .for_each(|(dst, src)| T::widen_into(src, dst));
    out
}

/// The values of `t` on the host, widened to f32, in row-major order.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    HostTensor::read(t).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_values_widen_exactly_and_other_dtypes_become_f32() {
        let halves: Vec<f16> = [1.5f32, -0.0, 65504.0, 6e-8, f32::INFINITY]
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let read = HostTensor::from_data(TensorData::new(halves.clone(), [5]));
        assert!(matches!(read.values(), Stored::F16(_)));
        let widened = read.to_f32();
        for (h, w) in halves.iter().zip(&widened) {
            assert_eq!(h.to_f32().to_bits(), w.to_bits());
        }
        let long: Vec<bf16> = (0..3 * WIDEN_CHUNK + 7)
            .map(|i| bf16::from_f32(i as f32 * 0.37 - 5.0))
            .collect();
        let read = HostTensor::from_data(TensorData::new(long.clone(), [long.len()]));
        let widened = read.to_f32();
        assert_eq!(widened.len(), long.len());
        assert!(long.iter().zip(&widened).all(|(b, w)| b.to_f32() == *w));

        let doubles = HostTensor::from_data(TensorData::new(vec![0.1f64, 2.0], [2]));
        assert!(matches!(doubles.values(), Stored::F32(_)));
        assert_eq!(doubles.to_f32(), vec![0.1f64 as f32, 2.0]);
        assert_eq!(doubles.dims(), &[2]);
    }
}
