//! Matrix products through cuBLAS on burn-cuda's own device buffers: the GEMMs torch itself
//! calls, with the precision of each call stated ([`CublasCompute`]), beside burn's cubek
//! kernels (which compile and autotune per shape; cuBLAS ships its kernels precompiled).
//!
//! The product is a custom operation in burn's fusion stream: when the stream reaches it,
//! the inputs are resolved to cubecl tensors and `cublasGemmStridedBatchedEx` is enqueued on
//! **cubecl's own CUDA stream**, the one its kernels for these buffers run on, as candle
//! does with its kernels and cuBLAS. Stream order is the only synchronisation: no host
//! round trip on the forward path. cubecl-cuda 0.10 keeps that stream private; the vendored
//! copy in `vendor/cubecl-cuda` (see `vendor/README.md`) hands it out with the buffer
//! (`GpuResource::stream`, set by `get_resource` after the stream has been made to wait on
//! every stream that wrote the buffer).
//!
//! `ESMFUZZ_CUBLAS_HOST_SYNC=1` restores the old ordering by host synchronisation (cubecl's
//! stream drained before each product, cuBLAS's synchronised after it): results must be
//! bit-identical both ways, which makes it an ordering check, and its timings show what the
//! round trips cost.
//!
//! cuBLAS is loaded at run time (`libcublas.so.13`, e.g. from the `nvidia-cublas` pip
//! package via `LD_LIBRARY_PATH`); [`available`] says whether it can be.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{DType, Tensor, backend::Backend};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{result as blas, sys};
use cudarc::driver::CudaContext;

use super::fusion_op::{self, Inner, Runtime};
use super::precision::CublasCompute;

/// Whether cuBLAS loads here and a handle can be made on device 0 (probed once).
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: only tries to dlopen the library names cudarc knows.
            if !unsafe { sys::is_culib_present() } {
                return Err(
                    "cuBLAS (libcublas.so.13) was not found: add its folder to LD_LIBRARY_PATH \
                     (pip's nvidia-cublas puts it in site-packages/nvidia/cu13/lib), or use \
                     --gemm burn"
                        .to_string(),
                );
            }
            with_blas(0, |_| ()).map_err(|e| format!("cuBLAS did not start on device 0: {e}"))
        })
        .clone()
}

/// `a @ b` through cuBLAS when `B` is esmfuzz's CUDA backend and the shapes allow a strided
/// batched GEMM; `None` otherwise (the caller then uses burn's matmul).
///
/// # Shapes
/// `a: [..., m, k]`, `b: [..., k, n]` (batch dims equal, or all 1 for `b`) -> `[..., m, n]`
pub fn matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    compute: CublasCompute,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if !fusion_op::is_cuda::<B>()
        || !supported_shapes(&a.dims(), &b.dims())
        || a.dtype() != b.dtype()
    {
        return Err((a, b));
    }
    let out = register(
        fusion_op::float_primitive(a),
        fusion_op::float_primitive(b),
        compute,
    );
    Ok(fusion_op::float_tensor(out))
}

/// Equal batch dims (or `b` unbatched) and no empty dimension.
fn supported_shapes(a: &[usize], b: &[usize]) -> bool {
    let d = a.len();
    if d < 2 || b.len() != d || a[d - 1] != b[d - 2] {
        return false;
    }
    let nonempty = a.iter().chain(b).all(|&x| x > 0);
    let batch_ok = a[..d - 2] == b[..d - 2] || b[..d - 2].iter().all(|&x| x == 1);
    // cuBLAS takes m, n, k and the batch count as i32.
    let batch: usize = a[..d - 2].iter().product();
    let fits = [a[d - 2], a[d - 1], b[d - 1], batch]
        .iter()
        .all(|&x| x <= i32::MAX as usize);
    nonempty && batch_ok && fits
}

/// Registers the product in the fusion stream of `a`'s device.
fn register(
    a: FusionTensor<Runtime>,
    b: FusionTensor<Runtime>,
    compute: CublasCompute,
) -> FusionTensor<Runtime> {
    let client = a.client.clone();
    let d = a.shape.num_dims();
    let mut dims: Vec<usize> = a.shape.iter().copied().collect();
    dims[d - 1] = b.shape[d - 1];
    let streams = OperationStreams::with_inputs([&a, &b]);
    let out = TensorIr::uninit(client.create_empty_handle(), dims.into(), a.dtype);
    let desc = CustomOpIr::new("esmfuzz_cublas_gemm", &[a.into_ir(), b.into_ir()], &[out]);
    client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            CublasGemm { desc, compute },
        )
        .output()
}

