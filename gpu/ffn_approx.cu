// gpu/ffn_approx.cu — chapter 6, "Approximating two-layer FFNs": one
// sigma-MoE layer (sigmoid router, top-K experts, CVMM). Twin of
// reference/ffn_approx.py::route and ::moe_cvmm. Row-major, contiguous:
//   x (T, C)  w3 (C, E)  w1 (E, C, G)  w2 (E, G, C)  out (T, C)
//   idx (T, K) int32 in [0, E)   gate (T, K) float32   pairs p = t K + j
//   counts (E,), offsets (E + 1,), tiles (E + 1,), order (P = T K,) int32
//   h (P, G) and z (P, C) of the storage type: workspace
// Storage T = float or __half; every sum in float32.
//
// The pipeline, one launch each, no host sync (CUDA-graph capturable):
//   router   logits = x W3, top-K per token, gate = sigmoid(logit)
//   count    histogram of idx (one block, shared atomics on integers: the
//            counts do not depend on their order), exclusive scan to offsets,
//            and the tile table tiles[e] = sum_{e' < e} ceil(counts[e'] / BM)
//   scatter  block e ranks its pairs in ascending pair id (ballot + prefix
//            sum): order[offsets[e] + rank] = p. A stable counting sort.
//   up       h[q] = gate[p] relu(x[p / K] w1[e]) for sorted position q,
//            p = order[q] (the grouped GEMM; ReLU and gate in its epilogue)
//   down     z[p] = h[q] w2[e]  (stored back in pair order)
//   combine  out[t] = sum_j z[t K + j], j = 0..K-1 in order: deterministic
// A GEMM tile of BM sorted rows never straddles two experts (option (a) of
// the notes: segments are padded to whole tiles in the tile table), so the
// grid is an upper bound, ceil(P / BM) + E tiles, and surplus blocks exit.
//
// v1  naive: a thread per (sorted row, output column), scalar loads; finds
//     its expert by binary search in offsets. Any shape.
// v2  CUDA cores, shared-memory tiles BM = BN = 64, BK = 16, 256 threads
//     with 4x4 outputs each; A rows gathered through order. Any shape.
// v3  tensor cores (mma.sync m16n8k16 + ldmatrix, fp16 in, fp32
//     accumulate): 64x64 tile, BK = 32, 4 warps of 32x32; 16-byte loads.
//     fp16 only; C % 8 == 0 and G % 8 == 0. Epilogue from registers.
// v4  v3's code with 128x128 tiles (8 warps of 64x32): each smem element
//     feeds twice as many MMAs. Same needs as v3.
// v5-v7 (below, each section's header): a pipelined tile (cp.async ring),
//     router v3/v4 on tensor cores, sort v3 over many blocks; v7's down
//     GEMM also does the combine (tickets per token and column slice).
// combine_v1 scalar; combine_v2 16-byte vectors (C % 8 == 0, fp16).
// router_v2 (a warp per 4 tokens, lanes over C, fixed-order warp reduction)
// and sort_v2 (count + scatter in one block, per-warp histograms) are what
// the launchers use for v3 and v4; v1 and v2 keep router_v1 and count_v1 +
// scatter_v1. Same results up to the router's rounding; the same order.
//
// Run the cases alone:  python -m gpu.bench ffn_approx [--quick]
// Compile report (no GPU): python -m gpu.check_kernels gpu/ffn_approx.cu

#include "common.cuh"

#define MAX_E 256  // router: experts per token held in shared memory
#define RT 16      // router: tokens per block
#define RCK 32     // router v1: chunk of C staged in shared memory
#define R2W 4      // router v2: warps per block
#define R2TPW 4    // router v2: tokens per warp (R2W * R2TPW == RT)
#define R2LG 4     // router v2: log2 of R2EC
#define R2EC 16    // router v2: experts per chunk (2^R2LG <= 16)
#define R2CK 128   // router v2: rows of w3 staged per chunk (% 32 == 0)

__device__ __forceinline__ int segment_of(const int* starts, int n, int v) {
  if (v >= starts[n]) return -1;
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (starts[mid] <= v) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// --- router ---
// Warp w picks the top K of block tokens w, w + nw, ... (nw warps) from
// logit[r][0..E): K rounds of a warp argmax, ties to the lower expert id
// (as reference.ffn_approx.top_k_indices); gate = sigmoid(logit). Lane l
// owns experts l + 32 i and marks the ones taken in a register bit mask
// (E <= MAX_E = 256: 8 bits), so no thread writes what another reads.
__device__ void router_topk(float (*logit)[MAX_E], int t0, int Tn, int E,
                            int K, int* idx, float* gate) {
  int lane = threadIdx.x & 31;
  for (int r = threadIdx.x / 32; r < RT; r += blockDim.x / 32) {
    int t = t0 + r;
    if (t >= Tn) break;
    unsigned taken = 0u;  // bit i: expert lane + 32 i already chosen
    for (int j = 0; j < K; ++j) {
      float bv = 0.f;
      int be = -1;
      for (int e = lane; e < E; e += 32) {
        float v = logit[r][e];
        bool used = (taken >> (e / 32)) & 1u;
        if (!used && (be < 0 || v > bv)) { bv = v; be = e; }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oe = __shfl_xor_sync(0xffffffffu, be, o);
        bool better = oe >= 0 && (be < 0 || ov > bv || (ov == bv && oe < be));
        if (better) { bv = ov; be = oe; }
      }
      if (be % 32 == lane) taken |= 1u << (be / 32);
      if (lane == 0) {
        idx[(size_t)t * K + j] = be;
        gate[(size_t)t * K + j] = 1.f / (1.f + expf(-bv));
      }
    }
  }
}

// v1: grid ceil(T / RT), block 128: thread -> expert e (and e + 128); RT
// logits each in registers, x staged RCK columns at a time, then
// router_topk. With E = 32 only 32 of the 128 threads work, each a serial
// C-long chain with a barrier every RCK columns: latency-bound.
template <typename T>
__device__ void router_v1(const T* x, const T* w3, int* idx, float* gate,
                          int Tn, int C, int E, int K) {
  __shared__ float xs[RT][RCK];
  __shared__ float logit[RT][MAX_E];
  int t0 = blockIdx.x * RT, tid = threadIdx.x;
  for (int e0 = 0; e0 < E; e0 += blockDim.x) {
    int e = e0 + tid;
    float acc[RT];
#pragma unroll
    for (int r = 0; r < RT; ++r) acc[r] = 0.f;
    for (int c0 = 0; c0 < C; c0 += RCK) {
      __syncthreads();
      for (int i = tid; i < RT * RCK; i += blockDim.x) {
        int r = i / RCK, c = c0 + i % RCK;
        xs[r][i % RCK] =
            (t0 + r < Tn && c < C) ? to_f(x[(size_t)(t0 + r) * C + c]) : 0.f;
      }
      __syncthreads();
      if (e < E) {
        int nc = min(RCK, C - c0);
        for (int c = 0; c < nc; ++c) {
          float wv = to_f(w3[(size_t)(c0 + c) * E + e]);
#pragma unroll
          for (int r = 0; r < RT; ++r) acc[r] = fmaf(xs[r][c], wv, acc[r]);
        }
      }
    }
    if (e < E) {
#pragma unroll
      for (int r = 0; r < RT; ++r) logit[r][e] = acc[r];
    }
  }
  __syncthreads();
  router_topk(logit, t0, Tn, E, K, idx, gate);
}

// v2: grid ceil(T / RT), block R2W warps of R2TPW tokens each (RT in all).
// A chunk of R2EC experts at a time: the block stages R2CK rows of that
// w3 chunk in shared memory as float (row stride R2EC + 1: lane l reads row
// l, banks 17 l + e, no conflict); lane l owns columns c = l mod 32 and
// keeps R2TPW x R2EC partial sums, each w3 value read once for R2TPW
// tokens. Then a fixed-order warp reduction (recursive halving, 15 + 1
// shuffles per token: lane l ends with expert l mod 16), deterministic;
// the logits go to shared memory and router_topk as v1.
template <typename T>
__device__ void router_v2(const T* x, const T* w3, int* idx, float* gate,
                          int Tn, int C, int E, int K) {
  __shared__ float ws[R2CK][R2EC + 1];
  __shared__ float logit[RT][MAX_E];
  int t0 = blockIdx.x * RT, tid = threadIdx.x;
  int lane = tid & 31, tw = (tid / 32) * R2TPW;  // warp's first token
  const T* xr[R2TPW];
  bool ok[R2TPW];
#pragma unroll
  for (int r = 0; r < R2TPW; ++r) {
    ok[r] = t0 + tw + r < Tn;
    xr[r] = x + (size_t)(ok[r] ? t0 + tw + r : 0) * C;
  }
  for (int e0 = 0; e0 < E; e0 += R2EC) {
    float acc[R2TPW][R2EC];
#pragma unroll
    for (int r = 0; r < R2TPW; ++r)
#pragma unroll
      for (int e = 0; e < R2EC; ++e) acc[r][e] = 0.f;
    for (int c0 = 0; c0 < C; c0 += R2CK) {
      __syncthreads();
      for (int i = tid; i < R2CK * R2EC; i += blockDim.x) {
        int c = c0 + i / R2EC, e = e0 + i % R2EC;
        ws[i / R2EC][i % R2EC] =
            c < C && e < E ? to_f(w3[(size_t)c * E + e]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < R2CK / 32; ++j) {
        int cl = j * 32 + lane, c = c0 + cl;
        float xv[R2TPW];
#pragma unroll
        for (int r = 0; r < R2TPW; ++r)
          xv[r] = ok[r] && c < C ? to_f(xr[r][c]) : 0.f;
#pragma unroll
        for (int e = 0; e < R2EC; ++e) {
          float wv = ws[cl][e];
#pragma unroll
          for (int r = 0; r < R2TPW; ++r)
            acc[r][e] = fmaf(xv[r], wv, acc[r][e]);
        }
      }
    }
    // lane l keeps the upper half (of the values left) when bit h is set
#pragma unroll
    for (int r = 0; r < R2TPW; ++r) {
#pragma unroll
      for (int lg = R2LG - 1; lg >= 0; --lg) {
        const int h = 1 << lg;
        bool up = lane & h;
#pragma unroll
        for (int i = 0; i < R2EC / 2; ++i) {  // i < h once unrolled
          if (i >= h) break;
          float keep = up ? acc[r][i + h] : acc[r][i];
          float send = up ? acc[r][i] : acc[r][i + h];
          acc[r][i] = keep + __shfl_xor_sync(0xffffffffu, send, h);
        }
      }
      float v = acc[r][0] + __shfl_xor_sync(0xffffffffu, acc[r][0], 16);
      int e = e0 + (lane & (R2EC - 1));
      if (lane < R2EC && e < E) logit[tw + r][e] = v;
    }
  }
  __syncthreads();
  router_topk(logit, t0, Tn, E, K, idx, gate);
}

// --- sort ---
// One block: counts by shared atomics, then thread 0 scans (E <= MAX_E).
// An id outside [0, E) is not counted (the launcher rejects it first).
__device__ void count_v1(const int* idx, int P, int E, int bm, int* counts,
                         int* offsets, int* tiles) {
  __shared__ int cnt[MAX_E];
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    int e = idx[p];
    if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int off = 0, til = 0;
    for (int e = 0; e < E; ++e) {
      counts[e] = cnt[e];
      offsets[e] = off;
      tiles[e] = til;
      off += cnt[e];
      til += (cnt[e] + bm - 1) / bm;
    }
    offsets[E] = off;
    tiles[E] = til;
  }
}

// grid E, block 256 (8 warps): block e walks the pairs in chunks of 256 and
// gives each of its pairs the rank "pairs of e before it" (ballot, popc and
// an 8-warp prefix), so order holds expert e's pairs in ascending p.
__device__ void scatter_v1(const int* idx, int P, const int* offsets,
                           int* order) {
  __shared__ int warp_n[8];
  int e = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  int run = offsets[e];
  for (int base = 0; base < P; base += 256) {
    int p = base + threadIdx.x;
    bool mine = p < P && idx[p] == e;
    unsigned bal = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_n[warp] = __popc(bal);
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      before += w < warp ? warp_n[w] : 0;
      total += warp_n[w];
    }
    if (mine) order[run + before + __popc(bal & ((1u << lane) - 1u))] = p;
    run += total;
    __syncthreads();
  }
}

