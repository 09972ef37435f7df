// gpu/precompute.cu — chapter 2, "Precomputing the first layer": gather the
// precomputed rows of a batch of token ids and apply RoPE to their q and k
// heads. Twin of reference/precompute.py::gather_rope.
//   table (V, W)  tokens (N,) int32  positions (N,) int32
//   cos, sin (P, R/2) float32        out (N, W)         row-major, contiguous
// A row holds H + G heads of D values to rotate, adjacent, from column
// rot_off (serial row [x | q | k | v]: rot_off = C; parallel row
// [q | k | v | r]: rot_off = 0); everything else is copied. In each rotated
// head, dims j < R/2 pair with j + R/2 (NeoX rotate-half, partial rotary when
// R < D):  y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin,  angle from pos.
// Storage T = float or __half; the rotation is done in float.
// An id outside [0, V) or a position outside [0, P) never reads memory: that
// row is written as NaN. (The launcher rejects such input before launch.)
//
// v1  naive: a thread per output element, 2-byte (fp16) or 4-byte loads;
//     a rotated element reads its partner too (twice the loads there).
// v2  16-byte loads and stores: a thread per 16-byte vector; the vector of
//     dims j < R/2 rotates with its partner at j + R/2, and the partner's own
//     thread idles. Needs W, rot_off, D, R/2 multiples of 16/sizeof(T) and
//     16-byte aligned table, out, cos, sin (the launcher checks).
// v3  v2 without idle threads (a thread per unit: a pair of vectors in the
//     rotated dims, one vector elsewhere) and 2 units per thread, both loaded
//     before either is stored. Same requirements as v2.
//
// norm_v1  the baseline's first step, not part of the trick: RMSNorm or
//     LayerNorm of fp16 rows (a block per row, float sums), feeding the
//     cuBLAS projections that the table replaces (gpu/bench_precompute.py).
//
// Run the cases alone:  python -m gpu.bench precompute [--quick]
// Compile report (no GPU): python -m gpu.check_kernels gpu/precompute.cu

#include "common.cuh"

// --- v1 ---
// grid (ceil(W / blockDim), N): thread (e, n) writes out[n, e].
template <typename T>
__device__ void gather_v1(const T* table, const int* tokens,
                          const int* positions, const float* cs,
                          const float* sn, T* out, int V, int P, int W,
                          int rot_off, int n_rot, int D, int R) {
  int n = blockIdx.y, e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= W) return;
  int tok = tokens[n], pos = positions[n], half = R / 2;
  T* o = out + (size_t)n * W;
  if (tok < 0 || tok >= V || pos < 0 || pos >= P) {
    from_f(o[e], qnan());  // bad id: no read, a NaN row
    return;
  }
  const T* row = table + (size_t)tok * W;
  int rel = e - rot_off, j = rel % D;  // j: dim inside its head
  if (rel >= 0 && rel < n_rot * D && j < R) {
    int i = j < half ? j : j - half;  // frequency index
    float c = cs[(size_t)pos * half + i], s = sn[(size_t)pos * half + i];
    float x = to_f(row[e]);
    float y = j < half ? x * c - to_f(row[e + half]) * s   // y1
                       : x * c + to_f(row[e - half]) * s;  // y2
    from_f(o[e], y);
    return;
  }
  o[e] = row[e];
}

// --- v2 ---
// 16 bytes = VEC values of T (common.cuh: load16, unpack, pack, nan16).

// Rotate the vector pair a (dims j..j+VEC-1 < R/2) and b (dims + R/2) with
// cos/sin row entries i0..i0+VEC-1; writes them back rotated.
template <typename T>
__device__ __forceinline__ void rotate(uint4& a, uint4& b, const float* c,
                                       const float* s) {
  constexpr int VEC = Vec<T>::N;
  float x1[VEC], x2[VEC], y1[VEC], y2[VEC], cf[VEC], sf[VEC];
#pragma unroll
  for (int i = 0; i < VEC; i += 4) {
    float4 c4 = __ldg(reinterpret_cast<const float4*>(c + i));
    float4 s4 = __ldg(reinterpret_cast<const float4*>(s + i));
    cf[i] = c4.x; cf[i + 1] = c4.y; cf[i + 2] = c4.z; cf[i + 3] = c4.w;
    sf[i] = s4.x; sf[i + 1] = s4.y; sf[i + 2] = s4.z; sf[i + 3] = s4.w;
  }
  unpack<T>(x1, a);
  unpack<T>(x2, b);
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    y1[i] = x1[i] * cf[i] - x2[i] * sf[i];
    y2[i] = x2[i] * cf[i] + x1[i] * sf[i];
  }
  a = pack<T>(y1);
  b = pack<T>(y2);
}

// grid (ceil(W / VEC / blockDim), N): thread (vector v, row n).
template <typename T>
__device__ void gather_v2(const T* table, const int* tokens,
                          const int* positions, const float* cs,
                          const float* sn, T* out, int V, int P, int W,
                          int rot_off, int n_rot, int D, int R) {
  constexpr int VEC = Vec<T>::N;
  int n = blockIdx.y, e = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (e >= W) return;
  int tok = tokens[n], pos = positions[n], half = R / 2;
  uint4* o = reinterpret_cast<uint4*>(out + (size_t)n * W);
  if (tok < 0 || tok >= V || pos < 0 || pos >= P) {
    o[e / VEC] = nan16();
    return;
  }
  const T* row = table + (size_t)tok * W;
  int rel = e - rot_off, j = rel % D;
  if (rel >= 0 && rel < n_rot * D && j < R) {
    if (j >= half) return;  // partner of a vector below: its thread does it
    uint4 a = load16(row + e), b = load16(row + e + half);
    size_t ci = (size_t)pos * half + j;
    rotate<T>(a, b, cs + ci, sn + ci);
    o[e / VEC] = a;
    o[(e + half) / VEC] = b;
    return;
  }
  o[e / VEC] = load16(row + e);
}

