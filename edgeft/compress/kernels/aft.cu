// AFT's kernel distance (Han et al. 2024, Alg. 1), forward and backward, one cooperative launch each.
//
//   t = psi * w;  c = x - mean_batch(x);  u_i = c_i / (|c_i| + 1e-8)       for x = phi and x = t
//   D = U_s U_s^T - U_t U_t^T;            L = sqrt(sum(D^2) / B^2 + 1e-8)
//
// The feature dimension is reduced once, in the Gram products of the *centred* rows
// G_ij = c_i . c_j (never materialising u): row norms are the Gram diagonal and K_ij = G_ij/(n_i n_j).
// Forward: (0) batch means; (1) split-K partial Gram tiles of the upper triangle, phi and all
// teachers in one pass; (2) per strip of a tile: reduce the partials, D, sum D^2, the row sums
// rho_i = sum_j D_ij K_ij, D stored (both triangles) for the backward; (3) loss and rho.
// Backward, with g = dL/dL_out / (B^2 L), p_i = 2g/n_i, q_i = 2g rho_i / |c_i|:
//   dc_i = +-(p_i (D U)_i - q_i u_i)   (+ student, - teacher),  dx = dc - mean_batch(dc),
//   dpsi = dx_t * w,  dw_k = sum_i dc_t[i,k] (psi_ik - mean_k)
// (1) tiles of D U with the dc epilogue and per-tile column sums; (2) centring and output stores.
#include "common.cuh"

#define AFT_MAX_TEACHERS 8
#define AFT_EPS_NORM 1e-8f
#define AFT_EPS_SQRT 1e-8f

struct AftParams {
  const void* phi;                        // [B, d_phi], row stride ld_phi
  const void* psi[AFT_MAX_TEACHERS];      // teacher k: [B, dim[k]], row stride ld_psi[k]
  const float* w;                         // [d_psi] feature weights, teachers concatenated
  const void* grad_out;                   // backward: upstream gradient of the loss (loss dtype)
  void* loss_out;                         // forward: the loss (loss dtype)
  void* dphi;                             // backward: [B, d_phi] contiguous, dtype of phi
  void* dpsi[AFT_MAX_TEACHERS];           // backward, if psi_grad: [B, dim[k]] contiguous
  float* dw;                              // backward, if w_grad: [d_psi]
  float* mean;       // [d_phi + d_psi] batch means of phi and of the raw psi
  float* partial;    // [split][pairs][2][64*64] partial centred Gram tiles (phi, weighted psi)
  float* dmat;       // [B, B] D
  float* norms;      // [2][B] |c_i| of phi and of psi * w
  float* rho_part;   // [2][4 * n_tiles][B] sum_j D_ij K_ij over 16-column strips
  float* rho;        // [2][B]
  float* loss_part;  // [4 * pairs]
  float* loss;       // [1] fp32 loss, kept for the backward
  float* dc;         // backward: [B, d_phi + d_psi] gradient w.r.t. the centred features
  float* col_part;   // backward: [n_tiles][d_phi + d_psi] column sums of dc per row tile
  float* w_part;     // backward: [n_tiles][d_psi] per row tile sum_i dc_ik (psi_ik - mean_k)
  unsigned* barrier; // grid barrier word (low 31 bits zero)
  long long ld_phi;
  long long ld_psi[AFT_MAX_TEACHERS];
  int dim[AFT_MAX_TEACHERS];
  int n_teachers, batch, d_phi, d_psi;
  int n_tiles, pairs, split;  // row tiles, upper-triangle tile pairs, K slices of the forward
  int psi_grad, w_grad, loss_bf16;
};

struct AftSmem {
  SmemTile a, b;
  float red[2][16][EDGEFT_TILE];      // column reductions over 16 row groups
  float dt[16][EDGEFT_TILE + 1];      // one strip of D, for the transposed store
  float cn_row[2][16], cn_col[2][EDGEFT_TILE];
  float scratch[32];
};
static_assert(sizeof(AftSmem) == 21824, "update SMEM in aft.py");