// v2, one kernel in place of count + scatter: one block of SW warps; warp
// w owns the pairs [w per, (w + 1) per), per = ceil(P / SW), walked 32 at
// a time. Pass 1: __match_any_sync groups a chunk's lanes by expert and the
// group's lowest lane adds its size to the warp's histogram hist[w][e].
// Then thread e turns hist[.][e] into an exclusive prefix over the warps,
// warp 0 scans the experts' totals to offsets and tiles. Pass 2 walks the
// same pairs again: rank = offsets[e] + hist[w][e] + lanes of the group
// below this lane, and the group's size is added to hist[w][e]. Ranks
// follow pair order (warps in order, chunks in order, lanes in order): the
// same stable order as v1, with no atomics, O(P + SW E) work.
#define SW 32  // sort v2: warps of its one block (1024 threads)
__device__ void sort_v2(const int* idx, int P, int E, int bm, int* counts,
                        int* offsets, int* tiles, int* order) {
  __shared__ int hist[SW][MAX_E];
  __shared__ int start[MAX_E];
  const unsigned all = 0xffffffffu;
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  for (int i = threadIdx.x; i < SW * MAX_E; i += blockDim.x)
    hist[i / MAX_E][i % MAX_E] = 0;
  __syncthreads();
  int per = (P + SW - 1) / SW, p0 = warp * per, p1 = min(P, p0 + per);
  for (int b = p0; b < p1; b += 32) {
    int p = b + lane, e = p < p1 ? idx[p] : -1;
    bool v = e >= 0 && e < E;
    unsigned peers = __match_any_sync(all, v ? e : -1);
    if (v && lane == __ffs(peers) - 1) hist[warp][e] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int run = 0;
    for (int w = 0; w < SW; ++w) {
      int h = hist[w][e];
      hist[w][e] = run;
      run += h;
    }
    start[e] = run;  // the total, for now
  }
  __syncthreads();
  if (warp == 0) {  // lane l scans experts [e0, e1), then a warp scan
    int n = (E + 31) / 32, e0 = min(E, lane * n), e1 = min(E, e0 + n);
    int sc = 0, st = 0;
    for (int e = e0; e < e1; ++e) {
      sc += start[e];
      st += (start[e] + bm - 1) / bm;
    }
    int ic = sc, it = st;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int a = __shfl_up_sync(all, ic, o), b = __shfl_up_sync(all, it, o);
      if (lane >= o) { ic += a; it += b; }
    }
    int off = ic - sc, til = it - st;
    for (int e = e0; e < e1; ++e) {
      int c = start[e];
      counts[e] = c;
      offsets[e] = off;
      tiles[e] = til;
      start[e] = off;
      off += c;
      til += (c + bm - 1) / bm;
    }
    if (lane == 31) { offsets[E] = ic; tiles[E] = it; }
  }
  __syncthreads();
  for (int b = p0; b < p1; b += 32) {
    int p = b + lane, e = p < p1 ? idx[p] : -1;
    bool v = e >= 0 && e < E;
    unsigned peers = __match_any_sync(all, v ? e : -1);
    if (v) {
      int below = __popc(peers & ((1u << lane) - 1u));
      order[start[e] + hist[warp][e] + below] = p;
    }
    __syncwarp();
    if (v && lane == __ffs(peers) - 1) hist[warp][e] += __popc(peers);
    __syncwarp();
  }
}

// --- GEMM operands ---
// UP:   A row of sorted position q is x[order[q] / K] (Kd = C, N = G);
//       h[q, n] = gate[order[q]] * relu(acc).
// DOWN: A row q is h[q] (Kd = G, N = C); z[order[q], n] = acc.
template <typename T>
struct Gemm {
  const T* a;
  const T* w;  // (E, Kd, N)
  const int* order;
  const float* gate;
  const int* offsets;
  const int* tiles;
  T* out;
  int E, K, Kd, N;
};

template <bool UP, typename T>
__device__ __forceinline__ size_t a_row(const Gemm<T>& g, int q) {
  return UP ? (size_t)(g.order[q] / g.K) : (size_t)q;
}

template <bool UP, typename T>
__device__ __forceinline__ void put(const Gemm<T>& g, int q, int n, float v) {
  int p = g.order[q];
  if (UP) {
    from_f(g.out[(size_t)q * g.N + n], g.gate[p] * fmaxf(v, 0.f));
  } else {
    from_f(g.out[(size_t)p * g.N + n], v);
  }
}

// --- v1 ---
// grid (rows = P, ceil(N / blockDim)): thread -> (q, n), a plain dot product.
template <bool UP, typename T>
__device__ void gemm_v1(Gemm<T> g) {
  int q = blockIdx.x, n = blockIdx.y * blockDim.x + threadIdx.x;
  int e = segment_of(g.offsets, g.E, q);
  if (e < 0 || n >= g.N) return;
  const T* a = g.a + a_row<UP>(g, q) * g.Kd;
  const T* w = g.w + (size_t)e * g.Kd * g.N + n;
  float acc = 0.f;
  for (int k = 0; k < g.Kd; ++k)
    acc = fmaf(to_f(a[k]), to_f(w[(size_t)k * g.N]), acc);
  put<UP>(g, q, n, acc);
}

// --- v2 ---
// grid (ceil(P / 64) + E, ceil(N / 64)), block 256: a 64x64 tile of one
// expert's segment; thread (ty, tx) owns rows 4ty.. and columns 4tx..
template <bool UP, typename T>
__device__ void gemm_v2(Gemm<T> g) {
  __shared__ float As[16][64 + 4];  // [k][m]
  __shared__ float Bs[16][64 + 4];  // [k][n]
  int tile = blockIdx.x, e = segment_of(g.tiles, g.E, tile);
  if (e < 0) return;
  int q0 = g.offsets[e] + (tile - g.tiles[e]) * 64, q1 = g.offsets[e + 1];
  int n0 = blockIdx.y * 64, tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  int am = tid / 4, ak = (tid % 4) * 4;   // this thread's A loads
  int bk = tid / 16, bn = (tid % 16) * 4;  // and B loads
  bool arow_ok = q0 + am < q1;
  const T* arow = g.a + (arow_ok ? a_row<UP>(g, q0 + am) : 0) * g.Kd;
  const T* we = g.w + (size_t)e * g.Kd * g.N;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < g.Kd; k0 += 16) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int k = k0 + ak + i, n = n0 + bn + i;
      As[ak + i][am] = arow_ok && k < g.Kd ? to_f(arow[k]) : 0.f;
      Bs[bk][bn + i] = k0 + bk < g.Kd && n < g.N
                           ? to_f(we[(size_t)(k0 + bk) * g.N + n])
                           : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = As[k][ty * 4 + i];
        bv[i] = Bs[k][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int q = q0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (q < q1 && n < g.N) put<UP>(g, q, n, acc[i][j]);
    }
}

// --- v3 ---
// grid (ceil(P / BM) + E, ceil(N / BN)), block NW warps, each a WM x WN
// sub-tile of (WM/16) x (WN/8) mma.sync m16n8k16 accumulators (fp16 in,
// fp32 accumulate; inline PTX, as gpu/slim_attention.cu). Tiles of A
// (gathered rows) and B are staged in shared memory with 16-byte loads,
// zero-filled past the segment, Kd and N (whole vectors: Kd, N % 8 == 0),
// and read with ldmatrix (B transposed on the way). Row strides of BK + 8
// and BN + 8 halves put the 8 rows of an ldmatrix in 8 different banks.
template <bool UP, int BM, int BN, int WM, int WN>
__device__ void gemm_v3(Gemm<__half> g) {
  constexpr int BK = 32, NW = (BM / WM) * (BN / WN), NT = NW * 32;
  constexpr int FM = WM / 16, FN = WN / 8, LDA = BK + 8, LDB = BN + 8;
  __shared__ __align__(16) __half As[BM * LDA];
  __shared__ __align__(16) __half Bs[BK * LDB];
  int tile = blockIdx.x, e = segment_of(g.tiles, g.E, tile);
  if (e < 0) return;
  int q0 = g.offsets[e] + (tile - g.tiles[e]) * BM, q1 = g.offsets[e + 1];
  int n0 = blockIdx.y * BN, tid = threadIdx.x;
  int warp = tid / 32, lane = tid & 31;
  int wm = warp / (BN / WN) * WM, wn = warp % (BN / WN) * WN;
  const __half* we = g.w + (size_t)e * g.Kd * g.N;
  float acc[FM][FN][4] = {};
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int k0 = 0; k0 < g.Kd; k0 += BK) {
    for (int v = tid; v < BM * BK / 8; v += NT) {
      int m = v / (BK / 8), kv = (v % (BK / 8)) * 8, q = q0 + m;
      uint4 val = zero;
      if (q < q1 && k0 + kv < g.Kd)
        val = load16(g.a + a_row<UP>(g, q) * g.Kd + k0 + kv);
      *reinterpret_cast<uint4*>(As + m * LDA + kv) = val;
    }
    for (int v = tid; v < BK * BN / 8; v += NT) {
      int kk = v / (BN / 8), nv = (v % (BN / 8)) * 8;
      uint4 val = zero;
      if (k0 + kk < g.Kd && n0 + nv < g.N)
        val = load16(we + (size_t)(k0 + kk) * g.N + n0 + nv);
      *reinterpret_cast<uint4*>(Bs + kk * LDB + nv) = val;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      unsigned a[FM][4], b[FN][2];
      int r = lane % 16, c8 = (lane / 16) * 8;
#pragma unroll
      for (int i = 0; i < FM; ++i)
        ldsm_x4(a[i], As + (wm + i * 16 + r) * LDA + kk + c8);
#pragma unroll
      for (int j = 0; j < FN; j += 2) {  // two n8 tiles per ldmatrix
        unsigned t4[4];
        ldsm_x4_t(t4, Bs + (kk + r) * LDB + wn + j * 8 + c8);
        b[j][0] = t4[0];
        b[j][1] = t4[1];
        b[j + 1][0] = t4[2];
        b[j + 1][1] = t4[3];
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) mma16816(acc[i][j], a[i], b[j]);
    }
    __syncthreads();
  }
  // accumulator (i, j): rows lane/4 and lane/4 + 8, columns 2 (lane%4) + 0, 1
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        int q = q0 + wm + i * 16 + lane / 4 + (c / 2) * 8;
        int n = n0 + wn + j * 8 + 2 * (lane % 4) + c % 2;
        if (q < q1 && n < g.N) put<UP>(g, q, n, acc[i][j][c]);
      }
}

