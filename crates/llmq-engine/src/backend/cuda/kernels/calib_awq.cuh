// The per-group math of AWQ on the GPU (Lin et al., arXiv 2306.00978, as
// `llmq_calib::awq` implements AutoAWQ's search): the asymmetric min-max group grid
// (`group_params`), the vectorisable code (`code_f`), one (row, group)'s
// quantize-dequantize error of the scale search's scaled weight, the Gram matrix of a
// group's input columns and one (row, group)'s clip search on it (`search_clip`:
// the 8-lane dot products and the f64 sum in the CPU's order). Every product and sum
// is rounded as the CPU rounds it (no fused multiply-add), so these functions give
// the CPU's bits on the same inputs. Plain C++ apart from a few intrinsics: the test
// suite compiles this file for the host with shims for them (`tests/cuda_awq.rs`).

// `awq::group_params` over `len` values at stride `st`, the clamp to [-m, m] first
// when `m` >= 0: the scale (f16-rounded, as f32) and the zero point (as f32).
__device__ __forceinline__ void awq_group_params(const float* v, int st, int len, float m,
                                                 float maxqf, float* sf, float* zf) {
    float lo = __int_as_float(0x7f800000), hi = -__int_as_float(0x7f800000);
    for (int k = 0; k < len; k++) {
        float x = v[(u64)k * st];
        if (m >= 0.0f) x = x < -m ? -m : (x > m ? m : x);
        lo = fminf(lo, x);
        hi = fmaxf(hi, x);
    }
    if (!(fabsf(lo) <= 3.402823466e38f) || !(fabsf(hi) <= 3.402823466e38f)) {
        lo = 0.0f;
        hi = 0.0f;
    }
    float s = calib_h2f(calib_f16_scale(__fdiv_rn(fmaxf(__fsub_rn(hi, lo), 1e-5f), maxqf)));
    float z = -rintf(__fdiv_rn(lo, s));
    *sf = s;
    *zf = fminf(fmaxf(z, 0.0f), maxqf);
}

// `awq::code_f`: round half to even through 1.5·2²³, the zero point added, clamped
// (a NaN gives 0).
__device__ __forceinline__ float awq_code(float x, float sf, float zf, float maxqf) {
    const float shift = 12582912.0f;
    float r = __fsub_rn(__fadd_rn(__fdiv_rn(x, sf), shift), shift);
    return fminf(fmaxf(__fadd_rn(r, zf), 0.0f), maxqf);
}

// Scale search, one (row, group) of `gs` values at `w` (stride 1) with the group's
// scales `s`: `W·diag(s)` quantized and dequantized, `diag(s)⁻¹` applied again, minus
// `W` — the weight error whose product with the inputs is the output error — into `d`.
__device__ __forceinline__ void awq_fq_diff(const float* w, const float* s, int gs,
                                            float maxqf, float* d) {
    float lo = __int_as_float(0x7f800000), hi = -lo;
    for (int k = 0; k < gs; k++) {
        float x = __fmul_rn(w[k], s[k]);
        lo = fminf(lo, x);
        hi = fmaxf(hi, x);
    }
    if (!(fabsf(lo) <= 3.402823466e38f) || !(fabsf(hi) <= 3.402823466e38f)) {
        lo = 0.0f;
        hi = 0.0f;
    }
    float sf = calib_h2f(calib_f16_scale(__fdiv_rn(fmaxf(__fsub_rn(hi, lo), 1e-5f), maxqf)));
    float zf = fminf(fmaxf(-rintf(__fdiv_rn(lo, sf)), 0.0f), maxqf);
    for (int k = 0; k < gs; k++) {
        float x = __fmul_rn(w[k], s[k]);
        float q = __fmul_rn(sf, __fsub_rn(awq_code(x, sf, zf, maxqf), zf));
        d[k] = __fsub_rn(__fdiv_rn(q, s[k]), w[k]);
    }
}

// One element of a group's Gram matrix over the sample rows r = 0, step, 2·step, …
// below n: Σ x[r, c0+i]·x[r, c0+j], f32 in row order (the CPU's `gram`).
__device__ __forceinline__ float awq_gram_value(const float* x, int n, int step, int inp,
                                                int c0, int i, int j) {
    float acc = 0.0f;
    for (int r = 0; r < n; r += step) {
        const float* xr = x + (u64)r * inp + c0;
        acc = __fadd_rn(acc, __fmul_rn(xr[i], xr[j]));
    }
    return acc;
}

// `awq::dot8` of gram row `g` (stride 1) with `d` (stride `ds`), `len` values.
__device__ __forceinline__ float awq_dot8(const float* g, const float* d, int ds, int len) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int full = len - len % 8;
    for (int j = 0; j < full; j += 8)
        for (int l = 0; l < 8; l++)
            acc[l] = __fadd_rn(acc[l], __fmul_rn(g[j + l], d[(u64)(j + l) * ds]));
    float s = acc[0];
    for (int l = 1; l < 8; l++) s = __fadd_rn(s, acc[l]);
    for (int j = full; j < len; j++) s = __fadd_rn(s, __fmul_rn(g[j], d[(u64)j * ds]));
    return s;
}

// Clip search of one (row, group): `wg` its `gs` weights (stride 1), `gram` the
// group's Gram matrix ([gs, gs]), `factors` the `nf` shrink factors; `d` scratch of
// `gs` values at stride `ds`. The range `max|w|·factor` of smallest output error
// `dᵀ·G·d` (first wins on ties), as `awq::search_clip`.
__device__ __forceinline__ float awq_clip_one(const float* wg, const float* gram, int gs,
                                              float maxqf, const float* factors, int nf,
                                              float* d, int ds) {
    float org_max = 0.0f;
    for (int k = 0; k < gs; k++) org_max = fmaxf(org_max, fabsf(wg[k]));
    double best_err = __longlong_as_double(0x7ff0000000000000ll);
    float best_max = org_max;
    for (int i = 0; i < nf; i++) {
        float m = __fmul_rn(org_max, factors[i]);
        float sf, zf;
        awq_group_params(wg, 1, gs, m, maxqf, &sf, &zf);
        for (int k = 0; k < gs; k++) {
            float x = wg[k];
            x = x < -m ? -m : (x > m ? m : x);
            float q = __fmul_rn(sf, __fsub_rn(awq_code(x, sf, zf, maxqf), zf));
            d[(u64)k * ds] = __fsub_rn(q, wg[k]);
        }
        double err = 0.0;
        for (int k = 0; k < gs; k++) {
            float dot = awq_dot8(gram + (u64)k * gs, d, ds, gs);
            err = __dadd_rn(err, __dmul_rn((double)d[(u64)k * ds], (double)dot));
        }
        if (err < best_err) {
            best_err = err;
            best_max = m;
        }
    }
    return best_max;
}
