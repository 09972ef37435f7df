// gpu/attention.cu — chapter 1, "Measuring a kernel": standard decode
// attention. Twin of reference/common.py::decode_attention. One new token per
// sequence (T = 1) attends to a K and a V cache of length S; MHA (G = H) and
// GQA (H % G == 0).
//   q (B, H, D)   k, v (B, G, S, D)   out (B, H, D)    row-major, contiguous
//   out[b,h] = softmax(q[b,h] . k[b,g]^T / sqrt(D)) . v[b,g],  g = h / (H / G)
// Storage T = float or __half; every sum, the softmax and the accumulator are
// float.
//
// v1  naive twin of the reference: one block per (b, h); three passes (scores
//     to a global scratch row, max and sum, P.V); each thread reads whole K
//     rows.
// v2  one pass with an online softmax: one block per (b, h), a warp per key
//     row, lanes split D (coalesced), warps merged in shared memory. Needs
//     D <= 256. Only B*H blocks: at B = 1 it leaves most SMs idle.
// v3  v2 split along S (flash-decoding): grid (H, n_split, B); each block
//     writes a partial (m, l, acc[D]); attention_combine_v3 merges the
//     partials.
// v4  v3 with 16-byte loads (8 halves / 4 floats per lane), a row per lane
//     group (D / VEC lanes), UNROLL rows in flight per group, D a template
//     constant. Needs D in {64, 80, 96, 128} (fp16 also 256); reuses
//     attention_combine_v3.
// v5  v4 with 8 rows in flight per lane group and the combine fused into the
//     same launch (the last block per (b, h) merges). Same D as v4. Slower
//     than v4: 116 registers (4 blocks/SM instead of 7) and a longer serial
//     chain per tile.
// v6  v4 with the online softmax updated once per tile of 4 rows (one max,
//     one rescale) and the next tile prefetched into registers; combine as
//     v3.
// v7  v6 with v5's fused combine (one launch).
// v8  v7 with the tiles staged through shared memory by cp.async, 4 stages
//     deep (ST8 - 1 tiles in flight, none held in registers); dynamic shared
//     memory, see tile_smem_bytes in the launcher.
//
// Run one version alone:  python -m gpu.bench attention --version 4
// Compile report (no GPU): python -m gpu.check_kernels gpu/attention.cu

#include "common.cuh"

// --- v1 ---
// Naive: scores (B, H, S) float scratch in global memory.
template <typename T>
__device__ void decode_v1(const T* q, const T* k, const T* v, T* out,
                          float* scores, int H, int G, int S, int D) {
  __shared__ float red[32];
  int h = blockIdx.x, b = blockIdx.y, g = h / (H / G);
  const T* qh = q + ((size_t)b * H + h) * D;                 // (D,)
  const T* kg = k + ((size_t)b * G + g) * S * D;             // (S, D)
  const T* vg = v + ((size_t)b * G + g) * S * D;             // (S, D)
  float* sc = scores + ((size_t)b * H + h) * S;              // (S,)
  float scale = rsqrtf((float)D);
  // pass 1: s_j = q . k_j / sqrt(D), and their max
  float m = NEG_INF;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    float dot = 0.0f;
    for (int d = 0; d < D; ++d)
      dot += to_f(qh[d]) * to_f(kg[(size_t)j * D + d]);
    sc[j] = dot * scale;
    m = fmaxf(m, sc[j]);
  }
  m = block_reduce<true>(m, red);
  // pass 2: p_j = exp(s_j - m), l = sum_j p_j
  float l = 0.0f;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    float p = expf(sc[j] - m);
    sc[j] = p;
    l += p;
  }
  l = block_reduce<false>(l, red);
  __syncthreads();  // every p_j written before anyone reads them
  // pass 3: out_d = sum_j p_j v_jd / l
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < S; ++j) acc += sc[j] * to_f(vg[(size_t)j * D + d]);
    from_f(out[((size_t)b * H + h) * D + d], acc / l);
  }
}

