// Causal softmax attention of one query head per block over one sequence's cache,
// streamed in tiles of keys with the running-max rescaling of online softmax (Milakov
// & Gimelshein 2018; the flash-attention recurrence, Dao et al. 2022).
//
// One kernel serves both kinds the engine has:
// - standard / grouped-query attention: the query is `da = head_dim_k` values, key row
//   `j` of KV head `g` is at `K + j*k_stride + g*da`, its value at `V + j*v_stride + g*dv`;
// - absorbed multi-head latent attention (DeepSeek-V2, arXiv 2405.04434): the query is
//   `[q_lat (da = lora) | q_rope (db = rope)]`, the cache row `[latent | roped key]` is
//   the key (one KV head) and its first `dv = lora` values are the value.
// Key `j` is visible from position `p` when `first <= j <= p` (sliding window).
// `sinks` (a device address, 0 for none) holds a logit per query head that joins the
// softmax denominator without a value (GPT-OSS's attention sinks).

#define ATT_TILE 128

extern "C" __global__ void attention(const float* qa, const float* qb, const u64* kp, const u64* vp,
                                     const int* pos, float* out, int n_head, int n_head_kv, int da, int db,
                                     int dv, int k_stride, int v_stride, float scale, int window,
                                     u64 sinks) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    int dk = da + db;
    float* qs = sm;
    float* sc = sm + dk;
    float* acc = sc + ATT_TILE;
    int h = blockIdx.x, t = blockIdx.y;
    int tid = threadIdx.x, bd = blockDim.x, lane = tid & 31, warp = tid >> 5, nwarps = bd >> 5;
    int g = h / (n_head / n_head_kv);
    const float* K = (const float*)kp[t] + (u64)g * dk;
    const float* V = (const float*)vp[t] + (u64)g * dv;
    int p = pos[t];
    int first = window > 0 ? max(0, p + 1 - window) : 0;
    u64 qi = (u64)t * n_head + h;
    for (int i = tid; i < da; i += bd) qs[i] = qa[qi * da + i];
    for (int i = tid; i < db; i += bd) qs[da + i] = qb[qi * db + i];
    for (int d = tid; d < dv; d += bd) acc[d] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    __syncthreads();
    for (int j0 = first; j0 <= p; j0 += ATT_TILE) {
        int nt = min(ATT_TILE, p + 1 - j0);
        // each warp scores four keys at a time (independent loads and reductions in
        // flight together); every score is summed in the same order as one at a time
        for (int jb = warp * 4; jb < nt; jb += nwarps * 4) {
            int nk = min(4, nt - jb);
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int i = lane; i < dk; i += 32) {
                float q = qs[i];
#pragma unroll
                for (int u = 0; u < 4; u++)
                    if (u < nk) s[u] += q * K[(u64)(j0 + jb + u) * k_stride + i];
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                float v = warp_sum(s[u]);
                if (lane == 0 && u < nk) sc[jb + u] = v * scale;
            }
        }
        __syncthreads();
        float tm = NEG_INF;
        for (int jj = tid; jj < nt; jj += bd) tm = fmaxf(tm, sc[jj]);
        tm = block_max(tm, red);
        float mn = fmaxf(m, tm);
        float corr = expf(m - mn);
        float ls = 0.0f;
        for (int jj = tid; jj < nt; jj += bd) {
            float e = expf(sc[jj] - mn);
            sc[jj] = e;
            ls += e;
        }
        ls = block_sum(ls, red);
        l = l * corr + ls;
        m = mn;
        __syncthreads();
        for (int d = tid; d < dv; d += bd) {
            // four partial sums: four value loads in flight at once
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            const float* vd = V + (u64)j0 * v_stride + d;
            int jj = 0;
            for (; jj + 4 <= nt; jj += 4) {
                a0 += sc[jj] * vd[(u64)jj * v_stride];
                a1 += sc[jj + 1] * vd[(u64)(jj + 1) * v_stride];
                a2 += sc[jj + 2] * vd[(u64)(jj + 2) * v_stride];
                a3 += sc[jj + 3] * vd[(u64)(jj + 3) * v_stride];
            }
            for (; jj < nt; jj++) a0 += sc[jj] * vd[(u64)jj * v_stride];
            acc[d] = acc[d] * corr + ((a0 + a1) + (a2 + a3));
        }
        __syncthreads();
    }
    float corr = 1.0f;
    if (sinks != 0) {
        float s = ((const float*)sinks)[h];
        float mn = fmaxf(m, s);
        corr = expf(m - mn);
        l = l * corr + expf(s - mn);
    }
    float inv = corr / l;
    for (int d = tid; d < dv; d += bd) out[qi * dv + d] = acc[d] * inv;
}