// One block of columns of [phi | psi_1 | ... | psi_n].
struct Segment {
  const void* x;
  long long ld;
  int dim, col, wcol, teacher;  // col: first concatenated column; wcol/teacher: -1 for phi
};

__device__ __forceinline__ Segment segment(const AftParams& p, int s) {
  Segment g;
  if (s == 0) {
    g.x = p.phi; g.ld = p.ld_phi; g.dim = p.d_phi; g.col = 0; g.wcol = -1; g.teacher = -1;
    return g;
  }
  int off = 0;
  for (int k = 0; k < s - 1; ++k) off += p.dim[k];
  g.x = p.psi[s - 1]; g.ld = p.ld_psi[s - 1]; g.dim = p.dim[s - 1];
  g.col = p.d_phi + off; g.wcol = off; g.teacher = s - 1;
  return g;
}

// Tile pair index -> (I, J), I <= J, row-major over the upper triangle of n x n tiles.
__device__ __forceinline__ void pair_tiles(int pair, int n, int& I, int& J) {
  I = 0;
  while (pair >= n - I) { pair -= n - I; ++I; }
  J = I + pair;
}
__device__ __forceinline__ int diag_pair(int I, int n) { return I * n - I * (I - 1) / 2; }

// Centred (and, for teachers, weighted) feature (row0 + m, k); 0 outside the matrix.
template <typename T> struct CentredRows {
  const T* x;
  long long ld;
  const float* mean;  // written earlier in the same launch: read through L2
  const float* w;     // nullptr for phi
  int row0, rows, dim;
  __device__ __forceinline__ float operator()(int m, int k) const {
    const int row = row0 + m;
    if (row >= rows || k >= dim) return 0.f;
    const float v = to_float(x[row * ld + k]) - __ldcg(mean + k);
    return w ? v * w[k] : v;
  }
};

// Row-normalised centred feature u[k][c0 + n] (k = batch row), for D U in the backward.
template <typename T> struct UnitCols {
  const T* x;
  long long ld;
  const float* mean;
  const float* w;
  const float* norms;
  int c0, rows, dim;
  __device__ __forceinline__ float operator()(int k, int n) const {
    const int c = c0 + n;
    if (k >= rows || c >= dim) return 0.f;
    const float v = (to_float(x[k * ld + c]) - __ldcg(mean + c)) / (__ldcg(norms + k) + AFT_EPS_NORM);
    return w ? v * w[c] : v;
  }
};

struct DRows {
  const float* d;
  int row0, batch;
  __device__ __forceinline__ float operator()(int m, int k) const {
    const int row = row0 + m;
    return row < batch && k < batch ? __ldcg(d + (long long)row * batch + k) : 0.f;
  }
};

// ---- forward ------------------------------------------------------------------------------

template <typename TS, typename TT> __device__ void aft_means(const AftParams& p, float* red) {
  const int total = p.d_phi + p.d_psi, items = (total + 31) / 32;
  const int c = threadIdx.x & 31, r0 = threadIdx.x >> 5;
  for (int it = blockIdx.x; it < items; it += gridDim.x) {
    const int col = it * 32 + c;
    float sum = 0.f;
    if (col < p.d_phi) {
      const TS* x = (const TS*)p.phi;
      for (int r = r0; r < p.batch; r += 8) sum += to_float(x[r * p.ld_phi + col]);
    } else if (col < total) {
      int k = col - p.d_phi, s = 0;
      while (k >= p.dim[s]) k -= p.dim[s++];
      const TT* x = (const TT*)p.psi[s];
      for (int r = r0; r < p.batch; r += 8) sum += to_float(x[r * p.ld_psi[s] + k]);
    }
    red[r0 * 32 + c] = sum;
    __syncthreads();
    if (threadIdx.x < 32 && col < total) {
      float t = 0.f;
      for (int r = 0; r < 8; ++r) t += red[r * 32 + c];
      p.mean[col] = t / p.batch;
    }
    __syncthreads();
  }
}

