// gpu/deja_vu_predict.cu — chapter 4, "Deja Vu": the lookahead predictor that
// picks the neurons of the next layer's sparse MLP (gpu/deja_vu.cu). Twin of
// reference/deja_vu.py::predict and top_k_ids. Row-major, contiguous:
//   x (B, C)  mean (C,)  a_t (r, C) = A^T  b (r, F)  bias (F,)      B <= 4
//   h (B, r) float32 and scores (B, F) float32: workspace
//   ids (B, K) int32: each row ascending, distinct, in [0, F)
//   h[t, j]      = sum_c (x[t, c] - mean[c]) a_t[j, c]
//   scores[t, f] = sum_j h[t, j] b[j, f] + bias[f]
//   ids[t]       = the K highest scores[t], the lower id first among equal ones
// Storage T = float or __half; every sum in float32 and in a fixed order, so
// the scores and the ids are bitwise reproducible. The top-K is exact: it ranks
// the order-preserving uint32 image of each float32 score (order_key: -0 equals
// +0, NaN ranks below -inf) and breaks ties by the lower id.
//
// v1  four kernels. proj_v1: a warp per output j reads row j of a_t once with
//     16-byte loads (scalar loads when C % VEC != 0) and dots it with every
//     batch row's x - mean. scores_v1: a block per strip of 16 VEC columns; its
//     32 groups of 16 lanes split the r rows of b (each group reads 16 x 16
//     contiguous bytes of a row, VEC columns a lane), summed in group order
//     through shared memory, then + bias. topk_v1: a block per row; a radix
//     select over the keys, 8 bits a pass from the top (histograms in shared
//     memory, one atomic a warp when its candidates share a digit), stopping
//     early once the chosen bin is taken whole; then an in-order compaction:
//     a thread owns a contiguous run of ids, one block scan of its (greater,
//     equal) counts places them, so each row comes out sorted. union_v1: one
//     block marks the B rows' ids in a bitmap of F bits in shared memory and
//     compacts it in order: the ascending union, then -1 up to its capacity,
//     and the count.
// v2  the same pipeline with more in flight (v1 looked latency-bound: a warp
//     per row of a_t, one 4-byte load a thread at a time on topk_v1's one SM).
//     proj_v2: QW warps share a row of a_t (interleaved 512-byte slices: a
//     row's loads all issued at once), partials summed in warp order. scores:
//     scores_v1 (a version with U2 rows of b in flight measured slower, cold
//     and hot: NOTES). topk_v2: U2 loads a thread before use in every pass;
//     three passes of 11, 11 and 10 bits; after the first, the keys of the
//     chosen bin are copied into shared memory (up to CAND; more fall back to
//     passes over the row), so the later passes read only those; the
//     compaction gives each warp a contiguous run of ids read 32 at a time
//     (coalesced; ballots place them), where v1's threads each read their own
//     run (32 cache lines a load). Measured: 22 us against v1's 27 (H100): the
//     top-K is issue-bound on its one SM, not waiting on loads (NOTES).
//
// Run the cases alone:  python -m gpu.bench deja_vu_predict [--quick]
// Compile report (no GPU): python -m gpu.check_kernels gpu/deja_vu_predict.cu

#include "common.cuh"

#define BMAX 4    // batch rows (register tiles of proj_v1 and scores_v1)
#define PW 4      // warps (outputs j) per block of proj_v1
#define SG 32     // row groups per block of scores_v1
#define SL 16     // lanes per row group of scores_v1: 512 threads a block
#define TK 1024   // threads of topk_v1 and union_v1
#define RB 8      // radix bits per pass of topk_v1
#define NBIN 256  // 1 << RB
#define QW 8      // warps sharing one row of a_t in proj_v2
#define RJ 1      // rows of a_t per block of proj_v2: QW * RJ warps
#define U2 8      // loads in flight a thread in topk_v2
#define NB2 2048  // bins of topk_v2's histograms (11 bits)
#define CAND 6144 // keys of topk_v2's candidate buffer (24 KB)

