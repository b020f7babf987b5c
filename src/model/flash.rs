//! esmfuzz's fused attention on CUDA: one varlen flash-attention kernel per layer
//! (`flash_attention.cu`, compiled once per process with NVRTC) that reads the stacked q, k, v
//! projections of the token stream and writes each query's context back in token order. A
//! pre-pass adds the qkv bias and rotates and scales q and k once per row (eight pairs a
//! thread for the half types where the buffers allow; under `ESMFUZZ_FLASH_ROTATES_Q=1` q is
//! left to the flash kernel, which adds its bias, rotates and scales it as it loads the query
//! tile, the same values: [`launches`]). No
//! `[batch, heads, L, L]` scores in memory, no gathers into attention groups and back, one
//! launch for every sequence of a batch (packed or padded).
//!
//! It runs as a custom operation in burn's fusion stream, enqueued on cubecl's own stream like
//! the cuBLAS products ([`super::cublas`]). f16 and bf16 storage on tensor cores (mma.sync),
//! f32 with f32 FMA (true FP32, no TF32); head dims 16, 32 and 64 (ESM-2 8M, 150M, 650M, 3B);
//! anything else runs the composed attention.
//! [`SeqTable`] (the sequences as row ranges) is plain host data, built on every backend.

use super::blocks::HostBlocks;

/// Positions the RoPE table of a fused layer covers: ESM-2 takes at most 1,024 tokens (1,022
/// residues, BOS, EOS), and CUDA rounds blocks up to a multiple of 64.
pub const ROPE_POSITIONS: usize = 1024;

/// Query rows per kernel tile (`BQ` in the kernel).
pub const TILE_ROWS: usize = 64;

/// The sequences of a token stream as row ranges: sequence `s` has queries at rows
/// `q_start[s] .. q_start[s] + q_len[s]` and keys at rows `q_start[s] .. q_start[s] +
/// k_len[s]` (`k_len < q_len` in a padded block, whose padding rows are queries too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqTable {
    pub q_start: Vec<i32>,
    pub q_len: Vec<i32>,
    pub k_len: Vec<i32>,
}

impl SeqTable {
    /// The table of a padded batch (one group of blocks in stream order, padding a suffix of
    /// each block) or of a packed stream (`cu_seqlens`); `None` for any other layout (fault
    /// layouts, blocks rounded by the model), which then runs composed attention.
    pub fn of_blocks(layout: &HostBlocks) -> Option<SeqTable> {
        if let Some(packing) = &layout.packing {
            let cu = &packing.cu_seqlens;
            let q_len: Vec<i32> = cu.windows(2).map(|w| w[1] - w[0]).collect();
            return Some(SeqTable {
                q_start: cu[..cu.len().saturating_sub(1)].to_vec(),
                k_len: q_len.clone(),
                q_len,
            });
        }
        let [group] = layout.groups.as_slice() else {
            return None;
        };
        if layout.scatter.is_some() || group.gather.is_some() || group.position_rows != 1 {
            return None;
        }
        let len = group.block_len;
        let mut table = SeqTable {
            q_start: Vec::with_capacity(group.batch),
            q_len: Vec::with_capacity(group.batch),
            k_len: Vec::with_capacity(group.batch),
        };
        for block in group.key_padding.chunks(len.max(1)) {
            let keys = block.iter().take_while(|&&pad| !pad).count();
            // Padding must be a suffix, with at least one key, and positions 0..len.
            if keys == 0 || block[keys..].iter().any(|&pad| !pad) {
                return None;
            }
            table.q_start.push((table.q_start.len() * len) as i32);
            table.q_len.push(len as i32);
            table.k_len.push(keys as i32);
        }
        let positions_ok = group
            .positions
            .iter()
            .enumerate()
            .all(|(i, &p)| p as usize == i);
        (positions_ok && table.q_start.len() == group.batch).then_some(table)
    }

    /// The longest query range.
    pub fn longest(&self) -> usize {
        self.q_len.iter().copied().max().unwrap_or(0).max(0) as usize
    }