// --- combine ---
// v1: grid (ceil(C / 256), T): thread -> out[t, c] = sum_j z[t K + j, c].
template <typename T>
__device__ void combine_v1(const T* z, T* out, int Tn, int C, int K) {
  int c = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
  if (c >= C) return;
  float s = 0.f;
  for (int j = 0; j < K; ++j) s += to_f(z[((size_t)t * K + j) * C + c]);
  from_f(out[(size_t)t * C + c], s);
}

// v2: as v1, 8 halves per thread with 16-byte loads (C % 8 == 0).
__device__ void combine_v2(const __half* z, __half* out, int Tn, int C,
                           int K) {
  int v = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
  if (v >= C / 8) return;
  float s[8] = {};
  for (int j = 0; j < K; ++j) {
    uint4 raw = load16(z + ((size_t)t * K + j) * C + (size_t)v * 8);
    const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) s[i] += __half2float(h[i]);
  }
  uint4 res;
  __half* o = reinterpret_cast<__half*>(&res);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = __float2half_rn(s[i]);
  *reinterpret_cast<uint4*>(out + (size_t)t * C + (size_t)v * 8) = res;
}

// ======================================================================
// v5: the layer rebuilt around one pipelined tensor-core tile (Tile5).
//   router_v3  x W3 on tensor cores (16 tokens a block, 64 experts a pass),
//              logits kept in shared memory, top-K as router_topk, and the
//              block's expert histogram bhist[b][e] written on the way out
//              (the sort's first half, so no separate count launch)
//   hist_v3    the same histogram from a given idx (experts() called with
//              its own routing, or E % 8 != 0 where router v3 does not run)
//   scatter_v3 grid nb (one block per 16 tokens): each block sums bhist over
//              the blocks before it (its ranks' base per expert), scans the
//              totals to offsets and tiles (block 0 stores them), ranks its
//              own RT K pairs stably and writes order. Spread over nb SMs,
//              no atomics, no single-block chain: the same order as v1/v2.
//   up/down_v5 BM x BN = 64 x 128 tile, BK = 32, a 3-stage cp.async ring
//              (one wait + one barrier per k-slab, the next slabs in
//              flight), 4 warps of 32 x 64; gathered A rows by pointer per
//              thread; epilogue through shared memory: 16-byte stores of
//              whole rows (h rows in sorted order, z rows at order[q]).
// Needs: fp16, C % 8 == 0 and G % 8 == 0 (16-byte cp.async), E % 8 == 0
// for router v3 (16-byte rows of w3); sm_80 (cp.async, ldmatrix, mma).
// ======================================================================

// One BM x BN tile of C = A B, A rows given by pointer (nullptr: a zero
// row), B (Kd x N) row-major with row stride ldb, fp32 accumulators in
// registers. ST-deep ring of [A BM x (BK + 8) | B BK x (BN + 8)] halves.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int ST_>
struct Tile5 {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
  static constexpr int ST = ST_, NW = (BM / WM) * (BN / WN), NT = NW * 32;
  static constexpr int FM = WM / 16, FN = WN / 8, LDA = BK + 8, LDB = BN + 8;
  static constexpr int STAGE = BM * LDA + BK * LDB;  // halves per stage
  static constexpr int SMEM = ST * STAGE * 2;        // bytes
  static constexpr int ACH = BM * BK / 8, BCH = BK * BN / 8;  // 16-B chunks
  static constexpr int AT = (ACH + NT - 1) / NT, BT = (BCH + NT - 1) / NT;
  static_assert(FN % 2 == 0, "B fragments are loaded two n8 tiles at a time");
};

template <class L>
__device__ __forceinline__ void tile5_load(__half* stage, const __half* const* ap,
                                           const bool* aok, const __half* b,
                                           int ldb, int n0, int N, int Kd,
                                           int k0, const __half* safe) {
  __half* As = stage;
  __half* Bs = stage + L::BM * L::LDA;
#pragma unroll
  for (int i = 0; i < L::AT; ++i) {
    int v = threadIdx.x + i * L::NT;
    if (L::ACH % L::NT == 0 || v < L::ACH) {
      int m = v / (L::BK / 8), kv = (v % (L::BK / 8)) * 8;
      bool ok = aok[i] && k0 + kv < Kd;
      cp_async16(As + m * L::LDA + kv, ok ? ap[i] + k0 + kv : safe, ok);
    }
  }
#pragma unroll
  for (int i = 0; i < L::BT; ++i) {
    int v = threadIdx.x + i * L::NT;
    if (L::BCH % L::NT == 0 || v < L::BCH) {
      int kk = v / (L::BN / 8), nv = (v % (L::BN / 8)) * 8;
      bool ok = k0 + kk < Kd && n0 + nv < N;
      cp_async16(Bs + kk * L::LDB + nv,
                 ok ? b + (size_t)(k0 + kk) * ldb + n0 + nv : safe, ok);
    }
  }
}

