//! The pooled embedding on the device (`residue_mean.cu`): each sequence's last-layer states
//! averaged over its residue rows on CUDA, so that a batch sends `[sequences, hidden]` f32 to
//! the host instead of its `[rows, hidden]` states, and the host has nothing left to pool.
//!
//! The kernel sums as the host's pooling does (each value widened exactly, summed in f64 in
//! row order, one division and one rounding to f32), so the pooled values are the host's bit
//! for bit (`tests/suite/device_pooling.rs`). It runs as a custom operation in burn's fusion
//! stream on cubecl's stream, like the other kernels ([`super::fusion_op`]). Where it does not
//! run (another backend, a dtype without a kernel, a program that does not load, or
//! `ESMFUZZ_HOST_POOLING=1`, to compare or time the two) the caller pools on the host.

use std::ops::Range;

use burn::tensor::{DType, Tensor, backend::Backend};

/// Whether `ESMFUZZ_HOST_POOLING=1` asks for pooling on the host (read once).
pub fn host_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var_os("ESMFUZZ_HOST_POOLING").is_some_and(|v| v == "1"))
}

/// The kernel's name for a storage dtype.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn kernel_name(dtype: DType) -> Option<String> {
    super::kernel_names::storage_suffix(dtype).map(|suffix| format!("esm_residue_mean_{suffix}"))
}

/// Each sequence's mean over its residue rows (`sequences[s]` without its first and last
/// row; zero where it has none), accumulated in f64 and rounded once to f32, computed on the
/// device when `states` is on esmfuzz's CUDA backend in f32, f16 or bf16 and the kernel
/// loads; `states` back otherwise.
///
/// # Shapes
/// `states: [rows, hidden]`, each of `sequences` a range of its rows -> `[sequences, hidden]`
/// f32
pub fn residue_means<B: Backend>(
    states: Tensor<B, 2>,
    sequences: &[Range<usize>],
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    return cuda::residue_means(states, sequences);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = sequences;
        Err(states)
    }
}