template <typename T>
__device__ void gram_chunks(float (&acc)[4][4], AftSmem& sm, const AftParams& p, const Segment& g, int I, int J,
                            int c0, int c1) {
  const float* w = g.teacher >= 0 ? p.w + g.wcol : nullptr;
  CentredRows<T> a{(const T*)g.x, g.ld, p.mean + g.col, w, I * EDGEFT_TILE, p.batch, g.dim};
  CentredRows<T> b = a;
  b.row0 = J * EDGEFT_TILE;
  gemm_tile(acc, sm.a, sm.b, c0, c1, rows_loader(a), rows_loader(b));
}

template <typename TS, typename TT> __device__ void aft_gram_partials(const AftParams& p, AftSmem& sm) {
  const int nseg = 1 + p.n_teachers;
  int chunks = 0;
  for (int s = 0; s < nseg; ++s) chunks += (segment(p, s).dim + EDGEFT_TK - 1) / EDGEFT_TK;
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  for (int it = blockIdx.x; it < p.split * p.pairs; it += gridDim.x) {
    const int slice = it / p.pairs, pair = it % p.pairs;
    int I, J;
    pair_tiles(pair, p.n_tiles, I, J);
    const int lo = (int)((long long)chunks * slice / p.split), hi = (int)((long long)chunks * (slice + 1) / p.split);
    float gs[4][4], gt[4][4];
    zero(gs);
    zero(gt);
    int base = 0;  // first chunk of segment s in the concatenated chunk range
    for (int s = 0; s < nseg; ++s) {
      const Segment g = segment(p, s);
      const int n = (g.dim + EDGEFT_TK - 1) / EDGEFT_TK;
      const int c0 = max(lo - base, 0), c1 = min(hi - base, n);
      if (s == 0) gram_chunks<TS>(gs, sm, p, g, I, J, c0, c1);
      else gram_chunks<TT>(gt, sm, p, g, I, J, c0, c1);
      base += n;
    }
    float* out = p.partial + (long long)it * 2 * EDGEFT_TILE_ELEMS + (4 * ty) * EDGEFT_TILE + 4 * tx;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      store4(out + i * EDGEFT_TILE, gs[i]);
      store4(out + EDGEFT_TILE_ELEMS + i * EDGEFT_TILE, gt[i]);
    }
  }
}