// --- v2 ---
// One warp per key row (lane i holds d = i, i+32, ...), an online softmax per
// warp:
//   m' = max(m, s);  acc = acc * exp(m - m') + exp(s - m') v;  l likewise.
// decode_chunk handles keys [s0, s1) and leaves the block's (m, l, acc)
// merged in smem.
constexpr int MAXD = 256, NW = 4;  // max head dim, warps per block (v2, v3)
struct Merged { float m, l; float acc[MAXD]; };

template <typename T>
__device__ void decode_chunk(const T* qh, const T* kg, const T* vg, int s0,
                             int s1, int D, Merged& res) {
  __shared__ float wm[NW], wl[NW], wacc[NW][MAXD];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float scale = rsqrtf((float)D), qr[MAXD / 32], acc[MAXD / 32],
        m = NEG_INF, l = 0.0f;
#pragma unroll
  for (int i = 0; i < MAXD / 32; ++i) {
    int d = lane + 32 * i;
    qr[i] = d < D ? to_f(qh[d]) * scale : 0.0f;
    acc[i] = 0.0f;
  }
  for (int j = s0 + warp; j < s1; j += NW) {
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < MAXD / 32; ++i) {
      int d = lane + 32 * i;
      if (d < D) dot += qr[i] * to_f(kg[(size_t)j * D + d]);
    }
    float s = warp_sum(dot), m_new = fmaxf(m, s);
    float alpha = expf(m - m_new), p = expf(s - m_new);
#pragma unroll
    for (int i = 0; i < MAXD / 32; ++i) {
      int d = lane + 32 * i;
      if (d < D) acc[i] = acc[i] * alpha + p * to_f(vg[(size_t)j * D + d]);
    }
    l = l * alpha + p;
    m = m_new;
  }
  if (lane == 0) { wm[warp] = m; wl[warp] = l; }
#pragma unroll
  for (int i = 0; i < MAXD / 32; ++i)
    if (lane + 32 * i < D) wacc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  // merge the NW warps: M = max m_w, l = sum_w l_w exp(m_w - M), acc likewise
  float M = NEG_INF;
  for (int w = 0; w < NW; ++w) M = fmaxf(M, wm[w]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < NW; ++w)
      a += wm[w] == NEG_INF ? 0.0f : wacc[w][d] * expf(wm[w] - M);
    res.acc[d] = a;
  }
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < NW; ++w)
      L += wm[w] == NEG_INF ? 0.0f : wl[w] * expf(wm[w] - M);
    res.m = M;
    res.l = L;
  }
  __syncthreads();
}

template <typename T>
__device__ void decode_v2(const T* q, const T* k, const T* v, T* out, int H,
                          int G, int S, int D) {
  __shared__ Merged res;
  int h = blockIdx.x, b = blockIdx.y, g = h / (H / G);
  const T* kg = k + ((size_t)b * G + g) * S * D;
  const T* vg = v + ((size_t)b * G + g) * S * D;
  decode_chunk(q + ((size_t)b * H + h) * D, kg, vg, 0, S, D, res);
  for (int d = threadIdx.x; d < D; d += blockDim.x)
    from_f(out[((size_t)b * H + h) * D + d], res.acc[d] / res.l);
}

// --- v3 ---
// Split S into n_split chunks of `chunk` keys: grid (H, n_split, B).
// Partials: part_acc (B, H, n_split, D) float,
//           part_ml (B, H, n_split, 2) float (m, l).
template <typename T>
__device__ void decode_v3(const T* q, const T* k, const T* v, float* part_acc,
                          float* part_ml, int H, int G, int S, int D,
                          int chunk) {
  __shared__ Merged res;
  int h = blockIdx.x, sp = blockIdx.y, b = blockIdx.z, g = h / (H / G),
      n = gridDim.y;
  int s0 = sp * chunk, s1 = min(S, s0 + chunk);
  const T* kg = k + ((size_t)b * G + g) * S * D;
  const T* vg = v + ((size_t)b * G + g) * S * D;
  decode_chunk(q + ((size_t)b * H + h) * D, kg, vg, s0, s1, D, res);
  size_t p = ((size_t)b * H + h) * n + sp;
  for (int d = threadIdx.x; d < D; d += blockDim.x)
    part_acc[p * D + d] = res.acc[d];
  if (threadIdx.x == 0) { part_ml[2 * p] = res.m; part_ml[2 * p + 1] = res.l; }
}

