// Varlen flash attention for ESM-2 (f16 and bf16 on tensor cores; f32 with f32 FMA, true
// FP32: `flash_attention_f32` at the end), with the projections' bias and the rotary embedding
// applied by a pre-pass: esmfuzz's `--attention fused` on CUDA (src/model/flash.rs compiles
// this with NVRTC, src/model/nvrtc.rs launches it on cubecl's stream).
//
// Inputs: the token stream's stacked projections `qkv [rows, 3 * hidden]` (q | k | v, each
// `heads x HD`, no bias added, not rotated, not scaled) and their bias `[3 * hidden]`.
// Sequences are ranges of rows: sequence
// s has queries at rows q_start[s] .. q_start[s] + q_len[s] and keys/values at rows
// q_start[s] .. q_start[s] + k_len[s] (k_len < q_len for a padded block, whose padding
// queries still get an output), RoPE positions counted from q_start[s]; `rope_table`
// `[positions, HD]` (see `rope_qk`).
// Output: `out [rows, hidden]`, each query row's context, heads side by side.
//
// Two launches. `esm_rope_qk_*` adds the bias to q, k and v, rotates q and k and scales q,
// into a scratch `[rows, 3 * hidden]` in the same layout (`esm_rope_qk_v8_*`, f16 and bf16:
// the same values, eight pairs a thread in 16-byte accesses where the buffers allow);
// `esm_flash_*` then reads it. (A folded pair that left q's and v's bias and q's rotation to
// the flash kernel moved a third of the memory but was 3-6% slower on an H100, since every
// Q tile redid v's bias for every K/V tile: results/h100-s19/; removed.) One block of 128
// threads (4 warps) computes 64 query rows of one head of one sequence (a "tile";
// tile_seq/tile_row0 list them), each warp 16 rows (`esm_flash_w32_*`, f16 and bf16: 2 warps
// of 32 rows, each K and V operand it loads serving twice the rows). Keys are visited 64 at a
// time, the next K/V tiles loaded asynchronously (cp.async, double-buffered) while the
// current ones are used. Numerics, as FlashAttention: q, k rotated and q scaled in f32 then
// rounded to the storage type for the tensor cores (mma.sync m16n8k16), scores and P.V
// accumulated in f32 registers, online softmax statistics (row max, row sum) in f32, P rounded
// to the storage type (the row sum adds the rounded values), output rounded once at the end.
// S and P never leave registers.

#include "storage_types.cuh"

#define BQ 64
#define BK 64
#define WARPS 4                  // f32, and the half types' esm_flash_* (16 rows a warp)
#define THREADS (WARPS * 32)
// Blocks a multiprocessor is to hold of a flash kernel (0: as ptxas chooses). The half types
// at head dim 64 take 142 registers a thread as ptxas chooses, which holds a multiprocessor to
// 3 blocks (12 warps); bound to 4 they get 128 and f16 spills 12 bytes, which no GPU has timed
// yet, so the default leaves them to ptxas. Elsewhere a bound only added registers. esmfuzz
// defines FLASH_MIN_BLOCKS_HD64 from ESMFUZZ_FLASH_MIN_BLOCKS where set.
#ifndef FLASH_MIN_BLOCKS_HD64
#define FLASH_MIN_BLOCKS_HD64 0
#endif
#define FLASH_MIN_BLOCKS(T, HD) (sizeof(T) == 2 && (HD) == 64 ? FLASH_MIN_BLOCKS_HD64 : 0)

// One rotated pair (x_d, x_{d + HD / 2}) of q or k, already `x + bias` rounded to T: x_d cos
// + (partner sin, rounded), as one FMA over a rounded product, written out so that the
// compiler's contraction choices cannot change the values; q is then times `scale` (f32) and
// both rounded to T. Both pre-passes rotate through here, so they give the same values.
template <typename T, bool SCALED>
__device__ __forceinline__ void rotate_pair(
    const T biased_lo, const T biased_hi, const float c, const float s, const float scale,
    T* lo_out, T* hi_out)
{
    const float lo = widen(biased_lo), hi = widen(biased_hi);
    float rot_lo = fmaf(lo, c, __fmul_rn(-hi, s));
    float rot_hi = fmaf(hi, c, __fmul_rn(lo, s));
    if (SCALED) { rot_lo *= scale; rot_hi *= scale; }
    *lo_out = narrow<T>(rot_lo);
    *hi_out = narrow<T>(rot_hi);
}

// The rotated pair a pre-pass thread takes: columns (col, col + HD / 2) of one row and head
// (thread i: row i / (hidden / 2), then the heads' pairs in order), and the cos and sin of
// its row's RoPE position.
struct RotatedPair {
    int row, col;
    float c, s;
};