/// The kernel's `ranges` buffer: each sequence's first row and end, when every range lies in
/// `rows` and fits the kernel's 32-bit indices.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn ranges_buffer(sequences: &[Range<usize>], rows: usize) -> Option<Vec<i32>> {
    let mut buffer = Vec::with_capacity(2 * sequences.len());
    for r in sequences {
        if r.start > r.end || r.end > rows {
            return None;
        }
        buffer.push(i32::try_from(r.start).ok()?);
        buffer.push(i32::try_from(r.end).ok()?);
    }
    Some(buffer)
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::ops::Range;

    use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};
    use burn_cubecl::tensor::CubeTensor;
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{FusionRuntime, FusionTensor};
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
    use cubecl::cuda::CudaRuntime;

    use crate::model::fusion_op::{self, Inner, Runtime};
    use crate::model::nvrtc;

    /// Threads per block (`THREADS` in the kernel): one column each.
    const THREADS: usize = 128;

    pub(super) fn residue_means<B: Backend>(
        states: Tensor<B, 2>,
        sequences: &[Range<usize>],
    ) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let [rows, hidden] = states.dims();
        let ranges = super::ranges_buffer(sequences, rows);
        let accepted = fusion_op::is_cuda::<B>()
            && !super::host_asked()
            && !sequences.is_empty()
            && hidden > 0
            && i32::try_from(hidden).is_ok()
            && u32::try_from(sequences.len()).is_ok()
            && ranges.is_some()
            && super::kernel_name(states.dtype()).is_some_and(|name| {
                // The program compiles and loads here (checked once per process).
                let ordinal = fusion_op::ordinal::<B>(&states.device());
                nvrtc::function(ordinal, &nvrtc::RESIDUE_MEAN, &name).is_ok()
            });
        let (true, Some(ranges)) = (accepted, ranges) else {
            return Err(states);
        };
        let len = ranges.len();
        let ranges =
            Tensor::<B, 1, Int>::from_data(TensorData::new(ranges, [len]), &states.device());
        let out = register(
            fusion_op::float_primitive(states),
            fusion_op::int_primitive(ranges),
            sequences.len(),
        );
        Ok(fusion_op::float_tensor(out))
    }

    fn register(
        states: FusionTensor<Runtime>,
        ranges: FusionTensor<Runtime>,
        sequences: usize,
    ) -> FusionTensor<Runtime> {
        let client = states.client.clone();
        let dims = [sequences, states.shape[1]];
        let streams = OperationStreams::with_inputs([&states, &ranges]);
        let out = TensorIr::uninit(client.create_empty_handle(), dims.into(), DType::F32);
        let desc = CustomOpIr::new(
            "esmfuzz_residue_mean",
            &[states.into_ir(), ranges.into_ir()],
            &[out],
        );
        client
            .register(
                streams,
                OperationIr::Custom(desc.clone()),
                ResidueMeanOp { desc },
            )
            .output()
    }

    #[derive(Debug, Clone)]
    struct ResidueMeanOp {
        desc: CustomOpIr,
    }

    impl Operation<Runtime> for ResidueMeanOp {
        fn execute(&self, handles: &mut HandleContainer<<Runtime as FusionRuntime>::FusionHandle>) {
            let ([states, ranges], [out]) = self.desc.as_fixed();
            let states = handles.get_float_tensor::<Inner>(states);
            let ranges = handles.get_int_tensor::<Inner>(ranges);
            let result = launch(states, ranges, out.shape[0])
                .unwrap_or_else(|e| panic!("residue mean kernel: {e}"));
            handles.register_float_tensor::<Inner>(&out.id, result);
        }
    }

    fn launch(
        states: CubeTensor<CudaRuntime>,
        ranges: CubeTensor<CudaRuntime>,
        sequences: usize,
    ) -> Result<CubeTensor<CudaRuntime>, String> {
        let states = burn_cubecl::kernel::into_contiguous(states);
        let ranges = burn_cubecl::kernel::into_contiguous(ranges);
        let hidden = states.meta.shape()[1];
        let dtype = states.dtype;
        let name = super::kernel_name(dtype)
            .ok_or_else(|| format!("no residue mean kernel for {dtype:?}"))?;
        let kernel = nvrtc::function(states.device.index, &nvrtc::RESIDUE_MEAN, &name)?;
        let client = states.client.clone();
        let out = CubeTensor::new_contiguous(
            client.clone(),
            states.device.clone(),
            vec![sequences, hidden].into(),
            client.empty(sequences * hidden * DType::F32.size()),
            DType::F32,
        );
        fusion_op::with_device_pointers(&[&states, &ranges, &out], |pointers, stream| {
            // Parameters in the kernel's order: states, ranges, out, hidden.
            let mut pointers = pointers.to_vec();
            let mut p_hidden = hidden as i32;
            let mut params = fusion_op::pointer_params(&mut pointers);
            params.push((&mut p_hidden as *mut i32).cast());
            let grid = (sequences as u32, hidden.div_ceil(THREADS) as u32, 1);
            // SAFETY: the parameters match `esm_residue_mean_*` (residue_mean.cu); the
            // buffers are held until the launch is enqueued.
            unsafe { nvrtc::launch(kernel, grid, THREADS as u32, stream, &mut params) }
                .map_err(|e| format!("launch failed ({sequences} sequences of {hidden}): {e}"))
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_match_the_programs_instances() {
        let source = include_str!("residue_mean.cu");
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            let name = kernel_name(dtype).unwrap();
            let core = name.strip_prefix("esm_").unwrap();
            assert!(source.contains(&format!("INSTANCE({core},")), "{name}");
        }
        assert_eq!(kernel_name(DType::I32), None);
    }

    #[test]
    fn ranges_outside_the_rows_or_the_kernels_indices_are_refused() {
        assert_eq!(
            ranges_buffer(&[0..3, 3..3, 5..9], 9),
            Some(vec![0, 3, 3, 3, 5, 9])
        );
        assert_eq!(ranges_buffer(&[0..3, 3..10], 9), None);
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = [0..4, 4..2];
        assert_eq!(ranges_buffer(&reversed, 9), None);
        let huge = 1usize << 31;
        assert_eq!(ranges_buffer(&[0..3, 3..huge], huge), None);
    }
}
