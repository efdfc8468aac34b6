// The GGUF FP4 weight types on the GPU: MXFP4 (GGML type 39, OCP Microscaling v1.0:
// 32 E2M1 values with one E8M0 power-of-two scale) and NVFP4 (GGML type 40: 64 E2M1
// values in four sub-blocks of 16, each with an unsigned E4M3 scale), in the layouts of
// llama.cpp's `block_mxfp4` / `block_nvfp4` (`ggml-common.h`). Both store E2M1 codes
// as nibbles read through the doubled level table {0, 1, 2, 3, 4, 6, 8, 12} (sign in
// bit 3) with a halved scale, as ggml does, so each value is an int8 level times a
// float scale: the fused-dequantization GEMV and embedding of `gemv.cu`, the integer
// units of `gemvq.cu` (Q8_0 activations, ggml's `vec_dot_type` for both, `dp4a`) and
// the f16 dequantization of `tensorcore.cu` serve them with the per-type pieces here.
// H100 has no FP4 tensor cores, so the values are decoded in registers.
//
// Needs (concatenated before it): common.cuh, dequant.cuh, gemv.cu, gemvq.cu,
// tensorcore.cu.

// ---- fp4: dequantization

// E2M1 levels doubled (llama.cpp's `kvalues_mxfp4`), by 4-bit code.
__constant__ float FP4_X2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// `GGML_E8M0_TO_FP32_HALF`: 2^(e - 128) (f32 subnormals for e < 2).
__device__ __forceinline__ float e8m0_half(u32 e) {
    return e < 2 ? __uint_as_float(0x00200000u << e) : __uint_as_float((e - 1) << 23);
}

// `ggml_ue4m3_to_fp32`: the unsigned E4M3 scale halved (bias 7, bit 7 not part of the
// code); bytes 0 and 0x7F are 0.
__device__ __forceinline__ float ue4m3_half(u32 b) {
    if (b == 0 || b == 0x7F) return 0.0f;
    u32 e = (b >> 3) & 15, m = b & 7;
    return e == 0 ? (float)m * (1.0f / 1024.0f) : __uint_as_float(((e + 119) << 23) | (m << 20));
}

// MXFP4, 17 bytes: e (E8M0), qs[16]; value j < 16 is the low nibble of qs[j], j + 16 its
// high nibble; value = FP4_X2[nibble] * 2^(e - 128).
struct TMXFP4 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 2) * 17;
        int s = c & 3;
        float d = e8m0_half(b[0]);
        const u8* q = b + 1 + (s & 1) * 8;
        int sh = (s >> 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = FP4_X2[(q[k] >> sh) & 15] * d;
    }
    DEQ1_FROM_DEQ8
};

// NVFP4, 36 bytes: d[4] (UE4M3), qs[32]; sub-block s (values 16s ..) owns qs[8s .. 8s+8],
// value 16s + j in the low nibble of qs[8s + j], 16s + 8 + j in its high nibble; value =
// FP4_X2[nibble] * ue4m3_half(d[s]).
struct TNVFP4 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 3) * 36;
        int sb = (c & 7) >> 1;
        float d = ue4m3_half(b[sb]);
        const u8* q = b + 4 + 8 * sb;
        int sh = (c & 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = FP4_X2[(q[k] >> sh) & 15] * d;
    }
    DEQ1_FROM_DEQ8
};

// ---- fp4: integer units

// The doubled E2M1 levels as int8 bytes, four per word.
#define FP4_T0 0x03020100u  // 0 1 2 3
#define FP4_T1 0x0C080604u  // 4 6 8 12
#define FP4_T2 0xFDFEFF00u  // 0 -1 -2 -3
#define FP4_T3 0xF4F8FAFCu  // -4 -6 -8 -12

// Four 4-bit codes (bits 0..3 of each byte of q) as their int8 doubled levels.
__device__ __forceinline__ int fp4_lookup(u32 q) {
    u32 sel = q & 0x07070707u;
    u32 s = (sel & 0xFu) | ((sel >> 4) & 0xF0u) | ((sel >> 8) & 0xF00u) | ((sel >> 12) & 0xF000u);
    u32 lo = (u32)prmt(FP4_T0, FP4_T1, s), hi = (u32)prmt(FP4_T2, FP4_T3, s);
    u32 m = ((q & 0x08080808u) >> 3) * 0xFFu;
    return (int)((lo & ~m) | (hi & m));
}

// MXFP4: unit = a block (32 values), 17-byte blocks (byte aligned: byte loads); as
// ggml's vec_dot_mxfp4_q8_0, Σ w·x = 2^(e-128)·dx·Σ level·qx.
struct GMXFP4 {
    static const int UNIT = 32;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const u8* b = row + u * 17;
        float d = e8m0_half(b[0]);
        int lo[4], hi[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            u32 v = ld32(b + 1 + 4 * k);
            lo[k] = fp4_lookup(v & 0x0F0F0F0Fu);
            hi[k] = fp4_lookup((v >> 4) & 0x0F0F0F0Fu);
        }
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                const int4* x = (const int4*)a.q(r, u * 32);
                int4 x0 = x[0], x1 = x[1];
                int s = dot16(hi, x1, dot16(lo, x0, 0));
                acc[r] += d * a.d(r, u * 32) * (float)s;
            }
        }
    }
};

// NVFP4: unit = half a block (32 values, one Q8_0 activation block: sub-blocks 2h and
// 2h + 1), 36-byte blocks (4-byte aligned: word loads); as ggml's vec_dot_nvfp4_q8_0,
// each sub-block adds dx·ue4m3_half(d[s])·Σ level·qx.
struct GNVFP4 {
    static const int UNIT = 32;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const u8* b = row + (u >> 1) * 36;
        int h = u & 1;
        float d0 = ue4m3_half(b[2 * h]), d1 = ue4m3_half(b[2 * h + 1]);
        const u32* q = (const u32*)(b + 4 + 16 * h);
        u32 v0 = q[0], v1 = q[1], v2 = q[2], v3 = q[3];
        // values 0..7 (low nibbles) then 8..15 (high nibbles) of each sub-block
        int w0[4] = {fp4_lookup(v0 & 0x0F0F0F0Fu), fp4_lookup(v1 & 0x0F0F0F0Fu),
                     fp4_lookup((v0 >> 4) & 0x0F0F0F0Fu), fp4_lookup((v1 >> 4) & 0x0F0F0F0Fu)};
        int w1[4] = {fp4_lookup(v2 & 0x0F0F0F0Fu), fp4_lookup(v3 & 0x0F0F0F0Fu),
                     fp4_lookup((v2 >> 4) & 0x0F0F0F0Fu), fp4_lookup((v3 >> 4) & 0x0F0F0F0Fu)};
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                const int4* x = (const int4*)a.q(r, u * 32);
                int4 x0 = x[0], x1 = x[1];
                float dy = a.d(r, u * 32);
                acc[r] += dy * d0 * (float)dot16(w0, x0, 0);
                acc[r] += dy * d1 * (float)dot16(w1, x1, 0);
            }
        }
    }
};

// ---- fp4: kernels

WEIGHT_KERNELS(mxfp4, TMXFP4)
WEIGHT_KERNELS(nvfp4, TNVFP4)
GEMVQ_KERNELS(mxfp4, GMXFP4)
GEMVQ_KERNELS(nvfp4, GNVFP4)
DEQUANT_F16(mxfp4, TMXFP4)
DEQUANT_F16(nvfp4, TNVFP4)
