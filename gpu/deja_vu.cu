// gpu/deja_vu.cu — chapter 4, "Deja Vu": the sparse ReLU MLP of one decode
// step over an index set T of K neurons. Twin of
// reference/deja_vu.py::sparse_mlp (act "relu"). Row-major, contiguous:
//   x (B, C)  w1 (F, C) = W_in^T  b1 (F,)  w2 (F, C) = W_out  b2 (C,)
//   idx (K,) int32, distinct, in [0, F)      out (B, C)
//   a (B, K) float32 and acc (P, B, C) float32: workspace
// Neuron i owns row i of w1 and of w2, so a gather reads contiguous rows.
//   a[b, m] = relu(x[b] . w1[idx[m]] + b1[idx[m]])
//   out[b]  = b2 + sum_m a[b, m] w2[idx[m]]
// Storage T = float or __half; every sum in float32. Reductions: "fixed"
// (v1: one thread sums the K rows in order m = 0..K-1), "deterministic"
// (one partial per chunk of rows, summed in chunk order by finish_v1) or
// "atomic" (float atomics into one zeroed partial; order varies per run).
// An id outside [0, F) is never read (the launcher rejects it before launch;
// the kernels skip it, so a bad id drops its neuron instead of faulting).
//
// v1  naive: up_v1 a thread per (neuron, row), scalar loads; down_v1 a
//     thread per output element, summing the K rows in order. Any C, any B.
// v2  two kernels, 16-byte loads: up_v2 a warp per neuron (W1 row read once
//     for every batch row), down_v2 a thread per 16-byte column vector of a
//     chunk of RC2 rows; atomic or deterministic partials, then finish_v1.
//     Needs C % (16 / sizeof(T)) == 0 and 16-byte aligned x, w1, w2.
// v3  fused: a block per R3 = 8 neurons; its warps compute a (one neuron
//     each) into shared memory, then all its threads stream the 8 W2 rows,
//     each row vector loaded once and used for every batch row. Each
//     selected row of W1 and W2 is read once; a never leaves the SM. Same
//     needs as v2; atomic or deterministic, then finish_v1.
// v4  v3 in one launch, atomic mode only: each thread issues its first W2
//     row vectors before phase 1 (they do not depend on a), and the last
//     block to finish (a counter) writes out = acc + b2 and re-zeroes acc
//     and the counter, so no memset and no finish kernel. acc and the
//     counter must be zero on entry (they are left zero). The last block
//     converts B*C values alone: meant for small B.
// v5  one launch, deterministic, for B <= 4 (the decode batch): one block
//     per SM (grid G = min(SMs, K)), each owning a contiguous chunk of
//     n <= NR5 neurons. A producer warp copies the chunk's W1 rows, then its
//     W2 rows, whole (cp.async.bulk, one row per ring stage, completing on an
//     mbarrier) into a ring of S stages of shared memory (S = 2n when it fits:
//     at 10 % kept every byte a block needs is in flight from the start).
//     8 consumer warps own fixed columns: phase 1 dots each W1 row with x
//     (warp partials in shared memory, summed in warp order), then a, then
//     phase 2 adds a * W2 row into registers. Each block stores its partial
//     (B, C) float32; the last L blocks to arrive (tickets) each wait for all
//     G, then sum a column slice of the G partials in a fixed order, add b2
//     and write out. Counters zero on entry, left zero. Same needs as v3,
//     and C <= 256 VPT VEC for an instantiated VPT (1, 2, 4; B <= 2 at 4).
// finish_v1  out = b2 + sum_p acc[p] in order p = 0..P-1 (P = 0 gives b2).
//
// Run the cases alone:  python -m gpu.bench deja_vu [--quick]
// Compile report (no GPU): python -m gpu.check_kernels gpu/deja_vu.cu

#include "common.cuh"

#define BT 4     // batch rows per register tile (v2, v3)
#define RC2 32   // rows per chunk of down_v2
#define R3 8     // neurons per block of v3 (= its warps)

template <typename T>
__device__ void up_v1(const T* x, const T* w1, const T* b1, const int* idx,
                      float* a, int B, int C, int F, int K) {
  int m = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (m >= K) return;
  int i = idx[m];
  float z = 0.f;
  if (i >= 0 && i < F) {
    const T* row = w1 + (size_t)i * C;
    for (int c = 0; c < C; ++c) z += to_f(x[(size_t)b * C + c]) * to_f(row[c]);
    z += to_f(b1[i]);
  }
  a[(size_t)b * K + m] = fmaxf(z, 0.f);
}

// grid (ceil(C / blockDim), B): thread (j, b) writes out[b, j].
template <typename T>
__device__ void down_v1(const float* a, const T* w2, const T* b2,
                        const int* idx, T* out, int B, int C, int F, int K) {
  int j = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (j >= C) return;
  float y = 0.f;
  for (int m = 0; m < K; ++m) {
    int i = idx[m];
    if (i < 0 || i >= F) continue;
    y += a[(size_t)b * K + m] * to_f(w2[(size_t)i * C + j]);
  }
  from_f(out[(size_t)b * C + j], y + to_f(b2[j]));
}

// --- v2 ---
// Warp: z[b] = x[b] . row for the batch tile b0..b0+BT-1 (lane-strided 16-byte
// vectors, 4 in flight), summed over the warp; every lane gets the sums.
template <typename T>
__device__ __forceinline__ void row_dots(const T* row, const T* x, int b0,
                                         int B, int C, float (&z)[BT]) {
  constexpr int VEC = Vec<T>::N;
  int lane = threadIdx.x & 31, nv = C / VEC;
#pragma unroll
  for (int t = 0; t < BT; ++t) z[t] = 0.f;
#pragma unroll 4
  for (int v = lane; v < nv; v += 32) {
    float w[VEC];
    unpack<T>(w, load16(row + (size_t)v * VEC));
#pragma unroll
    for (int t = 0; t < BT; ++t) {
      if (b0 + t < B) {
        float xv[VEC];
        unpack<T>(xv, load16(x + (size_t)(b0 + t) * C + (size_t)v * VEC));
#pragma unroll
        for (int e = 0; e < VEC; ++e) z[t] = fmaf(xv[e], w[e], z[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < BT; ++t) z[t] = warp_sum(z[t]);
}

// grid (ceil(K / warps per block)): warp -> neuron m, every batch row.
template <typename T>
__device__ void up_v2(const T* x, const T* w1, const T* b1, const int* idx,
                      float* a, int B, int C, int F, int K) {
  int m = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (m >= K) return;
  int i = idx[m];
  bool ok = i >= 0 && i < F;
  const T* row = w1 + (size_t)(ok ? i : 0) * C;
  float bias = ok ? to_f(b1[i]) : 0.f;
  for (int b0 = 0; b0 < B; b0 += BT) {
    float z[BT];
    row_dots<T>(row, x, b0, B, C, z);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
      for (int t = 0; t < BT; ++t)
        if (b0 + t < B)
          a[(size_t)(b0 + t) * K + m] = ok ? fmaxf(z[t] + bias, 0.f) : 0.f;
    }
  }
}

// Add acc[VEC] (float) at dst: float atomics or a plain 16-byte store.
template <int VEC>
__device__ __forceinline__ void put(float* dst, const float (&acc)[VEC],
                                    bool atomic) {
#pragma unroll
  for (int e = 0; e < VEC; e += 4) {
    float4 v = make_float4(acc[e], acc[e + 1], acc[e + 2], acc[e + 3]);
    if (atomic) {
      atomicAdd(reinterpret_cast<float4*>(dst + e), v);
    } else {
      *reinterpret_cast<float4*>(dst + e) = v;
    }
  }
}

// grid (ceil(K / RC2), ceil(C / VEC / blockDim)): thread -> column vector v of
// chunk p's rows; acc[p] (deterministic) or acc[0] (atomic).
template <typename T>
__device__ void down_v2(const float* a, const T* w2, const int* idx,
                        float* acc, int B, int C, int F, int K, int atomic) {
  constexpr int VEC = Vec<T>::N;
  int p = blockIdx.x, v = blockIdx.y * blockDim.x + threadIdx.x;
  if (v >= C / VEC) return;
  int m0 = p * RC2, m1 = min(K, m0 + RC2);
  float* dst = acc + (atomic ? 0 : (size_t)p * B * C) + (size_t)v * VEC;
  for (int b0 = 0; b0 < B; b0 += BT) {
    float s[BT][VEC];
#pragma unroll
    for (int t = 0; t < BT; ++t)
#pragma unroll
      for (int e = 0; e < VEC; ++e) s[t][e] = 0.f;
#pragma unroll 4
    for (int m = m0; m < m1; ++m) {
      int i = idx[m];
      if (i < 0 || i >= F) continue;
      float w[VEC];
      unpack<T>(w, load16(w2 + (size_t)i * C + (size_t)v * VEC));
#pragma unroll
      for (int t = 0; t < BT; ++t) {
        float av = b0 + t < B ? __ldg(a + (size_t)(b0 + t) * K + m) : 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) s[t][e] = fmaf(av, w[e], s[t][e]);
      }
    }
#pragma unroll
    for (int t = 0; t < BT; ++t)
      if (b0 + t < B) put<VEC>(dst + (size_t)(b0 + t) * C, s[t], atomic);
  }
}

// --- v3 ---
// Phase 1 of v3 and v4: warp w -> neuron m = p R3 + w of block p, its a for
// every batch row into a_s[w][0..B) (0 for m >= K or a bad id).
template <typename T>
__device__ void block_acts(const T* x, const T* w1, const T* b1,
                           const int* idx, float* a_s, int B, int C, int F,
                           int K) {
  int warp = threadIdx.x / 32, m = blockIdx.x * R3 + warp;
  int i = m < K ? idx[m] : -1;
  bool ok = i >= 0 && i < F;
  const T* row = w1 + (size_t)(ok ? i : 0) * C;
  for (int b0 = 0; b0 < B; b0 += BT) {
    float z[BT];
    row_dots<T>(row, x, b0, B, C, z);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
      for (int t = 0; t < BT; ++t)
        if (b0 + t < B)
          a_s[warp * B + b0 + t] = ok ? fmaxf(z[t] + to_f(b1[i]), 0.f) : 0.f;
    }
  }
}

// Phase 2 of v3 and v4 for one column vector v: s[t] += sum_r a_s[r][b0+t]
// raw[r] over the block's R3 rows, for every batch tile, added at dst.
template <typename T>
__device__ __forceinline__ void rows_times_a(const uint4 (&raw)[R3],
                                             const float* a_s, float* dst,
                                             int B, int C, int atomic) {
  constexpr int VEC = Vec<T>::N;
  for (int b0 = 0; b0 < B; b0 += BT) {
    float s[BT][VEC];
#pragma unroll
    for (int t = 0; t < BT; ++t)
#pragma unroll
      for (int e = 0; e < VEC; ++e) s[t][e] = 0.f;
#pragma unroll
    for (int r = 0; r < R3; ++r) {
      float w[VEC];
      unpack<T>(w, raw[r]);
#pragma unroll
      for (int t = 0; t < BT; ++t) {
        float av = b0 + t < B ? a_s[r * B + b0 + t] : 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) s[t][e] = fmaf(av, w[e], s[t][e]);
      }
    }
#pragma unroll
    for (int t = 0; t < BT; ++t)
      if (b0 + t < B) put<VEC>(dst + (size_t)(b0 + t) * C, s[t], atomic);
  }
}

