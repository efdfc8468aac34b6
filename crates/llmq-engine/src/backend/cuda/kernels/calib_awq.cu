// AWQ kernels (`backend/cuda/calib_awq.rs`; the math is in `calib_awq.cuh`), and the
// importance matrix's per-channel sums of squares (llama.cpp's imatrix): the
// per-channel sums of |x| and the row sample of every Linear input, the scale search's
// weight error per grid point (its product with the sample rows is a cuBLAS `Sgemm`)
// and the squared sum of that product reduced in a fixed order, the inputs divided by
// the chosen scales, the groups' Gram matrices and the clip search, one thread per
// (row, group).

// sum[c] += |x[r, c]| over the rows in order (f64), one thread per column.
extern "C" __global__ void awq_abs_sum(const float* x, int rows, int cols, double* sum) {
    CALIB_FOR(c, cols) {
        double s = sum[c];
        for (int r = 0; r < rows; r++) s = __dadd_rn(s, (double)fabsf(x[(u64)r * cols + c]));
        sum[c] = s;
    }
}

// dst[i, :] = src[idx[i], :] for i < n (rows of `cols` values).
extern "C" __global__ void awq_gather(const float* src, const u32* idx, int n, int cols,
                                      float* dst) {
    CALIB_FOR(k, (long long)n * cols) {
        long long i = k / cols, c = k % cols;
        dst[k] = src[(u64)idx[i] * cols + c];
    }
}

// x[r, c] /= s[c]
extern "C" __global__ void awq_div_cols(float* x, const float* s, long long n, int cols) {
    CALIB_FOR(k, n) x[k] = __fdiv_rn(x[k], s[k % cols]);
}

// The scale search's weight error `Q(W·diag(s))·diag(s)⁻¹ − W` of every (row, group).
extern "C" __global__ void awq_fq_diff_k(const float* w, const float* s, int out, int inp,
                                         int gs, float maxqf, float* d) {
    int ng = inp / gs;
    CALIB_FOR(k, (long long)out * ng) {
        long long o = k / ng, g = k % ng;
        u64 at = (u64)o * inp + (u64)g * gs;
        awq_fq_diff(w + at, s + g * gs, gs, maxqf, d + at);
    }
}

// partial[block] = Σ y² (f64) over the block's share of the n values, a fixed tree:
// launched with 256 threads per block, its grid size fixed by the caller.
extern "C" __global__ void awq_sq_partial(const float* y, long long n, double* partial) {
    __shared__ double sh[256];
    double a = 0.0;
    CALIB_FOR(k, n) {
        double v = (double)y[k];
        a = __dadd_rn(a, __dmul_rn(v, v));
    }
    sh[threadIdx.x] = a;
    __syncthreads();
    for (int h = 128; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) sh[threadIdx.x] = __dadd_rn(sh[threadIdx.x], sh[threadIdx.x + h]);
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

// *acc += Σ partial[0..n] in order (one thread).
extern "C" __global__ void awq_sum_into(const double* partial, int n, double* acc) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < n; i++) s = __dadd_rn(s, partial[i]);
    *acc = __dadd_rn(*acc, s);
}

// gram[g, i, j] over the sample rows r = 0, step, … < n of x ([n, inp]).
extern "C" __global__ void awq_gram(const float* x, int n, int step, int inp, int gs,
                                    float* gram) {
    int ng = inp / gs;
    CALIB_FOR(k, (long long)ng * gs * gs) {
        long long g = k / ((long long)gs * gs), ij = k % ((long long)gs * gs);
        int i = (int)(ij / gs), j = (int)(ij % gs);
        gram[k] = awq_gram_value(x, n, step, inp, (int)g * gs, i, j);
    }
}

// best[o, g]: the clip range of row o's group g (grid: x over tiles of blockDim.x rows,
// y over groups; each thread keeps its error vector in dynamic shared memory,
// blockDim.x·gs floats).
extern "C" __global__ void awq_clip(const float* w, const float* gram, int out, int inp, int gs,
                                    float maxqf, const float* factors, int nf, float* best) {
    extern __shared__ float awq_d[];
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    int g = blockIdx.y;
    int ng = inp / gs;
    if (o >= out) return;
    const float* wg = w + (u64)o * inp + (u64)g * gs;
    best[(u64)o * ng + g] = awq_clip_one(wg, gram + (u64)g * gs * gs, gs, maxqf, factors, nf,
                                         awq_d + threadIdx.x, (int)blockDim.x);
}

// The importance matrix: sum[c] += Σ_r x[r, c]², the batch's sum first (f32 from zero,
// rows in order, as `llmq_calib::add_squares` sums one observed batch), then added to
// the running total (`ImatrixEntry::add_sums`). One thread per column.
extern "C" __global__ void calib_sq_sum(const float* x, int rows, int cols, float* sum) {
    CALIB_FOR(c, cols) {
        float a = 0.0f;
        for (int r = 0; r < rows; r++) {
            float v = x[(u64)r * cols + c];
            a = __fadd_rn(a, __fmul_rn(v, v));
        }
        sum[c] = __fadd_rn(sum[c], a);
    }
}
