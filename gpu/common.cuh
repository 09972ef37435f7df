// gpu/common.cuh — the helpers every kernel file shares (llm.c's common.h).
// Included by each gpu/<slug>.cu as  #include "common.cuh"  through NVRTC's
// include path (gpu/runtime.py::NVRTC_OPTIONS adds -I gpu/, and a hash of
// this file, so that CuPy's kernel cache never serves a binary built from an
// older header). The compile gate (gpu/check_kernels.py) uses the same options.
//
//   conversions   to_f, from_f (float, __half), qnan, NEG_INF, LOG2E
//   RoPE          rope_at (one rotated value, rotate-half, cos/sin tables)
//   reductions    warp_sum, warp_max, block_reduce<MAX> (all threads get it)
//   16-byte I/O   Vec<T>::N, load16, unpack, pack, nan16
//   async copies  smem_u32, cp_async16 (_s: shared address), cp_async_commit,
//                 cp_async_wait<N>
//   tensor cores  ldsm_x4, ldsm_x4_t, ldsm_x2, mma16816, swz<CS>
//   clusters      cluster_arrive, cluster_wait (barrier.cluster, sm_90)
//   Hopper        mbar_init/arrive/expect_tx/wait, bulk_load, consumers_sync,
//                 ld_acquire; cluster scope: cluster_addr, ld_cluster_v4,
//                 mbar_arrive_remote, bulk_push, st_async_v4, bulk_prefetch_l2,
//                 TensorMap, tma_load_4d, bulk_commit,
//                 bulk_wait_read0,
//                 fence_proxy_async, named_sync (sm_90)
//   wgmma (sm_90a) wgmma_desc_sw128, wgmma_fence/commit/wait,
//                 wgmma_fence_acc, wgmma_m64n128k16
//   grid          last_block_done: the last-block-done counter
#pragma once

#include <cuda_fp16.h>

#define NEG_INF (-__int_as_float(0x7f800000))
#define LOG2E 1.4426950408889634f  // exp(x) = exp2(x * LOG2E)

// --- conversions: every kernel computes in float, stores float or __half ---
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ void from_f(float& y, float x) { y = x; }
__device__ __forceinline__ void from_f(__half& y, float x) {
  y = __float2half_rn(x);
}
__device__ __forceinline__ float qnan() { return __int_as_float(0x7fffffff); }

// The value of column d of a head whose D values start at src, rotated to
// position pos when d < R (rotate-half: pairs (i, i + R/2)); cs, sn (P, R/2).
// (gpu/decoder.cu, slim attention's rv1; reference.common.apply_rope)
template <typename T>
__device__ __forceinline__ float rope_at(const T* src, int d, int R, int pos,
                                         const float* cs, const float* sn) {
  float v = to_f(src[d]);
  if (d >= R) return v;
  int half = R / 2, i = d % half;
  float c = cs[(size_t)pos * half + i], s = sn[(size_t)pos * half + i];
  return d < half ? v * c - to_f(src[d + half]) * s
                  : v * c + to_f(src[d - half]) * s;
}

// --- reductions ---
// Butterfly over the 32 lanes: every lane gets the same sum (or max), in the
// same order, so results are bitwise repeatable.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Block-wide sum (MAX = false) or max (MAX = true) through shared memory
// `red` (>= 32 floats); every thread gets it. blockDim.x <= 1024.
template <bool MAX>
__device__ float block_reduce(float x, float* red) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32,
      nw = (blockDim.x + 31) / 32;
  x = MAX ? warp_max(x) : warp_sum(x);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = x;
  __syncthreads();
  x = lane < nw ? red[lane] : (MAX ? NEG_INF : 0.0f);
  return MAX ? warp_max(x) : warp_sum(x);
}

// --- 16-byte vectors: VEC values of T, loaded as raw bits (issued early),
// converted to float only when used ---
template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };

