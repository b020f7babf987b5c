// `gelu(x + bias)` on CUDA in one pass, as esmfuzz's composed FFN activation
// (src/model/device.rs, `forward_gelu`; src/model/ops.rs, `gelu_exact`) computes it on
// burn-cuda: the bias add, `x / sqrt 2`, erf, `+ 1`, `* 0.5`, `x * cdf`, six element-wise
// steps that burn's fusion compiles into one kernel which still reads and writes through its
// generic indexing. src/model/cuda_gelu.rs compiles this with NVRTC and launches it on
// cubecl's stream.
//
// Rounding points, as the composition stores them: every step is an operation of the
// storage type T (the cuda_fp16 / cuda_bf16 operators cubecl's generated kernels use), its
// scalars (`sqrt 2`, 1, 0.5) rounded to T as a scalar op on a T tensor rounds them; erf is
// the f32 `erff` of the widened value, rounded to T (cubecl emits `T(erf(float(x)))` for half
// types). No multiply feeds an add, so no contraction can move a rounding. f32 storage: every
// step f32.
//
// Half types take the same steps two lanes at a time (`__hadd2`, `__hmul2`: each lane rounded
// as the scalar operator rounds it), and their division by T(sqrt 2) = 181/128 is
// `T(float(y) * INV_T_SQRT2)`: one multiply instead of `__hdiv`'s reciprocal, multiply and
// subnormal fix-up. Both give the correctly rounded quotient for every f16 and bf16 value,
// proven exhaustively on the host (src/model/cuda_gelu.rs, `half_division_by_sqrt2_...`) and
// checked on every bit pattern against the composition (tests/suite/bias_gelu_kernels.rs).
//
// `esm_bias_gelu_<dtype>_v<V>`: each thread takes V consecutive values (one 16-byte access
// where V * sizeof(T) is 16: the row width a multiple of V and the buffers 16-byte aligned),
// in a grid-stride loop over `rows * width` values.

#include "storage_types.cuh"

#define THREADS 256

// 128/181, the reciprocal of T(sqrt 2) in f16 and bf16, rounded to f32.
#define INV_T_SQRT2 0x1.6a13cep-1f

// The exact GELU of `y` (already `x + bias`), each step rounded to T (the f32 path, and the
// odd lane of a half type).
template <typename T> __device__ __forceinline__ T gelu(const T y) {
    const T sqrt2 = narrow<T>(1.41421356237309515f);
    const T t = y / sqrt2;
    const T e = narrow<T>(erff(widen(t)));
    const T cdf = T(e + narrow<T>(1.0f)) * narrow<T>(0.5f);
    return y * cdf;
}

// The half types' lane pairs and their packed operations.
template <typename T> struct Pair;
template <> struct Pair<__half> {
    using type = __half2;
    static __device__ __forceinline__ __half2 from_floats(const float a, const float b) {
        return __floats2half2_rn(a, b);
    }
};
template <> struct Pair<__nv_bfloat16> {
    using type = __nv_bfloat162;
    static __device__ __forceinline__ __nv_bfloat162 from_floats(const float a, const float b) {
        return __floats2bfloat162_rn(a, b);
    }
};

// `gelu` of two half values: the same steps and roundings, two lanes per instruction where
// the lanes can share one.
template <typename T>
__device__ __forceinline__ typename Pair<T>::type gelu_pair(const typename Pair<T>::type y) {
    using P = Pair<T>;
    const float y_lo = widen(y.x), y_hi = widen(y.y);
    const auto t = P::from_floats(y_lo * INV_T_SQRT2, y_hi * INV_T_SQRT2);
    const auto e = P::from_floats(erff(widen(t.x)), erff(widen(t.y)));
    const auto one = P::from_floats(1.0f, 1.0f);
    const auto half = P::from_floats(0.5f, 0.5f);
    return __hmul2(y, __hmul2(__hadd2(e, one), half));
}

// `gelu(x + bias)` for V values at `x + i` (column `col`).
template <typename T, int V> struct Lanes {
    static __device__ __forceinline__ Pack<T, V> apply(const Pack<T, V>& p, const Pack<T, V>& b) {
        Pack<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) o.v[k] = gelu<T>(T(p.v[k] + b.v[k]));
        return o;
    }
};
template <typename T> struct HalfLanes {
    static __device__ __forceinline__ Pack<T, 8> apply(const Pack<T, 8>& p, const Pack<T, 8>& b) {
        using T2 = typename Pair<T>::type;
        const auto* x2 = reinterpret_cast<const T2*>(p.v);
        const auto* b2 = reinterpret_cast<const T2*>(b.v);
        Pack<T, 8> o;
        auto* o2 = reinterpret_cast<T2*>(o.v);
#pragma unroll
        for (int k = 0; k < 4; ++k) o2[k] = gelu_pair<T>(__hadd2(x2[k], b2[k]));
        return o;
    }
};
template <> struct Lanes<__half, 8> : HalfLanes<__half> {};
template <> struct Lanes<__nv_bfloat16, 8> : HalfLanes<__nv_bfloat16> {};

template <typename T, int V>
__device__ void bias_gelu(
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out,
    const long long values, const int width)
{
    const long long stride = (long long)gridDim.x * THREADS * V;
    long long i = ((long long)blockIdx.x * THREADS + threadIdx.x) * V;
    if (i >= values) return;
    // The column of `i`, carried along the stride instead of divided out each step.
    int col = (int)(i % width);
    const int col_step = (int)(stride % width);
    for (; i < values; i += stride) {
        const Pack<T, V> p = *reinterpret_cast<const Pack<T, V>*>(x + i);
        const Pack<T, V> b = *reinterpret_cast<const Pack<T, V>*>(bias + col);
        *reinterpret_cast<Pack<T, V>*>(out + i) = Lanes<T, V>::apply(p, b);
        col += col_step;
        if (col >= width) col -= width;
    }
}

#define INSTANCE(NAME, T, V)                                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS) esm_##NAME(                        \
        const T* x, const T* bias, T* out, const long long values, const int width) {        \
        bias_gelu<T, V>(x, bias, out, values, width);                                        \
    }

INSTANCE(bias_gelu_f16_v8, __half, 8)
INSTANCE(bias_gelu_f16_v1, __half, 1)
INSTANCE(bias_gelu_bf16_v8, __nv_bfloat16, 8)
INSTANCE(bias_gelu_bf16_v1, __nv_bfloat16, 1)
INSTANCE(bias_gelu_f32_v4, float, 4)
INSTANCE(bias_gelu_f32_v1, float, 1)