// acc = A[rows] . B[:, n0:n0+BN] over Kd. arow(m) gives row m's pointer
// (nullptr past the data); every thread calls it for the rows it loads.
// Leaves the ring drained and the block synchronised (smem reusable).
template <class L, class RowFn>
__device__ void tile5_mainloop(float (&acc)[L::FM][L::FN][4], __half* sm,
                               RowFn arow, const __half* b, int ldb, int n0,
                               int N, int Kd) {
  const __half* ap[L::AT];
  bool aok[L::AT];
#pragma unroll
  for (int i = 0; i < L::AT; ++i) {
    int v = threadIdx.x + i * L::NT;
    const __half* p = v < L::ACH ? arow(v / (L::BK / 8)) : nullptr;
    aok[i] = p != nullptr;
    ap[i] = p;
  }
  const __half* safe = b;  // a valid address for the zero-filling copies
#pragma unroll
  for (int i = 0; i < L::FM; ++i)
#pragma unroll
    for (int j = 0; j < L::FN; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;
  int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  int wm = warp / (L::BN / L::WN) * L::WM, wn = warp % (L::BN / L::WN) * L::WN;
  int nk = (Kd + L::BK - 1) / L::BK;
#pragma unroll
  for (int s = 0; s < L::ST - 1; ++s) {
    if (s < nk)
      tile5_load<L>(sm + s * L::STAGE, ap, aok, b, ldb, n0, N, Kd, s * L::BK,
                    safe);
    cp_async_commit();  // empty groups keep the count uniform
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<L::ST - 2>();  // slab kt has landed (this thread's part)
    __syncthreads();             // ...everyone's; slot kt-1 is free again
    int nxt = kt + L::ST - 1;
    if (nxt < nk)
      tile5_load<L>(sm + (nxt % L::ST) * L::STAGE, ap, aok, b, ldb, n0, N, Kd,
                    nxt * L::BK, safe);
    cp_async_commit();
    const __half* As = sm + (kt % L::ST) * L::STAGE;
    const __half* Bs = As + L::BM * L::LDA;
#pragma unroll
    for (int kk = 0; kk < L::BK; kk += 16) {
      unsigned a[L::FM][4], bf[L::FN][2];
      int r = lane % 16, c8 = (lane / 16) * 8;
#pragma unroll
      for (int i = 0; i < L::FM; ++i)
        ldsm_x4(a[i], As + (wm + i * 16 + r) * L::LDA + kk + c8);
#pragma unroll
      for (int j = 0; j < L::FN; j += 2) {
        unsigned t4[4];
        ldsm_x4_t(t4, Bs + (kk + r) * L::LDB + wn + j * 8 + c8);
        bf[j][0] = t4[0];
        bf[j][1] = t4[1];
        bf[j + 1][0] = t4[2];
        bf[j + 1][1] = t4[3];
      }
#pragma unroll
      for (int i = 0; i < L::FM; ++i)
#pragma unroll
        for (int j = 0; j < L::FN; ++j) mma16816(acc[i][j], a[i], bf[j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();
}

// Accumulator element c of fragment (i, j): tile row and column.
template <class L>
__device__ __forceinline__ int frag_row(int i, int c) {
  int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  return warp / (L::BN / L::WN) * L::WM + i * 16 + lane / 4 + (c / 2) * 8;
}
template <class L>
__device__ __forceinline__ int frag_col(int j, int c) {
  int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  return warp % (L::BN / L::WN) * L::WN + j * 8 + 2 * (lane % 4) + c % 2;
}

// The tile's accumulators into shared memory as fp16 (row stride ldc), each
// value through f(row, value) first: the up GEMM's gate and ReLU, or nothing
// (down). The epilogues then store whole 16-byte rows from there.
template <class L, class F>
__device__ __forceinline__ void frags_to_smem(float (&acc)[L::FM][L::FN][4],
                                              __half* cs, int ldc, F f) {
#pragma unroll
  for (int i = 0; i < L::FM; ++i)
#pragma unroll
    for (int j = 0; j < L::FN; ++j)
#pragma unroll
      for (int c = 0; c < 4; c += 2) {
        int m = frag_row<L>(i, c), n = frag_col<L>(j, c);
        __half2 h2;
        h2.x = __float2half_rn(f(m, acc[i][j][c]));
        h2.y = __float2half_rn(f(m, acc[i][j][c + 1]));
        *reinterpret_cast<__half2*>(cs + m * ldc + n) = h2;
      }
}

// --- router v3 ---
#define R3T 16   // tokens per block (one m16 tile): the histogram's chunk
#define R3E 64   // experts per pass (4 warps x 16)
typedef Tile5<R3T, R3E, 32, 16, 16, 4> RouterTile;

__device__ void router_v3(const __half* x, const __half* w3, int* idx,
                          float* gate, int* bhist, int Tn, int C, int E,
                          int K) {
  __shared__ __align__(16) __half sm[RouterTile::SMEM / 2];
  __shared__ float logit[RT][MAX_E];  // RT == R3T rows
  __shared__ int hist[MAX_E];
  int t0 = blockIdx.x * R3T;
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  auto arow = [&](int m) -> const __half* {
    return t0 + m < Tn ? x + (size_t)(t0 + m) * C : nullptr;
  };
  for (int e0 = 0; e0 < E; e0 += R3E) {
    float acc[RouterTile::FM][RouterTile::FN][4];
    tile5_mainloop<RouterTile>(acc, sm, arow, w3, E, e0, E, C);
#pragma unroll
    for (int j = 0; j < RouterTile::FN; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        int e = e0 + frag_col<RouterTile>(j, c);
        if (e < E) logit[frag_row<RouterTile>(0, c)][e] = acc[0][j][c];
      }
  }
  __syncthreads();
  router_topk(logit, t0, Tn, E, K, idx, gate);
  __syncthreads();  // idx of this block written (global, same block)
  int n = min(R3T, Tn - t0) * K;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    atomicAdd(&hist[idx[(size_t)t0 * K + i]], 1);  // integers: order-free
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    bhist[(size_t)blockIdx.x * E + e] = hist[e];
}

// --- sort v3: hist (or router v3) + scatter ---
// Block b owns pairs [b R3T K, (b + 1) R3T K): tokens b R3T ...
__device__ void hist_v3(const int* idx, int P, int E, int K, int* bhist) {
  __shared__ int hist[MAX_E];
  int ch = R3T * K, p0 = blockIdx.x * ch, p1 = min(P, p0 + ch);
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  for (int p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
    int e = idx[p];
    if (e >= 0 && e < E) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    bhist[(size_t)blockIdx.x * E + e] = hist[e];
}

#define S3P 8  // scatter v3: partial sums per expert (blockDim / S3P lanes)
// ticket (T, nslice): down v7's tickets, zeroed here for this block's tokens
// (nslice = 0 for v5 and v6, which take none).
__device__ void scatter_v3(const int* idx, const int* bhist, int P, int E,
                           int K, int nb, int bm, int* counts, int* offsets,
                           int* tiles, int* order, int bm2, int* tiles2,
                           int* ticket, int nslice) {
  __shared__ int before_p[S3P][MAX_E], total_p[S3P][MAX_E];
  __shared__ int base[MAX_E];
  __shared__ int eid[R3T * MAX_E];  // this block's pairs' experts (K <= E)
  const unsigned all = 0xffffffffu;
  int b = blockIdx.x, tid = threadIdx.x, lane = tid & 31;
  int ch = R3T * K, p0 = b * ch, p1 = min(P, p0 + ch);
  for (int p = p0 + tid; p < p1; p += blockDim.x) eid[p - p0] = idx[p];
  for (int i = tid; i < R3T * nslice; i += blockDim.x) {
    int t = b * R3T + i / nslice;
    if (t < P / K) ticket[(size_t)t * nslice + i % nslice] = 0;
  }
  for (int i = tid; i < E * S3P; i += blockDim.x) {
    int e = i % E, part = i / E, bef = 0, tot = 0;
    for (int r = part; r < nb; r += S3P) {
      int h = bhist[(size_t)r * E + e];
      tot += h;
      bef += r < b ? h : 0;
    }
    before_p[part][e] = bef;
    total_p[part][e] = tot;
  }
  __syncthreads();
  for (int e = tid; e < E; e += blockDim.x) {
    int bef = 0, tot = 0;
#pragma unroll
    for (int s = 0; s < S3P; ++s) {
      bef += before_p[s][e];
      tot += total_p[s][e];
    }
    before_p[0][e] = bef;
    total_p[0][e] = tot;
  }
  __syncthreads();
  if (tid < 32) {  // lane l scans experts [e0, e1), then a warp scan
    int n = (E + 31) / 32, e0 = min(E, lane * n), e1 = min(E, e0 + n);
    int sc = 0, st = 0, s2 = 0;
    for (int e = e0; e < e1; ++e) {
      sc += total_p[0][e];
      st += (total_p[0][e] + bm - 1) / bm;
      s2 += (total_p[0][e] + bm2 - 1) / bm2;
    }
    int ic = sc, it = st, i2 = s2;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int x = __shfl_up_sync(all, ic, o), y = __shfl_up_sync(all, it, o);
      int z = __shfl_up_sync(all, i2, o);
      if (lane >= o) { ic += x; it += y; i2 += z; }
    }
    int off = ic - sc, til = it - st, ti2 = i2 - s2;
    for (int e = e0; e < e1; ++e) {
      int c = total_p[0][e];
      if (b == 0) {
        counts[e] = c;
        offsets[e] = off;
        tiles[e] = til;
        tiles2[e] = ti2;
      }
      base[e] = off + before_p[0][e];
      off += c;
      til += (c + bm - 1) / bm;
      ti2 += (c + bm2 - 1) / bm2;
    }
    if (b == 0 && lane == 31) { offsets[E] = ic; tiles[E] = it; tiles2[E] = i2; }
  }
  __syncthreads();
  for (int i = tid; i < p1 - p0; i += blockDim.x) {
    int e = eid[i];
    if (e < 0 || e >= E) continue;  // not counted either: never stored
    int rank = 0;
    for (int j = 0; j < i; ++j) rank += eid[j] == e;
    order[base[e] + rank] = p0 + i;
  }
}

// --- up / down v5 ---
typedef Tile5<64, 128, 32, 32, 64, 3> GemmTile5;

template <bool UP>
__device__ void gemm_v5(Gemm<__half> g) {
  typedef GemmTile5 L;
  __shared__ __align__(16) __half sm[L::SMEM / 2];
  __shared__ int rowp[L::BM];     // pair id p = order[q] of tile row m
  __shared__ float rowg[L::BM];   // its gate (up)
  int tile = blockIdx.x, e = segment_of(g.tiles, g.E, tile);
  if (e < 0) return;
  int q0 = g.offsets[e] + (tile - g.tiles[e]) * L::BM, q1 = g.offsets[e + 1];
  int n0 = blockIdx.y * L::BN;
  for (int m = threadIdx.x; m < L::BM; m += L::NT) {
    int q = q0 + m;
    int p = q < q1 ? g.order[q] : -1;
    rowp[m] = p;
    if (UP) rowg[m] = p >= 0 ? g.gate[p] : 0.f;
  }
  __syncthreads();
  auto arow = [&](int m) -> const __half* {
    int p = rowp[m];
    if (p < 0) return nullptr;
    return g.a + (UP ? (size_t)(p / g.K) : (size_t)(q0 + m)) * g.Kd;
  };
  float acc[L::FM][L::FN][4];
  tile5_mainloop<L>(acc, sm, arow, g.w + (size_t)e * g.Kd * g.N, g.N, n0, g.N,
                    g.Kd);
  // epilogue: the tile in shared memory (BM x (BN + 8) halves), then rows
  __half* cs = sm;
  constexpr int LDC = L::BN + 8;
  frags_to_smem<L>(acc, cs, LDC, [&](int m, float v) {
    return UP ? rowg[m] * fmaxf(v, 0.f) : v;
  });
  __syncthreads();
  for (int v = threadIdx.x; v < L::BM * L::BN / 8; v += L::NT) {
    int m = v / (L::BN / 8), nv = (v % (L::BN / 8)) * 8, p = rowp[m];
    if (p < 0 || n0 + nv >= g.N) continue;
    size_t row = UP ? (size_t)(q0 + m) : (size_t)p;
    *reinterpret_cast<uint4*>(g.out + row * g.N + n0 + nv) =
        *reinterpret_cast<const uint4*>(cs + m * LDC + nv);
  }
}

// ======================================================================
// v6: what the v5 profile asked for (notes, "v5 measured").
//   Tile6      Tile5's ring with a per-thread copy plan computed once (the
//              row pointers, k offsets and shared-memory offsets of the
//              chunks each thread copies), so a slab costs its cp.async and
//              one compare each instead of ~20 index instructions per chunk;
//              the ring in dynamic shared memory (deeper rings past 48 KB).
//   router_v4  router v3 with 128-deep slabs (8 barrier rounds at C = 1024
//              instead of 32): the per-slab chain was its time.
//   up_v6      64 x 128 x 32 tiles, a 4-deep ring (3 slabs in flight).
//   down_v6    B-resident: a block owns one 128-column slice of w2[e]
//              (G x 128, loaded once) and walks up to 4 row tiles of 64 of
//              expert e's rows (a chunk of 256), streaming the h tiles
//              through a 3-deep ring and storing each z tile while the next
//              loads. w2 is read from L2 once per chunk, not once per tile.
//              Needs G <= 256 (B and the ring in shared memory).
// ======================================================================

template <int BM_, int BN_, int BK_, int WM_, int WN_, int ST_>
struct Tile6 : Tile5<BM_, BN_, BK_, WM_, WN_, ST_> {};

template <class L>
struct Plan6 {
  const __half* a[L::AT];  // row + kv; nullptr: a zero row (or no chunk)
  int akv[L::AT];
  unsigned as[L::AT];  // byte offset in a stage
  const __half* b[L::BT];  // b + kk ldb + n0 + nv; nullptr: past N
  int bkk[L::BT];
  unsigned bs[L::BT];
};

template <class L, class RowFn>
__device__ __forceinline__ void plan6(Plan6<L>& pl, RowFn arow,
                                      const __half* b, int ldb, int n0,
                                      int N) {
#pragma unroll
  for (int i = 0; i < L::AT; ++i) {
    int v = threadIdx.x + i * L::NT;
    int m = v / (L::BK / 8), kv = (v % (L::BK / 8)) * 8;
    const __half* p = v < L::ACH ? arow(m) : nullptr;
    pl.a[i] = p ? p + kv : nullptr;
    pl.akv[i] = v < L::ACH ? kv : 1 << 30;
    pl.as[i] = (m * L::LDA + kv) * 2;
  }
#pragma unroll
  for (int i = 0; i < L::BT; ++i) {
    int v = threadIdx.x + i * L::NT;
    int kk = v / (L::BN / 8), nv = (v % (L::BN / 8)) * 8;
    bool ok = v < L::BCH && n0 + nv < N;
    pl.b[i] = ok ? b + (size_t)kk * ldb + n0 + nv : nullptr;
    pl.bkk[i] = ok ? kk : 1 << 30;
    pl.bs[i] = (L::BM * L::LDA + kk * L::LDB + nv) * 2;
  }
}

template <class L>
__device__ __forceinline__ void load6(const Plan6<L>& pl, unsigned stage,
                                      int k0, int Kd, size_t kstep,
                                      const __half* safe) {
#pragma unroll
  for (int i = 0; i < L::AT; ++i) {
    if (L::ACH % L::NT == 0 || threadIdx.x + i * L::NT < L::ACH) {
      bool ok = pl.a[i] != nullptr && k0 + pl.akv[i] < Kd;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                       stage + pl.as[i]),
                   "l"(ok ? pl.a[i] + k0 : safe), "r"(ok ? 16 : 0));
    }
  }
#pragma unroll
  for (int i = 0; i < L::BT; ++i) {
    if (L::BCH % L::NT == 0 || threadIdx.x + i * L::NT < L::BCH) {
      bool ok = pl.b[i] != nullptr && k0 + pl.bkk[i] < Kd;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                       stage + pl.bs[i]),
                   "l"(ok ? pl.b[i] + kstep : safe), "r"(ok ? 16 : 0));
    }
  }
}

// One BK slab of MMAs from a stage (A at As, B at Bs, halves).
template <class L>
__device__ __forceinline__ void slab_mma(float (&acc)[L::FM][L::FN][4],
                                         const __half* As, int lda,
                                         const __half* Bs, int ldb, int kb,
                                         int ke) {
  int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  int wm = warp / (L::BN / L::WN) * L::WM, wn = warp % (L::BN / L::WN) * L::WN;
  int r = lane % 16, c8 = (lane / 16) * 8;
#pragma unroll 4
  for (int kk = kb; kk < ke; kk += 16) {
    unsigned a[L::FM][4], bf[L::FN][2];
#pragma unroll
    for (int i = 0; i < L::FM; ++i)
      ldsm_x4(a[i], As + (wm + i * 16 + r) * lda + kk + c8);
#pragma unroll
    for (int j = 0; j < L::FN; j += 2) {
      unsigned t4[4];
      ldsm_x4_t(t4, Bs + (kk + r) * ldb + wn + j * 8 + c8);
      bf[j][0] = t4[0];
      bf[j][1] = t4[1];
      bf[j + 1][0] = t4[2];
      bf[j + 1][1] = t4[3];
    }
#pragma unroll
    for (int i = 0; i < L::FM; ++i)
#pragma unroll
      for (int j = 0; j < L::FN; ++j) mma16816(acc[i][j], a[i], bf[j]);
  }
}

// Tile5's mainloop with the plan; sm: the ring (ST stages), 16-byte aligned.
template <class L, class RowFn>
__device__ void tile6_mainloop(float (&acc)[L::FM][L::FN][4], __half* sm,
                               RowFn arow, const __half* b, int ldb, int n0,
                               int N, int Kd) {
  Plan6<L> pl;
  plan6<L>(pl, arow, b, ldb, n0, N);
#pragma unroll
  for (int i = 0; i < L::FM; ++i)
#pragma unroll
    for (int j = 0; j < L::FN; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;
  unsigned base = smem_u32(sm);
  int nk = (Kd + L::BK - 1) / L::BK;
#pragma unroll
  for (int s = 0; s < L::ST - 1; ++s) {
    if (s < nk)
      load6<L>(pl, base + s * L::STAGE * 2, s * L::BK, Kd,
               (size_t)s * L::BK * ldb, b);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<L::ST - 2>();
    __syncthreads();
    int nxt = kt + L::ST - 1;
    if (nxt < nk)
      load6<L>(pl, base + (nxt % L::ST) * L::STAGE * 2, nxt * L::BK, Kd,
               (size_t)nxt * L::BK * ldb, b);
    cp_async_commit();
    const __half* As = sm + (kt % L::ST) * L::STAGE;
    slab_mma<L>(acc, As, L::LDA, As + L::BM * L::LDA, L::LDB, 0, L::BK);
  }
  cp_async_wait<0>();
  __syncthreads();
}

// --- router v4 ---
typedef Tile6<R3T, R3E, 128, 16, 16, 3> RouterTile6;

__device__ void router_v4(const __half* x, const __half* w3, int* idx,
                          float* gate, int* bhist, int Tn, int C, int E,
                          int K) {
  extern __shared__ __align__(16) __half dyn[];  // RouterTile6::SMEM bytes
  __shared__ float logit[RT][MAX_E];
  __shared__ int hist[MAX_E];
  int t0 = blockIdx.x * R3T;
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  auto arow = [&](int m) -> const __half* {
    return t0 + m < Tn ? x + (size_t)(t0 + m) * C : nullptr;
  };
  for (int e0 = 0; e0 < E; e0 += R3E) {
    float acc[RouterTile6::FM][RouterTile6::FN][4];
    tile6_mainloop<RouterTile6>(acc, dyn, arow, w3, E, e0, E, C);
#pragma unroll
    for (int j = 0; j < RouterTile6::FN; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        int e = e0 + frag_col<RouterTile6>(j, c);
        if (e < E) logit[frag_row<RouterTile6>(0, c)][e] = acc[0][j][c];
      }
  }
  __syncthreads();
  router_topk(logit, t0, Tn, E, K, idx, gate);
  __syncthreads();
  int n = min(R3T, Tn - t0) * K;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    atomicAdd(&hist[idx[(size_t)t0 * K + i]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    bhist[(size_t)blockIdx.x * E + e] = hist[e];
}

// --- up v6 ---
// h = gate relu(x[order / K] w1[e]) on one BM x BN tile L (v7 takes it with
// a larger tile): the Tile6 mainloop, then the tile through shared memory
// and out in 16-byte rows.
typedef Tile6<64, 128, 32, 32, 64, 4> UpTile6;

template <class L>
__device__ void up_tile(Gemm<__half> g) {
  extern __shared__ __align__(16) __half dyn[];  // L::SMEM bytes
  __shared__ int rowp[L::BM];
  __shared__ float rowg[L::BM];
  int tile = blockIdx.x, e = segment_of(g.tiles, g.E, tile);
  if (e < 0) return;
  int q0 = g.offsets[e] + (tile - g.tiles[e]) * L::BM, q1 = g.offsets[e + 1];
  int n0 = blockIdx.y * L::BN;
  for (int m = threadIdx.x; m < L::BM; m += L::NT) {
    int q = q0 + m, p = q < q1 ? g.order[q] : -1;
    rowp[m] = p;
    rowg[m] = p >= 0 ? g.gate[p] : 0.f;
  }
  __syncthreads();
  auto arow = [&](int m) -> const __half* {
    int p = rowp[m];
    return p < 0 ? nullptr : g.a + (size_t)(p / g.K) * g.Kd;
  };
  float acc[L::FM][L::FN][4];
  tile6_mainloop<L>(acc, dyn, arow, g.w + (size_t)e * g.Kd * g.N, g.N, n0,
                    g.N, g.Kd);
  __half* cs = dyn;
  constexpr int LDC = L::BN + 8;
  frags_to_smem<L>(acc, cs, LDC,
                   [&](int m, float v) { return rowg[m] * fmaxf(v, 0.f); });
  __syncthreads();
  for (int v = threadIdx.x; v < L::BM * L::BN / 8; v += L::NT) {
    int m = v / (L::BN / 8), nv = (v % (L::BN / 8)) * 8;
    if (rowp[m] < 0 || n0 + nv >= g.N) continue;
    *reinterpret_cast<uint4*>(g.out + (size_t)(q0 + m) * g.N + n0 + nv) =
        *reinterpret_cast<const uint4*>(cs + m * LDC + nv);
  }
}

// --- down v6 ---
#define D6R 4    // row tiles per chunk (a chunk: D6R * 64 rows of one expert)
#define D6ST 3   // ring depth (h tiles)
#define D6GMAX 256
typedef Tile5<64, 128, 16, 32, 64, 1> DownTile6;  // warp layout only

// dynamic shared memory: Bs [GP][BN + 8] | ring D6ST x [64][GP + 8] | Cs [64][BN + 8]
// with GP = G rounded up to 16 (the MMA's k step), rows and columns past G zero.
__device__ void down_v6(Gemm<__half> g, const int* ctiles) {
  typedef DownTile6 L;
  extern __shared__ __align__(16) __half dyn[];
  const int G = g.Kd, GP = (G + 15) / 16 * 16, LDA = GP + 8;
  constexpr int LDB = L::BN + 8, LDC = L::BN + 8;
  __half* Bs = dyn;
  __half* ring = Bs + GP * LDB;
  __half* Cs = ring + D6ST * L::BM * LDA;
  int chunk = blockIdx.x, e = segment_of(ctiles, g.E, chunk);
  if (e < 0) return;
  int c0 = g.offsets[e] + (chunk - ctiles[e]) * (D6R * L::BM);
  int q1 = min(g.offsets[e + 1], c0 + D6R * L::BM);
  int nt = (q1 - c0 + L::BM - 1) / L::BM;  // row tiles in this chunk (>= 1)
  int n0 = blockIdx.y * L::BN;
  const __half* w = g.w + (size_t)e * G * g.N;
  unsigned bbase = smem_u32(Bs), rbase = smem_u32(ring);
  // B: the G x 128 slice, once (joins the first group)
  for (int v = threadIdx.x; v < GP * (L::BN / 8); v += L::NT) {
    int k = v / (L::BN / 8), nv = (v % (L::BN / 8)) * 8;
    bool ok = k < G && n0 + nv < g.N;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     bbase + (k * LDB + nv) * 2),
                 "l"(ok ? w + (size_t)k * g.N + n0 + nv : w), "r"(ok ? 16 : 0));
  }
  auto load_a = [&](int t) {  // h rows of row tile t into ring slot t % D6ST
    unsigned st = rbase + (t % D6ST) * L::BM * LDA * 2;
    int qa = c0 + t * L::BM;
    for (int v = threadIdx.x; v < L::BM * (GP / 8); v += L::NT) {
      int m = v / (GP / 8), kv = (v % (GP / 8)) * 8;
      bool ok = qa + m < q1 && kv < G;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                       st + (m * LDA + kv) * 2),
                   "l"(ok ? g.a + (size_t)(qa + m) * G + kv : g.a),
                   "r"(ok ? 16 : 0));
    }
  };
#pragma unroll
  for (int s = 0; s < D6ST - 1; ++s) {
    if (s < nt) load_a(s);
    cp_async_commit();
  }
  for (int t = 0; t < nt; ++t) {
    cp_async_wait<D6ST - 2>();  // tile t (and B) landed
    __syncthreads();            // ...for all; slot t-1 and Cs are free
    if (t + D6ST - 1 < nt) load_a(t + D6ST - 1);
    cp_async_commit();
    float acc[L::FM][L::FN][4];
#pragma unroll
    for (int i = 0; i < L::FM; ++i)
#pragma unroll
      for (int j = 0; j < L::FN; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;
    slab_mma<L>(acc, ring + (t % D6ST) * L::BM * LDA, LDA, Bs, LDB, 0, GP);
    frags_to_smem<L>(acc, Cs, LDC, [](int, float v) { return v; });
    __syncthreads();
    int qa = c0 + t * L::BM;
    for (int v = threadIdx.x; v < L::BM * L::BN / 8; v += L::NT) {
      int m = v / (L::BN / 8), nv = (v % (L::BN / 8)) * 8;
      if (qa + m >= q1 || n0 + nv >= g.N) continue;
      int p = g.order[qa + m];
      *reinterpret_cast<uint4*>(g.out + (size_t)p * g.N + n0 + nv) =
          *reinterpret_cast<const uint4*>(Cs + m * LDC + nv);
    }
  }
  cp_async_wait<0>();
}

// ======================================================================
// v7: what the v6 profile asked for (notes, "v6 measured").
//   Tile7      128 x 128 x 32, 8 warps of 32 x 64 (v5's warp tile), Tile6's
//              4-deep ring and copy plan. Each B slab (w1[e] or w2[e]) now
//              feeds 128 rows, not 64: the L2 -> SM bytes of up fall from
//              ~110 to ~71 MB and of down from ~109 to ~71 MB (T = 4096,
//              E = 32), the traffic v6's up ran at 64 % of L2 throughput on.
//   up_v7      up_tile<Tile7>.
//   down_v7    z = h w2[e] on Tile7, and the combine fused into its
//              epilogue, deterministically: once its z rows are stored, the
//              block takes one ticket per row (an integer atomic on the
//              row's token and 128-column slice); the block that takes a
//              token's K-th ticket sums that token's K z rows of the slice in
//              slot order j = 0..K-1 (float32 from fp16, one rounding: the
//              bits of combine_v2), reading them from L2, and writes out.
//              One launch fewer, and z is read back while it is hot. The
//              tickets are zeroed by scatter_v3 for each layer and reset by
//              the block that completes them (so down alone can be replayed).
// ======================================================================
typedef Tile6<128, 128, 32, 32, 64, 4> Tile7;

// g.out is z (P, C); y (T, C) the layer output; ticket (T, gridDim.y).
__device__ void down_v7(Gemm<__half> g, int* ticket, __half* y) {
  typedef Tile7 L;
  extern __shared__ __align__(16) __half dyn[];  // L::SMEM bytes
  __shared__ int rowp[L::BM];  // pair id of tile row m (-1: past the segment)
  __shared__ int done[L::BM];  // tokens whose slice this block completes
  __shared__ int ndone;
  int tile = blockIdx.x, e = segment_of(g.tiles, g.E, tile);
  if (e < 0) return;
  int q0 = g.offsets[e] + (tile - g.tiles[e]) * L::BM, q1 = g.offsets[e + 1];
  int n0 = blockIdx.y * L::BN;
  for (int m = threadIdx.x; m < L::BM; m += L::NT)
    rowp[m] = q0 + m < q1 ? g.order[q0 + m] : -1;
  if (threadIdx.x == 0) ndone = 0;
  __syncthreads();
  auto arow = [&](int m) -> const __half* {
    return rowp[m] < 0 ? nullptr : g.a + (size_t)(q0 + m) * g.Kd;
  };
  float acc[L::FM][L::FN][4];
  tile6_mainloop<L>(acc, dyn, arow, g.w + (size_t)e * g.Kd * g.N, g.N, n0,
                    g.N, g.Kd);
  __half* cs = dyn;  // the ring is drained: the z tile goes through it
  constexpr int LDC = L::BN + 8;
  frags_to_smem<L>(acc, cs, LDC, [](int, float v) { return v; });
  __syncthreads();
  for (int v = threadIdx.x; v < L::BM * L::BN / 8; v += L::NT) {
    int m = v / (L::BN / 8), nv = (v % (L::BN / 8)) * 8, p = rowp[m];
    if (p < 0 || n0 + nv >= g.N) continue;
    *reinterpret_cast<uint4*>(g.out + (size_t)p * g.N + n0 + nv) =
        *reinterpret_cast<const uint4*>(cs + m * LDC + nv);
  }
  __threadfence();  // this block's z rows are visible before its tickets
  __syncthreads();
  if (threadIdx.x < L::BM && rowp[threadIdx.x] >= 0) {
    int t = rowp[threadIdx.x] / g.K;
    int* tk = ticket + (size_t)t * gridDim.y + blockIdx.y;
    if (atomicAdd(tk, 1) == g.K - 1) {  // integers: order-free
      *tk = 0;  // every ticket of (t, slice) taken: ready for the next layer
      done[atomicAdd(&ndone, 1)] = t;
    }
  }
  __syncthreads();
  int nd = ndone;
  if (nd == 0) return;
  __threadfence();  // ...and the other blocks' rows before we read them
  for (int v = threadIdx.x; v < nd * (L::BN / 8); v += L::NT) {
    int t = done[v / (L::BN / 8)], n = n0 + (v % (L::BN / 8)) * 8;
    if (n >= g.N) continue;
    float s[8] = {};
    for (int j = 0; j < g.K; ++j) {  // slot order: combine_v2's sum
      uint4 raw = __ldcg(reinterpret_cast<const uint4*>(
          g.out + ((size_t)t * g.K + j) * g.N + n));
      const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) s[i] += __half2float(h[i]);
    }
    uint4 res;
    __half* o = reinterpret_cast<__half*>(&res);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = __float2half_rn(s[i]);
    *reinterpret_cast<uint4*>(y + (size_t)t * g.N + n) = res;
  }
}

