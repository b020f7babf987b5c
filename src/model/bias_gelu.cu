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
// `esm_bias_gelu_<dtype>_v<V>`: each thread takes V consecutive values (one 16-byte access
// where V * sizeof(T) is 16: the row width a multiple of V and the buffers 16-byte aligned),
// in a grid-stride loop over `rows * width` values.

#include "storage_types.cuh"

#define THREADS 256

// The exact GELU of `y` (already `x + bias`), each step rounded to T.
template <typename T> __device__ __forceinline__ T gelu(const T y) {
    const T sqrt2 = narrow<T>(1.41421356237309515f);
    const T t = y / sqrt2;
    const T e = narrow<T>(erff(widen(t)));
    const T cdf = T(e + narrow<T>(1.0f)) * narrow<T>(0.5f);
    return y * cdf;
}

template <typename T, int V>
__device__ void bias_gelu(
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out,
    const long long values, const int width)
{
    const long long stride = (long long)gridDim.x * THREADS * V;
    for (long long i = ((long long)blockIdx.x * THREADS + threadIdx.x) * V; i < values;
         i += stride) {
        const int col = (int)(i % width);
        const Pack<T, V> p = *reinterpret_cast<const Pack<T, V>*>(x + i);
        const Pack<T, V> b = *reinterpret_cast<const Pack<T, V>*>(bias + col);
        Pack<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) o.v[k] = gelu<T>(T(p.v[k] + b.v[k]));
        *reinterpret_cast<Pack<T, V>*>(out + i) = o;
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