// This thread's pair of a `rows x hidden` projection; false for a thread past the last.
template <int HD>
__device__ __forceinline__ bool rotated_pair_of_thread(
    const int rows, const int hidden, const int* __restrict__ row_pos,
    const float* __restrict__ rope_table, RotatedPair* p)
{
    const int half = HD / 2;
    const int pairs_per_row = hidden / 2;
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned)rows * (unsigned)pairs_per_row) return false;
    const int row = (int)(i / (unsigned)pairs_per_row);
    const int pair = (int)(i - (unsigned)row * (unsigned)pairs_per_row);
    const int head = pair / half, d = pair % half;
    p->row = row;
    p->col = head * HD + d;
    p->c = rope_table[row_pos[row] * HD + d];
    p->s = rope_table[row_pos[row] * HD + half + d];
    return true;
}

// `qkv + bias` rounded to T (the composed bias add), then q rotated and times `scale`, k
// rotated, v as it is, into `prepared`: one thread per rotated pair (d, d + HD / 2) of one row
// and head, RoPE positions from the row's sequence.
// Each value is `rope` of it, as written there (same expression, same rounding).
// FIRST = 1 leaves q out (prepared's q columns unwritten): the flash kernel's `rotate_q_tile`
// then computes q, through the same `rotate_pair`, from `qkv` itself.
template <typename T, int HD, int FIRST>
__device__ void rope_qk(
    const T* __restrict__ qkv, const T* __restrict__ bias, const int rows, const int hidden,
    T* __restrict__ prepared, const int* __restrict__ row_pos,
    const float* __restrict__ rope_table, const float scale)
{
    const int half = HD / 2;
    RotatedPair p;
    if (!rotated_pair_of_thread<HD>(rows, hidden, row_pos, rope_table, &p)) return;
    const T* x = qkv + (size_t)p.row * 3 * hidden;
    T* y = prepared + (size_t)p.row * 3 * hidden;
    #pragma unroll
    for (int part = FIRST; part < 3; ++part) {
        const int at = part * hidden + p.col;
        // T + T: the storage type's own rounded add, as the composed `x + bias`.
        const T biased_lo = x[at] + bias[at], biased_hi = x[at + half] + bias[at + half];
        if (part == 2) {
            y[at] = biased_lo;
            y[at + half] = biased_hi;
        } else if (part == 0) {
            rotate_pair<T, true>(biased_lo, biased_hi, p.c, p.s, scale, y + at, y + at + half);
        } else {
            rotate_pair<T, false>(biased_lo, biased_hi, p.c, p.s, scale, y + at, y + at + half);
        }
    }
}

// The cos and sin of one row's RoPE position for eight consecutive frequencies: cos at
// cs[0 .. 8], sin HALF further (a `rope_table` row), 16 bytes at a time.
template <int HALF>
__device__ __forceinline__ void load_rope8(const float* cs, float* c, float* sn)
{
    *reinterpret_cast<float4*>(c) = *reinterpret_cast<const float4*>(cs);
    *reinterpret_cast<float4*>(c + 4) = *reinterpret_cast<const float4*>(cs + 4);
    *reinterpret_cast<float4*>(sn) = *reinterpret_cast<const float4*>(cs + HALF);
    *reinterpret_cast<float4*>(sn + 4) = *reinterpret_cast<const float4*>(cs + HALF + 4);
}

// Eight pairs of one row and head: x[k] and its partner x[k + HALF] (k < 8) plus their bias,
// rounded to T, then (ROTATE) through `rotate_pair` with c[k], sn[k] (SCALED: times
// `scale`), into y at the same offsets; 16-byte accesses. Every load comes before the
// stores, so y may be x.
template <typename T, int HALF, bool ROTATE, bool SCALED>
__device__ __forceinline__ void bias_rotate8(
    const T* x, const T* bias, const float* c, const float* sn, const float scale, T* y)
{
    const Pack<T, 8> lo = *reinterpret_cast<const Pack<T, 8>*>(x);
    const Pack<T, 8> hi = *reinterpret_cast<const Pack<T, 8>*>(x + HALF);
    const Pack<T, 8> b_lo = *reinterpret_cast<const Pack<T, 8>*>(bias);
    const Pack<T, 8> b_hi = *reinterpret_cast<const Pack<T, 8>*>(bias + HALF);
    Pack<T, 8> out_lo, out_hi;
    #pragma unroll
    for (int k = 0; k < 8; ++k) {
        // T + T: the storage type's own rounded add, as the composed `x + bias`.
        const T biased_lo = lo.v[k] + b_lo.v[k], biased_hi = hi.v[k] + b_hi.v[k];
        if (ROTATE) {
            rotate_pair<T, SCALED>(biased_lo, biased_hi, c[k], sn[k], scale, &out_lo.v[k],
                                   &out_hi.v[k]);
        } else {
            out_lo.v[k] = biased_lo;
            out_hi.v[k] = biased_hi;
        }
    }
    *reinterpret_cast<Pack<T, 8>*>(y) = out_lo;
    *reinterpret_cast<Pack<T, 8>*>(y + HALF) = out_hi;
}

