// gpu/stagformer.cu — chapter 5, "StagFormer": one decode step of two
// staggered stacks. Twin of reference/stagformer.py::decode_step for the
// GPU's model family (RMSNorm, ReLU MLP, no biases, no RoPE; see the
// launcher gpu/stagformer.py). Weights T = float or __half (row-major,
// y = x @ W); activations and every sum float.
//
// Every kernel takes up to two "stacks" (Z = gridDim.z / row tiles = 1 or 2)
// with a pointer per stack, so one launch computes layer j of both stacks
// (separate weights: w0 != w1), or, with N = 2B rows and one weight, reads
// each weight once for both stacks' vectors (shared weights).
//
// gemv: y[z][n, m] = act(sum_k x[z][n, k] W[z][k, m]) (+ r[z][n, m])
//   x (N, K) TX, W (K, M) T, y, r (N, M) float; act 0 none, 1 relu.
// v1  naive twin: a thread per (n, m), k ascending, one float accumulator.
// v2  16-byte loads of W (VEC columns a lane, a block covers 32 VEC columns),
//     8 warps share the block's K chunk (rows k0 + warp + 8 i), NR = 4 rows
//     a thread in registers, blocks split K (gridDim.y = KB); the last block
//     of a column tile sums the KB partials in order (bitwise reproducible,
//     and independent of N and Z: a row's sum never depends on other rows).
//     Needs M % VEC == 0 and 16-byte aligned W; KB from (K, M) only.
// v3  v2's sums in v2's order (so without a norm v3 equals v2 bit for bit),
//     read faster and fused with the RMSNorm before it:
//     - R = 1, 2, 4 or 8 rows a thread (template; the launcher takes the
//       smallest power of two >= N, up to 8), so B = 8 reads W once, not twice,
//       and B = 1 does no FMAs on padding rows; a row's sum never depends on R;
//     - U3 = 8 16-byte loads of W in flight per lane (v2: 4), the first 8
//       issued before the x tile and the norm's row sums, so the DRAM reads of
//       a block start at its first instruction;
//     - optional g (gamma): y = act(rmsnorm(x) W) with the row's 1/rms summed
//       by each block over the whole row (fixed order, the same in every block
//       and launch), which removes the rmsnorm launch before the q|k|v, up and
//       cross-q GEMVs (3 of 13 launches of a parallel layer);
//     - the last block reads the partials with ld.global.cg (L2), unrolled.
//     Needs what v2 needs, and x float32 when g is given.
// v4  tensor cores (mma.sync m16n8k16, fp32 accumulators), fp16 weights only:
//     y^T = W^T x^T, A = 16 columns of W x 16 k (ldmatrix.trans from a
//     swizzled shared-memory tile), B = 16 k x 8 rows of x. A block covers
//     128 columns (8 warps x 16) and kc <= 256 rows of K (split-K as v2, the
//     last block summing the KB partials in order kb = 0..KB-1), and 8 NT rows
//     of x (NT = 1, 2, 4, 8). W streams through a ring of ST stages of 32 x 128
//     halves by cp.async (16 B, zero-filled past K and M), ST - 1 stages in
//     flight from the block's first instruction. x float32 rows are scaled
//     by 2^p per (row, K chunk), p from the chunk's max |x| (max |2^p x| in
//     [2^14, 2^15)), and split into two fp16 halves, hi = fp16(2^p x) and
//     lo = fp16(2^p x - hi): hi + lo holds 2^p x to about 2^-22 of the chunk's
//     max, every product is exact in fp32, and the accumulator is scaled back
//     by 2^-p exactly, so the fp16 operands cost no accuracy a float32 sum
//     would keep (Markidis et al. 2018; Ootomo & Yokota 2022 split the same
//     way). fp16 rows (TX = __half) go in as they are, one mma a tile. A row's
//     sum depends on its own x, never on other rows: each element of an mma is
//     its own dot product, and KB, kc come from (K, M) only.
//     Needs M % 8 == 0, 16-byte aligned W, sm_80 (cp.async, ldmatrix, mma).
// v5  v4's mma and ring, with what its profile blamed (tools/profile_stagformer.py,
//     H100: v4 reached 0.5 of the read ceiling at N = 1 and 0.1-0.2 at N = 64):
//     - the x tile staged by cp.async (one group, issued before W's stages),
//       then split into hi and lo in place, row by row from shared memory
//       (v4: one warp loaded its NT rows one after another from L2);
//     - the finisher issues 8 partials x 4 elements of loads before it adds
//       (v4: a dependent chain of adds over KB partials), and partial rows
//       past N are neither written nor read;
//     - kc <= 512 and about 2 blocks an SM (264): KB 4x smaller for the down
//       GEMV (16 not 32), so fewer partials; NT <= 4 (32 rows a block), the
//       row tiles of one K chunk adjacent in the grid (blockIdx.x), so the
//       second reads W from L2.
//     Same sums as v4 in a different split: not v4's bits (KB, kc differ).
// v6  v5's sums, laid out for many rows (its profile at N = 64: 2 LDS.32 an mma,
//     each B fragment feeding one mma, W read twice by two row tiles):
//     - a block covers 256 columns, 8 warps x 32 (two A tiles a warp), and
//       all 8 NT rows up to N = 64 (NT = 1, 2, 4, 8): W is read once;
//     - x's B fragments by ldmatrix (one x4: two row tiles' k, k + 8), so a
//       B fragment feeds 2 mma and an A fragment 2 NT;
//     - one block an SM (about 132 blocks, KB = floor(132 / tiles) from (K, M)
//       only, kc <= 512) and a deeper ring (5-12 stages of 16 KB);
//     - where a column tile's partials pass 128 KB (the launcher's fin = 1),
//       the sum over kb is a second launch over every SM (finish_v6), in the
//       order the tile's last block would use: the same bits either way.
//     Same sums as v5 in a different split: not v5's bits.
// v7  v6's grid, split and finish, with x rounded to fp16 (as a model in fp16
//     feeds its GEMVs; v6's profile at N = 64: a block waits for its whole x
//     tile, 128 KB from L2, and its split before the first mma):
//     - x streamed with W through the ring: each stage holds 32 rows of W's
//       256 columns and the same 32 k of the block's x rows (float or half);
//     - B fragments from the stage (2 LDS.64 and 2 cvt.rn a fragment for
//       float x), so no scale and no lo halves: half v6's mma; |x| beyond
//       fp16's range becomes inf, as it would in fp16;
//     - a deeper ring (8-12 stages) in the shared memory the x tile held.
//     Not v6's bits (x rounded to fp16); the same split, so a row's bits do
//     not depend on N.
// v8  v7 (the same sums: v7's bits) with cheap copies: v7's SASS spends ~670
//     instructions a stage a warp, ~120 of them products (each 16-byte copy
//     recomputed its row, swizzle, bounds and shared address from threadIdx
//     in a loop of unknown trip count; the prologue's stages were unrolled).
//     v8's loaders (W8Loader, X8Loader) compute a thread's copies once and
//     step a pointer and a slot a stage: ~200 instructions a stage.
// v9  v8 (the same sums: v8's bits) with the split over K summed in the
//     cluster's distributed shared memory: KBC = 2, 4 or 8 blocks of a column
//     tile in one cluster along kb, each writing its partial into its own
//     ring and summing its KBC-th of the tile from all of them in order (no
//     partials in global memory, no finish launch); sm_90 only; kc <= 2048.
// rmsnorm v1: y[z][n] = x[z][n] / sqrt(mean(x^2) + 1e-6) * gamma[z]; a block
//     per row, fixed-order tree sum.
// store_qkv v1: the fused q|k|v row (N, (H + 2G) D) float -> q (N, H, D) T,
//     k, v cache (N, G, S, D) T at slot pos.
// scatter v1: rows (N, Y) float, columns c0 + l ystride + [0, G D) -> dst
//     (N, G, S, D) T at slot pos of layer l (dst + l lstride); l = blockIdx.z.
//
// Attention (self and cross) is the foundation's kernel (gpu/attention.cu):
// the cross cache holds the null slot (zeros) at slot 0 and the window as a
// ring buffer (softmax does not depend on the order of the slots).
//
// Run:  python -m gpu.bench stagformer [--quick]
// Compile report (no GPU): python -m gpu.check_kernels gpu/stagformer.cu

#include "common.cuh"

template <typename T, typename TX>
__device__ void gemv_v1(const TX* x0, const TX* x1, const T* w0, const T* w1,
                        const float* r0, const float* r1, float* y0,
                        float* y1, int N, int K, int M, int act) {
  int m = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y;
  int z = blockIdx.z;
  const TX* x = z ? x1 : x0;
  const T* w = z ? w1 : w0;
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  if (m >= M || n >= N) return;
  float acc = 0.f;
  for (int k = 0; k < K; ++k)
    acc += to_f(x[(size_t)n * K + k]) * to_f(w[(size_t)k * M + m]);
  if (act == 1) acc = fmaxf(acc, 0.f);
  if (r) acc += r[(size_t)n * M + m];
  y[(size_t)n * M + m] = acc;
}
// --- v2 ---
#define NR 4      // rows of x a thread keeps in registers
#define NW 8      // warps a block
#define KC 512    // most K rows a block covers (x tile in shared memory)

// grid (column tiles, KB, Z * RT); ws: (Z*RT, tiles, KB, NR, 32 VEC) float
// partials; cnt: (Z*RT, column tiles) uint32 counters, zero on entry and
// left zero.
template <typename T, typename TX>
__device__ void gemv_v2(const TX* x0, const TX* x1, const T* w0, const T* w1,
                        const float* r0, const float* r1, float* y0,
                        float* y1, int N, int K, int M, int act, int kc,
                        float* ws, unsigned* cnt) {
  constexpr int V = Vec<T>::N, TW = 32 * V;
  __shared__ float xs[NR][KC];
  __shared__ float red[NW][NR][TW];
  int rt_n = (N + NR - 1) / NR, zr = blockIdx.z, z = zr / rt_n;
  int n0 = (zr % rt_n) * NR, kb = blockIdx.y, KB = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int col = blockIdx.x * TW + lane * V;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  const TX* x = z ? x1 : x0;
  const T* w = z ? w1 : w0;
  // x rows n0..n0+NR-1, columns k0..k1-1, into shared memory (0 past N)
  for (int i = threadIdx.x; i < NR * kc; i += blockDim.x) {
    int r = i / kc, k = k0 + i % kc;
    xs[r][i % kc] =
        (n0 + r < N && k < k1) ? to_f(x[(size_t)(n0 + r) * K + k]) : 0.f;
  }
  __syncthreads();
  float acc[NR][V];
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int v = 0; v < V; ++v) acc[r][v] = 0.f;
  if (col < M) {
    int k = k0 + warp;
    // 4 rows in flight per lane, then the tail
    for (; k + 3 * NW < k1; k += 4 * NW) {
      float wv[4][V];
#pragma unroll
      for (int u = 0; u < 4; ++u)
        unpack<T>(wv[u], load16(w + (size_t)(k + u * NW) * M + col));
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          float xv = xs[r][k + u * NW - k0];
#pragma unroll
          for (int v = 0; v < V; ++v) acc[r][v] += xv * wv[u][v];
        }
    }
    for (; k < k1; k += NW) {
      float wv[V];
      unpack<T>(wv, load16(w + (size_t)k * M + col));
#pragma unroll
      for (int r = 0; r < NR; ++r)
#pragma unroll
        for (int v = 0; v < V; ++v) acc[r][v] += xs[r][k - k0] * wv[v];
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int v = 0; v < V; ++v) red[warp][r][lane * V + v] = acc[r][v];
  __syncthreads();
  // the block's partial: warps summed in order 0..NW-1
  size_t tile = (size_t)zr * gridDim.x + blockIdx.x;  // this tile's partials
  float* part = ws + ((tile * KB + kb) * NR) * TW;
  for (int i = threadIdx.x; i < NR * TW; i += blockDim.x) {
    int r = i / TW, c = i % TW;
    float s = 0.f;
    for (int q = 0; q < NW; ++q) s += red[q][r][c];
    red[0][r][c] = s;  // each (r, c) read and written by one thread only
    if (KB > 1) part[i] = s;
  }
  if (KB > 1) {
    unsigned* c = cnt + (size_t)zr * gridDim.x + blockIdx.x;
    if (!last_block_done(c, (unsigned)KB)) return;
  } else {
    __syncthreads();
  }
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  const float* p0 = ws + (tile * KB * NR) * TW;
  for (int i = threadIdx.x; i < NR * TW; i += blockDim.x) {
    int rr = i / TW, c = blockIdx.x * TW + i % TW, n = n0 + rr;
    if (n >= N || c >= M) continue;
    float s = red[0][rr][i % TW];
    if (KB > 1) {  // partials in order kb = 0..KB-1 (volatile: other blocks')
      s = 0.f;
      for (int b = 0; b < KB; ++b)
        s += ((volatile const float*)p0)[(size_t)b * NR * TW + i];
    }
    if (act == 1) s = fmaxf(s, 0.f);
    if (r) s += r[(size_t)n * M + c];
    y[(size_t)n * M + c] = s;
  }
}
// --- v3 ---
#define U3 8  // 16-byte loads of W in flight per lane

