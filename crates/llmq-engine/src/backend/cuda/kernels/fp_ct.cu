// Compressed-tensors floating-point weights on the GPU, in the packed rows of
// `llmq_kernels::fp_blocks` (`WeightType::Fp`; reference-facts §5e, OCP MX v1.0 for
// E2M1, NVIDIA's FP8 E4M3): NVFP4 with its per-row FP32 global scale and an E4M3 scale
// per 16 values, and FP8 E4M3 with an FP32 scale per block of B columns (per-tensor,
// per-channel and 128x128 checkpoints alike). MXFP4-in-Fp rows are ggml's block_mxfp4
// and run on `fp4.cu`'s TMXFP4. Every value is decoded in registers exactly as
// `fp_blocks::dequantize_fp_row` decodes it (H100 has no FP4 tensor cores), so the
// float GEMV and embedding of `gemv.cu` (f32 activations, as the CPU's `dot_fp`) and
// the f16 dequantization of `tensorcore.cu` serve them with the per-type pieces here.
//
// The products (`gemv_*` for batches, `gemv1_*` for one row) decode a unit of 16 to 64
// values per lane from word loads (`fp_ct: float units`), one scale per block; the
// embedding and the f16 dequantization keep the 8-value decoders.
//
// Needs (concatenated before it): common.cuh, dequant.cuh, gemv.cu, tensorcore.cu.

// ---- fp_ct: dequantization

// An E4M3 byte's value (not NaN: refused at load), built from its fields so no f32
// subnormal is involved: 2^(e-7)·(1 + m/8), or m·2^-9 for e = 0; bit 7 is the sign.
__device__ __forceinline__ float e4m3_val(u32 b) {
    u32 e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? (float)m * (1.0f / 512.0f) : __uint_as_float(((e + 120) << 23) | (m << 20));
    return (b & 0x80) ? -v : v;
}

// f32 rounded to the nearest bf16, ties to even (the values are finite).
__device__ __forceinline__ float bf16_round(float f) {
    u32 x = __float_as_uint(f);
    x += 0x7FFFu + ((x >> 16) & 1u);
    return __uint_as_float(x & 0xFFFF0000u);
}

// E2M1 magnitudes by the low 3 bits of a code.
__constant__ float E2M1_MAG[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

// NVFP4 (compressed-tensors), row = FP32 global scale g, then per 16 values a 9-byte
// block: E4M3 scale s, 8 code bytes (value 2j in the low nibble of byte j, 2j+1 in the
// high one); value = ±bf16(E2M1 · (s / g)).
struct TNVFP4CT {
    static __device__ __forceinline__ float level(u32 code, float s) {
        float v = bf16_round(E2M1_MAG[code & 7] * s);
        return (code & 8) ? -v : v;
    }
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        float g = __uint_as_float(ld32(r));
        const u8* b = r + 4 + (c >> 1) * 9;
        float s = e4m3_val(b[0]) / g;
        const u8* q = b + 1 + (c & 1) * 4;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            u32 v = q[k];
            o[2 * k] = level(v & 15, s);
            o[2 * k + 1] = level(v >> 4, s);
        }
    }
    DEQ1_FROM_DEQ8
};

// FP8 E4M3 in blocks of B columns (B a multiple of 8, at most 128): per block an FP32
// scale (4 bytes) then B code bytes; value = e4m3 · scale. Blocks are 4-byte aligned.
template <int B>
struct TFP8 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        int v0 = 8 * c;
        const u8* blk = r + (v0 / B) * (4 + B);
        float s = __uint_as_float(*(const u32*)blk);
        const u32* q = (const u32*)(blk + 4 + v0 % B);
        u32 w0 = q[0], w1 = q[1];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            o[k] = e4m3_val((w0 >> (8 * k)) & 0xFF) * s;
            o[k + 4] = e4m3_val((w1 >> (8 * k)) & 0xFF) * s;
        }
    }
    DEQ1_FROM_DEQ8
};

// ---- fp_ct: float units

// The one-row and batch products (`gemvu_impl` in gemv.cu) decode a lane's values from
// word loads in registers (`e2m1_scaled`, `WORD_AT`, `dotf` of fp4.cu's float units).
// An E4M3 byte (bits 24..31 of t) as ±e4m3·2^-120 is its bits 0..6 moved to bits 20..26
// of an f32 (E4M3 subnormals land on f32 subnormals), as `fp_blocks::e4m3_value` does;
// times 2^120 (exact) it is the CPU's value bit for bit.
#define TWO_P120 __uint_as_float(0x7B800000u)

__device__ __forceinline__ float e4m3_scaled(u32 t) { return __uint_as_float((u32)((int)t >> 4) & 0x87F00000u); }

// a and b rounded to the nearest bf16, ties to even (one conversion for both on sm_80+).
__device__ __forceinline__ void bf16_round2(float& a, float& b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    u32 d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(a), "f"(b));
    a = __uint_as_float(d & 0xFFFF0000u);
    b = __uint_as_float(d << 16);
#else
    a = bf16_round(a);
    b = bf16_round(b);
#endif
}

