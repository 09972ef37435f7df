// gpu/decoder.cu — the glue of the capstone decoder (gpu/decoder.py).
//
// The decoder composes the chapters' launchers (attention, precompute,
// slim_attention, deja_vu) with cuBLAS GEMMs through CuPy. What none of them
// does is here, as plain one-pass kernels (no tricks: each moves its bytes
// once, and all of them together are a few per cent of a step):
//
//   dec_add_rmsnorm_<T>  x += add (optional, the residual), then
//                        y = x / sqrt(mean(x^2) + eps) * gamma
//   dec_split_<T>        one projected row (q | k | v, or a table row) into
//                        the query (B, H, D) and a cache slot, RoPE applied
//                        where asked (common.cuh's rope_at)
//
// Compile report (no GPU): python -m gpu.check_kernels gpu/decoder.cu

#include "common.cuh"

#define DEC_THREADS 256

// grid (N), DEC_THREADS threads. x (N, C) float32, the residual stream, updated
// in place when add (N, C) is given; y (N, C) T. Every sum in float32.
template <typename T>
__device__ void add_rmsnorm(float* x, const T* add, const T* gamma, T* y,
                            int C, float eps) {
  __shared__ float red[32];
  float* xr = x + (size_t)blockIdx.x * C;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float v = xr[c];
    if (add) {
      v += to_f(add[(size_t)blockIdx.x * C + c]);
      xr[c] = v;
    }
    ss += v * v;
  }
  ss = block_reduce<false>(ss, red);
  float inv = rsqrtf(ss / (float)C + eps);
  T* yr = y + (size_t)blockIdx.x * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    from_f(yr[c], xr[c] * inv * to_f(gamma[c]));
}

// grid (N), DEC_THREADS threads: row n of y (N, W) belongs to sequence
// n / per_b at position pos0 + n % per_b. From it:
//   x  (N, C) float32      <- y[n, xo : xo + C]           (xo >= 0)
//   q  (N, H, D)           <- y[n, qo : qo + H D], RoPE   (qo >= 0, rq)
//   k  at kd[b kb + h kh + p ks + d] <- y[n, ko + h D + d], RoPE if rk
//   v  at vd[b vb + h vh + p vs + d] <- y[n, vo + h D + d]
// An offset < 0 skips its part. Positions must be < P (checked by the
// launcher); the kernel reads y only, so its writes never race its reads.
template <typename T>
__device__ void split(const T* y, int W, float* x, int xo, T* q, int qo,
                      int rq, T* kd, int ko, int rk, long long kb, long long kh,
                      long long ks, T* vd, int vo, long long vb, long long vh,
                      long long vs, const float* cs, const float* sn, int R,
                      int pos0, int per_b, int H, int D) {
  int n = blockIdx.x, b = n / per_b, p = pos0 + n % per_b, C = H * D;
  const T* yr = y + (size_t)n * W;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    int h = c / D, d = c % D;
    if (xo >= 0) x[(size_t)n * C + c] = to_f(yr[xo + c]);
    if (qo >= 0)
      from_f(q[(size_t)n * C + c],
             rope_at(yr + qo + h * D, d, rq ? R : 0, p, cs, sn));
    if (ko >= 0)
      from_f(kd[b * kb + h * kh + p * ks + d],
             rope_at(yr + ko + h * D, d, rk ? R : 0, p, cs, sn));
    if (vo >= 0) vd[b * vb + h * vh + p * vs + d] = yr[vo + c];
  }
}

#define ENTRY(SUF, T)                                                         \
  extern "C" __global__ void __launch_bounds__(DEC_THREADS)                   \
      dec_add_rmsnorm_##SUF(float* x, const T* add, const T* gamma, T* y,     \
                            int C, float eps) {                               \
    add_rmsnorm<T>(x, add, gamma, y, C, eps);                                 \
  }                                                                           \
  extern "C" __global__ void __launch_bounds__(DEC_THREADS) dec_split_##SUF(  \
      const T* y, int W, float* x, int xo, T* q, int qo, int rq, T* kd,       \
      int ko, int rk, long long kb, long long kh, long long ks, T* vd,        \
      int vo, long long vb, long long vh, long long vs, const float* cs,      \
      const float* sn, int R, int pos0, int per_b, int H, int D) {            \
    split<T>(y, W, x, xo, q, qo, rq, kd, ko, rk, kb, kh, ks, vd, vo, vb, vh,  \
             vs, cs, sn, R, pos0, per_b, H, D);                               \
  }

ENTRY(f32, float)
ENTRY(f16, __half)
