// gpu/slim_attention.cu — chapter "Slim attention": decode (T = 1) over a
// K-only cache, and over an X cache with absorbed weights. Twins of
// reference/slim_attention.py::slim_decode (order "accumulate_k") and
// ::xcache_decode. MHA only: C = H * D.
//   K-only:  q (B, H, D)   k (B, S, C) raw keys   W_KV (C, C)   b_V (C,)
//     s[h, j] = q[h] . k[j, h*D:(h+1)*D] / sqrt(D),  p = softmax_j(s)
//     u[h] = sum_j p[h, j] k[j, :]            (all C columns, every head)
//     out[h] = u[h] . W_KV[:, h*D:(h+1)*D] + b_V[h*D:(h+1)*D]
//   X cache: q~[h] = q[h] . W_K[:, h*D:(h+1)*D]^T  (C,), computed first;
//     s[h, j] = q~[h] . x[j] / sqrt(D), u[h] = sum_j p[h, j] x[j],
//     out[h] = u[h] . W_V[:, h*D:(h+1)*D] + b_V[h*D:(h+1)*D]
// Both are the same kernel over a (B, S, C) cache: the K-only score is the
// X-cache score with q~[h] = q[h] placed in head h's columns (W_K = I).
// Every sum, the softmax and the accumulators are float32.
//
// Stages (each step of a version is one or more launches):
//   attend   the cache -> per split of S: (m, l) per head and the
//            unnormalised u[h] (C,) in float32 (B, n_split, H, C)
//   gemv     combine the splits and multiply by W (W_KV or W_V), in
//            column chunks of C: (B, H, KC, D) float32 partial sums
//   finish   sum the KC chunks, add b_V, round to the storage type
//   xq       (X cache only) q~ = q . W_K,h^T, float32 sum, stored fp16
//
// v1  naive twin of the reference: one block per (b, h); scores to a global
//     scratch row, softmax, then u[h] over all C columns, each thread a
//     column; reads the whole cache once per head (H times). float, __half.
// v2  one thread-block cluster of 8 blocks per (b, split): block r owns the
//     C/8 columns of whole heads, loads its slice of each 32-key tile once,
//     computes its partial scores on tensor cores (mma.sync m16n8k16, fp16
//     in, fp32 out), the cluster exchanges them through distributed shared
//     memory, every block runs the online softmax for all H heads and
//     accumulates P . K on its slice on tensor cores (P rounded to fp16).
//     Each cache element is read from HBM once for all heads. S is split
//     over n_split clusters (flash-decoding) so B = 1 fills the GPU.
//     Synchronous tile loads. __half only; H % 8 == 0, H <= 32, D % 16 == 0,
//     H*D/8 in {128, 256, 384, 512}.
// v3  v2 with the tiles streamed by cp.async through a 4-stage ring, so
//     loads of the next three tiles overlap the maths of this one.
// v4  v3 reorganised for latency (v3 ran at ~11 % of bandwidth: 2 warps per
//     scheduler issuing ~1.7k dependent instructions per tile): 64-key tiles
//     in a 3-stage ring, C / 256 warps of 32 columns each (16 at C = 4096),
//     K-only scores on CUDA cores (a warp per (head, key)), softmax loads
//     issued together.
// v5  v4 with the K-only scores on tensor cores (a warp per (16 keys, head):
//     tile . block-diagonal q, D / 16 mma, no shuffles; v4 spent ~45 % of its
//     instructions on the CUDA-core dots and their shuffles) and tile loads
//     with the swizzled slot computed once (8 rows per pass, fixed chunk).
// v6  v5 with the scores computed one tile ahead: tile t's P . K runs
//     between the arrive and the wait of tile t+1's cluster barrier, so the
//     barrier (and its fence) leaves the critical path; P and alpha
//     double-buffered. K-only (the X cache lacks the shared memory for a
//     third tile stage beside its query rows).
// v7  warp-specialised: a producer warp bulk-copies key rows into a 6-stage
//     mbarrier ring, scorer warps push the own heads' scores into every
//     block, consumer warps run softmax and P . K; no cluster barrier in the
//     loop (K-only).
// v8  v7 on a persistent schedule (P resident clusters share all B T tiles
//     equally; partials in P + B - 1 slots), scores pushed by st.async, and
//     gemv8 for the combine and the W GEMV (K-only).
// v9  v8 with the producer prefetching the tile PF9 ahead into L2: slower
//     (the notes give why); kept as measured.
// X cache: xv1 = v1's kernel with q~ (fp32); xv3 = v3's kernel with q~
//     (fp16) and the score summed over the cluster instead of gathered;
//     xv4 = v4's layout, scores on tensor cores, a 2-stage ring; xv5 = xv4
//     with v5's tile loads.
//
// Compile report (no GPU): python -m gpu.check_kernels gpu/slim_attention.cu

#include <cooperative_groups.h>
#include "common.cuh"

namespace cg = cooperative_groups;

// --- v1: attend ---
// grid (H, B), 128 threads. qt (B, H, QL): q (T, QL = D, scores over
// head h's columns) or q~ (float, QL = C, all columns). The cache holds
// SA >= S rows per sequence; the first S are attended. Writes u[h]
// normalised into acc (B, 1, H, C) and (m, l) = (0, 1) into ml (B, 1, H, 2).
// ROPE (rv1, the capstone's K-only cache under RoPE): the cache holds raw
// keys and the scores read them rotated to their position j on the first R
// dims of the head (rope_at, tables cs, sn (P, R/2), P >= S); the sum over
// keys reads them raw (V = K W_KV needs the unrotated keys).
template <typename T, typename TQ, bool ROPE = false>
__device__ void attend_v1(const TQ* qt, const T* cache, float* acc,
                          float* ml, float* scores, int H, int S, int SA,
                          int C, int D, int QL, const float* cs = nullptr,
                          const float* sn = nullptr, int R = 0) {
  __shared__ float red[32];
  int h = blockIdx.x, b = blockIdx.y;
  const TQ* qh = qt + ((size_t)b * H + h) * QL;
  const T* kb = cache + (size_t)b * SA * C;
  if (threadIdx.x == 0) {
    ml[((size_t)b * H + h) * 2] = 0.0f;
    ml[((size_t)b * H + h) * 2 + 1] = 1.0f;
  }
  int col0 = QL == C ? 0 : h * D;
  float* sc = scores + ((size_t)b * H + h) * S;
  float scale = rsqrtf((float)D);
  float mx = NEG_INF;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    const T* row = kb + (size_t)j * C + col0;
    float s = 0.0f;
    if constexpr (ROPE) {
      for (int i = 0; i < QL; ++i)
        s += to_f(qh[i]) * rope_at(row, i, R, j, cs, sn);
    } else {
      for (int i = 0; i < QL; ++i) s += to_f(qh[i]) * to_f(row[i]);
    }
    s *= scale;
    sc[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce<true>(mx, red);
  float l = 0.0f;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    float p = expf(sc[j] - mx);
    sc[j] = p;
    l += p;
  }
  l = block_reduce<false>(l, red);  // its __syncthreads publish sc[]
  float inv = 1.0f / l;
  float* ub = acc + ((size_t)b * H + h) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float u = 0.0f;
    for (int j = 0; j < S; ++j) u += sc[j] * to_f(kb[(size_t)j * C + c]);
    ub[c] = u * inv;
  }
}

// --- gemv: combine the splits, multiply by W's head-h columns ---
// grid (H, KC), GT threads; dynamic shared memory (BG * cc + BG * n) floats.
// acc (B, n, H, C), ml (B, n, H, 2) with m in log2 units; W (C, C);
// part (B, H, KC, D). Block (h, kc) owns rows [kc*cc, kc*cc + cc) of W.
#define BG 8
#define GT 128
// The combine's weights of one (sequence, head), by one warp: split j's
// (m_j, l_j) at m[j H 2], m[j H 2 + 1] (m in log2 units) give
// w_j = 2^(m_j - max m) / sum_j l_j 2^(m_j - max m), into wts[off + j].
__device__ __forceinline__ void split_weights(const float* m, int H, int n,
                                              int lane, float* wts, int off) {
  float mx = NEG_INF;
  for (int j = lane; j < n; j += 32) mx = fmaxf(mx, m[(size_t)j * H * 2]);
  mx = warp_max(mx);
  float L = 0.0f;
  for (int j = lane; j < n; j += 32)
    L += m[(size_t)j * H * 2 + 1] * exp2f(m[(size_t)j * H * 2] - mx);
  L = warp_sum(L);
  for (int j = lane; j < n; j += 32)
    wts[off + j] = exp2f(m[(size_t)j * H * 2] - mx) / L;
}
template <typename T>
__device__ void gemv(const float* acc, const float* ml, const T* w,
                     float* part, int B, int H, int C, int D, int n, int cc) {
  extern __shared__ float gsm[];
  float* u = gsm;             // BG x cc
  float* wts = gsm + BG * cc; // BG x n
  int h = blockIdx.x, kc = blockIdx.y, KC = gridDim.y;
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int c0 = kc * cc, c1 = min(C, c0 + cc), nc = c1 - c0;
  for (int b0 = 0; b0 < B; b0 += BG) {
    int nb = min(BG, B - b0);
    for (int bb = warp; bb < nb; bb += GT / 32) {
      split_weights(ml + ((size_t)(b0 + bb) * n * H + h) * 2, H, n, lane, wts,
                    bb * n);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < BG * nc; i += GT) {
      int bb = i / nc, c = c0 + i % nc;
      float s = 0.0f;
      if (bb < nb)
        for (int j = 0; j < n; ++j)
          s += wts[bb * n + j] *
               acc[(((size_t)(b0 + bb) * n + j) * H + h) * C + c];
      u[bb * cc + (c - c0)] = s;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += GT) {
      float r[BG];
#pragma unroll
      for (int bb = 0; bb < BG; ++bb) r[bb] = 0.0f;
      for (int c = c0; c < c1; ++c) {
        float wv = to_f(w[(size_t)c * C + h * D + d]);
#pragma unroll
        for (int bb = 0; bb < BG; ++bb) r[bb] += u[bb * cc + c - c0] * wv;
      }
      for (int bb = 0; bb < nb; ++bb)
        part[(((size_t)(b0 + bb) * H + h) * KC + kc) * D + d] = r[bb];
    }
    __syncthreads();  // u and wts are rewritten for the next batch group
  }
}

// --- finish: out[b, h, d] = sum_kc part[b, h, kc, d] + bias[h*D + d] ---
// grid (B * H), 128 threads. bias may be null.
template <typename T>
__device__ void finish(const float* part, const T* bias, T* out, int H,
                       int D, int KC) {
  int bh = blockIdx.x, h = bh % H;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float s = bias ? to_f(bias[h * D + d]) : 0.0f;
    for (int k = 0; k < KC; ++k) s += part[((size_t)bh * KC + k) * D + d];
    from_f(out[(size_t)bh * D + d], s);
  }
}

// --- xq: q~[b, h, c] = sum_d q[b, h, d] * wkt[h, d, c], float32 sum ---
// grid (ceil(C / 128), H), 128 threads, one column c per thread, all B.
// wkt is W_K re-laid out as (H, D, C) (W_K,h^T), so each read is coalesced.
// Stored as TO: float for xv1, fp16 for the tensor-core xv3.
template <typename T, typename TO>
__device__ void xq(const T* q, const T* wkt, TO* qt, int B, int H, int D,
                   int C) {
  int h = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const T* w = wkt + (size_t)h * D * C + c;
  for (int b = 0; b < B; ++b) {
    const T* qh = q + ((size_t)b * H + h) * D;
    float s = 0.0f;
    for (int d = 0; d < D; ++d) s += to_f(qh[d]) * to_f(w[(size_t)d * C]);
    from_f(qt[((size_t)b * H + h) * C + c], s);
  }
}

// --- v2, v3, xv3: one cluster per (b, split), tensor cores ---
#define CL 8    // blocks per cluster: each owns C / CL columns
#define NWF 8   // warps per block
#define NK 32   // keys per tile
#define PST 40  // row stride (halves) of the P tile: conflict-free ldmatrix