// Merge the n partials of one (b, h):
//   out = sum_i acc_i e^{m_i-M} / sum_i l_i e^{m_i-M},  M = max_i m_i.
// __ldcg reads through L2 (never a stale L1 line): the fused versions call
// this on partials other blocks of the same launch have just written.
template <typename T>
__device__ void merge_partials(const float* part_acc, const float* part_ml,
                               T* out, size_t bh, int n, int D) {
  const float* ml = part_ml + bh * n * 2;
  float M = NEG_INF, L = 0.0f;
  for (int i = 0; i < n; ++i) M = fmaxf(M, __ldcg(ml + 2 * i));
  for (int i = 0; i < n; ++i)
    L += __ldcg(ml + 2 * i + 1) * expf(__ldcg(ml + 2 * i) - M);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.0f;
    for (int i = 0; i < n; ++i)
      a += __ldcg(part_acc + (bh * n + i) * D + d) *
           expf(__ldcg(ml + 2 * i) - M);
    from_f(out[bh * D + d], a / L);
  }
}

// The combine kernel of v3, v4 and v6. Grid (B*H), any block size.
template <typename T>
__device__ void combine_v3(const float* part_acc, const float* part_ml,
                           T* out, int n, int D) {
  merge_partials<T>(part_acc, part_ml, out, blockIdx.x, n, D);
}

// --- v4 ---
// A lane group of LG = D/VEC lanes (rounded up to a power of two) owns one key
// row and loads it as 16-byte vectors; a warp holds 32/LG groups, a block NW4
// warps. Each group keeps its own online softmax over rows j = group,
// group + NG, ..., with UNROLL rows' loads issued before the first is used.
// Groups are merged through shared memory.
constexpr int NW4 = 4;

// Merge the NG lane groups of a block, whose (m, l, acc[D]) are in shared
// memory, into the block's partial number p (after a __syncthreads).
template <int D, int NG>
__device__ void write_partial(const float* gm, const float* gl,
                              const float (*gacc)[D], float* part_acc,
                              float* part_ml, size_t p) {
  float M = NEG_INF;
  for (int w = 0; w < NG; ++w) M = fmaxf(M, gm[w]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < NG; ++w)
      a += gm[w] == NEG_INF ? 0.0f : gacc[w][d] * expf(gm[w] - M);
    part_acc[p * D + d] = a;
  }
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < NG; ++w)
      L += gm[w] == NEG_INF ? 0.0f : gl[w] * expf(gm[w] - M);
    part_ml[2 * p] = M;
    part_ml[2 * p + 1] = L;
  }
}

// Fused combine (v5, v7): once this block's partial is visible device-wide it
// takes a ticket; the last of the n blocks of (b, h) merges all n partials,
// writes out and resets the counter to 0 for the next launch.
template <typename T>
__device__ void combine_if_last(const float* part_acc, const float* part_ml,
                                T* out, unsigned int* counters, size_t bh,
                                int n, int D) {
  if (last_block_done(&counters[bh], (unsigned)n))
    merge_partials<T>(part_acc, part_ml, out, bh, n, D);
}

