// pool-dense, convoy's built-in model, as one ragged-batch kernel:
//   out[i] = GELU(mean(E[tokens of request i]) @ W + b)
//
// The kernel ABI every convoy kernel follows (see src/kernel.rs):
//   (weights..., const unsigned* words, const unsigned* offsets, int batch,
//    float* out, int width)
// Request i owns words[offsets[i] .. offsets[i+1]] and writes
// out[i*width .. (i+1)*width]. The grid has one block per request; this
// kernel wants width floats of dynamic shared memory for the pooled vector.
//
// The arithmetic follows the CPU reference in src/model.rs term by term
// (its gather's order, below, times 1/n; bias first, then k = 0..width),
// so the two differ only by fused multiply-adds and tanhf's rounding.

__device__ __forceinline__ float gelu_tanh(float x) {
    const float c = 0.7978845608f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

// The sum of E[words[t]][j] for t in [t, t + N), as a pairwise tree:
// ((e0 + e1) + (e2 + e3)) + ..., N a power of two. The CPU reference
// (add_rows in src/model.rs) sums a group the same way.
template <int N>
__device__ __forceinline__ float group_sum(const float* __restrict__ emb,
                                           const unsigned* __restrict__ words,
                                           unsigned t, int width, int j) {
    return group_sum<N / 2>(emb, words, t, width, j)
         + group_sum<N / 2>(emb, words, t + N / 2, width, j);
}

template <>
__device__ __forceinline__ float group_sum<1>(const float* __restrict__ emb,
                                              const unsigned* __restrict__ words,
                                              unsigned t, int width, int j) {
    return emb[(size_t)words[t] * (size_t)width + j];
}

extern "C" __global__ void pool_dense(
    const float* __restrict__ emb,       // V x D, row-major
    const float* __restrict__ weight,    // D x D, row-major
    const float* __restrict__ bias,      // D
    const unsigned* __restrict__ words,  // token ids of every request
    const unsigned* __restrict__ offsets,// batch + 1
    int batch,
    float* __restrict__ out,             // batch x D
    int width)                           // D
{
    extern __shared__ float pooled[];
    const int i = blockIdx.x;
    if (i >= batch) return;
    const unsigned start = offsets[i];
    const unsigned end = offsets[i + 1];
    const unsigned n = end - start;
    const float inv = n > 0 ? 1.0f / (float)n : 0.0f;

    // Gather and mean: thread j owns column j (and j + blockDim, ...), so
    // each token's row is read coalesced. In the CPU reference's order:
    // whole groups of 16 tokens, each summed as a tree and added to the
    // total, then one group of 8, one of 4, then token by token.
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        float acc = 0.0f;
        unsigned t = start;
        for (; end - t >= 16; t += 16) acc += group_sum<16>(emb, words, t, width, j);
        if (end - t >= 8) { acc += group_sum<8>(emb, words, t, width, j); t += 8; }
        if (end - t >= 4) { acc += group_sum<4>(emb, words, t, width, j); t += 4; }
        for (; t < end; ++t) acc += group_sum<1>(emb, words, t, width, j);
        pooled[j] = acc * inv;
    }
    __syncthreads();

    // Dense layer: column j of W is read coalesced across the block; the
    // pooled vector is a shared-memory broadcast.
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        float y = bias[j];
        for (int k = 0; k < width; ++k) {
            y += pooled[k] * weight[(size_t)k * (size_t)width + j];
        }
        out[(size_t)i * (size_t)width + j] = gelu_tanh(y);
    }
}
