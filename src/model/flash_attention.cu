// Varlen flash attention for ESM-2 on half operands (f16 or bf16), with the rotary embedding
// applied on load: esmfuzz's `--attention fused` on CUDA (src/model/flash.rs compiles this
// with NVRTC and launches it on cubecl's stream).
//
// Inputs: the token stream's stacked projections `qkv [rows, 3 * hidden]` (q | k | v, each
// `heads x HD`, bias added, not rotated, not scaled). Sequences are ranges of rows: sequence
// s has queries at rows q_start[s] .. q_start[s] + q_len[s] and keys/values at rows
// q_start[s] .. q_start[s] + k_len[s] (k_len < q_len for a padded block, whose padding
// queries still get an output), RoPE positions counted from q_start[s]; `rope_table`
// `[positions, HD]` (see `rope`).
// Output: `out [rows, hidden]`, each query row's context, heads side by side.
//
// Two launches: `esm_rope_qk_*` writes q (rotated, scaled) and k (rotated) once into a
// scratch `qk [rows, 2 * hidden]`; `esm_flash_*` then reads qk and v with 16-byte loads.
// One block of 128 threads (4 warps) computes 64 query rows of one head of one sequence
// (a "tile"; tile_seq/tile_row0 list them). Keys are visited 64 at a time. Numerics, as
// FlashAttention: q, k rotated and q scaled in f32 then rounded to the storage type for the
// tensor cores (WMMA 16x16x16), scores and P.V accumulated in f32, online softmax statistics
// (row max, row sum) in f32, P rounded to the storage type, output rounded once at the end.

#include <mma.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

using namespace nvcuda;

#define BQ 64
#define BK 64
#define WARPS 4
#define THREADS (WARPS * 32)

__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Element `d` of a rotated row `x` (RoPE as ESM: rotate_half; `table` row `pos` holds
// cos(pos * inv_freq[j]) then sin(pos * inv_freq[j]), j < HD / 2, computed on the host in f32
// as the composed path computes them).
template <typename T, int HD>
__device__ __forceinline__ float rope(const T* x, int d, int pos, const float* table) {
    const int half = HD / 2;
    const float c = table[pos * HD + d % half];
    const float s = table[pos * HD + half + d % half];
    const float xd = to_f32(x[d]);
    const float partner = d < half ? -to_f32(x[d + half]) : to_f32(x[d - half]);
    return xd * c + partner * s;
}

// q (rotated, times `scale`) and k (rotated) of every row and head into `qk`: thread per
// element of `rows x hidden`, RoPE positions from the row's sequence.
template <typename T, int HD>
__device__ void rope_qk(
    const T* __restrict__ qkv, const int rows, const int hidden, T* __restrict__ qk,
    const int* __restrict__ row_pos, const float* __restrict__ rope_table, const float scale)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * hidden) return;
    const int row = (int)(i / hidden), col = (int)(i % hidden);
    const int head = col / HD, d = col % HD;
    const int pos = row_pos[row];
    const T* x = qkv + (size_t)row * 3 * hidden;
    T* y = qk + (size_t)row * 2 * hidden;
    y[col] = from_f32<T>(rope<T, HD>(x + head * HD, d, pos, rope_table) * scale);
    y[hidden + col] = from_f32<T>(rope<T, HD>(x + hidden + head * HD, d, pos, rope_table));
}

// `n` rows of HD elements from global `src` (row stride `stride` elements) into shared `dst`
// (row stride LD), 16 bytes at a time; rows past `valid` are zero.
template <typename T, int HD, int LD>
__device__ __forceinline__ void load_rows(
    T* dst, const T* __restrict__ src, const size_t stride, const int n, const int valid)
{
    constexpr int V = 8;                 // elements per 16-byte vector
    constexpr int PER_ROW = HD / V;
    for (int i = threadIdx.x; i < n * PER_ROW; i += THREADS) {
        const int r = i / PER_ROW, c = (i % PER_ROW) * V;
        uint4 value = make_uint4(0, 0, 0, 0);
        if (r < valid) value = *reinterpret_cast<const uint4*>(src + (size_t)r * stride + c);
        *reinterpret_cast<uint4*>(dst + r * LD + c) = value;
    }
}