template <typename T, int D, int UNROLL>
__device__ void decode_v4(const T* q, const T* k, const T* v, float* part_acc,
                          float* part_ml, int H, int G, int S, int chunk) {
  constexpr int VEC = Vec<T>::N, NV = D / VEC;  // vectors per row
  // lanes per row
  constexpr int LG = NV <= 4 ? 4 : NV <= 8 ? 8 : NV <= 16 ? 16 : 32;
  constexpr int GPW = 32 / LG, NG = NW4 * GPW;  // groups per warp, block
  static_assert(D % VEC == 0 && NV <= 32, "unsupported head dim");
  __shared__ float gm[NG], gl[NG], gacc[NG][D];
  int h = blockIdx.x, sp = blockIdx.y, b = blockIdx.z, g = h / (H / G),
      n = gridDim.y;
  int sub = threadIdx.x % LG, grp = threadIdx.x / LG;  // lane in group, group
  bool active = sub < NV;  // lanes past D/VEC idle (D = 80, 96)
  int s0 = sp * chunk, s1 = min(S, s0 + chunk);
  const T* kg = k + ((size_t)b * G + g) * S * D + sub * VEC;
  const T* vg = v + ((size_t)b * G + g) * S * D + sub * VEC;
  float qr[VEC], acc[VEC], m = NEG_INF, l = 0.0f, scale = rsqrtf((float)D);
  if (active) unpack<T>(qr, load16(q + ((size_t)b * H + h) * D + sub * VEC));
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    qr[i] = active ? qr[i] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  // base is uniform across the block, so every lane reaches every shuffle
  for (int base = s0; base < s1; base += NG * UNROLL) {
    uint4 kraw[UNROLL], vraw[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {  // issue every load first
      int j = base + u * NG + grp;
      if (active && j < s1) {
        kraw[u] = load16(kg + (size_t)j * D);
        vraw[u] = load16(vg + (size_t)j * D);
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      int j = base + u * NG + grp;
      float kr[VEC], vr[VEC], dot = 0.0f;
      if (active && j < s1) {
        unpack<T>(kr, kraw[u]);
#pragma unroll
        for (int i = 0; i < VEC; ++i) dot += qr[i] * kr[i];
      }
#pragma unroll
      for (int o = LG / 2; o > 0; o >>= 1)
        dot += __shfl_xor_sync(0xffffffffu, dot, o);
      if (j < s1) {  // uniform across the lane group
        float m_new = fmaxf(m, dot), alpha = expf(m - m_new),
              p = expf(dot - m_new);
        if (active) {
          unpack<T>(vr, vraw[u]);
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] = acc[i] * alpha + p * vr[i];
        }
        l = l * alpha + p;
        m = m_new;
      }
    }
  }
  if (sub == 0) { gm[grp] = m; gl[grp] = l; }
  if (active) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) gacc[grp][sub * VEC + i] = acc[i];
  }
  __syncthreads();
  write_partial<D, NG>(gm, gl, gacc, part_acc, part_ml,
                       ((size_t)b * H + h) * n + sp);
}

// --- v5 ---
// v4 with twice the rows in flight (UNROLL 8) and the combine fused: the last
// block of each (b, h) to finish (an atomic ticket after a fence) merges the
// partials and writes out, so one launch does it all. counters (B*H) must be
// zero before the first call; the last block resets its counter, so the
// buffer stays reusable (CUDA graphs).
template <typename T, int D>
__device__ void decode_v5(const T* q, const T* k, const T* v, T* out,
                          float* part_acc, float* part_ml,
                          unsigned int* counters, int H, int G, int S,
                          int chunk) {
  decode_v4<T, D, 8>(q, k, v, part_acc, part_ml, H, G, S, chunk);
  combine_if_last<T>(part_acc, part_ml, out, counters,
                     (size_t)blockIdx.z * H + blockIdx.x, gridDim.y, D);
}

// --- v6 ---
// v4 (UNROLL 4, 70 registers) with two changes aimed at keeping loads in
// flight:
//  * the online softmax is updated once per tile of 4 rows, not once per row:
//    the 4 scores are reduced together, then one max, one rescale, 4
//    independent exps;
//  * the next tile's K and V are loaded into registers before the current
//    tile is used (software prefetch), so a warp always has a tile in flight.
// FUSED = false: partials + attention_combine_v3 (as v4); true (v7): fused
// combine.
// U (rows a group takes per tile) and NW (warps a block) are template
// constants: v6 and v7 use U = 4, NW = 4; v9 tries other tile shapes.
template <int N>
__device__ __forceinline__ float pair_sum(const float* p) {
  if constexpr (N == 1) return p[0];
  else return pair_sum<N / 2>(p) + pair_sum<N - N / 2>(p + N / 2);
}

