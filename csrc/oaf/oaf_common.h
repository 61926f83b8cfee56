// OAF mixing, shared by the CPU and CUDA kernels: argument checks (host) and the per-pixel math (host and device).
//
// Forward, per image n, channel c, pixel p = (i, j), for each source s in {x, y} with weights (hp, add, mul)
// = (w0, w1, w2) for x and (w3, w4, w5) for y:
//   m_k(p)  = exp(l_k) ham_k / sum_k' exp(l_k') ham_k'             (softmax, hamming, renormalise: one step)
//   out    += w_hp (s - sum_k m_k(p) s(c, R(p + o_k))) + w_add (s + residual) + w_mul s multiplier
// with tap k = 3 ky + kx, offset o_k = (ky - 1, kx - 1), R the reflect padding of each axis (-1 -> 1, n -> n - 2).
//
// Backward, from g = dL/dout:
//   d residual = w_add g,  d multiplier = w_mul g s,  d w = sum over c, p of g * feature,
//   dm_k(p)    = -w_hp sum_c g(c, p) s(c, R(p + o_k)),  d l_k = m_k (dm_k - sum_k' m_k' dm_k'),
//   d s(c, p)  = (w_hp + w_add + w_mul multiplier) g(c, p) - w_hp sum_{q in 3x3(p)} A(q -> p) g(c, q),
// a gather with no atomics: A(q -> p) sums m_k(q) over the taps k that reflect from q onto p. For q = p + (a, b)
// these are row taps {-a} plus {a} where the reflection folds back (a = -1 at row 1, a = +1 at row H - 2), times
// the same for columns (see tap_coefficient).
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#ifndef TITA_HD
#ifdef __CUDACC__
#define TITA_HD __host__ __device__ __forceinline__
#else
#define TITA_HD inline
#endif
#endif

namespace tita_fast {
namespace oaf {

constexpr int kTaps = 9;
constexpr int kMixWeights = 6;

TITA_HD int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); }

TITA_HD float exp_(float v) { return expf(v); }
TITA_HD double exp_(double v) { return exp(v); }

// The normalised filter m (9 taps) of one pixel from its logits.
template <typename acc_t>
TITA_HD void normalised_filter(const acc_t (&logits)[kTaps], const acc_t (&hamming)[kTaps], acc_t (&m)[kTaps]) {
  acc_t top = logits[0];
  for (int k = 1; k < kTaps; ++k) top = logits[k] > top ? logits[k] : top;
  acc_t total = 0;
  for (int k = 0; k < kTaps; ++k) {
    m[k] = exp_(logits[k] - top) * hamming[k];
    total += m[k];
  }
  const acc_t inv = acc_t(1) / total;
  for (int k = 0; k < kTaps; ++k) m[k] *= inv;
}

// d logits from d m through the normalisation (m is softmax(logits + log hamming)).
template <typename acc_t>
TITA_HD void filter_logit_grads(const acc_t (&m)[kTaps], const acc_t (&dm)[kTaps], acc_t (&dlogits)[kTaps]) {
  acc_t dot = 0;
  for (int k = 0; k < kTaps; ++k) dot += m[k] * dm[k];
  for (int k = 0; k < kTaps; ++k) dlogits[k] = m[k] * (dm[k] - dot);
}

// Whether a neighbour at offset a (-1, 0, +1) along an axis of length n, seen from index i, also reaches i through
// the reflection (tap +a as well as the direct tap -a).
TITA_HD bool folds_back(int a, int i, int n) { return (a == -1 && i == 1) || (a == 1 && i == n - 2); }