template <typename T, int HD>
__device__ void flash_attention(
    const T* __restrict__ qkv, const T* __restrict__ qk, const int hidden,
    T* __restrict__ out, const int* __restrict__ meta, const int n_tiles, const int n_seq)
{
    constexpr int LD = HD + 8;           // half row stride of the Q, K, V tiles (bank offset)
    constexpr int LDP = BK + 8;          // half row stride of P
    constexpr int LDS = BK + 4;          // float row stride of S (and of P.V)
    constexpr int QP = (LD > LDP ? LD : LDP);
    __shared__ __align__(32) T k_tile[BK * LD];
    __shared__ __align__(32) T v_tile[BK * LD];
    __shared__ __align__(32) T qp_tile[BQ * QP];   // Q, then P
    __shared__ __align__(32) float s_tile[BQ * LDS];

    const int tile = blockIdx.x;
    const int head = blockIdx.y;
    const int* tile_seq = meta;
    const int* tile_row0 = meta + n_tiles;
    const int* q_start = meta + 2 * n_tiles;
    const int* q_len = q_start + n_seq;
    const int* k_len = q_len + n_seq;
    const int seq = tile_seq[tile];
    const int row0 = tile_row0[tile];         // first query of the tile, within the sequence
    const int start = q_start[seq];
    const int nq = min(BQ, q_len[seq] - row0);
    const int nk = k_len[seq];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const size_t qk_stride = 2 * (size_t)hidden, v_stride = 3 * (size_t)hidden;
    const T* q_src = qk + (size_t)(start + row0) * qk_stride + head * HD;
    const T* k_src = qk + (size_t)start * qk_stride + hidden + head * HD;
    const T* v_src = qkv + (size_t)start * v_stride + 2 * hidden + head * HD;

    // Q (rotated and scaled by the pre-pass), zero past the sequence.
    load_rows<T, HD, QP>(qp_tile, q_src, qk_stride, BQ, nq);
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag[HD / 16];
    #pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
        wmma::load_matrix_sync(q_frag[kk], qp_tile + warp * 16 * QP + kk * 16, QP);
    __syncthreads();  // qp_tile becomes P (other warps' rows overlap in the P layout)

    // Each thread owns half of one row of the warp's 16: row `r`, columns `c0 .. c0 + HD/2`.
    const int r = warp * 16 + lane / 2;
    const int c0 = (lane % 2) * (HD / 2);
    const int s0 = (lane % 2) * (BK / 2);
    float o[HD / 2];
    #pragma unroll
    for (int c = 0; c < HD / 2; ++c) o[c] = 0.f;
    float m = -__int_as_float(0x7f800000), l = 0.f;  // -inf (NVRTC has no INFINITY)

    for (int k0 = 0; k0 < nk; k0 += BK) {
        // K (rotated by the pre-pass) and V, zero past the keys.
        load_rows<T, HD, LD>(k_tile, k_src + (size_t)k0 * qk_stride, qk_stride, BK, nk - k0);
        load_rows<T, HD, LD>(v_tile, v_src + (size_t)k0 * v_stride, v_stride, BK, nk - k0);
        __syncthreads();

        // S = Q K^T for the warp's 16 rows (f32).
        float* s_rows = s_tile + warp * 16 * LDS;
        #pragma unroll
        for (int n = 0; n < BK / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
            #pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> k_frag;
                wmma::load_matrix_sync(k_frag, k_tile + n * 16 * LD + kk * 16, LD);
                wmma::mma_sync(acc, q_frag[kk], k_frag, acc);
            }
            wmma::store_matrix_sync(s_rows + n * 16, acc, LDS, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax over this tile's keys (masked past nk); P in the storage type.
        const float* s = s_tile + r * LDS;
        float tile_max = -__int_as_float(0x7f800000);
        for (int j = s0; j < s0 + BK / 2; ++j)
            if (k0 + j < nk) tile_max = fmaxf(tile_max, s[j]);
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);   // finite: every visited tile has a key
        const float alpha = __expf(m - m_new);     // 0 on the first tile (m = -inf)
        float row_sum = 0.f;
        T* p = qp_tile + r * LDP;
        for (int j = s0; j < s0 + BK / 2; ++j) {
            const float e = k0 + j < nk ? __expf(s[j] - m_new) : 0.f;
            const T pe = from_f32<T>(e);
            row_sum += to_f32(pe);
            p[j] = pe;
        }
        row_sum += __shfl_xor_sync(0xffffffff, row_sum, 1);
        l = l * alpha + row_sum;
        m = m_new;
        __syncwarp();

        // P V for the warp's rows, into its S rows (f32), then O = alpha O + P V.
        #pragma unroll
        for (int n = 0; n < HD / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
            #pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v_frag;
                wmma::load_matrix_sync(p_frag, qp_tile + warp * 16 * LDP + kk * 16, LDP);
                wmma::load_matrix_sync(v_frag, v_tile + kk * 16 * LD + n * 16, LD);
                wmma::mma_sync(acc, p_frag, v_frag, acc);
            }
            wmma::store_matrix_sync(s_rows + n * 16, acc, LDS, wmma::mem_row_major);
        }
        __syncwarp();
        #pragma unroll
        for (int c = 0; c < HD / 2; ++c) o[c] = o[c] * alpha + s[c0 + c];
        __syncthreads();  // k_tile, v_tile and s_tile are rewritten next
    }

    if (r < nq) {
        const float inv = 1.f / l;
        T* dst = out + (size_t)(start + row0 + r) * hidden + head * HD + c0;
        #pragma unroll
        for (int c = 0; c < HD / 2; ++c) dst[c] = from_f32<T>(o[c] * inv);
    }
}

#define INSTANCE(SUFFIX, T, HD)                                                              \
    extern "C" __global__ void __launch_bounds__(256) esm_rope_qk_##SUFFIX(                  \
        const T* qkv, int rows, int hidden, T* qk, const int* row_pos,                        \
        const float* rope_table, float scale) {                                              \
        rope_qk<T, HD>(qkv, rows, hidden, qk, row_pos, rope_table, scale);                   \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS) esm_flash_##SUFFIX(                \
        const T* qkv, const T* qk, int hidden, T* out, const int* meta, int n_tiles,          \
        int n_seq) {                                                                         \
        flash_attention<T, HD>(qkv, qk, hidden, out, meta, n_tiles, n_seq);                  \
    }

INSTANCE(f16_hd16, __half, 16)
INSTANCE(f16_hd32, __half, 32)
INSTANCE(f16_hd64, __half, 64)
INSTANCE(bf16_hd16, __nv_bfloat16, 16)
INSTANCE(bf16_hd32, __nv_bfloat16, 32)
INSTANCE(bf16_hd64, __nv_bfloat16, 64)