// The block's R3 ids (-1 past K or out of range) and their W2 vectors at v.
template <typename T>
__device__ __forceinline__ void block_rows(const int* idx, int F, int K,
                                           int (&rows)[R3]) {
#pragma unroll
  for (int r = 0; r < R3; ++r) {
    int mm = blockIdx.x * R3 + r, ii = mm < K ? idx[mm] : -1;
    rows[r] = ii >= 0 && ii < F ? ii : -1;
  }
}
// Rows R0 <= r < R1 of them (all by default).
template <typename T, int R0 = 0, int R1 = R3>
__device__ __forceinline__ void load_rows(const T* w2, const int (&rows)[R3],
                                          int v, int C, uint4 (&raw)[R3]) {
  constexpr int VEC = Vec<T>::N;
#pragma unroll
  for (int r = R0; r < R1; ++r) {
    const T* src = w2 + (size_t)rows[r] * C + (size_t)v * VEC;
    raw[r] = rows[r] >= 0 ? load16(src) : make_uint4(0u, 0u, 0u, 0u);
  }
}

// grid (ceil(K / R3)), block R3 warps, dynamic shared a_s[R3][B] floats.
template <typename T>
__device__ void fused_v3(const T* x, const T* w1, const T* b1, const T* w2,
                         const int* idx, float* acc, int B, int C, int F,
                         int K, int atomic) {
  constexpr int VEC = Vec<T>::N;
  extern __shared__ float a_s[];  // [R3][B]
  int p = blockIdx.x;
  // phase 1: warp -> neuron, a for every batch row
  block_acts<T>(x, w1, b1, idx, a_s, B, C, F, K);
  __syncthreads();
  // phase 2: thread -> column vectors v; the R3 row vectors load once each
  int rows[R3];
  block_rows<T>(idx, F, K, rows);
  float* dst0 = acc + (atomic ? 0 : (size_t)p * B * C);
  for (int v = threadIdx.x; v < C / VEC; v += blockDim.x) {
    uint4 raw[R3];
    load_rows<T>(w2, rows, v, C, raw);
    rows_times_a<T>(raw, a_s, dst0 + (size_t)v * VEC, B, C, atomic);
  }
}

// --- v4 ---
// grid (max(1, ceil(K / R3))), block R3 warps, dynamic shared a_s[R3][B].
// acc (B, C) float32 and *cnt zero on entry; left zero.
template <typename T>
__device__ void fused_v4(const T* x, const T* w1, const T* b1, const T* w2,
                         const T* b2, const int* idx, float* acc,
                         unsigned* cnt, T* out, int B, int C, int F, int K) {
  constexpr int VEC = Vec<T>::N;
  extern __shared__ float a_s[];  // [R3][B]
  int rows[R3];
  block_rows<T>(idx, F, K, rows);
  // the first W2 vectors do not depend on a: in flight during phase 1
  // (half of the R3 rows: all of them would spill at 2 blocks an SM)
  int v0 = threadIdx.x;
  uint4 raw[R3];
  load_rows<T, 0, R3 / 2>(w2, rows, min(v0, C / VEC - 1), C, raw);  // C >= VEC
  block_acts<T>(x, w1, b1, idx, a_s, B, C, F, K);
  __syncthreads();
  for (int v = v0; v < C / VEC; v += blockDim.x) {
    if (v != v0) {
      load_rows<T>(w2, rows, v, C, raw);
    } else {
      load_rows<T, R3 / 2, R3>(w2, rows, v, C, raw);
    }
    rows_times_a<T>(raw, a_s, acc + (size_t)v * VEC, B, C, 1);
  }
  // the last block to arrive: out = acc + b2, then acc and cnt back to 0
  if (!last_block_done(cnt, gridDim.x)) return;
  for (int i = threadIdx.x; i < B * C; i += blockDim.x) {
    from_f(out[i], __ldcg(acc + i) + to_f(b2[i % C]));
    acc[i] = 0.f;
  }
}

// --- v5 ---
// (mbarrier, bulk-copy and named-barrier helpers: common.cuh, "Hopper".)

// Time stamps for a timeline (tools/profile_deja_vu.py): the global timer (ns)
// at point k of block g, when the launcher passed a trace buffer.
__device__ __forceinline__ void stamp(unsigned long long* trace, int k) {
  if (trace == nullptr) return;
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  trace[blockIdx.x * 8 + k] = ns;
}

#define W5 8           // consumer warps of v5
#define NT5 (W5 * 32)  // consumer threads
#define NR5 128        // most neurons per block

