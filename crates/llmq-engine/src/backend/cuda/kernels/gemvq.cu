// Weight products in integer arithmetic, as the CPU engine computes them: the activations
// are rounded to int8 once per call (ggml's `vec_dot_type`: Q8_0 blocks of 32 with an f16
// scale, or Q8_K blocks of 256 with an f32 scale, exactly as `actquant.cu` rounds them),
// and each weight block is dotted with them by `dp4a` (four int8 products per
// instruction), its scales and minimums applied once per sub-block. The formulas are
// ggml's `vec_dot_<type>_q8_0` / `vec_dot_<type>_q8_K` (`ggml-cpu/quants.c`).
//
// Packed activations (`act_pack_*`), per activation row of `cols` values:
//   qx: int8[cols]; dx: f32[cols / 32], the scale of each 32 values (a Q8_K block's one
//   scale repeated over its 8 sub-blocks); sx: int[cols / 16], the sum of each 16 qx
//   (for the weight types with an offset or a minimum); s1: f32[cols / 32], Q8_1's block
//   sum `d·Σq` rounded to f16 (for Q4_1 / Q5_1, whose minimum multiplies it; other
//   types do not read it).
//
// GEMV layout: GQ_WARPS warps per block, one weight row per warp. A lane takes one unit
// of the row at a time (a type's natural piece: a Q8_0 half block, a Q4_K sub-block
// pair, ...), loads its bytes with the widest loads the block alignment allows, decodes
// them into packed int8 words once and dots them with NB activation rows.

#define GQ_WARPS 4

__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Two aligned 16-bit loads as one little-endian word (blocks of 18/22/34/210 bytes are
// only 2-byte aligned).
__device__ __forceinline__ int ld32_a2(const u8* p) {
    const u16* h = (const u16*)p;
    return (int)((u32)h[0] | ((u32)h[1] << 16));
}

// Four bytes chosen from the eight of (lo, hi) by the selector nibbles of `s`.
__device__ __forceinline__ int prmt(u32 lo, u32 hi, u32 s) {
    u32 d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(lo), "r"(hi), "r"(s));
    return (int)d;
}

// Bits 0..3 of `x` moved to bit 0 of bytes 0..3 (the four shifted copies do not overlap,
// so the product has no carries).
__device__ __forceinline__ int spread4(u32 x) { return (int)(((x & 15u) * 0x00204081u) & 0x01010101u); }

// ---- activation packing

// Q8_0 rounding (see act_q8_0), one warp per 32 values; WITH_SUM also stores Q8_1's block
// sum s = f16(amax/127 · Σq), as ggml's `quantize_row_q8_1` does.
template <bool WITH_SUM>
__device__ __forceinline__ void pack_q8_01(const float* x, i8* qx, float* dx, int* sx, float* s1,
                                           u64 n_blocks) {
    int lane = threadIdx.x & 31;
    u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 b = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; b < n_blocks; b += warps) {
        float v = x[b * 32 + lane];
        float amax = warp_max(fabsf(v));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int q = (int)rintf(v * id);
        qx[b * 32 + lane] = (i8)q;
        int s = q;
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if ((lane & 15) == 0) sx[b * 2 + (lane >> 4)] = s;
        int total = s + __shfl_xor_sync(0xffffffffu, s, 16);
        if (lane == 0) {
            float d = amax / 127.0f;
            dx[b] = f16_round(d);
            if (WITH_SUM) s1[b] = f16_round(d * (float)total);
        }
    }
}

extern "C" __global__ void act_pack_q8_0(const float* x, i8* qx, float* dx, int* sx, u64 n_blocks) {
    pack_q8_01<false>(x, qx, dx, sx, nullptr, n_blocks);
}

extern "C" __global__ void act_pack_q8_1(const float* x, i8* qx, float* dx, int* sx, float* s1, u64 n_blocks) {
    pack_q8_01<true>(x, qx, dx, sx, s1, n_blocks);
}