// grid (column tiles, KB, Z * RT), RT = ceil(N / R); ws: (Z*RT, tiles, KB, R,
// 32 VEC) float partials; cnt: (Z*RT, tiles) counters, zero on entry, left
// zero.
template <typename T, typename TX, int R>
__device__ void gemv_v3(const TX* x0, const TX* x1, const T* w0, const T* w1,
                        const T* g0, const T* g1, const float* r0,
                        const float* r1, float* y0, float* y1, int N, int K,
                        int M, int act, int kc, float* ws, unsigned* cnt) {
  constexpr int V = Vec<T>::N, TW = 32 * V;
  __shared__ float xs[R][KC];
  __shared__ float red[NW][TW];
  __shared__ float fin[R][TW];
  __shared__ float sq[R][NW];
  __shared__ float inv[R];
  int rt_n = (N + R - 1) / R, zr = blockIdx.z, z = zr / rt_n;
  int n0 = (zr % rt_n) * R, kb = blockIdx.y, KB = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int col = blockIdx.x * TW + lane * V;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  const TX* x = z ? x1 : x0;
  const T* w = z ? w1 : w0;
  const T* g = z ? g1 : g0;
  bool on = col < M;
  // the first U3 rows of W of this lane, before anything waits on x
  uint4 wr[U3];
#pragma unroll
  for (int u = 0; u < U3; ++u) {
    int k = k0 + warp + u * NW;
    wr[u] = (on && k < k1)
                ? __ldg(reinterpret_cast<const uint4*>(w + (size_t)k * M + col))
                : make_uint4(0u, 0u, 0u, 0u);
  }
  if (g) {  // 1/rms of rows n0..n0+R-1: every block sums the whole row alike
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float s = 0.f;
      if (n0 + r < N) {
        const TX* xr = x + (size_t)(n0 + r) * K;
#pragma unroll 4
        for (int c = threadIdx.x; c < K; c += blockDim.x) {
          float v = to_f(xr[c]);
          s += v * v;
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
      if (lane == 0) sq[r][warp] = s;  // lane 0's tree: a fixed order
    }
    __syncthreads();
    if (threadIdx.x < R) {
      float s = 0.f;
      for (int q = 0; q < NW; ++q) s += sq[threadIdx.x][q];
      inv[threadIdx.x] = 1.f / sqrtf(s / K + 1e-6f);
    }
    __syncthreads();
  }
  // x rows n0..n0+R-1 (normed if g), columns k0..k1-1 (0 past N and k1)
  for (int i = threadIdx.x; i < R * kc; i += blockDim.x) {
    int r = i / kc, k = k0 + i % kc;
    float v = 0.f;
    if (n0 + r < N && k < k1) {
      v = to_f(x[(size_t)(n0 + r) * K + k]);
      if (g) v = v * inv[r] * to_f(g[k]);
    }
    xs[r][i % kc] = v;
  }
  __syncthreads();
  float acc[R][V];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int v = 0; v < V; ++v) acc[r][v] = 0.f;
  // rows k0 + warp + NW i, ascending (as v2): U3 of them a round
  for (int kr = k0 + warp; kr < k1; kr += U3 * NW) {
    if (kr != k0 + warp) {
#pragma unroll
      for (int u = 0; u < U3; ++u) {
        int k = kr + u * NW;
        wr[u] = (on && k < k1) ? __ldg(reinterpret_cast<const uint4*>(
                                     w + (size_t)k * M + col))
                               : make_uint4(0u, 0u, 0u, 0u);
      }
    }
#pragma unroll
    for (int u = 0; u < U3; ++u) {
      int k = kr + u * NW;
      if (k < k1) {  // warp-uniform
        float wv[V];
        unpack<T>(wv, wr[u]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float xv = xs[r][k - k0];
#pragma unroll
          for (int v = 0; v < V; ++v) acc[r][v] += xv * wv[v];
        }
      }
    }
  }
  // the block's partial, row by row: warps summed in order 0..NW-1 (as v2)
  size_t tile = (size_t)zr * gridDim.x + blockIdx.x;
  float* part = ws + ((tile * KB + kb) * R) * TW;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int v = 0; v < V; ++v) red[warp][lane * V + v] = acc[r][v];
    __syncthreads();
    for (int c = threadIdx.x; c < TW; c += blockDim.x) {
      float s = 0.f;
      for (int q = 0; q < NW; ++q) s += red[q][c];
      fin[r][c] = s;
      if (KB > 1) part[r * TW + c] = s;
    }
    __syncthreads();
  }
  if (KB > 1) {
    unsigned* c = cnt + (size_t)zr * gridDim.x + blockIdx.x;
    if (!last_block_done(c, (unsigned)KB)) return;
  }
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  const float* p0 = ws + (tile * KB * R) * TW;
  for (int i = threadIdx.x; i < R * TW; i += blockDim.x) {
    int rr = i / TW, c = blockIdx.x * TW + i % TW, n = n0 + rr;
    if (n >= N || c >= M) continue;
    float s = fin[rr][i % TW];
    if (KB > 1) {  // partials in order kb = 0..KB-1, from L2 (other blocks')
      s = 0.f;
#pragma unroll 8
      for (int b = 0; b < KB; ++b) s += __ldcg(p0 + (size_t)b * R * TW + i);
    }
    if (act == 1) s = fmaxf(s, 0.f);
    if (r) s += r[(size_t)n * M + c];
    y[(size_t)n * M + c] = s;
  }
}
// --- v4 ---
#define TW4 128  // columns of W a block: 8 warps x 16
#define KS4 32   // rows of W a ring stage
#define KC4 256  // most rows of K a block

// The shared-memory plan of gemv v4 with NT tiles of 8 rows: the W ring, the
// hi (and, for float32 x, lo) halves of x, and one scale a row. The launcher's
// v4_plan mirrors it (bytes = smem4<NT>(lo)).
template <int NT>
struct Plan4 {
  static constexpr int R = 8 * NT;                     // rows of x a block
  static constexpr int ST = NT == 1 ? 8 : NT == 2 ? 6 : 4;  // ring stages
  static constexpr int XS = KC4 + 8;  // x row stride (halves): the 8 rows of
                                      // a B fragment load hit 8 bank groups
  static constexpr int ring = ST * KS4 * TW4;  // halves
};

// Ring stage s of gemv v4, v5 and v6: rows k0 + 32 s .. + 31 of W's columns c0
// .. c0 + TW - 1, 4 TW chunks of 16 B (TW / 64 a thread), zero past k1 and M,
// swizzled for ldmatrix, into slot s % ST of the ring.
template <int ST, int TW = TW4>
__device__ __forceinline__ void tc_load_stage(__half* ring, int s,
                                              const __half* w, int k0, int k1,
                                              int c0, int M) {
  __half* dst = ring + (s % ST) * KS4 * TW;
#pragma unroll
  for (int i = threadIdx.x; i < KS4 * TW / 8; i += 32 * NW) {
    int r = i / (TW / 8), c = (i % (TW / 8)) * 8;
    int k = k0 + s * KS4 + r, col = c0 + c;
    bool ok = k < k1 && col < M;
    cp_async16(dst + swz<TW>(r, c), ok ? w + (size_t)k * M + col : w, ok);
  }
}

// One ring stage's products in gemv v4 and v5: for its two k16 steps, this
// warp's A = W^T tile (k kk.., m 16 warp..), (k, m + 8), (k + 8, m), (k + 8,
// m + 8), transposed by ldmatrix from the stage st, times NT tiles of 8 rows of
// x: the hi halves at xh (a row every xr halves, column kx0 + k), and for LO the
// lo halves lo halves further, into the same accumulators.
template <int NT, bool LO>
__device__ __forceinline__ void tc_stage_mma(float (&acc)[NT][4],
                                             const __half* st,
                                             const __half* xh, int xr, int lo,
                                             int kx0) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int mi = lane / 8, ri = lane % 8;  // this lane's ldmatrix row address
#pragma unroll
  for (int kk = 0; kk < KS4; kk += 16) {
    unsigned a[4];
    ldsm_x4_t(a, st + swz<TW4>(kk + (mi / 2) * 8 + ri, warp * 16 + (mi % 2) * 8));
    int kx = kx0 + kk + (lane % 4) * 2;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      int row = (t * 8 + lane / 4) * xr + kx;
      unsigned b[2] = {*reinterpret_cast<const unsigned*>(xh + row),
                       *reinterpret_cast<const unsigned*>(xh + row + 8)};
      mma16816(acc[t], a, b);
      if (LO) {
        unsigned c[2] = {*reinterpret_cast<const unsigned*>(xh + row + lo),
                         *reinterpret_cast<const unsigned*>(xh + row + lo + 8)};
        mma16816(acc[t], a, c);
      }
    }
  }
}

template <typename TX, int NT>
__device__ void gemv_v4(const TX* x0, const TX* x1, const __half* w0,
                        const __half* w1, const float* r0, const float* r1,
                        float* y0, float* y1, int N, int K, int M, int act,
                        int kc, float* ws, unsigned* cnt) {
  constexpr bool LO = sizeof(TX) == 4;  // float32 x: hi and lo halves
  using P = Plan4<NT>;
  constexpr int R = P::R, ST = P::ST, XS = P::XS;
  extern __shared__ __align__(16) unsigned char sm4[];
  __half* ring = reinterpret_cast<__half*>(sm4);
  __half* xh = ring + P::ring;
  __half* xl = xh + R * XS;  // LO only
  float* unscale = reinterpret_cast<float*>(xh + (LO ? 2 : 1) * R * XS);
  int rt_n = (N + R - 1) / R, zr = blockIdx.z, z = zr / rt_n;
  int n0 = (zr % rt_n) * R, kb = blockIdx.y, KB = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int c0 = blockIdx.x * TW4;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  int nst = (k1 - k0 + KS4 - 1) / KS4;  // ring stages this block reads
  const TX* x = z ? x1 : x0;
  const __half* w = z ? w1 : w0;
  auto load_stage = [&](int s) { tc_load_stage<ST>(ring, s, w, k0, k1, c0, M); };
#pragma unroll
  for (int s = 0; s < ST - 1; ++s) {  // ST - 1 stages before anything waits
    if (s < nst) load_stage(s);
    cp_async_commit();  // empty groups keep the wait count uniform
  }
  // x rows n0 + warp + 8 i (NT a warp), columns k0 .. k0 + KC4 - 1 (zero
  // past N and k1), as 2^p x in fp16 halves
#pragma unroll 1
  for (int i = 0; i < NT; ++i) {
    int rr = warp + NW * i, n = n0 + rr;
    float v[KC4 / 32];
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < KC4 / 32; ++j) {
      int k = k0 + lane + 32 * j;
      v[j] = (n < N && k < k1) ? to_f(x[(size_t)n * K + k]) : 0.f;
      amax = fmaxf(amax, fabsf(v[j]));
    }
    float up = 1.f, down = 1.f;
    if (LO) {
      amax = warp_max(amax);
      if (amax > 0.f && amax <= 3.4e38f) {  // finite and not zero
        int e;
        frexpf(amax, &e);  // amax in [2^(e-1), 2^e)
        int p = min(126, max(-126, 15 - e));
        up = ldexpf(1.f, p);
        down = ldexpf(1.f, -p);
      }
    }
#pragma unroll
    for (int j = 0; j < KC4 / 32; ++j) {
      float s = v[j] * up;
      __half hi = __float2half_rn(s);
      xh[rr * XS + lane + 32 * j] = hi;
      if (LO) xl[rr * XS + lane + 32 * j] = __float2half_rn(s - __half2float(hi));
    }
    if (lane == 0) unscale[rr] = down;
  }
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[t][j] = 0.f;
  for (int s = 0; s < nst; ++s) {
    cp_async_wait<ST - 2>();  // stage s has landed (this thread's copies)
    __syncthreads();          // ...everyone's; stage s - 1 is free
    if (s + ST - 1 < nst) load_stage(s + ST - 1);
    cp_async_commit();
    const __half* st = ring + (s % ST) * KS4 * TW4;
    tc_stage_mma<NT, LO>(acc, st, xh, XS, R * XS, s * KS4);  // lo: xl
  }
  cp_async_wait<0>();
  // acc[t][j]: row t 8 + 2 (lane % 4) + j % 2, column c0 + 16 warp + lane / 4
  // + 8 (j / 2), scaled back by 2^-p (exact)
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  size_t tile = (size_t)zr * gridDim.x + blockIdx.x;
  float* part = ws + ((tile * KB + kb) * R) * TW4;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int rr = t * 8 + (lane % 4) * 2 + j % 2;
      int cc = warp * 16 + lane / 4 + (j / 2) * 8;
      int n = n0 + rr, c = c0 + cc;
      float v = acc[t][j] * unscale[rr];
      if (KB > 1) {
        part[rr * TW4 + cc] = v;
      } else if (n < N && c < M) {
        if (act == 1) v = fmaxf(v, 0.f);
        if (r) v += r[(size_t)n * M + c];
        y[(size_t)n * M + c] = v;
      }
    }
  if (KB == 1) return;
  if (!last_block_done(cnt + tile, (unsigned)KB)) return;
  const float* p0 = ws + (tile * KB * R) * TW4;
  for (int i = threadIdx.x; i < R * TW4; i += blockDim.x) {
    int n = n0 + i / TW4, c = c0 + i % TW4;
    if (n >= N || c >= M) continue;
    float s = 0.f;  // partials in order kb = 0..KB-1, from L2
#pragma unroll 8
    for (int b = 0; b < KB; ++b) s += __ldcg(p0 + (size_t)b * R * TW4 + i);
    if (act == 1) s = fmaxf(s, 0.f);
    if (r) s += r[(size_t)n * M + c];
    y[(size_t)n * M + c] = s;
  }
}
// The finish of gemv v5 and v6, run by the last block of a column tile: its
// valid rows of the KB partials (R x TW floats each, from p0, in L2), 4
// elements a thread, 8 partials of each in flight before the adds; each
// element summed in order kb = 0..KB-1 (as v4), then act and the residual.
template <int TW>
__device__ __forceinline__ void tc_finish(const float* p0, int KB, int R,
                                          int rows, int n0, int c0, int M,
                                          int act, const float* r, float* y) {
  int valid = rows * TW;
  constexpr int EL = 4, UK = 8;
  for (int i0 = threadIdx.x; i0 < valid; i0 += EL * blockDim.x) {
    float sum[EL];
#pragma unroll
    for (int e = 0; e < EL; ++e) sum[e] = 0.f;
    for (int b0 = 0; b0 < KB; b0 += UK) {
      float v[UK][EL];
#pragma unroll
      for (int u = 0; u < UK; ++u)
#pragma unroll
        for (int e = 0; e < EL; ++e) {
          int i = i0 + e * blockDim.x;
          v[u][e] = (b0 + u < KB && i < valid)
                        ? __ldcg(p0 + (size_t)(b0 + u) * R * TW + i)
                        : 0.f;
        }
#pragma unroll
      for (int u = 0; u < UK; ++u)
#pragma unroll
        for (int e = 0; e < EL; ++e)
          if (b0 + u < KB) sum[e] += v[u][e];
    }
#pragma unroll
    for (int e = 0; e < EL; ++e) {
      int i = i0 + e * blockDim.x;
      int n = n0 + i / TW, c = c0 + i % TW;
      if (i >= valid || c >= M) continue;
      float s = sum[e];
      if (act == 1) s = fmaxf(s, 0.f);
      if (r) s += r[(size_t)n * M + c];
      y[(size_t)n * M + c] = s;
    }
  }
}
// The x tile of gemv v5 and v6: rows n0 .. n0 + R - 1, columns k0 .. k0 + 32
// nst - 1 (zero past N, k1): float x into float slots (XF a row), fp16 x
// straight into the hi halves (2 XF a row); 16-byte copies where x's rows
// allow, else plain loads; one cp.async group, issued before W's stages, so
// waiting for it waits for nothing else.
template <typename TX, int R, int XF>
__device__ __forceinline__ void tc_stage_x(float* xf, const TX* x, int n0,
                                           int rows, int K, int k0, int k1,
                                           int nst) {
  constexpr bool LO = sizeof(TX) == 4;
  constexpr int E = 16 / sizeof(TX);  // elements a 16-byte copy
  int width = nst * KS4;
  bool a16 = K % E == 0 && reinterpret_cast<size_t>(x) % 16 == 0;
  TX* dst0 = reinterpret_cast<TX*>(xf);
  constexpr int RS = LO ? XF : 2 * XF;  // row stride in TX elements
  if (a16) {
    for (int i = threadIdx.x; i < R * width / E; i += blockDim.x) {
      int r = i / (width / E), k = (i % (width / E)) * E;
      bool ok = r < rows && k0 + k < k1;
      cp_async16(dst0 + r * RS + k, ok ? x + (size_t)(n0 + r) * K + k0 + k : x,
                 ok);
    }
  } else {
    for (int i = threadIdx.x; i < R * width; i += blockDim.x) {
      int r = i / width, k = i % width;
      bool ok = r < rows && k0 + k < k1;
      dst0[r * RS + k] = ok ? x[(size_t)(n0 + r) * K + k0 + k] : TX(0.f);
    }
  }
  cp_async_commit();
}

