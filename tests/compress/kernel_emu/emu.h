// CPU emulation of the CUDA features used by edgeft/compress/kernels/*.cu, for tests without a GPU.
//
// One OS thread per CUDA thread and the whole grid alive at once (as a cooperative launch
// guarantees); std::barrier stands in for __syncthreads, the grid barrier and the lock-step of a
// warp around a shuffle. Force-included (g++ -include emu.h) before the kernel sources.
#pragma once
#include <math.h>

#include <algorithm>
#include <cstring>

#define EDGEFT_EMULATE 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define EDGEFT_KERNEL(name, Params)                                                        \
  static void name##_body(const Params& p);                                                \
  extern "C" void name(const void* raw) { name##_body(*static_cast<const Params*>(raw)); } \
  static void name##_body(const Params& p)

struct EmuDim {
  unsigned x = 0, y = 0, z = 0;
};
extern thread_local EmuDim threadIdx, blockIdx;
extern EmuDim gridDim, blockDim;

struct alignas(16) float4 {
  float x, y, z, w;
};

using std::max;
using std::min;

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
template <class T> inline T __ldcg(const T* p) { return *p; }

void __syncthreads();
float __shfl_xor_sync(unsigned mask, float value, int lane_mask);
void* dyn_smem();
void emu_grid_sync();
inline void grid_sync(unsigned*) { emu_grid_sync(); }
