// LayerNorm over rows on CUDA, one warp per row, as esmfuzz's composed LayerNorm
// (src/model/ops.rs, `composed_layer_norm`) computes it on burn-cuda: `mean`, `x - mean`,
// `var = mean((x - mean)^2)`, `sqrt(var + eps)`, the division, then `* weight + bias`.
// src/model/cuda_norm.rs compiles this with NVRTC and launches it on cubecl's stream.
//
// Rounding points, as the composition stores them:
// - `stored` (statistics in the storage type T, a half type): the row sums are f32 (burn's
//   reductions accumulate halves in f32), each mean divided by n in f32 and rounded to T once;
//   `x - mean`, its square, `var + eps` (eps rounded to T on the host, as a scalar op on a
//   half tensor rounds it), the square root and the quotient are T operations (the same
//   cuda_fp16 / cuda_bf16 operators and `hsqrt` that cubecl's generated kernels use).
// - `wide` (statistics in f32): every statistic, the centred value and the quotient in f32,
//   the quotient rounded to T once (the policy's cast back to storage).
// Then `* weight + bias` is one T fused multiply-add in both (see `affine`). Only the order of
// the two row sums differs from burn's reductions: each lane sums its values in order, then
// the warp's lanes are added in a butterfly.
//
// f32 storage runs the `stored` body with T = float (every step f32). Rows are read three
// times (the sum, the centred squares, the output); the second and third reads hit L1.
//
// `esm_residual_layer_norm_*` first forms the residual stream's next value, as the composed
// block ends: `sum = x + (product + product_bias)`, both T adds (the linear's bias add, then
// the residual add), writes it to `sum` and normalises it as above.

#include "storage_types.cuh"

#define WARPS 4

// `normed * weight + bias` with one rounding: burn-cuda's composed LayerNorm computes it so
// (cubecl fuses the pair into an fma, or ptxas contracts the f16x2 mul and add it emits).
__device__ __forceinline__ float affine(float n, float w, float b) { return fmaf(n, w, b); }
__device__ __forceinline__ __half affine(__half n, __half w, __half b) { return __hfma(n, w, b); }
__device__ __forceinline__ __nv_bfloat16 affine(__nv_bfloat16 n, __nv_bfloat16 w, __nv_bfloat16 b) {
    return __hfma(n, w, b);
}

__device__ __forceinline__ float root(float v) { return sqrtf(v); }
__device__ __forceinline__ __half root(__half v) { return hsqrt(v); }
__device__ __forceinline__ __nv_bfloat16 root(__nv_bfloat16 v) { return hsqrt(v); }