// Per (tile pair, 16-row strip): reduce the K slices, D, its squares and the rho row/column sums.
__device__ void aft_epilogue(const AftParams& p, AftSmem& sm) {
  const int B = p.batch, nT = p.n_tiles, t = threadIdx.x;
  const long long slice_stride = (long long)p.pairs * 2 * EDGEFT_TILE_ELEMS;
  for (int it = blockIdx.x; it < 4 * p.pairs; it += gridDim.x) {
    const int pair = it >> 2, strip = it & 3;
    int I, J;
    pair_tiles(pair, nT, I, J);
    const bool diag = I == J;
    // |c|^2 of the strip rows and of the tile columns: diagonals of the diagonal tiles
    if (t < 32 || t >= 128) {
      const int side = t < 32 ? t >> 4 : (t - 128) >> 6, r = t < 32 ? strip * 16 + (t & 15) : (t - 128) & 63;
      const float* src = p.partial + (long long)diag_pair(t < 32 ? I : J, nT) * 2 * EDGEFT_TILE_ELEMS + side * EDGEFT_TILE_ELEMS +
                         r * (EDGEFT_TILE + 1);
      float sq = 0.f;
#pragma unroll 8
      for (int sl = 0; sl < p.split; ++sl) sq += __ldcg(src + sl * slice_stride);
      if (t < 32) sm.cn_row[side][t & 15] = sqrtf(sq);
      else sm.cn_col[side][r] = sqrtf(sq);
    }
    __syncthreads();
    if (diag && t < 32) {
      const int i = I * EDGEFT_TILE + strip * 16 + (t & 15);
      if (i < B) p.norms[(t >> 4) * B + i] = sm.cn_row[t >> 4][t & 15];
    }
    const int rl = t >> 4, tx = t & 15, i = I * EDGEFT_TILE + strip * 16 + rl;
    float cs[4] = {0.f, 0.f, 0.f, 0.f}, ct[4] = {0.f, 0.f, 0.f, 0.f};
    const float* src = p.partial + (long long)pair * 2 * EDGEFT_TILE_ELEMS + (strip * 16 + rl) * EDGEFT_TILE + 4 * tx;
#pragma unroll 8  // independent L2 loads in flight: this reduction is latency-bound at small B
    for (int sl = 0; sl < p.split; ++sl) {
      const float4 a = __ldcg(reinterpret_cast<const float4*>(src + sl * slice_stride));
      const float4 b = __ldcg(reinterpret_cast<const float4*>(src + sl * slice_stride + EDGEFT_TILE_ELEMS));
      cs[0] += a.x; cs[1] += a.y; cs[2] += a.z; cs[3] += a.w;
      ct[0] += b.x; ct[1] += b.y; ct[2] += b.z; ct[3] += b.w;
    }
    const float ns = sm.cn_row[0][rl] + AFT_EPS_NORM, nt = sm.cn_row[1][rl] + AFT_EPS_NORM;
    float sq = 0.f, rho_s = 0.f, rho_t = 0.f;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int c = 4 * tx + q, j = J * EDGEFT_TILE + c;
      const bool valid = i < B && j < B;
      const float ks = valid ? cs[q] / (ns * (sm.cn_col[0][c] + AFT_EPS_NORM)) : 0.f;
      const float kt = valid ? ct[q] / (nt * (sm.cn_col[1][c] + AFT_EPS_NORM)) : 0.f;
      const float d = ks - kt;
      if (valid) p.dmat[(long long)i * B + j] = d;
      sq += d * d;
      rho_s += d * ks;
      rho_t += d * kt;
      sm.dt[rl][c] = d;
      sm.red[0][rl][c] = d * ks;
      sm.red[1][rl][c] = d * kt;
    }
    // row sums over each 16-column strip of J (4 neighbouring lanes)
    rho_s += __shfl_xor_sync(0xffffffffu, rho_s, 1);
    rho_s += __shfl_xor_sync(0xffffffffu, rho_s, 2);
    rho_t += __shfl_xor_sync(0xffffffffu, rho_t, 1);
    rho_t += __shfl_xor_sync(0xffffffffu, rho_t, 2);
    if ((tx & 3) == 0 && i < B) {
      const long long slot = J * 4 + (tx >> 2);
      p.rho_part[slot * B + i] = rho_s;
      p.rho_part[(4LL * nT + slot) * B + i] = rho_t;
    }
    __syncthreads();
    if (!diag) {  // the mirrored tile (J, I): column sums of this strip and D transposed
      if (t < 128) {
        const int side = t >> 6, c = t & 63, j = J * EDGEFT_TILE + c;
        float sum = 0.f;
        for (int r = 0; r < 16; ++r) sum += sm.red[side][r][c];
        if (j < B) p.rho_part[((long long)side * 4 * nT + I * 4 + strip) * B + j] = sum;
      }
      const int c = t >> 2, r4 = (t & 3) * 4, j = J * EDGEFT_TILE + c;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int row = I * EDGEFT_TILE + strip * 16 + r4 + q;
        if (j < B && row < B) p.dmat[(long long)j * B + row] = sm.dt[r4 + q][c];
      }
    }
    const float total = block_sum(sq, sm.scratch);
    if (t == 0) p.loss_part[it] = diag ? total : 2.f * total;
  }
}