// The stages v6 and v8 share; each version writes only how its tiles arrive.
// The query row of (b, h) in this lane's VEC columns, scaled by 1/sqrt(D) (0
// in idle lanes), and a zeroed accumulator.
template <typename T, int D>
__device__ __forceinline__ void load_q_scaled(const T* qrow, bool active,
                                              float (&qr)[Vec<T>::N],
                                              float (&acc)[Vec<T>::N]) {
  float scale = rsqrtf((float)D);
  if (active) unpack<T>(qr, load16(qrow));
#pragma unroll
  for (int i = 0; i < Vec<T>::N; ++i) {
    qr[i] = active ? qr[i] * scale : 0.0f;
    acc[i] = 0.0f;
  }
}

// One tile: U rows per lane group (row base + u * NG + grp), sc[u] this
// lane's part of each score. Sums the scores over the group's LG lanes, then
// updates the online softmax once for the tile (one max, one rescale):
// m_new = max(m, max_u sc), acc = acc * e^(m - m_new) + sum_u p_u V_u,
// l likewise. vrow(u) returns the 16 raw bytes of this lane's part of V_u.
template <typename T, int LG, int U, int NG, typename VRow>
__device__ __forceinline__ void tile_softmax_pv(float (&sc)[U], int base,
                                                int grp, int s1, bool active,
                                                float& m, float& l,
                                                float (&acc)[Vec<T>::N],
                                                VRow vrow) {
  constexpr int VEC = Vec<T>::N;
  float mt = NEG_INF;
#pragma unroll
  for (int o = LG / 2; o > 0; o >>= 1)
#pragma unroll
    for (int u = 0; u < U; ++u)
      sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], o);
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (base + u * NG + grp < s1) mt = fmaxf(mt, sc[u]);
  // this group has rows in the tile (uniform in the group)
  if (mt != NEG_INF) {
    float m_new = fmaxf(m, mt), alpha = expf(m - m_new), p[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      p[u] = base + u * NG + grp < s1 ? expf(sc[u] - m_new) : 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] *= alpha;
    if (active) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float vr[VEC];
        unpack<T>(vr, vrow(u));
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += p[u] * vr[i];
      }
    }
    if constexpr (U == 4) l = l * alpha + (p[0] + p[1]) + (p[2] + p[3]);
    else l = l * alpha + pair_sum<U>(p);
    m = m_new;
  }
}

// Merge the block's NG lane groups into its partial number bh * n + sp (as
// v4), then, when FUSED, the fused combine (v7, v8).
template <typename T, int D, int NG, bool FUSED>
__device__ __forceinline__ void finish_block(float m, float l,
                                             const float (&acc)[Vec<T>::N],
                                             int sub, int grp, bool active,
                                             float* part_acc, float* part_ml,
                                             unsigned int* counters,
                                             int bhi, int n, int sp, T* out) {
  __shared__ float gm[NG], gl[NG], gacc[NG][D];
  if (sub == 0) { gm[grp] = m; gl[grp] = l; }
  if (active) {
#pragma unroll
    for (int i = 0; i < Vec<T>::N; ++i) gacc[grp][sub * Vec<T>::N + i] = acc[i];
  }
  __syncthreads();
  size_t bh = bhi;
  write_partial<D, NG>(gm, gl, gacc, part_acc, part_ml, bh * n + sp);
  if (FUSED) combine_if_last<T>(part_acc, part_ml, out, counters, bh, n, D);
}