__device__ __forceinline__ uint4 load16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}
template <typename T>
__device__ __forceinline__ void unpack(float (&x)[Vec<T>::N], uint4 raw) {
  if constexpr (sizeof(T) == 2) {  // __half: two at a time
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < Vec<T>::N / 2; ++i) {
      float2 f = __half22float2(h[i]);
      x[2 * i] = f.x, x[2 * i + 1] = f.y;
    }
  } else {
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < Vec<T>::N; ++i) x[i] = to_f(e[i]);
  }
}
// Pack back with one rounding per value.
template <typename T>
__device__ __forceinline__ uint4 pack(const float (&x)[Vec<T>::N]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < Vec<T>::N; ++i) from_f(e[i], x[i]);
  return raw;
}
// 16 bytes of NaN in either storage type (0x7fff halves, 0x7fffffff floats).
__device__ __forceinline__ uint4 nan16() {
  return make_uint4(0x7fffffffu, 0x7fffffffu, 0x7fffffffu, 0x7fffffffu);
}

// --- asynchronous copies (cp.async, sm_80+) ---
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared; valid == false reads nothing and writes zeros
// (src-size 0), so a tile past the end of the data is zero-filled.
__device__ __forceinline__ void cp_async16(void* dst, const void* src,
                                           bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}