// --- v1: h = (x - mean) A ---
// grid (ceil(r / PW)), PW warps: warp -> output j, every batch row.
template <typename T>
__device__ void proj_v1(const T* x, const T* mean, const T* a_t, float* h,
                        int B, int C, int r, int vec) {
  constexpr int VEC = Vec<T>::N;
  int lane = threadIdx.x & 31, j = blockIdx.x * PW + threadIdx.x / 32;
  if (j >= r) return;  // j is the same for the whole warp
  const T* row = a_t + (size_t)j * C;
  float z[BMAX] = {0.f, 0.f, 0.f, 0.f};
  if (vec) {  // C % VEC == 0 and 16-byte aligned rows
#pragma unroll 4
    for (int v = lane; v < C / VEC; v += 32) {
      float w[VEC], m[VEC];
      unpack<T>(w, load16(row + (size_t)v * VEC));
      unpack<T>(m, load16(mean + (size_t)v * VEC));
#pragma unroll
      for (int t = 0; t < BMAX; ++t) {
        if (t < B) {
          float xv[VEC];
          unpack<T>(xv, load16(x + (size_t)t * C + (size_t)v * VEC));
#pragma unroll
          for (int e = 0; e < VEC; ++e) z[t] = fmaf(xv[e] - m[e], w[e], z[t]);
        }
      }
    }
  } else {
    for (int c = lane; c < C; c += 32) {
      float w = to_f(row[c]), m = to_f(mean[c]);
#pragma unroll
      for (int t = 0; t < BMAX; ++t)
        if (t < B) z[t] = fmaf(to_f(x[(size_t)t * C + c]) - m, w, z[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < BMAX; ++t) z[t] = warp_sum(z[t]);
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < BMAX; ++t)
      if (t < B) h[(size_t)t * r + j] = z[t];
  }
}

// --- v1: scores = h B + bias ---
// The block's sum: the warp's two groups (lanes l and l + 16) add, then the 16
// warps in order, + bias; thread i < B CB writes scores[t, strip + i % CB].
template <typename T>
__device__ void scores_finish(float (&acc)[BMAX][Vec<T>::N], const T* bias,
                              float* scores, int B, int F) {
  constexpr int VEC = Vec<T>::N, CB = SL * VEC;
  __shared__ float red[BMAX][SG / 2][CB];  // one partial a warp: 32 or 16 KB
  int l = threadIdx.x % SL, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < BMAX; ++t)
#pragma unroll
    for (int e = 0; e < VEC; ++e)
      acc[t][e] += __shfl_xor_sync(0xffffffffu, acc[t][e], SL);
  if ((threadIdx.x & 31) < SL) {
#pragma unroll
    for (int t = 0; t < BMAX; ++t)
      if (t < B) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) red[t][warp][l * VEC + e] = acc[t][e];
      }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < B * CB; i += blockDim.x) {
    int t = i / CB, cl = i % CB, col = blockIdx.x * CB + cl;
    if (col < F) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < SG / 2; ++w) s += red[t][w][cl];
      scores[(size_t)t * F + col] = s + to_f(bias[col]);
    }
  }
}

// grid (ceil(F / (SL VEC))), SG * SL threads: group g = tid / SL takes rows
// k = g, g + SG, ...; lane l = tid % SL the VEC columns from l VEC of the strip.
template <typename T>
__device__ void scores_v1(const float* h, const T* bm, const T* bias,
                          float* scores, int B, int r, int F, int vec) {
  constexpr int VEC = Vec<T>::N, CB = SL * VEC;
  int l = threadIdx.x % SL, g = threadIdx.x / SL;
  int j0 = blockIdx.x * CB + l * VEC;  // this lane's first column
  float acc[BMAX][VEC];
#pragma unroll
  for (int t = 0; t < BMAX; ++t)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[t][e] = 0.f;
  if (vec && j0 < F) {  // F % VEC == 0: a vector is wholly in or out
#pragma unroll 4
    for (int k = g; k < r; k += SG) {
      float w[VEC];
      unpack<T>(w, load16(bm + (size_t)k * F + j0));
#pragma unroll
      for (int t = 0; t < BMAX; ++t) {
        if (t < B) {
          float hk = __ldg(h + (size_t)t * r + k);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[t][e] = fmaf(hk, w[e], acc[t][e]);
        }
      }
    }
  } else if (!vec) {
    for (int k = g; k < r; k += SG) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (j0 + e < F) {
          float w = to_f(bm[(size_t)k * F + j0 + e]);
#pragma unroll
          for (int t = 0; t < BMAX; ++t)
            if (t < B) acc[t][e] = fmaf(__ldg(h + (size_t)t * r + k), w, acc[t][e]);
        }
      }
    }
  }
  scores_finish<T>(acc, bias, scores, B, F);
}