template <typename T, int D, bool FUSED, int U = 4, int NW = NW4>
__device__ void decode_v6(const T* q, const T* k, const T* v, T* out,
                          float* part_acc, float* part_ml,
                          unsigned int* counters, int H, int G, int S,
                          int chunk) {
  constexpr int VEC = Vec<T>::N, NV = D / VEC;
  constexpr int LG = NV <= 4 ? 4 : NV <= 8 ? 8 : NV <= 16 ? 16 : 32;
  constexpr int GPW = 32 / LG, NG = NW * GPW;
  static_assert(D % VEC == 0 && NV <= 32, "unsupported head dim");
  int h = blockIdx.x, sp = blockIdx.y, b = blockIdx.z, g = h / (H / G),
      n = gridDim.y;
  int sub = threadIdx.x % LG, grp = threadIdx.x / LG;
  bool active = sub < NV;
  int s0 = sp * chunk, s1 = min(S, s0 + chunk);
  const T* kg = k + ((size_t)b * G + g) * S * D + sub * VEC;
  const T* vg = v + ((size_t)b * G + g) * S * D + sub * VEC;
  float qr[VEC], acc[VEC], m = NEG_INF, l = 0.0f;
  load_q_scaled<T, D>(q + ((size_t)b * H + h) * D + sub * VEC, active, qr, acc);
  uint4 kc[U], vc[U], kn[U], vn[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {  // first tile
    int j = s0 + u * NG + grp;
    // rows past s1 stay 0: 0 * p adds nothing
    kc[u] = vc[u] = make_uint4(0, 0, 0, 0);
    if (active && j < s1) {
      kc[u] = load16(kg + (size_t)j * D);
      vc[u] = load16(vg + (size_t)j * D);
    }
  }
  // base uniform across the block
  for (int base = s0; base < s1; base += NG * U) {
#pragma unroll
    for (int u = 0; u < U; ++u) {  // prefetch the next tile
      int j = base + (U + u) * NG + grp;
      kn[u] = vn[u] = make_uint4(0, 0, 0, 0);
      if (active && j < s1) {
        kn[u] = load16(kg + (size_t)j * D);
        vn[u] = load16(vg + (size_t)j * D);
      }
    }
    float sc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kr[VEC];
      sc[u] = 0.0f;
      if (active && base + u * NG + grp < s1) {
        unpack<T>(kr, kc[u]);
#pragma unroll
        for (int i = 0; i < VEC; ++i) sc[u] += qr[i] * kr[i];
      }
    }
    tile_softmax_pv<T, LG, U, NG>(sc, base, grp, s1, active, m, l, acc,
                                  [&](int u) { return vc[u]; });
#pragma unroll
    for (int u = 0; u < U; ++u) { kc[u] = kn[u]; vc[u] = vn[u]; }
  }
  finish_block<T, D, NG, FUSED>(m, l, acc, sub, grp, active, part_acc,
                                part_ml, counters, b * H + h, n, sp,
                                out);
}

// --- v8 ---
// v7 with the K and V tiles staged through shared memory by cp.async (Ampere's
// asynchronous copy, 16 bytes a thread, zero-filled past the chunk) in a ring
// of ST8 stages: ST8 - 1 tiles are always in flight, and no register holds a
// tile that has not arrived. Same lane groups, tile softmax and fused combine.
// Dynamic shared memory: ST8 * 2 * TR * D * sizeof(T) bytes (TR rows a tile).
constexpr int ST8 = 4;

template <typename T, int D>
__device__ void decode_v8(const T* q, const T* k, const T* v, T* out,
                          float* part_acc, float* part_ml,
                          unsigned int* counters, int H, int G, int S,
                          int chunk) {
  constexpr int VEC = Vec<T>::N, NV = D / VEC, U = 4;
  constexpr int LG = NV <= 4 ? 4 : NV <= 8 ? 8 : NV <= 16 ? 16 : 32;
  constexpr int GPW = 32 / LG, NG = NW4 * GPW, TR = NG * U;
  static_assert(D % VEC == 0 && NV <= 32, "unsupported head dim");
  extern __shared__ uint4 ring[];  // [ST8][2 (K, V)][TR][NV]
  int h = blockIdx.x, sp = blockIdx.y, b = blockIdx.z, g = h / (H / G),
      n = gridDim.y;
  int sub = threadIdx.x % LG, grp = threadIdx.x / LG;
  bool active = sub < NV;
  int s0 = sp * chunk, s1 = min(S, s0 + chunk);
  int ntiles = (s1 - s0 + TR - 1) / TR;
  const T* kg = k + ((size_t)b * G + g) * S * D;
  const T* vg = v + ((size_t)b * G + g) * S * D;
  // copy tile t (rows s0 + t*TR ...) into ring stage st; one commit group
  auto issue = [&](int t, int st) {
    for (int c = threadIdx.x; c < TR * NV; c += blockDim.x) {
      int r = c / NV, col = c % NV, j = s0 + t * TR + r;
      size_t off = (size_t)(j < s1 ? j : s0) * D + col * VEC;
      cp_async16(&ring[((st * 2 + 0) * TR + r) * NV + col], kg + off, j < s1);
      cp_async16(&ring[((st * 2 + 1) * TR + r) * NV + col], vg + off, j < s1);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int t = 0; t < ST8 - 1; ++t) {
    if (t < ntiles) issue(t, t);
    else cp_async_commit();  // empty group: the wait count stays uniform
  }
  float qr[VEC], acc[VEC], m = NEG_INF, l = 0.0f;
  load_q_scaled<T, D>(q + ((size_t)b * H + h) * D + sub * VEC, active, qr, acc);
  for (int t = 0; t < ntiles; ++t) {
    cp_async_wait<ST8 - 2>();  // tile t has landed (this thread's copies)
    __syncthreads();  // ... everyone's; and stage (t-1) % ST8 is free again
    if (t + ST8 - 1 < ntiles) issue(t + ST8 - 1, (t + ST8 - 1) % ST8);
    else cp_async_commit();
    const uint4* kt = ring + (t % ST8) * 2 * TR * NV;
    const uint4* vt = kt + TR * NV;
    int base = s0 + t * TR;
    float sc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kr[VEC];
      unpack<T>(kr, kt[(u * NG + grp) * NV + (active ? sub : 0)]);
      sc[u] = 0.0f;
#pragma unroll
      for (int i = 0; i < VEC; ++i) sc[u] += qr[i] * kr[i];
    }
    tile_softmax_pv<T, LG, U, NG>(
        sc, base, grp, s1, active, m, l, acc,
        [&](int u) { return vt[(u * NG + grp) * NV + sub]; });
  }
  cp_async_wait<0>();
  finish_block<T, D, NG, true>(m, l, acc, sub, grp, active, part_acc,
                               part_ml, counters, b * H + h, n, sp,
                               out);
}

