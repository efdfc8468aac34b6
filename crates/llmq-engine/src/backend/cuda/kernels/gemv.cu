// Products with packed weights: `y = x · Wᵀ` reading W's GGML blocks directly (fused
// dequantization, no dequantized copy), and embedding lookup of packed rows.
//
// GEMV layout: a block of GEMV_WARPS warps, one warp per weight row; lane `k` of the
// warp dequantizes chunks k, k+32, ... (8 values each, so a warp covers 256 values per
// step and its loads of one row are contiguous) and multiplies each with up to
// GEMV_NB activation rows at once, so a batch of n rows reads W ceil(n / GEMV_NB)
// times. Partial sums are reduced across the warp with shuffles.

#define GEMV_WARPS 4
#define GEMV_NB 8

template <class T>
__device__ __forceinline__ void gemv_impl(const u8* w, u64 row_bytes, int rows, int cols, const float* x,
                                          float* y, int n) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int r0 = blockIdx.y * GEMV_NB;
    if (row >= rows) return;
    int nb = min(GEMV_NB, n - r0);
    const u8* wr = w + (u64)row * row_bytes;
    const float* xb = x + (u64)r0 * cols;
    float acc[GEMV_NB];
#pragma unroll
    for (int r = 0; r < GEMV_NB; r++) acc[r] = 0.0f;
    int chunks = cols >> 3;
    // activation rows start 16-byte aligned when 4 | cols: two float4 loads per chunk
    bool vec = (cols & 3) == 0;
    for (int c = lane; c < chunks; c += 32) {
        float v[8];
        T::deq8(wr, c, v);
#pragma unroll
        for (int r = 0; r < GEMV_NB; r++) {
            if (r < nb) {
                const float* xr = xb + (u64)r * cols + 8 * c;
                float s = 0.0f;
                if (vec) {
                    float4 a = *(const float4*)xr, b = *(const float4*)(xr + 4);
                    s = v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y +
                        v[6] * b.z + v[7] * b.w;
                } else {
#pragma unroll
                    for (int k = 0; k < 8; k++) s += v[k] * xr[k];
                }
                acc[r] += s;
            }
        }
    }
    // columns past the last whole chunk (dense types only: block types have 32 | cols)
    for (int i = chunks * 8 + lane; i < cols; i += 32) {
        float v = T::deq1(wr, i);
#pragma unroll
        for (int r = 0; r < GEMV_NB; r++)
            if (r < nb) acc[r] += v * xb[(u64)r * cols + i];
    }
#pragma unroll
    for (int r = 0; r < GEMV_NB; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r < nb) y[(u64)(r0 + r) * rows + row] = s;
    }
}

// out[t] = dequant(W[ids[t]]) * scale
template <class T>
__device__ __forceinline__ void embed_impl(const u8* w, u64 row_bytes, int cols, const int* ids, float* out,
                                           float scale) {
    const u8* wr = w + (u64)ids[blockIdx.x] * row_bytes;
    float* o = out + (u64)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = T::deq1(wr, i) * scale;
}

#define WEIGHT_KERNELS(name, T)                                                                           \
    extern "C" __global__ void gemv_##name(const u8* w, u64 row_bytes, int rows, int cols, const float* x, \
                                           float* y, int n) {                                             \
        gemv_impl<T>(w, row_bytes, rows, cols, x, y, n);                                                  \
    }                                                                                                     \
    extern "C" __global__ void embed_##name(const u8* w, u64 row_bytes, int cols, const int* ids,          \
                                            float* out, float scale) {                                    \
        embed_impl<T>(w, row_bytes, cols, ids, out, scale);                                               \
    }

WEIGHT_KERNELS(f32, TF32)
WEIGHT_KERNELS(f16, TF16)
WEIGHT_KERNELS(bf16, TBF16)
WEIGHT_KERNELS(q4_0, TQ4_0)
WEIGHT_KERNELS(q4_1, TQ4_1)
WEIGHT_KERNELS(q5_0, TQ5_0)
WEIGHT_KERNELS(q5_1, TQ5_1)
WEIGHT_KERNELS(q8_0, TQ8_0)
WEIGHT_KERNELS(iq4_nl, TIQ4_NL)
WEIGHT_KERNELS(q2_k, TQ2_K)
WEIGHT_KERNELS(q3_k, TQ3_K)
WEIGHT_KERNELS(q4_k, TQ4_K)
WEIGHT_KERNELS(q5_k, TQ5_K)
WEIGHT_KERNELS(q6_k, TQ6_K)
WEIGHT_KERNELS(iq4_xs, TIQ4_XS)