// Dynamic shared memory of the cluster kernel, bytes (mirrored by
// gpu/slim_attention.py::fast_smem_bytes).
template <int MT, int NT, int ST>
constexpr int fast_smem() {
  return ST * NK * (64 * NT) * 2 + 16 * MT * (64 * NT) * 2 +
         16 * MT * PST * 2 + 2 * 16 * MT * NK * 4 + 16 * MT * 4;
}

// The block's partial of split `split`: (m, l) of every head from rank 0,
// u[h] (unnormalised) over this block's columns from every block.
template <int MT, int NT, int RPW, int NW, bool ML = true>
__device__ __forceinline__ void write_split(const float (&acc_r)[MT][NT][4],
                                            const float (&m_r)[RPW],
                                            const float (&l_r)[RPW],
                                            float* acc, float* ml, int b,
                                            int n, int split, int H, int C,
                                            int col0, int rank, int warp,
                                            int lane) {
  if (ML && rank == 0) {  // (v11's softmax warp writes (m, l) itself)
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
      int r = warp + NW * i;
      if (r < H && lane == 0) {
        float* o = ml + (((size_t)b * n + split) * H + r) * 2;
        o[0] = m_r[i];
        o[1] = l_r[i];
      }
    }
  }
  float* ab = acc + ((size_t)b * n + split) * H * C + col0 + warp * NT * 8;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    int r = 16 * mt + lane / 4;
#pragma unroll
    for (int c = 0; c < NT; ++c) {
      int k = c * 8 + 2 * (lane % 4);
      if (r < H)
        *(float2*)(ab + (size_t)r * C + k) =
            make_float2(acc_r[mt][c][0], acc_r[mt][c][1]);
      if (r + 8 < H)
        *(float2*)(ab + (size_t)(r + 8) * C + k) =
            make_float2(acc_r[mt][c][2], acc_r[mt][c][3]);
    }
  }
}

// q:   K-only: (B, H, D) fp16 query; X cache: q~ (B, H, C) fp16.
// cache (B, SA, C) fp16, the first S rows attended. acc (B, n, H, C),
// ml (B, n, H, 2) float32, m in log2 units.
// grid (CL, n, B), NWF * 32 threads, __cluster_dims__(CL, 1, 1).
template <int MT, int NT, bool XC, int ST>
__device__ void attend_fast(const __half* q, const __half* cache, float* acc,
                            float* ml, int H, int S, int SA, int D,
                            int chunk) {
  constexpr int M = 16 * MT, CS = 64 * NT, CH = CS / 8, KS = CS / 16;
  const int C = CL * CS;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* kt = (__half*)smem;             // ST x NK x CS, swizzled
  __half* qs = kt + ST * NK * CS;         // M x CS, swizzled
  __half* ps = qs + M * CS;               // M x PST
  float* sb = (float*)(ps + M * PST);     // 2 x M x NK partial scores
  float* alpha = sb + 2 * M * NK;         // M

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  const int split = blockIdx.y, b = blockIdx.z, n = gridDim.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int s0 = split * chunk, s1 = min(S, s0 + chunk);
  const int ntiles = (s1 - s0 + NK - 1) / NK;
  const int col0 = rank * CS;
  const __half* kb = cache + (size_t)b * SA * C + col0;

  // The query rows of this block's slice, fp16, swizzled like the tiles.
  // K-only: row h holds q[h] in head h's columns and zeros elsewhere.
  for (int i = tid; i < M * CH; i += NWF * 32) {
    int r = i / CH, ch = i % CH, c = col0 + ch * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < H) {
      if (XC)
        v = *(const uint4*)(q + ((size_t)b * H + r) * C + c);
      else if (c / D == r)
        v = *(const uint4*)(q + (size_t)b * C + c);
    }
    *(uint4*)(qs + swz<CS>(r, ch * 8)) = v;
  }

  auto load_tile = [&](int t, int st) {
    __half* dst = kt + st * NK * CS;
    for (int i = tid; i < NK * CH; i += NWF * 32) {
      int r = i / CH, ch = i % CH, j = s0 + t * NK + r;
      bool ok = j < s1;
      const __half* src = kb + (size_t)(ok ? j : s0) * C + ch * 8;
      cp_async16(dst + swz<CS>(r, ch * 8), src, ok);
    }
  };

  float acc_r[MT][NT][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int c = 0; c < NT; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_r[a][c][e] = 0.0f;
  float m_r[M / 8], l_r[M / 8];  // softmax state of rows warp + 8 i
#pragma unroll
  for (int i = 0; i < M / 8; ++i) m_r[i] = NEG_INF, l_r[i] = 0.0f;
  const float qscale = LOG2E * rsqrtf((float)D);
  const int hb = CS / D;  // heads per block (K-only owner of a head)

  if (ST > 1) {
#pragma unroll
    for (int i = 0; i < ST - 1; ++i) {
      if (i < ntiles) load_tile(i, i);
      cp_async_commit();
    }
  }
  for (int t = 0; t < ntiles; ++t) {
    const int st = ST > 1 ? t % ST : 0;
    if (ST > 1) {
      cp_async_wait<(ST > 1 ? ST - 2 : 0)>();
      __syncthreads();  // tile t landed for all; tile t-1 fully consumed
      if (t + ST - 1 < ntiles) load_tile(t + ST - 1, (t + ST - 1) % ST);
      cp_async_commit();
    } else {
      __syncthreads();  // tile t-1 fully consumed
      load_tile(t, 0);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }
    const __half* kt_s = kt + st * NK * CS;
    float* sbt = sb + (t & 1) * M * NK;

    // 1. Partial scores over this slice: warp (mt, nt) < (MT, 4).
    if (warp < 4 * MT) {
      const int mt = warp / 4, nt = warp % 4;
      float c4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
      for (int ks = 0; ks < KS; ++ks) {
        if (!XC) {  // only head (col0 + 16 ks) / D has nonzero q here
          int hh = (col0 + ks * 16) / D;
          if (hh < 16 * mt || hh >= 16 * mt + 16) continue;
        }
        unsigned a[4], bf[2];
        int mi = lane >> 3;
        ldsm_x4(a, qs + swz<CS>(16 * mt + (mi & 1) * 8 + (lane & 7),
                                 ks * 16 + (mi >> 1) * 8));
        ldsm_x2(bf, kt_s + swz<CS>(8 * nt + (lane & 7),
                                   ks * 16 + ((lane >> 3) & 1) * 8));
        mma16816(c4, a, bf);
      }
      int r = 16 * mt + lane / 4, k = 8 * nt + 2 * (lane % 4);
      *(float2*)(sbt + r * NK + k) = make_float2(c4[0], c4[1]);
      *(float2*)(sbt + (r + 8) * NK + k) = make_float2(c4[2], c4[3]);
    }
    cluster.sync();  // every block's partial scores of tile t are visible

    // 2. Online softmax for all heads (every block, the same numbers):
    // warp w owns rows w + 8 i, lane = key.
    {
      const int j = s0 + t * NK + lane;
#pragma unroll
      for (int i = 0; i < M / 8; ++i) {
        const int r = warp + 8 * i;
        if (r >= H) {
          ps[r * PST + lane] = __float2half_rn(0.0f);
          if (lane == 0) alpha[r] = 1.0f;
          continue;
        }
        float s = 0.0f;
        if (XC) {
#pragma unroll
          for (int k = 0; k < CL; ++k)
            s += cluster.map_shared_rank(sbt, k)[r * NK + lane];
        } else {
          s = cluster.map_shared_rank(sbt, r / hb)[r * NK + lane];
        }
        s = j < s1 ? s * qscale : NEG_INF;
        float mnew = fmaxf(m_r[i], warp_max(s));
        float p = exp2f(s - mnew);
        float a = exp2f(m_r[i] - mnew);
        l_r[i] = l_r[i] * a + warp_sum(p);
        m_r[i] = mnew;
        ps[r * PST + lane] = __float2half_rn(p);
        if (lane == 0) alpha[r] = a;
      }
    }
    __syncthreads();

    // 3. acc[:, slice of warp] = alpha * acc + P (M x NK) . K (NK x 8 NT).
    const int cw = warp * NT * 8;  // this warp's first column in the slice
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float a0 = alpha[16 * mt + lane / 4], a1 = alpha[16 * mt + lane / 4 + 8];
#pragma unroll
      for (int c = 0; c < NT; ++c) {
        acc_r[mt][c][0] *= a0, acc_r[mt][c][1] *= a0;
        acc_r[mt][c][2] *= a1, acc_r[mt][c][3] *= a1;
      }
    }
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) {
      unsigned a[MT][4];
      const int mi = lane >> 3;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldsm_x4(a[mt], ps + (16 * mt + (mi & 1) * 8 + (lane & 7)) * PST +
                           kk * 16 + (mi >> 1) * 8);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        unsigned bf[4];
        ldsm_x4_t(bf, kt_s + swz<CS>(kk * 16 + (mi & 1) * 8 + (lane & 7),
                                     cw + np * 16 + (mi >> 1) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(acc_r[mt][2 * np], a[mt], bf);
          mma16816(acc_r[mt][2 * np + 1], a[mt], bf + 2);
        }
      }
    }
  }

  // Partials of this split: (m, l) once per cluster, u on this slice.
  write_split<MT, NT, M / 8, NWF>(acc_r, m_r, l_r, acc, ml, b, n, split, H,
                                  C, col0, rank, warp, lane);
  cluster.sync();  // no block leaves while another may read its scores
}

// --- v4, xv4: v3 reorganised for latency (v3 issued ~1.7k instructions per
// warp per 32-key tile at 2 warps per scheduler: 11k cycles a tile against a
// 2.4k-cycle HBM budget). Tiles of 64 keys (half the barriers per key),
// CS / 32 warps (16 at C = 4096) each owning 32 columns, K-only scores on the
// CUDA cores (one warp per (head, key) dot, lanes split D, no zero rows), the
// softmax rows of a warp loaded and reduced together.
#define NK4 64
#define PST4 72  // row stride (halves) of v4's P tile: conflict-free ldmatrix

template <int MT, int CS, bool XC, int ST>
constexpr int v4_smem() {
  return ST * NK4 * CS * 2 + (XC ? 16 * MT * CS * 2 : 0) +
         16 * MT * PST4 * 2 + 2 * 16 * MT * NK4 * 4 + 16 * MT * 4;
}

// The stages v4/v5 and v6 share; each version writes only how it orders
// them around the cluster barrier.
//
// Tile t's rows (keys s0 + t NK4 ...) of this block's CS columns into the
// swizzled stage dst, zero-filled past s1. CS threads, CH = CS / 8 per row:
// a pass covers 8 rows, each thread the same chunk ch0 of rows r0 + 8 k, so
// its swizzled slot dst0 is fixed (v5).
template <int CS>
__device__ __forceinline__ void load_tile_rows(__half* dst, const __half* kb,
                                               int j0, int s1, int C,
                                               int dst0, int ch0) {
  const __half* src = kb + (size_t)j0 * C + ch0 * 8;
#pragma unroll
  for (int k = 0; k < NK4 / 8; ++k) {
    bool ok = j0 + 8 * k < s1;
    cp_async16(dst + dst0 + 8 * k * CS, ok ? src + (size_t)8 * k * C : kb,
               ok);
  }
}