    /// The kernels' `meta` buffer: per tile its sequence and first query row, then `q_start`,
    /// `q_len`, `k_len`, then each row's RoPE position (its offset in its sequence); and the
    /// tile count.
    pub fn meta(&self) -> (Vec<i32>, usize) {
        let mut tile_seq = Vec::new();
        let mut tile_row0 = Vec::new();
        for (s, &len) in self.q_len.iter().enumerate() {
            for row0 in (0..len.max(0) as usize).step_by(TILE_ROWS) {
                tile_seq.push(s as i32);
                tile_row0.push(row0 as i32);
            }
        }
        let tiles = tile_seq.len();
        let mut meta = tile_seq;
        meta.extend(tile_row0);
        meta.extend(&self.q_start);
        meta.extend(&self.q_len);
        meta.extend(&self.k_len);
        for &len in &self.q_len {
            meta.extend(0..len.max(0));
        }
        (meta, tiles)
    }
}

/// RoPE table of one layer for the kernel, `[ROPE_POSITIONS, head_dim]`: row `p` holds
/// `cos(p f_j)` then `sin(p f_j)` for the `head_dim / 2` frequencies `f_j`, computed in f32
/// exactly as the composed path's tables ([`super::rotary::tables`]).
pub fn rope_table(inv_freq: &[f32]) -> Vec<f32> {
    let positions: Vec<u32> = (0..ROPE_POSITIONS as u32).collect();
    let (cos, sin) = super::rotary::tables(inv_freq, &positions);
    let (half, head_dim) = (inv_freq.len(), 2 * inv_freq.len());
    let mut table = Vec::with_capacity(ROPE_POSITIONS * head_dim);
    for p in 0..ROPE_POSITIONS {
        // The composed tables repeat the frequencies over both halves; one half of each.
        table.extend_from_slice(&cos[p * head_dim..p * head_dim + half]);
        table.extend_from_slice(&sin[p * head_dim..p * head_dim + half]);
    }
    table
}

/// Whether the kernel exists for a head dim.
pub fn supports_head_dim(head_dim: usize) -> bool {
    matches!(head_dim, 16 | 32 | 64)
}

/// Whether the rows of one sequence of a `[rows, width]` buffer of `element_bytes` elements
/// lie within the 32-bit byte offsets the flash kernel's loads take from the sequence's first
/// row (`load_rows_async`): up to [`ROPE_POSITIONS`] rows, plus a tile of prefetch past the
/// last key and the unused step after it. ESM-2 15B in f32 (width 15,360) needs 71 MB.
pub fn sequence_offsets_fit(width: usize, element_bytes: usize) -> bool {
    let span = (ROPE_POSITIONS + 2 * TILE_ROWS)
        .checked_mul(width)
        .and_then(|n| n.checked_mul(element_bytes));
    span.is_some_and(|bytes| u32::try_from(bytes).is_ok())
}

/// Whether the flash kernel exists for a storage dtype: f16 and bf16 (tensor cores), f32
/// (f32 FMA: true FP32).
pub fn supports_dtype(dtype: burn::tensor::DType) -> bool {
    use burn::tensor::DType;
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32)
}

/// Whether the flash kernel computes attention under `plan` for `head_dim`: fused attention
/// on CUDA, a storage dtype and a head dim the kernel exists for.
pub fn runs_for(plan: &super::ComputePlan, head_dim: usize) -> bool {
    plan.attention == super::AttentionKernel::Fused
        && plan.backend == crate::backend::BackendKind::Cuda
        && supports_dtype(plan.dtype())
        && supports_head_dim(head_dim)
}

#[cfg(feature = "cuda")]
pub use cuda::attention;

/// Checks, before anything runs, that the flash kernel a plan will use compiles and loads on
/// this machine (NVRTC, CUDA headers), so a failure is one clear error instead of a panic
/// inside burn's fusion stream. Plans that do not use the kernel pass.
pub fn preflight(
    plan: &super::ComputePlan,
    config: &super::EsmConfig,
) -> Result<(), FlashUnavailable> {
    let head_dim = config.head_dim();
    if !runs_for(plan, head_dim) {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    return {
        // Aligned buffers' pair, and the one of unaligned buffers.
        let [aligned, unaligned] = [true, false].map(|a| launches(plan.dtype(), a));
        [
            aligned.prepass,
            aligned.flash,
            unaligned.prepass,
            unaligned.flash,
        ]
    }
    .iter()
    .try_for_each(|prefix| cuda::kernel(0, prefix, plan.dtype(), head_dim).map(|_| ()))
    .map_err(FlashUnavailable);
    #[cfg(not(feature = "cuda"))]
    Ok(())
}

/// Whether `ESMFUZZ_SCALAR_PREPASS=1` asks for the one-pair-a-thread pre-pass everywhere
/// (read once; both pre-passes give the same values bit for bit: `gpu_run.sh same` compares
/// them, `switches` times them).
pub fn scalar_prepass_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var_os("ESMFUZZ_SCALAR_PREPASS").is_some_and(|v| v == "1"))
}