// Q8_K rounding (see act_q8_k): one block of 256 threads per 256 values.
extern "C" __global__ void act_pack_q8_k(const float* x, i8* qx, float* dx, int* sx) {
    __shared__ float sa[8];
    __shared__ int si[8];
    u64 base = (u64)blockIdx.x * 256;
    int t = threadIdx.x, lane = t & 31;
    float v = x[base + t];
    float iscale = q8k_iscale(x, base, v, sa, si);
    int q = iscale == 0.0f ? 0 : (int)fminf(rintf(iscale * v), 127.0f);
    qx[base + t] = (i8)q;
    int s = q;
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((lane & 15) == 0) sx[base / 16 + (t >> 4)] = s;
    if (lane == 0) dx[base / 32 + (t >> 5)] = iscale == 0.0f ? 0.0f : 1.0f / iscale;
}

// ---- per-type units: `dot<NB>(row, u, act, acc)` adds unit u's products with NB rows

// The packed activations of rows r0.. of a call.
struct QAct {
    const i8* qx;
    const float* dx;
    const int* sx;
    const float* s1;
    int cols;
    int nb;  // rows present (<= NB)
    __device__ __forceinline__ const i8* q(int r, int i) const { return qx + (u64)r * cols + i; }
    __device__ __forceinline__ float d(int r, int i) const { return dx[(u64)r * (cols >> 5) + (i >> 5)]; }
    __device__ __forceinline__ int s(int r, int i) const { return sx[(u64)r * (cols >> 4) + (i >> 4)]; }
    __device__ __forceinline__ float s32(int r, int i) const { return s1[(u64)r * (cols >> 5) + (i >> 5)]; }
};

// Sum of w[k]·x over the four int8 lanes of each of four words, plus acc.
__device__ __forceinline__ int dot16(const int* w, int4 x, int acc) {
    return dp4a(w[3], x.w, dp4a(w[2], x.z, dp4a(w[1], x.y, dp4a(w[0], x.x, acc))));
}

// Sixteen bytes at p (2-byte aligned) as four little-endian words: four aligned word loads
// and, where p is not 4-byte aligned, the two bytes after them and funnel shifts (five
// loads where two-byte loads took eight; every load stays inside the 16 bytes' words).
__device__ __forceinline__ void ld16_a2(const u8* p, int* w) {
    u32 mis = (u32)(u64)p & 2u;
    const u32* a = (const u32*)(p - mis);
    u32 v0 = a[0], v1 = a[1], v2 = a[2], v3 = a[3];
    u32 v4 = mis ? (u32) * (const u16*)(p + 14) : 0u;
    u32 sh = 8 * mis;
    w[0] = (int)__funnelshift_r(v0, v1, sh);
    w[1] = (int)__funnelshift_r(v1, v2, sh);
    w[2] = (int)__funnelshift_r(v2, v3, sh);
    w[3] = (int)__funnelshift_r(v3, v4, sh);
}

// Q8_0: unit = half a block (16 values); 34-byte blocks.
struct GQ8_0 {
    static const int UNIT = 16;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const u8* b = row + (u >> 1) * 34;
        float d = h2f(*(const u16*)b);
        const u8* q = b + 2 + 16 * (u & 1);
        int w[4];
        ld16_a2(q, w);
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                int4 x = *(const int4*)a.q(r, u * 16);
                int s = dot16(w, x, 0);
                acc[r] += d * a.d(r, u * 16) * (float)s;
            }
        }
    }
};

// A legacy block's 32 unsigned codes (lo: values 0..15, hi: 16..31, four per word) dotted
// with NB activation rows: d·dx·(Σ q·qx - off·Σ qx) without a minimum (Q4_0 / Q5_0: a fixed
// offset; the integer checkpoints' blocks: their zero point), or d·dx·Σ q·qx + m·s with one
// (Q4_1 / Q5_1, s = Q8_1's f16 block sum).
template <int NB, bool MIN>
__device__ __forceinline__ void offset_or_min_dot(const int* lo, const int* hi, float d, float m, int off,
                                                  int u, const QAct& a, float* acc) {
#pragma unroll
    for (int r = 0; r < NB; r++) {
        if (r < a.nb) {
            const int4* x = (const int4*)a.q(r, u * 32);
            int4 x0 = x[0], x1 = x[1];
            int s = dot16(hi, x1, dot16(lo, x0, 0));
            if (MIN) {
                acc[r] += d * a.d(r, u * 32) * (float)s + m * a.s32(r, u * 32);
            } else {
                int sum = a.s(r, u * 32) + a.s(r, u * 32 + 16);
                acc[r] += d * a.d(r, u * 32) * (float)(s - off * sum);
            }
        }
    }
}

