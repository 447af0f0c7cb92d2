// KDEP's power temperature scaling (He et al. 2022, §3.3) and its fused distillation loss.
//
//   pts(f) = sign(f) |f / T|^(1/n)
//   kdep:  target = pts((teacher - mean) @ basis),  L = weight * mean((student - target)^2)
//
// kdep_forward is one cooperative launch: (1) split-K partial tiles of the projection,
// (2) reduction, PTS, the difference (kept for the backward) and its squares, (3) the loss.
// The target is a constant (frozen teacher, fixed alignment), so the backward is elementwise:
// d student = grad * 2 weight / (B k) * (student - target).
#include "common.cuh"


struct PtsParams {
  const void* x;   // forward input f (also read by the backward)
  void* y;         // forward output
  const void* gy;  // backward: gradient of y
  void* gx;        // backward: gradient of f
  long long numel;
  float T, inv_n;
};

struct KdepParams {
  const void* student;   // [B, dim], row stride ld_student
  const void* teacher;   // [B, d_teacher], row stride ld_teacher
  const float* mean;     // [d_teacher]
  const float* basis;    // [d_teacher, dim] contiguous
  const void* grad_out;  // backward: upstream gradient of the loss (loss dtype)
  void* loss_out;        // forward: the loss (loss dtype)
  void* dstudent;        // backward: [B, dim] contiguous, dtype of student
  float* partial;        // [split][row_tiles * col_tiles][64*64]
  float* diff;           // [B, dim] student - target
  float* loss_part;      // [row_tiles * col_tiles]
  float* loss;           // [1]
  unsigned* barrier;
  long long ld_student, ld_teacher;
  int batch, d_teacher, dim, row_tiles, col_tiles, split, loss_bf16;
  float T, inv_n, weight;
};

struct KdepSmem {
  SmemTile a, b;
  float scratch[32];
};
static_assert(sizeof(KdepSmem) == 8832, "update SMEM in pts.py");

__device__ __forceinline__ float pts(float f, float T, float inv_n) {
  return copysignf(powf(fabsf(f) / T, inv_n), f);
}

template <typename T> __device__ void pts_forward(const PtsParams& p) {
  for (long long k = (long long)blockIdx.x * EDGEFT_THREADS + threadIdx.x; k < p.numel;
       k += (long long)gridDim.x * EDGEFT_THREADS)
    ((T*)p.y)[k] = from_float<T>(pts(to_float(((const T*)p.x)[k]), p.T, p.inv_n));
}

// d pts / df = |f/T|^(1/n - 1) / (n T); taken as 0 at f = 0 (the derivative is unbounded there).
template <typename T> __device__ void pts_backward(const PtsParams& p) {
  for (long long k = (long long)blockIdx.x * EDGEFT_THREADS + threadIdx.x; k < p.numel;
       k += (long long)gridDim.x * EDGEFT_THREADS) {
    const float f = to_float(((const T*)p.x)[k]), g = to_float(((const T*)p.gy)[k]);
    const float slope = f != 0.f ? p.inv_n / p.T * powf(fabsf(f) / p.T, p.inv_n - 1.f) : 0.f;
    ((T*)p.gx)[k] = from_float<T>(g * slope);
  }
}

template <typename T> struct CentredTeacher {
  const T* x;
  long long ld;
  const float* mean;
  int row0, rows, dim;
  __device__ __forceinline__ float operator()(int m, int k) const {
    const int row = row0 + m;
    return row < rows && k < dim ? to_float(x[row * ld + k]) - mean[k] : 0.f;
  }
};

struct BasisCols {
  const float* basis;
  int c0, rows, cols;
  __device__ __forceinline__ float operator()(int k, int n) const {
    const int c = c0 + n;
    return k < rows && c < cols ? basis[(long long)k * cols + c] : 0.f;
  }
};