// ======================================================================
// router v5: x W3 with no shared-memory ring and no barrier per slab (v3
// and v4 were that chain). A block of 8 warps takes RT = 16 tokens; warp w
// takes a k-range of C and loads its mma.sync fragments straight from
// global memory, 16 bytes a load: lane l reads k = k0 + 8 (l % 4) .. + 7 of
// token rows l / 4 and l / 4 + 8 and of w3t's row (expert 8 j + l / 4; w3t is
// W3 transposed, (E, C)). The first four halves are one m16n8k16's k slots
// 2 (l % 4) + {0, 1} and 8 + 2 (l % 4) + {0, 1}, the last four a second's: A
// and B agree on which k each slot holds, and the sum over k does not care
// about their order. Four 32-wide chunks of loads are in flight per warp.
// The 8 partial logit tiles are summed in warp order (deterministic), then
// v2's top-K and v3's block histogram.
// ======================================================================
#define R5W 8  // router v5: warps per block (each a k-range of C)

__device__ __forceinline__ uint4 ldg16_or0(const __half* p, bool ok) {
  return ok ? load16(p) : make_uint4(0, 0, 0, 0);
}

__device__ void router_v5(const __half* x, const __half* w3t, int* idx,
                          float* gate, int* bhist, int Tn, int C, int E,
                          int K) {
  __shared__ float part[R5W][RT][33];
  __shared__ float logit[RT][MAX_E];
  __shared__ int hist[MAX_E];
  const int tid = threadIdx.x, w = tid / 32, l = tid % 32, g = l / 4;
  const int t0 = blockIdx.x * RT;
  for (int e = tid; e < E; e += blockDim.x) hist[e] = 0;
  const int nch = (C + 31) / 32, per = (nch + R5W - 1) / R5W;
  const int c0 = w * per, c1 = min(c0 + per, nch);
  const int ra = t0 + g, rb = t0 + g + 8;
  const bool oka = ra < Tn, okb = rb < Tn;
  const __half* xa = x + (size_t)min(ra, Tn - 1) * C;
  const __half* xb = x + (size_t)min(rb, Tn - 1) * C;
  for (int e0 = 0; e0 < E; e0 += 32) {
    float acc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
#pragma unroll 1
    for (int ch = c0; ch < c1; ch += 4) {
      uint4 A[4], B[4], W[4][4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        int k = (ch + u) * 32 + 8 * (l % 4);
        bool kin = ch + u < c1 && k < C;
        A[u] = ldg16_or0(xa + k, kin && oka);
        B[u] = ldg16_or0(xb + k, kin && okb);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          int n = e0 + 8 * j + g;
          W[u][j] =
              ldg16_or0(w3t + (size_t)min(n, E - 1) * C + k, kin && n < E);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          unsigned a0[4] = {A[u].x, B[u].x, A[u].y, B[u].y};
          unsigned b0[2] = {W[u][j].x, W[u][j].y};
          mma16816(acc[j], a0, b0);
          unsigned a1[4] = {A[u].z, B[u].z, A[u].w, B[u].w};
          unsigned b1[2] = {W[u][j].z, W[u][j].w};
          mma16816(acc[j], a1, b1);
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int c = 8 * j + 2 * (l % 4);
      part[w][g][c] = acc[j][0];
      part[w][g][c + 1] = acc[j][1];
      part[w][g + 8][c] = acc[j][2];
      part[w][g + 8][c + 1] = acc[j][3];
    }
    __syncthreads();
    for (int i = tid; i < RT * 32; i += blockDim.x) {
      int r = i / 32, c = i % 32;
      if (e0 + c >= E) continue;
      float s = 0.f;
#pragma unroll
      for (int v = 0; v < R5W; ++v) s += part[v][r][c];
      logit[r][e0 + c] = s;
    }
    __syncthreads();
  }
  router_topk(logit, t0, Tn, E, K, idx, gate);
  __syncthreads();  // idx of this block written (global, same block)
  int n = min(RT, Tn - t0) * K;
  for (int i = tid; i < n; i += blockDim.x)
    atomicAdd(&hist[idx[(size_t)t0 * K + i]], 1);  // integers: order-free
  __syncthreads();
  for (int e = tid; e < E; e += blockDim.x)
    bhist[(size_t)blockIdx.x * E + e] = hist[e];
}

// ======================================================================
// v8: the grouped GEMMs on wgmma (sm_90a). What v5-v7's profiles asked for:
// no ldmatrix and no per-warp MMA stream, so the issue slots are free and a
// warpgroup's 64 x 128 x 64 slab is four instructions that run while the
// warps go on to the next barrier and the next copies.
//   weights    K-major (w1t (E, G, C), w2t (E, C, G): torch.nn.Linear's layout,
//              made once by gpu/ffn_approx.py::kmajor_weights), so A and B
//              are both rows of K: one shared-memory layout and descriptor.
//   tile       BM = 128 rows (two consumer warpgroups of 64) x BN = 128,
//              BK = 64 (one 128-byte swizzle row); a block walks CT column
//              tiles of its row tile (up: N = G, one tile; down: N = C).
//   ring       ST8 stages of A and B (32 KB each) filled by cp.async into the
//              128-byte swizzle (16-byte chunk c of row r at c ^ (r % 8));
//              gathered rows (up: x[order / K]) are why it is not TMA.
//   pipeline   slab s: wait for its copies, fence them to the async proxy,
//              wait for the wgmma of slab s - 2 (s - 1 may still run), one
//              barrier, issue slab s's four wgmma, then the copies of slab
//              s + ST8 - 2 into the stage slab s - 2 used.
//   epilogue   registers -> global (up: gate relu, rows q; down: rows order[q])
//              as half2 stores; the combine stays a launch of its own (v7's
//              fused combine saved nothing).
// ======================================================================
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int BM8 = 128, BN8 = 128, BK8 = 64, ST8 = 6;
constexpr int STAGE8 = (BM8 + BN8) * BK8 * 2;  // bytes: A then B
// dynamic shared memory: ST8 * STAGE8 + 1024 (the alignment), gpu/ffn_approx.py
// GEMM8_SMEM

// The copies of one slab: thread t copies 16-byte chunk t % 8 of rows
// t / 8 + 32 i (i < 4) of A and of B; rows past the tile, and chunks past Kd,
// are zero-filled (src-size 0 from a valid address).
struct Plan8 {
  const __half* a[4];
  const __half* b[4];
  unsigned off[4];  // byte offset of the chunk in A (and in B, + BM8 * 128)
  int kc;           // the chunk's first k
};

__device__ __forceinline__ void load8(const Plan8& pl, unsigned stage, int k0,
                                      int Kd, const __half* safe) {
  bool kin = k0 + pl.kc < Kd;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    bool ok = kin && pl.a[i] != nullptr;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     stage + pl.off[i]),
                 "l"(ok ? pl.a[i] + k0 : safe), "r"(ok ? 16 : 0));
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    bool ok = kin && pl.b[i] != nullptr;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     stage + BM8 * 128 + pl.off[i]),
                 "l"(ok ? pl.b[i] + k0 : safe), "r"(ok ? 16 : 0));
  }
}

