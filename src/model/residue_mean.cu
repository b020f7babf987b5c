// The pooled embedding on CUDA: each sequence's last-layer states averaged over its residue
// rows (BOS and EOS excluded), so that only `[sequences, hidden]` f32 goes back to the host
// instead of the whole `[rows, hidden]` batch. src/model/cuda_pool.rs compiles this with NVRTC
// and launches it on cubecl's stream.
//
// The arithmetic is the host's (`pool_residues`, src/batch/run.rs), so the values are its bit
// for bit: each stored value widened to f32 (exact) then to f64, summed in f64 in row order
// from the first residue row, the sum divided by the residue count in f64 and rounded once to
// f32 (to nearest even). Every step is an IEEE operation with one rounding (the explicit
// `_rn` intrinsics: no contraction, no approximate division). A sequence of two rows or fewer
// has no residues: its mean is the zero sum over a count of one, +0.
//
// Inputs: `states [rows, hidden]` of the storage type T; `ranges [2 * sequences]`, sequence
// s's rows `ranges[2s] .. ranges[2s + 1]` (BOS first, EOS last). Output: `out [sequences,
// hidden]` f32. Block (s, c): sequence s, columns c * THREADS .. (c + 1) * THREADS, one column
// per thread; a warp reads a row's consecutive columns.

#include "storage_types.cuh"

#define THREADS 128

template <typename T>
__device__ void residue_mean(
    const T* __restrict__ states, const int* __restrict__ ranges, float* __restrict__ out,
    const int hidden)
{
    const int seq = blockIdx.x;
    const int col = blockIdx.y * THREADS + threadIdx.x;
    if (col >= hidden) return;
    const int first = ranges[2 * seq], end = ranges[2 * seq + 1];
    const int rows = end - first;
    double sum = 0.0;
    if (rows > 2) {
        const T* x = states + (size_t)(first + 1) * hidden + col;
        const int residues = rows - 2;
        // Loads run ahead of the adds (independent); the adds stay in row order.
        #pragma unroll 8
        for (int r = 0; r < residues; ++r) {
            sum = __dadd_rn(sum, (double)widen(x[(size_t)r * hidden]));
        }
    }
    const double count = rows > 2 ? (double)(rows - 2) : 1.0;
    out[(size_t)seq * hidden + col] = __double2float_rn(__ddiv_rn(sum, count));
}

#define INSTANCE(NAME, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(THREADS) esm_##NAME(                        \
        const T* states, const int* ranges, float* out, const int hidden) {                  \
        residue_mean<T>(states, ranges, out, hidden);                                        \
    }

INSTANCE(residue_mean_f16, __half)
INSTANCE(residue_mean_bf16, __nv_bfloat16)
INSTANCE(residue_mean_f32, float)