__device__ void aft_finish(const AftParams& p, AftSmem& sm) {
  const int B = p.batch, slots = 4 * p.n_tiles;
  if (blockIdx.x == 0) {
    float s = 0.f;
    for (int k = threadIdx.x; k < 4 * p.pairs; k += EDGEFT_THREADS) s += __ldcg(p.loss_part + k);
    s = block_sum(s, sm.scratch);
    if (threadIdx.x == 0) {
      const float loss = sqrtf(s / ((float)B * (float)B) + AFT_EPS_SQRT);
      p.loss[0] = loss;
      store_scalar(p.loss_out, p.loss_bf16, loss);
    }
  }
  for (int k = blockIdx.x * EDGEFT_THREADS + threadIdx.x; k < 2 * B; k += gridDim.x * EDGEFT_THREADS) {
    const int side = k / B, i = k - side * B;
    float r = 0.f;
    for (int s = 0; s < slots; ++s) r += __ldcg(p.rho_part + ((long long)side * slots + s) * B + i);
    p.rho[k] = r;
  }
}

template <typename TS, typename TT> __device__ void aft_forward(const AftParams& p) {
  AftSmem& sm = *reinterpret_cast<AftSmem*>(dyn_smem());
  aft_means<TS, TT>(p, &sm.red[0][0][0]);
  grid_sync(p.barrier);
  aft_gram_partials<TS, TT>(p, sm);
  grid_sync(p.barrier);
  aft_epilogue(p, sm);
  grid_sync(p.barrier);
  aft_finish(p, sm);
}

// ---- backward -----------------------------------------------------------------------------

// Row tile I x column tile ct of segment g: dc = +-(p_i (D U)_ic - q_i u_ic), plus column sums.
template <typename T>
__device__ void aft_grad_tile(const AftParams& p, AftSmem& sm, const Segment& g, int I, int ct, float gamma2) {
  const int B = p.batch, c0 = ct * EDGEFT_TILE, total = p.d_phi + p.d_psi, side = g.teacher >= 0;
  const T* x = (const T*)g.x;
  const float* mean = p.mean + g.col;
  const float* w = side ? p.w + g.wcol : nullptr;
  const float* norms = p.norms + side * B;
  const float* rho = p.rho + side * B;
  float acc[4][4];
  zero(acc);
  gemm_tile(acc, sm.a, sm.b, 0, (B + EDGEFT_TK - 1) / EDGEFT_TK, rows_loader(DRows{p.dmat, I * EDGEFT_TILE, B}),
            cols_loader(UnitCols<T>{x, g.ld, mean, w, norms, c0, B, g.dim}));
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  const bool keep = !side || p.psi_grad;
  float csum[4] = {0.f, 0.f, 0.f, 0.f}, wsum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int i = I * EDGEFT_TILE + 4 * ty + a;
    if (i < B) {
      const float cn = __ldcg(norms + i), n = cn + AFT_EPS_NORM;
      const float pc = gamma2 / n, qc = cn > 0.f ? gamma2 * __ldcg(rho + i) / cn : 0.f;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int c = c0 + 4 * tx + b;
        if (c < g.dim) {
          const float xc = to_float(x[i * g.ld + c]) - __ldcg(mean + c);
          const float u = w ? xc / n * w[c] : xc / n;
          const float grad = side ? qc * u - pc * acc[a][b] : pc * acc[a][b] - qc * u;
          if (keep) p.dc[(long long)i * total + g.col + c] = grad;
          csum[b] += grad;
          wsum[b] += grad * xc;
        }
      }
    }
  }
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    sm.red[0][ty][4 * tx + b] = csum[b];
    sm.red[1][ty][4 * tx + b] = wsum[b];
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    const int which = threadIdx.x >> 6, n = threadIdx.x & 63, c = c0 + n;
    if (c < g.dim && (which == 0 || side)) {
      float s = 0.f;
      for (int r = 0; r < 16; ++r) s += sm.red[which][r][n];
      if (which == 0) p.col_part[(long long)I * total + g.col + c] = s;
      else p.w_part[(long long)I * p.d_psi + g.wcol + c] = s;
    }
  }
  __syncthreads();
}

