// mean_max, the kernel of examples/custom_kernel.rs: per request, the
// (mean, max) of a ragged float vector times a learned scale.
//
// The kernel ABI of convoy::kernel: weights first (here one, the scale),
// then words, offsets, batch, out, width; one block per request, of at most
// 128 threads (the shared arrays below).
extern "C" __global__ void mean_max(const float* scale, const unsigned* words,
                                    const unsigned* offsets, int batch, float* out, int width) {
    int i = blockIdx.x;
    if (i >= batch) return;
    const float* v = (const float*)words;
    unsigned s = offsets[i], e = offsets[i + 1];
    // Each thread reduces a strided part, then thread 0 combines them.
    __shared__ float sums[128];
    __shared__ float maxes[128];
    float sum = 0.0f, mx = -3.0e38f;
    for (unsigned t = s + threadIdx.x; t < e; t += blockDim.x) { sum += v[t]; mx = fmaxf(mx, v[t]); }
    sums[threadIdx.x] = sum;
    maxes[threadIdx.x] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < blockDim.x; ++k) { sum += sums[k]; mx = fmaxf(mx, maxes[k]); }
        out[i * width] = e > s ? scale[0] * sum / (float)(e - s) : 0.0f;
        out[i * width + 1] = e > s ? scale[0] * mx : 0.0f;
    }
}