#[derive(Debug, Clone)]
struct CublasGemm {
    desc: CustomOpIr,
    compute: CublasCompute,
}

impl Operation<Runtime> for CublasGemm {
    fn execute(&self, handles: &mut HandleContainer<<Runtime as FusionRuntime>::FusionHandle>) {
        let ([a, b], [out]) = self.desc.as_fixed();
        let a = handles.get_float_tensor::<Inner>(a);
        let b = handles.get_float_tensor::<Inner>(b);
        let product = gemm(a, b, self.compute);
        handles.register_float_tensor::<Inner>(&out.id, product);
    }
}

/// One operand as cuBLAS sees it: row-major `[batch, rows, cols]` either stored row-major
/// (`transposed == false`, leading dimension = row stride) or column-major.
struct Operand {
    tensor: CubeTensor<CudaRuntime>,
    transposed: bool,
    leading: usize,
    /// Elements between consecutive matrices; 0 when every batch dim is 1, which is how a
    /// `b` broadcast over `a`'s batch is read.
    batch_stride: usize,
}

impl Operand {
    /// Describes `tensor` without a copy when its strides allow, else after making it
    /// contiguous.
    fn new(tensor: CubeTensor<CudaRuntime>) -> Self {
        let (tensor, (transposed, leading, batch_stride)) = match Self::describe(&tensor) {
            Some(layout) => (tensor, layout),
            None => {
                let tensor = burn_cubecl::kernel::into_contiguous(tensor);
                let layout = Self::describe(&tensor)
                    .unwrap_or_else(|| unreachable!("a contiguous tensor is row-major"));
                (tensor, layout)
            }
        };
        Self {
            tensor,
            transposed,
            leading,
            batch_stride,
        }
    }

    fn describe(tensor: &CubeTensor<CudaRuntime>) -> Option<(bool, usize, usize)> {
        let shape: Vec<usize> = tensor.meta.shape().iter().copied().collect();
        let strides: Vec<usize> = tensor.meta.strides().iter().copied().collect();
        let d = shape.len();
        let (rows, cols) = (shape[d - 2], shape[d - 1]);
        let (row_stride, col_stride) = (strides[d - 2], strides[d - 1]);
        // The batch dims must flatten to one stride (size-1 dims are free).
        let mut batch_stride = None;
        let mut expected: Option<usize> = None;
        for i in (0..d - 2).rev() {
            if shape[i] == 1 {
                continue;
            }
            match expected {
                None => batch_stride = Some(strides[i]),
                Some(e) if e != strides[i] => return None,
                Some(_) => {}
            }
            expected = Some(strides[i] * shape[i]);
        }
        let batch_stride = batch_stride.unwrap_or(0);
        if (col_stride == 1 || cols == 1) && row_stride >= cols.max(1) {
            Some((false, row_stride.max(cols), batch_stride))
        } else if (row_stride == 1 || rows == 1) && col_stride >= rows.max(1) {
            Some((true, col_stride.max(rows), batch_stride))
        } else {
            None
        }
    }
}