// `rope_qk` eight pairs at a time: thread i takes dims d0 .. d0 + 7 and their partners
// d0 + HD / 2 .. of one row and head (row i / (hidden / 16), then the heads' 8-pair chunks in
// order), loading and storing them 16 bytes at a time, each value through `rotate_pair` as
// `rope_qk` computes it. Needs qkv, bias, prepared and rope_table 16-byte aligned (HD is a
// multiple of 16, so every chunk then is).
template <typename T, int HD, int FIRST>
__device__ void rope_qk_v8(
    const T* __restrict__ qkv, const T* __restrict__ bias, const int rows, const int hidden,
    T* __restrict__ prepared, const int* __restrict__ row_pos,
    const float* __restrict__ rope_table, const float scale)
{
    constexpr int half = HD / 2;
    constexpr int chunks_per_head = half / 8;
    const int chunks_per_row = hidden / 16;
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned)rows * (unsigned)chunks_per_row) return;
    const int row = (int)(i / (unsigned)chunks_per_row);
    const int chunk = (int)(i - (unsigned)row * (unsigned)chunks_per_row);
    const int d0 = (chunk % chunks_per_head) * 8;
    const int col = (chunk / chunks_per_head) * HD + d0;
    float c[8], sn[8];
    load_rope8<half>(rope_table + row_pos[row] * HD + d0, c, sn);
    const T* x = qkv + (size_t)row * 3 * hidden;
    T* y = prepared + (size_t)row * 3 * hidden;
    #pragma unroll
    for (int part = FIRST; part < 3; ++part) {
        const int at = part * hidden + col;
        if (part == 2) {
            bias_rotate8<T, half, false, false>(x + at, bias + at, c, sn, scale, y + at);
        } else if (part == 0) {
            bias_rotate8<T, half, true, true>(x + at, bias + at, c, sn, scale, y + at);
        } else {
            bias_rotate8<T, half, true, false>(x + at, bias + at, c, sn, scale, y + at);
        }
    }
}

// 32-bit pair of the storage type (lower half = first element), as the tensor cores read it.
__device__ __forceinline__ unsigned pack2(float a, float b, __half) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<unsigned*>(&h);
}
__device__ __forceinline__ unsigned pack2(float a, float b, __nv_bfloat16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<unsigned*>(&h);
}
__device__ __forceinline__ float2 unpack2(unsigned x, __half) {
    return __half22float2(*reinterpret_cast<__half2*>(&x));
}
__device__ __forceinline__ float2 unpack2(unsigned x, __nv_bfloat16) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&x));
}

// exp(x) for a P value of the flash kernel, which is rounded to the storage type next.
// __half: `ex2.approx.ftz.f32` of x log2(e), the multiply __expf does. The two differ only
// where 2^(x log2 e) is below 2^-126: there __expf (non-ftz) halves the argument and squares
// MUFU.EX2's result, and ftz returns 0 or a flushed value; f16's least subnormal is 2^-24,
// so both round to +0 and the P bits, row sums and P V are unchanged, for three instructions
// fewer an exponential (FSETP and two predicated FMULs; 96 of the hd64 key loop's). bf16
// keeps __expf: it has f32's exponent range, so flushing would change its subnormal P.
__device__ __forceinline__ float exp_for_p(float x, __half) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * __int_as_float(0x3fb8aa3b)));
    return y;
}
__device__ __forceinline__ float exp_for_p(float x, __nv_bfloat16) { return __expf(x); }

// d += a b on the tensor cores: m16n8k16, a row-major 16x16 (4 pairs), b column-major
// 16x8 (2 pairs), d 16x8 in f32 (lane l holds rows l/4 and l/4 + 8, columns 2(l%4), +1).
__device__ __forceinline__ void mma(float* d, const unsigned* a, unsigned b0, unsigned b1, __half) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma(float* d, const unsigned* a, unsigned b0, unsigned b1,
                                    __nv_bfloat16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// Four 8x8 matrices of a row-major shared tile, transposed: the B operands of two n-tiles.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

// Four (x4) or two (x2) 8x8 matrices of a row-major shared tile as they are: lane l holds
// row l / 4, elements 2 (l % 4) and + 1 of each, which is the B operand of m16n8k16 where the
// tile's rows are B's columns (K's rows for S = Q K^T). Lanes 8j .. 8j + 7 address matrix j's
// rows (x2 reads lanes 0-15 only).
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2(unsigned* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(shared_address(row)));
}