// --- v1: the K highest scores of a row, ascending ids ---
// Order-preserving image of a float32: a > b as floats <=> key(a) > key(b),
// with -0 mapped to +0 (equal floats, equal keys) and every NaN to 0 (below
// -inf, whose key is 0x007fffff).
__device__ __forceinline__ unsigned order_key(float s) {
  unsigned u = __float_as_uint(s);
  if (s != s) return 0u;
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum of v in thread order over the block (blockDim.x a
// multiple of 32); every thread gets the total. sh: 33 values of shared memory.
template <typename I>
__device__ I block_exclusive_scan(I v, I* sh, I* total) {
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  I incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    I n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 31) sh[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    I s = lane < nw ? sh[lane] : I(0), si = s;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      I n = __shfl_up_sync(0xffffffffu, si, o);
      if (lane >= o) si += n;
    }
    sh[lane] = si - s;  // each warp's offset
    if (lane == 31) sh[32] = si;
  }
  __syncthreads();
  *total = sh[32];
  return sh[warp] + incl - v;
}

// grid (rows), TK threads. After the select, the chosen ids are those whose
// masked key is above `prefix`, and the first `need` (by id) of those equal to
// it; `need` counts exactly the ones still to take, so a row gets K ids.
__device__ void topk_v1(const float* scores, int* ids, int F, int K) {
  __shared__ unsigned hist[NBIN];
  __shared__ unsigned long long scan_sh[33];
  __shared__ unsigned s_prefix;
  __shared__ int s_need, s_done;
  if (K <= 0) return;
  const float* s = scores + (size_t)blockIdx.x * F;
  int* out = ids + (size_t)blockIdx.x * K;
  int lane = threadIdx.x & 31;
  unsigned prefix = 0u, mask = 0u;
  int need = K;  // how many of the keys matching prefix under mask to take
  for (int shift = 32 - RB; shift >= 0; shift -= RB) {
    for (int i = threadIdx.x; i < NBIN; i += blockDim.x) hist[i] = 0u;
    __syncthreads();
    // histogram of the next digit over the candidates (whole warps iterate)
    for (int i0 = 0; i0 < F; i0 += blockDim.x) {
      int i = i0 + threadIdx.x;
      unsigned d = NBIN;  // not a candidate
      if (i < F) {
        unsigned key = order_key(__ldg(s + i));
        if ((key & mask) == prefix) d = (key >> shift) & (NBIN - 1);
      }
      unsigned cand = __ballot_sync(0xffffffffu, d < NBIN);
      if (cand) {
        int first = __ffs(cand) - 1;
        unsigned d0 = __shfl_sync(0xffffffffu, d, first);
        if (__ballot_sync(0xffffffffu, d == d0) == cand) {
          if (lane == first) atomicAdd(&hist[d0], (unsigned)__popc(cand));
        } else if (d < NBIN) {
          atomicAdd(&hist[d], 1u);
        }
      }
    }
    __syncthreads();
    // the digit: count(bins above it) < need <= count(bins from it up); thread
    // t looks at bin NBIN - 1 - t, so the scan runs from the top bin down
    int bin = NBIN - 1 - (int)threadIdx.x;
    unsigned long long c = bin >= 0 ? hist[bin] : 0ull, tot;
    unsigned long long above = block_exclusive_scan(c, scan_sh, &tot);
    if (bin >= 0 && above < (unsigned long long)need &&
        (unsigned long long)need <= above + c) {
      s_prefix = prefix | ((unsigned)bin << shift);
      s_need = need - (int)above;
      s_done = s_need == (int)c;  // the whole bin is taken: nothing to split
    }
    __syncthreads();
    prefix = s_prefix;
    need = s_need;
    mask |= (unsigned)(NBIN - 1) << shift;
    int done = s_done;
    __syncthreads();  // s_* are rewritten by the next pass
    if (done) break;
  }
  // compaction: thread t owns ids [t E, t E + E); position of a chosen id =
  // (greater ones before it) + min(equal ones before it, need)
  int per = (F + blockDim.x - 1) / blockDim.x;
  int lo = min(F, (int)threadIdx.x * per), hi = min(F, lo + per);
  unsigned gt = 0u, eq = 0u;
  for (int i = lo; i < hi; ++i) {
    unsigned key = order_key(__ldg(s + i)) & mask;
    gt += key > prefix;
    eq += key == prefix;
  }
  unsigned long long tot;
  unsigned long long before = block_exclusive_scan(
      ((unsigned long long)gt << 32) | eq, scan_sh, &tot);
  int ngt = (int)(before >> 32), neq = (int)(before & 0xffffffffu);
  for (int i = lo; i < hi; ++i) {
    unsigned key = order_key(__ldg(s + i)) & mask;
    int pos = -1;
    if (key > prefix) {
      pos = ngt++ + min(neq, need);
    } else if (key == prefix) {
      if (neq < need) pos = ngt + neq;
      ++neq;
    }
    if (pos >= 0 && pos < K) out[pos] = i;
  }
}

