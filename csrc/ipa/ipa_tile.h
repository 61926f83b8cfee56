// IPA on a tile of pixels: the forward and the backward pipeline, shared by the CPU and CUDA backends.
//
// The pipeline is a sequence of phases over a tile of `rows` pixels. Matrix products go through a policy
// (CPU: BLAS on thread-local buffers; CUDA: the thread block on shared memory), elementwise phases are loops
// over items strided by (policy.tid, policy.nthreads), with policy.sync() between phases. On the CPU the
// policy is one thread (tid 0, stride 1, sync a no-op), so the CPU tests exercise every line the CUDA
// kernel runs except its three matrix helpers.
//
// Math (spec section IPA), per pixel and direction (x = query source, o = other source, r = relation):
//   kk = (k_noise - v_noise) - 2 x*r           # K1 - K2 before Wk: the 2-key softmax needs only s1 - s2
//   D  = Wk kk,  Q = (Wq x + bq) / sqrt(d)     # so bk cancels and K1, K2 are never formed
//   p1 = sigmoid(<Q_m, D_m>) per head m,  O = (Wv o + bv) + p1 Wv (x - o)
//   x' = x + Wo O + bo
// and the relation MLP's first layer through sum and difference (fc1 = [W1a, W1b]):
//   fc1([a; b]) = Ws (a + b) + Wd (a - b) + b1,  fc1([b; a]) = Ws (a + b) - Wd (a - b) + b1,
//   Ws = (W1a + W1b) / 2,  Wd = (W1a - W1b) / 2
// which, with Wv (a - b) shared by both directions' V1 - V2, makes 14 C^2 multiply-adds per pixel (18 C^2 as
// the published code computes it).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define TITA_HD __host__ __device__ __forceinline__
#else
#define TITA_HD inline
#endif