// The split of gemv v5 and v6, once the x tile has landed: each warp its NT
// rows; for float x (LO), max |x| over the chunk (KCX columns at most), then
// 2^p x split into hi halves at [0, KCX) and lo halves at [XH, XH + KCX) of
// the row's 2 XF halves, in place (every read of the row before any write:
// syncwarp); unscale[row] = 2^-p (1 for fp16 x).
template <bool LO, int NT, int XF, int XH, int KCX>
__device__ __forceinline__ void tc_split_x(float* xf, float* unscale,
                                           int nst) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __half* xh = reinterpret_cast<__half*>(xf);
#pragma unroll 1
  for (int i = 0; i < NT; ++i) {
    int rr = warp + NW * i;
    float down = 1.f;
    if (LO) {
      constexpr int J = KCX / 32;
      float v[J];
      float amax = 0.f;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        v[j] = j * 32 < nst * KS4 ? xf[rr * XF + lane + 32 * j] : 0.f;
        amax = fmaxf(amax, fabsf(v[j]));
      }
      amax = warp_max(amax);
      float up = 1.f;
      if (amax > 0.f && amax <= 3.4e38f) {
        int e;
        frexpf(amax, &e);
        int p = min(126, max(-126, 15 - e));
        up = ldexpf(1.f, p);
        down = ldexpf(1.f, -p);
      }
      __syncwarp();
#pragma unroll
      for (int j = 0; j < J; ++j) {
        if (j * 32 >= nst * KS4) break;
        float sv = v[j] * up;
        __half hi = __float2half_rn(sv);
        xh[rr * 2 * XF + lane + 32 * j] = hi;
        xh[rr * 2 * XF + XH + lane + 32 * j] =
            __float2half_rn(sv - __half2float(hi));
      }
    }
    if (lane == 0) unscale[rr] = down;
  }
}

// One accumulator element of gemv v5, v6 or v7, at row rr and column cc of
// its tile (R x TW): scaled back by its row's 2^-p (SCALED: v5, v6; v7's x is
// not scaled), then into the block's partial (KB > 1) or, with act and the
// residual, into y. Rows past N are skipped.
template <int TW, bool SCALED = true>
__device__ __forceinline__ void tc_put(float a, int rr, int cc, int rows,
                                       int n0, int c0, int M, int KB, int act,
                                       const float* unscale, float* part,
                                       const float* r, float* y) {
  int n = n0 + rr, c = c0 + cc;
  if (rr >= rows) return;
  float v = SCALED ? a * unscale[rr] : a;
  if (KB > 1) {
    part[rr * TW + cc] = v;
  } else if (c < M) {
    if (act == 1) v = fmaxf(v, 0.f);
    if (r) v += r[(size_t)n * M + c];
    y[(size_t)n * M + c] = v;
  }
}

// --- v5 ---
#define KC5 512  // most rows of K a block

template <int NT>
struct Plan5 {
  static constexpr int R = 8 * NT;  // rows of x a block, NT <= 4
  static constexpr int ST = NT == 1 ? 6 : 4;  // ring stages
  // x row: KC5 + 4 floats staged, then hi halves at [0, KC5) and lo halves at
  // [XH, XH + KC5) of the same bytes; a row is XF words, XF % 32 == 4, so the
  // 8 rows of a B fragment load hit 8 bank groups
  static constexpr int XF = KC5 + 4, XH = XF;
  static constexpr int ring = ST * KS4 * TW4;  // halves
};

template <typename TX, int NT>
__device__ void gemv_v5(const TX* x0, const TX* x1, const __half* w0,
                        const __half* w1, const float* r0, const float* r1,
                        float* y0, float* y1, int N, int K, int M, int act,
                        int kc, float* ws, unsigned* cnt) {
  constexpr bool LO = sizeof(TX) == 4;
  using P = Plan5<NT>;
  constexpr int R = P::R, ST = P::ST, XF = P::XF;
  extern __shared__ __align__(16) unsigned char sm5[];
  __half* ring = reinterpret_cast<__half*>(sm5);
  float* xf = reinterpret_cast<float*>(ring + P::ring);  // R x XF words
  float* unscale = xf + R * XF;
  int rt_n = (N + R - 1) / R, zr = blockIdx.x, z = zr / rt_n;
  int n0 = (zr % rt_n) * R, kb = blockIdx.y, KB = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int c0 = blockIdx.z * TW4;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  int nst = (k1 - k0 + KS4 - 1) / KS4;
  int rows = min(R, N - n0);  // rows of this tile that exist
  const TX* x = z ? x1 : x0;
  const __half* w = z ? w1 : w0;
  tc_stage_x<TX, R, XF>(xf, x, n0, rows, K, k0, k1, nst);
  auto load_stage = [&](int s) { tc_load_stage<ST>(ring, s, w, k0, k1, c0, M); };
#pragma unroll
  for (int s = 0; s < ST - 1; ++s) {
    if (s < nst) load_stage(s);
    cp_async_commit();
  }
  cp_async_wait<ST - 1>();  // the x group has landed (this thread's copies)
  __syncthreads();
  tc_split_x<LO, NT, XF, P::XH, KC5>(xf, unscale, nst);
  __half* xh = reinterpret_cast<__half*>(xf);
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[t][j] = 0.f;
  for (int s = 0; s < nst; ++s) {
    cp_async_wait<ST - 2>();
    __syncthreads();  // also: the x tile is converted (s = 0)
    if (s + ST - 1 < nst) load_stage(s + ST - 1);
    cp_async_commit();
    const __half* st = ring + (s % ST) * KS4 * TW4;
    tc_stage_mma<NT, LO>(acc, st, xh, 2 * XF, P::XH, s * KS4);
  }
  cp_async_wait<0>();
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  size_t tile = (size_t)blockIdx.z * gridDim.x + zr;
  float* part = ws + ((tile * KB + kb) * R) * TW4;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      tc_put<TW4>(acc[t][j], t * 8 + (lane % 4) * 2 + j % 2,
                  warp * 16 + lane / 4 + (j / 2) * 8, rows, n0, c0, M, KB, act,
                  unscale, part, r, y);
  if (KB == 1) return;
  if (!last_block_done(cnt + tile, (unsigned)KB)) return;
  tc_finish<TW4>(ws + (tile * KB * R) * TW4, KB, R, rows, n0, c0, M, act, r, y);
}
// --- v6 ---
#define TW6 256  // columns of W a block: 8 warps x 32
#define KC6 512  // most rows of K a block

// The shared-memory plan of gemv v6 with NT tiles of 8 rows (one row tile up
// to N = 64): the W ring (stages of 32 x 256 halves), R rows of x (KC6 + 4
// float slots: float32 x is split in place into hi halves at [0, KC6) and lo
// halves at [XH, XH + KC6) of the row; XH = 520, so every 8-half group of lo
// starts on 16 bytes, as ldmatrix needs), one scale a row. v6_plan mirrors it.
template <int NT>
struct Plan6 {
  static constexpr int R = 8 * NT;  // rows of x a block, NT <= 8
  static constexpr int ST = NT == 1 ? 12 : NT == 2 ? 10 : NT == 4 ? 8 : 5;
  static constexpr int XF = KC6 + 4;  // a row: XF floats = 2 XF halves; 2 XF
                                      // halves = 2064 B, so the 8 rows of an
                                      // ldmatrix hit 8 different 16-B slots
  static constexpr int XH = KC6 + 8;  // lo halves' offset in the row
  static constexpr int ring = ST * KS4 * TW6;  // halves
};

// One ring stage's products in gemv v6: for its two k16 steps, this warp's
// two A = W^T tiles (columns 32 warp + 16 mt .., by ldmatrix.trans from the
// stage, as v4) times all NT tiles of 8 rows of x, whose B fragments come by
// ldmatrix too: one x4 gives two row tiles' (k, k + 8) halves (an x2 for
// NT = 1), for the hi halves at xh and, for LO, the lo halves lo further.
// Each B fragment feeds 2 mma (v4, v5: 1), each A fragment 2 NT (or NT).
template <int NT, bool LO>
__device__ __forceinline__ void tc_stage_mma6(float (&acc)[2][NT][4],
                                              const __half* st,
                                              const __half* xh, int xr, int lo,
                                              int kx0) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int mi = lane / 8, ri = lane % 8;
  // this lane's x row for ldmatrix: 8 (mi / 2) + ri of a 16-row pair (x4; the
  // x2 of NT = 1 reads lanes 0-15 only), columns 8 (mi % 2) on
  const __half* xa = xh + (NT == 1 ? ri : 8 * (mi / 2) + ri) * xr +
                     8 * (mi % 2) + kx0;
#pragma unroll
  for (int kk = 0; kk < KS4; kk += 16) {
    unsigned a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
      ldsm_x4_t(a[mt], st + swz<TW6>(kk + (mi / 2) * 8 + ri,
                                     warp * 32 + mt * 16 + (mi % 2) * 8));
    unsigned b[NT][2], c[NT][2];
    if (NT == 1) {
      ldsm_x2(b[0], xa + kk);
      if (LO) ldsm_x2(c[0], xa + kk + lo);
    } else {
#pragma unroll
      for (int q = 0; q < NT / 2; ++q) {
        unsigned f[4];
        ldsm_x4(f, xa + 16 * q * xr + kk);
        b[2 * q][0] = f[0], b[2 * q][1] = f[1];
        b[2 * q + 1][0] = f[2], b[2 * q + 1][1] = f[3];
        if (LO) {
          ldsm_x4(f, xa + 16 * q * xr + kk + lo);
          c[2 * q][0] = f[0], c[2 * q][1] = f[1];
          c[2 * q + 1][0] = f[2], c[2 * q + 1][1] = f[3];
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        mma16816(acc[mt][t], a[mt], b[t]);
        if (LO) mma16816(acc[mt][t], a[mt], c[t]);
      }
  }
}

template <typename TX, int NT>
__device__ void gemv_v6(const TX* x0, const TX* x1, const __half* w0,
                        const __half* w1, const float* r0, const float* r1,
                        float* y0, float* y1, int N, int K, int M, int act,
                        int kc, float* ws, unsigned* cnt, int fin) {
  constexpr bool LO = sizeof(TX) == 4;
  using P = Plan6<NT>;
  constexpr int R = P::R, ST = P::ST, XF = P::XF;
  extern __shared__ __align__(16) unsigned char sm6[];
  __half* ring = reinterpret_cast<__half*>(sm6);
  float* xf = reinterpret_cast<float*>(ring + P::ring);  // R x XF words
  float* unscale = xf + R * XF;
  int rt_n = (N + R - 1) / R, zr = blockIdx.x, z = zr / rt_n;
  int n0 = (zr % rt_n) * R, kb = blockIdx.y, KB = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int c0 = blockIdx.z * TW6;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  int nst = (k1 - k0 + KS4 - 1) / KS4;
  int rows = min(R, N - n0);
  const TX* x = z ? x1 : x0;
  const __half* w = z ? w1 : w0;
  tc_stage_x<TX, R, XF>(xf, x, n0, rows, K, k0, k1, nst);
  auto load_stage = [&](int s) {
    tc_load_stage<ST, TW6>(ring, s, w, k0, k1, c0, M);
  };
#pragma unroll
  for (int s = 0; s < ST - 1; ++s) {
    if (s < nst) load_stage(s);
    cp_async_commit();
  }
  cp_async_wait<ST - 1>();  // the x group has landed (this thread's copies)
  __syncthreads();
  tc_split_x<LO, NT, XF, P::XH, KC6>(xf, unscale, nst);
  __half* xh = reinterpret_cast<__half*>(xf);
  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mt][t][j] = 0.f;
  for (int s = 0; s < nst; ++s) {
    cp_async_wait<ST - 2>();
    __syncthreads();  // also: the x tile is converted (s = 0)
    if (s + ST - 1 < nst) load_stage(s + ST - 1);
    cp_async_commit();
    const __half* st = ring + (s % ST) * KS4 * TW6;
    tc_stage_mma6<NT, LO>(acc, st, xh, 2 * XF, P::XH, s * KS4);
  }
  cp_async_wait<0>();
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  size_t tile = (size_t)blockIdx.z * gridDim.x + zr;
  float* part = ws + ((tile * KB + kb) * R) * TW6;
  // acc[mt][t][j]: row t 8 + 2 (lane % 4) + j % 2, column c0 + 32 warp + 16 mt
  // + lane / 4 + 8 (j / 2)
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        tc_put<TW6>(acc[mt][t][j], t * 8 + (lane % 4) * 2 + j % 2,
                    warp * 32 + mt * 16 + lane / 4 + (j / 2) * 8, rows, n0, c0,
                    M, KB, act, unscale, part, r, y);
  if (KB == 1 || fin) return;  // fin: finish_v6, the next launch, sums them
  if (!last_block_done(cnt + tile, (unsigned)KB)) return;
  tc_finish<TW6>(ws + (tile * KB * R) * TW6, KB, R, rows, n0, c0, M, act, r, y);
}

// The finish of gemv v6 as its own launch (fin = 1), when a column tile's
// partials are too many for one block to sum (KB R TW floats: 1 MB for the o
// and down GEMVs at N = 64): every element of every tile, 4 a thread (one
// float4 of a partial row), summed in order kb = 0..KB-1 as tc_finish sums
// it, so either finish gives the same bits. Tiles as gemv v6 numbers them:
// tile = ctile ZR + zr over ZR = Z rt row tiles.
__device__ void finish_v6(const float* ws, const float* r0, const float* r1,
                          float* y0, float* y1, int N, int M, int act, int KB,
                          int R, int ZR, int tiles) {
  size_t i4 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t per = (size_t)R * TW6 / 4;  // float4s a tile
  if (i4 >= per * tiles) return;
  size_t tile = i4 / per;
  int i = (int)(i4 % per) * 4, rr = i / TW6, cc = i % TW6;
  int zr = (int)(tile % ZR), ctile = (int)(tile / ZR);
  int rt = (N + R - 1) / R, z = zr / rt, n = (zr % rt) * R + rr;
  if (n >= N) return;
  const float4* p = reinterpret_cast<const float4*>(ws + tile * KB * R * TW6) +
                    i / 4;
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  constexpr int UK = 8;
  for (int b0 = 0; b0 < KB; b0 += UK) {
    float4 v[UK];
#pragma unroll
    for (int u = 0; u < UK; ++u)
      v[u] = b0 + u < KB ? __ldcg(p + (size_t)(b0 + u) * R * TW6 / 4)
                         : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int u = 0; u < UK; ++u)
      if (b0 + u < KB) {
        s.x += v[u].x, s.y += v[u].y;
        s.z += v[u].z, s.w += v[u].w;
      }
  }
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  float e[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    int c = ctile * TW6 + cc + j;
    if (c >= M) break;
    float v = e[j];
    if (act == 1) v = fmaxf(v, 0.f);
    if (r) v += r[(size_t)n * M + c];
    y[(size_t)n * M + c] = v;
  }
}
// --- v7 ---
#define TW7 256  // columns of W a block: 8 warps x 32 (as v6)
#define KC7 512  // most rows of K a block
#define XS7 40   // a row of an x slot: 40 TX elements (32 used)

