// EXL3 trellis-coded Linears (exllamav3 1.x; QTIP, arXiv 2406.11235; the CPU's
// `llmq_trellis::bands` and `llmq_kernels::trellis`): y = svh ⊙ had128(Ŵᵀ·had128(suh ⊙ x))
// with Ŵ decoded in registers inside the product.
//
// Weights: `bands` order (band j = 16 output rows, its in/16 tiles one after another, each
// tile 16·K u16 words as stored, i.e. 8·K u32 of the MSB-first stream). A warp multiplies a
// tile: lane l decodes stream positions 8l..8l+7, which are tile rows r0, r0+1, r0+8, r0+9
// (r0 = 2·(l%4)) of columns c0 = l/4 and c0+8 (the mma fragment order the stream is stored
// in), from one 128-bit window of the stream (4 u32 words, funnel shifts). The state of
// position t is the stream's bits [(t+1)K − 16, (t+1)K) modulo 256K.
//
// Two decoders of a state, chosen per kernel:
//  * `alu`: the codebook's own arithmetic (exllamav3's `codebook.cuh`): 3INST / MCG a 32-bit
//    multiply, mask, xor and one fp16 add of the two halves; MUL1 a multiply, the byte sum
//    (one `dp4a`) and one fp16 fma. ~10-14 integer operations per weight with the state read.
//  * `lut`: one 2-byte load from the codebook's 65536 fp16 values (128 KiB, uploaded once,
//    read through the read-only/L1 path): the state read and one load per weight.
//
// Kernels: `exl3_in` (x ← had128(suh ⊙ x), the CPU's butterflies), `gemv_exl3_{alu_<cb>|lut}_k<K>`
// (up to 8 activation rows per pass; EXL3_SPLIT warps per band split the tiles and add
// in shared memory), `exl3_out` (had128 of each 128-output block, ⊙ svh).
//
// Needs (concatenated before it): common.cuh, rotation.cu (hadamard_butterfly).

// ---- exl3: fp16 arithmetic (the host tests bring their own)

__device__ __forceinline__ u16 exl3_hadd(u32 a, u32 b) {
    u16 r;
    asm("add.rn.f16 %0, %1, %2;" : "=h"(r) : "h"((u16)a), "h"((u16)b));
    return r;
}

__device__ __forceinline__ u16 exl3_hfma(u16 a, u16 b, u16 c) {
    u16 r;
    asm("fma.rn.f16 %0, %1, %2, %3;" : "=h"(r) : "h"(a), "h"(b), "h"(c));
    return r;
}

__device__ __forceinline__ u16 exl3_ld_lut(const u16* p) { return __ldg(p); }

// ---- exl3: decoding

#define EXL3_SPLIT 8
#define EXL3_ROWS 8

// The 16-bit state at bit `s` (0 ≤ s ≤ 87) of the MSB-first window a0:a1:a2:a3.
__device__ __forceinline__ u32 exl3_state_at(u32 a0, u32 a1, u32 a2, u32 a3, int s) {
    int j = s >> 5, sh = s & 31;
    u32 hi = j == 0 ? a0 : j == 1 ? a1 : a2;
    u32 lo = j == 0 ? a1 : j == 1 ? a2 : a3;
    return __funnelshift_l(lo, hi, sh) >> 16;
}

// The 8 states of lane `lane` in a tile of 8·K u32 words `w`.
template <int K> __device__ __forceinline__ void exl3_lane_states(const u32* w, int lane, u32* st) {
    const int nbits = 256 * K, n32 = 8 * K;
    int b0 = ((8 * lane + 1) * K - 16 + nbits) % nbits;
    int i0 = b0 >> 5, rel = b0 & 31;
    u32 a0 = w[i0], a1 = w[(i0 + 1) % n32], a2 = w[(i0 + 2) % n32], a3 = w[(i0 + 3) % n32];
#pragma unroll
    for (int q = 0; q < 8; q++) st[q] = exl3_state_at(a0, a1, a2, a3, rel + q * K);
}

// 3INST / MCG: the two fp16 halves of the masked product, added in fp16.
__device__ __forceinline__ float exl3_two_halves(u32 x) {
    x = (x & 0x8fff8fffu) ^ 0x3b603b60u;
    return h2f(exl3_hadd(x & 0xffff, x >> 16));
}

__device__ __forceinline__ float exl3_inst3(u32 s) { return exl3_two_halves(s * 89226354u + 64248484u); }
__device__ __forceinline__ float exl3_mcg(u32 s) { return exl3_two_halves(s * 0xCBAC1FEDu); }
// MUL1: the byte sum of the product as the fp16 1024 + sum, times 0x1EEE plus 0xC931 (one fma).
__device__ __forceinline__ float exl3_mul1(u32 s) {
    u32 x = s * 0x83DCD12Du;
    u32 sum = __dp4a(x, 0x01010101u, 0u);
    return h2f(exl3_hfma((u16)(0x6400u + sum), 0x1EEE, 0xC931));
}

// Codebook selectors: 0 = 3INST, 1 = MCG, 2 = MUL1, 3 = the fp16 table.
template <int CB> __device__ __forceinline__ float exl3_value(u32 s, const u16* lut) {
    if (CB == 0) return exl3_inst3(s);
    if (CB == 1) return exl3_mcg(s);
    if (CB == 2) return exl3_mul1(s);
    return h2f(exl3_ld_lut(lut + s));
}