// --- shared by v8 and v10 ---
// rowp[m] = the pair of tile row m (order[q0 + m], or -1 past the expert's
// rows), rowg[m] its gate (up); the caller syncs.
template <bool UP>
__device__ __forceinline__ void rows8(const Gemm<__half>& g, int q0, int q1,
                                      int* rowp, float* rowg) {
  for (int m = threadIdx.x; m < BM8; m += 256) {
    int q = q0 + m, p = q < q1 ? g.order[q] : -1;
    rowp[m] = p;
    if (UP) rowg[m] = p >= 0 ? g.gate[p] : 0.f;
  }
}
// The A row of pair p at tile row r, from its chunk's first k (nullptr: none).
template <bool UP>
__device__ __forceinline__ const __half* arow8(const Gemm<__half>& g, int p,
                                               int q0, int r, int kc) {
  return p < 0 ? nullptr
               : g.a + (UP ? (size_t)(p / g.K) : (size_t)(q0 + r)) * g.Kd + kc;
}
// One 128 x 128 x 64 slab from the stage at st: this warpgroup's 64 rows of A
// and all of B, four wgmma (+32 bytes = +2 in the start field per k-step of
// 16), committed as one group; the first k-step of a tile overwrites acc.
__device__ __forceinline__ void slab8(float (&acc)[64], unsigned st, int wg,
                                      bool first) {
  const unsigned long long da = wgmma_desc_sw128(st + wg * 64 * 128);
  const unsigned long long db = wgmma_desc_sw128(st + BM8 * 128);
  wgmma_fence();
#pragma unroll
  for (int k = 0; k < BK8 / 16; ++k)
    wgmma_m64n128k16(acc, da + 2 * k, db + 2 * k, !first || k > 0);
  wgmma_commit();
}