// Rows row .. row + N - 1 of HD elements from global `src` (row stride `stride` elements)
// into shared `dst` (row stride LD), 16 bytes at a time and asynchronously (cp.async) by the
// block's NT threads; rows at or past `end` are zero-filled (their copy reads nothing, and
// names `src` itself). Completed by `cp.async.wait_group`. Each thread copies the same
// 16-byte column of N / (NT / (HD / 8)) rows, the loop unrolled. `src` is a sequence's first
// row and its rows are 32-bit byte offsets from it: a sequence has at most
// flash::ROPE_POSITIONS rows, and `flash::attention` leaves any width whose offsets would not
// fit to the composed attention (`sequence_offsets_fit`). An address is then a select and a
// 64-bit add. The flash kernel's key loop calls this twice a tile: a loop over
// `threadIdx.x + i NT` with a division and a 64-bit product per vector (f51e2aa), then
// 64-bit products per row (64a707b), had cost more issue slots there than the tensor cores.
template <typename T, int HD, int LD, int NT, int N>
__device__ __forceinline__ void load_rows_async(
    T* dst, const T* __restrict__ src, const int stride, const int row, const int end)
{
    constexpr int V = 8;                 // elements per 16-byte vector
    constexpr int PER_ROW = HD / V;
    constexpr int ROWS_PER_STEP = NT / PER_ROW;
    static_assert(NT % PER_ROW == 0 && N % ROWS_PER_STEP == 0, "whole rows a step");
    const int r0 = threadIdx.x / PER_ROW, c = (threadIdx.x % PER_ROW) * V;
    const int first = row + r0;          // the thread's first row
    const unsigned step = (unsigned)(ROWS_PER_STEP * sizeof(T)) * (unsigned)stride;
    unsigned offset = ((unsigned)first * (unsigned)stride + (unsigned)c) * (unsigned)sizeof(T);
    const char* base = reinterpret_cast<const char*>(src);
    const unsigned to = shared_address(dst + r0 * LD + c);
    #pragma unroll
    for (int j = 0; j < N / ROWS_PER_STEP; ++j) {
        const bool inside = first + j * ROWS_PER_STEP < end;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                     :: "r"(to + (unsigned)(j * ROWS_PER_STEP * LD * sizeof(T))),
                        "l"(base + (inside ? offset : 0u)), "r"(inside ? 16 : 0));
        offset += step;
    }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(PENDING));
}

// Where the flash kernel reads q. ROTATE_Q = false: the pre-pass's `prepared` buffer, q with
// its bias, rotated and scaled. ROTATE_Q = true: the projections `raw` themselves (q without
// its bias, unrotated), which `rotate_q_tile` turns into the same values in shared memory
// with `bias` (the qkv bias, q's part first), `rope_table` and `scale`, so the pre-pass moves
// only k and v (a third less memory traffic).
template <typename T> struct QuerySource {
    const T* raw;
    const T* bias;
    const float* rope_table;
    float scale;
};

// The Q tile (rows 0 .. nq - 1 of it are queries row0 .. of a sequence, head `head`, as
// loaded from `raw`) made what the pre-pass writes for it: `q + bias` rounded to T, rotated
// at RoPE position row0 + r (a row's offset in its sequence, which is the pre-pass's
// row_pos) and times `scale`, through `rotate_pair`, eight pairs a thread as `rope_qk_v8`
// takes them (so bias and rope_table must be 16-byte aligned; LD keeps shared rows so).
// Rows past nq stay as loaded (zero). The caller synchronises the block before and after.
template <typename T, int HD, int LD, int NT>
__device__ __forceinline__ void rotate_q_tile(
    T* q_tile, const QuerySource<T>& q, const int head, const int row0, const int nq)
{
    constexpr int half = HD / 2;
    constexpr int chunks_per_row = half / 8;
    const T* bias = q.bias + head * HD;
    for (int i = threadIdx.x; i < nq * chunks_per_row; i += NT) {
        const int r = i / chunks_per_row, d0 = (i % chunks_per_row) * 8;
        float c[8], sn[8];
        load_rope8<half>(q.rope_table + (size_t)(row0 + r) * HD + d0, c, sn);
        T* row = q_tile + r * LD + d0;
        bias_rotate8<T, half, true, true>(row, bias + d0, c, sn, q.scale, row);
    }
}

// Warps of a BQ-row tile whose warps take MT m-tiles (16 rows each) of queries.
template <int MT> struct FlashShape {
    static constexpr int WARPS_PER_TILE = BQ / (16 * MT);
    static constexpr int THREADS_PER_TILE = WARPS_PER_TILE * 32;
};

