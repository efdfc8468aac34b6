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

// ---- fp4: float units

// The one-row and batch float products of the FP formats (`gemvu_impl` in gemv.cu; here
// MXFP4 with f32 activations, `fp_ct.cu` NVFP4 and FP8) decode a lane's values from word
// loads in registers, with no table lookups and one scale per block. An E2M1 code (sign
// in bit 31 of t, magnitude in bits 28..30) as ±e2m1·2^-126 is its magnitude bits moved
// to bits 22..24 of an f32 (code 1, 0.5, lands on the subnormal 2^-127); times 2^126
// (exact) it is the E2M1 value.
#define TWO_P126 __uint_as_float(0x7E800000u)

__device__ __forceinline__ float e2m1_scaled(u32 t) { return __uint_as_float((u32)((int)t >> 6) & 0x81C00000u); }

// Bytes o .. o+3 (o a constant, after unrolling) of the little-endian words w; w[o / 4 + 1]
// must exist.
#define WORD_AT(w, o) \
    ((o) % 4 == 0 ? (w)[(o) / 4] : __funnelshift_r((w)[(o) / 4], (w)[(o) / 4 + 1], 8 * ((o) % 4)))

// Σ v[i]·x[i] over N values (a multiple of 4), x 16-byte aligned.
template <int N>
__device__ __forceinline__ float dotf(const float* v, const float* x) {
    const float4* x4 = (const float4*)x;
    float p = 0.0f;
#pragma unroll
    for (int k = 0; k < N / 4; k++) {
        float4 a = x4[k];
        p += v[4 * k] * a.x + v[4 * k + 1] * a.y + v[4 * k + 2] * a.z + v[4 * k + 3] * a.w;
    }
    return p;
}

// MXFP4 with f32 activations (compressed-tensors `Fp(Mxfp4)`): unit = four blocks (128
// values, 68 bytes: 17 words, 4-byte aligned when 128 | cols); Σ e2m1·x per block times
// 2^(e - 127), as `dot_mxfp4_f32`.
struct UMXFP4 {
    static const int UNIT = 128;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const float* x, int cols, int nb, float* acc) {
        const u32* q = (const u32*)(row + 68 * u);
        u32 w[18];  // (w[17]: the unread word of WORD_AT's untaken branch)
#pragma unroll
        for (int k = 0; k < 17; k++) w[k] = q[k];
        w[17] = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 e = (w[(17 * j) / 4] >> (8 * ((17 * j) % 4))) & 0xFF;
            float d = __uint_as_float(e == 0 ? 0x00400000u : e << 23);
            u32 c[4] = {WORD_AT(w, 17 * j + 1), WORD_AT(w, 17 * j + 5), WORD_AT(w, 17 * j + 9),
                        WORD_AT(w, 17 * j + 13)};
            float v[32];
#pragma unroll
            for (int i = 0; i < 16; i++) {
                u32 cw = c[i >> 2];
                int b = i & 3;
                v[i] = e2m1_scaled(cw << (28 - 8 * b)) * TWO_P126;
                v[i + 16] = e2m1_scaled(cw << (24 - 8 * b)) * TWO_P126;
            }
#pragma unroll
            for (int r = 0; r < NB; r++)
                if (r < nb) acc[r] += dotf<32>(v, x + (u64)r * cols + 128 * u + 32 * j) * d;
        }
    }
};

// ---- fp4: integer units

// The doubled E2M1 levels as int8 bytes, four per word (a table for `lookup16x8`).
#define FP4_T0 0x03020100u  // 0 1 2 3
#define FP4_T1 0x0C080604u  // 4 6 8 12
#define FP4_T2 0xFDFEFF00u  // 0 -1 -2 -3
#define FP4_T3 0xF4F8FAFCu  // -4 -6 -8 -12

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
        for (int k = 0; k < 4; k++) lookup16x8(ld32(b + 1 + 4 * k), FP4_T0, FP4_T1, FP4_T2, FP4_T3, &lo[k], &hi[k]);
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
        int w0[4], w1[4];
        lookup16x8(v0, FP4_T0, FP4_T1, FP4_T2, FP4_T3, &w0[0], &w0[2]);
        lookup16x8(v1, FP4_T0, FP4_T1, FP4_T2, FP4_T3, &w0[1], &w0[3]);
        lookup16x8(v2, FP4_T0, FP4_T1, FP4_T2, FP4_T3, &w1[0], &w1[2]);
        lookup16x8(v3, FP4_T0, FP4_T1, FP4_T2, FP4_T3, &w1[1], &w1[3]);
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

// MXFP4's float product (f32 activations: `Fp(Mxfp4)`): rows of 128 | cols on the unit
// above, others (32 | cols: byte-aligned blocks) on the decoder of 8 values
template <class T, int NB>
__device__ __forceinline__ void gemv_mxfp4_impl(const u8* __restrict__ w, u64 row_bytes, int rows, int cols,
                                                const float* __restrict__ x, float* __restrict__ y, int n) {
    if (cols % 128 == 0)
        gemvu_impl<UMXFP4, NB>(w, row_bytes, rows, cols, x, y, n);
    else
        gemv_impl<T, NB>(w, row_bytes, rows, cols, x, y, n);
}

GEMV_KERNELS(mxfp4, gemv_mxfp4_impl, TMXFP4)
EMBED_KERNEL(mxfp4, TMXFP4)
WEIGHT_KERNELS(nvfp4, TNVFP4)
GEMVQ_KERNELS(mxfp4, GMXFP4)
GEMVQ_KERNELS(nvfp4, GNVFP4)
DEQUANT_F16(mxfp4, TMXFP4)
DEQUANT_F16(nvfp4, TNVFP4)