// The shared-memory plan of gemv v7 with NT tiles of 8 rows: ST stages, each a
// W slot (32 x 256 halves, swizzled as v4-v6) and an x slot (R rows x 32 k of
// x as it comes, float or half, XS7 a row: the LDS.64 (float) of a B
// fragment's 8 rows x 4 lanes hit 32 different banks in each half-warp, the
// LDS.32 (half) in the warp). The x ring follows the W ring. v7_plan mirrors it.
template <typename TX, int NT>
struct Plan7 {
  static constexpr int R = 8 * NT;  // rows of x a block, NT <= 8
  static constexpr int ST = NT == 8 ? 8 : NT == 4 ? 10 : 12;
  static constexpr int wslot = KS4 * TW7;  // halves
  static constexpr int xslot = R * XS7;    // TX elements
};

// Ring stage s of gemv v7's x: rows n0 .. n0 + R - 1, columns k0 + 32 s .. + 31
// (zero past N and k1), 16-byte copies where x's rows allow (a16), else plain
// loads; into slot s % ST, in the same cp.async group as W's stage s.
template <typename TX, int R, int ST>
__device__ __forceinline__ void tc_load_x7(TX* xring, int s, const TX* x,
                                           int n0, int rows, int K, int k0,
                                           int k1, bool a16) {
  constexpr int E = 16 / sizeof(TX);  // elements a 16-byte copy
  TX* dst = xring + (s % ST) * R * XS7;
  int ks = k0 + s * KS4;
  if (a16) {
#pragma unroll
    for (int i = threadIdx.x; i < R * KS4 / E; i += 32 * NW) {
      int r = i / (KS4 / E), c = (i % (KS4 / E)) * E;
      bool ok = r < rows && ks + c < k1;
      cp_async16(dst + r * XS7 + c, ok ? x + (size_t)(n0 + r) * K + ks + c : x,
                 ok);
    }
  } else {
    for (int i = threadIdx.x; i < R * KS4; i += 32 * NW) {
      int r = i / KS4, c = i % KS4;
      bool ok = r < rows && ks + c < k1;
      dst[r * XS7 + c] = ok ? x[(size_t)(n0 + r) * K + ks + c] : TX(0.f);
    }
  }
}

// A B fragment of gemv v7 (row n = lane / 4 of a row tile; k and k + 8 from
// 2 (lane % 4)): two x values each, rounded to fp16 (cvt.rn) for float x.
__device__ __forceinline__ void x7_frag(unsigned (&b)[2], const float* p) {
  float2 u = *reinterpret_cast<const float2*>(p);
  float2 v = *reinterpret_cast<const float2*>(p + 8);
  __half2 hu = __floats2half2_rn(u.x, u.y), hv = __floats2half2_rn(v.x, v.y);
  b[0] = *reinterpret_cast<unsigned*>(&hu);
  b[1] = *reinterpret_cast<unsigned*>(&hv);
}
__device__ __forceinline__ void x7_frag(unsigned (&b)[2], const __half* p) {
  b[0] = *reinterpret_cast<const unsigned*>(p);
  b[1] = *reinterpret_cast<const unsigned*>(p + 8);
}

// One ring stage's products in gemv v7: for its two k16 steps, this warp's two
// A = W^T tiles (as v6) times all NT tiles of 8 rows of x, each B fragment
// built from the stage's x slot (x7_frag) and fed to both A tiles.
template <typename TX, int NT>
__device__ __forceinline__ void tc_stage_mma7(float (&acc)[2][NT][4],
                                              const __half* st, const TX* xs) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int mi = lane / 8, ri = lane % 8;
  const TX* xa = xs + (lane / 4) * XS7 + (lane % 4) * 2;
#pragma unroll
  for (int kk = 0; kk < KS4; kk += 16) {
    unsigned a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
      ldsm_x4_t(a[mt], st + swz<TW7>(kk + (mi / 2) * 8 + ri,
                                     warp * 32 + mt * 16 + (mi % 2) * 8));
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      unsigned b[2];
      x7_frag(b, xa + t * 8 * XS7 + kk);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) mma16816(acc[mt][t], a[mt], b);
    }
  }
}

// gemv v7: v6's grid, split and finish (the same partials layout, TW7 = TW6),
// with x rounded to fp16 as it is used (no scale, no lo halves: |x| must be
// inside fp16's range) and streamed with W through the ring, so no stage waits
// for a whole x tile.
template <typename TX, int NT>
__device__ void gemv_v7(const TX* x0, const TX* x1, const __half* w0,
                        const __half* w1, const float* r0, const float* r1,
                        float* y0, float* y1, int N, int K, int M, int act,
                        int kc, float* ws, unsigned* cnt, int fin) {
  static_assert(TW7 == TW6, "v7 shares v6's partials layout and finish");
  using P = Plan7<TX, NT>;
  constexpr int R = P::R, ST = P::ST;
  extern __shared__ __align__(16) unsigned char sm7[];
  __half* ring = reinterpret_cast<__half*>(sm7);
  TX* xring = reinterpret_cast<TX*>(ring + ST * P::wslot);
  int rt_n = (N + R - 1) / R, zr = blockIdx.x, z = zr / rt_n;
  int n0 = (zr % rt_n) * R, kb = blockIdx.y, KB = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int c0 = blockIdx.z * TW7;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  int nst = (k1 - k0 + KS4 - 1) / KS4;
  int rows = min(R, N - n0);
  const TX* x = z ? x1 : x0;
  const __half* w = z ? w1 : w0;
  bool a16 = K % (16 / sizeof(TX)) == 0 && reinterpret_cast<size_t>(x) % 16 == 0;
  auto load_stage = [&](int s) {
    tc_load_stage<ST, TW7>(ring, s, w, k0, k1, c0, M);
    tc_load_x7<TX, R, ST>(xring, s, x, n0, rows, K, k0, k1, a16);
  };
#pragma unroll
  for (int s = 0; s < ST - 1; ++s) {
    if (s < nst) load_stage(s);
    cp_async_commit();
  }
  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mt][t][j] = 0.f;
  for (int s = 0; s < nst; ++s) {
    cp_async_wait<ST - 2>();
    __syncthreads();  // stage s landed (every thread's copies and stores)
    if (s + ST - 1 < nst) load_stage(s + ST - 1);
    cp_async_commit();
    tc_stage_mma7<TX, NT>(acc, ring + (s % ST) * P::wslot,
                          xring + (s % ST) * P::xslot);
  }
  cp_async_wait<0>();
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  size_t tile = (size_t)blockIdx.z * gridDim.x + zr;
  float* part = ws + ((tile * KB + kb) * R) * TW7;
  // acc[mt][t][j]: row t 8 + 2 (lane % 4) + j % 2, column c0 + 32 warp + 16 mt
  // + lane / 4 + 8 (j / 2), as v6
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        tc_put<TW7, false>(acc[mt][t][j], t * 8 + (lane % 4) * 2 + j % 2,
                           warp * 32 + mt * 16 + lane / 4 + (j / 2) * 8, rows,
                           n0, c0, M, KB, act, nullptr, part, r, y);
  if (KB == 1 || fin) return;  // fin: finish_v6, the next launch, sums them
  if (!last_block_done(cnt + tile, (unsigned)KB)) return;
  tc_finish<TW7>(ws + (tile * KB * R) * TW7, KB, R, rows, n0, c0, M, act, r, y);
}
// --- v8 ---
// gemv v7's SASS (NVRTC sm_90) spends ~670 instructions a stage a warp, of
// which ~120 are the products: tc_load_stage and tc_load_x7 loop from
// threadIdx.x with a trip count the compiler does not know, so each 16-byte
// copy recomputes its row, column, swizzle, bounds and shared address (~65
// instructions), and the prologue's ST - 1 stages are unrolled (~700 each).
// v8 computes each thread's copies once (W8Loader, X8Loader): a stage is then
// a pointer step and a predicate a copy.

// A thread's 4 copies of each W stage (32 rows x 256 columns, 1024 chunks of
// 16 B): rows warp + 8 j (j < 4), columns lane 8 .. + 7; swz(r + 8 j, c) =
// swz(r, c) + 8 j TW7, so one shared offset serves every j. Stages are loaded
// in order (next()): the source steps 32 rows, the slot one of ST.
template <int ST>
struct W8Loader {
  static constexpr unsigned SLOT = KS4 * TW7 * 2;  // bytes
  const __half* g;  // this thread's chunk in the next stage's row warp
  size_t row8;      // 8 rows of W: 8 M halves
  unsigned s0, dst;  // its shared address in slot 0 and in the next slot
  int slot, left;   // the next slot; rows left from its row warp
  bool col;         // the chunk's columns exist (M % 8 == 0: all or none)
  __device__ W8Loader(const __half* w, __half* ring, int k0, int k1, int c0,
                      int M) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    col = c0 + lane * 8 < M;
    g = w + (size_t)(k0 + warp) * M + c0 + lane * 8;
    row8 = (size_t)8 * M;
    s0 = dst = smem_u32(ring + swz<TW7>(warp, lane * 8));
    slot = 0;
    left = k1 - (k0 + warp);
  }
  __device__ __forceinline__ void next() {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      bool ok = col && 8 * j < left;
      cp_async16_s(dst + j * 8 * TW7 * 2, ok ? g + row8 * j : g, ok);
    }
    g += row8 * (KS4 / 8);
    left -= KS4;
    if (++slot == ST) slot = 0, dst = s0;
    else dst += SLOT;
  }
};

// A thread's copies of each x stage (R rows x 32 k of TX, CPR = 32 / E chunks
// a row): chunk tid + 256 j is row tid / CPR + (256 / CPR) j, column (tid %
// CPR) E; threads past the CH chunks copy nothing. In order, as W8Loader.
template <typename TX, int R, int ST>
struct X8Loader {
  static constexpr int E = 16 / sizeof(TX), CPR = KS4 / E, CH = R * CPR;
  static constexpr int J = (CH + 32 * NW - 1) / (32 * NW), RJ = 32 * NW / CPR;
  static constexpr unsigned SLOT = R * XS7 * sizeof(TX);  // bytes
  const TX* g;  // row n0 + r0, column c of the next stage
  size_t rowj;  // RJ rows of x: RJ K elements
  unsigned s0, dst;
  int slot, left;  // columns left from c; rows - r0 (row RJ j exists iff
  int rrem;        // RJ j < rrem)
  __device__ X8Loader(const TX* x, TX* xring, int n0, int rows, int K, int k0,
                      int k1) {
    int r0 = threadIdx.x / CPR, c = (threadIdx.x % CPR) * E;
    g = x + (size_t)(n0 + r0) * K + k0 + c;
    rowj = (size_t)RJ * K;
    s0 = dst = smem_u32(xring + r0 * XS7 + c);
    slot = 0;
    left = k1 - (k0 + c);
    rrem = rows - r0;
  }
  __device__ __forceinline__ void next() {
#pragma unroll
    for (int j = 0; j < J; ++j) {
      if (CH % (32 * NW) == 0 || threadIdx.x + 32 * NW * j < CH) {
        bool ok = left > 0 && RJ * j < rrem;
        cp_async16_s(dst + RJ * j * XS7 * sizeof(TX), ok ? g + rowj * j : g,
                     ok);
      }
    }
    g += KS4;
    left -= KS4;
    if (++slot == ST) slot = 0, dst = s0;
    else dst += SLOT;
  }
};

// The stages of gemv v8 and v9: the loaders, the prologue (rolled), and for each
// stage the wait, the next stage's copies and the products into acc (zeroed
// here); every copy has landed when it returns.
template <typename TX, int NT>
__device__ __forceinline__ void tc_loop8(float (&acc)[2][NT][4], __half* ring,
                                         TX* xring, const __half* w,
                                         const TX* x, int n0, int rows, int K,
                                         int k0, int k1, int c0, int M,
                                         int nst) {
  using P = Plan7<TX, NT>;
  constexpr int R = P::R, ST = P::ST;
  bool a16 = K % (16 / sizeof(TX)) == 0 && reinterpret_cast<size_t>(x) % 16 == 0;
  W8Loader<ST> wl(w, ring, k0, k1, c0, M);
  X8Loader<TX, R, ST> xl(x, xring, n0, rows, K, k0, k1);
  auto load_stage = [&](int s) {  // s = 0, 1, 2, ... in order
    wl.next();
    if (a16)
      xl.next();
    else
      tc_load_x7<TX, R, ST>(xring, s, x, n0, rows, K, k0, k1, false);
  };
#pragma unroll 1
  for (int s = 0; s < ST - 1; ++s) {
    if (s < nst) load_stage(s);
    cp_async_commit();
  }
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mt][t][j] = 0.f;
  for (int s = 0; s < nst; ++s) {
    cp_async_wait<ST - 2>();
    __syncthreads();  // stage s landed (every thread's copies and stores)
    if (s + ST - 1 < nst) load_stage(s + ST - 1);
    cp_async_commit();
    tc_stage_mma7<TX, NT>(acc, ring + (s % ST) * P::wslot,
                          xring + (s % ST) * P::xslot);
  }
  cp_async_wait<0>();
}

