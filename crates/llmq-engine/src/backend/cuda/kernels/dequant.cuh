// Dequantization of GGML weight rows straight from their packed blocks, eight values
// at a time (`deq8(row, c, out)`: values 8c .. 8c+7 of the row) and one at a time
// (`deq1`). Block layouts and formulas are ggml's (`ggml-common.h`,
// `dequantize_row_*` in `ggml-quants.c`): legacy 32-value blocks Q4_0/Q4_1/Q5_0/Q5_1/
// Q8_0/IQ4_NL, 256-value k-quants Q2_K/Q3_K/Q4_K/Q5_K/Q6_K and IQ4_XS, and dense F32/F16/BF16.

struct TF32 {
    static __device__ __forceinline__ float deq1(const u8* r, int i) { return ((const float*)r)[i]; }
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const float* f = (const float*)r + 8 * c;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = f[k];
    }
};

// Eight 16-bit values at `p`: one 16-byte load where the row allows it (it does when
// 8 | cols), else eight 2-byte loads.
__device__ __forceinline__ void ld8x16(const u8* p, u16* h) {
    if (((u64)p & 15) == 0) {
        uint4 v = *(const uint4*)p;
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            h[2 * k] = (u16)(w[k] & 0xFFFF);
            h[2 * k + 1] = (u16)(w[k] >> 16);
        }
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) h[k] = ((const u16*)p)[k];
    }
}

struct TF16 {
    static __device__ __forceinline__ float deq1(const u8* r, int i) { return h2f(((const u16*)r)[i]); }
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        u16 h[8];
        ld8x16(r + 16 * c, h);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = h2f(h[k]);
    }
};

struct TBF16 {
    static __device__ __forceinline__ float deq1(const u8* r, int i) { return bf2f(((const u16*)r)[i]); }
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        u16 h[8];
        ld8x16(r + 16 * c, h);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = bf2f(h[k]);
    }
};

// Every quantized type: deq1 through deq8 of the value's chunk.
#define DEQ1_FROM_DEQ8                                                  \
    static __device__ __forceinline__ float deq1(const u8* r, int i) { \
        float o[8];                                                     \
        deq8(r, i >> 3, o);                                             \
        return o[i & 7];                                                \
    }

// 18 bytes: d (f16), qs[16]; value j < 16 is the low nibble of qs[j], j + 16 its high.
struct TQ4_0 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 2) * 18;
        int s = c & 3;
        float d = h2f(ld16(b));
        const u8* q = b + 2 + (s & 1) * 8;
        int sh = (s >> 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = (float)(((q[k] >> sh) & 15) - 8) * d;
    }
    DEQ1_FROM_DEQ8
};

// 20 bytes: d, m (f16), qs[16]; value = q*d + m.
struct TQ4_1 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 2) * 20;
        int s = c & 3;
        float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        const u8* q = b + 4 + (s & 1) * 8;
        int sh = (s >> 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = (float)((q[k] >> sh) & 15) * d + m;
    }
    DEQ1_FROM_DEQ8
};

// 22 bytes: d (f16), qh (u32: bit j is the 5th bit of value j), qs[16]; (q - 16)*d.
struct TQ5_0 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 2) * 22;
        int s = c & 3;
        float d = h2f(ld16(b));
        u32 qh = ld32(b + 2);
        const u8* q = b + 6 + (s & 1) * 8;
        int sh = (s >> 1) * 4, j0 = s * 8;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int v = ((q[k] >> sh) & 15) | (((qh >> (j0 + k)) & 1) << 4);
            o[k] = (float)(v - 16) * d;
        }
    }
    DEQ1_FROM_DEQ8
};

// 24 bytes: d, m (f16), qh (u32), qs[16]; q*d + m.
struct TQ5_1 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 2) * 24;
        int s = c & 3;
        float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        u32 qh = ld32(b + 4);
        const u8* q = b + 8 + (s & 1) * 8;
        int sh = (s >> 1) * 4, j0 = s * 8;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int v = ((q[k] >> sh) & 15) | (((qh >> (j0 + k)) & 1) << 4);
            o[k] = (float)v * d + m;
        }
    }
    DEQ1_FROM_DEQ8
};

// 34 bytes: d (f16), qs[32] (i8).
struct TQ8_0 {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 2) * 34;
        float d = h2f(ld16(b));
        const i8* q = (const i8*)(b + 2) + (c & 3) * 8;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = (float)q[k] * d;
    }
    DEQ1_FROM_DEQ8
};

__constant__ float IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// 18 bytes like Q4_0, nibbles index a non-linear codebook.
struct TIQ4_NL {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 2) * 18;
        int s = c & 3;
        float d = h2f(ld16(b));
        const u8* q = b + 2 + (s & 1) * 8;
        int sh = (s >> 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = IQ4NL_VALUES[(q[k] >> sh) & 15] * d;
    }
    DEQ1_FROM_DEQ8
};

// 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (ggml's get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, float* sc, float* mn) {
    int d, m;
    if (j < 4) {
        d = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        d = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
    *sc = (float)d;
    *mn = (float)m;
}

// 144 bytes: d, dmin (f16), scales[12], qs[128]. Sub-block s (32 values) reads the low
// (s even) or high nibbles of qs[32*(s/2) ..]; value = d*sc*q - dmin*m.
struct TQ4_K {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 5) * 144;
        int i0 = (c & 31) * 8, s = i0 >> 5, l0 = i0 & 31;
        float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2)), sc, mn;
        scale_min_k4(s, b + 4, &sc, &mn);
        float d1 = d * sc, m1 = dmin * mn;
        const u8* q = b + 16 + (s >> 1) * 32 + l0;
        int sh = (s & 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = d1 * (float)((q[k] >> sh) & 15) - m1;
    }
    DEQ1_FROM_DEQ8
};