// v5-v7's shared memory (the launcher computes the same sizes, gpu/deja_vu.py):
//   ring [S][rb] (at least 16 NT5 bytes) | full[S], empty[S] mbarriers |
//   ids[NR5] int | red[n][B][W5] | a[n][B] | ticket (int)
//   rb = C sizeof(T) rounded up to 128 bytes
struct Ring {
  int n;                   // this block's neurons [m0, m0 + n)
  unsigned row_bytes;      // one row, C sizeof(T)
  size_t rb;               // one stage
  unsigned char* ring;     // also the finishers' 16 NT5-byte scratch
  unsigned long long *full, *empty;
  int* ids;                // the block's ids, -1 where out of range
  float *red, *a_s;
  int* ticket;
};
// Block g's chunk of the ids, its shared-memory layout, the barriers set up
// (full: one arrival and the copy's bytes; empty: one per consumer warp) and
// the ids read, every thread past the block barrier. Stamps 0 and 1.
template <typename T>
__device__ __forceinline__ Ring ring_setup(const int* idx, int B, int C, int F,
                                           int K, int S,
                                           unsigned long long* trace) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int G = gridDim.x, g = blockIdx.x, t = threadIdx.x;
  if (t == 0) stamp(trace, 0);  // 0 entry
  Ring r;
  const int m0 = (int)((long long)g * K / G);
  r.n = (int)((long long)(g + 1) * K / G) - m0;
  r.row_bytes = (unsigned)C * sizeof(T);
  r.rb = ((size_t)r.row_bytes + 127) & ~(size_t)127;
  r.ring = smem;
  const size_t ring_bytes = max((size_t)S * r.rb, (size_t)16 * NT5);
  r.full = reinterpret_cast<unsigned long long*>(smem + ring_bytes);
  r.empty = r.full + S;
  r.ids = reinterpret_cast<int*>(r.empty + S);
  r.red = reinterpret_cast<float*>(r.ids + NR5);
  r.a_s = r.red + r.n * B * W5;
  r.ticket = reinterpret_cast<int*>(r.a_s + r.n * B);
  if (t == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(&r.full[s], 1);
      mbar_init(&r.empty[s], W5);
    }
    fence_mbar_init();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // for TMA
  }
  if (t < r.n) {
    int i = idx[m0 + t];
    r.ids[t] = i >= 0 && i < F ? i : -1;  // a bad id is never read
  }
  __syncthreads();
  if (t == 0) stamp(trace, 1);  // 1 ids in shared memory
  return r;
}

// The consumers of v5-v7 (threads 0..NT5-1): x for their columns, phase 1 (the
// W1 rows' dots: warp partials into red), a = relu(z + b1) (the partials summed
// in warp order), phase 2 (acc += a * W2 row); each stage released on its empty
// barrier, after a proxy fence when FENCE (v7).
template <typename T, int VPT, int BM, bool FENCE>
__device__ __forceinline__ void ring_consume(
    const T* x, const T* b1, const unsigned char* ring, size_t rb,
    unsigned long long* full, unsigned long long* empty, const int* ids,
    float* red, float* a_s, int n, int S, int B, int C,
    unsigned long long* trace, float (&acc)[BM][VPT][Vec<T>::N]) {
  constexpr int VEC = Vec<T>::N;
  const int t = threadIdx.x, warp = t / 32, lane = t % 32, nv = C / VEC;
  // consumers: thread t owns the column vectors v = t + NT5 j, j < VPT
  uint4 xr[BM][VPT];
#pragma unroll
  for (int b = 0; b < BM; ++b)
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      int v = t + NT5 * j;
      xr[b][j] = b < B && v < nv ? load16(x + (size_t)b * C + (size_t)v * VEC)
                                 : make_uint4(0u, 0u, 0u, 0u);
    }
  float bias = t < n && ids[t] >= 0 ? to_f(b1[ids[t]]) : 0.f;

  // phase 1: z[r][b] = x[b] . w1 row r, warp partials into red
  for (int r = 0; r < n; ++r) {
    int s = r % S;
    mbar_wait(&full[s], (r / S) & 1);
    if (t == 0 && r == 0) stamp(trace, 2);  // 2 the first row has landed
    const uint4* row = reinterpret_cast<const uint4*>(ring + s * rb);
    float z[BM];
#pragma unroll
    for (int b = 0; b < BM; ++b) z[b] = 0.f;
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      int v = t + NT5 * j;
      if (v < nv) {
        float w[VEC];
        unpack<T>(w, row[v]);
#pragma unroll
        for (int b = 0; b < BM; ++b) {
          if (b < B) {
            float xv[VEC];
            unpack<T>(xv, xr[b][j]);
#pragma unroll
            for (int e = 0; e < VEC; ++e) z[b] = fmaf(xv[e], w[e], z[b]);
          }
        }
      }
    }
#pragma unroll
    for (int b = 0; b < BM; ++b)
      if (b < B) z[b] = warp_sum(z[b]);
    if (lane == 0) {
#pragma unroll
      for (int b = 0; b < BM; ++b)
        if (b < B) red[(r * B + b) * W5 + warp] = z[b];
    }
    if (FENCE)  // the warp's reads of the stage before the next copy into it
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }
  consumers_sync(NT5);
  if (t < n) {  // a = relu(z + b1), the warp partials in warp order
    for (int b = 0; b < B; ++b) {
      float zz = 0.f;
#pragma unroll
      for (int w = 0; w < W5; ++w) zz += red[(t * B + b) * W5 + w];
      a_s[t * B + b] = ids[t] >= 0 ? fmaxf(zz + bias, 0.f) : 0.f;
    }
  }
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 3);  // 3 a in shared memory

  // phase 2: acc[b] += a[r][b] * w2 row r
#pragma unroll
  for (int b = 0; b < BM; ++b)
#pragma unroll
    for (int j = 0; j < VPT; ++j)
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[b][j][e] = 0.f;
  for (int r = 0; r < n; ++r) {
    int i = n + r, s = i % S;
    mbar_wait(&full[s], (i / S) & 1);
    if (ids[r] >= 0) {
      const uint4* row = reinterpret_cast<const uint4*>(ring + s * rb);
#pragma unroll
      for (int j = 0; j < VPT; ++j) {
        int v = t + NT5 * j;
        if (v < nv) {
          float w[VEC];
          unpack<T>(w, row[v]);
#pragma unroll
          for (int b = 0; b < BM; ++b) {
            if (b < B) {
              float av = a_s[r * B + b];
#pragma unroll
              for (int e = 0; e < VEC; ++e)
                acc[b][j][e] = fmaf(av, w[e], acc[b][j][e]);
            }
          }
        }
      }
    }
    if (FENCE)  // the warp's reads of the stage before the next copy into it
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }

  if (t == 0) stamp(trace, 4);  // 4 phase 2 done (thread 0)
}

// Thread t's columns of acc into the block's partial (B, C) float32.
template <typename T, int VPT, int BM>
__device__ __forceinline__ void store_partial(
    float* mine, const float (&acc)[BM][VPT][Vec<T>::N], int B, int C) {
  constexpr int VEC = Vec<T>::N;
  const int t = threadIdx.x, nv = C / VEC;
#pragma unroll
  for (int b = 0; b < BM; ++b)
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      int v = t + NT5 * j;
      if (b < B && v < nv) {
#pragma unroll
        for (int e = 0; e < VEC; e += 4)
          __stcg(reinterpret_cast<float4*>(mine + (size_t)b * C + v * VEC + e),
                 make_float4(acc[b][j][e], acc[b][j][e + 1], acc[b][j][e + 2],
                             acc[b][j][e + 3]));
      }
    }
}