// Column tile `it` of the segments in use -> segment and tile within it.
__device__ __forceinline__ Segment column_tile(const AftParams& p, int it, int& ct) {
  int s = 0;
  Segment g = segment(p, 0);
  while (it >= (g.dim + EDGEFT_TILE - 1) / EDGEFT_TILE) {
    it -= (g.dim + EDGEFT_TILE - 1) / EDGEFT_TILE;
    g = segment(p, ++s);
  }
  ct = it;
  return g;
}

// Centre dc over the batch and store the input gradients (and dw).
template <typename TS, typename TT> __device__ void aft_grad_store(const AftParams& p, int tiles) {
  const int B = p.batch, total = p.d_phi + p.d_psi, n = threadIdx.x & 63, rg = threadIdx.x >> 6;
  for (int it = blockIdx.x; it < tiles; it += gridDim.x) {
    int ct;
    const Segment g = column_tile(p, it, ct);
    const int c = ct * EDGEFT_TILE + n;
    if (c >= g.dim) continue;
    float s = 0.f;
    for (int I = 0; I < p.n_tiles; ++I) s += __ldcg(p.col_part + (long long)I * total + g.col + c);
    const float mean = s / B;
    const float* dc = p.dc + g.col + c;
    if (g.teacher < 0) {
      TS* out = (TS*)p.dphi + c;
#pragma unroll 4
      for (int i = rg; i < B; i += 4) out[(long long)i * p.d_phi] = from_float<TS>(__ldcg(dc + (long long)i * total) - mean);
      continue;
    }
    if (p.w_grad && rg == 0) {
      float ws = 0.f;
      for (int I = 0; I < p.n_tiles; ++I) ws += __ldcg(p.w_part + (long long)I * p.d_psi + g.wcol + c);
      p.dw[g.wcol + c] = ws;
    }
    if (p.psi_grad) {
      const float wc = p.w[g.wcol + c];
      TT* out = (TT*)p.dpsi[g.teacher] + c;
#pragma unroll 4
      for (int i = rg; i < B; i += 4)
        out[(long long)i * g.dim] = from_float<TT>((__ldcg(dc + (long long)i * total) - mean) * wc);
    }
  }
}

template <typename TS, typename TT> __device__ void aft_backward(const AftParams& p) {
  AftSmem& sm = *reinterpret_cast<AftSmem*>(dyn_smem());
  const int B = p.batch;
  const float gamma2 = 2.f * load_scalar(p.grad_out, p.loss_bf16) / ((float)B * (float)B * p.loss[0]);
  const int nseg = 1 + (p.psi_grad || p.w_grad ? p.n_teachers : 0);
  int tiles = 0;
  for (int s = 0; s < nseg; ++s) tiles += (segment(p, s).dim + EDGEFT_TILE - 1) / EDGEFT_TILE;
  for (int it = blockIdx.x; it < p.n_tiles * tiles; it += gridDim.x) {
    int ct;
    const Segment g = column_tile(p, it / p.n_tiles, ct);
    if (g.teacher < 0) aft_grad_tile<TS>(p, sm, g, it % p.n_tiles, ct, gamma2);
    else aft_grad_tile<TT>(p, sm, g, it % p.n_tiles, ct, gamma2);
  }
  grid_sync(p.barrier);
  aft_grad_store<TS, TT>(p, tiles);
}

// phi and psi share one dtype (the host casts mixed inputs to float32)
EDGEFT_KERNEL(aft_forward_f32, AftParams) { aft_forward<float, float>(p); }
EDGEFT_KERNEL(aft_forward_bf16, AftParams) { aft_forward<bf16_t, bf16_t>(p); }
EDGEFT_KERNEL(aft_backward_f32, AftParams) { aft_backward<float, float>(p); }
EDGEFT_KERNEL(aft_backward_bf16, AftParams) { aft_backward<bf16_t, bf16_t>(p); }