// Q4_0 and Q4_1: unit = a block (32 values). Q4_0: 18 bytes (d, qs), value =
// (nibble - 8)·d, so Σ w·x = d·dx·(Σ nibble·qx - 8·Σ qx). Q4_1: 20 bytes (d, m, qs), value =
// nibble·d + m, so Σ w·x = d·dx·Σ nibble·qx + m·s with Q8_1's f16 block sum s (ggml's
// vec_dot_q4_1_q8_1).
template <bool MIN>
struct GQ4 {
    static const int UNIT = 32;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const u8* b = row + u * (MIN ? 20 : 18);
        float d = h2f(*(const u16*)b), m = MIN ? h2f(*(const u16*)(b + 2)) : 0.0f;
        int v[4], lo[4], hi[4];
        ld16_a2(b + (MIN ? 4 : 2), v);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            lo[k] = v[k] & 0x0F0F0F0F;
            hi[k] = (v[k] >> 4) & 0x0F0F0F0F;
        }
        offset_or_min_dot<NB, MIN>(lo, hi, d, m, 8, u, a, acc);
    }
};

// Q5_0 and Q5_1: as Q4_0 / Q4_1 with a fifth bit per value in `qh` (bit j for value j).
// Q5_0: 22 bytes (d, qh, qs), (q - 16)·d; Q5_1: 24 bytes (d, m, qh, qs), q·d + m.
template <bool MIN>
struct GQ5 {
    static const int UNIT = 32;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const u8* b = row + u * (MIN ? 24 : 22);
        float d = h2f(*(const u16*)b), m = MIN ? h2f(*(const u16*)(b + 2)) : 0.0f;
        const u8* h = b + (MIN ? 4 : 2);
        u32 qh = (u32)ld32_a2(h);
        int v[4], lo[4], hi[4];
        ld16_a2(h + 4, v);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            lo[k] = (v[k] & 0x0F0F0F0F) | (spread4(qh >> (4 * k)) << 4);
            hi[k] = ((v[k] >> 4) & 0x0F0F0F0F) | (spread4(qh >> (16 + 4 * k)) << 4);
        }
        offset_or_min_dot<NB, MIN>(lo, hi, d, m, 16, u, a, acc);
    }
};

// Group-wise integer weights (GPTQ / AWQ / compressed-tensors, repacked at load by
// `llmq_kernels::int_blocks`): blocks of 32 columns, each [f16 scale s][zero z][codes],
// value s·(q - z). 4 bits: 19-byte blocks, codes in Q4_0's nibble order; 8 bits: 35-byte
// blocks, codes and zero stored `q ^ 0x80` (signed q - 128). Σ w·x = s·dx·(Σ q·qx - z·Σ qx),
// as `dot_int_q8_0` on the CPU. The blocks are byte aligned only: a lane loads the aligned
// words around its block (6 or 10) and funnel-shifts them into place; the last of them may
// reach up to 5 bytes past the block, which the device copy's 16 bytes of tail padding
// (`weights::upload`) keep inside the allocation.
template <int BITS>
struct GQINT {
    static const int UNIT = 32;
    static const int BYTES = BITS == 4 ? 19 : 35;
    static const int WORDS = BITS == 4 ? 5 : 9;  // the block's bytes as words from b
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const u8* b = row + u * BYTES;
        u32 mis = (u32)(u64)b & 3u;
        const u32* p = (const u32*)(b - mis);
        u32 v[WORDS + 1], x[WORDS];
#pragma unroll
        for (int k = 0; k <= WORDS; k++) v[k] = p[k];
#pragma unroll
        for (int k = 0; k < WORDS; k++) x[k] = __funnelshift_r(v[k], v[k + 1], 8 * mis);
        float d = h2f((u16)(x[0] & 0xFFFF));
        int z = BITS == 4 ? (int)((x[0] >> 16) & 0xFF) : (int)(i8)((x[0] >> 16) & 0xFF);
        // codes from byte 3: word j is bytes 3 + 4j ..
        int lo[4], hi[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (BITS == 4) {
                int q = (int)__funnelshift_r(x[k], x[k + 1], 24);
                lo[k] = q & 0x0F0F0F0F;
                hi[k] = (q >> 4) & 0x0F0F0F0F;
            } else {
                lo[k] = (int)__funnelshift_r(x[k], x[k + 1], 24);
                hi[k] = (int)__funnelshift_r(x[k + 4], x[k + 5], 24);
            }
        }
        offset_or_min_dot<NB, false>(lo, hi, d, 0.0f, z, u, a, acc);
    }
};