// --- entry points ---
// extern "C": one symbol per storage type and, for v4-v7, head dim.
#define ENTRY_V123(SUF, T)                                                  \
  extern "C" __global__ void attention_decode_v1_##SUF(                     \
      const T* q, const T* k, const T* v, T* out, float* scores, int H,     \
      int G, int S, int D) {                                                \
    decode_v1<T>(q, k, v, out, scores, H, G, S, D);                         \
  }                                                                         \
  extern "C" __global__ void __launch_bounds__(32 * NW)                     \
  attention_decode_v2_##SUF(                                                \
      const T* q, const T* k, const T* v, T* out, int H, int G, int S,      \
      int D) {                                                              \
    decode_v2<T>(q, k, v, out, H, G, S, D);                                 \
  }                                                                         \
  extern "C" __global__ void __launch_bounds__(32 * NW)                     \
  attention_decode_v3_##SUF(                                                \
      const T* q, const T* k, const T* v, float* pa, float* pml, int H,     \
      int G, int S, int D, int chunk) {                                     \
    decode_v3<T>(q, k, v, pa, pml, H, G, S, D, chunk);                      \
  }                                                                         \
  extern "C" __global__ void attention_combine_v3_##SUF(                    \
      const float* pa, const float* pml, T* out, int n, int D) {            \
    combine_v3<T>(pa, pml, out, n, D);                                      \
  }

#define ENTRY_V4(SUF, T, DD)                                                \
  extern "C" __global__ void __launch_bounds__(32 * NW4)                    \
  attention_decode_v4_##SUF##_d##DD(                                        \
      const T* q, const T* k, const T* v, float* pa, float* pml, int H,     \
      int G, int S, int chunk) {                                            \
    decode_v4<T, DD, 4>(q, k, v, pa, pml, H, G, S, chunk);                  \
  }

#define ENTRY_V5(SUF, T, DD)                                                \
  extern "C" __global__ void __launch_bounds__(32 * NW4)                    \
  attention_decode_v5_##SUF##_d##DD(                                        \
      const T* q, const T* k, const T* v, T* out, float* pa, float* pml,    \
      unsigned int* cnt, int H, int G, int S, int chunk) {                  \
    decode_v5<T, DD>(q, k, v, out, pa, pml, cnt, H, G, S, chunk);           \
  }