// `qkv` is the pre-pass's prepared buffer (k, v with their bias, k rotated; q with its
// bias, rotated and scaled, unless ROTATE_Q: then q comes from `q.raw`, see `QuerySource`). Each warp takes MT m-tiles of 16 query rows (MT = 1: 4 warps a tile; MT = 2: 2
// warps, each K and V operand read from shared memory once for both m-tiles). Every row's
// arithmetic is the same whatever MT (the same products, summed in the same order), so
// the values are too; with MT > 1 a warp whose rows all lie past the tile's last query only
// loads.
template <typename T, int HD, int MT, bool ROTATE_Q>
__device__ void flash_attention(
    const T* __restrict__ qkv, const QuerySource<T> q, const int hidden,
    T* __restrict__ out, const int* __restrict__ meta, const int n_tiles, const int n_seq)
{
    constexpr int NT = FlashShape<MT>::THREADS_PER_TILE;
    constexpr int LD = HD + 8;           // row stride of the Q, K, V tiles (conflict-free)
    __shared__ __align__(128) T q_tile[BQ * LD];
    __shared__ __align__(128) T k_tile[2][BK * LD];   // double-buffered
    __shared__ __align__(128) T v_tile[2][BK * LD];

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
    const int g = lane / 4, t = lane % 4;     // fragment row group and column pair
    const int warp_row0 = warp * 16 * MT;     // the warp's first row within the tile
    // Warp-uniform. MT = 1 computes every warp, as it always has: its code is then the
    // pre-template kernel's, PTX for PTX (checked with NVRTC when the template came).
    const bool active = MT == 1 || warp_row0 < nq;
    // The sequence's first row of q, k and v (64-bit); rows within it are 32-bit offsets.
    const int stride = 3 * hidden;
    const size_t seq_row0 = (size_t)start * stride;
    const T* q_src = (ROTATE_Q ? q.raw : qkv) + seq_row0 + head * HD;
    const T* k_src = qkv + seq_row0 + hidden + head * HD;
    const T* v_src = qkv + seq_row0 + 2 * hidden + head * HD;
    const int key_tiles = (nk + BK - 1) / BK;

    // Q (rotated and scaled by the pre-pass, or as projected where ROTATE_Q) and the first K
    // (rotated), V tiles, zero past the sequence.
    load_rows_async<T, HD, LD, NT, BQ>(q_tile, q_src, stride, row0, row0 + nq);
    load_rows_async<T, HD, LD, NT, BK>(k_tile[0], k_src, stride, 0, nk);
    load_rows_async<T, HD, LD, NT, BK>(v_tile[0], v_src, stride, 0, nk);
    cp_async_commit();

    // m-tile mt of the warp: rows warp_row0 + 16 mt ..; lane holds rows g and g + 8 of it
    // (index 0 and 1).
    unsigned q_frag[MT][HD / 16][4];
    float o[MT][HD / 8][4];
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        #pragma unroll
        for (int n = 0; n < HD / 8; ++n)
            o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
    const float neg_inf = -__int_as_float(0x7f800000);  // NVRTC has no INFINITY
    float m[MT][2], l[MT][2];
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = neg_inf;
        l[mt][0] = l[mt][1] = 0.f;
    }

    for (int it = 0; it < key_tiles; ++it) {
        const int buf = it & 1, k0 = it * BK;
        if (it + 1 < key_tiles) {  // prefetch the next K, V tiles into the other buffer
            const int k1 = k0 + BK;
            load_rows_async<T, HD, LD, NT, BK>(k_tile[buf ^ 1], k_src, stride, k1, nk);
            load_rows_async<T, HD, LD, NT, BK>(v_tile[buf ^ 1], v_src, stride, k1, nk);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (ROTATE_Q && it == 0) {  // block-uniform: every thread takes part
            rotate_q_tile<T, HD, LD, NT>(q_tile, q, head, row0, nq);
            __syncthreads();
        }
        if (active) {
            if (it == 0) {
                #pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const T* q_rows = q_tile + (warp_row0 + 16 * mt + g) * LD + 2 * t;
                    #pragma unroll
                    for (int kc = 0; kc < HD / 16; ++kc) {
                        const T* x = q_rows + kc * 16;
                        q_frag[mt][kc][0] = *reinterpret_cast<const unsigned*>(x);
                        q_frag[mt][kc][1] = *reinterpret_cast<const unsigned*>(x + 8 * LD);
                        q_frag[mt][kc][2] = *reinterpret_cast<const unsigned*>(x + 8);
                        q_frag[mt][kc][3] = *reinterpret_cast<const unsigned*>(x + 8 * LD + 8);
                    }
                }
            }
            const T* kt = k_tile[buf];
            const T* vt = v_tile[buf];

            // S = Q K^T for the warp's rows and the tile's 64 keys (f32), keys past nk at -inf.
            // K's B operands by ldmatrix: for n-tile n, matrix j (lanes 8j .. 8j + 7 address its
            // rows) is keys n * 8 .. + 7, dims 8 j .. + 7 of the k-chunk pair (kc, kc + 1), so
            // registers (0, 1) are chunk kc's (b0, b1) and (2, 3) chunk kc + 1's; each load
            // serves the warp's MT m-tiles.
            float s[MT][BK / 8][4];
            const T* k_lane = kt + (lane % 8) * LD + (lane / 8) * 8;
            #pragma unroll
            for (int n = 0; n < BK / 8; ++n) {
                #pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
                #pragma unroll
                for (int kc = 0; kc < HD / 16; kc += 2) {
                    unsigned b[4];
                    if (HD / 16 - kc >= 2) {
                        ldmatrix_x4(b, k_lane + n * 8 * LD + kc * 16);
                        #pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            mma(s[mt][n], q_frag[mt][kc], b[0], b[1], T());
                            mma(s[mt][n], q_frag[mt][kc + 1], b[2], b[3], T());
                        }
                    } else {  // HD 16: one chunk, lanes 0-15 address it
                        ldmatrix_x2(b, kt + (n * 8 + lane % 8) * LD + ((lane / 8) % 2) * 8);
                        #pragma unroll
                        for (int mt = 0; mt < MT; ++mt)
                            mma(s[mt][n], q_frag[mt][kc], b[0], b[1], T());
                    }
                }
            }
            if (k0 + BK > nk) {
                #pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    #pragma unroll
                    for (int n = 0; n < BK / 8; ++n)
                        #pragma unroll
                        for (int e = 0; e < 4; ++e)
                            if (k0 + n * 8 + 2 * t + (e & 1) >= nk) s[mt][n][e] = neg_inf;
            }

            // Online softmax (row max and sum over the 4 lanes sharing a row); P in the storage
            // type, laid out as the A operand of P V (two n-tiles of S make one k-chunk).
            unsigned p[MT][BK / 16][4];
            #pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                float alpha[2];
                #pragma unroll
                for (int i = 0; i < 2; ++i) {
                    float mx = neg_inf;
                    #pragma unroll
                    for (int n = 0; n < BK / 8; ++n)
                        mx = fmaxf(mx, fmaxf(s[mt][n][2 * i], s[mt][n][2 * i + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
                    // Finite: every visited tile has a key.
                    const float m_new = fmaxf(m[mt][i], mx);
                    alpha[i] = __expf(m[mt][i] - m_new);      // 0 on the first tile (m = -inf)
                    m[mt][i] = m_new;
                }
                float row_sum[2] = {0.f, 0.f};
                #pragma unroll
                for (int n = 0; n < BK / 8; ++n) {
                    #pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        const unsigned pair = pack2(exp_for_p(s[mt][n][2 * i] - m[mt][i], T()),
                                                    exp_for_p(s[mt][n][2 * i + 1] - m[mt][i], T()),
                                                    T());
                        const float2 rounded = unpack2(pair, T());
                        row_sum[i] += rounded.x + rounded.y;
                        p[mt][n / 2][(n % 2) * 2 + i] = pair;
                    }
                }
                #pragma unroll
                for (int i = 0; i < 2; ++i) {
                    row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 1);
                    row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 2);
                    l[mt][i] = l[mt][i] * alpha[i] + row_sum[i];
                }
                // O = alpha O + P V, here its alpha O.
                #pragma unroll
                for (int n = 0; n < HD / 8; ++n) {
                    o[mt][n][0] *= alpha[0]; o[mt][n][1] *= alpha[0];
                    o[mt][n][2] *= alpha[1]; o[mt][n][3] *= alpha[1];
                }
            }

            // + P V (V's B operands by transposing loads from its row-major tile, each serving the
            // warp's MT m-tiles).
            #pragma unroll
            for (int kc = 0; kc < BK / 16; ++kc) {
                #pragma unroll
                for (int n = 0; n < HD / 16; ++n) {
                    unsigned b[4];
                    ldmatrix_x4_trans(
                        b, vt + (kc * 16 + lane % 16) * LD + n * 16 + (lane / 16) * 8);
                    #pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma(o[mt][2 * n], p[mt][kc], b[0], b[1], T());
                        mma(o[mt][2 * n + 1], p[mt][kc], b[2], b[3], T());
                    }
                }
            }
        }  // active
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }

    if (!active) return;
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        #pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = warp_row0 + 16 * mt + g + 8 * i;
            if (r >= nq) continue;
            const float inv = 1.f / l[mt][i];
            T* dst = out + (size_t)(start + row0 + r) * hidden + head * HD + 2 * t;
            #pragma unroll
            for (int n = 0; n < HD / 8; ++n)
                *reinterpret_cast<unsigned*>(dst + n * 8) =
                    pack2(o[mt][n][2 * i] * inv, o[mt][n][2 * i + 1] * inv, T());
        }
    }
}


