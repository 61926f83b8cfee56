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
//   p1 = sigmoid(<Q_m, D_m>) per head m,  O = V2 + p1 (V1 - V2),  V1 = Wv x + bv,  V2 = Wv o + bv
//   x' = x + Wo O + bo
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

template <typename acc_t>
TITA_HD acc_t erf_(acc_t v) { return erf(v); }
template <typename acc_t>
TITA_HD acc_t exp_(acc_t v) { return exp(v); }

// Exact (erf) GELU and its derivative, as torch's default GELU.
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

// Parameters in the accumulation type. `in_a`/`in_b` stack the weights applied to a (resp. b) in one product:
// rows [fc1 first half; fc1 second half; Wq of the direction a (b) is the query of; Wv_ab; Wv_ba] (5C x C),
// so in_a gives W1a a, W1b a, Wq_ab a, V1 of direction ab, V2 of direction ba, and in_b the mirror.
template <typename acc_t>
struct Weights {
  const acc_t* in_a;
  const acc_t* in_b;
  const acc_t* fc1_w;  // (C, 2C)
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

// Gradients of the parameters, same layouts as the parameters; k_noise and v_noise are (2, C).
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

// Per-tile arrays, row-major with `rows` rows. Width C unless noted; [2] = one per direction (0: a queries b,
// 1: b queries a). The backward-only arrays are left null in the forward.
template <typename acc_t>
struct Tile {
  acc_t* x[2];   // inputs a, b
  acc_t* A;      // (rows, 5C) = a in_a^T
  acc_t* B;      // (rows, 5C) = b in_b^T
  acc_t* z1[2];  // relation MLP pre-activation
  acc_t* h[2];   // GELU(z1)
  acc_t* r[2];   // relation softmax
  acc_t* kk[2];
  acc_t* D[2];
  acc_t* p1[2];  // (rows, heads)
  acc_t* O[2];
  acc_t* out[2];
  // backward
  acc_t* g[2];  // incoming gradient of x'
  acc_t* dO[2];
  acc_t* dQ[2];  // gradient of the unscaled query projection
  acc_t* dD[2];
  acc_t* dV1[2];
  acc_t* dV2[2];
  acc_t* dx[2];   // gradient of x through the query and V1 projections
  acc_t* e[2];    // Wk^T dD: gradient of kk
  acc_t* dvo[2];  // gradient of o through the V2 projection
  acc_t* dz2[2];
  acc_t* dh[2];
  acc_t* dz1[2];
  acc_t* du[2];  // (rows, 2C): gradient of the relation MLP input [x; o]
};

// Columns of the stacked products for direction `dir`: query projection, V1 (own source) and V2 (other).
template <typename acc_t>
TITA_HD const acc_t* query_cols(const Tile<acc_t>& t, int dir, int64_t C) { return (dir == 0 ? t.A : t.B) + 2 * C; }
template <typename acc_t>
TITA_HD const acc_t* v1_cols(const Tile<acc_t>& t, int dir, int64_t C) { return (dir == 0 ? t.A : t.B) + 3 * C; }
template <typename acc_t>
TITA_HD const acc_t* v2_cols(const Tile<acc_t>& t, int dir, int64_t C) { return (dir == 0 ? t.B : t.A) + 4 * C; }

// Everything up to the attention output O (and the attention probabilities p1).
template <typename Policy, typename acc_t>
TITA_HD void forward_to_attention(Policy& pol, const Weights<acc_t>& w, const Tile<acc_t>& t, int64_t rows) {
  const int64_t C = w.C, C5 = 5 * C;
  pol.linear(t.A, C5, t.x[0], C, w.in_a, C, rows, C5, C, false);
  pol.linear(t.B, C5, t.x[1], C, w.in_b, C, rows, C5, C, false);
  pol.sync();
  // relation MLP hidden layer: fc1([x; o]) = W1a x + W1b o + b1
  for (int64_t i = pol.tid; i < 2 * rows * C; i += pol.nthreads) {
    const int dir = i / (rows * C);
    const int64_t p = (i / C) % rows, c = i % C;
    const acc_t* own = dir == 0 ? t.A : t.B;
    const acc_t* other = dir == 0 ? t.B : t.A;
    const acc_t z = own[p * C5 + c] + other[p * C5 + C + c] + w.fc1_b[c];
    t.z1[dir][p * C + c] = z;
    t.h[dir][p * C + c] = gelu(z);
  }
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.linear(t.r[dir], C, t.h[dir], C, w.fc2_w, C, rows, C, C, false);
  pol.sync();
  // channel softmax of fc2 output, then the key difference kk
  for (int64_t i = pol.tid; i < 2 * rows; i += pol.nthreads) {
    const int dir = i / rows;
    const int64_t p = i % rows;
    acc_t* r = t.r[dir] + p * C;
    const acc_t* x = t.x[dir] + p * C;
    acc_t* kk = t.kk[dir] + p * C;
    acc_t m = r[0] + w.fc2_b[0];
    for (int64_t c = 0; c < C; ++c) {
      r[c] += w.fc2_b[c];
      m = r[c] > m ? r[c] : m;
    }
    acc_t sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      r[c] = exp_(r[c] - m);
      sum += r[c];
    }
    for (int64_t c = 0; c < C; ++c) {
      r[c] /= sum;
      kk[c] = w.noise_diff[dir][c] - acc_t(2) * x[c] * r[c];
    }
  }
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.linear(t.D[dir], C, t.kk[dir], C, w.in_proj_w[dir] + C * C, C, rows, C, C, false);
  pol.sync();
  // per (direction, pixel, head): p1 = sigmoid(<Q, D>), O = V2 + p1 (V1 - V2)
  const int64_t hd = C / w.heads, C5r = C5;
  for (int64_t i = pol.tid; i < 2 * rows * w.heads; i += pol.nthreads) {
    const int dir = i / (rows * w.heads);
    const int64_t p = (i / w.heads) % rows, m = i % w.heads;
    const acc_t* qp = query_cols(t, dir, C) + p * C5r;
    const acc_t* v1 = v1_cols(t, dir, C) + p * C5r;
    const acc_t* v2 = v2_cols(t, dir, C) + p * C5r;
    const acc_t* bq = w.in_proj_b[dir];
    const acc_t* bv = w.in_proj_b[dir] + 2 * C;
    const acc_t* D = t.D[dir] + p * C;
    acc_t s = 0;
    for (int64_t c = m * hd; c < (m + 1) * hd; ++c) s += (qp[c] + bq[c]) * w.scale * D[c];
    const acc_t p1 = acc_t(1) / (acc_t(1) + exp_(-s));
    t.p1[dir][p * w.heads + m] = p1;
    for (int64_t c = m * hd; c < (m + 1) * hd; ++c) {
      const acc_t V2 = v2[c] + bv[c];
      t.O[dir][p * C + c] = V2 + p1 * (v1[c] + bv[c] - V2);
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
  for (int64_t i = pol.tid; i < 2 * rows * C; i += pol.nthreads) {
    const int dir = i / (rows * C);
    const int64_t j = i % (rows * C);
    t.out[dir][j] += t.x[dir][j] + w.out_b[dir][j % C];
  }
  pol.sync();
}

// Backward from t.g: recomputes the forward, then fills t.dx[0] = grad a and t.dx[1] = grad b and every
// per-pixel factor that accumulate_weight_grads needs.
template <typename Policy, typename acc_t>
TITA_HD void backward_tile(Policy& pol, const Weights<acc_t>& w, const Tile<acc_t>& t, int64_t rows) {
  const int64_t C = w.C, C5 = 5 * C, hd = C / w.heads;
  forward_to_attention(pol, w, t, rows);
  for (int dir = 0; dir < 2; ++dir) pol.linear_t(t.dO[dir], C, t.g[dir], C, w.out_w[dir], C, rows, C, C, false);
  pol.sync();
  // attention backward per (direction, pixel, head); softmax over two keys: d s = p1 p2 d p1
  for (int64_t i = pol.tid; i < 2 * rows * w.heads; i += pol.nthreads) {
    const int dir = i / (rows * w.heads);
    const int64_t p = (i / w.heads) % rows, m = i % w.heads;
    const acc_t* qp = query_cols(t, dir, C) + p * C5;
    const acc_t* v1 = v1_cols(t, dir, C) + p * C5;
    const acc_t* v2 = v2_cols(t, dir, C) + p * C5;
    const acc_t* bq = w.in_proj_b[dir];
    const acc_t* D = t.D[dir] + p * C;
    const acc_t* dO = t.dO[dir] + p * C;
    const acc_t p1 = t.p1[dir][p * w.heads + m], p2 = acc_t(1) - p1;
    acc_t dp1 = 0;
    for (int64_t c = m * hd; c < (m + 1) * hd; ++c) dp1 += dO[c] * (v1[c] - v2[c]);  // biases cancel
    const acc_t ds = p1 * p2 * dp1;
    for (int64_t c = m * hd; c < (m + 1) * hd; ++c) {
      const int64_t k = p * C + c;
      t.dQ[dir][k] = ds * D[c] * w.scale;
      t.dD[dir][k] = ds * (qp[c] + bq[c]) * w.scale;
      t.dV1[dir][k] = p1 * dO[c];
      t.dV2[dir][k] = p2 * dO[c];
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
    const int64_t p = i % rows;
    const acc_t* x = t.x[dir] + p * C;
    const acc_t* r = t.r[dir] + p * C;
    const acc_t* e = t.e[dir] + p * C;
    acc_t* dz2 = t.dz2[dir] + p * C;
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
  for (int64_t i = pol.tid; i < 2 * rows * C; i += pol.nthreads) {
    const int dir = i / (rows * C);
    const int64_t j = i % (rows * C);
    t.dz1[dir][j] = t.dh[dir][j] * gelu_grad(t.z1[dir][j]);
  }
  pol.sync();
  for (int dir = 0; dir < 2; ++dir) pol.linear_t(t.du[dir], 2 * C, t.dz1[dir], C, w.fc1_w, 2 * C, rows, 2 * C, C, false);
  pol.sync();
  // Collect: each source is the query of one direction, the other source of the other direction, and the
  // first (own relation) and second (other relation) half of the relation MLP inputs.
  for (int64_t i = pol.tid; i < rows * C; i += pol.nthreads) {
    const int64_t p = i / C, c = i % C;
    acc_t grad[2];
    for (int dir = 0; dir < 2; ++dir) {
      const int other = 1 - dir;
      grad[dir] = t.g[dir][i] + t.dx[dir][i] - acc_t(2) * t.e[dir][i] * t.r[dir][i] + t.dvo[other][i] +
                  t.du[dir][p * 2 * C + c] + t.du[other][p * 2 * C + C + c];
    }
    t.dx[0][i] = grad[0];
    t.dx[1][i] = grad[1];
  }
  pol.sync();
}

// Parameter gradients from the per-pixel factors of backward_tile: sums of outer products over the rows
// (pol.outer: dW += G^T X) and column sums (pol.colsum: db += alpha * sum of rows of G). Accumulates.
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
    pol.colsum(gr.in_proj_b[dir] + 2 * C, t.dV1[dir], C, rows, C, 1);
    pol.colsum(gr.in_proj_b[dir] + 2 * C, t.dV2[dir], C, rows, C, 1);
    pol.colsum(gr.k_noise + dir * C, t.e[dir], C, rows, C, 1);
    pol.colsum(gr.v_noise + dir * C, t.e[dir], C, rows, C, -1);
    pol.outer(gr.fc2_w, C, t.dz2[dir], C, t.h[dir], C, rows, C, C);
    pol.colsum(gr.fc2_b, t.dz2[dir], C, rows, C, 1);
    pol.outer(gr.fc1_w, 2 * C, t.dz1[dir], C, x, C, rows, C, C);
    pol.outer(gr.fc1_w + C, 2 * C, t.dz1[dir], C, o, C, rows, C, C);
    pol.colsum(gr.fc1_b, t.dz1[dir], C, rows, C, 1);
  }
}

}  // namespace ipa
}  // namespace tita_fast