// --- v1: the union of the B rows' ids ---
// one block of TK threads; bits: ceil(F / 32) words of dynamic shared memory.
// out (cap,) = the ascending union, then -1; count[0] = its size (<= cap).
__device__ void union_v1(const int* ids, int n, int F, int* out, int cap,
                         int* count) {
  extern __shared__ unsigned bits[];
  __shared__ unsigned long long scan_sh[33];
  int nw = (F + 31) / 32;
  for (int i = threadIdx.x; i < nw; i += blockDim.x) bits[i] = 0u;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    int id = ids[i];
    if (id >= 0 && id < F) atomicOr(&bits[id >> 5], 1u << (id & 31));
  }
  __syncthreads();
  int per = (nw + blockDim.x - 1) / blockDim.x;
  int lo = min(nw, (int)threadIdx.x * per), hi = min(nw, lo + per);
  unsigned long long mine = 0ull, tot;
  for (int w = lo; w < hi; ++w) mine += __popc(bits[w]);
  long long pos = (long long)block_exclusive_scan(mine, scan_sh, &tot);
  for (int w = lo; w < hi; ++w) {
    for (unsigned m = bits[w]; m; m &= m - 1) {
      if (pos < cap) out[pos] = w * 32 + __ffs(m) - 1;
      ++pos;
    }
  }
  for (long long i = (long long)tot + threadIdx.x; i < cap; i += blockDim.x)
    out[i] = -1;
  if (threadIdx.x == 0) count[0] = (int)tot;
}