/// Whether products are ordered by host synchronisation (`ESMFUZZ_CUBLAS_HOST_SYNC=1`, see
/// the module docs) instead of by cubecl's stream alone; read once.
fn host_sync() -> bool {
    static HOST_SYNC: OnceLock<bool> = OnceLock::new();
    *HOST_SYNC.get_or_init(|| {
        std::env::var("ESMFUZZ_CUBLAS_HOST_SYNC").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// The product on cubecl tensors (see the module docs for the ordering).
fn gemm(
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    compute: CublasCompute,
) -> CubeTensor<CudaRuntime> {
    let a = Operand::new(a);
    let b = Operand::new(b);
    let a_shape: Vec<usize> = a.tensor.meta.shape().iter().copied().collect();
    let b_shape: Vec<usize> = b.tensor.meta.shape().iter().copied().collect();
    let d = a_shape.len();
    let (m, k, n) = (a_shape[d - 2], a_shape[d - 1], b_shape[d - 1]);
    let batch: usize = a_shape[..d - 2].iter().product();
    let dtype = a.tensor.dtype;
    let (data_type, compute_type) = types(dtype, compute);

    let client = a.tensor.client.clone();
    let device = a.tensor.device.clone();
    let mut out_shape = a_shape.clone();
    out_shape[d - 1] = n;
    let out_handle = client.empty(batch * m * n * dtype.size());
    let out = CubeTensor::new_contiguous(
        client.clone(),
        device.clone(),
        out_shape.into(),
        out_handle,
        dtype,
    );

    let (alpha, beta) = (1.0f32, 0.0f32);
    let op = |transposed: bool| {
        if transposed {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let int = |x: usize| i32::try_from(x).map_err(|_| format!("GEMM dimension {x} over i32"));
    let tensors = [&a.tensor, &b.tensor, &out];
    let enqueued = fusion_op::with_device_pointers(&tensors, |pointers, stream| {
        let (n, m, k, batch) = (int(n)?, int(m)?, int(k)?, int(batch)?);
        let (pa, pb, pc) = (
            pointers[0] as *const c_void,
            pointers[1] as *const c_void,
            pointers[2] as *mut c_void,
        );
        // cubecl's stream for this thread: it already waits on whatever wrote `a` and `b`. A
        // null one (a cubecl-cuda without the vendored patch) would be the legacy default
        // stream, unordered with cubecl's non-blocking streams: order by the host then.
        let host_sync = host_sync() || stream.is_null();
        if host_sync {
            // Everything cubecl queued (the inputs) is done before cuBLAS reads them.
            cubecl::future::block_on(client.sync())
                .map_err(|e| format!("CUDA stream failed before a cuBLAS product: {e:?}"))?;
        }
        with_blas(device.index, |blas| {
            // SAFETY: `stream` is a live stream of the context the handle was made in
            // (cubecl allocates in the device's primary context, as `with_blas` does).
            unsafe { blas::set_stream(blas.handle, stream as _) }
                .map_err(|e| format!("cuBLAS could not use cubecl's stream: {e:?}"))?;
            // Row-major C = A B is column-major C^T = B^T A^T: cuBLAS's "A" is our b.
            // SAFETY: the pointers are live device buffers of the shapes and strides given,
            // held until the product is enqueued; after that, any reuse is enqueued on the
            // same stream, behind the product.
            unsafe {
                blas::gemm_strided_batched_ex(
                    blas.handle,
                    op(b.transposed),
                    op(a.transposed),
                    n,
                    m,
                    k,
                    (&alpha as *const f32).cast(),
                    pb,
                    data_type,
                    int(b.leading)?,
                    b.batch_stride as i64,
                    pa,
                    data_type,
                    int(a.leading)?,
                    a.batch_stride as i64,
                    (&beta as *const f32).cast(),
                    pc,
                    data_type,
                    n,
                    i64::from(m) * i64::from(n),
                    batch,
                    compute_type,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| format!("cuBLAS GEMM failed ({m}x{k} @ {k}x{n}, batch {batch}): {e:?}"))?;
            if host_sync {
                // SAFETY: a live stream (see above).
                unsafe { cudarc::driver::result::stream::synchronize(stream as _) }
                    .map_err(|e| format!("CUDA stream failed after a cuBLAS product: {e:?}"))?;
            }
            Ok(())
        })?
    });
    enqueued.unwrap_or_else(|e| panic!("{e}"));
    out
}

/// cuBLAS data and compute types for a storage dtype and a compute mode.
fn types(dtype: DType, compute: CublasCompute) -> (sys::cudaDataType, sys::cublasComputeType_t) {
    let data = match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        other => panic!("cuBLAS GEMM on {other:?} tensors is not supported"),
    };
    let compute = match compute {
        CublasCompute::Fp32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        CublasCompute::Tf32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
    };
    (data, compute)
}

/// A cuBLAS handle in the device's primary context (each product sets its stream).
struct Blas {
    context: Arc<CudaContext>,
    handle: sys::cublasHandle_t,
}

// SAFETY: the handle is used by one thread at a time (behind the mutex below).
unsafe impl Send for Blas {}

/// Runs `f` with device `ordinal`'s handle, made on first use; the context is made current
/// on the calling thread first.
fn with_blas<T>(ordinal: usize, f: impl FnOnce(&Blas) -> T) -> Result<T, String> {
    static HANDLES: OnceLock<Mutex<HashMap<usize, Blas>>> = OnceLock::new();
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let blas = match handles.entry(ordinal) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let context = CudaContext::new(ordinal).map_err(|e| format!("{e:?}"))?;
            context.bind_to_thread().map_err(|e| format!("{e:?}"))?;
            let handle = blas::create_handle().map_err(|e| format!("{e:?}"))?;
            e.insert(Blas { context, handle })
        }
    };
    blas.context
        .bind_to_thread()
        .map_err(|e| format!("{e:?}"))?;
    Ok(f(blas))
}