// gemv v8: gemv v7 (the same sums, so v7's bits) with W8Loader and X8Loader
// where x's rows are 16-byte aligned (else v7's copies), and the prologue
// kept rolled.
template <typename TX, int NT>
__device__ void gemv_v8(const TX* x0, const TX* x1, const __half* w0,
                        const __half* w1, const float* r0, const float* r1,
                        float* y0, float* y1, int N, int K, int M, int act,
                        int kc, float* ws, unsigned* cnt, int fin) {
  using P = Plan7<TX, NT>;
  constexpr int R = P::R, ST = P::ST;
  extern __shared__ __align__(16) unsigned char sm8[];
  __half* ring = reinterpret_cast<__half*>(sm8);
  TX* xring = reinterpret_cast<TX*>(ring + ST * P::wslot);
  int rt_n = (N + R - 1) / R, zr = blockIdx.x, z = zr / rt_n;
  int n0 = (zr % rt_n) * R, kb = blockIdx.y, KB = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int c0 = blockIdx.z * TW7;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  int nst = (k1 - k0 + KS4 - 1) / KS4;
  int rows = min(R, N - n0);
  const TX* x = z ? x1 : x0;
  const __half* w = z ? w1 : w0;
  float acc[2][NT][4];
  tc_loop8<TX, NT>(acc, ring, xring, w, x, n0, rows, K, k0, k1, c0, M, nst);
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  size_t tile = (size_t)blockIdx.z * gridDim.x + zr;
  float* part = ws + ((tile * KB + kb) * R) * TW7;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        tc_put<TW7, false>(acc[mt][t][j], t * 8 + (lane % 4) * 2 + j % 2,
                           warp * 32 + mt * 16 + lane / 4 + (j / 2) * 8, rows,
                           n0, c0, M, KB, act, nullptr, part, r, y);
  if (KB == 1 || fin) return;
  if (!last_block_done(cnt + tile, (unsigned)KB)) return;
  tc_finish<TW7>(ws + (tile * KB * R) * TW7, KB, R, rows, n0, c0, M, act, r, y);
}
// --- v9 ---
// gemv v8 with the split over K summed in distributed shared memory: the KBC
// blocks of a column tile (and row tile) are one cluster (1, KBC, 1) along
// blockIdx.y = kb; after its last stage each block writes its partial (R x
// TW7 floats) into its own ring, and after a cluster barrier block kb sums
// its KBC-th of the tile, reading every block's partial in order q = 0..KBC-1
// (tc_finish's order: v8's bits), then act, the residual, y. No partials in
// global memory and no finish launch. KBC = 2, 4 or 8 (a portable cluster);
// the launcher runs v8 where the plan's split is 1.
#define KC9 2048      // most rows of K a block (x streams: no tile bounds it)
#define PS9 (TW7 + 4)  // a partial row in shared memory: 260 floats, so the
                       // 4 rows a warp's accumulators store hit 4 bank groups

template <typename TX, int NT, int KBC>
__device__ void gemv_v9(const TX* x0, const TX* x1, const __half* w0,
                        const __half* w1, const float* r0, const float* r1,
                        float* y0, float* y1, int N, int K, int M, int act,
                        int kc) {
  using P = Plan7<TX, NT>;
  constexpr int R = P::R, ST = P::ST;
  static_assert(R * PS9 * 4 <= ST * (P::wslot * 2 + P::xslot * (int)sizeof(TX)),
                "the partial fits the ring");
  extern __shared__ __align__(16) unsigned char sm9[];
  __half* ring = reinterpret_cast<__half*>(sm9);
  TX* xring = reinterpret_cast<TX*>(ring + ST * P::wslot);
  int rt_n = (N + R - 1) / R, zr = blockIdx.x, z = zr / rt_n;
  int n0 = (zr % rt_n) * R, kb = blockIdx.y;  // gridDim.y == KBC: the cluster
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int c0 = blockIdx.z * TW7;
  int k0 = kb * kc, k1 = min(K, k0 + kc);
  int nst = (k1 - k0 + KS4 - 1) / KS4;
  int rows = min(R, N - n0);
  const TX* x = z ? x1 : x0;
  const __half* w = z ? w1 : w0;
  float acc[2][NT][4];
  tc_loop8<TX, NT>(acc, ring, xring, w, x, n0, rows, K, k0, k1, c0, M, nst);
  __syncthreads();  // every warp is done with the ring: it takes the partial
  float* ps = reinterpret_cast<float*>(sm9);  // R x PS9 floats
  // acc[mt][t][j]: row t 8 + 2 (lane % 4) + j % 2, column 32 warp + 16 mt +
  // lane / 4 + 8 (j / 2), as v6
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        ps[(t * 8 + (lane % 4) * 2 + j % 2) * PS9 + warp * 32 + mt * 16 +
           lane / 4 + (j / 2) * 8] = acc[mt][t][j];
  cluster_arrive();  // release: this block's partial, to the cluster
  cluster_wait();    // acquire: every block's
  const float* r = z ? r1 : r0;
  float* y = z ? y1 : y0;
  constexpr int Q4 = R * TW7 / 4 / KBC;  // float4s of the tile this block sums
  for (int i = threadIdx.x; i < Q4; i += 32 * NW) {
    int e4 = kb * Q4 + i, rr = e4 / (TW7 / 4), cc = (e4 % (TW7 / 4)) * 4;
    int n = n0 + rr, c = c0 + cc;
    if (rr >= rows || c >= M) continue;  // M % 8 == 0: c < M covers c + 3
    float4 v[KBC];
#pragma unroll
    for (int q = 0; q < KBC; ++q)
      v[q] = ld_cluster_v4(cluster_addr(ps + rr * PS9 + cc, q));
    float e[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int q = 0; q < KBC; ++q) {
      e[0] += v[q].x, e[1] += v[q].y;
      e[2] += v[q].z, e[3] += v[q].w;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float o = e[j];
      if (act == 1) o = fmaxf(o, 0.f);
      if (r) o += r[(size_t)n * M + c + j];
      y[(size_t)n * M + c + j] = o;
    }
  }
  cluster_arrive();  // no block leaves while another may still read its
  cluster_wait();    // shared memory
}
// --- rmsnorm ---
template <typename T>
__device__ void rmsnorm_v1(const float* x, const T* g0, const T* g1,
                           float* y, int N, int C) {
  __shared__ float red[256];
  int n = blockIdx.x, z = blockIdx.y;
  const float* xr = x + ((size_t)z * N + n) * C;
  float* yr = y + ((size_t)z * N + n) * C;
  const T* g = z ? g1 : g0;
  float s = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += xr[c] * xr[c];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {  // blockDim.x == 256
    if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  float inv = 1.f / sqrtf(red[0] / C + 1e-6f);
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    yr[c] = xr[c] * inv * to_f(g[c]);
}
// --- stores ---
// grid (ceil((H + 2G) D / 256), N): column j of the fused row goes to q, k
// or v.
template <typename T>
__device__ void store_qkv_v1(const float* y, T* q, T* k, T* v, int N, int H,
                             int G, int D, int S, int pos) {
  int j = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y;
  int hd = H * D, gd = G * D;
  if (j >= hd + 2 * gd || n >= N) return;
  float val = y[(size_t)n * (hd + 2 * gd) + j];
  if (j < hd) {
    from_f(q[(size_t)n * hd + j], val);
    return;
  }
  T* dst = j < hd + gd ? k : v;
  int c = (j - hd) % gd, g = c / D, d = c % D;
  from_f(dst[(((size_t)n * G + g) * S + pos) * D + d], val);
}

template <typename T>
__device__ void scatter_v1(const float* y, T* dst, int N, int Y, int c0,
                           int ystride, long long lstride, int G, int D,
                           int S, int pos) {
  int j = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y;
  int l = blockIdx.z;
  if (j >= G * D || n >= N) return;
  float val = y[(size_t)n * Y + c0 + (size_t)l * ystride + j];
  int g = j / D, d = j % D;
  from_f(dst[l * lstride + (((size_t)n * G + g) * S + pos) * D + d], val);
}
// --- entry points ---
#define GEMV(SUF, T, TX)                                                      \
  extern "C" __global__ void stag_gemv_v1_##SUF(                             \
      const TX* x0, const TX* x1, const T* w0, const T* w1, const float* r0, \
      const float* r1, float* y0, float* y1, int N, int K, int M, int act) { \
    gemv_v1<T, TX>(x0, x1, w0, w1, r0, r1, y0, y1, N, K, M, act);            \
  }                                                                          \
  extern "C" __global__ void __launch_bounds__(32 * NW)                     \
      stag_gemv_v2_##SUF(const TX* x0, const TX* x1, const T* w0,           \
                         const T* w1, const float* r0, const float* r1,     \
                         float* y0, float* y1, int N, int K, int M, int act, \
                         int kc, float* ws, unsigned* cnt) {                 \
    gemv_v2<T, TX>(x0, x1, w0, w1, r0, r1, y0, y1, N, K, M, act, kc, ws,    \
                   cnt);                                                     \
  }
GEMV(f32, float, float)
GEMV(f16, __half, float)
GEMV(f16x16, __half, __half)

#define GEMV3(SUF, T, TX, R)                                                  \
  extern "C" __global__ void __launch_bounds__(32 * NW, 2)                  \
      stag_gemv_v3_##SUF##_r##R(                                            \
          const TX* x0, const TX* x1, const T* w0, const T* w1, const T* g0, \
          const T* g1, const float* r0, const float* r1, float* y0,         \
          float* y1, int N, int K, int M, int act, int kc, float* ws,       \
          unsigned* cnt) {                                                  \
    gemv_v3<T, TX, R>(x0, x1, w0, w1, g0, g1, r0, r1, y0, y1, N, K, M, act, \
                      kc, ws, cnt);                                         \
  }
#define GEMV3_R(SUF, T, TX) \
  GEMV3(SUF, T, TX, 1)      \
  GEMV3(SUF, T, TX, 2)      \
  GEMV3(SUF, T, TX, 4)      \
  GEMV3(SUF, T, TX, 8)
GEMV3_R(f32, float, float)
GEMV3_R(f16, __half, float)
GEMV3_R(f16x16, __half, __half)

// v4-v9 use cp.async, ldmatrix and mma (sm_80; v9's clusters, sm_90); below
// those they are left out and the launcher falls back (gpu/capability.py).
#if __CUDA_ARCH__ >= 800
#define GEMV_TC(V, SUF, TX, NT)                                               \
  extern "C" __global__ void __launch_bounds__(32 * NW, 2)                  \
      stag_gemv_v##V##_##SUF##_n##NT(                                       \
          const TX* x0, const TX* x1, const __half* w0, const __half* w1,   \
          const float* r0, const float* r1, float* y0, float* y1, int N,    \
          int K, int M, int act, int kc, float* ws, unsigned* cnt) {        \
    gemv_v##V<TX, NT>(x0, x1, w0, w1, r0, r1, y0, y1, N, K, M, act, kc, ws, \
                      cnt);                                                 \
  }
#define GEMV_TC_N(V, SUF, TX) \
  GEMV_TC(V, SUF, TX, 1)      \
  GEMV_TC(V, SUF, TX, 2)      \
  GEMV_TC(V, SUF, TX, 4)
GEMV_TC_N(4, f16, float)
GEMV_TC(4, f16, float, 8)
GEMV_TC_N(4, f16x16, __half)
GEMV_TC(4, f16x16, __half, 8)
GEMV_TC_N(5, f16, float)
GEMV_TC_N(5, f16x16, __half)
// v6-v8: one block an SM, the finish launch's flag (fin)
#define GEMV_FIN(V, SUF, TX, NT)                                              \
  extern "C" __global__ void __launch_bounds__(32 * NW, 1)                  \
      stag_gemv_v##V##_##SUF##_n##NT(                                       \
          const TX* x0, const TX* x1, const __half* w0, const __half* w1,   \
          const float* r0, const float* r1, float* y0, float* y1, int N,    \
          int K, int M, int act, int kc, float* ws, unsigned* cnt,          \
          int fin) {                                                        \
    gemv_v##V<TX, NT>(x0, x1, w0, w1, r0, r1, y0, y1, N, K, M, act, kc, ws, \
                      cnt, fin);                                            \
  }
#define GEMV_FIN_N(V, SUF, TX) \
  GEMV_FIN(V, SUF, TX, 1)      \
  GEMV_FIN(V, SUF, TX, 2)      \
  GEMV_FIN(V, SUF, TX, 4)      \
  GEMV_FIN(V, SUF, TX, 8)
GEMV_FIN_N(6, f16, float)
GEMV_FIN_N(6, f16x16, __half)
GEMV_FIN_N(7, f16, float)
GEMV_FIN_N(7, f16x16, __half)
GEMV_FIN_N(8, f16, float)
GEMV_FIN_N(8, f16x16, __half)
#define GEMV9(SUF, TX, NT, KBC)                                               \
  extern "C" __global__ void __cluster_dims__(1, KBC, 1)                    \
      __launch_bounds__(32 * NW, 1) stag_gemv_v9_##SUF##_n##NT##_c##KBC(    \
          const TX* x0, const TX* x1, const __half* w0, const __half* w1,   \
          const float* r0, const float* r1, float* y0, float* y1, int N,    \
          int K, int M, int act, int kc) {                                  \
    gemv_v9<TX, NT, KBC>(x0, x1, w0, w1, r0, r1, y0, y1, N, K, M, act, kc); \
  }
#define GEMV9_C(SUF, TX, NT) \
  GEMV9(SUF, TX, NT, 2)      \
  GEMV9(SUF, TX, NT, 4)      \
  GEMV9(SUF, TX, NT, 8)
#define GEMV9_N(SUF, TX) \
  GEMV9_C(SUF, TX, 1)    \
  GEMV9_C(SUF, TX, 2)    \
  GEMV9_C(SUF, TX, 4)    \
  GEMV9_C(SUF, TX, 8)
#if __CUDA_ARCH__ >= 900  // clusters and distributed shared memory
GEMV9_N(f16, float)
GEMV9_N(f16x16, __half)
#endif
extern "C" __global__ void __launch_bounds__(256) stag_gemv_finish_v6(
    const float* ws, const float* r0, const float* r1, float* y0, float* y1,
    int N, int M, int act, int KB, int R, int ZR, int tiles) {
  finish_v6(ws, r0, r1, y0, y1, N, M, act, KB, R, ZR, tiles);
}
#endif  // __CUDA_ARCH__ >= 800

#define SMALL(SUF, T)                                                         \
  extern "C" __global__ void __launch_bounds__(256) stag_rmsnorm_v1_##SUF(  \
      const float* x, const T* g0, const T* g1, float* y, int N, int C) {    \
    rmsnorm_v1<T>(x, g0, g1, y, N, C);                                       \
  }                                                                          \
  extern "C" __global__ void stag_store_qkv_v1_##SUF(                        \
      const float* y, T* q, T* k, T* v, int N, int H, int G, int D, int S,   \
      int pos) {                                                             \
    store_qkv_v1<T>(y, q, k, v, N, H, G, D, S, pos);                         \
  }                                                                          \
  extern "C" __global__ void stag_scatter_v1_##SUF(                          \
      const float* y, T* dst, int N, int Y, int c0, int ystride,            \
      long long lstride, int G, int D, int S, int pos) {                     \
    scatter_v1<T>(y, dst, N, Y, c0, ystride, lstride, G, D, S, pos);         \
  }
SMALL(f32, float)
SMALL(f16, __half)

