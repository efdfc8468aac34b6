// Products with packed weights: `y = x · Wᵀ` reading W's GGML blocks directly (fused
// dequantization, no dequantized copy), and embedding lookup of packed rows.
//
// GEMV layout: a block of GEMV_WARPS warps, one warp per weight row; lane `k` of the
// warp dequantizes chunks k, k+32, ... (8 values each, so a warp covers 256 values per
// step and its loads of one row are contiguous) and multiplies each with up to NB
// activation rows at once (`gemv_*`: NB = GEMV_NB, so a batch of n rows reads W
// ceil(n / GEMV_NB) times; `gemv1_*`: one row, fewer registers, the loop unrolled four
// times so each lane has four loads in flight). Partial sums are reduced across the warp
// with shuffles. The FP formats' products (`fp4.cu`, `fp_ct.cu`) run on `gemvu_impl`:
// the same layout over a per-type unit of 16 to 64 values decoded from word loads.

#define GEMV_WARPS 4
#define GEMV_NB 8
// In a template over the activation rows NB: the loop that follows unrolled four times
// for one row (more loads in flight), not for batches (registers).
#define UNROLL_ONE_ROW _Pragma("unroll (NB == 1 ? 4 : 1)")

template <class T, int NB>
__device__ __forceinline__ void gemv_impl(const u8* __restrict__ w, u64 row_bytes, int rows, int cols,
                                          const float* __restrict__ x, float* __restrict__ y, int n) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int r0 = blockIdx.y * NB;
    if (row >= rows) return;
    int nb = min(NB, n - r0);
    const u8* wr = w + (u64)row * row_bytes;
    const float* xb = x + (u64)r0 * cols;
    float acc[NB];
#pragma unroll
    for (int r = 0; r < NB; r++) acc[r] = 0.0f;
    int chunks = cols >> 3;
    // activation rows start 16-byte aligned when 4 | cols: two float4 loads per chunk
    bool vec = (cols & 3) == 0;
UNROLL_ONE_ROW
    for (int c = lane; c < chunks; c += 32) {
        float v[8];
        T::deq8(wr, c, v);
#pragma unroll
        for (int r = 0; r < NB; r++) {
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
        for (int r = 0; r < NB; r++)
            if (r < nb) acc[r] += v * xb[(u64)r * cols + i];
    }
#pragma unroll
    for (int r = 0; r < NB; r++) {
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

// The float-activation products by unit (the FP formats): U::UNIT values per lane step
// (cols % U::UNIT == 0), `U::dot<NB>(row, u, x, cols, nb, acc)` adds unit u's products
// with the nb activation rows at x (row stride cols). Same warp layout as gemv_impl.
template <class U, int NB>
__device__ __forceinline__ void gemvu_impl(const u8* __restrict__ w, u64 row_bytes, int rows, int cols,
                                           const float* __restrict__ x, float* __restrict__ y, int n) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int r0 = blockIdx.y * NB;
    if (row >= rows) return;
    int nb = min(NB, n - r0);
    const u8* wr = w + (u64)row * row_bytes;
    const float* xb = x + (u64)r0 * cols;
    float acc[NB];
#pragma unroll
    for (int r = 0; r < NB; r++) acc[r] = 0.0f;
    int units = cols / U::UNIT;
UNROLL_ONE_ROW
    for (int u = lane; u < units; u += 32) U::template dot<NB>(wr, u, xb, cols, nb, acc);
#pragma unroll
    for (int r = 0; r < NB; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r < nb) y[(u64)(r0 + r) * rows + row] = s;
    }
}

// `gemv_<name>` (batches of GEMV_NB rows) and `gemv1_<name>` (one row) over `impl<T, NB>`.
#define GEMV_KERNELS(name, impl, T)                                                                        \
    extern "C" __global__ void gemv_##name(const u8* w, u64 row_bytes, int rows, int cols, const float* x, \
                                           float* y, int n) {                                             \
        impl<T, GEMV_NB>(w, row_bytes, rows, cols, x, y, n);                                               \
    }                                                                                                     \
    extern "C" __global__ void gemv1_##name(const u8* w, u64 row_bytes, int rows, int cols, const float* x, \
                                            float* y, int n) {                                             \
        impl<T, 1>(w, row_bytes, rows, cols, x, y, n);                                                     \
    }

#define EMBED_KERNEL(name, T)                                                                             \
    extern "C" __global__ void embed_##name(const u8* w, u64 row_bytes, int cols, const int* ids,          \
                                            float* out, float scale) {                                    \
        embed_impl<T>(w, row_bytes, cols, ids, out, scale);                                               \
    }

// gemv_<name> and embed_<name> (the types whose one-row products are integer kernels)
#define WEIGHT_KERNELS(name, T)                                                                           \
    extern "C" __global__ void gemv_##name(const u8* w, u64 row_bytes, int rows, int cols, const float* x, \
                                           float* y, int n) {                                             \
        gemv_impl<T, GEMV_NB>(w, row_bytes, rows, cols, x, y, n);                                          \
    }                                                                                                     \
    EMBED_KERNEL(name, T)

// dense types: float products at every batch size
GEMV_KERNELS(f32, gemv_impl, TF32)
EMBED_KERNEL(f32, TF32)
GEMV_KERNELS(f16, gemv_impl, TF16)
EMBED_KERNEL(f16, TF16)
GEMV_KERNELS(bf16, gemv_impl, TBF16)
EMBED_KERNEL(bf16, TBF16)
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
