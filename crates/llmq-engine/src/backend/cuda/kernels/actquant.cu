// The CPU engine's activation quantization, as values: the activations a weight
// product sees on the CPU are rounded through ggml's `vec_dot_type` of the weight
// (`llmq_kernels::kernels::act_quant`: Q8_0 blocks of 32 with an f16 scale, Q8_K blocks
// of 256 with an f32 scale). Rounding x the same way before the f32 GEMV makes the GPU
// compute the function the CPU computes, up to summation order.

__device__ __forceinline__ float f16_round(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h2f(h);
}

// One warp per 32-value block: d = amax/127 (stored as f16), q = round_even(x*127/amax).
extern "C" __global__ void act_q8_0(const float* x, float* y, u64 n_blocks) {
    int lane = threadIdx.x & 31;
    u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 b = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; b < n_blocks; b += warps) {
        float v = x[b * 32 + lane];
        float amax = warp_max(fabsf(v));
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b * 32 + lane] = f16_round(d) * rintf(v * id);
    }
}

// The Q8_K scale of the 256-value block at x + base, one value `v` per thread of a
// 256-thread block: iscale = -127 / max, `max` the first value of largest magnitude
// (ggml's quantize_row_q8_K_ref); 0 for an all-zero block. `sa`/`si`: 8 shared slots.
__device__ float q8k_iscale(const float* x, u64 base, float v, float* sa, int* si) {
    int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    float a = fabsf(v);
    int idx = t;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float a2 = __shfl_xor_sync(0xffffffffu, a, o);
        int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
        if (a2 > a || (a2 == a && i2 < idx)) {
            a = a2;
            idx = i2;
        }
    }
    if (lane == 0) {
        sa[warp] = a;
        si[warp] = idx;
    }
    __syncthreads();
    float best = sa[0];
    int bi = si[0];
    for (int w = 1; w < 8; w++) {
        if (sa[w] > best || (sa[w] == best && si[w] < bi)) {
            best = sa[w];
            bi = si[w];
        }
    }
    return best == 0.0f ? 0.0f : -127.0f / x[base + bi];
}

// One block of 256 threads per 256-value block: q = min(round_even(iscale*x), 127),
// value d*q with d = 1/iscale.
extern "C" __global__ void act_q8_k(const float* x, float* y) {
    __shared__ float sa[8];
    __shared__ int si[8];
    u64 base = (u64)blockIdx.x * 256;
    float v = x[base + threadIdx.x];
    float iscale = q8k_iscale(x, base, v, sa, si);
    if (iscale == 0.0f) {
        y[base + threadIdx.x] = 0.0f;
        return;
    }
    float q = fminf(rintf(iscale * v), 127.0f);
    y[base + threadIdx.x] = (1.0f / iscale) * q;
}