// grid (G), block NT5 + 32; ws: cnt[4] unsigned (zero) | part (G, B, C) f32;
// dynamic shared memory as ring_setup lays it out.
template <typename T, int VPT, int BM>
__device__ void fused_v5(const T* x, const T* w1, const T* b1, const T* w2,
                         const T* b2, const int* idx, unsigned* cnt,
                         float* part, T* out, int B, int C, int F, int K,
                         int S, int L, unsigned long long* trace) {
  constexpr int VEC = Vec<T>::N;
  const int G = gridDim.x, g = blockIdx.x, t = threadIdx.x;
  const int warp = t / 32, lane = t % 32;
  Ring r5 = ring_setup<T>(idx, B, C, F, K, S, trace);
  const int n = r5.n;
  const unsigned row_bytes = r5.row_bytes;
  const size_t rb = r5.rb;
  unsigned char* ring = r5.ring;
  unsigned long long *full = r5.full, *empty = r5.empty;
  int* ids = r5.ids;
  float *red = r5.red, *a_s = r5.a_s;
  int* ticket = r5.ticket;

  if (warp == W5) {  // producer: item i < n is W1 row i, else W2 row i - n
    if (lane == 0) {
      for (int i = 0; i < 2 * n; ++i) {
        int s = i % S;
        if (i >= S) mbar_wait(&empty[s], (i / S - 1) & 1);
        int id = ids[i < n ? i : i - n];
        if (id >= 0) {
          mbar_expect_tx(&full[s], row_bytes);
          bulk_load(ring + s * rb, (i < n ? w1 : w2) + (size_t)id * C, row_bytes,
                    &full[s]);
        } else {
          mbar_arrive(&full[s]);  // nothing to copy: the consumers skip it
        }
      }
    }
    return;
  }

  float acc[BM][VPT][VEC];  // consumers: thread t owns vectors t + NT5 j
  ring_consume<T, VPT, BM, false>(x, b1, ring, rb, full, empty, ids, red, a_s,
                                 n, S, B, C, trace, acc);
  if (t == 0) stamp(trace, 4);  // 4 phase 2 done (thread 0)

  // this block's partial, then a ticket
  float* mine = part + (size_t)g * B * C;
  store_partial<T, VPT, BM>(mine, acc, B, C);
  __threadfence();  // the partial is visible before the ticket
  consumers_sync(NT5);
  if (t == 0) *ticket = (int)atomicAdd(&cnt[0], 1u);
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 5);  // 5 ticket drawn
  const int f = *ticket - (G - L);
  if (f < 0) return;

  // finisher f of L: wait for all G partials, then columns [4 q0, 4 q1)
  if (t == 0)
    while (ld_acquire(&cnt[0]) < (unsigned)G) __nanosleep(32);
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 6);  // 6 every partial is in
  __threadfence();
  const int nq = C / 4, Q = (nq + L - 1) / L, q0 = min(nq, f * Q);
  const int nqf = min(nq, q0 + Q) - q0;
  float4* red4 = reinterpret_cast<float4*>(ring);  // every copy has landed
  for (int b = 0; b < B && nqf > 0; ++b) {
    const float* pb = part + (size_t)b * C + (size_t)q0 * 4;
    T* ob = out + (size_t)b * C + (size_t)q0 * 4;
    if (nqf <= NT5) {  // ng groups of partials p = gg, gg + ng, ..., in order
      const int ng = NT5 / nqf;
      if (t < ng * nqf) {
        int qq = t % nqf, gg = t / nqf;
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p = gg; p < G; p += ng) {
          float4 v = __ldcg(reinterpret_cast<const float4*>(
              pb + (size_t)p * B * C + qq * 4));
          sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
        red4[gg * nqf + qq] = sum;
      }
      consumers_sync(NT5);
      if (t < nqf) {
        float4 sum = red4[t];
        for (int gg = 1; gg < ng; ++gg) {
          float4 v = red4[gg * nqf + t];
          sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
        const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; ++e)
          from_f(ob[t * 4 + e], s4[e] + to_f(b2[(size_t)(q0 + t) * 4 + e]));
      }
      consumers_sync(NT5);
    } else {
      for (int qq = t; qq < nqf; qq += NT5) {
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p = 0; p < G; ++p) {
          float4 v = __ldcg(reinterpret_cast<const float4*>(
              pb + (size_t)p * B * C + qq * 4));
          sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
        const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; ++e)
          from_f(ob[qq * 4 + e], s4[e] + to_f(b2[(size_t)(q0 + qq) * 4 + e]));
      }
    }
  }
  // the last finisher re-zeroes both counters for the next launch
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 7);  // 7 this finisher's slice is written
  if (t == 0 && atomicAdd(&cnt[1], 1u) == (unsigned)L - 1) {
    cnt[0] = 0u;
    cnt[1] = 0u;
  }
}

// --- v6 ---
// v5 with three cuts to its fixed cost: the producer's 32 lanes issue the
// first S copies at once (v5: lane 0, one after another); one fence, by the
// thread that takes the ticket, after the barrier (v5: every thread); the
// finishers issue 8 partial loads before adding them (v5: one at a time).
template <typename T, int VPT, int BM>
__device__ void fused_v6(const T* x, const T* w1, const T* b1, const T* w2,
                         const T* b2, const int* idx, unsigned* cnt,
                         float* part, T* out, int B, int C, int F, int K,
                         int S, int L, unsigned long long* trace) {
  constexpr int VEC = Vec<T>::N;
  const int G = gridDim.x, g = blockIdx.x, t = threadIdx.x;
  const int warp = t / 32, lane = t % 32;
  Ring r5 = ring_setup<T>(idx, B, C, F, K, S, trace);
  const int n = r5.n;
  const unsigned row_bytes = r5.row_bytes;
  const size_t rb = r5.rb;
  unsigned char* ring = r5.ring;
  unsigned long long *full = r5.full, *empty = r5.empty;
  int* ids = r5.ids;
  float *red = r5.red, *a_s = r5.a_s;
  int* ticket = r5.ticket;

  if (warp == W5) {  // producer: item i < n is W1 row i, else W2 row i - n
    auto issue = [&](int i) {
      int s = i % S, id = ids[i < n ? i : i - n];
      if (id >= 0) {
        mbar_expect_tx(&full[s], row_bytes);
        bulk_load(ring + s * rb, (i < n ? w1 : w2) + (size_t)id * C, row_bytes,
                  &full[s]);
      } else {
        mbar_arrive(&full[s]);  // nothing to copy: the consumers skip it
      }
    };
    // the first S items go to empty stages: the 32 lanes issue them at once;
    // the rest, in order, by lane 0, each after its stage's consumers are done
    for (int i = lane; i < min(S, 2 * n); i += 32) issue(i);
    if (lane == 0) {
      for (int i = S; i < 2 * n; ++i) {
        mbar_wait(&empty[i % S], (i / S - 1) & 1);
        issue(i);
      }
    }
    return;
  }

  float acc[BM][VPT][VEC];  // consumers: thread t owns vectors t + NT5 j
  ring_consume<T, VPT, BM, false>(x, b1, ring, rb, full, empty, ids, red, a_s,
                                 n, S, B, C, trace, acc);
  if (t == 0) stamp(trace, 4);  // 4 phase 2 done (thread 0)

  // this block's partial, then a ticket
  float* mine = part + (size_t)g * B * C;
  store_partial<T, VPT, BM>(mine, acc, B, C);
  consumers_sync(NT5);
  if (t == 0) {  // the block's partial (ordered by the barrier) before the ticket
    __threadfence();
    *ticket = (int)atomicAdd(&cnt[0], 1u);
  }
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 5);  // 5 ticket drawn
  const int f = *ticket - (G - L);
  if (f < 0) return;

  // finisher f of L: wait for all G partials, then columns [4 q0, 4 q1)
  if (t == 0)
    while (ld_acquire(&cnt[0]) < (unsigned)G) __nanosleep(32);
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 6);  // 6 every partial is in
  __threadfence();
  const int nq = C / 4, Q = (nq + L - 1) / L, q0 = min(nq, f * Q);
  const int nqf = min(nq, q0 + Q) - q0;
  float4* red4 = reinterpret_cast<float4*>(ring);  // every copy has landed
  for (int b = 0; b < B && nqf > 0; ++b) {
    const float* pb = part + (size_t)b * C + (size_t)q0 * 4;
    T* ob = out + (size_t)b * C + (size_t)q0 * 4;
    if (nqf <= NT5) {  // ng groups of partials p = gg, gg + ng, ..., in order
      const int ng = NT5 / nqf;
      if (t < ng * nqf) {
        int qq = t % nqf, gg = t / nqf;
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p0 = gg; p0 < G; p0 += 8 * ng) {  // 8 loads in flight
          float4 v[8];
#pragma unroll
          for (int u = 0; u < 8; ++u) {
            int p = p0 + u * ng;
            v[u] = p < G ? __ldcg(reinterpret_cast<const float4*>(
                               pb + (size_t)p * B * C + qq * 4))
                         : make_float4(0.f, 0.f, 0.f, 0.f);
          }
#pragma unroll
          for (int u = 0; u < 8; ++u)
            if (p0 + u * ng < G)
              sum.x += v[u].x, sum.y += v[u].y, sum.z += v[u].z,
                  sum.w += v[u].w;
        }
        red4[gg * nqf + qq] = sum;
      }
      consumers_sync(NT5);
      if (t < nqf) {
        float4 sum = red4[t];
        for (int gg = 1; gg < ng; ++gg) {
          float4 v = red4[gg * nqf + t];
          sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
        const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; ++e)
          from_f(ob[t * 4 + e], s4[e] + to_f(b2[(size_t)(q0 + t) * 4 + e]));
      }
      consumers_sync(NT5);
    } else {
      for (int qq = t; qq < nqf; qq += NT5) {
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p0 = 0; p0 < G; p0 += 8) {  // 8 loads in flight
          float4 v[8];
#pragma unroll
          for (int u = 0; u < 8; ++u)
            v[u] = p0 + u < G ? __ldcg(reinterpret_cast<const float4*>(
                                    pb + (size_t)(p0 + u) * B * C + qq * 4))
                              : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
          for (int u = 0; u < 8; ++u)
            if (p0 + u < G)
              sum.x += v[u].x, sum.y += v[u].y, sum.z += v[u].z,
                  sum.w += v[u].w;
        }
        const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; ++e)
          from_f(ob[qq * 4 + e], s4[e] + to_f(b2[(size_t)(q0 + qq) * 4 + e]));
      }
    }
  }
  // the last finisher re-zeroes both counters for the next launch
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 7);  // 7 this finisher's slice is written
  if (t == 0 && atomicAdd(&cnt[1], 1u) == (unsigned)L - 1) {
    cnt[0] = 0u;
    cnt[1] = 0u;
  }
}