/// Whether `ESMFUZZ_FLASH_WARP_ROWS=32` asks for the flash kernel with 32 query rows a warp
/// (read once; the same values bit for bit: `gpu_run.sh same` compares them, `switches` times
/// them).
pub fn wide_warps_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var_os("ESMFUZZ_FLASH_WARP_ROWS").is_some_and(|v| v == "32"))
}

/// Whether `ESMFUZZ_FLASH_ROTATES_Q=1` asks for the flash kernel that rotates q itself
/// (`esm_flash_rq` after `esm_rope_kv_v8`; read once). It computes the same values as the
/// default pair by construction, but no GPU has run it yet (session 23 had no device time
/// left): it stays behind the switch until `gpu_run.sh same` and `base` show every bit equal
/// and `switches` shows it faster.
pub fn flash_rotates_q_asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var_os("ESMFUZZ_FLASH_ROTATES_Q").is_some_and(|v| v == "1"))
}

/// The fused attention's two launches for one storage dtype: a pre-pass that adds the qkv
/// bias and rotates, then the flash kernel. Every pair gives the same values bit for bit.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Launches {
    /// The pre-pass's kernel prefix.
    prepass: &'static str,
    /// Rotated pairs a pre-pass thread takes.
    pairs_per_thread: usize,
    /// The flash kernel's prefix and its threads a block.
    flash: &'static str,
    flash_threads: u32,
    /// Whether the flash kernel reads q from the projections and rotates it itself (the
    /// pre-pass then writes only k and v), taking the projections, the bias, the RoPE table
    /// and the scale as four more parameters.
    flash_rotates_q: bool,
}

/// The launches for `dtype`, where the pre-pass's buffers are 16-byte `aligned` or not.
/// - f16 and bf16, aligned: `esm_rope_qk_v8` (q, k and v, eight pairs a thread in 16-byte
///   accesses) and `esm_flash` (4 warps of 16 query rows a tile).
///   `ESMFUZZ_FLASH_ROTATES_Q=1` asks for `esm_rope_kv_v8` (k and v only) and `esm_flash_rq`
///   (q rotated as the kernel loads it: a third less memory moved by the pre-pass);
///   `ESMFUZZ_FLASH_WARP_ROWS=32` for `esm_flash_w32` (2 warps of 32 query rows a tile);
///   `ESMFUZZ_SCALAR_PREPASS=1` for `esm_rope_qk` (one pair a thread).
/// - Otherwise (f32, unaligned buffers): `esm_rope_qk` and `esm_flash` (4 warps of 16 rows).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn launches(dtype: burn::tensor::DType, aligned: bool) -> Launches {
    use burn::tensor::DType;
    let half = matches!(dtype, DType::F16 | DType::BF16);
    let vector = half && aligned && !scalar_prepass_asked();
    let (flash, flash_threads) = if half && wide_warps_asked() {
        ("esm_flash_w32", 64)
    } else {
        ("esm_flash", 128)
    };
    let rotates_q = vector && flash == "esm_flash" && flash_rotates_q_asked();
    let (prepass, pairs_per_thread) = match (vector, rotates_q) {
        (true, true) => ("esm_rope_kv_v8", 8),
        (true, false) => ("esm_rope_qk_v8", 8),
        (false, _) => ("esm_rope_qk", 1),
    };
    Launches {
        prepass,
        pairs_per_thread,
        flash: if rotates_q { "esm_flash_rq" } else { flash },
        flash_threads,
        flash_rotates_q: rotates_q,
    }
}