// K-only scores of this block's own heads (hb = CS / D of them) for one tile,
// on tensor cores: S^T = tile . Q_bd. Warp (mt, hl): keys 16 mt.., head hl's
// D / 16 k-steps. B = the block-diagonal q: column n = hl holds q[hl], the
// others are zero, so the accumulator's column hl is the whole score.
template <int CS, int NW>
__device__ __forceinline__ void own_head_scores(const __half* kt_s,
                                                float* sbt, const __half* q,
                                                int b, int H, int D, int hb,
                                                int rank, int warp,
                                                int lane) {
  const int mi = lane >> 3;
  for (int pr = warp; pr < (NK4 / 16) * hb; pr += NW) {
    const int mt = pr % (NK4 / 16), hl = pr / (NK4 / 16);
    const int hh = rank * hb + hl;
    const __half* qh = q + ((size_t)b * H + hh) * D;
    const bool mine = lane / 4 == hl;  // B's column n = lane / 4
    float c4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int ks = 0; ks < D / 16; ++ks) {
      unsigned a[4], bf[2];
      ldsm_x4(a, kt_s + swz<CS>(16 * mt + (mi & 1) * 8 + (lane & 7),
                                hl * D + ks * 16 + (mi >> 1) * 8));
      const int k = ks * 16 + (lane % 4) * 2;
      bf[0] = mine ? *(const unsigned*)(qh + k) : 0u;
      bf[1] = mine ? *(const unsigned*)(qh + k + 8) : 0u;
      mma16816(c4, a, bf);
    }
    // c4: rows = keys 16 mt + lane / 4 (+ 8), columns (lane % 4) * 2 + e
    if ((lane % 4) == hl / 2) {
      const bool odd = hl % 2;
      const int key = 16 * mt + lane / 4;
      sbt[hh * NK4 + key] = odd ? c4[1] : c4[0];
      sbt[hh * NK4 + key + 8] = odd ? c4[3] : c4[2];
    }
  }
}

// The online softmax's state before the first tile: u = 0, m = -inf, l = 0.
template <int MT, int NT, int RPW>
__device__ __forceinline__ void zero_state(float (&acc_r)[MT][NT][4],
                                           float (&m_r)[RPW],
                                           float (&l_r)[RPW]) {
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int c = 0; c < NT; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_r[a][c][e] = 0.0f;
#pragma unroll
  for (int i = 0; i < RPW; ++i) m_r[i] = NEG_INF, l_r[i] = 0.0f;
}

// Online softmax of one tile for the rows this warp owns (w + NW i); lane
// owns keys lane and lane + 32 (j = the key of lane). sv: the rows' raw
// scores. Writes P (fp16) into pst and the rescale alpha into alt; rows in
// [H, M) get P = 0 and alpha = 1 (padding of the m16 tiles).
template <int RPW, int NW, int M>
__device__ __forceinline__ void softmax_tile(const float (&sv)[RPW][2],
                                             int j, int s1, float qscale,
                                             int H, int warp, int lane,
                                             float (&m_r)[RPW],
                                             float (&l_r)[RPW], __half* pst,
                                             float* alt) {
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    const int r = warp + NW * i;
    if (r >= M) continue;
    if (r >= H) {
      pst[r * PST4 + lane] = pst[r * PST4 + lane + 32] = __float2half_rn(0.0f);
      if (lane == 0) alt[r] = 1.0f;
      continue;
    }
    float x0 = j < s1 ? sv[i][0] * qscale : NEG_INF;
    float x1 = j + 32 < s1 ? sv[i][1] * qscale : NEG_INF;
    float mnew = fmaxf(m_r[i], warp_max(fmaxf(x0, x1)));
    float p0 = exp2f(x0 - mnew), p1 = exp2f(x1 - mnew);
    float a = exp2f(m_r[i] - mnew);
    l_r[i] = l_r[i] * a + warp_sum(p0 + p1);
    m_r[i] = mnew;
    pst[r * PST4 + lane] = __float2half_rn(p0);
    pst[r * PST4 + lane + 32] = __float2half_rn(p1);
    if (lane == 0) alt[r] = a;
  }
}

// acc = alpha * acc + P (M x NKT) . tile (NKT keys x the 32 columns from c0),
// on tensor cores (fp16 P, fp32 accumulators). P's rows are PS halves apart;
// kaddr(kt_s, row, c0, n, m) points at tile element (row, c0 + n + m) (v4-v6:
// swizzled rows of CS; v7: padded rows); the sum is left to kaddr so that each
// version keeps the address arithmetic (and machine code) it was measured with.
template <int MT, int NT, int NKT, int PS, class KAddr>
__device__ __forceinline__ void pk_core(float (&acc_r)[MT][NT][4],
                                        const float* alt, const __half* pst,
                                        const __half* kt_s, int c0, int lane,
                                        KAddr kaddr) {
  const int mi = lane >> 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float a0 = alt[16 * mt + lane / 4], a1 = alt[16 * mt + lane / 4 + 8];
#pragma unroll
    for (int c = 0; c < NT; ++c) {
      acc_r[mt][c][0] *= a0, acc_r[mt][c][1] *= a0;
      acc_r[mt][c][2] *= a1, acc_r[mt][c][3] *= a1;
    }
  }
#pragma unroll
  for (int kk = 0; kk < NKT / 16; ++kk) {
    unsigned a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      ldsm_x4(a[mt], pst + (16 * mt + (mi & 1) * 8 + (lane & 7)) * PS +
                         kk * 16 + (mi >> 1) * 8);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      unsigned bf[4];
      ldsm_x4_t(bf, kaddr(kt_s, kk * 16 + (mi & 1) * 8 + (lane & 7), c0,
                          np * 16, (mi >> 1) * 8));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816(acc_r[mt][2 * np], a[mt], bf);
        mma16816(acc_r[mt][2 * np + 1], a[mt], bf + 2);
      }
    }
  }
}

// v4-v6: 64-key tiles of swizzled rows, warp w owns columns 32 w...
template <int MT, int NT, int CS>
__device__ __forceinline__ void pk_accumulate(float (&acc_r)[MT][NT][4],
                                              const float* alt,
                                              const __half* pst,
                                              const __half* kt_s, int warp,
                                              int lane) {
  pk_core<MT, NT, NK4, PST4>(acc_r, alt, pst, kt_s, warp * NT * 8, lane,
                             [](const __half* k, int r, int c0, int n, int m) {
                               return k + swz<CS>(r, c0 + n + m);
                             });
}

template <int MT, int CS, bool XC, int ST, bool V5>
__device__ void attend_v4(const __half* q, const __half* cache, float* acc,
                          float* ml, int H, int S, int SA, int D, int chunk) {
  constexpr int M = 16 * MT, CH = CS / 8, KS = CS / 16, NW = CS / 32;
  constexpr int NT = 4;   // n8 tiles (32 columns) per warp
  constexpr int RPW = (M + NW - 1) / NW;  // softmax rows per warp
  const int C = CL * CS;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* kt = (__half*)smem;                 // ST x NK4 x CS, swizzled
  __half* qs = kt + ST * NK4 * CS;            // XC: M x CS, swizzled
  __half* ps = qs + (XC ? M * CS : 0);        // M x PST4
  float* sb = (float*)(ps + M * PST4);        // 2 x M x NK4 scores
  float* alpha = sb + 2 * M * NK4;            // M

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  const int split = blockIdx.y, b = blockIdx.z, n = gridDim.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int s0 = split * chunk, s1 = min(S, s0 + chunk);
  const int ntiles = (s1 - s0 + NK4 - 1) / NK4;
  const int col0 = rank * CS;
  const int hb = CS / D;  // heads per block
  const __half* kb = cache + (size_t)b * SA * C + col0;

  if (XC) {
    for (int i = tid; i < M * CH; i += NW * 32) {
      int r = i / CH, ch = i % CH;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < H)
        v = *(const uint4*)(q + ((size_t)b * H + r) * C + col0 + ch * 8);
      *(uint4*)(qs + swz<CS>(r, ch * 8)) = v;
    }
  }

  // CS threads, CH = CS / 8 per row: a pass covers 8 rows, each thread the
  // same chunk ch0 of rows r0 + 8 k, so its swizzled slot is fixed (v5).
  const int r0 = tid / CH, ch0 = tid % CH;
  const int dst0 = r0 * CS + ((ch0 ^ r0) & 7 | (ch0 & ~7)) * 8;
  auto load_tile = [&](int t, int st) {
    __half* dst = kt + st * NK4 * CS;
    if (V5) {
      load_tile_rows<CS>(dst, kb, s0 + t * NK4 + r0, s1, C, dst0, ch0);
      return;
    }
    for (int i = tid; i < NK4 * CH; i += NW * 32) {
      int r = i / CH, ch = i % CH, j = s0 + t * NK4 + r;
      bool ok = j < s1;
      const __half* src = kb + (size_t)(ok ? j : s0) * C + ch * 8;
      cp_async16(dst + swz<CS>(r, ch * 8), src, ok);
    }
  };

  float acc_r[MT][NT][4], m_r[RPW], l_r[RPW];
  zero_state(acc_r, m_r, l_r);
  const float qscale = LOG2E * rsqrtf((float)D);

#pragma unroll
  for (int i = 0; i < ST - 1; ++i) {
    if (i < ntiles) load_tile(i, i);
    cp_async_commit();
  }
  for (int t = 0; t < ntiles; ++t) {
    const int st = t % ST;
    cp_async_wait<ST - 2>();
    __syncthreads();  // tile t landed for all; tile t-1 fully consumed
    if (t + ST - 1 < ntiles) load_tile(t + ST - 1, (t + ST - 1) % ST);
    cp_async_commit();
    const __half* kt_s = kt + st * NK4 * CS;
    float* sbt = sb + (t & 1) * M * NK4;

    // 1. Scores of this slice.
    if (XC) {  // partial scores of all heads, tensor cores
      for (int pr = warp; pr < MT * (NK4 / 8); pr += NW) {
        const int mt = pr / (NK4 / 8), nt = pr % (NK4 / 8);
        float c4[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c5[4] = {0.f, 0.f, 0.f, 0.f};
        const int mi = lane >> 3;
#pragma unroll 4
        for (int ks = 0; ks < KS; ks += 2) {  // two chains of mma in flight
          unsigned a[4], bf[2], a2[4], bf2[2];
          ldsm_x4(a, qs + swz<CS>(16 * mt + (mi & 1) * 8 + (lane & 7),
                                   ks * 16 + (mi >> 1) * 8));
          ldsm_x2(bf, kt_s + swz<CS>(8 * nt + (lane & 7),
                                     ks * 16 + (mi & 1) * 8));
          ldsm_x4(a2, qs + swz<CS>(16 * mt + (mi & 1) * 8 + (lane & 7),
                                    ks * 16 + 16 + (mi >> 1) * 8));
          ldsm_x2(bf2, kt_s + swz<CS>(8 * nt + (lane & 7),
                                      ks * 16 + 16 + (mi & 1) * 8));
          mma16816(c4, a, bf);
          mma16816(c5, a2, bf2);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) c4[e] += c5[e];
        int r = 16 * mt + lane / 4, k = 8 * nt + 2 * (lane % 4);
        *(float2*)(sbt + r * NK4 + k) = make_float2(c4[0], c4[1]);
        *(float2*)(sbt + (r + 8) * NK4 + k) = make_float2(c4[2], c4[3]);
      }
    } else if (V5) {  // own heads only, tensor cores
      own_head_scores<CS, NW>(kt_s, sbt, q, b, H, D, hb, rank, warp, lane);
    } else {  // own heads only: warp per (head, key), lanes split D
      for (int pr = warp; pr < hb * NK4; pr += NW) {
        const int hl = pr / NK4, key = pr % NK4, hh = rank * hb + hl;
        const __half* qh = q + ((size_t)b * H + hh) * D;
        float s = 0.0f;
        for (int d = lane * 2; d < D; d += 64) {  // any D % 2 == 0
          const int col = hl * D + d;
          float2 qv = __half22float2(*(const __half2*)(qh + d));
          float2 kk = __half22float2(
              *(const __half2*)(kt_s + swz<CS>(key, col)));
          s += qv.x * kk.x + qv.y * kk.y;
        }
        s = warp_sum(s);
        if (lane == 0) sbt[hh * NK4 + key] = s;
      }
    }
    cluster.sync();  // every block's scores of tile t are visible

    // 2. Online softmax, all heads, every block: warp w owns rows
    // w + NW i; lane owns keys lane and lane + 32. Loads first.
    {
      float sv[RPW][2];
#pragma unroll
      for (int i = 0; i < RPW; ++i) {
        const int r = warp + NW * i;
        sv[i][0] = sv[i][1] = 0.0f;
        if (r < H) {
          if (XC) {
#pragma unroll
            for (int k = 0; k < CL; ++k) {
              const float* src = cluster.map_shared_rank(sbt, k) + r * NK4;
              sv[i][0] += src[lane];
              sv[i][1] += src[lane + 32];
            }
          } else {
            const float* src =
                cluster.map_shared_rank(sbt, r / hb) + r * NK4;
            sv[i][0] = src[lane];
            sv[i][1] = src[lane + 32];
          }
        }
      }
      softmax_tile<RPW, NW, M>(sv, s0 + t * NK4 + lane, s1, qscale, H, warp,
                               lane, m_r, l_r, ps, alpha);
    }
    __syncthreads();

    // 3. acc = alpha * acc + P (M x NK4) . tile (NK4 x 32 columns).
    pk_accumulate<MT, NT, CS>(acc_r, alpha, ps, kt_s, warp, lane);
  }

  write_split<MT, NT, RPW, NW>(acc_r, m_r, l_r, acc, ml, b, n, split, H, C,
                               col0, rank, warp, lane);
  cluster.sync();
}