// --- v7 ---
// v6 with its tail cut: the finishers are blocks 0..L-1, fixed in advance,
// so a block announces its partial with a release add (no atomic round
// trip) and leaves; a finisher loads its b2 before it waits, waits CUTLASS's
// way (one acquire load, then the barrier: no fence after it), and has all
// its partial loads in flight at once. The consumers fence the async proxy
// before releasing a stage to the next bulk copy.
template <typename T, int VPT, int BM>
__device__ void fused_v7(const T* x, const T* w1, const T* b1, const T* w2,
                         const T* b2, const int* idx, unsigned* cnt,
                         float* part, T* out, int B, int C, int F, int K,
                         int S, int L, unsigned long long* trace) {
  constexpr int VEC = Vec<T>::N;
  const int G = gridDim.x, g = blockIdx.x, t = threadIdx.x;
  const int warp = t / 32, lane = t % 32;
  Ring r5 = ring_setup<T>(idx, B, C, F, K, S, trace);
  const int n = r5.n;
  const unsigned row_bytes = r5.row_bytes;
  const size_t rb = r5.rb;
  unsigned char* ring = r5.ring;
  unsigned long long *full = r5.full, *empty = r5.empty;
  int* ids = r5.ids;
  float *red = r5.red, *a_s = r5.a_s;

  if (warp == W5) {  // producer: item i < n is W1 row i, else W2 row i - n
    auto issue = [&](int i) {
      int s = i % S, id = ids[i < n ? i : i - n];
      if (id >= 0) {
        mbar_expect_tx(&full[s], row_bytes);
        bulk_load(ring + s * rb, (i < n ? w1 : w2) + (size_t)id * C, row_bytes,
                  &full[s]);
      } else {
        mbar_arrive(&full[s]);  // nothing to copy: the consumers skip it
      }
    };
    // the first S items go to empty stages: the 32 lanes issue them at once;
    // the rest, in order, by lane 0, each after its stage's consumers are done
    for (int i = lane; i < min(S, 2 * n); i += 32) issue(i);
    if (lane == 0) {
      for (int i = S; i < 2 * n; ++i) {
        mbar_wait(&empty[i % S], (i / S - 1) & 1);
        issue(i);
      }
    }
    return;
  }

  float acc[BM][VPT][VEC];  // consumers: thread t owns vectors t + NT5 j
  ring_consume<T, VPT, BM, true>(x, b1, ring, rb, full, empty, ids, red, a_s,
                                 n, S, B, C, trace, acc);
  if (t == 0) stamp(trace, 4);  // 4 phase 2 done (thread 0)

  // finisher f = g < L sums columns [4 q0, 4 q1): its b2 before the wait
  const int f = g < L ? g : -1;
  const int nq = C / 4, Q = (nq + L - 1) / L, q0 = min(nq, max(f, 0) * Q);
  const int nqf = f < 0 ? 0 : min(nq, q0 + Q) - q0;
  float b2r[4] = {0.f, 0.f, 0.f, 0.f};
  if (t < nqf && nqf <= NT5) {
#pragma unroll
    for (int e = 0; e < 4; ++e) b2r[e] = to_f(b2[(size_t)(q0 + t) * 4 + e]);
  }

  // this block's partial, then its arrival (a release: no round trip)
  float* mine = part + (size_t)g * B * C;
  store_partial<T, VPT, BM>(mine, acc, B, C);
  consumers_sync(NT5);
  if (t == 0) {  // the block's partial (ordered by the barrier) before the count
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(cnt)
                 : "memory");
    stamp(trace, 5);  // 5 arrived
  }
  if (f < 0) return;

  // finisher: wait for all G partials (CUTLASS's grid barrier: one acquire
  // load, then the block barrier), then its slice in a fixed order
  if (t == 0)
    while (ld_acquire(&cnt[0]) < (unsigned)G) __nanosleep(32);
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 6);  // 6 every partial is in
  constexpr int PU = 16;  // partial loads a thread has in flight at once
  float4* red4 = reinterpret_cast<float4*>(ring);  // every copy has landed
  for (int b = 0; b < B && nqf > 0; ++b) {
    const float* pb = part + (size_t)b * C + (size_t)q0 * 4;
    T* ob = out + (size_t)b * C + (size_t)q0 * 4;
    if (nqf <= NT5) {  // ng groups of partials p = gg, gg + ng, ..., in order
      const int ng = NT5 / nqf;
      if (t < ng * nqf) {
        int qq = t % nqf, gg = t / nqf;
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p0 = gg; p0 < G; p0 += PU * ng) {
          float4 v[PU];
#pragma unroll
          for (int u = 0; u < PU; ++u) {
            int p = p0 + u * ng;
            v[u] = p < G ? __ldcg(reinterpret_cast<const float4*>(
                               pb + (size_t)p * B * C + qq * 4))
                         : make_float4(0.f, 0.f, 0.f, 0.f);
          }
#pragma unroll
          for (int u = 0; u < PU; ++u)
            if (p0 + u * ng < G)
              sum.x += v[u].x, sum.y += v[u].y, sum.z += v[u].z,
                  sum.w += v[u].w;
        }
        red4[gg * nqf + qq] = sum;
      }
      consumers_sync(NT5);
      if (t < nqf) {
        float4 sum = red4[t];
        for (int gg = 1; gg < ng; ++gg) {
          float4 v = red4[gg * nqf + t];
          sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
        const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) from_f(ob[t * 4 + e], s4[e] + b2r[e]);
      }
      consumers_sync(NT5);
    } else {
      for (int qq = t; qq < nqf; qq += NT5) {
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p0 = 0; p0 < G; p0 += 8) {  // 8 loads in flight
          float4 v[8];
#pragma unroll
          for (int u = 0; u < 8; ++u)
            v[u] = p0 + u < G ? __ldcg(reinterpret_cast<const float4*>(
                                    pb + (size_t)(p0 + u) * B * C + qq * 4))
                              : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
          for (int u = 0; u < 8; ++u)
            if (p0 + u < G)
              sum.x += v[u].x, sum.y += v[u].y, sum.z += v[u].z,
                  sum.w += v[u].w;
        }
        const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; ++e)
          from_f(ob[qq * 4 + e], s4[e] + to_f(b2[(size_t)(q0 + qq) * 4 + e]));
      }
    }
  }
  // the last finisher re-zeroes both counters for the next launch
  consumers_sync(NT5);
  if (t == 0) stamp(trace, 7);  // 7 this finisher's slice is written
  if (t == 0 && atomicAdd(&cnt[1], 1u) == (unsigned)L - 1) {
    cnt[0] = 0u;
    cnt[1] = 0u;
  }
}

// --- v8: tensor cores for the small batch (fp16, B <= 64) ---
// Two kernels and finish_v1, deterministic. Both feed mma.sync m16n8k16
// straight from 16-byte global loads, no shared-memory staging: a dot
// product's terms may be summed in any order, so each lane loads 8
// consecutive columns and the mma's k index is permuted the same way on
// both operands (lane t's k pairs {2t, 2t+1} and {2t+8, 2t+9} are 4
// adjacent columns of its chunk).
//   up_v8<MT, NT, U>: block = 16 MT rows of the index set; its W8 warps
//     split C in 32-column steps (warp w: steps w, w + W8, ...), U steps of
//     loads in flight; A = 16 W1 rows (row-major, as stored), B = x^T, 8 NT
//     batch rows. The W8 warp partials add in warp order in shared memory,
//     then a = relu(z + b1) is stored as two fp16 halves, hi = fp16(a) and
//     lo = fp16(a - hi), so that down's fp16 operands carry a to about
//     2^-22 of itself (2^-25 absolute below fp16's normal range) instead of
//     fp16's 2^-11 (the split of stagformer v4). Layout (B, KP / 2) of
//     {hi pair, lo pair}; rows past K and bad ids store a = 0.
//   down_v8<MD, NT, U>: y^T = W2[T]^T a^T. A warp owns 16 MD columns and a
//     range of the rows (split over gridDim.y); A = W2 rows gathered, which
//     are contiguous along the columns, not along k: a lane loads 2 MD
//     columns of each of its 4 rows (2t, 2t+1, 2t+8, 2t+9) and pairs them
//     with byte permutes (PRMT); B = (hi, lo) of a, one mma each. Each
//     (split, row, column) partial goes to part (P, B, C) float32; finish_v1
//     adds them in split order with b2.
#define W8 8  // warps per block of up_v8 and down_v8