// True FP32 attention (no tensor cores: FFMA in f32 throughout, expf), the same tiling of
// queries (64 rows of one head of one sequence per block of 128 threads), keys 32 at a time.
// Thread t owns rows 4 (t / 8) .. + 3 of the tile; for S the keys t % 8 + 8 j (j < 4), for
// O the dims t % 8 + 8 j (j < HD / 8). The 8 threads that share rows are adjacent lanes, so
// row statistics are warp shuffles and P goes through shared memory within the warp only.
#define BK32 32
template <int HD>
__device__ void flash_attention_f32(
    const float* __restrict__ qkv, const int hidden,
    float* __restrict__ out, const int* __restrict__ meta, const int n_tiles, const int n_seq)
{
    constexpr int LDQ = HD + 1;          // odd strides: conflict-free column reads
    constexpr int LDP = BK32 + 1;
    constexpr int DJ = HD / 8;           // output dims per thread
    __shared__ float q_tile[BQ * LDQ];
    __shared__ float k_tile[BK32 * LDQ];
    __shared__ float v_tile[BK32 * HD];
    __shared__ float p_tile[BQ * LDP];

    const int tile = blockIdx.x, head = blockIdx.y;
    const int* tile_seq = meta;
    const int* tile_row0 = meta + n_tiles;
    const int* q_start = meta + 2 * n_tiles;
    const int* q_len = q_start + n_seq;
    const int* k_len = q_len + n_seq;
    const int seq = tile_seq[tile];
    const int row0 = tile_row0[tile];
    const int start = q_start[seq];
    const int nq = min(BQ, q_len[seq] - row0);
    const int nk = k_len[seq];
    const size_t stride = 3 * (size_t)hidden;
    const float* q_src = qkv + (size_t)(start + row0) * stride + head * HD;
    const float* k_src = qkv + (size_t)start * stride + hidden + head * HD;
    const float* v_src = qkv + (size_t)start * stride + 2 * hidden + head * HD;
    const int rows = threadIdx.x / 8 * 4, col = threadIdx.x % 8;

    for (int i = threadIdx.x; i < BQ * HD / 4; i += THREADS) {
        const int r = i / (HD / 4), c = i % (HD / 4) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < nq) x = *reinterpret_cast<const float4*>(q_src + (size_t)r * stride + c);
        float* d = q_tile + r * LDQ + c;
        d[0] = x.x; d[1] = x.y; d[2] = x.z; d[3] = x.w;
    }
    float o[4][DJ];
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < DJ; ++j) o[i][j] = 0.f;
    const float neg_inf = -__int_as_float(0x7f800000);
    float m[4] = {neg_inf, neg_inf, neg_inf, neg_inf}, l[4] = {0.f, 0.f, 0.f, 0.f};

    for (int k0 = 0; k0 < nk; k0 += BK32) {
        __syncthreads();  // the previous tile's K, V are no longer read
        for (int i = threadIdx.x; i < BK32 * HD / 4; i += THREADS) {
            const int r = i / (HD / 4), c = i % (HD / 4) * 4;
            float4 kx = make_float4(0.f, 0.f, 0.f, 0.f), vx = kx;
            if (k0 + r < nk) {
                kx = *reinterpret_cast<const float4*>(k_src + (size_t)(k0 + r) * stride + c);
                vx = *reinterpret_cast<const float4*>(v_src + (size_t)(k0 + r) * stride + c);
            }
            float* kd = k_tile + r * LDQ + c;
            kd[0] = kx.x; kd[1] = kx.y; kd[2] = kx.z; kd[3] = kx.w;
            *reinterpret_cast<float4*>(v_tile + r * HD + c) = vx;
        }
        __syncthreads();

        float s[4][4];
        #pragma unroll
        for (int i = 0; i < 4; ++i)
            #pragma unroll
            for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
        #pragma unroll 8
        for (int d = 0; d < HD; ++d) {
            float q[4], k[4];
            #pragma unroll
            for (int i = 0; i < 4; ++i) q[i] = q_tile[(rows + i) * LDQ + d];
            #pragma unroll
            for (int j = 0; j < 4; ++j) k[j] = k_tile[(col + 8 * j) * LDQ + d];
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) s[i][j] = fmaf(q[i], k[j], s[i][j]);
        }
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            float mx = neg_inf;
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (k0 + col + 8 * j >= nk) s[i][j] = neg_inf;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 4));
            const float m_new = fmaxf(m[i], mx);
            const float alpha = expf(m[i] - m_new);
            float sum = 0.f;
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float p = expf(s[i][j] - m_new);
                p_tile[(rows + i) * LDP + col + 8 * j] = p;
                sum += p;
            }
            sum += __shfl_xor_sync(0xffffffff, sum, 1);
            sum += __shfl_xor_sync(0xffffffff, sum, 2);
            sum += __shfl_xor_sync(0xffffffff, sum, 4);
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
            #pragma unroll
            for (int j = 0; j < DJ; ++j) o[i][j] *= alpha;
        }
        __syncwarp();
        #pragma unroll 4
        for (int k = 0; k < BK32; ++k) {
            float p[4], v[DJ];
            #pragma unroll
            for (int i = 0; i < 4; ++i) p[i] = p_tile[(rows + i) * LDP + k];
            #pragma unroll
            for (int j = 0; j < DJ; ++j) v[j] = v_tile[k * HD + col + 8 * j];
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < DJ; ++j) o[i][j] = fmaf(p[i], v[j], o[i][j]);
        }
        __syncwarp();  // P is rewritten by the next tile
    }
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (rows + i >= nq) continue;
        const float inv = 1.f / l[i];
        float* dst = out + (size_t)(start + row0 + rows + i) * hidden + head * HD + col;
        #pragma unroll
        for (int j = 0; j < DJ; ++j) dst[8 * j] = o[i][j] * inv;
    }
}