// Byte i (0..11) of a K-quant's packed scales held in three words.
__device__ __forceinline__ int kscale_byte(uint4 h, int i) {
    u32 w = i < 4 ? h.y : (i < 8 ? h.z : h.w);
    return (int)((w >> (8 * (i & 3))) & 0xFF);
}

// 6-bit scale and min of sub-block j (ggml's get_scale_min_k4) from the header words.
__device__ __forceinline__ void kscale_min(uint4 h, int j, int* sc, int* mn) {
    if (j < 4) {
        *sc = kscale_byte(h, j) & 63;
        *mn = kscale_byte(h, j + 4) & 63;
    } else {
        *sc = (kscale_byte(h, j + 4) & 15) | ((kscale_byte(h, j - 4) >> 6) << 4);
        *mn = (kscale_byte(h, j + 4) >> 4) | ((kscale_byte(h, j) >> 6) << 4);
    }
}

// Q4_K (144-byte blocks, 16-byte aligned) and Q5_K (176): unit = 16 values in order
// (half h of sub-block s), so the warp's 32 lanes read 512 contiguous activation bytes per
// step: 16 bytes of qs[32(s/2) + 16h ..], low nibbles for even s, high ones for odd s (Q5_K:
// bit s of qh[16h ..] above them); value = d * sc * q - dmin * m, the sub-block's 6-bit
// scale and min from the block's 16-byte header.
template <bool Q5>
struct GQK45 {
    static const int UNIT = 16;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const int bytes = Q5 ? 176 : 144;
        int blk = u >> 4, sb = (u & 15) >> 1, h = u & 1;
        const u8* b = row + blk * bytes;
        uint4 hd = *(const uint4*)b;
        uint4 q = *(const uint4*)(b + (Q5 ? 48 : 16) + 32 * (sb >> 1) + 16 * h);
        u32 v[4] = {q.x, q.y, q.z, q.w};
        int sh = 4 * (sb & 1);
        int w[4];
        if (Q5) {
            uint4 qh = *(const uint4*)(b + 16 + 16 * h);
            u32 hv[4] = {qh.x, qh.y, qh.z, qh.w};
#pragma unroll
            for (int k = 0; k < 4; k++)
                w[k] = (int)(((v[k] >> sh) & 0x0F0F0F0Fu) | (((hv[k] >> sb) & 0x01010101u) << 4));
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++) w[k] = (int)((v[k] >> sh) & 0x0F0F0F0Fu);
        }
        float d = h2f((u16)(hd.x & 0xFFFF)), dmin = h2f((u16)(hd.x >> 16));
        int sc, mn;
        kscale_min(hd, sb, &sc, &mn);
        int i0 = 16 * u;
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                int4 x = *(const int4*)a.q(r, i0);
                int dt = dot16(w, x, 0);
                acc[r] += a.d(r, i0) * (d * (float)(sc * dt) - dmin * (float)(mn * a.s(r, i0)));
            }
        }
    }
};