// --- v2: h = (x - mean) A, QW warps a row ---
// grid (ceil(r / RJ)), 32 QW RJ threads: warp w -> row j = RJ blockIdx + w / QW,
// slice q = w % QW: vectors v = 32 q + lane, + 32 QW, ... (scalars likewise).
template <typename T>
__device__ void proj_v2(const T* x, const T* mean, const T* a_t, float* h,
                        int B, int C, int r, int vec) {
  constexpr int VEC = Vec<T>::N;
  __shared__ float part[RJ][QW][BMAX];
  int lane = threadIdx.x & 31, w = threadIdx.x / 32, q = w % QW;
  int j = blockIdx.x * RJ + w / QW;
  float z[BMAX] = {0.f, 0.f, 0.f, 0.f};
  if (j < r) {
    const T* row = a_t + (size_t)j * C;
    if (vec) {
#pragma unroll 4
      for (int v = 32 * q + lane; v < C / VEC; v += 32 * QW) {
        float wv[VEC], m[VEC];
        unpack<T>(wv, load16(row + (size_t)v * VEC));
        unpack<T>(m, load16(mean + (size_t)v * VEC));
#pragma unroll
        for (int t = 0; t < BMAX; ++t) {
          if (t < B) {
            float xv[VEC];
            unpack<T>(xv, load16(x + (size_t)t * C + (size_t)v * VEC));
#pragma unroll
            for (int e = 0; e < VEC; ++e)
              z[t] = fmaf(xv[e] - m[e], wv[e], z[t]);
          }
        }
      }
    } else {
      for (int c = 32 * q + lane; c < C; c += 32 * QW) {
        float wv = to_f(row[c]), m = to_f(mean[c]);
#pragma unroll
        for (int t = 0; t < BMAX; ++t)
          if (t < B) z[t] = fmaf(to_f(x[(size_t)t * C + c]) - m, wv, z[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < BMAX; ++t) z[t] = warp_sum(z[t]);
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < BMAX; ++t) part[w / QW][q][t] = z[t];
  }
  __syncthreads();
  int jj = threadIdx.x / BMAX, t = threadIdx.x % BMAX;
  j = blockIdx.x * RJ + jj;
  if (jj < RJ && t < B && j < r) {
    float s = 0.f;
#pragma unroll
    for (int qq = 0; qq < QW; ++qq) s += part[jj][qq][t];
    h[(size_t)t * r + j] = s;
  }
}

// --- v2: the K highest scores of a row ---
// Histogram of `bits`-bit digit `shift` of the keys matching (prefix, mask) among
// n keys: from the row (src == nullptr: key of s[i]) or from the candidate
// buffer. Whole warps iterate (ballots); one atomic a warp when its candidates
// share the digit.
__device__ void hist_v2(const float* s, const unsigned* src, int n,
                        unsigned prefix, unsigned mask, int shift, int bits,
                        unsigned* hist) {
  int lane = threadIdx.x & 31;
  unsigned top = (1u << bits) - 1u;
  for (int i0 = 0; i0 < n; i0 += U2 * blockDim.x) {
    unsigned key[U2];
#pragma unroll
    for (int u = 0; u < U2; ++u) {
      int i = i0 + u * blockDim.x + threadIdx.x;
      key[u] = i >= n ? 0u : src ? src[i] : order_key(__ldg(s + i));
    }
#pragma unroll
    for (int u = 0; u < U2; ++u) {
      int i = i0 + u * blockDim.x + threadIdx.x;
      unsigned d = NB2;  // not a candidate
      if (i < n && (key[u] & mask) == prefix) d = (key[u] >> shift) & top;
      unsigned cand = __ballot_sync(0xffffffffu, d < NB2);
      if (cand) {
        int first = __ffs(cand) - 1;
        unsigned d0 = __shfl_sync(0xffffffffu, d, first);
        if (__ballot_sync(0xffffffffu, d == d0) == cand) {
          if (lane == first) atomicAdd(&hist[d0], (unsigned)__popc(cand));
        } else if (d < NB2) {
          atomicAdd(&hist[d], 1u);
        }
      }
    }
  }
}

// The digit: count(bins above it) < need <= count(bins from it up), over the
// 2^bits bins; thread t looks at bins 2^bits - 1 - 2t and the one below it
// (blockDim.x >= 2^(bits-1)). Sets *s_prefix, *s_need, *s_done (the chosen
// bin is taken whole).
__device__ void choose_v2(const unsigned* hist, int bits, int shift,
                          unsigned prefix, int need,
                          unsigned long long* scan_sh, unsigned* s_prefix,
                          int* s_need, int* s_done) {
  int nb = 1 << bits, hi = nb - 1 - 2 * (int)threadIdx.x;
  unsigned long long c0 = hi >= 0 ? hist[hi] : 0ull;
  unsigned long long c1 = hi >= 1 ? hist[hi - 1] : 0ull, tot;
  unsigned long long above = block_exclusive_scan(c0 + c1, scan_sh, &tot);
  unsigned long long nd = (unsigned long long)need;
  if (hi >= 0 && above < nd && nd <= above + c0) {
    *s_prefix = prefix | ((unsigned)hi << shift);
    *s_need = need - (int)above;
    *s_done = nd - above == c0;
  } else if (hi >= 1 && above + c0 < nd && nd <= above + c0 + c1) {
    *s_prefix = prefix | ((unsigned)(hi - 1) << shift);
    *s_need = need - (int)(above + c0);
    *s_done = nd - above - c0 == c1;
  }
}

// grid (rows), TK threads.
__device__ void topk_v2(const float* scores, int* ids, int F, int K) {
  __shared__ unsigned hist[NB2];
  __shared__ unsigned cand[CAND];
  __shared__ unsigned long long scan_sh[33];
  __shared__ unsigned s_prefix;
  __shared__ int s_need, s_done, s_n;
  if (K <= 0) return;
  const float* s = scores + (size_t)blockIdx.x * F;
  int* out = ids + (size_t)blockIdx.x * K;
  int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  unsigned prefix = 0u, mask = 0u;
  int need = K, n = F;
  const unsigned* src = nullptr;  // the row itself, until the candidates
  for (int p = 0; p < 3; ++p) {
    int bits = p < 2 ? 11 : 10, shift = p == 0 ? 21 : p == 1 ? 10 : 0;
    for (int i = threadIdx.x; i < NB2; i += blockDim.x) hist[i] = 0u;
    if (threadIdx.x == 0) s_n = 0;
    __syncthreads();
    hist_v2(s, src, n, prefix, mask, shift, bits, hist);
    __syncthreads();
    choose_v2(hist, bits, shift, prefix, need, scan_sh, &s_prefix,
              &s_need, &s_done);
    __syncthreads();
    prefix = s_prefix;
    need = s_need;
    mask |= ((1u << bits) - 1u) << shift;
    if (s_done) break;
    if (p == 0) {  // copy the chosen bin's keys (any order: only counted)
      for (int i0 = 0; i0 < F; i0 += U2 * blockDim.x) {
        unsigned key[U2];
#pragma unroll
        for (int u = 0; u < U2; ++u) {
          int i = i0 + u * blockDim.x + threadIdx.x;
          key[u] = i < F ? order_key(__ldg(s + i)) : 0u;
        }
#pragma unroll
        for (int u = 0; u < U2; ++u) {
          int i = i0 + u * blockDim.x + threadIdx.x;
          bool in = i < F && (key[u] & mask) == prefix;
          unsigned bal = __ballot_sync(0xffffffffu, in);
          int base = 0;
          if (lane == 0 && bal) base = atomicAdd(&s_n, __popc(bal));
          base = __shfl_sync(0xffffffffu, base, 0);
          int pos = base + __popc(bal & ((1u << lane) - 1u));
          if (in && pos < CAND) cand[pos] = key[u];
        }
      }
      __syncthreads();
      if (s_n <= CAND) src = cand, n = s_n;  // else: the row again (v1's way)
    }
    __syncthreads();  // s_* are rewritten by the next pass
  }
  // compaction: warp w owns ids [lo, hi), a multiple of 32 long, read 32 at a
  // time; a chosen id's position = (greater before it) + min(equal before, need)
  int nw = blockDim.x / 32, per = ((F + nw - 1) / nw + 31) / 32 * 32;
  int lo = min(F, warp * per), hi = min(F, lo + per);
  unsigned lt = (1u << lane) - 1u;
  unsigned ngt = 0u, neq = 0u;
  for (int i0 = lo; i0 < hi; i0 += 32 * U2) {
    unsigned key[U2];
#pragma unroll
    for (int u = 0; u < U2; ++u) {
      int i = i0 + 32 * u + lane;
      key[u] = i < hi ? order_key(__ldg(s + i)) & mask : 0u;
    }
#pragma unroll
    for (int u = 0; u < U2; ++u) {
      int i = i0 + 32 * u + lane;
      ngt += __popc(__ballot_sync(0xffffffffu, i < hi && key[u] > prefix));
      neq += __popc(__ballot_sync(0xffffffffu, i < hi && key[u] == prefix));
    }
  }
  unsigned long long mine = lane == 0 ? ((unsigned long long)ngt << 32) | neq : 0;
  unsigned long long tot;
  unsigned long long before = block_exclusive_scan(mine, scan_sh, &tot);
  before = __shfl_sync(0xffffffffu, before, 0);
  ngt = (unsigned)(before >> 32), neq = (unsigned)(before & 0xffffffffu);
  for (int i0 = lo; i0 < hi; i0 += 32 * U2) {
    unsigned key[U2];
#pragma unroll
    for (int u = 0; u < U2; ++u) {
      int i = i0 + 32 * u + lane;
      key[u] = i < hi ? order_key(__ldg(s + i)) & mask : 0u;
    }
#pragma unroll
    for (int u = 0; u < U2; ++u) {
      int i = i0 + 32 * u + lane;
      bool g = i < hi && key[u] > prefix, e = i < hi && key[u] == prefix;
      unsigned bg = __ballot_sync(0xffffffffu, g);
      unsigned be = __ballot_sync(0xffffffffu, e);
      int gb = (int)(ngt + __popc(bg & lt)), eb = (int)(neq + __popc(be & lt));
      int pos = g ? gb + min(eb, need) : (e && eb < need ? gb + eb : -1);
      if (pos >= 0 && pos < K) out[pos] = i;
      ngt += __popc(bg);
      neq += __popc(be);
    }
  }
}

// --- entry points ---
#define DVP_PROJ(NAME, T)                                                   \
  extern "C" __global__ void __launch_bounds__(32 * PW)                     \
  NAME(const T* x, const T* mean, const T* a_t, float* h, int B, int C,     \
       int r, int vec) {                                                    \
    proj_v1<T>(x, mean, a_t, h, B, C, r, vec);                              \
  }
DVP_PROJ(deja_vu_predict_proj_v1_f32, float)
DVP_PROJ(deja_vu_predict_proj_v1_f16, __half)

#define DVP_PROJ2(NAME, T)                                                  \
  extern "C" __global__ void __launch_bounds__(32 * QW * RJ)                \
  NAME(const T* x, const T* mean, const T* a_t, float* h, int B, int C,     \
       int r, int vec) {                                                    \
    proj_v2<T>(x, mean, a_t, h, B, C, r, vec);                              \
  }
DVP_PROJ2(deja_vu_predict_proj_v2_f32, float)
DVP_PROJ2(deja_vu_predict_proj_v2_f16, __half)

#define DVP_SCORES(NAME, T)                                                 \
  extern "C" __global__ void __launch_bounds__(SG * SL)                     \
  NAME(const float* h, const T* b, const T* bias, float* scores, int B,     \
       int r, int F, int vec) {                                             \
    scores_v1<T>(h, b, bias, scores, B, r, F, vec);                         \
  }
DVP_SCORES(deja_vu_predict_scores_v1_f32, float)
DVP_SCORES(deja_vu_predict_scores_v1_f16, __half)

extern "C" __global__ void __launch_bounds__(TK)
deja_vu_predict_topk_v1_f32(const float* scores, int* ids, int F, int K) {
  topk_v1(scores, ids, F, K);
}

extern "C" __global__ void __launch_bounds__(TK, 1)
deja_vu_predict_topk_v2_f32(const float* scores, int* ids, int F, int K) {
  topk_v2(scores, ids, F, K);
}

extern "C" __global__ void __launch_bounds__(TK)
deja_vu_predict_union_v1_i32(const int* ids, int n, int F, int* out, int cap,
                             int* count) {
  union_v1(ids, n, F, out, cap, count);
}
