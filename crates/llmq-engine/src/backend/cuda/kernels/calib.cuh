// The per-element and per-row math of calibration on the GPU (GPTQ, Frantar et al.,
// arXiv 2210.17323): the f16 rounding of scales, the min-max grid of
// `llmq_hfquant::rtn::group_params`, GPTQ's in-block column loop for one weight row
// (`llmq_calib::gptq`), the Hessian's reordered and dampened copy, an unblocked
// Cholesky of one diagonal block and the inverse factor's reversal. Written with no
// CUDA-only calls outside a few intrinsics, so the test suite compiles this file for
// the host (with shims for those intrinsics) and checks it against the CPU code.

#ifndef CALIB_SYNC
#define CALIB_SYNC() __syncthreads()
#endif

// f32 rounded to bf16 and back (round to nearest even; a NaN stays a quiet NaN), as
// `half::bf16::from_f32` rounds: the host's activation store holds these values.
__device__ __forceinline__ float calib_bf16_round(float f) {
    u32 b = __float_as_uint(f);
    u32 h;
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        h = (b >> 16) | 0x0040u;
    } else {
        h = b >> 16;
        if ((b & 0x8000u) != 0 && (b & 0x17fffu) != 0) h += 1;
    }
    return __uint_as_float(h << 16);
}

// f32 to IEEE half bits, round to nearest even (as `half::f16::from_f32`).
__device__ __forceinline__ u16 calib_f2h(float f) {
    u32 x = __float_as_uint(f);
    u32 sign = (x >> 16) & 0x8000u;
    u32 ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (u16)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u) return (u16)(sign | 0x7c00u);  // rounds to infinity
    if (ax < 0x38800000u) {                                 // below 2^-14: subnormal
        if (ax < 0x33000000u) return (u16)sign;             // below 2^-25 (a tie at 2^-25)
        u32 e = ax >> 23;
        u32 m = (ax & 0x7fffffu) | 0x800000u;
        u32 shift = 126u - e;  // value / 2^-24 = m / 2^shift
        u32 r = m >> shift;
        u32 rem = m & ((1u << shift) - 1u);
        u32 half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (u16)(sign | r);
    }
    u32 r = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
    u32 rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (u16)(sign | r);
}

// IEEE half bits to f32.
__device__ __forceinline__ float calib_h2f(u16 h) {
    u32 s = ((u32)h & 0x8000u) << 16;
    u32 e = ((u32)h >> 10) & 31u;
    u32 m = (u32)h & 1023u;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f;  // m * 2^-24, exact
        return s ? -v : v;
    }
    if (e == 31) return __uint_as_float(s | 0x7f800000u | (m << 13));
    return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
}

// `rtn::f16_scale`: a positive scale rounded to f16, kept positive and finite.
__device__ __forceinline__ u16 calib_f16_scale(float s) {
    u16 h = calib_f2h(s);
    float v = calib_h2f(h);
    if (!(fabsf(v) <= 65504.0f)) return 0x7bffu;  // not finite: f16::MAX
    if (v <= 0.0f) return 1u;                      // smallest positive subnormal
    return h;
}