// Q6_K (blocks padded to Q6K_STRIDE = 216 bytes on the device: 8-byte aligned): unit =
// 16 values in order (so the warp's activation loads are 512 contiguous bytes), values
// 128n + 32g + l0 .. + 15 (l0 = 0 or 16): 4 low bits from ql[64n + 32(g&1) + l0 ..] (low
// nibbles for g < 2, high ones above), 2 high bits from bits 2g of qh[32n + l0 ..], minus
// 32; int8 scale scales[8n + l0/16 + 2g]; d at 208. Σ (q - 32)·x = Σ q·x - 32·Σ x with the
// activations' 16-value sum.
struct GQ6_K {
    static const int UNIT = 16;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        int blk = u >> 4, o = 16 * (u & 15), n = o >> 7, g = (o >> 5) & 3, l0 = o & 31;
        const u8* b = row + blk * Q6K_STRIDE;
        const uint2* ql = (const uint2*)(b + 64 * n + 32 * (g & 1) + l0);
        const uint2* qh = (const uint2*)(b + 128 + 32 * n + l0);
        uint2 la = ql[0], lb = ql[1], ha = qh[0], hb = qh[1];
        int sc = (int)((const i8*)b)[192 + 8 * n + (l0 >> 4) + 2 * g];
        float d = h2f(*(const u16*)(b + 208));
        u32 lq[4] = {la.x, la.y, lb.x, lb.y}, hq[4] = {ha.x, ha.y, hb.x, hb.y};
        int shl = 4 * (g >> 1), shh = 2 * g;
        int w[4];
#pragma unroll
        for (int k = 0; k < 4; k++)
            w[k] = (int)(((lq[k] >> shl) & 0x0F0F0F0Fu) | (((hq[k] >> shh) & 0x03030303u) << 4));
        int i0 = blk * 256 + o;
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                int4 x = *(const int4*)a.q(r, i0);
                int s = sc * (dot16(w, x, 0) - 32 * a.s(r, i0));
                acc[r] += d * a.d(r, i0) * (float)s;
            }
        }
    }
};

// The IQ4_NL codebook as int8 bytes, four per word.
#define IQ4_T0 0xBFAD9881u  // -127 -104 -83 -65
#define IQ4_T1 0xF6EADDCFu  // -49 -35 -22 -10
#define IQ4_T2 0x26190D01u  // 1 13 25 38
#define IQ4_T3 0x71594535u  // 53 69 89 113

// The eight 4-bit indices of q (the low and high nibble of each byte) looked up in a
// 16-entry int8 table held in four words (entry i is byte i % 4 of word i / 4): `lo` gets
// the entries of the low nibbles of bytes 0..3, `hi` those of the high nibbles. Seven
// byte permutes for eight values (llama.cpp's get_int_from_table_16): each nibble's
// bits 0..2 pick from the table's low and high halves, its bit 3 picks the half.
__device__ __forceinline__ void lookup16x8(u32 q, u32 t0, u32 t1, u32 t2, u32 t3, int* lo, int* hi) {
    u32 q7 = q & 0x77777777u;
    u32 pick = ((q & 0x88888888u) >> 1) | 0x32103210u;
    u32 a = (u32)prmt((u32)prmt(t0, t1, q7), (u32)prmt(t2, t3, q7), pick);  // lo0 hi0 lo1 hi1
    u32 b = (u32)prmt((u32)prmt(t0, t1, q7 >> 16), (u32)prmt(t2, t3, q7 >> 16), pick >> 16);  // lo2 hi2 lo3 hi3
    *lo = prmt(a, b, 0x6420u);
    *hi = prmt(a, b, 0x7531u);
}