// NVFP4: unit = four blocks (64 values, 36 bytes: nine words, 4-byte aligned when
// 64 | cols). Per block s' = e4m3(s) / g once, each value ±bf16(e2m1 · s') exactly as
// `dequantize_fp_row` (bf16 rounding is symmetric, so the sign may come first).
struct UNVFP4CT {
    static const int UNIT = 64;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const float* x, int cols, int nb, float* acc) {
        float g = __uint_as_float(*(const u32*)row);
        const u32* q = (const u32*)(row + 4 + 36 * u);
        u32 w[10];  // (w[9]: the unread word of WORD_AT's untaken branch)
#pragma unroll
        for (int k = 0; k < 9; k++) w[k] = q[k];
        w[9] = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float sd = e4m3_val((w[(9 * j) / 4] >> (8 * ((9 * j) % 4))) & 0xFF) / g;
            u32 c[2] = {WORD_AT(w, 9 * j + 1), WORD_AT(w, 9 * j + 5)};
            float v[16];
            // ±e2m1·2^-126 times s'·2^126 is ±e2m1·s' rounded once, the CPU's product, while
            // s'·2^126 is finite (|s'| < 4, as NVFP4 scales are): one multiply per value
            if (fabsf(sd) < 4.0f) {
                float f = sd * TWO_P126;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    u32 cw = c[i >> 2];
                    int b = i & 3;
                    float lo = e2m1_scaled(cw << (28 - 8 * b)) * f;
                    float hi = e2m1_scaled(cw << (24 - 8 * b)) * f;
                    bf16_round2(lo, hi);
                    v[2 * i] = lo;
                    v[2 * i + 1] = hi;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    u32 cw = c[i >> 2];
                    int b = i & 3;
                    float lo = e2m1_scaled(cw << (28 - 8 * b)) * TWO_P126 * sd;
                    float hi = e2m1_scaled(cw << (24 - 8 * b)) * TWO_P126 * sd;
                    bf16_round2(lo, hi);
                    v[2 * i] = lo;
                    v[2 * i + 1] = hi;
                }
            }
#pragma unroll
            for (int r = 0; r < NB; r++)
                if (r < nb) acc[r] += dotf<16>(v, x + (u64)r * cols + 64 * u + 16 * j);
        }
    }
};

// FP8 in blocks of B: unit = 16 values of one block (8 for B = 8), four bytes per word
// load (blocks are 4-byte aligned); Σ e4m3·x per unit, times the block's scale, as
// `dot_fp8` takes the scale out of each block.
template <int B>
struct UFP8 {
    static const int UNIT = B < 16 ? B : 16;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const float* x, int cols, int nb, float* acc) {
        int v0 = u * UNIT;
        const u8* blk = row + (v0 / B) * (4 + B);
        float s = __uint_as_float(*(const u32*)blk);
        const u32* q = (const u32*)(blk + 4 + v0 % B);
        float v[UNIT];
#pragma unroll
        for (int k = 0; k < UNIT / 4; k++) {
            u32 t = q[k];
            v[4 * k] = e4m3_scaled(t << 24) * TWO_P120;
            v[4 * k + 1] = e4m3_scaled(t << 16) * TWO_P120;
            v[4 * k + 2] = e4m3_scaled(t << 8) * TWO_P120;
            v[4 * k + 3] = e4m3_scaled(t) * TWO_P120;
        }
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < nb) acc[r] += dotf<UNIT>(v, x + (u64)r * cols + v0) * s;
        }
    }
};

// ---- fp_ct: kernels

// NVFP4 rows of 64 | cols on the unit above, others (16 | cols: byte-aligned blocks) on
// the decoder of 8 values
template <class T, int NB>
__device__ __forceinline__ void gemv_nvfp4_ct_impl(const u8* __restrict__ w, u64 row_bytes, int rows, int cols,
                                                   const float* __restrict__ x, float* __restrict__ y, int n) {
    if (cols % 64 == 0)
        gemvu_impl<UNVFP4CT, NB>(w, row_bytes, rows, cols, x, y, n);
    else
        gemv_impl<T, NB>(w, row_bytes, rows, cols, x, y, n);
}

GEMV_KERNELS(nvfp4_ct, gemv_nvfp4_ct_impl, TNVFP4CT)
GEMV_KERNELS(fp8_b8, gemvu_impl, UFP8<8>)
GEMV_KERNELS(fp8_b16, gemvu_impl, UFP8<16>)
GEMV_KERNELS(fp8_b32, gemvu_impl, UFP8<32>)
GEMV_KERNELS(fp8_b64, gemvu_impl, UFP8<64>)
GEMV_KERNELS(fp8_b128, gemvu_impl, UFP8<128>)
EMBED_KERNEL(nvfp4_ct, TNVFP4CT)
EMBED_KERNEL(fp8_b8, TFP8<8>)
EMBED_KERNEL(fp8_b16, TFP8<16>)
EMBED_KERNEL(fp8_b32, TFP8<32>)
EMBED_KERNEL(fp8_b64, TFP8<64>)
EMBED_KERNEL(fp8_b128, TFP8<128>)
DEQUANT_F16(nvfp4_ct, TNVFP4CT)
DEQUANT_F16(fp8_b8, TFP8<8>)
DEQUANT_F16(fp8_b16, TFP8<16>)
DEQUANT_F16(fp8_b32, TFP8<32>)
DEQUANT_F16(fp8_b64, TFP8<64>)
DEQUANT_F16(fp8_b128, TFP8<128>)