// The flash body of a storage type: tensor cores for f16 and bf16, f32 FMA for f32.
// The flash kernel of a storage type: tensor cores for the half types (MT m-tiles a warp),
// f32 FMA for f32 (one tiling).
template <typename T, int HD, int MT> struct Flash {
    static __device__ void run(const T* qkv, int hidden, T* out, const int* meta, int n_tiles,
                               int n_seq) {
        flash_attention<T, HD, MT, false>(qkv, QuerySource<T>{}, hidden, out, meta, n_tiles,
                                          n_seq);
    }
};
template <int HD> struct Flash<float, HD, 1> {
    static __device__ void run(const float* qkv, int hidden, float* out, const int* meta,
                               int n_tiles, int n_seq) {
        flash_attention_f32<HD>(qkv, hidden, out, meta, n_tiles, n_seq);
    }
};

#define INSTANCE(SUFFIX, T, HD)                                                              \
    extern "C" __global__ void __launch_bounds__(256) esm_rope_qk_##SUFFIX(                  \
        const T* qkv, const T* bias, int rows, int hidden, T* prepared, const int* row_pos,   \
        const float* rope_table, float scale) {                                              \
        rope_qk<T, HD, 0>(qkv, bias, rows, hidden, prepared, row_pos, rope_table, scale);    \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS, FLASH_MIN_BLOCKS(T, HD))          \
        esm_flash_##SUFFIX(                                                                   \
        const T* prepared, int hidden, T* out, const int* meta, int n_tiles, int n_seq) {    \
        Flash<T, HD, 1>::run(prepared, hidden, out, meta, n_tiles, n_seq);                   \
    }