// --- v6: v5 (K-only) with the cluster barrier off the critical path ---
// v5 ran at ~12 cycles per issued instruction: every 64-key tile waits on a
// __syncthreads, a cluster barrier (with its release fence) and a second
// __syncthreads, in series. v6 computes the scores one tile ahead: tile t's
// P . K runs between the arrive and the wait of tile t+1's score exchange,
// so the barrier's latency hides behind the tensor-core work. The P tile and
// alpha are double-buffered (a fast warp may start tile t+1's softmax while
// a slow one still reads tile t's P).
template <int MT, int CS>
constexpr int v6_smem() {
  return 3 * NK4 * CS * 2 + 2 * 16 * MT * PST4 * 2 + 2 * 16 * MT * NK4 * 4 +
         2 * 16 * MT * 4;
}

template <int MT, int CS>
__device__ void attend_v6(const __half* q, const __half* cache, float* acc,
                          float* ml, int H, int S, int SA, int D, int chunk) {
  constexpr int M = 16 * MT, CH = CS / 8, NW = CS / 32, ST = 3;
  constexpr int NT = 4;
  constexpr int RPW = (M + NW - 1) / NW;
  const int C = CL * CS;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* kt = (__half*)smem;                 // 3 x NK4 x CS, swizzled
  __half* ps = kt + ST * NK4 * CS;            // 2 x M x PST4
  float* sb = (float*)(ps + 2 * M * PST4);    // 2 x M x NK4 scores
  float* alpha = sb + 2 * M * NK4;            // 2 x M

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  const int split = blockIdx.y, b = blockIdx.z, n = gridDim.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int s0 = split * chunk, s1 = min(S, s0 + chunk);
  const int ntiles = (s1 - s0 + NK4 - 1) / NK4;
  const int col0 = rank * CS;
  const int hb = CS / D;
  const __half* kb = cache + (size_t)b * SA * C + col0;
  const int mi = lane >> 3;

  const int r0 = tid / CH, ch0 = tid % CH;
  const int dst0 = r0 * CS + ((ch0 ^ r0) & 7 | (ch0 & ~7)) * 8;
  auto load_tile = [&](int t) {
    load_tile_rows<CS>(kt + (t % ST) * NK4 * CS, kb, s0 + t * NK4 + r0, s1, C,
                       dst0, ch0);
  };
  auto scores = [&](int t) {  // own heads of tile t -> sb[t & 1]
    own_head_scores<CS, NW>(kt + (t % ST) * NK4 * CS, sb + (t & 1) * M * NK4,
                            q, b, H, D, hb, rank, warp, lane);
  };

  float acc_r[MT][NT][4], m_r[RPW], l_r[RPW];
  zero_state(acc_r, m_r, l_r);
  const float qscale = LOG2E * rsqrtf((float)D);

  // Prologue: tiles 0 and 1 in flight, tile 0's scores exchanged.
  load_tile(0);
  cp_async_commit();
  if (ntiles > 1) load_tile(1);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  scores(0);
  cluster_arrive();
  cluster_wait();

  // [v6 loop]
  for (int t = 0; t < ntiles; ++t) {
    const float* sbt = sb + (t & 1) * M * NK4;
    __half* pst = ps + (t & 1) * M * PST4;
    float* alt = alpha + (t & 1) * M;
    // 1. Softmax of tile t (scores gathered from each head's owner).
    {
      float sv[RPW][2];
#pragma unroll
      for (int i = 0; i < RPW; ++i) {
        const int r = warp + NW * i;
        sv[i][0] = sv[i][1] = 0.0f;
        if (r < H) {
          const float* src = cluster.map_shared_rank(sbt, r / hb) + r * NK4;
          sv[i][0] = src[lane];
          sv[i][1] = src[lane + 32];
        }
      }
      softmax_tile<RPW, NW, M>(sv, s0 + t * NK4 + lane, s1, qscale, H, warp,
                               lane, m_r, l_r, pst, alt);
    }
    // 2. P(t) visible; tile t-1's stage free; tile t+1 landed.
    cp_async_wait<0>();
    __syncthreads();
    if (t + 2 < ntiles) load_tile(t + 2);
    cp_async_commit();
    // 3. Tile t+1's scores, then announce them (no wait yet).
    if (t + 1 < ntiles) scores(t + 1);
    cluster_arrive();
    // 4. acc = alpha * acc + P(t) . tile t, while the barrier completes.
    pk_accumulate<MT, NT, CS>(acc_r, alt, pst, kt + (t % ST) * NK4 * CS, warp,
                              lane);
    cluster_wait();  // tile t+1's scores from every block are visible
  }
  // [v6 loop end]

  write_split<MT, NT, RPW, NW>(acc_r, m_r, l_r, acc, ml, b, n, split, H, C,
                               col0, rank, warp, lane);
  cluster.sync();
}

// --- v7: warp-specialised, mbarrier pipeline, scores pushed by bulk copies ---
// v6 still ran at ~0.34 of its floor on the H200: each tile waits for the one
// load in flight (cp.async.wait_group 0) and every thread of the 8 blocks meets
// at a cluster barrier, so the chain load -> scores -> barrier -> softmax ->
// P . K runs in series in every warp. v7 gives each link its own warps and
// lets them run ahead of each other through mbarriers (FlashMLA's producer /
// consumer split, with the score exchange added):
//   warp 0        producer: each lane bulk-copies one 1 KB key row of a 32-key
//                 tile into a 6-stage ring (full/empty mbarriers), so up to
//                 four tiles (128 KB) are in flight per SM;
//   warps 1-4     scorers: the own heads' scores of a tile (tensor cores), then
//                 lane r of the first pushes them into block r of the cluster
//                 with a bulk copy shared::cta -> shared::cluster that completes
//                 on the receiver's exchange mbarrier (4 slots, each freed by a
//                 remote arrive from every block, lane r to block r);
//   warps 5..     consumers (CS / 32, each 32 columns): wait for the tile's
//                 scores, online softmax of all heads from local shared memory,
//                 one named barrier among themselves, then P . K.
// No thread waits on a cluster barrier inside the loop. Rows are padded to
// CS + 8 halves (the bulk copy cannot swizzle), which keeps ldmatrix
// conflict-free. 32-key tiles.
#define NK7 32
#define NS7 6   // tile stages
#define NX7 4   // score-exchange slots
#define NSC7 4  // scorer warps (two per 16 keys)
#define PST7 40

template <int MT, int CS>
constexpr int v7_smem() {
  return NS7 * NK7 * (CS + 8) * 2      // tile ring, padded rows
         + NX7 * 16 * MT * NK7 * 4     // exchange slots: every head's scores
         + 2 * 16 * MT * PST7 * 2      // P, double-buffered
         + 2 * 16 * MT * 4             // alpha, double-buffered
         + 4 * NK7 * 4                 // the own heads' scores, to push
         + 4 * 128 * 2                 // the own heads' q (hb <= 4, D <= 128)
         + (2 * NS7 + 2 * NX7) * 8;    // mbarriers
}

// Online softmax of one 32-key tile (lane = key) for the rows this consumer
// warp owns (w + NW i); scores from the local exchange slot xs (rows of NK7).
template <int RPW, int NW, int M>
__device__ __forceinline__ void softmax_tile7(const float* xs, int j, int s1,
                                              float qscale, int H, int cw,
                                              int lane, float (&m_r)[RPW],
                                              float (&l_r)[RPW], __half* pst,
                                              float* alt) {
  float sv[RPW];
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    const int r = cw + NW * i;
    sv[i] = r < H ? xs[r * NK7 + lane] : 0.0f;
  }
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    const int r = cw + NW * i;
    if (r >= M) continue;
    if (r >= H) {
      pst[r * PST7 + lane] = __float2half_rn(0.0f);
      if (lane == 0) alt[r] = 1.0f;
      continue;
    }
    float x = j < s1 ? sv[i] * qscale : NEG_INF;
    float mnew = fmaxf(m_r[i], warp_max(x));
    float p = exp2f(x - mnew);
    float a = exp2f(m_r[i] - mnew);
    l_r[i] = l_r[i] * a + warp_sum(p);
    m_r[i] = mnew;
    pst[r * PST7 + lane] = __float2half_rn(p);
    if (lane == 0) alt[r] = a;
  }
}

// v10's ring stage: the tensor copy's box, CS / 64 chunks of NK7 rows x 64
// columns (128 B) under the 128-byte swizzle: the 16-byte unit u of row r sits
// at unit u ^ (r % 8) of its 128 B (the stage is 1024-byte aligned, so the
// copy engine's XOR on address bits [4:6] ^ [7:9] is this one). Offset, in
// halves, of element (r, c), c a multiple of 8. ldmatrix's 8 rows x 16 B at one
// column unit land in 8 distinct bank groups: conflict-free, as padding was.
__device__ __forceinline__ int swz10(int r, int c) {
  return (c >> 6) * (NK7 * 64) + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3);
}

// v7: 32-key tiles of padded rows (RW halves), consumer cw owns columns 32 cw...
// (SW: v10's swizzled tensor-copy boxes, swz10, instead)
template <int MT, int NT, int RW, bool SW = false>
__device__ __forceinline__ void pk_accumulate7(float (&acc_r)[MT][NT][4],
                                               const float* alt,
                                               const __half* pst,
                                               const __half* kt_s, int cw,
                                               int lane) {
  pk_core<MT, NT, NK7, PST7>(acc_r, alt, pst, kt_s, cw * NT * 8, lane,
                             [](const __half* k, int r, int c0, int n, int m) {
                               if constexpr (SW)
                                 return k + swz10(r, c0 + n + m);
                               else
                                 return k + r * RW + c0 + n + m;
                             });
}