// One tile by one lane: its 8 weights times the activations of `nr` rows (x[r] points at
// the tile's 16 inputs of row r), into acc[r][0] (column c0) and acc[r][1] (column c0+8).
template <int K, int CB>
__device__ __forceinline__ void exl3_lane_tile(const u32* w, int lane, const u16* lut, const float* x, int ldx,
                                               int nr, float (*acc)[2]) {
    u32 st[8];
    exl3_lane_states<K>(w, lane, st);
    float v[8];
#pragma unroll
    for (int q = 0; q < 8; q++) v[q] = exl3_value<CB>(st[q], lut);
    int r0 = (lane % 4) * 2;
#pragma unroll
    for (int r = 0; r < EXL3_ROWS; r++) {
        if (r < nr) {
            const float* xr = x + (u64)r * ldx;
            float x0 = xr[r0], x1 = xr[r0 + 1], x8 = xr[r0 + 8], x9 = xr[r0 + 9];
            acc[r][0] += v[0] * x0 + v[1] * x1 + v[2] * x8 + v[3] * x9;
            acc[r][1] += v[4] * x0 + v[5] * x1 + v[6] * x8 + v[7] * x9;
        }
    }
}

// ---- exl3: kernels

// xh = had128(suh ⊙ x) for n rows of `cols`; one block of 64 threads per 128 values.
extern "C" __global__ void exl3_in(const float* x, const float* suh, float* xh, int cols, float norm) {
    __shared__ float v[128];
    u64 base = (u64)blockIdx.x * 128;
    int c0 = (int)(base % cols);
    for (int i = threadIdx.x; i < 128; i += blockDim.x) v[i] = x[base + i] * suh[c0 + i];
    __syncthreads();
    for (int len = 1; len < 128; len *= 2) {
        for (int t = threadIdx.x; t < 64; t += blockDim.x) hadamard_butterfly(v, len, t);
        __syncthreads();
    }
    for (int i = threadIdx.x; i < 128; i += blockDim.x) xh[base + i] = v[i] * norm;
}

// y = svh ⊙ had128(y) in place for n rows of `rows`; one block of 64 threads per 128 values.
extern "C" __global__ void exl3_out(float* y, const float* svh, int rows, float norm) {
    __shared__ float v[128];
    u64 base = (u64)blockIdx.x * 128;
    int r0 = (int)(base % rows);
    for (int i = threadIdx.x; i < 128; i += blockDim.x) v[i] = y[base + i];
    __syncthreads();
    for (int len = 1; len < 128; len *= 2) {
        for (int t = threadIdx.x; t < 64; t += blockDim.x) hadamard_butterfly(v, len, t);
        __syncthreads();
    }
    for (int i = threadIdx.x; i < 128; i += blockDim.x) y[base + i] = v[i] * norm * svh[r0 + i];
}

// y[r, 16j + c] = Σ_i x[r, i]·Ŵ[i, 16j + c]: block (j, p) (EXL3_SPLIT warps) is band j
// for rows 8p..8p+7 of the n; warp s takes tiles s, s + EXL3_SPLIT, …; the partial sums
// meet in shared memory.
template <int K, int CB>
__device__ void exl3_gemv(const u32* words, const u16* lut, const float* x, float* y, int cols, int rows, int n) {
    __shared__ float part[EXL3_SPLIT][EXL3_ROWS][16];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tk = cols / 16;
    int first = blockIdx.y * EXL3_ROWS, nr = min(EXL3_ROWS, n - first);
    x += (u64)first * cols;
    y += (u64)first * rows;
    u64 band = blockIdx.x;
    const u32* bw = words + band * (u64)tk * (8 * K);
    float acc[EXL3_ROWS][2];
#pragma unroll
    for (int r = 0; r < EXL3_ROWS; r++) acc[r][0] = acc[r][1] = 0.0f;
    for (int i = warp; i < tk; i += EXL3_SPLIT)
        exl3_lane_tile<K, CB>(bw + (u64)i * (8 * K), lane, lut, x + i * 16, cols, nr, acc);
    // the four lanes of a column pair (l % 4 = 0..3) hold the row groups: add them
#pragma unroll
    for (int r = 0; r < EXL3_ROWS; r++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float a = acc[r][h];
            a += __shfl_xor_sync(0xffffffffu, a, 1);
            a += __shfl_xor_sync(0xffffffffu, a, 2);
            acc[r][h] = a;
        }
    if (lane % 4 == 0)
        for (int r = 0; r < nr; r++) {
            part[warp][r][lane / 4] = acc[r][0];
            part[warp][r][lane / 4 + 8] = acc[r][1];
        }
    __syncthreads();
    for (int t = threadIdx.x; t < nr * 16; t += blockDim.x) {
        int r = t / 16, c = t % 16;
        float s = 0.0f;
        for (int w = 0; w < EXL3_SPLIT; w++) s += part[w][r][c];
        y[(u64)r * rows + band * 16 + c] = s;
    }
}

#define EXL3_KERNEL(NAME, K, CB)                                                                                \
    extern "C" __global__ void NAME(const u32* words, const u16* lut, const float* x, float* y, int cols,      \
                                    int rows, int n) {                                                         \
        exl3_gemv<K, CB>(words, lut, x, y, cols, rows, n);                                                    \
    }
#define EXL3_KERNELS(K)                                                                                         \
    EXL3_KERNEL(gemv_exl3_alu_3inst_k##K, K, 0)                                                                 \
    EXL3_KERNEL(gemv_exl3_alu_mcg_k##K, K, 1)                                                                   \
    EXL3_KERNEL(gemv_exl3_alu_mul1_k##K, K, 2)                                                                  \
    EXL3_KERNEL(gemv_exl3_lut_k##K, K, 3)
EXL3_KERNELS(1)
EXL3_KERNELS(2)
EXL3_KERNELS(3)
EXL3_KERNELS(4)
EXL3_KERNELS(5)
EXL3_KERNELS(6)
EXL3_KERNELS(7)
EXL3_KERNELS(8)