// Prompt attention of a whole grouped-query group per block: block (g, t) computes the
// `G` query heads that share KV head `g` for token `t`, so each key and value row is read
// once per group instead of once per query head (the reads that dominate a long prompt).
// The same online softmax as `attention`, per head; each score is summed in the same order.
// Standard attention only (da = head_dim_k, no second query part).
template <int G>
__device__ void attention_group(const float* q, const u64* kp, const u64* vp, const int* pos,
                                float* out, int n_head, int n_head_kv, int dk, int dv, int k_stride,
                                int v_stride, float scale, int window, u64 sinks) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    float* qs = sm;                   // [G][dk]
    float* sc = qs + G * dk;          // [G][ATT_TILE]
    float* acc = sc + G * ATT_TILE;   // [G][dv]
    int g = blockIdx.x, t = blockIdx.y;
    int tid = threadIdx.x, bd = blockDim.x, lane = tid & 31, warp = tid >> 5, nwarps = bd >> 5;
    const float* K = (const float*)kp[t] + (u64)g * dk;
    const float* V = (const float*)vp[t] + (u64)g * dv;
    int p = pos[t];
    int first = window > 0 ? max(0, p + 1 - window) : 0;
    u64 q0 = (u64)t * n_head + (u64)g * G;  // first query head of the group, this token
    for (int i = tid; i < G * dk; i += bd) qs[i] = q[q0 * dk + i];
    for (int i = tid; i < G * dv; i += bd) acc[i] = 0.0f;
    float m[G], l[G];
#pragma unroll
    for (int h = 0; h < G; h++) {
        m[h] = NEG_INF;
        l[h] = 0.0f;
    }
    __syncthreads();
    for (int j0 = first; j0 <= p; j0 += ATT_TILE) {
        int nt = min(ATT_TILE, p + 1 - j0);
        for (int jj = warp; jj < nt; jj += nwarps) {
            const float* kr = K + (u64)(j0 + jj) * k_stride;
            float s[G];
#pragma unroll
            for (int h = 0; h < G; h++) s[h] = 0.0f;
            for (int i = lane; i < dk; i += 32) {
                float k = kr[i];
#pragma unroll
                for (int h = 0; h < G; h++) s[h] += qs[h * dk + i] * k;
            }
#pragma unroll
            for (int h = 0; h < G; h++) {
                float v = warp_sum(s[h]);
                if (lane == 0) sc[h * ATT_TILE + jj] = v * scale;
            }
        }
        __syncthreads();
        float corr[G];
#pragma unroll
        for (int h = 0; h < G; h++) {
            float* sh = sc + h * ATT_TILE;
            float tm = NEG_INF;
            for (int jj = tid; jj < nt; jj += bd) tm = fmaxf(tm, sh[jj]);
            tm = block_max(tm, red);
            float mn = fmaxf(m[h], tm);
            corr[h] = expf(m[h] - mn);
            float ls = 0.0f;
            for (int jj = tid; jj < nt; jj += bd) {
                float e = expf(sh[jj] - mn);
                sh[jj] = e;
                ls += e;
            }
            ls = block_sum(ls, red);
            l[h] = l[h] * corr[h] + ls;
            m[h] = mn;
        }
        __syncthreads();
        for (int d = tid; d < dv; d += bd) {
            float a[G];
#pragma unroll
            for (int h = 0; h < G; h++) a[h] = 0.0f;
            const float* vd = V + (u64)j0 * v_stride + d;
            for (int jj = 0; jj < nt; jj++) {
                float v = vd[(u64)jj * v_stride];
#pragma unroll
                for (int h = 0; h < G; h++) a[h] += sc[h * ATT_TILE + jj] * v;
            }
#pragma unroll
            for (int h = 0; h < G; h++) acc[h * dv + d] = acc[h * dv + d] * corr[h] + a[h];
        }
        __syncthreads();
    }
#pragma unroll
    for (int h = 0; h < G; h++) {
        float c = 1.0f, lh = l[h];
        if (sinks != 0) {
            float s = ((const float*)sinks)[g * G + h];
            float mn = fmaxf(m[h], s);
            c = expf(m[h] - mn);
            lh = lh * c + expf(s - mn);
        }
        float inv = c / lh;
        for (int d = tid; d < dv; d += bd) out[(q0 + h) * dv + d] = acc[h * dv + d] * inv;
    }
}

#define ATTENTION_GROUP(G)                                                                       \
    extern "C" __global__ void attention_g##G(const float* q, const u64* kp, const u64* vp,     \
                                              const int* pos, float* out, int n_head,            \
                                              int n_head_kv, int dk, int dv, int k_stride,       \
                                              int v_stride, float scale, int window, u64 sinks) { \
        attention_group<G>(q, kp, vp, pos, out, n_head, n_head_kv, dk, dv, k_stride, v_stride,   \
                           scale, window, sinks);                                                \
    }
ATTENTION_GROUP(2)
ATTENTION_GROUP(4)
ATTENTION_GROUP(8)