// 176 bytes: d, dmin, scales[12], qh[32], qs[128]; bit s of qh[l] is the 5th bit.
struct TQ5_K {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 5) * 176;
        int i0 = (c & 31) * 8, s = i0 >> 5, l0 = i0 & 31;
        float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2)), sc, mn;
        scale_min_k4(s, b + 4, &sc, &mn);
        float d1 = d * sc, m1 = dmin * mn;
        const u8* qh = b + 16 + l0;
        const u8* q = b + 48 + (s >> 1) * 32 + l0;
        int sh = (s & 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int v = ((q[k] >> sh) & 15) | (((qh[k] >> s) & 1) << 4);
            o[k] = d1 * (float)v - m1;
        }
    }
    DEQ1_FROM_DEQ8
};

// 210 bytes: ql[128], qh[64], scales[16] (i8), d (f16). Value i: half n = i/128,
// quarter g, lane l; 4 low bits from ql, 2 high from qh; minus 32. On the device each
// block is padded to Q6K_STRIDE bytes (`weights::device_layout`), so that every piece of
// it is 8-byte aligned.
#define Q6K_STRIDE 216
struct TQ6_K {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 5) * Q6K_STRIDE;
        int i0 = (c & 31) * 8, n = i0 >> 7, g = (i0 & 127) >> 5, l0 = i0 & 31;
        float d = h2f(ld16(b + 208));
        const u8* ql = b + n * 64 + (g & 1) * 32 + l0;
        const u8* qh = b + 128 + n * 32 + l0;
        const i8* scales = (const i8*)(b + 192);
        int sh = (g >> 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int l = l0 + k;
            float dl = d * (float)scales[n * 8 + (l >> 4) + 2 * g];
            int v = ((ql[k] >> sh) & 15) | (((qh[k] >> (2 * g)) & 3) << 4);
            o[k] = dl * (float)(v - 32);
        }
    }
    DEQ1_FROM_DEQ8
};

// 84 bytes: scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin (f16). Value i:
// half n, shift 2j, lane l: 2 bits of qs[32n + l]; scale byte 8n + 2j + l/16.
struct TQ2_K {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 5) * 84;
        int i0 = (c & 31) * 8, n = i0 >> 7, j = (i0 & 127) >> 5, l0 = i0 & 31;
        float d = h2f(ld16(b + 80)), dmin = h2f(ld16(b + 82));
        int sb = b[n * 8 + 2 * j + (l0 >> 4)];
        float dl = d * (float)(sb & 15), ml = dmin * (float)(sb >> 4);
        const u8* q = b + 16 + n * 32 + l0;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = dl * (float)((q[k] >> (2 * j)) & 3) - ml;
    }
    DEQ1_FROM_DEQ8
};

// 110 bytes: hmask[32], qs[64], scales[12] (sixteen 6-bit scales, minus 32), d (f16).
// Value i: half n, shift j, lane l: 2 bits of qs[32n + l] at 2j, minus 4 unless bit
// 4n + j of hmask[l] is set; scale k = 8n + 2j + l/16 is nibble k/8 of byte k%8 with
// 2 bits of byte 8 + k%4 (at 2(k/4)) above it.
struct TQ3_K {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 5) * 110;
        int i0 = (c & 31) * 8, n = i0 >> 7, j = (i0 & 127) >> 5, l0 = i0 & 31;
        int k = 8 * n + 2 * j + (l0 >> 4);
        int low = (b[96 + (k & 7)] >> (4 * (k >> 3))) & 15;
        int high = (b[104 + (k & 3)] >> (2 * (k >> 2))) & 3;
        float dl = h2f(ld16(b + 108)) * (float)((low | (high << 4)) - 32);
        const u8* q = b + 32 + 32 * n + l0;
        const u8* hm = b + l0;
#pragma unroll
        for (int t = 0; t < 8; t++) {
            int v = ((q[t] >> (2 * j)) & 3) - (((hm[t] >> (4 * n + j)) & 1) ? 0 : 4);
            o[t] = dl * (float)v;
        }
    }
    DEQ1_FROM_DEQ8
};

// 136 bytes: d (f16), scales_h (u16), scales_l[4], qs[128]; sub-block s of 32 values
// has a 6-bit scale (minus 32) and Q4_0-style nibbles at qs[16 s ..] into the IQ4_NL
// codebook.
struct TIQ4_XS {
    static __device__ __forceinline__ void deq8(const u8* r, int c, float* o) {
        const u8* b = r + (c >> 5) * 136;
        int i0 = (c & 31) * 8, s = i0 >> 5, w = (i0 & 31) >> 3;
        float d = h2f(ld16(b));
        int sh_ = ld16(b + 2);
        int ls = ((b[4 + s / 2] >> (4 * (s & 1))) & 15) | (((sh_ >> (2 * s)) & 3) << 4);
        float dl = d * (float)(ls - 32);
        const u8* q = b + 8 + 16 * s + (w & 1) * 8;
        int sh = (w >> 1) * 4;
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = dl * IQ4NL_VALUES[(q[k] >> sh) & 15];
    }
    DEQ1_FROM_DEQ8
};