// g.w is K-major here: expert e's N x Kd matrix at g.w + e N Kd. grid.y
// covers the column tiles CT at a time.
template <bool UP>
__device__ void gemm_v8(Gemm<__half> g, int CT) {
  extern __shared__ unsigned char smem8_raw[];
  __shared__ int rowp[BM8];
  __shared__ float rowg[BM8];
  const unsigned base = (smem_u32(smem8_raw) + 1023u) & ~1023u;
  const int tid = threadIdx.x, tile = blockIdx.x;
  const int e = segment_of(g.tiles, g.E, tile);
  if (e < 0) return;
  const int q0 = g.offsets[e] + (tile - g.tiles[e]) * BM8, q1 = g.offsets[e + 1];
  const int ntile = (g.N + BN8 - 1) / BN8;
  const int ct0 = blockIdx.y * CT, ct1 = min(ct0 + CT, ntile);
  if (ct0 >= ct1) return;
  rows8<UP>(g, q0, q1, rowp, rowg);
  __syncthreads();
  // the copy plan (column tile ct0; later tiles add (ct - ct0) BN8 rows of B)
  Plan8 pl;
  const int r0 = tid / 8, c = tid % 8;
  pl.kc = c * 8;
  const __half* wexp = g.w + (size_t)e * g.N * g.Kd;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int r = r0 + 32 * i, p = rowp[r];
    pl.a[i] = arow8<UP>(g, p, q0, r, pl.kc);
    pl.off[i] = r * 128 + ((c ^ (r & 7)) * 16);
  }
  auto set_b = [&](int ct) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int n = ct * BN8 + r0 + 32 * i;
      pl.b[i] = n < g.N ? wexp + (size_t)n * g.Kd + pl.kc : nullptr;
    }
  };
  const int KT = (g.Kd + BK8 - 1) / BK8, S = (ct1 - ct0) * KT;
  const __half* safe = g.w;
  // prologue: slabs 0 .. ST8 - 3
  int lct = ct0, lkt = 0;  // the next slab to load
  set_b(lct);
  auto load_next = [&](int s) {
    if (s < S) {
      load8(pl, base + (s % ST8) * STAGE8, lkt * BK8, g.Kd, safe);
      if (++lkt == KT) {
        lkt = 0;
        if (++lct < ct1) set_b(lct);
      }
    }
    cp_async_commit();
  };
#pragma unroll 1
  for (int s = 0; s < ST8 - 2; ++s) load_next(s);

  const int wg = tid / 128, w = (tid / 32) % 4, l = tid % 32;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  int s = 0;  // the slab stream's position
#pragma unroll 1
  for (int ct = ct0; ct < ct1; ++ct) {
    // the main loop touches the accumulators only through wgmma, so ptxas
    // keeps the groups in flight (a use inside it makes ptxas wait each slab)
#pragma unroll 1
    for (int kt = 0; kt < KT; ++kt, ++s) {
      cp_async_wait<ST8 - 3>();  // this thread's copies of slab s have landed
      fence_proxy_async();       // ... and are visible to the tensor cores
      wgmma_wait<1>();           // slab s - 2's wgmma is done (s - 1 may run)
      __syncthreads();           // every thread's copies; every group's s - 2
      slab8(acc, base + (s % ST8) * STAGE8, wg, kt == 0);
      load_next(s + ST8 - 2);  // into the stage slab s - 2 used
    }
    // the column tile is complete: store it
    wgmma_wait<0>();
    wgmma_fence_acc(acc);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      int n = ct * BN8 + 8 * j + 2 * (l % 4);
      if (n >= g.N) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int m = wg * 64 + w * 16 + l / 4 + 8 * h, p = rowp[m];
        if (p < 0) continue;
        float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
        size_t row;
        if (UP) {
          float gt = rowg[m];
          v0 = gt * fmaxf(v0, 0.f);
          v1 = gt * fmaxf(v1, 0.f);
          row = (size_t)(q0 + m);
        } else {
          row = (size_t)p;
        }
        *reinterpret_cast<__half2*>(g.out + row * g.N + n) =
            __floats2half2_rn(v0, v1);
      }
    }
    wgmma_fence_acc(acc);
  }
  cp_async_wait<0>();  // no copy outlives the block (empty groups at the end)
}
#endif

// ======================================================================
// v10: v8's wgmma main loop with what its profile asked for (notes, "v8 and
// v9 measured"):
//   occupancy  two blocks per SM: a 3-stage ring (97 KB), registers <= 128;
//              one block's prologue and epilogue run under the other's slabs.
//              The copies of slab s + 2 go out after slab s's barrier, which
//              also waits for slab s - 1's wgmma (wait_group 0).
//   epilogue   the fragments into the stage the last slab used, 16-byte
//              chunks XOR-swizzled by row (conflict-free both ways), then
//              whole rows out as 16-byte stores.
//   prologue   tiles and offsets in shared memory: one round trip, then the
//              binary search there.
// ======================================================================
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int ST10 = 3;  // dynamic smem: ST10 * STAGE8 + 1024 (GEMM10_SMEM)

// v8's copy plan in fewer registers (v8's, under v10's cap of 128, spilled):
// the 4 B rows of a thread are 32 apart, so one pointer and a count of the
// rows inside N; the 4 chunk offsets are 4096 bytes apart.
struct Plan10 {
  const __half* a[4];
  const __half* b;  // row r0 of the column tile
  int nb;           // how many of the rows r0 + 32 i are < N
  unsigned off;     // the chunk's byte offset in row r0 (+ 4096 i)
  int kc;
};

__device__ __forceinline__ void load10(const Plan10& pl, unsigned stage, int k0,
                                       int Kd, const __half* safe) {
  bool kin = k0 + pl.kc < Kd;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    bool ok = kin && pl.a[i] != nullptr;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     stage + pl.off + 4096 * i),
                 "l"(ok ? pl.a[i] + k0 : safe), "r"(ok ? 16 : 0));
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    bool ok = kin && i < pl.nb;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     stage + BM8 * 128 + pl.off + 4096 * i),
                 "l"(ok ? pl.b + 32 * i * (size_t)Kd + k0 : safe),
                 "r"(ok ? 16 : 0));
  }
}

template <bool UP>
__device__ void gemm_v10(Gemm<__half> g, int CT) {
  extern __shared__ unsigned char smem10_raw[];
  __shared__ int rowp[BM8];
  __shared__ float rowg[BM8];
  __shared__ int tab[2 * (MAX_E + 1)];  // tiles, then offsets
  const unsigned base = (smem_u32(smem10_raw) + 1023u) & ~1023u;
  unsigned char* gbase = smem10_raw + (base - smem_u32(smem10_raw));
  const int tid = threadIdx.x, tile = blockIdx.x;
  for (int i = tid; i <= g.E; i += 256) {
    tab[i] = g.tiles[i];
    tab[MAX_E + 1 + i] = g.offsets[i];
  }
  __syncthreads();
  const int e = segment_of(tab, g.E, tile);
  if (e < 0) return;
  const int* offs = tab + MAX_E + 1;
  const int q0 = offs[e] + (tile - tab[e]) * BM8, q1 = offs[e + 1];
  const int ntile = (g.N + BN8 - 1) / BN8;
  const int ct0 = blockIdx.y * CT, ct1 = min(ct0 + CT, ntile);
  if (ct0 >= ct1) return;
  rows8<UP>(g, q0, q1, rowp, rowg);
  __syncthreads();
  Plan10 pl;
  const int r0 = tid / 8, c = tid % 8;
  pl.kc = c * 8;
  pl.off = r0 * 128 + ((c ^ (r0 & 7)) * 16);  // (r0 + 32 i) % 8 == r0 % 8
  const __half* wexp = g.w + (size_t)e * g.N * g.Kd;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int r = r0 + 32 * i, p = rowp[r];
    pl.a[i] = arow8<UP>(g, p, q0, r, pl.kc);
  }
  auto set_b = [&](int ct) {
    int n = ct * BN8 + r0;
    pl.b = wexp + (size_t)min(n, g.N - 1) * g.Kd + pl.kc;
    pl.nb = n < g.N ? (g.N - n + 31) / 32 : 0;
  };
  const int KT = (g.Kd + BK8 - 1) / BK8, S = (ct1 - ct0) * KT;
  const __half* safe = g.w;
  int lct = ct0, lkt = 0;
  set_b(lct);
  auto load_next = [&](int s) {
    if (s < S) {
      load10(pl, base + (s % ST10) * STAGE8, lkt * BK8, g.Kd, safe);
      if (++lkt == KT) {
        lkt = 0;
        if (++lct < ct1) set_b(lct);
      }
    }
    cp_async_commit();
  };
#pragma unroll 1
  for (int s = 0; s < ST10 - 1; ++s) load_next(s);

  const int wg = tid / 128, w = (tid / 32) % 4, l = tid % 32;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  int s = 0;
