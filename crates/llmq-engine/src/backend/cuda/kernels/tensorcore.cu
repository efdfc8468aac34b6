// Inputs of the tensor-core prompt products (`tensor_core.rs`, cuBLAS GemmEx with f16
// inputs and f32 accumulation): a packed weight dequantized to a dense f16 matrix with
// the formulas of `dequant.cuh`, and f32 activations rounded to f16. llama.cpp's CUDA
// backend feeds cuBLAS the same way for large batches.

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// out[r * cols + i] = f16(W[r][i]); one thread per eight values (cols % 8 == 0).
template <class T>
__device__ __forceinline__ void dequant_f16_impl(const u8* w, u64 row_bytes, int rows, int cols, u16* out) {
    u64 per_row = (u64)(cols / 8);
    u64 n = (u64)rows * per_row;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / per_row;
        int c = (int)(i - r * per_row);
        float v[8];
        T::deq8(w + r * row_bytes, c, v);
        uint4 o;
        o.x = (u32)f2h(v[0]) | ((u32)f2h(v[1]) << 16);
        o.y = (u32)f2h(v[2]) | ((u32)f2h(v[3]) << 16);
        o.z = (u32)f2h(v[4]) | ((u32)f2h(v[5]) << 16);
        o.w = (u32)f2h(v[6]) | ((u32)f2h(v[7]) << 16);
        *(uint4*)(out + r * (u64)cols + 8 * (u64)c) = o;
    }
}

#define DEQUANT_F16(name, T)                                                                         \
    extern "C" __global__ void dequant_f16_##name(const u8* w, u64 row_bytes, int rows, int cols,     \
                                                  u16* out) {                                       \
        dequant_f16_impl<T>(w, row_bytes, rows, cols, out);                                          \
    }

DEQUANT_F16(q4_0, TQ4_0)
DEQUANT_F16(q4_1, TQ4_1)
DEQUANT_F16(q5_0, TQ5_0)
DEQUANT_F16(q5_1, TQ5_1)
DEQUANT_F16(q8_0, TQ8_0)
DEQUANT_F16(iq4_nl, TIQ4_NL)
DEQUANT_F16(q2_k, TQ2_K)
DEQUANT_F16(q3_k, TQ3_K)
DEQUANT_F16(q4_k, TQ4_K)
DEQUANT_F16(q5_k, TQ5_K)
DEQUANT_F16(q6_k, TQ6_K)
DEQUANT_F16(iq4_xs, TIQ4_XS)

extern "C" __global__ void f32_to_f16(const float* x, u16* y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = f2h(x[i]);
}
