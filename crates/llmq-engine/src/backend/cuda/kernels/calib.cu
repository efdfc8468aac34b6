// Calibration kernels (`backend/cuda/calib.rs`): the f64 copy of Linear inputs for the
// Hessian GEMM, the Hessian's diagonal, its reordered and dampened copy, one diagonal
// block of the blocked Cholesky, the identity, the reversed inverse factor, GPTQ's
// in-block column loop (one thread per weight row) and a scaled sum. The math is in
// `calib.cuh`; the loops here stride over the grid.

#define CALIB_FOR(idx, total)                                                          \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < (total); \
         idx += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void calib_f32_to_f64(const float* x, double* y, long long n) {
    CALIB_FOR(k, n) y[k] = (double)x[k];
}

// Every value rounded to bf16 and back, in place (`calib_bf16_round`): calibration
// activations kept on the device hold the host store's values.
extern "C" __global__ void calib_round_bf16(float* x, long long n) {
    CALIB_FOR(k, n) x[k] = calib_bf16_round(x[k]);
}

extern "C" __global__ void calib_diag(const double* xtx, double* out, int n) {
    CALIB_FOR(k, n) out[k] = xtx[(u64)k * n + k];
}

extern "C" __global__ void calib_axpy(double* y, const double* x, double a, long long n) {
    CALIB_FOR(k, n) y[k] += a * x[k];
}

extern "C" __global__ void calib_build_r(const double* xtx, const u32* perm, int n, double f,
                                         double damp, double* r) {
    CALIB_FOR(k, (long long)n * n) {
        int i = (int)(k % n), j = (int)(k / n);
        r[k] = calib_r_value(xtx, perm, n, f, damp, i, j);
    }
}

// one thread block
extern "C" __global__ void calib_potf2_block(double* a, int ld, int kb, int k0, int* fail) {
    calib_potf2(a, ld, kb, k0, fail, threadIdx.x, blockDim.x);
}

extern "C" __global__ void calib_eye(double* b, int n) {
    CALIB_FOR(k, (long long)n * n) b[k] = (k % n) == (k / n) ? 1.0 : 0.0;
}

extern "C" __global__ void calib_u(const double* linv, int n, float* u, int* fail) {
    CALIB_FOR(k, (long long)n * n) {
        int i = (int)(k / n), j = (int)(k % n);
        u[k] = calib_u_value(linv, n, i, j, fail);
    }
}

extern "C" __global__ void calib_gptq_block(const float* wp, const float* u, int n, int rows,
                                            int i1, int count, int bits, int mode, int gs,
                                            int sym, const u32* perm, const u16* st_scale,
                                            const u8* st_zero, int n_groups, u16* cur_scale,
                                            int* cur_zero, u8* qp, float* err1, u16* scales,
                                            u8* zeros, double* loss) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= rows) return;
    calib_gptq_row(wp, u, n, o, i1, count, bits, mode, gs, sym, perm, st_scale, st_zero,
                   n_groups, cur_scale, cur_zero, qp, err1, scales, zeros, loss);
}