// IQ4_NL: unit = a block (32 values); 18 bytes like Q4_0, nibbles index the codebook.
struct GIQ4_NL {
    static const int UNIT = 32;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        const u8* b = row + u * 18;
        float d = h2f(*(const u16*)b);
        int v[4], lo[4], hi[4];
        ld16_a2(b + 2, v);
#pragma unroll
        for (int k = 0; k < 4; k++) lookup16x8((u32)v[k], IQ4_T0, IQ4_T1, IQ4_T2, IQ4_T3, &lo[k], &hi[k]);
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

// IQ4_XS (136 bytes, 8-byte aligned): unit = sub-block s of 32 values: nibbles of
// qs[16s ..] (low: values 0..15, high: 16..31) into the codebook, 6-bit scale minus 32.
struct GIQ4_XS {
    static const int UNIT = 32;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        int blk = u >> 3, sb = u & 7;
        const u8* b = row + blk * 136;
        uint2 h = *(const uint2*)b;
        float d = h2f((u16)(h.x & 0xFFFF));
        u32 sh = h.x >> 16;
        int ls = (int)(((h.y >> (8 * (sb >> 1) + 4 * (sb & 1))) & 15) | (((sh >> (2 * sb)) & 3) << 4));
        const uint2* q = (const uint2*)(b + 8 + 16 * sb);
        uint2 q0 = q[0], q1 = q[1];
        u32 v[4] = {q0.x, q0.y, q1.x, q1.y};
        int lo[4], hi[4];
#pragma unroll
        for (int k = 0; k < 4; k++) lookup16x8(v[k], IQ4_T0, IQ4_T1, IQ4_T2, IQ4_T3, &lo[k], &hi[k]);
        float dl = d * (float)(ls - 32);
        int i0 = blk * 256 + 32 * sb;
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                const int4* x = (const int4*)a.q(r, i0);
                int4 x0 = x[0], x1 = x[1];
                int s = dot16(hi, x1, dot16(lo, x0, 0));
                acc[r] += dl * a.d(r, i0) * (float)s;
            }
        }
    }
};

// Q2_K (84 bytes, 4-byte aligned): unit = half n, lanes l = 16h..16h+15, for the four
// shifts j (64 values): 2 bits of qs[32n + l] at 2j; scale byte scales[8n + 2j + h]
// (low 4 bits scale, high 4 bits min); value = d * sc * q - dmin * m.
struct GQ2_K {
    static const int UNIT = 64;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        int blk = u >> 2, n = (u >> 1) & 1, hh = u & 1;
        const u8* b = row + blk * 84;
        const u32* q = (const u32*)(b + 16 + 32 * n + 16 * hh);
        u32 v[4] = {q[0], q[1], q[2], q[3]};
        u32 scw = *(const u32*)(b + 8 * n);
        u32 scw2 = *(const u32*)(b + 8 * n + 4);
        u32 dd = *(const u32*)(b + 80);
        float d = h2f((u16)(dd & 0xFFFF)), dmin = h2f((u16)(dd >> 16));
        int sc[4], mn[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int idx = 2 * j + hh;
            u32 byte = ((idx < 4 ? scw : scw2) >> (8 * (idx & 3))) & 0xFF;
            sc[j] = (int)(byte & 15);
            mn[j] = (int)(byte >> 4);
        }
        int i0 = blk * 256 + 128 * n + 16 * hh;
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                int si = 0, mi = 0;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int4 x = *(const int4*)a.q(r, i0 + 32 * j);
                    int wj[4];
#pragma unroll
                    for (int k = 0; k < 4; k++) wj[k] = (int)((v[k] >> (2 * j)) & 0x03030303u);
                    int dj = dot16(wj, x, 0);
                    si += sc[j] * dj;
                    mi += mn[j] * a.s(r, i0 + 32 * j);
                }
                acc[r] += a.d(r, i0) * (d * (float)si - dmin * (float)mi);
            }
        }
    }
};

// Q3_K (110 bytes, 2-byte aligned): unit as Q2_K; low 2 bits from qs[32n + l] at 2j,
// minus 4 unless bit 4n + j of hmask[l] is set; 6-bit scales (minus 32) packed in 12
// bytes: scale k takes nibble k / 8 of byte k % 8 and 2 bits of byte 8 + k % 4.
struct GQ3_K {
    static const int UNIT = 64;
    template <int NB>
    static __device__ __forceinline__ void dot(const u8* row, int u, const QAct& a, float* acc) {
        int blk = u >> 2, n = (u >> 1) & 1, hh = u & 1;
        const u8* b = row + blk * 110;
        const u8* qp = b + 32 + 32 * n + 16 * hh;
        const u8* hp = b + 16 * hh;
        int vi[4], hmi[4];
        ld16_a2(qp, vi);
        ld16_a2(hp, hmi);
        u32 v[4], hm[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[k] = (u32)vi[k];
            hm[k] = (u32)hmi[k];
        }
        u32 a0 = (u32)ld32_a2(b + 96), a1 = (u32)ld32_a2(b + 100), a2 = (u32)ld32_a2(b + 104);
        float d = h2f(*(const u16*)(b + 108));
        int sc[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int k = 8 * n + 2 * j + hh;
            int bb = k & 3, grp = k >> 2;
            u32 low = (((grp & 1) ? a1 : a0) >> (8 * bb + ((grp >= 2) ? 4 : 0))) & 15;
            u32 high = (a2 >> (8 * bb + 2 * grp)) & 3;
            sc[j] = (int)(low | (high << 4)) - 32;
        }
        int i0 = blk * 256 + 128 * n + 16 * hh;
#pragma unroll
        for (int r = 0; r < NB; r++) {
            if (r < a.nb) {
                int si = 0;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int4 x = *(const int4*)a.q(r, i0 + 32 * j);
                    int sh = 4 * n + j;
                    int dj = 0;
                    int xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        u32 w = ((v[k] >> (2 * j)) & 0x03030303u) | (((hm[k] >> sh) & 0x01010101u) << 2);
                        dj = dp4a((int)w, xs[k], dj);
                    }
                    si += sc[j] * (dj - 4 * a.s(r, i0 + 32 * j));
                }
                acc[r] += d * a.d(r, i0) * (float)si;
            }
        }
    }
};