// v7, v8 scorers: the own heads' scores of one 32-key tile on tensor cores.
// Warp sw takes keys 16 (sw % 2).. and heads sw / 2, sw / 2 + NSC7 / 2, ...;
// for each, S^T = tile . q_bd over the head's D / 16 k-steps: B's column
// n = lane / 4 holds q[head] in the lanes of that head, zeros elsewhere, so
// the accumulator's column `head` is the score (two chains in flight, c4[0]
// and c4[1], zeroed and summed by the caller). arow: this lane's ldmatrix row
// of the ring stage (a7_row); qlane: the block's q (hb x D) offset by
// (lane % 4) * 2.
template <int RW>
__device__ __forceinline__ int a7_row(int sw, int lane) {
  const int mi = lane >> 3;
  return (16 * (sw % 2) + (mi & 1) * 8 + (lane & 7)) * RW + (mi >> 1) * 8;
}
__device__ __forceinline__ void own_scores7(float (&c4)[2][4],
                                            const __half* arow,
                                            const __half* qlane, int hb,
                                            int D, int sw, int lane) {
  for (int h = sw / 2; h < hb; h += NSC7 / 2) {
    const bool mine = lane / 4 == h;
    for (int kk = 0; kk < D / 16; kk += 2) {
      unsigned a0[4], a1[4], b0[2], b1[2];
      const int col = h * D + kk * 16;
      ldsm_x4(a0, arow + col);
      ldsm_x4(a1, arow + col + 16);
      const unsigned* qa = (const unsigned*)(qlane + col);
      b0[0] = mine ? qa[0] : 0u, b0[1] = mine ? qa[4] : 0u;
      b1[0] = mine ? qa[8] : 0u, b1[1] = mine ? qa[12] : 0u;
      mma16816(c4[0], a0, b0);
      mma16816(c4[1], a1, b1);
    }
  }
}
// v10's scorers: own_scores7 over the swizzled stage st (row r10 = a7_row's
// row, c10 its column offset). A separate copy: folding the address into a
// functor argument of own_scores7 changed v7's and v8's machine code (their
// measured builds are kept as they ran).
__device__ __forceinline__ void own_scores10(float (&c4)[2][4],
                                             const __half* st, int r10,
                                             int c10, const __half* qlane,
                                             int hb, int D, int sw, int lane) {
  for (int h = sw / 2; h < hb; h += NSC7 / 2) {
    const bool mine = lane / 4 == h;
    for (int kk = 0; kk < D / 16; kk += 2) {
      unsigned a0[4], a1[4], b0[2], b1[2];
      const int col = h * D + kk * 16;
      ldsm_x4(a0, st + swz10(r10, col + c10));
      ldsm_x4(a1, st + swz10(r10, col + c10 + 16));
      const unsigned* qa = (const unsigned*)(qlane + col);
      b0[0] = mine ? qa[0] : 0u, b0[1] = mine ? qa[4] : 0u;
      b1[0] = mine ? qa[8] : 0u, b1[1] = mine ? qa[12] : 0u;
      mma16816(c4[0], a0, b0);
      mma16816(c4[1], a1, b1);
    }
  }
}
// v12's scorers at a compile-time head dim DK (the launcher's D = 128): the
// k loop unrolls, and the swizzled address splits into a per-head base and
// four lane constants. For col a multiple of 16, c10 in {0, 8} and DK a
// multiple of 64, swz10(r10, h DK + col + c10) = r10 64 + h (DK / 64) NK7 64
// + (col / 64) NK7 64 + (((col / 8) % 8 ^ w) 8), w = c10 / 8 ^ r10 % 8.
template <int DK>
__device__ __forceinline__ void own_scores12(float (&c4)[2][4],
                                             const __half* st, int r10,
                                             int c10, const __half* qlane,
                                             int hb, int sw, int lane) {
  const int w = (c10 >> 3) ^ (r10 & 7);
  for (int h = sw / 2; h < hb; h += NSC7 / 2) {
    const bool mine = lane / 4 == h;
    const __half* hrow = st + r10 * 64 + h * (DK / 64) * (NK7 * 64);
    const __half* qh = qlane + h * DK;
#pragma unroll
    for (int kk = 0; kk < DK / 16; kk += 2) {
      unsigned a0[4], a1[4], b0[2], b1[2];
      const int c0 = kk * 16, c1 = kk * 16 + 16;
      ldsm_x4(a0, hrow + (c0 >> 6) * (NK7 * 64) + ((((c0 >> 3) & 7) ^ w) << 3));
      ldsm_x4(a1, hrow + (c1 >> 6) * (NK7 * 64) + ((((c1 >> 3) & 7) ^ w) << 3));
      const unsigned* qa = (const unsigned*)(qh + c0);
      b0[0] = mine ? qa[0] : 0u, b0[1] = mine ? qa[4] : 0u;
      b1[0] = mine ? qa[8] : 0u, b1[1] = mine ? qa[12] : 0u;
      mma16816(c4[0], a0, b0);
      mma16816(c4[1], a1, b1);
    }
  }
}

// ...and their staging for the push: c (keys 16 (sw % 2) + lane / 4 (+ 8),
// heads (lane % 4) * 2 + e) holds this warp's heads only (the others' columns
// are zero), written to stg (hb x NK7).
__device__ __forceinline__ void stage_scores7(float* stg, const float (&c)[4],
                                              int hb, int sw, int mt,
                                              int lane) {
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int hh = (lane % 4) * 2 + e, key = 16 * mt + lane / 4;
    if (hh < hb && hh % (NSC7 / 2) == sw / 2) {
      stg[hh * NK7 + key] = c[e];
      stg[hh * NK7 + key + 8] = c[e + 2];
    }
  }
}

// v7's and v8's shared memory (v7_smem bytes), carved from the dynamic
// allocation, and their mbarriers: the ring's full (the producer's 32 lanes)
// and empty (the scorer and the NW consumer warps), the exchange slots' full
// (armed with the tile's bytes, one phase ahead) and empty (one arrive from
// every block of the cluster). v11 has NPS = NP11 P slots instead of 2, with
// their full (the softmax warp's 32 lanes) and empty (the NW consumers).
template <int M, int RW, int NPS = 2>
struct Smem7 {
  __half* kt;                  // NS7 x NK7 x RW, the tile ring
  float* xch;                  // NX7 x M x NK7, the score-exchange slots
  __half* ps;                  // NPS x M x PST7, P double-buffered (v11: ring)
  float* alpha;                // NPS x M
  float* stg;                  // 4 x NK7, the own heads' scores, to push
  __half* qs;                  // hb x D, the own heads' q
  unsigned long long *full, *empty, *xfull, *xempty, *pfull, *pempty;
  __device__ __forceinline__ explicit Smem7(unsigned char* base) {
    kt = (__half*)base;
    xch = (float*)(kt + NS7 * NK7 * RW);
    ps = (__half*)(xch + NX7 * M * NK7);
    alpha = (float*)(ps + NPS * M * PST7);
    stg = alpha + NPS * M;
    qs = (__half*)(stg + 4 * NK7);
    full = (unsigned long long*)(qs + 4 * 128);
    empty = full + NS7;
    xfull = empty + NS7;
    xempty = xfull + NX7;
    pfull = xempty + NX7;  // v11
    pempty = pfull + NPS;
  }
  __device__ __forceinline__ void init_barriers(int nw, unsigned xbytes,
                                                unsigned nfull = 32,
                                                int np = 0) const {
    for (int p = 0; p < np; ++p) {  // v11's P ring
      mbar_init(&pfull[p], 32);
      mbar_init(&pempty[p], nw);
    }
    for (int s = 0; s < NS7; ++s) {
      mbar_init(&full[s], nfull);
      mbar_init(&empty[s], NSC7 + nw);
    }
    for (int x = 0; x < NX7; ++x) {
      mbar_init(&xfull[x], 1);
      mbar_init(&xempty[x], CL);
    }
    fence_mbar_init();
    for (int x = 0; x < NX7; ++x) mbar_expect_tx(&xfull[x], xbytes);
  }
};

template <int MT, int CS>
__device__ void attend_v7(const __half* q, const __half* cache, float* acc,
                          float* ml, int H, int S, int SA, int D, int chunk) {
  constexpr int M = 16 * MT, NW = CS / 32, RW = CS + 8, NT = 4;
  constexpr int RPW = (M + NW - 1) / NW;
  constexpr int CONSUMERS = NW * 32;
  const int C = CL * CS;
  extern __shared__ __align__(128) unsigned char smem[];
  const Smem7<M, RW> sm(smem);
  __half *kt = sm.kt, *ps = sm.ps, *qs = sm.qs;
  float *xch = sm.xch, *alpha = sm.alpha, *stg = sm.stg;
  unsigned long long *full = sm.full, *empty = sm.empty, *xfull = sm.xfull,
                     *xempty = sm.xempty;

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  const int split = blockIdx.y, b = blockIdx.z, n = gridDim.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int s0 = split * chunk, s1 = min(S, s0 + chunk);
  const int ntiles = (s1 - s0 + NK7 - 1) / NK7;
  const int col0 = rank * CS;
  const int hb = CS / D;  // heads per block (<= 4)
  const unsigned xbytes = (unsigned)(H * NK7 * 4);  // one tile, all blocks

  for (int i = tid; i < hb * D; i += blockDim.x)
    qs[i] = q[((size_t)b * H + rank * hb) * D + i];
  if (tid == 0) sm.init_barriers(NW, xbytes);
  __syncthreads();
  cluster_arrive();  // every block's barriers exist before anyone pushes
  cluster_wait();

  if (warp == 0) {
    // [v7 producer]
    const __half* kb = cache + (size_t)b * SA * C + col0;
    for (int t = 0; t < ntiles; ++t) {
      const int s = t % NS7;
      if (t >= NS7) mbar_wait(&empty[s], (t / NS7 - 1) & 1);
      const int j = s0 + t * NK7 + lane;
      __half* dst = kt + (s * NK7 + lane) * RW;
      if (lane == 0)
        mbar_expect_tx(&full[s], (unsigned)(min(NK7, s1 - s0 - t * NK7) *
                                            CS * 2));
      if (j < s1) {
        bulk_load(dst, kb + (size_t)j * C, CS * 2, &full[s]);
      } else {  // past the chunk: zeros (P is 0 there, and 0 * NaN = NaN)
        for (int i = 0; i < CS / 8; ++i)
          *(uint4*)(dst + 8 * i) = make_uint4(0, 0, 0, 0);
      }
      if (lane != 0) mbar_arrive(&full[s]);
    }
    // [v7 producer end]
  } else if (warp <= NSC7) {
    // [v7 scorers]
    const int sw = warp - 1, mt = sw % 2, aoff = a7_row<RW>(sw, lane);
    const __half* qlane = qs + (lane % 4) * 2;
    for (int t = 0; t < ntiles; ++t) {
      const int s = t % NS7, x = t % NX7;
      mbar_wait(&full[s], (t / NS7) & 1);
      float c4[2][4] = {};
      own_scores7(c4, kt + s * NK7 * RW + aoff, qlane, hb, D, sw, lane);
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);  // done reading the tile
#pragma unroll
      for (int e = 0; e < 4; ++e) c4[0][e] += c4[1][e];
      named_sync(2, 32 * NSC7);  // the last push has read stg
      stage_scores7(stg, c4[0], hb, sw, mt, lane);
      fence_proxy_async();  // stg, written here, is read by the bulk copy
      named_sync(2, 32 * NSC7);
      if (sw == 0) {  // lane r pushes into block r: 8 copies in one issue
        if (t >= NX7) mbar_wait(&xempty[x], (t / NX7 - 1) & 1);
        if (lane < CL) {
          bulk_push(cluster_addr(xch + x * M * NK7 + rank * hb * NK7, lane),
                    stg, hb * NK7 * 4, cluster_addr(&xfull[x], lane));
          bulk_commit();
          bulk_wait_read0();
        }
      }
    }
    // [v7 scorers end]
  } else {
    // [v7 consumers]
    const int cw = warp - NSC7 - 1;
    float acc_r[MT][NT][4], m_r[RPW], l_r[RPW];
    zero_state(acc_r, m_r, l_r);
    const float qscale = LOG2E * rsqrtf((float)D);
    for (int t = 0; t < ntiles; ++t) {
      const int s = t % NS7, x = t % NX7;
      __half* pst = ps + (t & 1) * M * PST7;
      float* alt = alpha + (t & 1) * M;
      mbar_wait(&xfull[x], (t / NX7) & 1);  // every head's scores
      softmax_tile7<RPW, NW, M>(xch + x * M * NK7, s0 + t * NK7 + lane, s1,
                                qscale, H, cw, lane, m_r, l_r, pst, alt);
      named_sync(1, CONSUMERS);  // P(t) visible; slot x read by all
      if (cw == 0 && t + NX7 < ntiles) {  // free slot x in every block
        if (lane == 0) mbar_expect_tx(&xfull[x], xbytes);  // its next phase
        __syncwarp();  // ...is armed before any block may push into it
        if (lane < CL) mbar_arrive_remote(cluster_addr(&xempty[x], lane));
      }
      mbar_wait(&full[s], (t / NS7) & 1);
      pk_accumulate7<MT, NT, RW>(acc_r, alt, pst, kt + s * NK7 * RW, cw, lane);
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);
    }
    // [v7 consumers end]
    write_split<MT, NT, RPW, NW>(acc_r, m_r, l_r, acc, ml, b, n, split, H, C,
                                 col0, rank, cw, lane);
  }
  __syncwarp();
  cluster_arrive();  // no block leaves while another may still push into it
  cluster_wait();
}