// ---------------------------------------------------------------------------
// p1: the whole plain step at B = 1 in one persistent launch (sm_90).
//
// At B = 1 a step is a chain of ~6 dependent GEMVs and attentions a layer, and
// each launch pays a ramp and a tail in which the DRAM pipe runs empty (the
// B = 1 fit: ~3.4 us a launch, 194 launches). But what a step reads (weights, the
// cache rows < pos) does not depend on what it computes: only the consumers of
// the bytes wait for the activations. So one block an SM runs all layers:
//   - a producer warp (one lane) walks the block's share of every phase of every
//     layer in order and streams it into a ring of ST 16-KB slots with bulk
//     copies (cp.async.bulk + mbarrier transaction counts): it waits for free
//     slots only, never for the activations, so it loads the next phase's and
//     the next layer's bytes while the consumers sit at a barrier;
//   - 8 consumer warps wait on full slots, multiply, and meet the other blocks
//     at a grid barrier (a counter in global memory, release/acquire) after each
//     phase: q|k|v, attention, o (+ residual), up (ReLU), down (+ residual).
// Weights are packed once (pack_plain): W (K, M) as (M / 8, K, 8), so a unit of
// 8 output columns over all K is one contiguous run of K x 16 bytes; unit u of a
// phase goes to block u % gridDim.x, and its 8 sums end in one block (no split
// of K, no partials): a column's sum runs k ascending within a thread's rows
// (k = t, t + 256, ... of each slot), then over the 32 lanes (warp_sum's tree),
// then over the 8 warps in order; the same in every launch.
// Attention: unit (h, c) is head h over the cache rows [c P, c P + P), P =
// 16 KB / (2 D) rows a slot for K and one for V; row pos (written in this launch
// by the q|k|v phase) is read after the barrier with ld.global.cg, never by the
// producer. Each unit writes (max, sum, o) to part; the last unit of head h (a
// counter) combines the head's chunks in order c = 0, 1, ... into o (fp16).
// Numbers as the layered step: RMSNorm in float32 (each block sums the row in
// the same order), q, k, v, o rounded to fp16 (the caches' type), u and the
// residual float32, every product in float32 (fp16 weights converted).
// Activations written in the launch are read with ld.global.cg (L2): an SM's L1
// may hold a line of x from an earlier phase. Needs every block resident at
// once (grid = SMs, one block an SM by shared memory: the launcher checks).
#if __CUDA_ARCH__ >= 900
namespace p1 {
constexpr int CW = 8;             // consumer warps
constexpr int NCT = 32 * CW;      // consumer threads
constexpr int SLOT = 16384;       // bytes a ring slot
constexpr int GRP = 8;            // output columns a GEMV unit (16 B a row)
constexpr int SROWS = SLOT / 16;  // weight rows a slot

struct Ring {  // the consumers' view: slot it % st, phase (it / st) & 1
  unsigned char* base;
  unsigned long long* full;
  unsigned long long* empty;
  int st;
  unsigned it;
  __device__ const unsigned char* wait() {
    const int s = it % st;
    mbar_wait(&full[s], (it / st) & 1);
    return base + (size_t)s * SLOT;
  }
  __device__ void release() {  // every consumer warp, once a slot
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(&empty[it % st]);
    ++it;
  }
};

__device__ __forceinline__ float ldcg_h(const __half* p) {
  return __half2float(
      __ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}

// Every block's consumers, once per phase: all blocks' writes of the phase
// before are visible after it (each writer fences; thread 0 releases its arrival
// and acquires the count; the named barrier orders the block's threads).
__device__ __forceinline__ void grid_sync(unsigned* ctr, unsigned& target) {
  __threadfence();
  consumers_sync(NCT);
  target += gridDim.x;
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(ctr)
                 : "memory");
    while (ld_acquire(ctr) < target) {
    }
  }
  consumers_sync(NCT);
}

// act[k] = x[k] / sqrt(mean(x^2) + 1e-6) * g[k] for k < C (x from L2); the sum of
// squares in one fixed order (thread strides, warp_sum, warps in order).
__device__ void load_normed(float* act, const float* x, const __half* g, int C,
                            float* red) {
  const int t = threadIdx.x;
  float ss = 0.f;
  for (int k = t; k < C; k += NCT) {
    const float v = __ldcg(x + k);
    act[k] = v;
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  if ((t & 31) == 0) red[t >> 5] = ss;
  consumers_sync(NCT);
  float tot = 0.f;
  for (int w = 0; w < CW; ++w) tot += red[w];
  const float rinv = 1.0f / sqrtf(tot / (float)C + 1e-6f);
  for (int k = t; k < C; k += NCT) act[k] = act[k] * rinv * __half2float(g[k]);
  consumers_sync(NCT);  // act complete; red free
}

// One GEMV phase: for each unit g of this block, y[8 g + j] = sum_k act[k]
// W[k, 8 g + j], handed to epi(column, sum) by threads j < 8.
template <class Epi>
__device__ void gemv_phase(Ring& ring, const float* act, int K, int M,
                           float* red, unsigned& nu, Epi epi) {
  const int t = threadIdx.x, w = t >> 5;
  for (int g = blockIdx.x; g < M / GRP; g += gridDim.x) {
    float acc[GRP];
#pragma unroll
    for (int j = 0; j < GRP; ++j) acc[j] = 0.f;
    for (int r0 = 0; r0 < K; r0 += SROWS) {
      const int nr = min(SROWS, K - r0);
      const uint4* sl = reinterpret_cast<const uint4*>(ring.wait());
      for (int i = t; i < nr; i += NCT) {
        const uint4 raw = sl[i];
        const float xv = act[r0 + i];
        const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = __half22float2(h2[j]);
          acc[2 * j] = fmaf(xv, f.x, acc[2 * j]);
          acc[2 * j + 1] = fmaf(xv, f.y, acc[2 * j + 1]);
        }
      }
      ring.release();
    }
    float* rb = red + (nu & 1) * CW * GRP;  // two buffers: one barrier a unit
    ++nu;
#pragma unroll
    for (int j = 0; j < GRP; ++j) acc[j] = warp_sum(acc[j]);
    if ((t & 31) == 0) {
#pragma unroll
      for (int j = 0; j < GRP; ++j) rb[w * GRP + j] = acc[j];
    }
    consumers_sync(NCT);
    if (t < GRP) {
      float s = 0.f;
      for (int q = 0; q < CW; ++q) s += rb[q * GRP + t];
      epi(g * GRP + t, s);
    }
  }
}

// Head h's output at column t from its nc chunk partials (max, sum, o: D + 2
// floats a chunk): m = max_k m_k, then l and the value summed k = 0, 1, ... with
// weights exp(m_k - m); fp16. p1's and p2's last unit of a head.
template <int D>
__device__ __forceinline__ __half head_combine(const float* part, int h, int nc,
                                               int t) {
  const float* ph = part + (size_t)h * nc * (D + 2);
  float m = NEG_INF;
  for (int k = 0; k < nc; ++k) m = fmaxf(m, __ldcg(ph + k * (D + 2)));
  float l = 0.f, a = 0.f;
  for (int k = 0; k < nc; ++k) {
    const float e = expf(__ldcg(ph + k * (D + 2)) - m);
    l = fmaf(__ldcg(ph + k * (D + 2) + 1), e, l);
    a = fmaf(__ldcg(ph + k * (D + 2) + 2 + t), e, a);
  }
  return __float2half_rn(a / l);
}

// One warp's softmax over the n scores sc (in place: p_j = exp(s_j - m)), with
// stat = (m, sum p_j): the attention units' step between scores and values.
__device__ __forceinline__ void unit_softmax(float* sc, int n, float* stat,
                                             int lane) {
  float m = NEG_INF;
  for (int j = lane; j < n; j += 32) m = fmaxf(m, sc[j]);
  m = warp_max(m);
  float l = 0.f;
  for (int j = lane; j < n; j += 32) {
    const float p = expf(sc[j] - m);
    sc[j] = p;
    l += p;
  }
  l = warp_sum(l);
  if (lane == 0) stat[0] = m, stat[1] = l;
}

template <int D>
__device__ void attention_phase(Ring& ring, float* att, const __half* q,
                                const __half* kc, const __half* vc, __half* o,
                                float* part, unsigned* hcnt, int H, int G,
                                int S) {
  constexpr int P = SLOT / (2 * D);  // cache rows a unit (one slot of K, of V)
  constexpr int PARTS = NCT / D;
  const int t = threadIdx.x, w = t >> 5, lane = t & 31;
  const int pos = S - 1, nc = (S + P - 1) / P;
  float* qs = att;          // D: q * 1/sqrt(D)
  float* kn = qs + D;       // D: row pos of K
  float* vn = kn + D;       // D: row pos of V
  float* sc = vn + D;       // P: scores, then exp(s - m)
  float* ob = sc + P;       // NCT: PARTS partial o's
  float* stat = ob + NCT;   // m, l
  int* flag = reinterpret_cast<int*>(stat + 2);
  const float scale = 1.0f / sqrtf((float)D);
  for (int u = blockIdx.x; u < H * nc; u += gridDim.x) {
    const int h = u / nc, c = u % nc, kvh = h / (H / G);
    const int start = c * P, n = min(P, S - start);
    const int nl = max(0, min(n, pos - start));  // rows the producer loaded
    const size_t hb = (size_t)kvh * S * D;
    if (t < D) {
      qs[t] = ldcg_h(q + h * D + t) * scale;
      if (nl < n) {
        kn[t] = ldcg_h(kc + hb + (size_t)pos * D + t);
        vn[t] = ldcg_h(vc + hb + (size_t)pos * D + t);
      }
    }
    consumers_sync(NCT);
    const __half* ks =
        nl ? reinterpret_cast<const __half*>(ring.wait()) : nullptr;
    for (int j = w; j < n; j += CW) {
      float d = 0.f;
#pragma unroll
      for (int i = lane; i < D; i += 32)
        d = fmaf(qs[i], j < nl ? __half2float(ks[j * D + i]) : kn[i], d);
      d = warp_sum(d);
      if (lane == 0) sc[j] = d;
    }
    if (nl) ring.release();
    consumers_sync(NCT);
    if (w == 0) unit_softmax(sc, n, stat, lane);
    consumers_sync(NCT);
    const __half* vs =
        nl ? reinterpret_cast<const __half*>(ring.wait()) : nullptr;
    {
      const int d = t % D, pt = t / D;
      float a = 0.f;
      for (int j = pt; j < n; j += PARTS)
        a = fmaf(sc[j], j < nl ? __half2float(vs[j * D + d]) : vn[d], a);
      ob[pt * D + d] = a;
    }
    if (nl) ring.release();
    consumers_sync(NCT);
    float* pr = part + (size_t)(h * nc + c) * (D + 2);
    if (t < D) {
      float s = 0.f;
      for (int p = 0; p < PARTS; ++p) s += ob[p * D + t];
      pr[2 + t] = s;
    } else if (t == D) {
      pr[0] = stat[0];
      pr[1] = stat[1];
    }
    __threadfence();
    consumers_sync(NCT);
    if (t == 0) {
      const unsigned k = atomicAdd(hcnt + h, 1u);
      *flag = k == (unsigned)nc - 1;
      if (k == (unsigned)nc - 1) hcnt[h] = 0u;  // every chunk arrived: reset
    }
    consumers_sync(NCT);
    if (*flag) {  // the head's last chunk: combine the nc chunks in order
      __threadfence();
      if (t < D) o[h * D + t] = head_combine<D>(part, h, nc, t);
    }
    consumers_sync(NCT);  // att reused by the next unit
  }
}

// p2's grid barrier: one fence, by thread 0 after the block's barrier (as
// cooperative groups' grid sync does), not one by each of the 256 threads.
__device__ __forceinline__ void grid_sync2(unsigned* ctr, unsigned& target) {
  consumers_sync(NCT);
  target += gridDim.x;
  if (threadIdx.x == 0) {
    __threadfence();
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(ctr)
                 : "memory");
    while (ld_acquire(ctr) < target) {
    }
  }
  consumers_sync(NCT);
}

__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  return ns;
}

// p2's attention: a unit is ak slots of K and ak of V (P = ak P0 cache rows),
// ak from the launcher so that H ceil(S / P) units are about one a block (p1:
// ak = 1, two units a block in turn at H = 16, S = 1024); the partials are
// fenced once, by thread 0, before the head's counter.
template <int D>
__device__ void attention_phase2(Ring& ring, float* att, const __half* q,
                                 const __half* kc, const __half* vc,
                                 __half* o, float* part, unsigned* hcnt,
                                 int H, int G, int S, int ak) {
  constexpr int P0 = SLOT / (2 * D);
  constexpr int PARTS = NCT / D;
  const int t = threadIdx.x, w = t >> 5, lane = t & 31;
  const int P = ak * P0, pos = S - 1, nc = (S + P - 1) / P;
  float* qs = att;
  float* kn = qs + D;
  float* vn = kn + D;
  float* ob = vn + D;        // NCT
  float* stat = ob + NCT;    // m, l, flag
  int* flag = reinterpret_cast<int*>(stat + 2);
  float* sc = stat + 4;      // P
  const float scale = 1.0f / sqrtf((float)D);
  for (int u = blockIdx.x; u < H * nc; u += gridDim.x) {
    const int h = u / nc, c = u % nc, kvh = h / (H / G);
    const int start = c * P, n = min(P, S - start);
    const size_t hb = (size_t)kvh * S * D;
    if (t < D) {
      qs[t] = ldcg_h(q + h * D + t) * scale;
      if (start + n == S) {  // this unit holds row pos
        kn[t] = ldcg_h(kc + hb + (size_t)pos * D + t);
        vn[t] = ldcg_h(vc + hb + (size_t)pos * D + t);
      }
    }
    consumers_sync(NCT);
    for (int i = 0; i < ak; ++i) {
      const int s0 = start + i * P0, ni = min(P0, S - s0);
      if (ni <= 0) break;
      const int nli = max(0, min(ni, pos - s0));
      const __half* ks =
          nli ? reinterpret_cast<const __half*>(ring.wait()) : nullptr;
      for (int j = w; j < ni; j += CW) {
        float d = 0.f;
#pragma unroll
        for (int e = lane; e < D; e += 32)
          d = fmaf(qs[e], j < nli ? __half2float(ks[j * D + e]) : kn[e], d);
        d = warp_sum(d);
        if (lane == 0) sc[i * P0 + j] = d;
      }
      if (nli) ring.release();
    }
    consumers_sync(NCT);
    if (w == 0) {
      float m = NEG_INF;
      for (int j = lane; j < n; j += 32) m = fmaxf(m, sc[j]);
      m = warp_max(m);
      float l = 0.f;
      for (int j = lane; j < n; j += 32) {
        const float p = expf(sc[j] - m);
        sc[j] = p;
        l += p;
      }
      l = warp_sum(l);
      if (lane == 0) stat[0] = m, stat[1] = l;
    }
    consumers_sync(NCT);
    const int d = t % D, pt = t / D;
    float a = 0.f;
    for (int i = 0; i < ak; ++i) {
      const int s0 = start + i * P0, ni = min(P0, S - s0);
      if (ni <= 0) break;
      const int nli = max(0, min(ni, pos - s0));
      const __half* vs =
          nli ? reinterpret_cast<const __half*>(ring.wait()) : nullptr;
      for (int j = pt; j < ni; j += PARTS)
        a = fmaf(sc[i * P0 + j], j < nli ? __half2float(vs[j * D + d]) : vn[d],
                 a);
      if (nli) ring.release();
    }
    ob[pt * D + d] = a;
    consumers_sync(NCT);
    float* pr = part + (size_t)(h * nc + c) * (D + 2);
    if (t < D) {
      float s = 0.f;
      for (int p = 0; p < PARTS; ++p) s += ob[p * D + t];
      pr[2 + t] = s;
    } else if (t == D) {
      pr[0] = stat[0];
      pr[1] = stat[1];
    }
    consumers_sync(NCT);
    if (t == 0) {
      __threadfence();  // the block's partial, before its ticket
      const unsigned k = atomicAdd(hcnt + h, 1u);
      *flag = k == (unsigned)nc - 1;
      if (k == (unsigned)nc - 1) hcnt[h] = 0u;
    }
    consumers_sync(NCT);
    if (*flag) {
      __threadfence();
      if (t < D) o[h * D + t] = head_combine<D>(part, h, nc, t);
    }
    consumers_sync(NCT);
  }
}