template <class T, int NB>
__device__ __forceinline__ void gemvq_impl(const u8* __restrict__ w, u64 row_bytes, int rows, int cols,
                                           const i8* __restrict__ qx, const float* __restrict__ dx,
                                           const int* __restrict__ sx, const float* __restrict__ s1,
                                           float* __restrict__ y, int n) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GQ_WARPS + (threadIdx.x >> 5);
    int r0 = blockIdx.y * NB;
    if (row >= rows) return;
    QAct a;
    a.qx = qx + (u64)r0 * cols;
    a.dx = dx + (u64)r0 * (cols >> 5);
    a.sx = sx + (u64)r0 * (cols >> 4);
    a.s1 = s1 + (u64)r0 * (cols >> 5);
    a.cols = cols;
    a.nb = min(NB, n - r0);
    const u8* wr = w + (u64)row * row_bytes;
    float acc[NB];
#pragma unroll
    for (int r = 0; r < NB; r++) acc[r] = 0.0f;
    int units = cols / T::UNIT;
UNROLL_ONE_ROW
    for (int u = lane; u < units; u += 32) T::template dot<NB>(wr, u, a, acc);
#pragma unroll
    for (int r = 0; r < NB; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r < a.nb) y[(u64)(r0 + r) * rows + row] = s;
    }
}

#define GEMVQ_KERNELS(name, T)                                                                          \
    extern "C" __global__ void gemvq1_##name(const u8* w, u64 row_bytes, int rows, int cols, const i8* qx, \
                                             const float* dx, const int* sx, const float* s1, float* y,  \
                                             int n) {                                                    \
        gemvq_impl<T, 1>(w, row_bytes, rows, cols, qx, dx, sx, s1, y, n);                                \
    }                                                                                                    \
    extern "C" __global__ void gemvq8_##name(const u8* w, u64 row_bytes, int rows, int cols, const i8* qx, \
                                             const float* dx, const int* sx, const float* s1, float* y,  \
                                             int n) {                                                    \
        gemvq_impl<T, 8>(w, row_bytes, rows, cols, qx, dx, sx, s1, y, n);                                \
    }

GEMVQ_KERNELS(q8_0, GQ8_0)
GEMVQ_KERNELS(q4_0, GQ4<false>)
GEMVQ_KERNELS(q5_0, GQ5<false>)
GEMVQ_KERNELS(q4_1, GQ4<true>)
GEMVQ_KERNELS(q5_1, GQ5<true>)
GEMVQ_KERNELS(q4_k, GQK45<false>)
GEMVQ_KERNELS(q5_k, GQK45<true>)
GEMVQ_KERNELS(q6_k, GQ6_K)
GEMVQ_KERNELS(iq4_nl, GIQ4_NL)
GEMVQ_KERNELS(iq4_xs, GIQ4_XS)
GEMVQ_KERNELS(q2_k, GQ2_K)
GEMVQ_KERNELS(q3_k, GQ3_K)
GEMVQ_KERNELS(int4, GQINT<4>)
GEMVQ_KERNELS(int8, GQINT<8>)