// --- v8: v7 on a persistent, balanced schedule; scores pushed by st.async ---
// v7 launches one cluster per (sequence, chunk). Only 15 clusters of 8 fit on
// a 132-SM card at once, so B n clusters run in ceil(B n / 15) waves (B = 8,
// n = 9: 72 clusters in 5 waves, the last one 4/5 idle), every wave pays the
// pipeline's fill, and the step writes and re-reads B n H C float32 partials
// (38 MB at B = 8, S = 16K), which the gemv reads back with ~1 load in flight
// per thread: v7's step spends ~80 us after its attend kernel. v8 takes
// FlashMLA's tile scheduler (get_mla_metadata / num_sm_parts): P clusters
// (P = the clusters resident at once), the B T tiles of all sequences laid
// end to end and cut into P equal ranges, cluster c taking tiles
// [c BT / P, (c+1) BT / P). A range may cross sequences: at each boundary the
// consumers write the finished sequence's partial and start afresh, the
// scorers load the next sequence's q. Sequence b's partial from cluster c
// goes to slot c + b, so there are at most P + B - 1 of them (23 at B = 8).
// The score push is one st.async (16 bytes, completing on the receiver's
// mbarrier) per lane and destination, read straight from registers: no bulk
// copy, no proxy fence, no wait for the copy to read its source.
//
// v9 = v8 with PF = PF9: the producer also prefetches, into L2, the rows of the
// tile PF9 tiles ahead of the one it loads. The guess behind it (v8's
// ablation in the notes: the ring of loads alone moves ~32 GB/s per SM, the
// whole kernel ~23): the slots the scorers and consumers hold are slots not in
// flight, and loads served from L2 would free them sooner. Measured: 1.7x
// slower. With all clusters running the prefetched lines are evicted before
// use (the cache is read twice from DRAM), and even with one cluster, where
// nothing is read twice, each SM's rate halves: the limit is the rate at which
// an SM's copy engine takes 1 KB bulk requests, and v9 doubles their number.
//
// v10 = v8 with TM: the producer loads each tile with one tensor copy (tmap,
// see attend_v10) instead of 32 bulk copies of one row; the ring's stages are
// the copy's swizzled boxes (RW = CS, swz10) instead of padded rows.
//
// v11 = v10 with SMW: the softmax moves out of the consumers into one softmax
// warp (warp 1 + NSC7; the consumers follow it), see attend_v11. v12 = v11
// with S12: the scorers' loop unrolled at D = 128 (own_scores12).
#define PF9 10
#define NP11 4  // v11's P slots
template <int MT, int CS, int PF = 0, bool TM = false, bool SMW = false,
          bool S12 = false>
__device__ void attend_v8(const __half* q, const __half* cache, float* acc,
                          float* ml, int H, int S, int SA, int D, int B,
                          const TensorMap* tmap = nullptr) {
  constexpr int M = 16 * MT, NW = CS / 32, RW = TM ? CS : CS + 8, NT = 4;
  constexpr int RPW = (M + NW - 1) / NW;
  constexpr int CONSUMERS = NW * 32;
  const int C = CL * CS;
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* base = smem;  // v10: the ring on the swizzle's 1 KB period
  if constexpr (TM) base += (1024u - (smem_u32(smem) & 1023u)) & 1023u;
  const Smem7<M, RW, SMW ? NP11 : 2> sm(base);
  __half *kt = sm.kt, *ps = sm.ps, *qs = sm.qs;
  float *xch = sm.xch, *alpha = sm.alpha, *stg = sm.stg;
  unsigned long long *full = sm.full, *empty = sm.empty, *xfull = sm.xfull,
                     *xempty = sm.xempty, *pfull = sm.pfull,
                     *pempty = sm.pempty;

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank();
  const int cid = blockIdx.y, P = gridDim.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int T = (S + NK7 - 1) / NK7;  // tiles per sequence
  const long long total = (long long)B * T;
  const long long g0 = cid * total / P;
  const int ntiles = (int)((cid + 1) * total / P - g0);  // >= 1 (P <= BT)
  const int k0 = (int)(g0 % T), b0 = (int)(g0 / T);      // the first tile
  const int col0 = rank * CS;
  const int hb = CS / D;  // heads per block (<= 4)
  const unsigned xbytes = (unsigned)(H * NK7 * 4);  // one tile, all blocks

  if (tid == 0) sm.init_barriers(NW, xbytes, TM ? 1 : 32, SMW ? NP11 : 0);
  __syncthreads();
  cluster_arrive();  // every block's barriers exist before anyone pushes
  cluster_wait();

  if (warp == 0 && TM) {
    // [v10 producer] one lane, one copy of the block's 32 x CS tile per stage
    if (lane == 0) {
      int k = k0, b = b0;
      for (int t = 0; t < ntiles; ++t) {
        const int s = t % NS7;
        if (t >= NS7) mbar_wait(&empty[s], (t / NS7 - 1) & 1);
        mbar_expect_tx(&full[s], (unsigned)(NK7 * CS * 2));  // rows >= S: 0s
        tma_load_4d(kt + s * NK7 * RW, tmap, 0, k * NK7, col0 / 64, b,
                    &full[s]);
        if (++k == T) k = 0, ++b;
      }
    }
    // [v10 producer end]
  } else if (warp == 0) {
    // [v8 producer]
    int k = k0, b = b0;  // tile k of sequence b
    int kp = k0 + PF, bp = b0;  // v9: the tile PF ahead, (kp, bp)
    if (PF > 0)
      while (kp >= T) kp -= T, ++bp;
    for (int t = 0; t < ntiles; ++t) {
      const int s = t % NS7;
      if (t >= NS7) mbar_wait(&empty[s], (t / NS7 - 1) & 1);
      const int j = k * NK7 + lane;
      __half* dst = kt + (s * NK7 + lane) * RW;
      if (lane == 0)
        mbar_expect_tx(&full[s], (unsigned)(min(NK7, S - k * NK7) * CS * 2));
      if (j < S) {
        bulk_load(dst, cache + ((size_t)b * SA + j) * C + col0, CS * 2,
                  &full[s]);
      } else {  // past the sequence: zeros (P is 0 there, and 0 * NaN = NaN)
        for (int i = 0; i < CS / 8; ++i)
          *(uint4*)(dst + 8 * i) = make_uint4(0, 0, 0, 0);
      }
      if (lane != 0) mbar_arrive(&full[s]);
      if (++k == T) k = 0, ++b;
      if (PF > 0) {  // v9: row `lane` of tile t + PF into L2
        const int jp = kp * NK7 + lane;
        if (t + PF < ntiles && jp < S)
          bulk_prefetch_l2(cache + ((size_t)bp * SA + jp) * C + col0, CS * 2);
        if (++kp == T) kp = 0, ++bp;
      }
    }
    // [v8 producer end]
  } else if (warp <= NSC7) {
    // [v8 scorers] as v7's, with q reloaded at each sequence's first tile
    const int sw = warp - 1, mt = sw % 2, aoff = a7_row<RW>(sw, lane);
    const int r10 = 16 * mt + ((lane >> 3) & 1) * 8 + (lane & 7);  // v10
    const int c10 = (lane >> 4) * 8;  // a7_row's row and column, unswizzled
    const __half* qlane = qs + (lane % 4) * 2;
    int k = k0, b = b0;
    for (int t = 0; t < ntiles; ++t) {
      const int s = t % NS7, x = t % NX7;
      if (t == 0 || k == 0) {  // a new sequence: its heads' q
        named_sync(2, 32 * NSC7);  // every scorer is done with the last one
        for (int i = tid - 32; i < hb * D; i += 32 * NSC7)
          qs[i] = q[((size_t)b * H + rank * hb) * D + i];
        named_sync(2, 32 * NSC7);
      }
      mbar_wait(&full[s], (t / NS7) & 1);
      float c4[2][4] = {};
      if constexpr (S12) {  // v12: D = 128 unrolled, else v10's loop
        if (D == 128)
          own_scores12<128>(c4, kt + s * NK7 * RW, r10, c10, qlane, hb, sw,
                            lane);
        else
          own_scores10(c4, kt + s * NK7 * RW, r10, c10, qlane, hb, D, sw,
                       lane);
      } else if constexpr (TM)
        own_scores10(c4, kt + s * NK7 * RW, r10, c10, qlane, hb, D, sw, lane);
      else
        own_scores7(c4, kt + s * NK7 * RW + aoff, qlane, hb, D, sw, lane);
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);  // done reading the tile
#pragma unroll
      for (int e = 0; e < 4; ++e) c4[0][e] += c4[1][e];
      named_sync(2, 32 * NSC7);  // the last push has read stg
      stage_scores7(stg, c4[0], hb, sw, mt, lane);
      named_sync(2, 32 * NSC7);
      if (sw == 0) {  // lane i: floats 4i..4i+3 of the block's scores, to all
        if (t >= NX7) mbar_wait(&xempty[x], (t / NX7 - 1) & 1);
        if (lane < hb * NK7 / 4) {
          const float4 v = *(const float4*)(stg + 4 * lane);
          const float* dst = xch + x * M * NK7 + rank * hb * NK7 + 4 * lane;
#pragma unroll
          for (int r = 0; r < CL; ++r)
            st_async_v4(cluster_addr(dst, r), v, cluster_addr(&xfull[x], r));
        }
      }
      if (++k == T) k = 0, ++b;
    }
    // [v8 scorers end]
  } else if (SMW && warp == 1 + NSC7) {
    // [v11 softmax warp] lane r owns row (head) r of every tile
    const int r = lane;
    const float qscale = LOG2E * rsqrtf((float)D);
    float m = NEG_INF, l = 0.0f;
    int k = k0, b = b0;
    for (int t = 0; t < ntiles; ++t) {
      const int x = t % NX7, p = t % NP11;
      mbar_wait(&xfull[x], (t / NX7) & 1);  // every head's scores
      float4 v[8];  // v[j]: keys 4 c .. 4 c + 3, c = (j + r) % 8: 8 lanes
      const float* xr = xch + (x * M + r) * NK7;  // ...meet 8 bank groups
#pragma unroll
      for (int j = 0; j < 8; ++j)
        v[j] = r < H ? *(const float4*)(xr + 4 * ((j + r) & 7))
                     : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      __syncwarp();  // slot x read: free it in every block
      if (t + NX7 < ntiles) {
        if (lane == 0) mbar_expect_tx(&xfull[x], xbytes);  // its next phase
        __syncwarp();  // ...is armed before any block may push into it
        if (lane < CL) mbar_arrive_remote(cluster_addr(&xempty[x], lane));
      }
      float xv[8][4], mx = NEG_INF;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int key = k * NK7 + 4 * ((j + r) & 7);
        const float e4[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
#pragma unroll
        for (int e = 0; e < 4; ++e)
          xv[j][e] = key + e < S ? e4[e] * qscale : NEG_INF;
        mx = fmaxf(mx, fmaxf(fmaxf(xv[j][0], xv[j][1]),
                             fmaxf(xv[j][2], xv[j][3])));
      }
      const float mnew = fmaxf(m, mx);  // finite: a tile has a key < S
      const float a = exp2f(m - mnew);   // m = -inf at a sequence's start: 0
      float sum = 0.0f;
      uint2 ph[8];  // P's row, 4 halves per chunk
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float pj[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) sum += pj[e] = exp2f(xv[j][e] - mnew);
        const __half2 h0 = __floats2half2_rn(pj[0], pj[1]);
        const __half2 h1 = __floats2half2_rn(pj[2], pj[3]);
        ph[j] = make_uint2(*(const unsigned*)&h0, *(const unsigned*)&h1);
      }
      l = l * a + sum;
      m = mnew;
      if (t >= NP11) mbar_wait(&pempty[p], (t / NP11 - 1) & 1);
      if (r < M) {  // rows in [H, M): P = 0, alpha = 1 (the m16 padding)
        __half* pr = ps + (p * M + r) * PST7;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          *(uint2*)(pr + 4 * ((j + r) & 7)) = r < H ? ph[j] : make_uint2(0, 0);
        alpha[p * M + r] = r < H ? a : 1.0f;
      }
      mbar_arrive(&pfull[p]);
      if (++k == T || t == ntiles - 1) {  // sequence b's part ends here
        if (rank == 0 && r < H) {
          float* o = ml + ((size_t)(cid + b) * H + r) * 2;
          o[0] = m;
          o[1] = l;
        }
        m = NEG_INF, l = 0.0f;
        if (k == T) k = 0, ++b;
      }
    }
    // [v11 softmax warp end]
  } else if constexpr (SMW) {
    // [v11 consumers] P . K alone, each warp at its own pace (no barrier)
    const int cw = warp - NSC7 - 2;
    float acc_r[MT][NT][4], m_r[RPW], l_r[RPW];
    zero_state(acc_r, m_r, l_r);
    int k = k0, b = b0;
    for (int t = 0; t < ntiles; ++t) {
      const int s = t % NS7, p = t % NP11;
      mbar_wait(&pfull[p], (t / NP11) & 1);
      mbar_wait(&full[s], (t / NS7) & 1);
      pk_accumulate7<MT, NT, RW, TM>(acc_r, alpha + p * M, ps + p * M * PST7,
                                     kt + s * NK7 * RW, cw, lane);
      __syncwarp();
      if (lane == 0) {
        mbar_arrive(&empty[s]);
        mbar_arrive(&pempty[p]);
      }
      if (++k == T || t == ntiles - 1) {  // sequence b's part ends here
        write_split<MT, NT, RPW, NW, false>(acc_r, m_r, l_r, acc, ml, cid + b,
                                            1, 0, H, C, col0, rank, cw, lane);
        zero_state(acc_r, m_r, l_r);
        if (k == T) k = 0, ++b;
      }
    }
    // [v11 consumers end]
  } else {
    // [v8 consumers]
    const int cw = warp - NSC7 - 1;
    float acc_r[MT][NT][4], m_r[RPW], l_r[RPW];
    zero_state(acc_r, m_r, l_r);
    const float qscale = LOG2E * rsqrtf((float)D);
    int k = k0, b = b0;
    for (int t = 0; t < ntiles; ++t) {
      const int s = t % NS7, x = t % NX7;
      __half* pst = ps + (t & 1) * M * PST7;
      float* alt = alpha + (t & 1) * M;
      mbar_wait(&xfull[x], (t / NX7) & 1);  // every head's scores
      softmax_tile7<RPW, NW, M>(xch + x * M * NK7, k * NK7 + lane, S, qscale,
                                H, cw, lane, m_r, l_r, pst, alt);
      named_sync(1, CONSUMERS);  // P(t) visible; slot x read by all
      if (cw == 0 && t + NX7 < ntiles) {  // free slot x in every block
        if (lane == 0) mbar_expect_tx(&xfull[x], xbytes);  // its next phase
        __syncwarp();  // ...is armed before any block may push into it
        if (lane < CL) mbar_arrive_remote(cluster_addr(&xempty[x], lane));
      }
      mbar_wait(&full[s], (t / NS7) & 1);
      pk_accumulate7<MT, NT, RW, TM>(acc_r, alt, pst, kt + s * NK7 * RW, cw,
                                     lane);
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);
      if (++k == T || t == ntiles - 1) {  // sequence b's part ends here
        write_split<MT, NT, RPW, NW>(acc_r, m_r, l_r, acc, ml, cid + b, 1, 0,
                                     H, C, col0, rank, cw, lane);
        zero_state(acc_r, m_r, l_r);
        if (k == T) k = 0, ++b;
      }
    }
    // [v8 consumers end]
  }
  __syncwarp();
  cluster_arrive();  // no block leaves while another may still push into it
  cluster_wait();
}