namespace tita_fast {
namespace ipa {

TITA_HD float erf_(float v) { return erff(v); }
TITA_HD double erf_(double v) { return erf(v); }
TITA_HD float exp_(float v) { return expf(v); }
TITA_HD double exp_(double v) { return exp(v); }

// Exact (erf) GELU and its derivative, as torch's default GELU (policies may use a vectorised equivalent).
template <typename acc_t>
TITA_HD acc_t gelu(acc_t z) {
  return acc_t(0.5) * z * (acc_t(1) + erf_(z * acc_t(0.70710678118654752440)));
}
template <typename acc_t>
TITA_HD acc_t gelu_grad(acc_t z) {
  const acc_t cdf = acc_t(0.5) * (acc_t(1) + erf_(z * acc_t(0.70710678118654752440)));
  const acc_t pdf = exp_(acc_t(-0.5) * z * z) * acc_t(0.39894228040143267794);
  return cdf + z * pdf;
}

// Parameters in the accumulation type, with the stacked matrices of the products above:
//   dif_w (3C, C) = [Wd; Wv_ab; Wv_ba]   applied to a - b
//   sum_w (C, C)  = Ws                   applied to a + b
//   own_w[0] (2C, C) = [Wq_ab; Wv_ba]    applied to a: the query of direction 0, V2 of direction 1
//   own_w[1] (2C, C) = [Wq_ba; Wv_ab]    applied to b
template <typename acc_t>
struct Weights {
  const acc_t* dif_w;
  const acc_t* sum_w;
  const acc_t* own_w[2];
  const acc_t* fc1_b;
  const acc_t* fc2_w;  // (C, C)
  const acc_t* fc2_b;
  const acc_t* in_proj_w[2];  // (3C, C) per direction: rows Wq, Wk, Wv
  const acc_t* in_proj_b[2];
  const acc_t* out_w[2];
  const acc_t* out_b[2];
  const acc_t* noise_diff[2];  // k_noise[dir] - v_noise[dir]
  int64_t C;
  int64_t heads;
  acc_t scale;  // 1 / sqrt(head_dim)
};

// Gradient accumulators, laid out as the parameters; k_noise and v_noise are (2, C). fc1_w receives
// [sum of dzs^T (a + b), sum of dzt^T (a - b)], turned into [dW1a, dW1b] by finish_fc1_grad once summed.
template <typename acc_t>
struct Grads {
  acc_t* fc1_w;
  acc_t* fc1_b;
  acc_t* fc2_w;
  acc_t* fc2_b;
  acc_t* in_proj_w[2];
  acc_t* in_proj_b[2];
  acc_t* out_w[2];
  acc_t* out_b[2];
  acc_t* k_noise;
  acc_t* v_noise;
};

// Per-tile arrays, row-major with `rows` rows; width C unless noted. [2]: one per direction (0: a queries b,
// 1: b queries a). Backward-only arrays are null in the forward.
template <typename acc_t>
struct Tile {
  const acc_t* x[2];  // inputs a, b
  acc_t* sum;         // a + b
  acc_t* dif;         // a - b
  acc_t* Sd;          // (rows, 3C) = dif dif_w^T
  acc_t* Ss;          // sum sum_w^T
  acc_t* own[2];      // (rows, 2C) = x own_w^T
  acc_t* z1[2];       // relation MLP pre-activation
  acc_t* h[2];        // GELU(z1)
  acc_t* z2[2];
  acc_t* r[2];  // relation softmax
  acc_t* kk[2];
  acc_t* D[2];
  acc_t* p1[2];  // (rows, heads)
  acc_t* O[2];
  acc_t* out[2];
  // backward
  const acc_t* g[2];  // incoming gradient of x'
  acc_t* dO[2];
  acc_t* dQ[2];  // gradient of the unscaled query projection
  acc_t* dD[2];
  acc_t* dV1[2];
  acc_t* dV2[2];
  acc_t* dx[2];   // gradient of x through Wq and V1; finally the whole gradient of a (0) and b (1)
  acc_t* e[2];    // Wk^T dD: gradient of kk
  acc_t* dvo[2];  // gradient of o through V2
  acc_t* dz2[2];
  acc_t* dh[2];
  acc_t* dz1[2];
  acc_t* dzs;  // dz1[0] + dz1[1]
  acc_t* dzt;  // dz1[0] - dz1[1]
  acc_t* dus;  // dzs Ws
  acc_t* dut;  // dzt Wd
};

// Calls f(c, i) for every element of a rows x C array (c: column, i = p * C + c), split over the policy's
// threads. A serial policy gets plain nested loops the compiler can vectorise (no division per element).
template <typename Policy, typename F>
TITA_HD void for_each_element(const Policy& pol, int64_t rows, int64_t C, F&& f) {
  if (pol.nthreads == 1) {
    for (int64_t p = 0; p < rows; ++p)
      for (int64_t c = 0; c < C; ++c) f(c, p * C + c);
  } else {
    for (int64_t i = pol.tid; i < rows * C; i += pol.nthreads) f(i % C, i);
  }
}

// Lays out a tile's arrays in `base`, array after array, each with room for `capacity` rows, and points the
// tile at rows [row0, row0 + rows) of each. `io` adds arrays for the inputs, outputs and incoming gradients
// (the CUDA kernels convert them to acc_t; the CPU points at the caller's tensors instead). Returns the tile;
// `*size` receives the number of acc_t elements the layout needs.
template <typename acc_t>
TITA_HD Tile<acc_t> carve_tile(acc_t* base, int64_t capacity, int64_t row0, int64_t C, int64_t heads, bool backward,
                               bool io, int64_t* size) {
  int64_t used = 0;
  auto take = [&](int64_t width) {
    acc_t* p = base ? base + used + row0 * width : nullptr;
    used += capacity * width;
    return p;
  };
  Tile<acc_t> t{};
  t.sum = take(C), t.dif = take(C), t.Sd = take(3 * C), t.Ss = take(C);
  for (int d = 0; d < 2; ++d) {
    if (io) t.x[d] = take(C), t.out[d] = backward ? nullptr : take(C), t.g[d] = backward ? take(C) : nullptr;
    t.own[d] = take(2 * C), t.z1[d] = take(C), t.h[d] = take(C), t.z2[d] = take(C), t.r[d] = take(C);
    t.kk[d] = take(C), t.D[d] = take(C), t.O[d] = take(C), t.p1[d] = take(heads);
    if (backward) {
      t.dO[d] = take(C), t.dQ[d] = take(C), t.dD[d] = take(C), t.dV1[d] = take(C), t.dV2[d] = take(C);
      t.dx[d] = take(C), t.e[d] = take(C), t.dvo[d] = take(C), t.dz2[d] = take(C), t.dh[d] = take(C);
      t.dz1[d] = take(C);
    }
  }
  if (backward) t.dzs = take(C), t.dzt = take(C), t.dus = take(C), t.dut = take(C);
  *size = used;
  return t;
}

// Projections of direction `dir` inside the stacked products (raw: before biases).
template <typename acc_t>
TITA_HD const acc_t* query_raw(const Tile<acc_t>& t, int dir) { return t.own[dir]; }
template <typename acc_t>
TITA_HD const acc_t* v2_raw(const Tile<acc_t>& t, int dir, int64_t C) { return t.own[1 - dir] + C; }
// Wv (x - o) of direction `dir` = +-Wv_dir (a - b); returns the column block, the sign is dir_sign(dir).
template <typename acc_t>
TITA_HD const acc_t* u_raw(const Tile<acc_t>& t, int dir, int64_t C) { return t.Sd + (1 + dir) * C; }
template <typename acc_t>
TITA_HD acc_t dir_sign(int dir) { return dir == 0 ? acc_t(1) : acc_t(-1); }

// Everything up to the attention output O (and the attention probabilities p1).
template <typename Policy, typename acc_t>
TITA_HD void forward_to_attention(Policy& pol, const Weights<acc_t>& w, const Tile<acc_t>& t, int64_t rows) {
  const int64_t C = w.C, n = rows * C;
  for_each_element(pol, rows, C, [&](int64_t, int64_t i) {
    t.sum[i] = t.x[0][i] + t.x[1][i];
    t.dif[i] = t.x[0][i] - t.x[1][i];
  });
  pol.sync();
  pol.linear(t.Sd, 3 * C, t.dif, C, w.dif_w, C, rows, 3 * C, C, false);
  pol.linear(t.Ss, C, t.sum, C, w.sum_w, C, rows, C, C, false);
  for (int dir = 0; dir < 2; ++dir) pol.linear(t.own[dir], 2 * C, t.x[dir], C, w.own_w[dir], C, rows, 2 * C, C, false);
  pol.sync();
  for_each_element(pol, rows, C, [&](int64_t c, int64_t i) {
    const acc_t common = t.Ss[i] + w.fc1_b[c], wd = t.Sd[i + (i - c) * 2];  // Sd has rows of 3C
    t.z1[0][i] = common + wd;
    t.z1[1][i] = common - wd;
  });
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.gelu(t.h[dir], t.z1[dir], n);
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.linear(t.z2[dir], C, t.h[dir], C, w.fc2_w, C, rows, C, C, false);
  pol.sync();
  for_each_element(pol, rows, C, [&](int64_t c, int64_t i) {
    t.z2[0][i] += w.fc2_b[c];
    t.z2[1][i] += w.fc2_b[c];
  });
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.softmax_rows(t.r[dir], t.z2[dir], rows, C);
  pol.sync();
  for_each_element(pol, rows, C, [&](int64_t c, int64_t i) {
    t.kk[0][i] = w.noise_diff[0][c] - acc_t(2) * t.x[0][i] * t.r[0][i];
    t.kk[1][i] = w.noise_diff[1][c] - acc_t(2) * t.x[1][i] * t.r[1][i];
  });
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.linear(t.D[dir], C, t.kk[dir], C, w.in_proj_w[dir] + C * C, C, rows, C, C, false);
  pol.sync();
  // per (direction, pixel): for each head p1 = sigmoid(<Q, D>), O = V2 + p1 U
  const int64_t hd = C / w.heads;
  for (int64_t i = pol.tid; i < 2 * rows; i += pol.nthreads) {
    const int dir = i / rows;
    const int64_t p = i - dir * rows;
    const acc_t* q = query_raw(t, dir) + p * 2 * C;
    const acc_t* v2 = v2_raw(t, dir, C) + p * 2 * C;
    const acc_t* u = u_raw(t, dir, C) + p * 3 * C;
    const acc_t* bq = w.in_proj_b[dir];
    const acc_t* bv = w.in_proj_b[dir] + 2 * C;
    const acc_t* D = t.D[dir] + p * C;
    acc_t* O = t.O[dir] + p * C;
    const acc_t sign = dir_sign<acc_t>(dir);
    for (int64_t m = 0; m < w.heads; ++m) {
      acc_t s = 0;
      for (int64_t c = m * hd; c < (m + 1) * hd; ++c) s += (q[c] + bq[c]) * w.scale * D[c];
      const acc_t p1 = acc_t(1) / (acc_t(1) + exp_(-s));
      t.p1[dir][p * w.heads + m] = p1;
      for (int64_t c = m * hd; c < (m + 1) * hd; ++c) O[c] = v2[c] + bv[c] + p1 * sign * u[c];
    }
  }
  pol.sync();
}

// Forward: fills t.out[dir] = x' (residual included).
template <typename Policy, typename acc_t>
TITA_HD void forward_tile(Policy& pol, const Weights<acc_t>& w, const Tile<acc_t>& t, int64_t rows) {
  const int64_t C = w.C;
  forward_to_attention(pol, w, t, rows);
  for (int dir = 0; dir < 2; ++dir) pol.linear(t.out[dir], C, t.O[dir], C, w.out_w[dir], C, rows, C, C, false);
  pol.sync();
  for_each_element(pol, rows, C, [&](int64_t c, int64_t i) {
    t.out[0][i] += t.x[0][i] + w.out_b[0][c];
    t.out[1][i] += t.x[1][i] + w.out_b[1][c];
  });
  pol.sync();
}

// Backward from t.g: recomputes the forward, then fills t.dx[0] = grad a, t.dx[1] = grad b and every
// per-pixel factor that accumulate_weight_grads needs.
template <typename Policy, typename acc_t>
TITA_HD void backward_tile(Policy& pol, const Weights<acc_t>& w, const Tile<acc_t>& t, int64_t rows) {
  const int64_t C = w.C, n = rows * C, hd = C / w.heads;
  forward_to_attention(pol, w, t, rows);
  for (int dir = 0; dir < 2; ++dir) pol.linear_t(t.dO[dir], C, t.g[dir], C, w.out_w[dir], C, rows, C, C, false);
  pol.sync();
  // attention, per (direction, pixel) and head; the softmax over two keys gives d s = p1 p2 d p1
  for (int64_t i = pol.tid; i < 2 * rows; i += pol.nthreads) {
    const int dir = i / rows;
    const int64_t p = i - dir * rows;
    const acc_t* q = query_raw(t, dir) + p * 2 * C;
    const acc_t* u = u_raw(t, dir, C) + p * 3 * C;
    const acc_t* bq = w.in_proj_b[dir];
    const acc_t* D = t.D[dir] + p * C;
    const acc_t* dO = t.dO[dir] + p * C;
    const acc_t sign = dir_sign<acc_t>(dir);
    for (int64_t m = 0; m < w.heads; ++m) {
      const acc_t p1 = t.p1[dir][p * w.heads + m], p2 = acc_t(1) - p1;
      acc_t dp1 = 0;
      for (int64_t c = m * hd; c < (m + 1) * hd; ++c) dp1 += dO[c] * u[c];
      const acc_t ds = p1 * p2 * sign * dp1;
      for (int64_t c = m * hd; c < (m + 1) * hd; ++c) {
        const int64_t k = p * C + c;
        t.dQ[dir][k] = ds * D[c] * w.scale;
        t.dD[dir][k] = ds * (q[c] + bq[c]) * w.scale;
        t.dV1[dir][k] = p1 * dO[c];
        t.dV2[dir][k] = p2 * dO[c];
      }
    }
  }
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) {
    const acc_t* W = w.in_proj_w[dir];
    pol.linear_t(t.dx[dir], C, t.dQ[dir], C, W, C, rows, C, C, false);
    pol.linear_t(t.dx[dir], C, t.dV1[dir], C, W + 2 * C * C, C, rows, C, C, true);
    pol.linear_t(t.e[dir], C, t.dD[dir], C, W + C * C, C, rows, C, C, false);
    pol.linear_t(t.dvo[dir], C, t.dV2[dir], C, W + 2 * C * C, C, rows, C, C, false);
  }
  pol.sync();
  // kk = noise_diff - 2 x r: gradient of r, then through the channel softmax
  for (int64_t i = pol.tid; i < 2 * rows; i += pol.nthreads) {
    const int dir = i / rows;
    const int64_t off = (i - dir * rows) * C;
    const acc_t* x = t.x[dir] + off;
    const acc_t* r = t.r[dir] + off;
    const acc_t* e = t.e[dir] + off;
    acc_t* dz2 = t.dz2[dir] + off;
    acc_t dot = 0;
    for (int64_t c = 0; c < C; ++c) {
      dz2[c] = acc_t(-2) * x[c] * e[c];
      dot += dz2[c] * r[c];
    }
    for (int64_t c = 0; c < C; ++c) dz2[c] = r[c] * (dz2[c] - dot);
  }
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.linear_t(t.dh[dir], C, t.dz2[dir], C, w.fc2_w, C, rows, C, C, false);
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.gelu_backward(t.dz1[dir], t.dh[dir], t.z1[dir], n);
  pol.sync();
  for_each_element(pol, rows, C, [&](int64_t, int64_t i) {
    t.dzs[i] = t.dz1[0][i] + t.dz1[1][i];
    t.dzt[i] = t.dz1[0][i] - t.dz1[1][i];
  });
  pol.sync();
  pol.linear_t(t.dus, C, t.dzs, C, w.sum_w, C, rows, C, C, false);
  pol.linear_t(t.dut, C, t.dzt, C, w.dif_w, C, rows, C, C, false);
  pol.sync();
  // Each source is the query of one direction, the other source of the other, and in both relation inputs.
  for_each_element(pol, rows, C, [&](int64_t, int64_t i) {
    const acc_t ga = t.g[0][i] + t.dx[0][i] - acc_t(2) * t.e[0][i] * t.r[0][i] + t.dvo[1][i] + t.dus[i] + t.dut[i];
    const acc_t gb = t.g[1][i] + t.dx[1][i] - acc_t(2) * t.e[1][i] * t.r[1][i] + t.dvo[0][i] + t.dus[i] - t.dut[i];
    t.dx[0][i] = ga;
    t.dx[1][i] = gb;
  });
  pol.sync();
}

// Parameter gradients from the per-pixel factors of backward_tile: sums of outer products over the rows
// (pol.outer: dW += G^T X) and column sums (pol.colsum: db += alpha * sum over rows of G). Accumulates.
template <typename Policy, typename acc_t>
void accumulate_weight_grads(Policy& pol, const Tile<acc_t>& t, const Grads<acc_t>& gr, int64_t rows, int64_t C) {
  const int64_t CC = C * C;
  for (int dir = 0; dir < 2; ++dir) {
    const acc_t* x = t.x[dir];
    const acc_t* o = t.x[1 - dir];
    pol.outer(gr.out_w[dir], C, t.g[dir], C, t.O[dir], C, rows, C, C);
    pol.colsum(gr.out_b[dir], t.g[dir], C, rows, C, 1);
    pol.outer(gr.in_proj_w[dir], C, t.dQ[dir], C, x, C, rows, C, C);
    pol.colsum(gr.in_proj_b[dir], t.dQ[dir], C, rows, C, 1);
    pol.outer(gr.in_proj_w[dir] + CC, C, t.dD[dir], C, t.kk[dir], C, rows, C, C);
    pol.outer(gr.in_proj_w[dir] + 2 * CC, C, t.dV1[dir], C, x, C, rows, C, C);
    pol.outer(gr.in_proj_w[dir] + 2 * CC, C, t.dV2[dir], C, o, C, rows, C, C);
    pol.colsum(gr.in_proj_b[dir] + 2 * C, t.dO[dir], C, rows, C, 1);  // dV1 + dV2
    pol.colsum(gr.k_noise + dir * C, t.e[dir], C, rows, C, 1);
    pol.colsum(gr.v_noise + dir * C, t.e[dir], C, rows, C, -1);
    pol.outer(gr.fc2_w, C, t.dz2[dir], C, t.h[dir], C, rows, C, C);
    pol.colsum(gr.fc2_b, t.dz2[dir], C, rows, C, 1);
  }
  pol.outer(gr.fc1_w, 2 * C, t.dzs, C, t.sum, C, rows, C, C);
  pol.outer(gr.fc1_w + C, 2 * C, t.dzt, C, t.dif, C, rows, C, C);
  pol.colsum(gr.fc1_b, t.dzs, C, rows, C, 1);
}

}  // namespace ipa
}  // namespace tita_fast