__device__ __forceinline__ unsigned lo_pair(unsigned x, unsigned y) {
  return __byte_perm(x, y, 0x5410);  // (low half of x, low half of y)
}
__device__ __forceinline__ unsigned hi_pair(unsigned x, unsigned y) {
  return __byte_perm(x, y, 0x7632);  // (high half of x, high half of y)
}

// up_v8's and up_v9's row pointers (rows past K and bad ids read row 0, whose
// a is stored as 0) and batch-row pointers (rows past B repeat row B - 1).
template <int MT, int NT>
__device__ __forceinline__ void up8_pointers(const __half* (&wp)[MT][2],
                                             const __half* (&xp)[NT],
                                             const __half* x, const __half* w1,
                                             const int* idx, int B, int C,
                                             int F, int K, int r0, int g) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int r = r0 + 16 * i + g + 8 * h, id = r < K ? idx[r] : -1;
      wp[i][h] = w1 + (size_t)(id >= 0 && id < F ? id : 0) * C;
    }
#pragma unroll
  for (int j = 0; j < NT; ++j) xp[j] = x + (size_t)min(8 * j + g, B - 1) * C;
}

// up_v8's and up_v9's end: the warps' accumulators into shared memory, summed
// in warp order, a = relu(z + b1) stored as its (hi, lo) fp16 pair.
template <int MT, int NT>
__device__ __forceinline__ void up8_finish(const float (&acc)[MT][NT][4],
                                           float* red8, const __half* b1,
                                           const int* idx, uint2* a2, int B,
                                           int F, int K, int KP, int r0,
                                           int warp, int g, int t) {
  constexpr int NB = 8 * NT, RW = 16 * MT;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int row = 16 * i + g + 8 * (e >> 1), n = 8 * j + 2 * t + (e & 1);
        red8[(warp * RW + row) * NB + n] = acc[i][j][e];
      }
  __syncthreads();
  for (int e = threadIdx.x; e < RW * NB; e += blockDim.x) {
    int row = e / NB, n = e % NB, r = r0 + row;
    if (n >= B || r >= KP) continue;
    float z = 0.f;
#pragma unroll
    for (int w = 0; w < W8; ++w) z += red8[(w * RW + row) * NB + n];
    int id = r < K ? idx[r] : -1;
    float a = id >= 0 && id < F ? fmaxf(z + __half2float(b1[id]), 0.f) : 0.f;
    __half hi = __float2half_rn(a);
    __half lo = __float2half_rn(a - __half2float(hi));
    __half* pair = reinterpret_cast<__half*>(a2 + (size_t)n * (KP / 2) + r / 2);
    pair[r & 1] = hi;
    pair[2 + (r & 1)] = lo;
  }
}

// down_v8's and down_v9's partial store: lane (g, t) holds 2 MD columns from cb
// for batch rows 2t, 2t + 1 of each n-tile.
template <int MD, int NT>
__device__ __forceinline__ void down8_store(const float (&acc)[MD][NT][4],
                                            float* part, int B, int C, int cb,
                                            bool cin, int t) {
  if (!cin) return;
#pragma unroll
  for (int jn = 0; jn < NT; ++jn)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      int n = 8 * jn + 2 * t + e;
      if (n >= B) continue;
      float v[2 * MD];
#pragma unroll
      for (int m = 0; m < MD; ++m)
        v[2 * m] = acc[m][jn][e], v[2 * m + 1] = acc[m][jn][2 + e];
      float4* dst = reinterpret_cast<float4*>(
          part + ((size_t)blockIdx.y * B + n) * C + cb);
#pragma unroll
      for (int h = 0; h < MD / 2; ++h)
        dst[h] = make_float4(v[4 * h], v[4 * h + 1], v[4 * h + 2], v[4 * h + 3]);
    }
}

template <int MT, int NT, int U>
__device__ void up_v8(const __half* x, const __half* w1, const __half* b1,
                      const int* idx, uint2* a2, int B, int C, int F, int K,
                      int KP) {
  extern __shared__ float red8[];  // [W8][16 MT][8 NT]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3, r0 = blockIdx.x * 16 * MT;
  const __half* wp[MT][2];
  const __half* xp[NT];
  up8_pointers<MT, NT>(wp, xp, x, w1, idx, B, C, F, K, r0, g);
  float acc[MT][NT][4] = {};
  const int steps = (C + 31) / 32;
  for (int s0 = warp; s0 < steps; s0 += W8 * U) {
    uint4 wv[U][MT][2], xv[U][NT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int col = 32 * (s0 + W8 * u) + 8 * t;
      bool in = s0 + W8 * u < steps && col < C;  // C % 8 == 0: all or none
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          wv[u][i][h] = in ? load16(wp[i][h] + col) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int j = 0; j < NT; ++j)
        xv[u][j] = in ? load16(xp[j] + col) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint4 &p = wv[u][i][0], &q = wv[u][i][1], &v = xv[u][j];
          unsigned a0[4] = {p.x, q.x, p.y, q.y}, b0[2] = {v.x, v.y};
          mma16816(acc[i][j], a0, b0);
          unsigned a1[4] = {p.z, q.z, p.w, q.w}, b1_[2] = {v.z, v.w};
          mma16816(acc[i][j], a1, b1_);
        }
  }
  up8_finish<MT, NT>(acc, red8, b1, idx, a2, B, F, K, KP, r0, warp, g, t);
}

// MD words (2 MD halves) of one row at column c: 8 or 16 bytes.
template <int MD>
__device__ __forceinline__ void load_words(unsigned (&w)[MD], const __half* p) {
  if constexpr (MD == 4) {
    uint4 v = load16(p);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else {
    uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  }
}

template <int MD, int NT, int U>
__device__ void down_v8(const uint2* a2, const __half* w2, const int* idx,
                        float* part, int B, int C, int F, int K, int KP,
                        int spp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int cb = 16 * MD * (blockIdx.x * W8 + warp) + 2 * MD * g;
  const bool cin = cb < C;  // C % 8 == 0 and 2 MD | 8: all or none
  const int ks0 = blockIdx.y * spp, ks1 = min(ks0 + spp, KP / 16);
  float acc[MD][NT][4] = {};
  for (int ks = ks0; ks < ks1; ks += U) {
    unsigned w[U][4][MD];
    uint2 av[U][NT][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int j = 16 * (ks + u) + 2 * t;
      bool in = ks + u < ks1;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        int r = j + (q & 1) + 8 * (q >> 1), id = in && r < K ? idx[r] : 0;
        id = id >= 0 && id < F ? id : 0;  // a = 0 there: any row will do
        if (in && cin) {
          load_words<MD>(w[u][q], w2 + (size_t)id * C + cb);
        } else {
#pragma unroll
          for (int m = 0; m < MD; ++m) w[u][q][m] = 0u;
        }
      }
#pragma unroll
      for (int jn = 0; jn < NT; ++jn) {
        const uint2* ar = a2 + (size_t)min(8 * jn + g, B - 1) * (KP / 2);
        av[u][jn][0] = in ? ar[j / 2] : make_uint2(0u, 0u);
        av[u][jn][1] = in ? ar[j / 2 + 4] : make_uint2(0u, 0u);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int m = 0; m < MD; ++m) {
        unsigned a[4] = {lo_pair(w[u][0][m], w[u][1][m]),
                         hi_pair(w[u][0][m], w[u][1][m]),
                         lo_pair(w[u][2][m], w[u][3][m]),
                         hi_pair(w[u][2][m], w[u][3][m])};
#pragma unroll
        for (int jn = 0; jn < NT; ++jn) {
          unsigned bh[2] = {av[u][jn][0].x, av[u][jn][1].x};
          mma16816(acc[m][jn], a, bh);
          unsigned bl[2] = {av[u][jn][0].y, av[u][jn][1].y};
          mma16816(acc[m][jn], a, bl);
        }
      }
  }
  down8_store<MD, NT>(acc, part, B, C, cb, cin, t);
}

// --- v9: v8 with the loads software-pipelined ---
// ncu of v8 at B = 4 (H200): 87 % (up) and 72 % (down) of the warp stall
// samples on the long scoreboard, DRAM at 55-57 %: each warp issued a round
// of loads, then waited, then computed, so the memory pipe idled between
// rounds. v9 keeps two register buffers: the next round's loads are in
// flight while the current round's mmas run (down_v9 also loads the row
// ids one round ahead, so a row's address never waits for its id). Same
// maths, order and outputs as v8, bit for bit.
template <int MT, int NT, int U>
struct Up9Buf {
  uint4 w[U][MT][2];
  uint4 x[U][NT];
};

template <int MT, int NT, int U>
__device__ __forceinline__ void up9_load(Up9Buf<MT, NT, U>& b,
                                         const __half* const (&wp)[MT][2],
                                         const __half* const (&xp)[NT], int s0,
                                         int steps, int t, int C) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    int col = 32 * (s0 + W8 * u) + 8 * t;
    bool in = s0 + W8 * u < steps && col < C;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        b.w[u][i][h] = in ? load16(wp[i][h] + col) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int j = 0; j < NT; ++j)
      b.x[u][j] = in ? load16(xp[j] + col) : make_uint4(0, 0, 0, 0);
  }
}