// The same with the destination already a shared-state-space address (from
// smem_u32, computed once: stagformer gemv v8's loaders).
__device__ __forceinline__ void cp_async16_s(unsigned dst, const void* src,
                                             bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// --- tensor cores (mma.sync m16n8k16, fp16 in, fp32 accumulate) ---
__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned* r, const void* p) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x2(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(p)));
}
// c (16x8, f32) += a (16x16, f16, row) . b (16x8, f16, col)
__device__ __forceinline__ void mma16816(float* c, const unsigned* a,
                                         const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
      "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Element (row, col) of a row-major tile CS halves wide, its 16-byte chunks
// XOR-swizzled by row % 8: the 8 rows an ldmatrix reads hit 8 chunk slots.
template <int CS>
__device__ __forceinline__ int swz(int row, int col) {
  return row * CS + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8 +
         (col & 7);
}

// --- thread-block clusters (sm_90): the two halves of cluster.sync(), so
// independent work can run between them ---
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// --- Hopper (sm_90 PTX) ---
// mbarriers, bulk copies, a named barrier for the
// consumer warps alone, an acquire load for the finishers' wait.
__device__ __forceinline__ void mbar_init(unsigned long long* bar,
                                          unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(count)
               : "memory");
}
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar))
               : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar,
                                               unsigned bytes) {
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
          smem_u32(bar)),
      "r"(bytes)
      : "memory");
}
// Wait until the phase with this parity has completed.
__device__ __forceinline__ void mbar_wait(unsigned long long* bar,
                                          unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
// bytes (a multiple of 16, both ends 16-byte aligned) global -> shared,
// completing on bar's transaction count.
__device__ __forceinline__ void bulk_load(void* dst, const void* src,
                                          unsigned bytes,
                                          unsigned long long* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes "
      "[%0], [%1], %2, [%3];\n" ::"r"(smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void consumers_sync(int nthreads) {
  asm volatile("bar.sync 1, %0;\n" ::"r"(nthreads) : "memory");
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n"
               : "=r"(v)
               : "l"(p)
               : "memory");
  return v;
}

// Cluster companions of the above (slim attention v7): the shared::cluster
// address of the same variable in block `rank` of the cluster, an arrive on a
// remote block's mbarrier (the default semantics, as CUTLASS's
// ClusterBarrier::arrive(cta_id): ".release.cluster" adds a GPU-wide MEMBAR),
// and a bulk copy from this block's shared
// memory into a remote block's, completing on that block's mbarrier (whose
// waiters then see the data, as with a multicast TMA load).
__device__ __forceinline__ unsigned cluster_addr(const void* p, int rank) {
  unsigned r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
               : "=r"(r)
               : "r"(smem_u32(p)), "r"(rank));
  return r;
}
// Four floats from a block's shared memory at a shared::cluster address (from
// cluster_addr): a DSMEM load (stagformer gemv v9's split-K sum).
__device__ __forceinline__ float4 ld_cluster_v4(unsigned cluster_src) {
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(cluster_src)
               : "memory");
  return v;
}
__device__ __forceinline__ void mbar_arrive_remote(unsigned cluster_bar) {
  asm volatile(
      "mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(
          cluster_bar)
      : "memory");
}
__device__ __forceinline__ void bulk_push(unsigned cluster_dst, const void* src,
                                          unsigned bytes,
                                          unsigned cluster_bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes "
      "[%0], [%1], %2, [%3];\n" ::"r"(cluster_dst),
      "r"(smem_u32(src)), "r"(bytes), "r"(cluster_bar)
      : "memory");
}
// Four floats into a remote block's shared memory (both addresses from
// cluster_addr), completing 16 bytes of that block's mbarrier transaction
// count: a DSMEM store that signals its receiver (slim attention v8).
__device__ __forceinline__ void st_async_v4(unsigned cluster_dst, float4 v,
                                            unsigned cluster_bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 "
      "[%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(cluster_dst),
      "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(cluster_bar)
      : "memory");
}
// bytes (a multiple of 16, 16-byte aligned) of global memory into L2, with
// nothing to wait for (the loads that follow find them there).
__device__ __forceinline__ void bulk_prefetch_l2(const void* src,
                                                 unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src),
               "r"(bytes)
               : "memory");
}
// A CUtensorMap: the driver's opaque 128-byte, 64-byte-aligned descriptor of a
// tiled view of global memory (cuTensorMapEncodeTiled, built on the host and
// passed by value as a __grid_constant__ kernel parameter).
struct __align__(64) TensorMap {
  unsigned long long w[16];
};
// One box of a 4-D tensor map at coordinates (c0, c1, c2, c3) (innermost
// first, in elements) global -> shared, completing on bar's transaction count
// with the box's full size (elements outside the tensor arrive as zeros).
__device__ __forceinline__ void tma_load_4d(void* dst, const TensorMap* map,
                                            int c0, int c1, int c2, int c3,
                                            unsigned long long* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_"
      "tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_u32(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Until this thread's committed bulk copies have finished reading their source.
__device__ __forceinline__ void bulk_wait_read0() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// Generic-proxy writes to shared memory, made visible to the async proxy
// (a bulk copy that reads them next).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void named_sync(int id, int nthreads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}

// --- wgmma (sm_90a: every compute capability 9.0 card; gpu/runtime.py compiles
// for sm_90a there, so these exist exactly where __CUDA_ARCH_FEAT_SM90_ALL is
// defined). A and B are read from shared memory through 64-bit descriptors;
// the accumulators stay in registers while the tensor cores run
// asynchronously: fence, issue, commit, and wait before reading them.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The descriptor of a K-major tile in the 128-byte swizzle: rows of 64 halves
// (128 bytes) at a 128-byte pitch, 8-row groups 1024 bytes apart (SBO), the
// 16-byte chunk c of row r stored at chunk c ^ (r % 8). The tile starts on a
// 1024-byte boundary; a k-step of 16 inside the row adds 32 bytes to the start.
__device__ __forceinline__ unsigned long long wgmma_desc_sw128(unsigned saddr) {
  return (unsigned long long)((saddr & 0x3FFFF) >> 4) |
         (1ull << 16) |                 // LBO: unused for swizzled K-major
         ((unsigned long long)(1024 >> 4) << 32) |  // SBO
         (1ull << 62);                  // 128-byte swizzle
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins the accumulators at this point of the program: reads after a wait are
// not hoisted above it (CUTLASS's warpgroup_fence_operand).
template <int R>
__device__ __forceinline__ void wgmma_fence_acc(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// d (64 x 128, float, this warpgroup's fragment) = A (64 x 16) B (16 x 128)
// + (acc ? d : 0); A and B fp16, both K-major (no transpose).
// Fragment: warp w of the group, lane l: d[4j + i] is row 16 w + l / 4
// (+ 8 for i >= 2), column 8 j + 2 (l % 4) + (i % 2).
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64],
                                                 unsigned long long da,
                                                 unsigned long long db,
                                                 int acc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(acc));
}
#endif

// --- the last-block-done counter ---
// Each of the n blocks of a group calls this (all its threads) after writing
// its partial result. It returns true, in every thread, in the one block that
// arrived last: that block then sees every partial (fences on both sides) and
// finishes the group. The counter is zero on entry and is left zero for the
// next launch (reset by the last block, once all n have arrived).
__device__ __forceinline__ bool last_block_done(unsigned* counter,
                                                unsigned n) {
  __shared__ bool last;
  __threadfence();  // this block's partial is visible before its ticket
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == n - 1;
    if (last) *counter = 0u;
  }
  __syncthreads();
  if (last) __threadfence();  // ...and the others' before we read them
  return last;
}