template <typename TS, typename TT> __device__ void kdep_forward(const KdepParams& p) {
  KdepSmem& sm = *reinterpret_cast<KdepSmem*>(dyn_smem());
  const int tiles = p.row_tiles * p.col_tiles, chunks = (p.d_teacher + EDGEFT_TK - 1) / EDGEFT_TK;
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  for (int it = blockIdx.x; it < p.split * tiles; it += gridDim.x) {
    const int slice = it / tiles, tile = it % tiles, I = tile / p.col_tiles, C = tile % p.col_tiles;
    const int lo = (int)((long long)chunks * slice / p.split), hi = (int)((long long)chunks * (slice + 1) / p.split);
    float acc[4][4];
    zero(acc);
    gemm_tile(acc, sm.a, sm.b, lo, hi,
              rows_loader(CentredTeacher<TT>{(const TT*)p.teacher, p.ld_teacher, p.mean, I * EDGEFT_TILE, p.batch,
                                             p.d_teacher}),
              cols_loader(BasisCols{p.basis, C * EDGEFT_TILE, p.d_teacher, p.dim}));
    float* out = p.partial + (long long)it * EDGEFT_TILE_ELEMS + (4 * ty) * EDGEFT_TILE + 4 * tx;
#pragma unroll
    for (int i = 0; i < 4; ++i) store4(out + i * EDGEFT_TILE, acc[i]);
  }
  grid_sync(p.barrier);
  const TS* student = (const TS*)p.student;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int I = tile / p.col_tiles, C = tile % p.col_tiles;
    float sq = 0.f;
    for (int e = threadIdx.x; e < EDGEFT_TILE_ELEMS; e += EDGEFT_THREADS) {
      const int i = I * EDGEFT_TILE + (e >> 6), c = C * EDGEFT_TILE + (e & 63);
      if (i < p.batch && c < p.dim) {
        float proj = 0.f;
#pragma unroll 8
        for (int sl = 0; sl < p.split; ++sl) proj += __ldcg(p.partial + ((long long)sl * tiles + tile) * EDGEFT_TILE_ELEMS + e);
        const float d = to_float(student[i * p.ld_student + c]) - pts(proj, p.T, p.inv_n);
        p.diff[(long long)i * p.dim + c] = d;
        sq += d * d;
      }
    }
    sq = block_sum(sq, sm.scratch);
    if (threadIdx.x == 0) p.loss_part[tile] = sq;
  }
  grid_sync(p.barrier);
  if (blockIdx.x == 0) {
    float s = 0.f;
    for (int k = threadIdx.x; k < tiles; k += EDGEFT_THREADS) s += __ldcg(p.loss_part + k);
    s = block_sum(s, sm.scratch);
    if (threadIdx.x == 0) {
      const float loss = p.weight * s / ((float)p.batch * (float)p.dim);
      p.loss[0] = loss;
      store_scalar(p.loss_out, p.loss_bf16, loss);
    }
  }
}

template <typename TS> __device__ void kdep_backward(const KdepParams& p) {
  const long long numel = (long long)p.batch * p.dim;
  const float coef = 2.f * p.weight * load_scalar(p.grad_out, p.loss_bf16) / (float)numel;
  for (long long k = (long long)blockIdx.x * EDGEFT_THREADS + threadIdx.x; k < numel;
       k += (long long)gridDim.x * EDGEFT_THREADS)
    ((TS*)p.dstudent)[k] = from_float<TS>(coef * p.diff[k]);
}

EDGEFT_KERNEL(pts_forward_f32, PtsParams) { pts_forward<float>(p); }
EDGEFT_KERNEL(pts_forward_bf16, PtsParams) { pts_forward<bf16_t>(p); }
EDGEFT_KERNEL(pts_backward_f32, PtsParams) { pts_backward<float>(p); }
EDGEFT_KERNEL(pts_backward_bf16, PtsParams) { pts_backward<bf16_t>(p); }
// student and teacher share one dtype (the host casts mixed inputs to float32)
EDGEFT_KERNEL(kdep_forward_f32, KdepParams) { kdep_forward<float, float>(p); }
EDGEFT_KERNEL(kdep_forward_bf16, KdepParams) { kdep_forward<bf16_t, bf16_t>(p); }
EDGEFT_KERNEL(kdep_backward_f32, KdepParams) { kdep_backward<float>(p); }
EDGEFT_KERNEL(kdep_backward_bf16, KdepParams) { kdep_backward<bf16_t>(p); }