// v9: attend_v8 with the L2 prefetch PF9 tiles ahead.
template <int MT, int CS>
__device__ __forceinline__ void attend_v9(const __half* q,
                                          const __half* cache, float* acc,
                                          float* ml, int H, int S, int SA,
                                          int D, int B) {
  attend_v8<MT, CS, PF9>(q, cache, acc, ml, H, S, SA, D, B);
}

// v10: attend_v8 with the tile ring filled by tensor copies. tmap (built by the
// launcher, gpu/slim_attention.py::v10_tensor_map) views the cache as 4-D,
// innermost first: (64 columns, S rows, C / 64 column chunks, B sequences),
// strides (2 B, 2 C B, 128 B, 2 SA C B), box (64, NK7, CS / 64, 1): block
// `rank`'s NK7 x CS tile of sequence b at key row k NK7 is the box at
// (0, k NK7, rank CS / 64, b), NK7 CS 2 bytes in one request, landing as
// CS / 64 swizzled chunks of NK7 x 64 (swz10). The row extent is S, so rows
// past the sequence arrive as zeros. FlashMLA loads its K tiles the same way
// (64-column boxes under the 128-byte swizzle); the chunk dimension folds
// the block's 8 of them into one copy.
template <int MT, int CS>
__device__ __forceinline__ void attend_v10(const __half* q,
                                           const TensorMap* tmap, float* acc,
                                           float* ml, int H, int S, int SA,
                                           int D, int B) {
  attend_v8<MT, CS, 0, true>(q, nullptr, acc, ml, H, S, SA, D, B, tmap);
}

template <int MT, int CS>
constexpr int v10_smem() {  // v7_smem without the row padding, + 1 KB to align
  return v7_smem<MT, CS>() - NS7 * NK7 * 8 * 2 + 1024;
}

// v11: v10 whose consumers no longer run the softmax. v10's consumer warps (16
// at the headline shape) each ran a tile's softmax for two rows (two 5-step
// shuffle reductions) and then P . K, all 16 in step at a named barrier: ncu
// put half their time in the shuffles' latency, and the per-tile chain, not
// the loads, set the kernel's pace. Here one softmax warp, lane r = head r,
// reads its row's 32 scores (no shuffles: max and sum in registers), keeps
// (m, l), writes P and alpha into a ring of NP11 slots and frees the
// exchange slot; the consumers wait for P and the tile, run P . K and release
// both, with no barrier among them. (m, l) of a finished sequence come from the
// softmax warp, the u partials from the consumers.
template <int MT, int CS>
__device__ __forceinline__ void attend_v11(const __half* q,
                                           const TensorMap* tmap, float* acc,
                                           float* ml, int H, int S, int SA,
                                           int D, int B) {
  attend_v8<MT, CS, 0, true, true>(q, nullptr, acc, ml, H, S, SA, D, B, tmap);
}

// v12: v11 whose scorers run own_scores12<128> when D = 128. ncu put v10's
// scorer time in address arithmetic and loop overhead spread over the runtime
// D loop (swz10 per ldmatrix) and the load_score ablation at 0.8 us per tile,
// which with v11's consumers no longer the bottleneck is the slowest stage.
template <int MT, int CS>
__device__ __forceinline__ void attend_v12(const __half* q,
                                           const TensorMap* tmap, float* acc,
                                           float* ml, int H, int S, int SA,
                                           int D, int B) {
  attend_v8<MT, CS, 0, true, true, true>(q, nullptr, acc, ml, H, S, SA, D, B,
                                         tmap);
}

template <int MT, int CS>
constexpr int v11_smem() {  // v10's, with NP11 P slots and their mbarriers
  return v10_smem<MT, CS>() + (NP11 - 2) * 16 * MT * (PST7 * 2 + 4) +
         2 * NP11 * 8;
}

// v8's partial slots of sequence b: the clusters whose tile ranges meet it,
// first = the one holding tile bT, count up to the one holding (b+1)T - 1
// (tile t lies in cluster floor(((t+1) P - 1) / BT)); slots first + b ...
__device__ __forceinline__ void v8_slots(int b, int T, int P, long long total,
                                         int& first, int& count) {
  const long long t0 = (long long)b * T, t1 = t0 + T - 1;
  const int c0 = (int)(((t0 + 1) * P - 1) / total);
  const int c1 = (int)(((t1 + 1) * P - 1) / total);
  first = c0 + b;
  count = c1 - c0 + 1;
}

// --- gemv8: v8's combine and W GEMV ---
// grid (H, KC), GT8 threads; dynamic shared memory (BG cc + BG P) floats and
// 2 BG ints. acc (P + B - 1, H, C), ml (P + B - 1, H, 2), m in log2 units;
// W (C, C) fp16, 16-byte aligned; part (B, H, KC, D); cc and C multiples of
// 16. Block (h, kc) owns W's rows [kc cc, kc cc + cc) of head h's columns.
// The gemv above runs a thread per column d over every row in turn (one load
// in flight) and a thread per combined element over the slots (one more).
// Here everything is issued in batches before it is used:
//   combine  IT8 items of 4 columns per thread, two slots per round: 2 IT8
//            16-byte loads in flight per thread;
//   W        the block's rows are prefetched to L2 (one bulk prefetch per
//            row) before the combine, so they stream in meanwhile; then
//            lane % 16 is a row group (rows rg, rg + 16, ...), lane / 16 and
//            the warp pick 8 columns, WB8 rows' 16-byte loads per batch; the
//            16 row groups' sums meet by shuffles.
// KC is chosen so that H KC blocks fit the card in one wave (gemv8_plan).
#define GT8 256
#define IT8 4
#define WB8 8
__device__ __forceinline__ void w_batch8(uint4 (&wv)[WB8], const __half* wc,
                                         int row0, int nc, int C) {
#pragma unroll
  for (int i = 0; i < WB8; ++i) {
    const int row = row0 + 16 * i;
    wv[i] = row < nc ? *(const uint4*)(wc + (size_t)row * C)
                     : make_uint4(0, 0, 0, 0);
  }
}

__device__ void gemv8(const float* acc, const float* ml, const __half* w,
                      float* part, int B, int H, int C, int D, int P, int T,
                      int cc) {
  extern __shared__ float gsm[];
  float* u = gsm;                          // BG x cc
  float* wts = gsm + BG * cc;              // BG x P
  int* sfirst = (int*)(wts + BG * P);      // BG
  int* scount = sfirst + BG;               // BG
  const int h = blockIdx.x, kc = blockIdx.y, KC = gridDim.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int c0 = kc * cc, nc = min(C, c0 + cc) - c0;
  const int rg = lane % 16, cgs = D / 8, n4 = nc / 4, items = BG * n4;
  const long long total = (long long)B * T;
  for (int bs = 0; bs < B; bs += BG) {
    const int nb = min(BG, B - bs);
    if (bs == 0)  // W's block rows to L2 now: they stream in during the combine
      for (int row = tid; row < nc; row += GT8)
        bulk_prefetch_l2(w + (size_t)(c0 + row) * C + h * D, D * 2);
    for (int bb = warp; bb < nb; bb += GT8 / 32) {
      int first, n;
      v8_slots(bs + bb, T, P, total, first, n);
      split_weights(ml + ((size_t)first * H + h) * 2, H, n, lane, wts, bb * P);
      if (lane == 0) sfirst[bb] = first, scount[bb] = n;
    }
    __syncthreads();
    int maxc = 0;
    for (int bb = 0; bb < nb; ++bb) maxc = max(maxc, scount[bb]);
    for (int i0 = tid; i0 < items; i0 += IT8 * GT8) {
      float4 sum[IT8];
#pragma unroll
      for (int k = 0; k < IT8; ++k) sum[k] = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int j0 = 0; j0 < maxc; j0 += 2) {
        float4 v[IT8][2];
        float wt[IT8][2];
#pragma unroll
        for (int k = 0; k < IT8; ++k)
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) {
            const int i = i0 + k * GT8, bb = i / n4, j = j0 + jj;
            const bool ok = i < items && bb < nb && j < scount[bb];
            wt[k][jj] = ok ? wts[bb * P + j] : 0.0f;
            v[k][jj] = ok ? *(const float4*)(acc +
                                              ((size_t)(sfirst[bb] + j) * H +
                                               h) * C + c0 + 4 * (i % n4))
                          : make_float4(0.f, 0.f, 0.f, 0.f);
          }
#pragma unroll
        for (int k = 0; k < IT8; ++k)
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) {
            sum[k].x += wt[k][jj] * v[k][jj].x;
            sum[k].y += wt[k][jj] * v[k][jj].y;
            sum[k].z += wt[k][jj] * v[k][jj].z;
            sum[k].w += wt[k][jj] * v[k][jj].w;
          }
      }
