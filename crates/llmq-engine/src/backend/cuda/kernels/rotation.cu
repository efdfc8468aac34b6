// MR-GPTQ's online rotation of activations (arXiv 2509.23202; `llmq_kernels::rotation`):
// every block of b values (b a power of two) times the Sylvester Hadamard matrix H_b,
// then times norm = 1/sqrt(b) (computed on the host as the CPU engine computes it). The
// butterflies are those of `llmq_hfquant::hadamard`'s fast Walsh-Hadamard transform,
// stage by stage (len = 1, 2, 4, ...; butterfly t pairs k = (t / len)·2·len + t % len
// with k + len), so every value takes the same f32 additions as on the CPU.
//
// Needs (concatenated before it): common.cuh.

// ---- rotation: butterflies

// Butterfly t of the stage of half-width len, in place on one block v.
__device__ __forceinline__ void hadamard_butterfly(float* v, int len, int t) {
    int k = (t / len) * 2 * len + t % len;
    float a = v[k], c = v[k + len];
    v[k] = a + c;
    v[k + len] = a - c;
}

// ---- rotation: kernels

// y = x with every block of b values rotated; one thread block per Hadamard block,
// the block in shared memory (b floats of dynamic shared memory). x may equal y.
extern "C" __global__ void rotate_blocks(const float* x, float* y, int b, float norm) {
    extern __shared__ float v[];
    u64 base = (u64)blockIdx.x * b;
    for (int i = threadIdx.x; i < b; i += blockDim.x) v[i] = x[base + i];
    __syncthreads();
    for (int len = 1; len < b; len *= 2) {
        for (int t = threadIdx.x; t < b / 2; t += blockDim.x) hadamard_butterfly(v, len, t);
        __syncthreads();
    }
    for (int i = threadIdx.x; i < b; i += blockDim.x) y[base + i] = v[i] * norm;
}
