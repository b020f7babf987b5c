// The storage types of esmfuzz's CUDA kernels (f32, f16, bf16) and the conversions and vector
// access they share: included by every `.cu` program here. NVRTC gets this file as an
// in-memory header (src/model/nvrtc.rs); scripts/nvrtc_check.py finds it beside the programs.

#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

// A stored value as f32 (exact).
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// An f32 value rounded to the storage type T (to nearest even).
template <typename T> __device__ __forceinline__ T narrow(float v);
template <> __device__ __forceinline__ float narrow<float>(float v) { return v; }
template <> __device__ __forceinline__ __half narrow<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// V consecutive values of T, loaded and stored as one access (16 bytes where V * sizeof(T)
// is 16).
template <typename T, int V> struct alignas(sizeof(T) * V) Pack {
    T v[V];
};