template <typename T, int V> __device__ __forceinline__ Pack<T, V> load(const T* p) {
    return *reinterpret_cast<const Pack<T, V>*>(p);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// The residual add before a norm: `x + (product + product_bias)` (null `product`: none).
template <typename T> struct Residual {
    const T* product;
    const T* product_bias;
    T* sum;
};

// Row `blockIdx.x * WARPS + warp` of `x [rows, hidden]` (with `residual.product`: of the
// residual sum, written to `residual.sum`) into `out`; lane l takes values l * V + 32 * V * k.
// `hidden` is a multiple of V and each row starts V-aligned.
template <typename T, int V, bool STORED>
__device__ void layer_norm_row(
    const T* __restrict__ x, const Residual<T> residual, const T* __restrict__ weight,
    const T* __restrict__ bias, T* __restrict__ out, const int rows, const int hidden,
    const float eps)
{
    const int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // the whole warp: the shuffles below see all 32 lanes
    const size_t row0 = (size_t)row * hidden;
    const T* src = x + row0;
    T* dst = out + row0;
    const float n = (float)hidden;

    float sum = 0.0f;
    if (residual.product) {
        // The stream's next value, written once; the later passes read it back (this
        // thread's own writes).
        for (int j = lane * V; j < hidden; j += 32 * V) {
            const Pack<T, V> p = load<T, V>(src + j);
            const Pack<T, V> y = load<T, V>(residual.product + row0 + j);
            const Pack<T, V> yb = load<T, V>(residual.product_bias + j);
            Pack<T, V> s;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                s.v[k] = p.v[k] + T(y.v[k] + yb.v[k]);
                sum += widen(s.v[k]);
            }
            *reinterpret_cast<Pack<T, V>*>(residual.sum + row0 + j) = s;
        }
        src = residual.sum + row0;
    } else {
        for (int j = lane * V; j < hidden; j += 32 * V) {
            const Pack<T, V> p = load<T, V>(src + j);
#pragma unroll
            for (int k = 0; k < V; ++k) sum += widen(p.v[k]);
        }
    }
    sum = warp_sum(sum);

    if (STORED) {
        const T mean = narrow<T>(sum / n);
        float squares = 0.0f;
        for (int j = lane * V; j < hidden; j += 32 * V) {
            const Pack<T, V> p = load<T, V>(src + j);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const T c = p.v[k] - mean;
                squares += widen(T(c * c));
            }
        }
        squares = warp_sum(squares);
        const T var = narrow<T>(squares / n);
        const T scale = root(T(var + narrow<T>(eps)));
        for (int j = lane * V; j < hidden; j += 32 * V) {
            const Pack<T, V> p = load<T, V>(src + j);
            const Pack<T, V> w = load<T, V>(weight + j);
            const Pack<T, V> b = load<T, V>(bias + j);
            Pack<T, V> o;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const T c = p.v[k] - mean;
                const T normed = c / scale;
                o.v[k] = affine(normed, w.v[k], b.v[k]);
            }
            *reinterpret_cast<Pack<T, V>*>(dst + j) = o;
        }
    } else {
        const float mean = sum / n;
        float squares = 0.0f;
        for (int j = lane * V; j < hidden; j += 32 * V) {
            const Pack<T, V> p = load<T, V>(src + j);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float c = widen(p.v[k]) - mean;
                squares += c * c;
            }
        }
        squares = warp_sum(squares);
        const float scale = sqrtf(squares / n + eps);
        for (int j = lane * V; j < hidden; j += 32 * V) {
            const Pack<T, V> p = load<T, V>(src + j);
            const Pack<T, V> w = load<T, V>(weight + j);
            const Pack<T, V> b = load<T, V>(bias + j);
            Pack<T, V> o;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const T normed = narrow<T>((widen(p.v[k]) - mean) / scale);
                o.v[k] = affine(normed, w.v[k], b.v[k]);
            }
            *reinterpret_cast<Pack<T, V>*>(dst + j) = o;
        }
    }
}

// `esm_layer_norm_<dtype>_<stored|wide>_v<V>` and `esm_residual_layer_norm_...`: blocks of
// WARPS rows.
#define INSTANCE(NAME, T, V, STORED)                                                         \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) esm_##NAME(                     \
        const T* x, const T* weight, const T* bias, T* out, int rows, int hidden, float eps) { \
        const Residual<T> none = {nullptr, nullptr, nullptr};                                 \
        layer_norm_row<T, V, STORED>(x, none, weight, bias, out, rows, hidden, eps);          \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) esm_residual_##NAME(            \
        const T* x, const T* product, const T* product_bias, T* sum, const T* weight,         \
        const T* bias, T* out, int rows, int hidden, float eps) {                             \
        const Residual<T> residual = {product, product_bias, sum};                            \
        layer_norm_row<T, V, STORED>(x, residual, weight, bias, out, rows, hidden, eps);      \
    }

INSTANCE(layer_norm_f16_stored_v8, __half, 8, true)
INSTANCE(layer_norm_f16_stored_v1, __half, 1, true)
INSTANCE(layer_norm_f16_wide_v8, __half, 8, false)
INSTANCE(layer_norm_f16_wide_v1, __half, 1, false)
INSTANCE(layer_norm_bf16_stored_v8, __nv_bfloat16, 8, true)
INSTANCE(layer_norm_bf16_stored_v1, __nv_bfloat16, 1, true)
INSTANCE(layer_norm_bf16_wide_v8, __nv_bfloat16, 8, false)
INSTANCE(layer_norm_bf16_wide_v1, __nv_bfloat16, 1, false)
INSTANCE(layer_norm_f32_stored_v4, float, 4, true)
INSTANCE(layer_norm_f32_stored_v1, float, 1, true)