#pragma unroll
      for (int k = 0; k < IT8; ++k) {
        const int i = i0 + k * GT8;
        if (i < items) *(float4*)(u + (i / n4) * cc + 4 * (i % n4)) = sum[k];
      }
    }
    __syncthreads();
    for (int cg = warp * 2 + lane / 16; cg < cgs; cg += 2 * GT8 / 32) {
      const __half* wc = w + (size_t)c0 * C + h * D + cg * 8;
      float r[BG][8];
#pragma unroll
      for (int bb = 0; bb < BG; ++bb)
#pragma unroll
        for (int e = 0; e < 8; ++e) r[bb][e] = 0.0f;
      for (int row0 = rg; row0 < nc; row0 += 16 * WB8) {
        uint4 wv[WB8];
        w_batch8(wv, wc, row0, nc, C);
#pragma unroll
        for (int i = 0; i < WB8; ++i) {
          if (row0 + 16 * i >= nc) break;
          const int row = row0 + 16 * i;
          const __half2* hv = (const __half2*)&wv[i];
          float wf[8];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = __half22float2(hv[e]);
            wf[2 * e] = f.x, wf[2 * e + 1] = f.y;
          }
#pragma unroll
          for (int bb = 0; bb < BG; ++bb) {
            const float uu = u[bb * cc + row];
#pragma unroll
            for (int e = 0; e < 8; ++e) r[bb][e] += uu * wf[e];
          }
        }
      }
#pragma unroll
      for (int bb = 0; bb < BG; ++bb)
#pragma unroll
        for (int e = 0; e < 8; ++e)
#pragma unroll
          for (int o = 8; o > 0; o >>= 1)
            r[bb][e] += __shfl_xor_sync(0xffffffffu, r[bb][e], o);
      if (rg == 0)
        for (int bb = 0; bb < nb; ++bb) {
          float* o =
              part + (((size_t)(bs + bb) * H + h) * KC + kc) * D + cg * 8;
          *(float4*)o = make_float4(r[bb][0], r[bb][1], r[bb][2], r[bb][3]);
          *(float4*)(o + 4) =
              make_float4(r[bb][4], r[bb][5], r[bb][6], r[bb][7]);
        }
    }
    __syncthreads();  // u, wts and the slot lists are rewritten next
  }
}

// extern "C": one symbol per storage type, version and tile shape.
#define ENTRY_V1(SUF, T)                                                    \
  extern "C" __global__ void slim_attention_attend_v1_##SUF(                \
      const T* q, const T* cache, float* acc, float* ml, float* scores,     \
      int H, int S, int SA, int C, int D, int QL) {                         \
    attend_v1<T, T>(q, cache, acc, ml, scores, H, S, SA, C, D, QL);         \
  }                                                                         \
  extern "C" __global__ void slim_attention_attend_rv1_##SUF(               \
      const T* q, const T* cache, float* acc, float* ml, float* scores,     \
      int H, int S, int SA, int C, int D, int QL, const float* cs,          \
      const float* sn, int R) {                                             \
    attend_v1<T, T, true>(q, cache, acc, ml, scores, H, S, SA, C, D, QL,    \
                          cs, sn, R);                                       \
  }                                                                         \
  extern "C" __global__ void slim_attention_attend_xv1_##SUF(               \
      const float* qt, const T* cache, float* acc, float* ml,               \
      float* scores, int H, int S, int SA, int C, int D, int QL) {          \
    attend_v1<T, float>(qt, cache, acc, ml, scores, H, S, SA, C, D, QL);    \
  }                                                                         \
  extern "C" __global__ void slim_attention_xq_##SUF##_f32(                 \
      const T* q, const T* wkt, float* qt, int B, int H, int D, int C) {    \
    xq<T, float>(q, wkt, qt, B, H, D, C);                                   \
  }                                                                         \
  extern "C" __global__ void __launch_bounds__(GT)                          \
      slim_attention_gemv_##SUF(const float* acc, const float* ml,          \
                                const T* w, float* part, int B, int H,      \
                                int C, int D, int n, int cc) {              \
    gemv<T>(acc, ml, w, part, B, H, C, D, n, cc);                           \
  }                                                                         \
  extern "C" __global__ void slim_attention_finish_##SUF(                   \
      const float* part, const T* bias, T* out, int H, int D, int KC) {     \
    finish<T>(part, bias, out, H, D, KC);                                   \
  }

#define ENTRY_FAST(NAME, MT, NT, XC, ST)                                    \
  extern "C" __global__ void __cluster_dims__(CL, 1, 1)                     \
      __launch_bounds__(NWF * 32, 1)                                        \
          slim_attention_attend_##NAME##_m##MT##n##NT(                      \
              const __half* q, const __half* cache, float* acc, float* ml,  \
              int H, int S, int SA, int D, int chunk) {                     \
    attend_fast<MT, NT, XC, ST>(q, cache, acc, ml, H, S, SA, D, chunk);     \
  }

ENTRY_V1(f32, float)
ENTRY_V1(f16, __half)

extern "C" __global__ void slim_attention_xq_f16(const __half* q,
                                                 const __half* wkt,
                                                 __half* qt, int B, int H,
                                                 int D, int C) {
  xq<__half, __half>(q, wkt, qt, B, H, D, C);
}

// (MT, NT) = (ceil(H / 16), H * D / 512): the shapes the launcher accepts.
#define ENTRY_SHAPES(NAME, XC, ST)                                          \
  ENTRY_FAST(NAME, 1, 2, XC, ST)                                            \
  ENTRY_FAST(NAME, 1, 4, XC, ST)                                            \
  ENTRY_FAST(NAME, 2, 4, XC, ST)                                            \
  ENTRY_FAST(NAME, 2, 6, XC, ST)                                            \
  ENTRY_FAST(NAME, 2, 8, XC, ST)

// v2-v6 and xv3-xv5 run as clusters and exchange scores through distributed
// shared memory (sm_90). On an older card (CuPy compiles for the card in use)
// they are left out, so that the file still loads there with v1 and xv1; the
// launchers fall back to those (gpu/capability.py).
#if __CUDA_ARCH__ >= 900
ENTRY_SHAPES(v2, false, 1)
ENTRY_SHAPES(v3, false, 4)
ENTRY_SHAPES(xv3, true, 4)

#define ENTRY_V4(NAME, MT, CS, XC, ST, V5)                                  \
  extern "C" __global__ void __cluster_dims__(CL, 1, 1)                     \
      __launch_bounds__(CS, 1) slim_attention_attend_##NAME##_m##MT##c##CS( \
          const __half* q, const __half* cache, float* acc, float* ml,      \
          int H, int S, int SA, int D, int chunk) {                         \
    attend_v4<MT, CS, XC, ST, V5>(q, cache, acc, ml, H, S, SA, D, chunk);   \
  }
// (MT, CS) = (ceil(H / 16), H * D / 8); CS / 32 warps of 32 columns each.
#define ENTRY_V4_SHAPES(NAME, XC, ST, V5)                                   \
  ENTRY_V4(NAME, 1, 128, XC, ST, V5)                                        \
  ENTRY_V4(NAME, 1, 256, XC, ST, V5)                                        \
  ENTRY_V4(NAME, 2, 256, XC, ST, V5)                                        \
  ENTRY_V4(NAME, 2, 384, XC, ST, V5)                                        \
  ENTRY_V4(NAME, 2, 512, XC, ST, V5)

ENTRY_V4_SHAPES(v4, false, 3, false)
ENTRY_V4_SHAPES(xv4, true, 2, false)
ENTRY_V4_SHAPES(v5, false, 3, true)
ENTRY_V4_SHAPES(xv5, true, 2, true)

#define ENTRY_V6(MT, CS)                                                    \
  extern "C" __global__ void __cluster_dims__(CL, 1, 1)                     \
      __launch_bounds__(CS, 1) slim_attention_attend_v6_m##MT##c##CS(       \
          const __half* q, const __half* cache, float* acc, float* ml,      \
          int H, int S, int SA, int D, int chunk) {                         \
    attend_v6<MT, CS>(q, cache, acc, ml, H, S, SA, D, chunk);               \
  }
ENTRY_V6(1, 128)
ENTRY_V6(1, 256)
ENTRY_V6(2, 256)
ENTRY_V6(2, 384)
ENTRY_V6(2, 512)
// v7-v9: 32 (1 + NSC7) + CS threads (producer, scorers, consumers); the
// last argument is the chunk length (v7) or B (v8, v9).
#define ENTRY_WS(NAME, MT, CS)                                              \
  extern "C" __global__ void __cluster_dims__(CL, 1, 1)                     \
      __launch_bounds__(32 * (1 + NSC7) + CS, 1)                            \
          slim_attention_attend_##NAME##_m##MT##c##CS(                      \
              const __half* q, const __half* cache, float* acc, float* ml,  \
              int H, int S, int SA, int D, int last) {                      \
    attend_##NAME<MT, CS>(q, cache, acc, ml, H, S, SA, D, last);            \
  }
#define ENTRY_WS_SHAPES(NAME)                                               \
  ENTRY_WS(NAME, 1, 128)                                                    \
  ENTRY_WS(NAME, 1, 256)                                                    \
  ENTRY_WS(NAME, 2, 256)                                                    \
  ENTRY_WS(NAME, 2, 384)                                                    \
  ENTRY_WS(NAME, 2, 512)
ENTRY_WS_SHAPES(v7)
ENTRY_WS_SHAPES(v8)
ENTRY_WS_SHAPES(v9)
// v10: the cache as a tensor map (a __grid_constant__ parameter) for the ring.
#define ENTRY_TM(NAME, MT, CS, EXTRA)                                       \
  extern "C" __global__ void __cluster_dims__(CL, 1, 1)                     \
      __launch_bounds__(32 * (1 + NSC7 + EXTRA) + CS, 1)                    \
          slim_attention_attend_##NAME##_m##MT##c##CS(                      \
              const __half* q, const __grid_constant__ TensorMap tmap,      \
              float* acc, float* ml, int H, int S, int SA, int D, int B) {  \
    attend_##NAME<MT, CS>(q, &tmap, acc, ml, H, S, SA, D, B);               \
  }
#define ENTRY_TM_SHAPES(NAME, EXTRA)                                        \
  ENTRY_TM(NAME, 1, 128, EXTRA)                                             \
  ENTRY_TM(NAME, 1, 256, EXTRA)                                             \
  ENTRY_TM(NAME, 2, 256, EXTRA)                                             \
  ENTRY_TM(NAME, 2, 384, EXTRA)                                             \
  ENTRY_TM(NAME, 2, 512, EXTRA)
ENTRY_TM_SHAPES(v10, 0)
ENTRY_TM_SHAPES(v11, 1)  // + the softmax warp
ENTRY_TM_SHAPES(v12, 1)
extern "C" __global__ void __launch_bounds__(GT8, 2) slim_attention_gemv8_f16(
    const float* acc, const float* ml, const __half* w, float* part, int B,
    int H, int C, int D, int P, int T, int cc) {
  gemv8(acc, ml, w, part, B, H, C, D, P, T, cc);
}
#endif  // __CUDA_ARCH__ >= 900

// The largest tile layouts must fit the 227 KB of shared memory a block may
// opt into on sm_90 (the launcher mirrors these sizes to request them).
#define SMEM_MAX (227 * 1024)
static_assert(fast_smem<2, 8, 4>() <= SMEM_MAX, "v3/xv3 tiles too large");
static_assert(v4_smem<2, 512, false, 3>() <= SMEM_MAX, "v4/v5 too large");
static_assert(v4_smem<2, 512, true, 2>() <= SMEM_MAX, "xv4/xv5 too large");
static_assert(v6_smem<2, 512>() <= SMEM_MAX, "v6 tiles too large");
static_assert(v7_smem<2, 512>() <= SMEM_MAX, "v7 tiles too large");
static_assert(v10_smem<2, 512>() <= SMEM_MAX, "v10 tiles too large");
static_assert(v11_smem<2, 512>() <= SMEM_MAX, "v11 tiles too large");