// p5's RMSNorm: load_normed's numbers, with g loaded beside x (one round trip to
// L2 before the sum, not a second one after it) for the first NG NCT columns.
constexpr int NG = 16;
__device__ void load_normed5(float* act, const float* x, const __half* g, int C,
                             float* red) {
  const int t = threadIdx.x;
  float ss = 0.f, gr[NG];
#pragma unroll
  for (int i = 0; i < NG; ++i) {
    const int k = t + i * NCT;
    if (k < C) {
      const float v = __ldcg(x + k);
      gr[i] = __half2float(g[k]);
      act[k] = v;
      ss = fmaf(v, v, ss);
    }
  }
  for (int k = t + NG * NCT; k < C; k += NCT) {
    const float v = __ldcg(x + k);
    act[k] = v;
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  if ((t & 31) == 0) red[t >> 5] = ss;
  consumers_sync(NCT);
  float tot = 0.f;
  for (int w = 0; w < CW; ++w) tot += red[w];
  const float rinv = 1.0f / sqrtf(tot / (float)C + 1e-6f);
#pragma unroll
  for (int i = 0; i < NG; ++i) {
    const int k = t + i * NCT;
    if (k < C) act[k] = act[k] * rinv * gr[i];
  }
  for (int k = t + NG * NCT; k < C; k += NCT)
    act[k] = act[k] * rinv * __half2float(g[k]);
  consumers_sync(NCT);  // act complete; red free
}

// p5: the residual x at this block's columns of a phase (units g = blockIdx.x +
// i gridDim.x of M / GRP), loaded into xr[8 i + j] at the phase's start instead
// of in each unit's epilogue; false (nothing loaded) past 32 units a block.
__device__ bool load_residual(float* xr, const float* x, int M) {
  const int nub = (M / GRP - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
  if (nub * GRP > NCT) return false;
  const int t = threadIdx.x;
  if (t < nub * GRP)
    xr[t] = __ldcg(x + ((int)blockIdx.x + (t / GRP) * (int)gridDim.x) * GRP +
                   t % GRP);
  return true;  // read after gemv_phase's first named barrier
}

// p5's attention: p2's unit (ak slots of K and of V), with (i) the scores by
// groups of 4 lanes a row (each lane QV 16-byte pieces of the row, its q in
// registers; two shuffles a row instead of warp_sum's five), (ii) P V by pairs of
// columns (half2) and NCT / (D / 2) row classes summed in order, and (iii) no
// combine: each unit writes its partial (max, sum, o) and the o phase combines
// the chunks as it loads them (load_combined), so no fence, ticket or last-block
// chain. The order of every sum is fixed: the same result in every launch.
// SPLIT (p6): chunk (h, c)'s o at part[(h nc + c) D + d], its (m, l) at
// part[H nc D + 2 (h nc + c)] (load_combined6's layout); else p2's (D + 2 a chunk).
template <int D, bool SPLIT = false>
__device__ void attention_phase5(Ring& ring, float* att, const __half* q,
                                 const __half* kc, const __half* vc,
                                 float* part, int H, int G, int S, int ak) {
  constexpr int P0 = SLOT / (2 * D);
  constexpr int QV = D / 32;         // 16-byte pieces a lane of a row
  constexpr int RG = NCT / 4;        // rows at once (4 lanes a row)
  constexpr int PV = NCT / (D / 2);  // row classes of P V
  const int t = threadIdx.x, lane = t & 31;
  const int P = ak * P0, pos = S - 1, nc = (S + P - 1) / P;
  float* qs = att;
  float* kn = qs + D;
  float* vn = kn + D;
  float* ob = vn + D;        // 2 NCT
  float* stat = ob + 2 * NCT;  // m, l
  float* sc = stat + 4;      // P
  const float scale = 1.0f / sqrtf((float)D);
  const int r4 = t & 3, grp = t >> 2;
  for (int u = blockIdx.x; u < H * nc; u += gridDim.x) {
    const int h = u / nc, c = u % nc, kvh = h / (H / G);
    const int start = c * P, n = min(P, S - start);
    const size_t hb = (size_t)kvh * S * D;
    if (t < D) {
      qs[t] = ldcg_h(q + h * D + t) * scale;
      if (start + n == S) {  // this unit holds row pos
        kn[t] = ldcg_h(kc + hb + (size_t)pos * D + t);
        vn[t] = ldcg_h(vc + hb + (size_t)pos * D + t);
      }
    }
    consumers_sync(NCT);
    float qr[QV * 8];  // this lane's q: elements 8 (r4 + 4 i) + e
#pragma unroll
    for (int i = 0; i < QV; ++i)
#pragma unroll
      for (int e = 0; e < 8; ++e) qr[8 * i + e] = qs[8 * (r4 + 4 * i) + e];
    for (int i = 0; i < ak; ++i) {
      const int s0 = start + i * P0, ni = min(P0, S - s0);
      if (ni <= 0) break;
      const int nli = max(0, min(ni, pos - s0));
      const uint4* ks =
          nli ? reinterpret_cast<const uint4*>(ring.wait()) : nullptr;
      for (int j0 = 0; j0 < ni; j0 += RG) {  // the whole warp on each pass
        const int j = j0 + grp;
        float d = 0.f;
        if (j < ni) {
#pragma unroll
          for (int v = 0; v < QV; ++v) {
            const int piece = r4 + 4 * v;
            if (j < nli) {
              const uint4 raw = ks[j * (D / 8) + piece];
              const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const float2 f = __half22float2(h2[e]);
                d = fmaf(qr[8 * v + 2 * e], f.x, d);
                d = fmaf(qr[8 * v + 2 * e + 1], f.y, d);
              }
            } else {
#pragma unroll
              for (int e = 0; e < 8; ++e) d = fmaf(qr[8 * v + e], kn[8 * piece + e], d);
            }
          }
        }
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        if (j < ni && r4 == 0) sc[i * P0 + j] = d;
      }
      if (nli) ring.release();
    }
    consumers_sync(NCT);
    if (t < 32) unit_softmax(sc, n, stat, lane);
    consumers_sync(NCT);
    const int d2 = t % (D / 2), pt = t / (D / 2);  // columns 2 d2, 2 d2 + 1
    float a0 = 0.f, a1 = 0.f;
    for (int i = 0; i < ak; ++i) {
      const int s0 = start + i * P0, ni = min(P0, S - s0);
      if (ni <= 0) break;
      const int nli = max(0, min(ni, pos - s0));
      const __half2* vs =
          nli ? reinterpret_cast<const __half2*>(ring.wait()) : nullptr;
      for (int j = pt; j < ni; j += PV) {
        const float p = sc[i * P0 + j];
        const float2 f = j < nli ? __half22float2(vs[j * (D / 2) + d2])
                                 : make_float2(vn[2 * d2], vn[2 * d2 + 1]);
        a0 = fmaf(p, f.x, a0);
        a1 = fmaf(p, f.y, a1);
      }
      if (nli) ring.release();
    }
    ob[pt * D + 2 * d2] = a0;
    ob[pt * D + 2 * d2 + 1] = a1;
    consumers_sync(NCT);
    if constexpr (SPLIT) {
      float* po = part + (size_t)(h * nc + c) * D;
      float* ps = part + (size_t)H * nc * D + 2 * (h * nc + c);
      if (t < D) {
        float s = 0.f;
        for (int p = 0; p < PV; ++p) s += ob[p * D + t];
        po[t] = s;
      } else if (t == D) {
        ps[0] = stat[0];
        ps[1] = stat[1];
      }
    } else {
      float* pr = part + (size_t)(h * nc + c) * (D + 2);
      if (t < D) {
        float s = 0.f;
        for (int p = 0; p < PV; ++p) s += ob[p * D + t];
        pr[2 + t] = s;
      } else if (t == D) {
        pr[0] = stat[0];
        pr[1] = stat[1];
      }
    }
    consumers_sync(NCT);  // sc, ob, stat free for the next unit
  }
}

// p5's o phase input: act[h D + d] = o of head h, combined from its nc chunk
// partials as p2's last unit combines them (m = max, e_k = exp(m_k - m), l and
// the value summed k = 0, 1, ... with fmaf, fp16-rounded), by every block.
// cmb: 2 H nc + H floats.
template <int D>
__device__ void load_combined(float* act, const float* part, float* cmb, int H,
                              int nc) {
  const int t = threadIdx.x;
  float* ek = cmb;               // H nc: exp(m_k - m)
  float* lh = cmb + H * nc;      // H: the head's sum
  float* mk = lh + H;            // H nc: m_k, then scratch
  for (int i = t; i < H * nc; i += NCT) mk[i] = __ldcg(part + (size_t)i * (D + 2));
  consumers_sync(NCT);
  for (int h = t; h < H; h += NCT) {
    float m = NEG_INF;
    for (int k = 0; k < nc; ++k) m = fmaxf(m, mk[h * nc + k]);
    float l = 0.f;
    for (int k = 0; k < nc; ++k) {
      const float e = expf(mk[h * nc + k] - m);
      ek[h * nc + k] = e;
      l = fmaf(__ldcg(part + (size_t)(h * nc + k) * (D + 2) + 1), e, l);
    }
    lh[h] = l;
  }
  consumers_sync(NCT);
  for (int i = t; i < H * D; i += NCT) {
    const int h = i / D, d = i % D;
    float acc = 0.f;
    for (int k = 0; k < nc; ++k)
      acc = fmaf(__ldcg(part + (size_t)(h * nc + k) * (D + 2) + 2 + d),
                 ek[h * nc + k], acc);
    act[i] = __half2float(__float2half_rn(acc / lh[h]));
  }
  consumers_sync(NCT);
}

// p6's combine: load_combined's numbers from attention_phase5<D, true>'s layout,
// with the loads issued together: every chunk's (m, l) at once (one thread a
// chunk), each head's sums from shared memory, then 4 values a thread (float4) x 8
// chunks a pass. cmb: 2 H nc + H floats.
template <int D>
__device__ void load_combined6(float* act, const float* part, float* cmb, int H,
                               int nc) {
  const int t = threadIdx.x, n = H * nc;
  float* ek = cmb;           // H nc: m_k, then exp(m_k - m)
  float* lk = cmb + n;       // H nc: l_k
  float* lh = lk + n;        // H: the head's sum
  const float* st = part + (size_t)n * D;
  for (int i = t; i < n; i += NCT) {
    const float2 ml = __ldcg(reinterpret_cast<const float2*>(st) + i);
    ek[i] = ml.x;
    lk[i] = ml.y;
  }
  consumers_sync(NCT);
  for (int h = t; h < H; h += NCT) {
    float m = NEG_INF;
    for (int k = 0; k < nc; ++k) m = fmaxf(m, ek[h * nc + k]);
    float l = 0.f;
    for (int k = 0; k < nc; ++k) {
      const float e = expf(ek[h * nc + k] - m);
      ek[h * nc + k] = e;
      l = fmaf(lk[h * nc + k], e, l);
    }
    lh[h] = l;
  }
  consumers_sync(NCT);
  for (int i4 = t; i4 < H * D / 4; i4 += NCT) {
    const int h = (4 * i4) / D, d = (4 * i4) % D;
    const float4* ph = reinterpret_cast<const float4*>(part + (size_t)h * nc * D + d);
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k0 = 0; k0 < nc; k0 += 8) {
      float4 v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (k0 + j < nc) v[j] = __ldcg(ph + (size_t)(k0 + j) * (D / 4));
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (k0 + j < nc) {
          const float e = ek[h * nc + k0 + j];
          acc.x = fmaf(v[j].x, e, acc.x);
          acc.y = fmaf(v[j].y, e, acc.y);
          acc.z = fmaf(v[j].z, e, acc.z);
          acc.w = fmaf(v[j].w, e, acc.w);
        }
    }
    const float l = lh[h];
    act[4 * i4] = __half2float(__float2half_rn(acc.x / l));
    act[4 * i4 + 1] = __half2float(__float2half_rn(acc.y / l));
    act[4 * i4 + 2] = __half2float(__float2half_rn(acc.z / l));
    act[4 * i4 + 3] = __half2float(__float2half_rn(acc.w / l));
  }
  consumers_sync(NCT);
}