// `esm_rope_qk_v8_*`: `rope_qk` eight pairs a thread (f16 and bf16, 16-byte accesses; the
// launcher checks the alignment). `esm_rope_kv_v8_*` and `esm_flash_rq_*` (under
// ESMFUZZ_FLASH_ROTATES_Q=1, not yet run on a GPU): the same pre-pass for k and v only, and
// the flash kernel that rotates q itself as it loads it (`rotate_q_tile`; the same values as
// the default pair by construction).
// `esm_flash_w32_*`: the flash kernel with 32 query rows a warp (2 warps, 64 threads, a
// tile; the same values as `esm_flash_*`).
#define VECTOR_INSTANCE(SUFFIX, T, HD)                                                       \
    extern "C" __global__ void __launch_bounds__(256) esm_rope_qk_v8_##SUFFIX(               \
        const T* qkv, const T* bias, int rows, int hidden, T* prepared, const int* row_pos,   \
        const float* rope_table, float scale) {                                              \
        rope_qk_v8<T, HD, 0>(qkv, bias, rows, hidden, prepared, row_pos, rope_table, scale); \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) esm_rope_kv_v8_##SUFFIX(               \
        const T* qkv, const T* bias, int rows, int hidden, T* prepared, const int* row_pos,   \
        const float* rope_table, float scale) {                                              \
        rope_qk_v8<T, HD, 1>(qkv, bias, rows, hidden, prepared, row_pos, rope_table, scale); \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS, FLASH_MIN_BLOCKS(T, HD))          \
        esm_flash_rq_##SUFFIX(                                                                \
        const T* prepared, int hidden, T* out, const int* meta, int n_tiles, int n_seq,       \
        const T* qkv, const T* bias, const float* rope_table, float scale) {                 \
        flash_attention<T, HD, 1, true>(prepared, QuerySource<T>{qkv, bias, rope_table, scale},\
                                        hidden, out, meta, n_tiles, n_seq);                  \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(FlashShape<2>::THREADS_PER_TILE)            \
        esm_flash_w32_##SUFFIX(const T* prepared, int hidden, T* out, const int* meta,       \
                               int n_tiles, int n_seq) {                                     \
        Flash<T, HD, 2>::run(prepared, hidden, out, meta, n_tiles, n_seq);                   \
    }

INSTANCE(f16_hd16, __half, 16)
INSTANCE(f16_hd32, __half, 32)
INSTANCE(f16_hd64, __half, 64)
INSTANCE(bf16_hd16, __nv_bfloat16, 16)
INSTANCE(bf16_hd32, __nv_bfloat16, 32)
INSTANCE(bf16_hd64, __nv_bfloat16, 64)
INSTANCE(f32_hd16, float, 16)
INSTANCE(f32_hd32, float, 32)
INSTANCE(f32_hd64, float, 64)
VECTOR_INSTANCE(f16_hd16, __half, 16)
VECTOR_INSTANCE(f16_hd32, __half, 32)
VECTOR_INSTANCE(f16_hd64, __half, 64)
VECTOR_INSTANCE(bf16_hd16, __nv_bfloat16, 16)
VECTOR_INSTANCE(bf16_hd32, __nv_bfloat16, 32)
VECTOR_INSTANCE(bf16_hd64, __nv_bfloat16, 64)