/// The flash kernel could not be compiled or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--attention fused: esmfuzz's flash-attention kernel is unavailable: {0}")]
pub struct FlashUnavailable(pub String);

#[cfg(feature = "cuda")]
mod cuda {
    use std::ffi::c_void;

    use burn::tensor::{DType, Int, Tensor, backend::Backend};
    use burn_cubecl::tensor::CubeTensor;
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{FusionRuntime, FusionTensor};
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
    use cubecl::cuda::CudaRuntime;

    use crate::model::fusion_op::{self, Inner, Runtime};
    use crate::model::nvrtc::{self, Function};

    /// Contexts of `qkv + bias`'s rows through the kernels (the bias added by the pre-pass,
    /// rounded as the composed add rounds), or `qkv` back, without the bias, when `B` is not
    /// the CUDA backend or the dtype/head dim has no kernel.
    ///
    /// # Shapes
    /// `qkv: [rows, 3 hidden]` (q | k | v, no bias, unrotated, unscaled), `bias: [3 hidden]`
    /// of `qkv`'s dtype, `rope: [ROPE_POSITIONS, head_dim]` f32,
    /// `meta: [2 tiles + 3 sequences + rows]` -> `[rows, hidden]`
    pub fn attention<B: Backend>(
        qkv: Tensor<B, 2>,
        bias: &Tensor<B, 1>,
        rope: &Tensor<B, 2>,
        meta: &Tensor<B, 1, Int>,
        tiles: usize,
        heads: usize,
    ) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let [_, width] = qkv.dims();
        let head_dim = width / 3 / heads.max(1);
        if !fusion_op::is_cuda::<B>()
            || !super::supports_dtype(qkv.dtype())
            || !super::supports_head_dim(head_dim)
            || !super::sequence_offsets_fit(width, qkv.dtype().size())
            || bias.dtype() != qkv.dtype()
            || bias.dims() != [width]
            || tiles == 0
        {
            return Err(qkv);
        }
        let out = register(
            fusion_op::float_primitive(qkv),
            fusion_op::float_primitive(bias.clone()),
            fusion_op::float_primitive(rope.clone()),
            fusion_op::int_primitive(meta.clone()),
            tiles,
            heads,
        );
        Ok(fusion_op::float_tensor(out))
    }

    fn register(
        qkv: FusionTensor<Runtime>,
        bias: FusionTensor<Runtime>,
        rope: FusionTensor<Runtime>,
        meta: FusionTensor<Runtime>,
        tiles: usize,
        heads: usize,
    ) -> FusionTensor<Runtime> {
        let client = qkv.client.clone();
        let dims = [qkv.shape[0], qkv.shape[1] / 3];
        let streams = OperationStreams::with_inputs([&qkv, &bias, &rope, &meta]);
        let out = TensorIr::uninit(client.create_empty_handle(), dims.into(), qkv.dtype);
        let desc = CustomOpIr::new(
            "esmfuzz_flash_attention",
            &[
                qkv.into_ir(),
                bias.into_ir(),
                rope.into_ir(),
                meta.into_ir(),
            ],
            &[out],
        );
        client
            .register(
                streams,
                OperationIr::Custom(desc.clone()),
                FlashOp { desc, tiles, heads },
            )
            .output()
    }

    #[derive(Debug, Clone)]
    struct FlashOp {
        desc: CustomOpIr,
        tiles: usize,
        heads: usize,
    }

    impl Operation<Runtime> for FlashOp {
        fn execute(&self, handles: &mut HandleContainer<<Runtime as FusionRuntime>::FusionHandle>) {
            let ([qkv, bias, rope, meta], [out]) = self.desc.as_fixed();
            let qkv = handles.get_float_tensor::<Inner>(qkv);
            let bias = handles.get_float_tensor::<Inner>(bias);
            let rope = handles.get_float_tensor::<Inner>(rope);
            let meta = handles.get_int_tensor::<Inner>(meta);
            let result = launch(qkv, bias, rope, meta, self.tiles, self.heads)
                .unwrap_or_else(|e| panic!("fused attention kernel: {e}"));
            handles.register_float_tensor::<Inner>(&out.id, result);
        }
    }

    fn launch(
        qkv: CubeTensor<CudaRuntime>,
        bias: CubeTensor<CudaRuntime>,
        rope: CubeTensor<CudaRuntime>,
        meta: CubeTensor<CudaRuntime>,
        tiles: usize,
        heads: usize,
    ) -> Result<CubeTensor<CudaRuntime>, String> {
        let qkv = burn_cubecl::kernel::into_contiguous(qkv);
        let bias = burn_cubecl::kernel::into_contiguous(bias);
        let rope = burn_cubecl::kernel::into_contiguous(rope);
        let meta = burn_cubecl::kernel::into_contiguous(meta);
        let shape: Vec<usize> = qkv.meta.shape().iter().copied().collect();
        let (rows, width) = (shape[0], shape[1]);
        let hidden = width / 3;
        let head_dim = hidden / heads;
        let dtype = qkv.dtype;
        // meta: 2 per tile, 3 per sequence, 1 per row.
        let sequences = (meta.meta.shape()[0] - 2 * tiles - rows) / 3;
        let client = qkv.client.clone();
        let device = qkv.device.clone();
        let out = CubeTensor::new_contiguous(
            client.clone(),
            device.clone(),
            vec![rows, hidden].into(),
            client.empty(rows * hidden * dtype.size()),
            dtype,
        );
        // Written by the pre-pass, read by the flash kernel: k and v with their bias, k
        // rotated; q with its bias, rotated and scaled, unless the flash kernel rotates q
        // itself (its columns are then left unwritten).
        let prepared = CubeTensor::new_contiguous(
            client.clone(),
            device.clone(),
            vec![rows, 3 * hidden].into(),
            client.empty(rows * 3 * hidden * dtype.size()),
            dtype,
        );
        let tensors = [&qkv, &bias, &rope, &meta, &out, &prepared];
        fusion_op::with_device_pointers(&tensors, |pointers, stream| {
            let [
                mut p_qkv,
                mut p_bias,
                mut p_rope,
                mut p_meta,
                mut p_out,
                mut p_prepared,
            ] = <[u64; 6]>::try_from(pointers).map_err(|_| "six operands".to_string())?;
            let aligned = [p_qkv, p_bias, p_prepared, p_rope]
                .iter()
                .all(|p| p % 16 == 0);
            let launches = super::launches(dtype, aligned);
            let prepass = kernel(device.index, launches.prepass, dtype, head_dim)?;
            let flash = kernel(device.index, launches.flash, dtype, head_dim)?;
            let mut p_rows = i32::try_from(rows).map_err(|_| "too many rows")?;
            let mut p_hidden = hidden as i32;
            let mut p_row_pos = p_meta + (4 * (2 * tiles + 3 * sequences)) as u64;
            let mut p_tiles = tiles as i32;
            let mut p_sequences = sequences as i32;
            let mut scale = (head_dim as f32).powf(-0.5);
            // The pre-passes (qkv, bias, rows, hidden, prepared, row_pos, rope, scale).
            let mut rope_params: Vec<*mut c_void> = vec![
                (&mut p_qkv as *mut u64).cast(),
                (&mut p_bias as *mut u64).cast(),
                (&mut p_rows as *mut i32).cast(),
                (&mut p_hidden as *mut i32).cast(),
                (&mut p_prepared as *mut u64).cast(),
                (&mut p_row_pos as *mut u64).cast(),
                (&mut p_rope as *mut u64).cast(),
                (&mut scale as *mut f32).cast(),
            ];
            // The flash kernel (prepared, hidden, out, meta, tiles, sequences), and where it
            // rotates q itself (qkv, bias, rope, scale).
            let mut flash_params: Vec<*mut c_void> = vec![
                (&mut p_prepared as *mut u64).cast(),
                (&mut p_hidden as *mut i32).cast(),
                (&mut p_out as *mut u64).cast(),
                (&mut p_meta as *mut u64).cast(),
                (&mut p_tiles as *mut i32).cast(),
                (&mut p_sequences as *mut i32).cast(),
            ];
            if launches.flash_rotates_q {
                flash_params.extend([
                    (&mut p_qkv as *mut u64).cast::<c_void>(),
                    (&mut p_bias as *mut u64).cast(),
                    (&mut p_rope as *mut u64).cast(),
                    (&mut scale as *mut f32).cast(),
                ]);
            }
            // One pre-pass thread per rotated pair (j, j + head_dim / 2) of a row and head, or
            // per eight of them.
            let threads = rows * hidden / 2 / launches.pairs_per_thread;
            let rope_grid = u32::try_from(threads.div_ceil(256)).map_err(|_| "too many rows")?;
            let grid = (
                u32::try_from(tiles).map_err(|_| "too many tiles")?,
                heads as u32,
                1,
            );
            // SAFETY: the parameters match the kernels' signatures (flash_attention.cu); the
            // buffers are live (held until the launches are enqueued, after which cubecl
            // reuses them only behind them on the same stream).
            unsafe { nvrtc::launch(prepass, (rope_grid, 1, 1), 256, stream, &mut rope_params) }
                .map_err(|e| format!("RoPE launch failed ({rows} rows): {e}"))?;
            let threads = launches.flash_threads;
            // SAFETY: as above.
            unsafe { nvrtc::launch(flash, grid, threads, stream, &mut flash_params) }
                .map_err(|e| format!("launch failed ({tiles} tiles x {heads} heads): {e}"))
        })?;
        Ok(out)
    }

    /// Kernel `prefix` (`esm_rope_qk`, `esm_rope_qk_v8`, `esm_rope_kv_v8`, `esm_flash`,
    /// `esm_flash_rq`, `esm_flash_w32`) for
    /// `dtype` and `head_dim` on device `ordinal`.
    pub(super) fn kernel(
        ordinal: usize,
        prefix: &str,
        dtype: DType,
        head_dim: usize,
    ) -> Result<Function, String> {
        let dtype = super::super::kernel_names::storage_suffix(dtype)
            .ok_or_else(|| format!("no kernel for {dtype:?}"))?;
        nvrtc::function(
            ordinal,
            &nvrtc::FLASH,
            &format!("{prefix}_{dtype}_hd{head_dim}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_esm2_width_fits_the_kernels_32_bit_offsets_and_an_absurd_one_does_not() {
        // qkv widths (3 x hidden) of ESM-2 8M .. 15B, f32 (the widest elements).
        for hidden in [320, 480, 640, 1280, 2560, 5120] {
            assert!(sequence_offsets_fit(3 * hidden, 4), "hidden {hidden}");
        }
        assert!(!sequence_offsets_fit(3 * (1 << 20), 2));
        assert!(!sequence_offsets_fit(usize::MAX, 2));
    }

    #[test]
    fn a_padded_batch_is_one_sequence_per_block_with_its_real_keys() {
        let pad = |real: usize, len: usize| (0..len).map(move |i| i >= real);
        let key_padding: Vec<bool> = pad(3, 8).chain(pad(8, 8)).chain(pad(1, 8)).collect();
        let table = SeqTable::of_blocks(&HostBlocks::padded(3, 8, key_padding)).unwrap();
        assert_eq!(table.q_start, [0, 8, 16]);
        assert_eq!(table.q_len, [8, 8, 8]);
        assert_eq!(table.k_len, [3, 8, 1]);
        let (meta, tiles) = table.meta();
        assert_eq!(tiles, 3);
        assert_eq!(&meta[..15], [0, 1, 2, 0, 0, 0, 0, 8, 16, 8, 8, 8, 3, 8, 1]);
        // Then each row's position in its block.
        let positions: Vec<i32> = (0..3).flat_map(|_| 0..8).collect();
        assert_eq!(&meta[15..], positions.as_slice());
    }

    #[test]
    fn a_packed_stream_is_its_cu_seqlens_and_long_sequences_take_several_tiles() {
        let layout = HostBlocks::packed(&[0, 3, 133, 140], 4096);
        let table = SeqTable::of_blocks(&layout).unwrap();
        assert_eq!(table.q_start, [0, 3, 133]);
        assert_eq!(table.q_len, [3, 130, 7]);
        assert_eq!(table.k_len, table.q_len);
        let (meta, tiles) = table.meta();
        // 130 rows take three tiles of 64.
        assert_eq!(tiles, 5);
        assert_eq!(&meta[..5], &[0, 1, 1, 1, 2]);
        assert_eq!(&meta[5..10], &[0, 0, 64, 128, 0]);
        assert_eq!(meta.len(), 2 * 5 + 3 * 3 + 140);
        assert_eq!(&meta[19 + 3..19 + 6], &[0, 1, 2]);
        assert_eq!(table.longest(), 130);
    }

    #[test]
    fn layouts_the_kernel_cannot_take_are_refused() {
        // Padding before a real key, an empty block, blocks rounded by the model.
        let holes = vec![false, true, false, true];
        assert_eq!(SeqTable::of_blocks(&HostBlocks::padded(1, 4, holes)), None);
        let empty = vec![true; 4];
        assert_eq!(SeqTable::of_blocks(&HostBlocks::padded(1, 4, empty)), None);
        let rounded = HostBlocks::padded(1, 3, vec![false; 3]).with_block_multiple(3, 4);
        assert_eq!(SeqTable::of_blocks(&rounded), None);
    }

    #[test]
    fn only_aligned_half_types_take_the_vector_prepass_and_every_kernel_named_exists() {
        use burn::tensor::DType;
        let source = include_str!("flash_attention.cu");
        // What the switches this process was started with ask for.
        let scalar = scalar_prepass_asked();
        let wide = wide_warps_asked();
        let rotates_q = !scalar && !wide && flash_rotates_q_asked();
        for dtype in [DType::F16, DType::BF16] {
            let aligned = launches(dtype, true);
            let expected_prepass = match (scalar, rotates_q) {
                (true, _) => "esm_rope_qk",
                (false, true) => "esm_rope_kv_v8",
                (false, false) => "esm_rope_qk_v8",
            };
            assert_eq!(aligned.prepass, expected_prepass);
            assert_eq!(aligned.pairs_per_thread, if scalar { 1 } else { 8 });
            assert_eq!(aligned.flash_rotates_q, rotates_q);
            let expected_flash = match (wide, rotates_q) {
                (true, _) => ("esm_flash_w32", 64),
                (false, true) => ("esm_flash_rq", 128),
                (false, false) => ("esm_flash", 128),
            };
            assert_eq!((aligned.flash, aligned.flash_threads), expected_flash);
            // Unaligned buffers: the scalar pre-pass, q rotated there.
            let unaligned = launches(dtype, false);
            assert_eq!(
                (unaligned.prepass, unaligned.pairs_per_thread),
                ("esm_rope_qk", 1)
            );
            assert!(!unaligned.flash_rotates_q);
            assert_eq!(
                unaligned.flash,
                if wide { "esm_flash_w32" } else { "esm_flash" }
            );
        }
        for aligned in [true, false] {
            let f32 = launches(DType::F32, aligned);
            assert_eq!(
                (f32.prepass, f32.flash, f32.flash_threads),
                ("esm_rope_qk", "esm_flash", 128)
            );
            assert!(!f32.flash_rotates_q);
        }
        // The launcher's threads are the kernels' own.
        assert!(source.contains("#define THREADS (WARPS * 32)"));
        assert!(source.contains("#define WARPS 4 "));
        assert!(source.contains("__launch_bounds__(FlashShape<2>::THREADS_PER_TILE)"));
        let instances = [
            ("VECTOR_INSTANCE", &["f16", "bf16"][..]),
            ("INSTANCE", &["f16", "bf16", "f32"][..]),
        ];
        for (instance, names) in instances {
            for name in names {
                for hd in [16, 32, 64] {
                    let line = format!("\n{instance}({name}_hd{hd},");
                    assert!(source.contains(&line), "{line:?}");
                }
            }
        }
        for prefix in [
            "esm_rope_qk_v8",
            "esm_rope_kv_v8",
            "esm_rope_qk",
            "esm_flash",
            "esm_flash_rq",
            "esm_flash_w32",
        ] {
            assert!(source.contains(&format!("{prefix}_##SUFFIX(")), "{prefix}");
        }
    }

    #[test]
    fn the_rope_table_holds_each_positions_cos_then_sin_once() {
        let table = rope_table(&[1.0, 0.5]);
        assert_eq!(table.len(), ROPE_POSITIONS * 4);
        let p = 7usize;
        let row = &table[p * 4..p * 4 + 4];
        assert_eq!(row, [7f32.cos(), 3.5f32.cos(), 7f32.sin(), 3.5f32.sin()]);
    }
}
