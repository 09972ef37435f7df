// gpu/ceilings.cu — the card's copy and read bandwidth ceilings, for every
// floor in the book. Used by `python -m gpu.bench ceilings`, which takes each
// ceiling as the maximum over several methods and records every method: these
// kernels at several grids, cudaMemcpy, CuPy's and torch's copies and sums.
// GEMM peaks come from cuBLAS (cupy) and, where importable, torch.
//
// v1  grid-stride loop of 16-byte loads folded with xor; the result is written
//     only if it equals a magic value, which keeps every load alive at no
//     store traffic.
// v2  as v1 with 4 independent 16-byte loads issued per iteration (more in
//     flight).
// v3  each block streams one contiguous slice (as attention blocks do), 4
//     loads in flight per thread.
// v4  as v3 with 8 loads in flight per thread (128 bytes a thread, 32 KB a
//     256-thread block): more bytes in flight per SM at small grids.
// copy_v1  each block copies one contiguous slice, 4 16-byte loads in flight
//     a thread.
// copy_v2  grid-stride copy, 4 16-byte loads in flight a thread (v2's pattern).

extern "C" __global__ void ceilings_read_v1(const uint4* __restrict__ x,
                                            long long n, unsigned int* out) {
  unsigned int acc = 0;
  long long stride = (long long)gridDim.x * blockDim.x;
#pragma unroll 4
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    uint4 v = __ldg(x + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) out[0] = acc;
}

extern "C" __global__ void ceilings_read_v2(const uint4* __restrict__ x,
                                            long long n, unsigned int* out) {
  unsigned int acc = 0;
  long long stride = (long long)gridDim.x * blockDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 a = __ldg(x + i), b = __ldg(x + i + stride);
    uint4 c = __ldg(x + i + 2 * stride), d = __ldg(x + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
    acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    uint4 a = __ldg(x + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) out[0] = acc;
}

extern "C" __global__ void ceilings_read_v3(const uint4* __restrict__ x,
                                            long long n, unsigned int* out) {
  unsigned int acc = 0;
  long long per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per;
  long long hi = min(n, lo + per), i = lo + threadIdx.x, bd = blockDim.x;
  for (; i + 3 * bd < hi; i += 4 * bd) {
    uint4 a = __ldg(x + i), b = __ldg(x + i + bd), c = __ldg(x + i + 2 * bd);
    uint4 d = __ldg(x + i + 3 * bd);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
    acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < hi; i += bd) {
    uint4 a = __ldg(x + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) out[0] = acc;
}

extern "C" __global__ void ceilings_copy_v1(const uint4* __restrict__ x,
                                            uint4* __restrict__ y,
                                            long long n) {
  long long per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per;
  long long hi = min(n, lo + per), i = lo + threadIdx.x, bd = blockDim.x;
  for (; i + 3 * bd < hi; i += 4 * bd) {
    uint4 a = __ldg(x + i), b = __ldg(x + i + bd), c = __ldg(x + i + 2 * bd);
    uint4 d = __ldg(x + i + 3 * bd);
    y[i] = a; y[i + bd] = b; y[i + 2 * bd] = c; y[i + 3 * bd] = d;
  }
  for (; i < hi; i += bd) y[i] = __ldg(x + i);
}

extern "C" __global__ void ceilings_read_v4(const uint4* __restrict__ x,
                                            long long n, unsigned int* out) {
  unsigned int acc = 0;
  long long per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per;
  long long hi = min(n, lo + per), i = lo + threadIdx.x, bd = blockDim.x;
  for (; i + 7 * bd < hi; i += 8 * bd) {
    uint4 v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = __ldg(x + i + u * bd);
#pragma unroll
    for (int u = 0; u < 8; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < hi; i += bd) {
    uint4 a = __ldg(x + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) out[0] = acc;
}

extern "C" __global__ void ceilings_copy_v2(const uint4* __restrict__ x,
                                            uint4* __restrict__ y,
                                            long long n) {
  long long stride = (long long)gridDim.x * blockDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 a = __ldg(x + i), b = __ldg(x + i + stride);
    uint4 c = __ldg(x + i + 2 * stride), d = __ldg(x + i + 3 * stride);
    y[i] = a; y[i + stride] = b; y[i + 2 * stride] = c; y[i + 3 * stride] = d;
  }
  for (; i < n; i += stride) y[i] = __ldg(x + i);
}