#pragma unroll 1
  for (int ct = ct0; ct < ct1; ++ct) {
#pragma unroll 1
    for (int kt = 0; kt < KT; ++kt, ++s) {
      cp_async_wait<ST10 - 2>();  // this thread's copies of slab s have landed
      fence_proxy_async();        // ... visible to the tensor cores
      wgmma_wait<0>();            // this group's slab s - 1 is done
      __syncthreads();            // everyone's copies and slab s - 1
      slab8(acc, base + (s % ST10) * STAGE8, wg, kt == 0);
      load_next(s + ST10 - 1);  // into the stage slab s - 1 used
    }
    // the column tile is complete: through the last slab's stage, then out
    wgmma_wait<0>();
    wgmma_fence_acc(acc);
    __syncthreads();  // both groups are done reading that stage
    unsigned char* cs = gbase + ((s - 1) % ST10) * STAGE8;  // 128 x 256 bytes
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int m = wg * 64 + w * 16 + l / 4 + 8 * h;
        float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
        if (UP) {
          float gt = rowg[m];
          v0 = gt * fmaxf(v0, 0.f);
          v1 = gt * fmaxf(v1, 0.f);
        }
        *reinterpret_cast<__half2*>(cs + m * 256 + ((j ^ (m & 7)) * 16) +
                                    4 * (l % 4)) = __floats2half2_rn(v0, v1);
      }
    wgmma_fence_acc(acc);
    __syncthreads();
#pragma unroll 1  // unrolled, ptxas computes the 8 rows' addresses before the
                  // slab loop and spills them (v10 caps registers at 128)
    for (int i = 0; i < BM8 * 16 / 256; ++i) {
      int v = i * 256 + tid, m = v / 16, cc = v % 16, p = rowp[m];
      int n = ct * BN8 + cc * 8;
      if (p < 0 || n >= g.N) continue;
      size_t row = UP ? (size_t)(q0 + m) : (size_t)p;
      *reinterpret_cast<uint4*>(g.out + row * g.N + n) =
          *reinterpret_cast<const uint4*>(cs + m * 256 + ((cc ^ (m & 7)) * 16));
    }
    // the next slab's barrier orders these reads before that stage is reloaded
  }
  cp_async_wait<0>();
}
#endif

// --- extern "C" entry points: ffn_approx_<stage>_v<N>[_f16|_f32] ---
#define FA_ROUTER(NAME, T)                                                  \
  extern "C" __global__ void __launch_bounds__(128)                         \
  NAME(const T* x, const T* w3, int* idx, float* gate, int Tn, int C,       \
       int E, int K) { router_v1<T>(x, w3, idx, gate, Tn, C, E, K); }
FA_ROUTER(ffn_approx_router_v1_f32, float)
FA_ROUTER(ffn_approx_router_v1_f16, __half)

#define FA_ROUTER2(NAME, T)                                                 \
  extern "C" __global__ void __launch_bounds__(R2W * 32)                    \
  NAME(const T* x, const T* w3, int* idx, float* gate, int Tn, int C,       \
       int E, int K) { router_v2<T>(x, w3, idx, gate, Tn, C, E, K); }
FA_ROUTER2(ffn_approx_router_v2_f32, float)
FA_ROUTER2(ffn_approx_router_v2_f16, __half)

extern "C" __global__ void __launch_bounds__(1024)
ffn_approx_count_v1(const int* idx, int P, int E, int bm, int* counts,
                    int* offsets, int* tiles) {
  count_v1(idx, P, E, bm, counts, offsets, tiles);
}

extern "C" __global__ void __launch_bounds__(256)
ffn_approx_scatter_v1(const int* idx, int P, const int* offsets, int* order) {
  scatter_v1(idx, P, offsets, order);
}

extern "C" __global__ void __launch_bounds__(SW * 32)
ffn_approx_sort_v2(const int* idx, int P, int E, int bm, int* counts,
                   int* offsets, int* tiles, int* order) {
  sort_v2(idx, P, E, bm, counts, offsets, tiles, order);
}

#define FA_GEMM_ARGS(T)                                                     \
  const T *a, const T *w, const int *order, const float *gate,              \
      const int *offsets, const int *tiles, T *out, int E, int K, int Kd,   \
      int N
#define FA_GEMM_INIT {a, w, order, gate, offsets, tiles, out, E, K, Kd, N}
#define FA_GEMM(NAME, THREADS, CALL, T)                                     \
  extern "C" __global__ void __launch_bounds__(THREADS)                     \
  NAME(FA_GEMM_ARGS(T)) { Gemm<T> g = FA_GEMM_INIT; CALL(g); }
FA_GEMM(ffn_approx_up_v1_f32, 128, (gemm_v1<true, float>), float)
FA_GEMM(ffn_approx_up_v1_f16, 128, (gemm_v1<true, __half>), __half)
FA_GEMM(ffn_approx_down_v1_f32, 128, (gemm_v1<false, float>), float)
FA_GEMM(ffn_approx_down_v1_f16, 128, (gemm_v1<false, __half>), __half)
FA_GEMM(ffn_approx_up_v2_f32, 256, (gemm_v2<true, float>), float)
FA_GEMM(ffn_approx_up_v2_f16, 256, (gemm_v2<true, __half>), __half)
FA_GEMM(ffn_approx_down_v2_f32, 256, (gemm_v2<false, float>), float)
FA_GEMM(ffn_approx_down_v2_f16, 256, (gemm_v2<false, __half>), __half)
FA_GEMM(ffn_approx_up_v3_f16, 128, (gemm_v3<true, 64, 64, 32, 32>), __half)
FA_GEMM(ffn_approx_down_v3_f16, 128, (gemm_v3<false, 64, 64, 32, 32>),
        __half)
FA_GEMM(ffn_approx_up_v4_f16, 256, (gemm_v3<true, 128, 128, 64, 32>),
        __half)
FA_GEMM(ffn_approx_down_v4_f16, 256, (gemm_v3<false, 128, 128, 64, 32>),
        __half)

#define FA_COMBINE(NAME, T)                                                 \
  extern "C" __global__ void __launch_bounds__(256)                         \
  NAME(const T* z, T* out, int Tn, int C, int K) {                          \
    combine_v1<T>(z, out, Tn, C, K);                                        \
  }
FA_COMBINE(ffn_approx_combine_v1_f32, float)
FA_COMBINE(ffn_approx_combine_v1_f16, __half)

extern "C" __global__ void __launch_bounds__(256)
ffn_approx_combine_v2_f16(const __half* z, __half* out, int Tn, int C,
                          int K) {
  combine_v2(z, out, Tn, C, K);
}

// --- v5 (router v3, sort v3 = hist_v3 / router v3 + scatter_v3) ---
extern "C" __global__ void __launch_bounds__(128)
ffn_approx_router_v3_f16(const __half* x, const __half* w3, int* idx,
                         float* gate, int* bhist, int Tn, int C, int E,
                         int K) {
  router_v3(x, w3, idx, gate, bhist, Tn, C, E, K);
}

extern "C" __global__ void __launch_bounds__(256)
ffn_approx_hist_v3(const int* idx, int P, int E, int K, int* bhist) {
  hist_v3(idx, P, E, K, bhist);
}

extern "C" __global__ void __launch_bounds__(256)
ffn_approx_scatter_v3(const int* idx, const int* bhist, int P, int E, int K,
                      int nb, int bm, int* counts, int* offsets, int* tiles,
                      int* order, int bm2, int* tiles2, int* ticket,
                      int nslice) {
  scatter_v3(idx, bhist, P, E, K, nb, bm, counts, offsets, tiles, order, bm2,
             tiles2, ticket, nslice);
}

extern "C" __global__ void __launch_bounds__(128, 4)
ffn_approx_up_v5_f16(FA_GEMM_ARGS(__half)) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v5<true>(g);
}
extern "C" __global__ void __launch_bounds__(128, 4)
ffn_approx_down_v5_f16(FA_GEMM_ARGS(__half)) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v5<false>(g);
}

// --- v6 (router v4; up v6, down v6; sort v3) ---
extern "C" __global__ void __launch_bounds__(128)
ffn_approx_router_v4_f16(const __half* x, const __half* w3, int* idx,
                         float* gate, int* bhist, int Tn, int C, int E,
                         int K) {
  router_v4(x, w3, idx, gate, bhist, Tn, C, E, K);
}
extern "C" __global__ void __launch_bounds__(128, 4)
ffn_approx_up_v6_f16(FA_GEMM_ARGS(__half)) {
  Gemm<__half> g = FA_GEMM_INIT;
  up_tile<UpTile6>(g);
}
extern "C" __global__ void __launch_bounds__(128, 2)
ffn_approx_down_v6_f16(FA_GEMM_ARGS(__half), const int* ctiles) {
  Gemm<__half> g = FA_GEMM_INIT;
  down_v6(g, ctiles);
}

// --- v7 (router v4; up v7, down v7 with the combine; sort v3) ---
extern "C" __global__ void __launch_bounds__(256, 2)
ffn_approx_up_v7_f16(FA_GEMM_ARGS(__half)) {
  Gemm<__half> g = FA_GEMM_INIT;
  up_tile<Tile7>(g);
}
extern "C" __global__ void __launch_bounds__(256, 2)
ffn_approx_down_v7_f16(FA_GEMM_ARGS(__half), int* ticket, __half* y) {
  Gemm<__half> g = FA_GEMM_INIT;
  down_v7(g, ticket, y);
}

// --- v8 (router v4, sort v3; up and down on wgmma; combine v2) ---
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
extern "C" __global__ void __launch_bounds__(256, 1)
ffn_approx_up_v8_f16(FA_GEMM_ARGS(__half), int CT) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v8<true>(g, CT);
}
extern "C" __global__ void __launch_bounds__(256, 1)
ffn_approx_down_v8_f16(FA_GEMM_ARGS(__half), int CT) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v8<false>(g, CT);
}
#endif

// --- v9 (router v5, sort v3; v8's GEMMs; combine v2) ---
extern "C" __global__ void __launch_bounds__(R5W * 32)
ffn_approx_router_v5_f16(const __half* x, const __half* w3t, int* idx,
                         float* gate, int* bhist, int Tn, int C, int E,
                         int K) {
  router_v5(x, w3t, idx, gate, bhist, Tn, C, E, K);
}
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
extern "C" __global__ void __launch_bounds__(256, 1)
ffn_approx_up_v9_f16(FA_GEMM_ARGS(__half), int CT) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v8<true>(g, CT);
}
extern "C" __global__ void __launch_bounds__(256, 1)
ffn_approx_down_v9_f16(FA_GEMM_ARGS(__half), int CT) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v8<false>(g, CT);
}
#endif

// --- v10 (router v5, sort v3; up and down v10 on wgmma, two blocks per SM) ---
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
extern "C" __global__ void __launch_bounds__(256, 2)
ffn_approx_up_v10_f16(FA_GEMM_ARGS(__half), int CT) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v10<true>(g, CT);
}
extern "C" __global__ void __launch_bounds__(256, 2)
ffn_approx_down_v10_f16(FA_GEMM_ARGS(__half), int CT) {
  Gemm<__half> g = FA_GEMM_INIT;
  gemm_v10<false>(g, CT);
}
#endif
