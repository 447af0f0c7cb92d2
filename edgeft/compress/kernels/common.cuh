// Shared device code of edgeft's fused loss kernels.
//
// No CUDA header is included, so the sources compile with a bare NVRTC (the torch wheels ship
// libnvrtc but not the toolkit headers) as well as with nvcc. bf16 values travel as their 16 raw
// bits. The same sources also build on the CPU against tests/compress/kernel_emu/emu.h, which
// defines EDGEFT_EMULATE and provides threads, barriers and warp shuffles.
#pragma once

#define EDGEFT_THREADS 256           // threads per block, every kernel
#define EDGEFT_TILE 64               // rows and columns of an output tile
#define EDGEFT_TK 16                 // depth of one shared-memory chunk
#define EDGEFT_LDS (EDGEFT_TILE + 4) // padded row of a shared tile (keeps float4 alignment)
#define EDGEFT_TILE_ELEMS (EDGEFT_TILE * EDGEFT_TILE)

typedef unsigned short bf16_t;

#ifndef EDGEFT_KERNEL
// Every kernel takes one parameter struct by value: the host fills the same ctypes layout.
#define EDGEFT_KERNEL(name, Params) \
  extern "C" __global__ void __launch_bounds__(EDGEFT_THREADS) name(const Params p)
#endif

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16_t v) { return __uint_as_float(((unsigned)v) << 16); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
  return (bf16_t)(u >> 16);
}

// A scalar in global memory whose dtype is float32 (is_bf16 == 0) or bfloat16.
__device__ __forceinline__ float load_scalar(const void* ptr, int is_bf16) {
  return is_bf16 ? to_float(*(const bf16_t*)ptr) : *(const float*)ptr;
}
__device__ __forceinline__ void store_scalar(void* ptr, int is_bf16, float v) {
  if (is_bf16) *(bf16_t*)ptr = from_float<bf16_t>(v);
  else *(float*)ptr = v;
}

__device__ __forceinline__ void store4(float* dst, const float (&v)[4]) {  // dst 16-byte aligned
  float4 q;
  q.x = v[0]; q.y = v[1]; q.z = v[2]; q.w = v[3];
  *reinterpret_cast<float4*>(dst) = q;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block in a fixed order (deterministic); every thread must call it and gets the sum.
__device__ __forceinline__ float block_sum(float v, float* scratch /* 32 floats of shared memory */) {
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  v = (threadIdx.x & 31) < EDGEFT_THREADS / 32 ? scratch[threadIdx.x & 31] : 0.f;
  return warp_sum(v);
}

#ifndef EDGEFT_EMULATE
__device__ __forceinline__ void* dyn_smem() {
  extern __shared__ float4 edgeft_smem[];
  return edgeft_smem;
}

// Grid-wide barrier for cooperative launches (all blocks co-resident). Block 0 adds
// 2^31 - (blocks - 1), the others 1: the top bit of *bar flips exactly when the last block arrives
// and the low bits return to 0, so the word needs no reset between barriers or launches.
__device__ __forceinline__ void grid_sync(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1u) : 1u;
    __threadfence();
    const unsigned old = atomicAdd(bar, add);
    while (((old ^ *(volatile unsigned*)bar) & 0x80000000u) == 0u) __nanosleep(64);
    __threadfence();
  }
  __syncthreads();
}
#endif

// ---------------------------------------------------------------------------------------------
// 64x64 tile products through shared memory. Both operands sit k-major in shared memory,
// S[k][m]; thread (ty, tx) = (tid / 16, tid % 16) owns the 4x4 outputs rows 4ty.., cols 4tx...
// Loaders read global memory coalesced and keep the next chunk in registers while the current
// one is multiplied (software pipelining).

typedef float SmemTile[EDGEFT_TK][EDGEFT_LDS];

// Operand given as rows with k contiguous (x[m][k]): thread reads (m, k) = (tid/16 + 16q, tid%16).
template <class Get> struct RowsLoader {
  Get get;  // get(m, k) -> float, k counted from 0 over the whole depth; 0 outside the matrix
  __device__ __forceinline__ void fetch(float (&r)[4], int chunk) const {
    const int k = chunk * EDGEFT_TK + (threadIdx.x & 15), m = threadIdx.x >> 4;
#pragma unroll
    for (int q = 0; q < 4; ++q) r[q] = get(m + 16 * q, k);
  }
  __device__ __forceinline__ void stash(SmemTile& s, const float (&r)[4]) const {
    const int k = threadIdx.x & 15, m = threadIdx.x >> 4;
#pragma unroll
    for (int q = 0; q < 4; ++q) s[k][m + 16 * q] = r[q];
  }
};

// Operand given as k rows with n contiguous (x[k][n]): thread reads (k, n) = (tid/64 + 4q, tid%64).
template <class Get> struct ColsLoader {
  Get get;  // get(k, n) -> float
  __device__ __forceinline__ void fetch(float (&r)[4], int chunk) const {
    const int k = chunk * EDGEFT_TK + (threadIdx.x >> 6), n = threadIdx.x & 63;
#pragma unroll
    for (int q = 0; q < 4; ++q) r[q] = get(k + 4 * q, n);
  }
  __device__ __forceinline__ void stash(SmemTile& s, const float (&r)[4]) const {
    const int k = threadIdx.x >> 6, n = threadIdx.x & 63;
#pragma unroll
    for (int q = 0; q < 4; ++q) s[k + 4 * q][n] = r[q];
  }
};

template <class Get> __device__ __forceinline__ RowsLoader<Get> rows_loader(Get get) { return RowsLoader<Get>{get}; }
template <class Get> __device__ __forceinline__ ColsLoader<Get> cols_loader(Get get) { return ColsLoader<Get>{get}; }

__device__ __forceinline__ void zero(float (&acc)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
}

// acc[i][j] += sum over chunks [c0, c1) of A[4ty+i][k] * B[4tx+j][k]. Block-uniform arguments.
template <class LA, class LB>
__device__ void gemm_tile(float (&acc)[4][4], SmemTile& sa, SmemTile& sb, int c0, int c1, const LA& la,
                          const LB& lb) {
  if (c0 >= c1) return;
  float ra[4], rb[4];
  la.fetch(ra, c0);
  lb.fetch(rb, c0);
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  for (int c = c0; c < c1; ++c) {
    __syncthreads();  // the previous chunk has been read by everyone
    la.stash(sa, ra);
    lb.stash(sb, rb);
    __syncthreads();
    if (c + 1 < c1) {
      la.fetch(ra, c + 1);
      lb.fetch(rb, c + 1);
    }
#pragma unroll
    for (int k = 0; k < EDGEFT_TK; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(&sa[k][4 * ty]);
      const float4 b = *reinterpret_cast<const float4*>(&sb[k][4 * tx]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  }
  __syncthreads();  // callers may reuse the shared tiles
}