// The producer (one lane): the same walk as the consumers, slot by slot.
// PF (p3): 0 the producer, which also publishes its count of copies in
// *issued; 1 the prefetcher (warp 9's lane 0), which walks the same chunks
// into L2 (cp.async.bulk.prefetch.L2), at most PF_AHEAD chunks past the
// producer's count, so DRAM keeps streaming while the ring is full.
constexpr int PF_AHEAD = 12;  // 192 KB an SM, 25 MB of L2 on 132 SMs
template <int PF>
struct ProducerT {
  unsigned char* base;
  unsigned long long* full;
  unsigned long long* empty;
  int st;
  unsigned it;
  volatile unsigned* issued;  // p3 only
  int win = 0;                // p4 only: chunks in flight at most
  __device__ void put(const void* src, unsigned bytes) {
    if constexpr (PF == 2) {  // p4: chunk it - win has landed before chunk it goes
      if (it >= (unsigned)win) {
        const unsigned j = it - win;
        mbar_wait(&full[j % st], (j / st) & 1);
      }
    }
    if constexpr (PF == 1) {
      while ((int)(it - *issued) >= PF_AHEAD) __nanosleep(200);
      bulk_prefetch_l2(src, bytes);
      ++it;
      return;
    }
    const int s = it % st;
    mbar_wait(&empty[s], ((it / st) & 1) ^ 1);
    mbar_expect_tx(&full[s], bytes);
    bulk_load(base + (size_t)s * SLOT, src, bytes, &full[s]);
    ++it;
    if constexpr (PF == 0)
      if (issued) *issued = it;
  }
  __device__ void gemv(const __half* W, int K, int M) {
    for (int g = blockIdx.x; g < M / GRP; g += gridDim.x)
      for (int r0 = 0; r0 < K; r0 += SROWS)
        put(W + ((size_t)g * K + r0) * GRP, 16u * min(SROWS, K - r0));
  }
  template <int D>
  __device__ void attention(const __half* kc, const __half* vc, int H, int G,
                            int S) {
    constexpr int P = SLOT / (2 * D);
    const int pos = S - 1, nc = (S + P - 1) / P;
    for (int u = blockIdx.x; u < H * nc; u += gridDim.x) {
      const int h = u / nc, c = u % nc, kvh = h / (H / G);
      const int start = c * P, n = min(P, S - start);
      const int nl = max(0, min(n, pos - start));
      if (!nl) continue;
      const size_t off = ((size_t)kvh * S + start) * D;
      put(kc + off, 2u * nl * D);
      put(vc + off, 2u * nl * D);
    }
  }
  template <int D>
  __device__ void attention2(const __half* kc, const __half* vc, int H, int G,
                             int S, int ak) {
    constexpr int P0 = SLOT / (2 * D);
    const int P = ak * P0, pos = S - 1, nc = (S + P - 1) / P;
    for (int u = blockIdx.x; u < H * nc; u += gridDim.x) {
      const int h = u / nc, c = u % nc, kvh = h / (H / G);
      for (int kv = 0; kv < 2; ++kv)  // the unit's K slots, then its V slots
        for (int i = 0; i < ak; ++i) {
          const int s0 = c * P + i * P0, ni = min(P0, S - s0);
          if (ni <= 0) break;
          const int nli = max(0, min(ni, pos - s0));
          if (nli) put((kv ? vc : kc) + ((size_t)kvh * S + s0) * D, 2u * nli * D);
        }
    }
  }
};
using Producer = ProducerT<-1>;  // p1, p2: no prefetcher, no window

// p3's walk of a block's chunks, layer by layer (the producer's and the
// prefetcher's: the same order).
template <int D, class Pr>
__device__ void produce(Pr& pr, const unsigned long long* wt, const __half* kc,
                        const __half* vc, int L, int C, int F, int H, int G,
                        int S, int ak, unsigned long long* trace) {
  const int HD = H * D, M1 = (H + 2 * G) * D;
  const size_t lstride = (size_t)G * S * D;
  for (int l = 0; l < L; ++l) {
    const unsigned long long* p = wt + 6 * l;
    pr.gemv(reinterpret_cast<const __half*>(p[1]), C, M1);
    pr.template attention2<D>(kc + l * lstride, vc + l * lstride, H, G, S, ak);
    pr.gemv(reinterpret_cast<const __half*>(p[2]), HD, C);
    pr.gemv(reinterpret_cast<const __half*>(p[4]), C, F);
    pr.gemv(reinterpret_cast<const __half*>(p[5]), F, C);
    if (trace) trace[((size_t)blockIdx.x * L + l) * 12 + 11] = gtime();
  }
}

// wt: L x 6 pointers (g1, wqkv, wo, g2, wup, wdown; the W packed);
// kc, vc (L, G, S, D); x (C) in: the embedding, out: the residual stream;
// out (C); q, o (H D) fp16; u (F); part (H, ceil(S / P), D + 2); sync (1 + H)
// zero on entry.
// V = 1: p1; V = 2: p2 (grid_sync2, attention_phase2 with ak slots a unit, and
// with trace != nullptr, thread 0's globaltimer at each phase's end and after
// each barrier, and the producer's at each layer's last copy: trace (gridDim.x,
// L, 12) u64); V = 3: p3 (p2 + the L2 prefetcher warp); V = 4: p4 (p2 whose
// producer keeps at most win chunks in flight: it waits for chunk i - win to land
// before it issues chunk i, 1 <= win < st, so that a barrier's fence and arrival
// queue behind at most win chunks of the SM's bulk copies).
template <int D, int V>
__device__ void step_p1(const unsigned long long* wt, __half* kc, __half* vc,
                        const __half* gf, float* x, float* out, __half* q,
                        __half* o, float* u, float* part, unsigned* sync,
                        int L, int C, int F, int H, int G, int S, int st,
                        int ak, unsigned long long* trace, int win) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int HD = H * D, M1 = (H + 2 * G) * D, GD = G * D, pos = S - 1;
  const int na = (max(C, max(HD, F)) + 3) & ~3;
  unsigned char* ring = smem;
  float* act = reinterpret_cast<float*>(smem + (size_t)st * SLOT);
  constexpr int OBN = V >= 5 ? 2 * NCT : NCT;  // the attention's P V sums
  float* att = act + na;                       // 3 D + P + OBN + 4
  float* red = att + 3 * D + ak * (SLOT / (2 * D)) + OBN + 4;  // 2 CW GRP
  const int ncu = (S + ak * (SLOT / (2 * D)) - 1) / (ak * (SLOT / (2 * D)));
  float* cmb = red + 2 * CW * GRP;  // p5: load_combined's 2 H nc + H (even)
  const int ncmb = V >= 5 ? ((2 * H * ncu + H + 1) & ~1) : 0;
  unsigned long long* bars = reinterpret_cast<unsigned long long*>(cmb + ncmb);
  unsigned long long *full = bars, *empty = bars + st;
  const int t = threadIdx.x;
  if (t == 0) {
    for (int s = 0; s < st; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], CW);
    }
    fence_mbar_init();
  }
  __syncthreads();
  const size_t lstride = (size_t)G * S * D;
  if (t >= NCT) {  // the producer warp (p3: and the prefetcher's)
    if constexpr (V >= 4) {  // p4, p5: the windowed producer
      if (t != NCT) return;
      ProducerT<2> pr{ring, full, empty, st, 0u, nullptr, win};
      produce<D>(pr, wt, kc, vc, L, C, F, H, G, S, ak, trace);
      return;
    }
    if constexpr (V == 3) {
      if (t != NCT && t != NCT + 32) return;
      volatile unsigned* issued = reinterpret_cast<unsigned*>(bars + 2 * st);
      if (t == NCT) {
        ProducerT<0> pr{ring, full, empty, st, 0u, issued};
        produce<D>(pr, wt, kc, vc, L, C, F, H, G, S, ak, trace);
      } else {
        ProducerT<1> pr{ring, full, empty, st, 0u, issued};
        produce<D>(pr, wt, kc, vc, L, C, F, H, G, S, ak, nullptr);
      }
      return;
    }
    if (t != NCT) return;
    Producer pr{ring, full, empty, st, 0u, nullptr};
    for (int l = 0; l < L; ++l) {
      const unsigned long long* p = wt + 6 * l;
      pr.gemv(reinterpret_cast<const __half*>(p[1]), C, M1);
      if constexpr (V == 1)
        pr.attention<D>(kc + l * lstride, vc + l * lstride, H, G, S);
      else
        pr.attention2<D>(kc + l * lstride, vc + l * lstride, H, G, S, ak);
      pr.gemv(reinterpret_cast<const __half*>(p[2]), HD, C);
      pr.gemv(reinterpret_cast<const __half*>(p[4]), C, F);
      pr.gemv(reinterpret_cast<const __half*>(p[5]), F, C);
      if constexpr (V >= 2)
        if (trace) trace[((size_t)blockIdx.x * L + l) * 12 + 11] = gtime();
    }
    return;
  }
  Ring rg{ring, full, empty, st, 0u};
  unsigned target = 0, nu = 0;
  unsigned long long* tr = nullptr;
  auto stamp = [&](int i) {
    if constexpr (V >= 2)
      if (tr && t == 0) tr[i] = gtime();
  };
  auto sync_all = [&](int i) {  // stamp i before the barrier, i + 1 after
    stamp(i);
    if constexpr (V == 1)
      grid_sync(sync, target);
    else
      grid_sync2(sync, target);
    stamp(i + 1);
  };
  for (int l = 0; l < L; ++l) {
    const unsigned long long* p = wt + 6 * l;
    __half* kl = kc + l * lstride;
    __half* vl = vc + l * lstride;
    if constexpr (V >= 2)
      if (trace) tr = trace + ((size_t)blockIdx.x * L + l) * 12;
    stamp(0);
    if constexpr (V >= 5)
      load_normed5(act, x, reinterpret_cast<const __half*>(p[0]), C, red);
    else
      load_normed(act, x, reinterpret_cast<const __half*>(p[0]), C, red);
    gemv_phase(rg, act, C, M1, red, nu, [&](int col, float s) {
      const __half v = __float2half_rn(s);
      if (col < HD) {
        q[col] = v;
      } else if (col < HD + GD) {
        const int c = col - HD;
        kl[((size_t)(c / D) * S + pos) * D + c % D] = v;
      } else {
        const int c = col - HD - GD;
        vl[((size_t)(c / D) * S + pos) * D + c % D] = v;
      }
    });
    sync_all(1);
    if constexpr (V == 1)
      attention_phase<D>(rg, att, q, kl, vl, o, part, sync + 1, H, G, S);
    else if constexpr (V >= 5)
      attention_phase5<D, V == 6>(rg, att, q, kl, vl, part, H, G, S, ak);
    else
      attention_phase2<D>(rg, att, q, kl, vl, o, part, sync + 1, H, G, S, ak);
    sync_all(3);
    if constexpr (V >= 5) {  // o combined from the partials; the residual early
      const bool pre = load_residual(att, x, C);
      if constexpr (V == 6)
        load_combined6<D>(act, part, cmb, H, ncu);
      else
        load_combined<D>(act, part, cmb, H, ncu);
      gemv_phase(rg, act, HD, C, red, nu, [&](int col, float s) {
        const int i = (col / GRP - (int)blockIdx.x) / (int)gridDim.x;
        x[col] = (pre ? att[i * GRP + col % GRP] : __ldcg(x + col)) + s;
      });
    } else {
      for (int k = t; k < HD; k += NCT) act[k] = ldcg_h(o + k);
      consumers_sync(NCT);
      gemv_phase(rg, act, HD, C, red, nu,
                 [&](int col, float s) { x[col] = __ldcg(x + col) + s; });
    }
    sync_all(5);
    if constexpr (V >= 5)
      load_normed5(act, x, reinterpret_cast<const __half*>(p[3]), C, red);
    else
      load_normed(act, x, reinterpret_cast<const __half*>(p[3]), C, red);
    gemv_phase(rg, act, C, F, red, nu,
               [&](int col, float s) { u[col] = fmaxf(s, 0.f); });
    sync_all(7);
    if constexpr (V >= 5) {
      const bool pre = load_residual(att, x, C);
      for (int k = t; k < F; k += NCT) act[k] = __ldcg(u + k);
      consumers_sync(NCT);
      gemv_phase(rg, act, F, C, red, nu, [&](int col, float s) {
        const int i = (col / GRP - (int)blockIdx.x) / (int)gridDim.x;
        x[col] = (pre ? att[i * GRP + col % GRP] : __ldcg(x + col)) + s;
      });
    } else {
      for (int k = t; k < F; k += NCT) act[k] = __ldcg(u + k);
      consumers_sync(NCT);
      gemv_phase(rg, act, F, C, red, nu,
                 [&](int col, float s) { x[col] = __ldcg(x + col) + s; });
    }
    sync_all(9);
  }
  if (blockIdx.x == 0) {
    load_normed(act, x, gf, C, red);
    for (int k = t; k < C; k += NCT) out[k] = act[k];
  }
}
}  // namespace p1

#define STEP_P1(D)                                                           \
  extern "C" __global__ void __launch_bounds__(32 * (p1::CW + 1), 1)        \
      stag_step_p1_d##D(const unsigned long long* wt, __half* kc,           \
                        __half* vc, const __half* gf, float* x, float* out, \
                        __half* q, __half* o, float* u, float* part,        \
                        unsigned* sync, int L, int C, int F, int H, int G,  \
                        int S, int st) {                                     \
    p1::step_p1<D, 1>(wt, kc, vc, gf, x, out, q, o, u, part, sync, L, C, F, \
                      H, G, S, st, 1, nullptr, 0);                           \
  }
#define STEP_P2(D)                                                           \
  extern "C" __global__ void __launch_bounds__(32 * (p1::CW + 1), 1)        \
      stag_step_p2_d##D(const unsigned long long* wt, __half* kc,           \
                        __half* vc, const __half* gf, float* x, float* out, \
                        __half* q, __half* o, float* u, float* part,        \
                        unsigned* sync, int L, int C, int F, int H, int G,  \
                        int S, int st, int ak, unsigned long long* trace) { \
    p1::step_p1<D, 2>(wt, kc, vc, gf, x, out, q, o, u, part, sync, L, C, F, \
                      H, G, S, st, ak, trace, 0);                            \
  }
#define STEP_P3(D)                                                           \
  extern "C" __global__ void __launch_bounds__(32 * (p1::CW + 2), 1)        \
      stag_step_p3_d##D(const unsigned long long* wt, __half* kc,           \
                        __half* vc, const __half* gf, float* x, float* out, \
                        __half* q, __half* o, float* u, float* part,        \
                        unsigned* sync, int L, int C, int F, int H, int G,  \
                        int S, int st, int ak, unsigned long long* trace) { \
    p1::step_p1<D, 3>(wt, kc, vc, gf, x, out, q, o, u, part, sync, L, C, F, \
                      H, G, S, st, ak, trace, 0);                            \
  }
// p4-p6: one signature (the window last); V the version.
#define STEP_PW(V, D)                                                        \
  extern "C" __global__ void __launch_bounds__(32 * (p1::CW + 1), 1)        \
      stag_step_p##V##_d##D(const unsigned long long* wt, __half* kc,       \
                            __half* vc, const __half* gf, float* x,         \
                            float* out, __half* q, __half* o, float* u,     \
                            float* part, unsigned* sync, int L, int C,      \
                            int F, int H, int G, int S, int st, int ak,     \
                            unsigned long long* trace, int win) {           \
    p1::step_p1<D, V>(wt, kc, vc, gf, x, out, q, o, u, part, sync, L, C, F, \
                      H, G, S, st, ak, trace, win);                          \
  }
STEP_P1(64)
STEP_P1(128)
STEP_P2(64)
STEP_P2(128)
STEP_P3(64)
STEP_P3(128)
STEP_PW(4, 64)
STEP_PW(4, 128)
STEP_PW(5, 64)
STEP_PW(5, 128)
STEP_PW(6, 64)
STEP_PW(6, 128)
#endif  // __CUDA_ARCH__ >= 900