#define ENTRY_V67(SUF, T, DD)                                               \
  extern "C" __global__ void __launch_bounds__(32 * NW4)                    \
  attention_decode_v6_##SUF##_d##DD(                                        \
      const T* q, const T* k, const T* v, float* pa, float* pml, int H,     \
      int G, int S, int chunk) {                                            \
    decode_v6<T, DD, false>(q, k, v, nullptr, pa, pml, nullptr, H, G, S,    \
                            chunk);                                         \
  }                                                                         \
  extern "C" __global__ void __launch_bounds__(32 * NW4)                    \
  attention_decode_v7_##SUF##_d##DD(                                        \
      const T* q, const T* k, const T* v, T* out, float* pa, float* pml,    \
      unsigned int* cnt, int H, int G, int S, int chunk) {                  \
    decode_v6<T, DD, true>(q, k, v, out, pa, pml, cnt, H, G, S, chunk);     \
  }

#define ENTRY_V8(SUF, T, DD)                                                \
  extern "C" __global__ void __launch_bounds__(32 * NW4)                    \
  attention_decode_v8_##SUF##_d##DD(                                        \
      const T* q, const T* k, const T* v, T* out, float* pa, float* pml,    \
      unsigned int* cnt, int H, int G, int S, int chunk) {                  \
    decode_v8<T, DD>(q, k, v, out, pa, pml, cnt, H, G, S, chunk);           \
  }

#define ENTRY_V9(UU, WW)                                                    \
  extern "C" __global__ void __launch_bounds__(32 * WW)                     \
  attention_decode_v9_f16_d128_u##UU##w##WW(                                \
      const __half* q, const __half* k, const __half* v, __half* out,       \
      float* pa, float* pml, unsigned int* cnt, int H, int G, int S,        \
      int chunk) {                                                          \
    decode_v6<__half, 128, true, UU, WW>(q, k, v, out, pa, pml, cnt, H, G,  \
                                         S, chunk);                         \
  }

ENTRY_V123(f32, float)
ENTRY_V123(f16, __half)
ENTRY_V4(f32, float, 64)
ENTRY_V4(f32, float, 80)
ENTRY_V4(f32, float, 96)
ENTRY_V4(f32, float, 128)
ENTRY_V4(f16, __half, 64)
ENTRY_V4(f16, __half, 80)
ENTRY_V4(f16, __half, 96)
ENTRY_V4(f16, __half, 128)
ENTRY_V4(f16, __half, 256)
ENTRY_V5(f32, float, 64)
ENTRY_V5(f32, float, 80)
ENTRY_V5(f32, float, 96)
ENTRY_V5(f32, float, 128)
ENTRY_V5(f16, __half, 64)
ENTRY_V5(f16, __half, 80)
ENTRY_V5(f16, __half, 96)
ENTRY_V5(f16, __half, 128)
ENTRY_V5(f16, __half, 256)
ENTRY_V67(f32, float, 64)
ENTRY_V67(f32, float, 80)
ENTRY_V67(f32, float, 96)
ENTRY_V67(f32, float, 128)
ENTRY_V67(f16, __half, 64)
ENTRY_V67(f16, __half, 80)
ENTRY_V67(f16, __half, 96)
ENTRY_V67(f16, __half, 128)
ENTRY_V67(f16, __half, 256)
// v8 stages its tiles with cp.async (sm_80). Below sm_80 (CuPy compiles for
// the card in use) it is left out, so that v1-v7 still load there; the
// launcher falls back to v7 (gpu/capability.py).
#if __CUDA_ARCH__ >= 800
ENTRY_V8(f32, float, 64)
ENTRY_V8(f32, float, 80)
ENTRY_V8(f32, float, 96)
ENTRY_V8(f32, float, 128)
ENTRY_V8(f16, __half, 64)
ENTRY_V8(f16, __half, 80)
ENTRY_V8(f16, __half, 96)
ENTRY_V8(f16, __half, 128)
ENTRY_V8(f16, __half, 256)
#endif  // __CUDA_ARCH__ >= 800
ENTRY_V9(2, 4)
ENTRY_V9(8, 4)
ENTRY_V9(2, 8)
ENTRY_V9(4, 8)
ENTRY_V9(4, 2)
ENTRY_V9(8, 2)
