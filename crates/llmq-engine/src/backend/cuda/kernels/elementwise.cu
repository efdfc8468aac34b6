// Element-wise and layout kernels of the decoder: RMSNorm (Zhang & Sennrich 2019),
// rotary embeddings (RoFormer, Su et al. 2021; GPT-J "norm" and GPT-NeoX pairings),
// gated activations (SiLU / tanh-GELU), logit soft-capping, residual and bias adds,
// row gathers and column slices. Every kernel is a flat grid-stride loop unless noted.

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// One block per row: y = x * w / sqrt(mean(x^2) + eps); the sum of squares in f64
// like the CPU engine. Each thread loads four values before it adds them, so a row of
// a decode step (one block) waits for four rounds of memory latency, not sixteen.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, int width, float eps) {
    __shared__ double part[32];
    const float* xr = x + (u64)blockIdx.x * width;
    float* yr = y + (u64)blockIdx.x * width;
    int bd = blockDim.x;
    double ss = 0.0;
    for (int i0 = threadIdx.x; i0 < width; i0 += 4 * bd) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int i = i0 + u * bd;
            v[u] = i < width ? xr[i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) ss += (double)v[u] * (double)v[u];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = bd >> 5;
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    double t = 0.0;
    for (int k = 0; k < nw; k++) t += part[k];
    float inv = 1.0f / sqrtf((float)(t / (double)width) + eps);
#pragma unroll 4
    for (int i = threadIdx.x; i < width; i += bd) yr[i] = xr[i] * inv * w[i];
}

extern "C" __global__ void add_bias(float* x, const float* b, u64 n, int width) {
    GRID_STRIDE(i, n) x[i] += b[i % width];
}

extern "C" __global__ void add_assign(float* x, const float* y, u64 n) {
    GRID_STRIDE(i, n) x[i] += y[i];
}

extern "C" __global__ void softcap(float* x, u64 n, float cap) {
    GRID_STRIDE(i, n) x[i] = tanhf(x[i] / cap) * cap;
}

// The gated value of a gate/up pair. act 0: silu(g)·u; 1: gelu_tanh(g)·u; 2: GPT-OSS's
// clamped SwiGLU, g = min(g, limit), u = clamp(u, ±limit), (u + 1)·g·σ(alpha·g).
__device__ __forceinline__ float gated(float g, float u, int act, float alpha, float limit) {
    if (act == 0) return g / (1.0f + expf(-g)) * u;
    if (act == 2) {
        g = fminf(g, limit);
        u = fminf(fmaxf(u, -limit), limit);
        return g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
    }
    const float k = 0.7978846f;  // sqrt(2/pi)
    return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g))) * u;
}

// gate = act(gate) * up
extern "C" __global__ void glu(float* gate, const float* up, u64 n, int act, float alpha, float limit) {
    GRID_STRIDE(i, n) gate[i] = gated(gate[i], up[i], act, alpha, limit);
}

// h[t, i] = act(gu[t, i]) * gu[t, ff + i]
extern "C" __global__ void glu_fused(const float* gu, float* h, u64 n, int ff, int act, float alpha,
                                     float limit) {
    GRID_STRIDE(i, n) {
        u64 t = i / ff, c = i % ff;
        h[i] = gated(gu[t * 2 * ff + c], gu[t * 2 * ff + ff + c], act, alpha, limit);
    }
}

// Rotate pair i of every head of every row: row t at position pos[t]. The angle is
// computed in f64 like the CPU's table (`ops::rope_table`): position / scale times
// base^(-2i/n_rot) / freq_factors[i]; cos and sin are multiplied by attn_factor (RoPE
// scaling: llama3 / LongRoPE factors, YaRN's attention factor). kind 0: pairs
// (2i, 2i+1); 1: (i, i + n_rot/2).
extern "C" __global__ void rope(float* x, const int* pos, int n_tokens, int width, int head_dim,
                                int n_rot, double base, double scale, int kind,
                                const float* freq_factors, float attn_factor) {
    int half = n_rot / 2, heads = width / head_dim;
    u64 n = (u64)n_tokens * heads * half;
    GRID_STRIDE(k, n) {
        int i = (int)(k % half);
        u64 th = k / half;
        int h = (int)(th % heads);
        u64 t = th / heads;
        double p = (double)pos[t] / scale;
        double inv_freq = pow(base, -2.0 * (double)i / (double)n_rot) / (double)freq_factors[i];
        double a = p * inv_freq;
        float c = (float)cos(a), s = (float)sin(a);
        if (attn_factor != 1.0f) {
            c *= attn_factor;
            s *= attn_factor;
        }
        float* v = x + t * width + (u64)h * head_dim;
        int ia = kind == 0 ? 2 * i : i, ib = kind == 0 ? 2 * i + 1 : i + half;
        float x0 = v[ia], x1 = v[ib];
        v[ia] = x0 * c - x1 * s;
        v[ib] = x0 * s + x1 * c;
    }
}

// out[k] = x[rows[k]] (rows of width)
extern "C" __global__ void gather_rows(const float* x, const int* rows, float* out, int n_rows, int width) {
    u64 n = (u64)n_rows * width;
    GRID_STRIDE(i, n) out[i] = x[(u64)rows[i / width] * width + i % width];
}

// out[r, c] = x[r, start + c] for c < len
extern "C" __global__ void slice_cols(const float* x, float* out, u64 rows, int width, int start, int len) {
    u64 n = rows * len;
    GRID_STRIDE(i, n) out[i] = x[(i / len) * width + start + i % len];
}

// out[r, j] = x[r, perm[j]]: activations gathered into an act-order weight's stored column
// order (GPTQ `g_idx`).
extern "C" __global__ void permute_cols(const float* x, float* out, const int* perm, u64 rows, int width) {
    u64 n = rows * width;
    GRID_STRIDE(i, n) out[i] = x[(i / width) * width + perm[i % width]];
}

// dst[r, start + c] = src[r, c] for c < src_width
extern "C" __global__ void write_cols(float* dst, const float* src, u64 rows, int width, int start, int src_width) {
    u64 n = rows * src_width;
    GRID_STRIDE(i, n) dst[(i / src_width) * width + start + i % src_width] = src[i];
}

// dst[*off + i] = src[i] for i < n: a KV-cache append whose offset is read from device
// memory, so a recorded decode step launches it with the same arguments at every
// position (`record.rs`)
extern "C" __global__ void copy_at(const float* src, float* dst, const long long* off, u64 n) {
    long long o = *off;
    GRID_STRIDE(i, n) dst[o + i] = src[i];
}

// out[r] = [a[r] | b[r]]
extern "C" __global__ void concat_cols(const float* a, int wa, const float* b, int wb, float* out, u64 rows) {
    int w = wa + wb;
    u64 n = rows * w;
    GRID_STRIDE(i, n) {
        u64 r = i / w;
        int c = (int)(i % w);
        out[i] = c < wa ? a[r * wa + c] : b[r * wb + c - wa];
    }
}

// dst[tok[k]] += wt[k] * src[k] for k < n_rows; the tokens of one call are distinct.
extern "C" __global__ void scatter_add_rows(float* dst, const float* src, const int* tok, const float* wt,
                                            int n_rows, int width) {
    u64 n = (u64)n_rows * width;
    GRID_STRIDE(i, n) {
        u64 k = i / width;
        dst[(u64)tok[k] * width + i % width] += wt[k] * src[i];
    }
}