template <int MT, int NT, int U>
__device__ __forceinline__ void up9_mma(float (&acc)[MT][NT][4],
                                        const Up9Buf<MT, NT, U>& b) {
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const uint4 &p = b.w[u][i][0], &q = b.w[u][i][1], &v = b.x[u][j];
        unsigned a0[4] = {p.x, q.x, p.y, q.y}, b0[2] = {v.x, v.y};
        mma16816(acc[i][j], a0, b0);
        unsigned a1[4] = {p.z, q.z, p.w, q.w}, b1_[2] = {v.z, v.w};
        mma16816(acc[i][j], a1, b1_);
      }
}

template <int MT, int NT, int U>
__device__ void up_v9(const __half* x, const __half* w1, const __half* b1,
                      const int* idx, uint2* a2, int B, int C, int F, int K,
                      int KP) {
  extern __shared__ float red8[];  // [W8][16 MT][8 NT]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3, r0 = blockIdx.x * 16 * MT;
  const __half* wp[MT][2];
  const __half* xp[NT];
  up8_pointers<MT, NT>(wp, xp, x, w1, idx, B, C, F, K, r0, g);
  float acc[MT][NT][4] = {};
  const int steps = (C + 31) / 32, round = W8 * U;
  Up9Buf<MT, NT, U> A, Bf;
  up9_load(A, wp, xp, warp, steps, t, C);
  for (int s0 = warp; s0 < steps; s0 += 2 * round) {
    up9_load(Bf, wp, xp, s0 + round, steps, t, C);  // zeros past the end
    up9_mma(acc, A);
    up9_load(A, wp, xp, s0 + 2 * round, steps, t, C);
    up9_mma(acc, Bf);
  }
  up8_finish<MT, NT>(acc, red8, b1, idx, a2, B, F, K, KP, r0, warp, g, t);
}

template <int MD, int NT, int U>
struct Down9Buf {
  unsigned w[U][4][MD];
  uint2 a[U][NT][2];
};

// Row ids of round ks (U steps): ids[u][q] for the lane's 4 rows of step u.
template <int U>
__device__ __forceinline__ void down9_ids(int (&ids)[U][4], const int* idx,
                                          int ks, int ks1, int t, int K,
                                          int F) {
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      int r = 16 * (ks + u) + 2 * t + (q & 1) + 8 * (q >> 1);
      int id = ks + u < ks1 && r < K ? idx[r] : 0;
      ids[u][q] = id >= 0 && id < F ? id : 0;  // a = 0 there: any row will do
    }
}

template <int MD, int NT, int U>
__device__ __forceinline__ void down9_load(Down9Buf<MD, NT, U>& b,
                                           const int (&ids)[U][4],
                                           const uint2* a2, const __half* w2,
                                           int ks, int ks1, int cb, bool cin,
                                           int g, int t, int B, int C,
                                           int KP) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    int j = 16 * (ks + u) + 2 * t;
    bool in = ks + u < ks1;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (in && cin) {
        load_words<MD>(b.w[u][q], w2 + (size_t)ids[u][q] * C + cb);
      } else {
#pragma unroll
        for (int m = 0; m < MD; ++m) b.w[u][q][m] = 0u;
      }
    }
#pragma unroll
    for (int jn = 0; jn < NT; ++jn) {
      const uint2* ar = a2 + (size_t)min(8 * jn + g, B - 1) * (KP / 2);
      b.a[u][jn][0] = in ? ar[j / 2] : make_uint2(0u, 0u);
      b.a[u][jn][1] = in ? ar[j / 2 + 4] : make_uint2(0u, 0u);
    }
  }
}

template <int MD, int NT, int U>
__device__ __forceinline__ void down9_mma(float (&acc)[MD][NT][4],
                                          const Down9Buf<MD, NT, U>& b) {
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int m = 0; m < MD; ++m) {
      unsigned a[4] = {lo_pair(b.w[u][0][m], b.w[u][1][m]),
                       hi_pair(b.w[u][0][m], b.w[u][1][m]),
                       lo_pair(b.w[u][2][m], b.w[u][3][m]),
                       hi_pair(b.w[u][2][m], b.w[u][3][m])};
#pragma unroll
      for (int jn = 0; jn < NT; ++jn) {
        unsigned bh[2] = {b.a[u][jn][0].x, b.a[u][jn][1].x};
        mma16816(acc[m][jn], a, bh);
        unsigned bl[2] = {b.a[u][jn][0].y, b.a[u][jn][1].y};
        mma16816(acc[m][jn], a, bl);
      }
    }
}

template <int MD, int NT, int U>
__device__ void down_v9(const uint2* a2, const __half* w2, const int* idx,
                        float* part, int B, int C, int F, int K, int KP,
                        int spp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int cb = 16 * MD * (blockIdx.x * W8 + warp) + 2 * MD * g;
  const bool cin = cb < C;  // C % 8 == 0 and 2 MD | 8: all or none
  const int ks0 = blockIdx.y * spp, ks1 = min(ks0 + spp, KP / 16);
  float acc[MD][NT][4] = {};
  int ids[U][4];
  Down9Buf<MD, NT, U> A, Bf;
  down9_ids(ids, idx, ks0, ks1, t, K, F);
  down9_load(A, ids, a2, w2, ks0, ks1, cb, cin, g, t, B, C, KP);
  down9_ids(ids, idx, ks0 + U, ks1, t, K, F);
  for (int ks = ks0; ks < ks1; ks += 2 * U) {
    down9_load(Bf, ids, a2, w2, ks + U, ks1, cb, cin, g, t, B, C, KP);
    down9_ids(ids, idx, ks + 2 * U, ks1, t, K, F);
    down9_mma(acc, A);
    down9_load(A, ids, a2, w2, ks + 2 * U, ks1, cb, cin, g, t, B, C, KP);
    down9_ids(ids, idx, ks + 3 * U, ks1, t, K, F);
    down9_mma(acc, Bf);
  }
  down8_store<MD, NT>(acc, part, B, C, cb, cin, t);
}

// --- finish ---
// grid (ceil(C / 128), B), block 256 = 8 warps: lane -> 4 columns, warp w
// sums parts w, w + 8, ... in order; the 8 warp sums add in warp order.
template <typename T>
__device__ void finish_v1(const float* acc, int P, const T* b2, T* out, int B,
                          int C) {
  __shared__ float4 part[8][32];
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32, b = blockIdx.y;
  int j = (blockIdx.x * 32 + lane) * 4;
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  if (j < C) {
#pragma unroll 4
    for (int p = warp; p < P; p += 8) {
      float4 v = __ldg(reinterpret_cast<const float4*>(
          acc + ((size_t)p * B + b) * C + j));
      s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
    }
  }
  part[warp][lane] = s;
  __syncthreads();
  if (warp != 0 || j >= C) return;
  float t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int w = 0; w < 8; ++w) {
    float4 v = part[w][lane];
    t[0] += v.x; t[1] += v.y; t[2] += v.z; t[3] += v.w;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e)
    from_f(out[(size_t)b * C + j + e], to_f(b2[j + e]) + t[e]);
}