// `rtn::group_params` of `len` values: the f16 scale's bits and the zero point.
__device__ __forceinline__ void calib_group_params(const float* v, int len, int bits, int sym,
                                                   u16* scale, int* zero) {
    float maxq = (float)((1u << bits) - 1u);
    float xmin = 0.0f, xmax = 0.0f;
    for (int i = 0; i < len; i++) {
        xmin = fminf(xmin, v[i]);
        xmax = fmaxf(xmax, v[i]);
    }
    if (sym) {
        xmax = fmaxf(xmax, fabsf(xmin));
        if (xmin < 0.0f) xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    u16 sh = calib_f16_scale((xmax - xmin) / maxq);
    *scale = sh;
    if (sym) {
        *zero = 1 << (bits - 1);
    } else {
        float z = rintf(-xmin / calib_h2f(sh));
        *zero = (int)fminf(fmaxf(z, 0.0f), maxq);
    }
}

// `rtn::quantize_value`.
__device__ __forceinline__ int calib_quantize(float x, float scale, int zero, int maxq) {
    float q = rintf(x / scale) + (float)zero;
    return (int)fminf(fmaxf(q, 0.0f), (float)maxq);
}

// GPTQ's column loop over columns i1 .. i1+count (count <= 128) of weight row `o`
// (`wp`: [rows, n] row-major, the columns in processing order, as they stand at the
// block's start; `u`: the upper factor, [n, n] row-major). mode 0: one grid per row
// (`cur_*` preset); 1: a grid per group of `gs` columns, computed from `wp` when its
// first column is reached; 2: static groups from `st_*` ([rows, n_groups]) by the
// original column `perm[col] / gs`. Writes the codes into `qp`, the scaled errors into
// `err1` ([rows, count]), new groups' grids into `scales` / `zeros`, and adds the
// row's loss `Σ e² / 2` to `loss[o]`. Products are rounded before the subtraction
// (no fused multiply-add), as the CPU computes them.
__device__ __forceinline__ void calib_gptq_row(const float* wp, const float* u, int n, int o,
                                               int i1, int count, int bits, int mode, int gs,
                                               int sym, const u32* perm, const u16* st_scale,
                                               const u8* st_zero, int n_groups, u16* cur_scale,
                                               int* cur_zero, u8* qp, float* err1,
                                               u16* scales, u8* zeros, double* loss) {
    float w1[128];
    const float* row = wp + (u64)o * n;
    for (int c = 0; c < count; c++) w1[c] = row[i1 + c];
    int maxq = (1 << bits) - 1;
    u16 sh = cur_scale[o];
    int z = cur_zero[o];
    double l = 0.0;
    for (int i = 0; i < count; i++) {
        int col = i1 + i;
        if (mode == 2) {
            int k = (int)(perm[col] / (u32)gs);
            sh = st_scale[(u64)o * n_groups + k];
            z = st_zero[(u64)o * n_groups + k];
        } else if (mode == 1 && col % gs == 0) {
            int k = col / gs;
            int end = col + gs < n ? col + gs : n;
            calib_group_params(row + col, end - col, bits, sym, &sh, &z);
            scales[(u64)o * n_groups + k] = sh;
            zeros[(u64)o * n_groups + k] = (u8)z;
        }
        float sc = calib_h2f(sh);
        const float* urow = u + (u64)col * n + i1;
        float d = urow[i];
        float x = w1[i];
        int q = calib_quantize(x, sc, z, maxq);
        qp[(u64)o * n + col] = (u8)q;
        float dq = __fmul_rn(sc, (float)q - (float)z);
        float e = (x - dq) / d;
        l += (double)e * (double)e;
        err1[(u64)o * count + i] = e;
        for (int j = i + 1; j < count; j++) w1[j] = w1[j] - __fmul_rn(e, urow[j]);
    }
    cur_scale[o] = sh;
    cur_zero[o] = z;
    loss[o] += l / 2.0;
}

// Element (i, j) (column-major position) of R = J·(P H Pᵀ)·J + damp·I, with
// H = f · XᵀX read from the lower triangle of `xtx` (column-major, [n, n]) and dead
// inputs (H_aa = 0) set to 1.
__device__ __forceinline__ double calib_r_value(const double* xtx, const u32* perm, int n,
                                                double f, double damp, int i, int j) {
    int a = n - 1 - i, b = n - 1 - j;
    u32 pa = perm[a], pb = perm[b];
    u32 hi = pa > pb ? pa : pb, lo = pa > pb ? pb : pa;
    double v = f * xtx[(u64)hi + (u64)lo * n];
    if (a == b && v == 0.0) v = 1.0;
    if (i == j) v += damp;
    return v;
}

// Unblocked Cholesky (lower) of the `kb` x `kb` block at `a` (column-major, leading
// dimension `ld`), by threads `tid` of `nt`; the first non-positive pivot's index plus
// `k0` goes to `*fail` if smaller.
__device__ __forceinline__ void calib_potf2(double* a, int ld, int kb, int k0, int* fail,
                                            int tid, int nt) {
    for (int k = 0; k < kb; k++) {
        double d = a[k + (u64)k * ld];
        if (tid == 0 && !(d > 0.0) && *fail > k0 + k) *fail = k0 + k;
        double s = sqrt(d);
        CALIB_SYNC();
        if (tid == 0) a[k + (u64)k * ld] = s;
        for (int i = k + 1 + tid; i < kb; i += nt) a[i + (u64)k * ld] /= s;
        CALIB_SYNC();
        int m = kb - k - 1;
        for (int t = tid; t < m * m; t += nt) {
            int i = k + 1 + t % m, j = k + 1 + t / m;
            if (i >= j) a[i + (u64)j * ld] -= a[i + (u64)k * ld] * a[j + (u64)k * ld];
        }
        CALIB_SYNC();
    }
}

// Element (i, j) of U = J·L⁻¹·J (row-major f32; `linv` = L⁻¹ column-major), zero below
// the diagonal; a non-finite value or a non-positive diagonal puts its row into
// `*fail` if smaller.
__device__ __forceinline__ float calib_u_value(const double* linv, int n, int i, int j,
                                               int* fail) {
    if (j < i) return 0.0f;
    double v = linv[(u64)(n - 1 - i) + (u64)(n - 1 - j) * n];
    float fv = (float)v;
    if (!(fabs(v) <= 1.7976931348623157e308) || (i == j && fv <= 0.0f)) atomicMin(fail, i);
    return fv;
}
