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

// ---- fp_ct: kernels

WEIGHT_KERNELS(nvfp4_ct, TNVFP4CT)
WEIGHT_KERNELS(fp8_b8, TFP8<8>)
WEIGHT_KERNELS(fp8_b16, TFP8<16>)
WEIGHT_KERNELS(fp8_b32, TFP8<32>)
WEIGHT_KERNELS(fp8_b64, TFP8<64>)
WEIGHT_KERNELS(fp8_b128, TFP8<128>)
DEQUANT_F16(nvfp4_ct, TNVFP4CT)
DEQUANT_F16(fp8_b8, TFP8<8>)
DEQUANT_F16(fp8_b16, TFP8<16>)
DEQUANT_F16(fp8_b32, TFP8<32>)
DEQUANT_F16(fp8_b64, TFP8<64>)
DEQUANT_F16(fp8_b128, TFP8<128>)