// --- extern "C" entry points: <slug>_<stage>_v<N>_<f16|f32> ---
#define DV_UP(NAME, FN, T)                                                   \
  extern "C" __global__ void __launch_bounds__(256)                          \
  NAME(const T* x, const T* w1, const T* b1, const int* idx, float* a,       \
       int B, int C, int F, int K) { FN<T>(x, w1, b1, idx, a, B, C, F, K); }
DV_UP(deja_vu_up_v1_f32, up_v1, float)
DV_UP(deja_vu_up_v1_f16, up_v1, __half)
DV_UP(deja_vu_up_v2_f32, up_v2, float)
DV_UP(deja_vu_up_v2_f16, up_v2, __half)

#define DV_DOWN1(NAME, T)                                                    \
  extern "C" __global__ void __launch_bounds__(256)                          \
  NAME(const float* a, const T* w2, const T* b2, const int* idx, T* out,     \
       int B, int C, int F, int K) {                                         \
    down_v1<T>(a, w2, b2, idx, out, B, C, F, K);                             \
  }
DV_DOWN1(deja_vu_down_v1_f32, float)
DV_DOWN1(deja_vu_down_v1_f16, __half)

#define DV_DOWN2(NAME, T)                                                    \
  extern "C" __global__ void __launch_bounds__(256)                          \
  NAME(const float* a, const T* w2, const int* idx, float* acc, int B,       \
       int C, int F, int K, int atomic) {                                    \
    down_v2<T>(a, w2, idx, acc, B, C, F, K, atomic);                         \
  }
DV_DOWN2(deja_vu_down_v2_f32, float)
DV_DOWN2(deja_vu_down_v2_f16, __half)

#define DV_FUSED(NAME, T)                                                    \
  extern "C" __global__ void __launch_bounds__(R3 * 32)                      \
  NAME(const T* x, const T* w1, const T* b1, const T* w2, const int* idx,    \
       float* acc, int B, int C, int F, int K, int atomic) {                 \
    fused_v3<T>(x, w1, b1, w2, idx, acc, B, C, F, K, atomic);                \
  }
DV_FUSED(deja_vu_fused_v3_f32, float)
DV_FUSED(deja_vu_fused_v3_f16, __half)

#define DV_FUSED4(NAME, T)                                                   \
  extern "C" __global__ void __launch_bounds__(R3 * 32, 2)                   \
  NAME(const T* x, const T* w1, const T* b1, const T* w2, const T* b2,       \
       const int* idx, float* acc, unsigned* cnt, T* out, int B, int C,      \
       int F, int K) {                                                       \
    fused_v4<T>(x, w1, b1, w2, b2, idx, acc, cnt, out, B, C, F, K);          \
  }
DV_FUSED4(deja_vu_fused_v4_f32, float)
DV_FUSED4(deja_vu_fused_v4_f16, __half)

#define DV_FUSED5(NAME, T, VPT, BM)                                          \
  extern "C" __global__ void __launch_bounds__(NT5 + 32, 1)                  \
  NAME(const T* x, const T* w1, const T* b1, const T* w2, const T* b2,       \
       const int* idx, unsigned* cnt, float* part, T* out, int B, int C,     \
       int F, int K, int S, int L, unsigned long long* trace) {              \
    fused_v5<T, VPT, BM>(x, w1, b1, w2, b2, idx, cnt, part, out, B, C, F, K, \
                         S, L, trace);                                       \
  }
DV_FUSED5(deja_vu_fused_v5_f32_p1, float, 1, 4)
DV_FUSED5(deja_vu_fused_v5_f32_p2, float, 2, 4)
DV_FUSED5(deja_vu_fused_v5_f32_p4, float, 4, 2)
DV_FUSED5(deja_vu_fused_v5_f16_p1, __half, 1, 4)
DV_FUSED5(deja_vu_fused_v5_f16_p2, __half, 2, 4)
DV_FUSED5(deja_vu_fused_v5_f16_p4, __half, 4, 2)

#define DV_FUSED6(NAME, T, VPT, BM)                                          \
  extern "C" __global__ void __launch_bounds__(NT5 + 32, 1)                  \
  NAME(const T* x, const T* w1, const T* b1, const T* w2, const T* b2,       \
       const int* idx, unsigned* cnt, float* part, T* out, int B, int C,     \
       int F, int K, int S, int L, unsigned long long* trace) {              \
    fused_v6<T, VPT, BM>(x, w1, b1, w2, b2, idx, cnt, part, out, B, C, F, K, \
                         S, L, trace);                                       \
  }
DV_FUSED6(deja_vu_fused_v6_f32_p1, float, 1, 4)
DV_FUSED6(deja_vu_fused_v6_f32_p2, float, 2, 4)
DV_FUSED6(deja_vu_fused_v6_f32_p4, float, 4, 2)
DV_FUSED6(deja_vu_fused_v6_f16_p1, __half, 1, 4)
DV_FUSED6(deja_vu_fused_v6_f16_p2, __half, 2, 4)
DV_FUSED6(deja_vu_fused_v6_f16_p4, __half, 4, 2)

#define DV_FUSED7(NAME, T, VPT, BM)                                          \
  extern "C" __global__ void __launch_bounds__(NT5 + 32, 1)                  \
  NAME(const T* x, const T* w1, const T* b1, const T* w2, const T* b2,       \
       const int* idx, unsigned* cnt, float* part, T* out, int B, int C,     \
       int F, int K, int S, int L, unsigned long long* trace) {              \
    fused_v7<T, VPT, BM>(x, w1, b1, w2, b2, idx, cnt, part, out, B, C, F, K, \
                         S, L, trace);                                       \
  }
DV_FUSED7(deja_vu_fused_v7_f32_p1, float, 1, 4)
DV_FUSED7(deja_vu_fused_v7_f32_p2, float, 2, 4)
DV_FUSED7(deja_vu_fused_v7_f32_p4, float, 4, 2)
DV_FUSED7(deja_vu_fused_v7_f16_p1, __half, 1, 4)
DV_FUSED7(deja_vu_fused_v7_f16_p2, __half, 2, 4)
DV_FUSED7(deja_vu_fused_v7_f16_p4, __half, 4, 2)

#define DV_FINISH(NAME, T)                                                   \
  extern "C" __global__ void __launch_bounds__(256)                          \
  NAME(const float* acc, int P, const T* b2, T* out, int B, int C) {         \
    finish_v1<T>(acc, P, b2, out, B, C);                                     \
  }
DV_FINISH(deja_vu_finish_v1_f32, float)
DV_FINISH(deja_vu_finish_v1_f16, __half)

// v8 and v9 instances: NT = ceil(B / 8) in {1, 2, 4, 8}; (MT, U) of up and
// (MD, U) of down chosen per NT (gpu/deja_vu.py, V8_SHAPES); v9 halves U where
// its two buffers would not fit.
#define DV_UP89(V, NT, MT, U)                                                \
  extern "C" __global__ void __launch_bounds__(32 * W8)                      \
  deja_vu_up_v##V##_f16_n##NT(const __half* x, const __half* w1,             \
                              const __half* b1, const int* idx, uint2* a2,   \
                              int B, int C, int F, int K, int KP) {          \
    up_v##V<MT, NT, U>(x, w1, b1, idx, a2, B, C, F, K, KP);                  \
  }
#define DV_DOWN89(V, NT, MD, U)                                              \
  extern "C" __global__ void __launch_bounds__(32 * W8)                      \
  deja_vu_down_v##V##_f16_n##NT(const uint2* a2, const __half* w2,           \
                                const int* idx, float* part, int B, int C,   \
                                int F, int K, int KP, int spp) {             \
    down_v##V<MD, NT, U>(a2, w2, idx, part, B, C, F, K, KP, spp);            \
  }
DV_UP89(8, 1, 1, 4)
DV_UP89(8, 2, 1, 4)
DV_UP89(8, 4, 2, 2)
DV_UP89(8, 8, 2, 2)
DV_DOWN89(8, 1, 4, 2)
DV_DOWN89(8, 2, 4, 2)
DV_DOWN89(8, 4, 2, 2)
DV_DOWN89(8, 8, 2, 2)
DV_UP89(9, 1, 1, 2)
DV_UP89(9, 2, 1, 2)
DV_UP89(9, 4, 2, 1)
DV_UP89(9, 8, 2, 1)
DV_DOWN89(9, 1, 4, 2)
DV_DOWN89(9, 2, 4, 1)
DV_DOWN89(9, 4, 2, 1)
DV_DOWN89(9, 8, 2, 1)