// A(q -> p) for the neighbour q = p + (a, b) of p = (i, j), given m at q: the sum of m_k(q) over the taps that
// reflect from q onto p.
template <typename acc_t>
TITA_HD acc_t tap_coefficient(const acc_t (&m_q)[kTaps], int a, int b, int i, int j, int H, int W) {
  auto tap = [&](int dy, int dx) { return m_q[3 * (dy + 1) + (dx + 1)]; };
  const bool row_fold = folds_back(a, i, H), col_fold = folds_back(b, j, W);
  acc_t sum = tap(-a, -b);
  if (row_fold) sum += tap(a, -b);
  if (col_fold) sum += tap(-a, b);
  if (row_fold && col_fold) sum += tap(a, b);
  return sum;
}

// The op's tensors, in argument order after grad: x, y, logits_x, logits_y, residual_x, residual_y,
// multiplier_x, multiplier_y, hamming_x, hamming_y, mix_weights.
struct Inputs {
  at::Tensor source[2], logits[2], residual[2], multiplier[2], hamming[2], mix_weights;
};

// Checks shapes, dtypes and devices; returns the maps contiguous in `layout` (the kernel's), hamming and
// mix_weights contiguous in x's dtype.
inline Inputs check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& logits_x,
                           const at::Tensor& logits_y, const at::Tensor& residual_x, const at::Tensor& residual_y,
                           const at::Tensor& multiplier_x, const at::Tensor& multiplier_y,
                           const at::Tensor& hamming_x, const at::Tensor& hamming_y, const at::Tensor& mix_weights,
                           at::MemoryFormat layout = at::MemoryFormat::Contiguous) {
  TORCH_CHECK(x.dim() == 4 && x.sizes() == y.sizes(), "oaf_mix: expected x and y of one shape (N, C, H, W), got ",
              x.sizes(), " and ", y.sizes());
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, "oaf_mix: reflect padding needs H >= 2 and W >= 2, got ", H, "x", W);
  const at::Tensor maps[] = {y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y};
  const char* names[] = {"y", "logits_x", "logits_y", "residual_x", "residual_y", "multiplier_x", "multiplier_y"};
  for (int t = 0; t < 7; ++t) {
    const bool is_logits = t == 1 || t == 2;
    TORCH_CHECK(is_logits ? maps[t].sizes() == at::IntArrayRef({N, kTaps, H, W}) : maps[t].sizes() == x.sizes(),
                "oaf_mix: ", names[t], " has shape ", maps[t].sizes());
    TORCH_CHECK(maps[t].scalar_type() == x.scalar_type() && maps[t].device() == x.device(), "oaf_mix: ", names[t],
                " is ", maps[t].scalar_type(), " on ", maps[t].device(), ", x is ", x.scalar_type(), " on ",
                x.device());
  }
  TORCH_CHECK(hamming_x.numel() == kTaps && hamming_y.numel() == kTaps, "oaf_mix: hamming windows need 9 values");
  TORCH_CHECK(mix_weights.sizes() == at::IntArrayRef({N, kMixWeights}), "oaf_mix: mix_weights has shape ",
              mix_weights.sizes(), ", expected (", N, ", 6)");
  for (const auto* t : {&hamming_x, &hamming_y, &mix_weights})
    TORCH_CHECK(t->device() == x.device(), "oaf_mix: hamming and mix_weights must be on ", x.device());
  Inputs in;
  in.source[0] = x.contiguous(layout), in.source[1] = y.contiguous(layout);
  in.logits[0] = logits_x.contiguous(layout), in.logits[1] = logits_y.contiguous(layout);
  in.residual[0] = residual_x.contiguous(layout), in.residual[1] = residual_y.contiguous(layout);
  in.multiplier[0] = multiplier_x.contiguous(layout), in.multiplier[1] = multiplier_y.contiguous(layout);
  in.hamming[0] = hamming_x.reshape({kTaps}).to(x.scalar_type()).contiguous();
  in.hamming[1] = hamming_y.reshape({kTaps}).to(x.scalar_type()).contiguous();
  in.mix_weights = mix_weights.to(x.scalar_type()).contiguous();
  return in;
}

}  // namespace oaf
}  // namespace tita_fast
