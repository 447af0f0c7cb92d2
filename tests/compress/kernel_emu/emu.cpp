// Runtime of the CPU emulator (see emu.h): launches a kernel as grid x block threads.
#include "emu.h"

#include <pthread.h>

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

thread_local EmuDim threadIdx, blockIdx;
EmuDim gridDim, blockDim;

namespace {

struct Block {
  std::unique_ptr<std::barrier<>> sync;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> lanes;  // one shuffle slot per thread
  std::vector<float4> smem;
};

struct Start {
  void (*kernel)(const void*);
  const void* params;
  unsigned block, thread;
};

std::vector<std::unique_ptr<Block>> blocks;
std::unique_ptr<std::barrier<>> grid_barrier;
thread_local Block* current = nullptr;

void* run(void* arg) {
  const Start* s = static_cast<const Start*>(arg);
  blockIdx.x = s->block;
  threadIdx.x = s->thread;
  current = blocks[s->block].get();
  s->kernel(s->params);
  return nullptr;
}

}  // namespace

void __syncthreads() { current->sync->arrive_and_wait(); }

float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* slots = &current->lanes[warp * 32];
  slots[lane] = value;
  current->warps[warp]->arrive_and_wait();
  const float other = slots[lane ^ lane_mask];
  current->warps[warp]->arrive_and_wait();
  return other;
}

void* dyn_smem() { return current->smem.data(); }

void emu_grid_sync() { grid_barrier->arrive_and_wait(); }

// Runs kernel(params) on grid x block threads with smem bytes of dynamic shared memory per block,
// filled with NaN so that reading shared memory nobody wrote shows up in the results.
extern "C" int edgeft_emu_launch(void (*kernel)(const void*), const void* params, unsigned grid, unsigned block,
                                 unsigned smem) {
  if (block % 32 != 0 || grid == 0) return 1;
  gridDim.x = grid;
  blockDim.x = block;
  blocks.clear();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (unsigned b = 0; b < grid; ++b) {
    auto blk = std::make_unique<Block>();
    blk->sync = std::make_unique<std::barrier<>>(block);
    for (unsigned w = 0; w < block / 32; ++w) blk->warps.push_back(std::make_unique<std::barrier<>>(32));
    blk->lanes.assign(block, 0.f);
    blk->smem.assign(smem / 16 + 1, float4{nan, nan, nan, nan});
    blocks.push_back(std::move(blk));
  }
  grid_barrier = std::make_unique<std::barrier<>>(grid * block);
  std::vector<Start> starts(grid * block);
  std::vector<pthread_t> threads(grid * block);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 1 << 18);
  for (unsigned t = 0; t < grid * block; ++t) {
    starts[t] = Start{kernel, params, t / block, t % block};
    if (pthread_create(&threads[t], &attr, run, &starts[t]) != 0) {
      std::fprintf(stderr, "edgeft emulator: cannot start thread %u\n", t);
      std::abort();  // the threads already started wait at barriers forever
    }
  }
  for (pthread_t& thread : threads) pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
  return 0;
}