// --- v3 ---
// A row has U units: rot_off / VEC copy vectors, then per rotated head
// R / (2 VEC) pairs and (D - R) / VEC copies, then the copy vectors after the
// heads. unit_col maps a unit to its first column and whether it is a pair.
template <typename T>
__device__ __forceinline__ int unit_col(int u, int rot_off, int n_rot, int D,
                                        int R, bool& pair) {
  constexpr int VEC = Vec<T>::N;
  int u0 = rot_off / VEC, pairs = R / (2 * VEC);
  int per_head = D / VEC - pairs;  // units per rotated head
  pair = false;
  if (u < u0) return u * VEC;
  int r = u - u0;
  if (r >= n_rot * per_head) return (u + n_rot * pairs) * VEC;  // after heads
  int head = r / per_head, k = r % per_head;
  pair = k < pairs;
  int j = pair ? k * VEC : (k + pairs) * VEC;  // pairs, then dims >= R
  return rot_off + head * D + j;
}

constexpr int UNITS = 2;  // units per thread, all loaded before any store

// grid (ceil(U / (UNITS * blockDim)), N).
template <typename T>
__device__ void gather_v3(const T* table, const int* tokens,
                          const int* positions, const float* cs,
                          const float* sn, T* out, int V, int P, int W,
                          int rot_off, int n_rot, int D, int R) {
  constexpr int VEC = Vec<T>::N;
  int n = blockIdx.y, half = R / 2;
  int units = W / VEC - n_rot * (R / (2 * VEC));
  int tok = tokens[n], pos = positions[n];
  bool bad = tok < 0 || tok >= V || pos < 0 || pos >= P;
  const T* row = table + (size_t)(bad ? 0 : tok) * W;
  uint4* o = reinterpret_cast<uint4*>(out + (size_t)n * W);
  uint4 a[UNITS], b[UNITS];
  int col[UNITS];
  bool pair[UNITS];
#pragma unroll
  for (int k = 0; k < UNITS; ++k) {  // issue every load first
    int u = (blockIdx.x * UNITS + k) * blockDim.x + threadIdx.x;
    col[k] = -1;
    pair[k] = false;
    a[k] = b[k] = nan16();
    if (u >= units) continue;
    col[k] = unit_col<T>(u, rot_off, n_rot, D, R, pair[k]);
    if (bad) continue;
    a[k] = load16(row + col[k]);
    if (pair[k]) b[k] = load16(row + col[k] + half);
  }
#pragma unroll
  for (int k = 0; k < UNITS; ++k) {
    if (col[k] < 0) continue;
    if (pair[k] && !bad) {
      size_t ci = (size_t)pos * half + (col[k] - rot_off) % D;
      rotate<T>(a[k], b[k], cs + ci, sn + ci);
    }
    o[col[k] / VEC] = a[k];
    if (pair[k]) o[(col[k] + half) / VEC] = b[k];
  }
}

// --- norm_v1 ---
// y = (x - mu) / sqrt(var + eps) * g + b (LayerNorm, layer = 1) or
// y = x / sqrt(mean(x^2) + eps) * g (RMSNorm, layer = 0; b unused).
// A block per row of C; blockDim a multiple of 32, <= 1024.

extern "C" __global__ void precompute_norm_v1_f16(
    const __half* x, const __half* g, const __half* b, __half* y, int C,
    float eps, int layer) {
  __shared__ float red[32];
  const __half* xr = x + (size_t)blockIdx.x * C;
  __half* yr = y + (size_t)blockIdx.x * C;
  float s = 0.0f;
  if (layer)
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += __half2float(xr[i]);
  float mu = layer ? block_reduce<false>(s, red) / C : 0.0f;
  float q = 0.0f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float d = __half2float(xr[i]) - mu;
    q += d * d;
  }
  float inv = rsqrtf(block_reduce<false>(q, red) / C + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float v = (__half2float(xr[i]) - mu) * inv * __half2float(g[i]);
    yr[i] = __float2half_rn(layer ? v + __half2float(b[i]) : v);
  }
}

// --- entry points ---
#define ENTRY(VER, SUF, T)                                                  \
  extern "C" __global__ void __launch_bounds__(256)                         \
  precompute_gather_v##VER##_##SUF(                                         \
      const T* table, const int* tokens, const int* positions,             \
      const float* cs, const float* sn, T* out, int V, int P, int W,       \
      int rot_off, int n_rot, int D, int R) {                               \
    gather_v##VER<T>(table, tokens, positions, cs, sn, out, V, P, W,       \
                     rot_off, n_rot, D, R);                                 \
  }

ENTRY(1, f32, float)
ENTRY(1, f16, __half)
ENTRY(2, f32, float)
ENTRY(2, f16, __half)
ENTRY(3, f32, float)
ENTRY(3, f16, __half)
