// Host-side helpers shared by the CPU and CUDA IPA implementations: argument checks and parameter packing.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "ipa_tile.h"

namespace tita_fast {
namespace ipa {

// The 14 parameter tensors, in the op's argument order.
struct Params {
  at::Tensor fc1_w, fc1_b, fc2_w, fc2_b;
  at::Tensor in_w[2], in_b[2], out_w[2], out_b[2];
  at::Tensor k_noise, v_noise;

  std::vector<at::Tensor> list() const {
    return {fc1_w, fc1_b, fc2_w, fc2_b, in_w[0], in_b[0], out_w[0], out_b[0],
            in_w[1], in_b[1], out_w[1], out_b[1], k_noise, v_noise};
  }
};

inline void check_inputs(const at::Tensor& a, const at::Tensor& b, const Params& p, int64_t heads) {
  TORCH_CHECK(a.dim() == 2 && a.sizes() == b.sizes(), "ipa: expected a and b of one shape (M, C), got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.device() == b.device(), "ipa: a is ", a.scalar_type(), " on ",
              a.device(), ", b is ", b.scalar_type(), " on ", b.device());
  const int64_t C = a.size(1);
  TORCH_CHECK(heads > 0 && C % heads == 0, "ipa: C = ", C, " is not divisible by num_heads = ", heads);
  const std::vector<std::vector<int64_t>> shapes = {
      {C, 2 * C}, {C}, {C, C}, {C}, {3 * C, C}, {3 * C}, {C, C}, {C}, {3 * C, C}, {3 * C}, {C, C}, {C}, {2, C}, {2, C}};
  const auto params = p.list();
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].sizes() == at::IntArrayRef(shapes[i]), "ipa: parameter ", i, " has shape ",
                params[i].sizes(), ", expected ", at::IntArrayRef(shapes[i]), " for C = ", C);
    TORCH_CHECK(params[i].device() == a.device(), "ipa: parameter ", i, " is on ", params[i].device(),
                ", inputs on ", a.device());
  }
}

// Parameters converted to the accumulation dtype, plus the stacked matrices of ipa_tile.h's Weights.
// Holds the tensors that Weights points into.
struct PackedWeights {
  Params p;
  at::Tensor dif_w, sum_w, own_w[2], noise_diff;

  PackedWeights(const Params& src, at::ScalarType acc) {
    auto cvt = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
    p.fc1_w = cvt(src.fc1_w), p.fc1_b = cvt(src.fc1_b), p.fc2_w = cvt(src.fc2_w), p.fc2_b = cvt(src.fc2_b);
    for (int d = 0; d < 2; ++d) {
      p.in_w[d] = cvt(src.in_w[d]), p.in_b[d] = cvt(src.in_b[d]);
      p.out_w[d] = cvt(src.out_w[d]), p.out_b[d] = cvt(src.out_b[d]);
    }
    const int64_t C = p.fc2_w.size(0);
    const auto W1 = p.fc1_w.split(C, 1);
    auto Wq = [&](int d) { return p.in_w[d].narrow(0, 0, C); };
    auto Wv = [&](int d) { return p.in_w[d].narrow(0, 2 * C, C); };
    sum_w = ((W1[0] + W1[1]) * 0.5).contiguous();
    dif_w = at::cat({(W1[0] - W1[1]) * 0.5, Wv(0), Wv(1)}).contiguous();
    own_w[0] = at::cat({Wq(0), Wv(1)}).contiguous();
    own_w[1] = at::cat({Wq(1), Wv(0)}).contiguous();
    noise_diff = (cvt(src.k_noise) - cvt(src.v_noise)).contiguous();
  }

  template <typename acc_t>
  Weights<acc_t> view(int64_t heads) const {
    Weights<acc_t> w;
    const int64_t C = p.fc2_w.size(0);
    w.dif_w = dif_w.data_ptr<acc_t>();
    w.sum_w = sum_w.data_ptr<acc_t>();
    w.fc1_b = p.fc1_b.data_ptr<acc_t>();
    w.fc2_w = p.fc2_w.data_ptr<acc_t>();
    w.fc2_b = p.fc2_b.data_ptr<acc_t>();
    for (int d = 0; d < 2; ++d) {
      w.own_w[d] = own_w[d].data_ptr<acc_t>();
      w.in_proj_w[d] = p.in_w[d].data_ptr<acc_t>();
      w.in_proj_b[d] = p.in_b[d].data_ptr<acc_t>();
      w.out_w[d] = p.out_w[d].data_ptr<acc_t>();
      w.out_b[d] = p.out_b[d].data_ptr<acc_t>();
      w.noise_diff[d] = noise_diff.data_ptr<acc_t>() + d * C;
    }
    w.C = C;
    w.heads = heads;
    w.scale = acc_t(1) / std::sqrt(acc_t(C / heads));
    return w;
  }
};

// One flat accumulation buffer for all parameter gradients, in Params order.
struct GradBuffer {
  at::Tensor flat;
  std::vector<int64_t> offsets, numels;
  std::vector<std::vector<int64_t>> shapes;

  GradBuffer(const Params& p, at::TensorOptions opts) {
    int64_t total = 0;
    for (const auto& t : p.list()) {
      offsets.push_back(total);
      numels.push_back(t.numel());
      shapes.push_back(t.sizes().vec());
      total += t.numel();
    }
    flat = at::zeros({total}, opts);
  }

  int64_t size() const { return flat.numel(); }

  // Grads struct over `base` (a buffer laid out like `flat`).
  template <typename acc_t>
  Grads<acc_t> view(acc_t* base) const {
    auto at_ = [&](int i) { return base + offsets[i]; };
    Grads<acc_t> g;
    g.fc1_w = at_(0), g.fc1_b = at_(1), g.fc2_w = at_(2), g.fc2_b = at_(3);
    for (int d = 0; d < 2; ++d) {
      g.in_proj_w[d] = at_(4 + 4 * d), g.in_proj_b[d] = at_(5 + 4 * d);
      g.out_w[d] = at_(6 + 4 * d), g.out_b[d] = at_(7 + 4 * d);
    }
    g.k_noise = at_(12), g.v_noise = at_(13);
    return g;
  }

  // The gradients as tensors of the parameters' shapes and dtypes, from the summed accumulators. fc1_w holds
  // [Gs, Gt] (see Grads): W1a = (Gs + Gt) / 2, W1b = (Gs - Gt) / 2.
  std::vector<at::Tensor> unpack(const at::Tensor& summed, const Params& p) const {
    std::vector<at::Tensor> out;
    const auto params = p.list();
    for (size_t i = 0; i < params.size(); ++i)
      out.push_back(summed.narrow(0, offsets[i], numels[i]).view(shapes[i]));
    const auto G = out[0].split(out[0].size(0), 1);
    out[0] = at::cat({G[0] + G[1], G[0] - G[1]}, 1) * 0.5;
    for (size_t i = 0; i < params.size(); ++i) out[i] = out[i].to(params[i].scalar_type());
    return out;
  }
};

inline Params params_from(at::Tensor fc1_w, at::Tensor fc1_b, at::Tensor fc2_w, at::Tensor fc2_b, at::Tensor in_w_ab,
                          at::Tensor in_b_ab, at::Tensor out_w_ab, at::Tensor out_b_ab, at::Tensor in_w_ba,
                          at::Tensor in_b_ba, at::Tensor out_w_ba, at::Tensor out_b_ba, at::Tensor k_noise,
                          at::Tensor v_noise) {
  Params p;
  p.fc1_w = fc1_w, p.fc1_b = fc1_b, p.fc2_w = fc2_w, p.fc2_b = fc2_b;
  p.in_w[0] = in_w_ab, p.in_b[0] = in_b_ab, p.out_w[0] = out_w_ab, p.out_b[0] = out_b_ab;
  p.in_w[1] = in_w_ba, p.in_b[1] = in_b_ba, p.out_w[1] = out_w_ba, p.out_b[1] = out_b_ba;
  p.k_noise = k_noise, p.v_noise = v_noise;
  return p;
}

}  // namespace ipa
}  // namespace tita_fast

// The op's parameter arguments, in schema order (see csrc/ops.cpp).
#define TITA_IPA_PARAM_ARGS                                                                                      \
  const at::Tensor &fc1_w, const at::Tensor &fc1_b, const at::Tensor &fc2_w, const at::Tensor &fc2_b,            \
      const at::Tensor &in_w_ab, const at::Tensor &in_b_ab, const at::Tensor &out_w_ab, const at::Tensor &out_b_ab, \
      const at::Tensor &in_w_ba, const at::Tensor &in_b_ba, const at::Tensor &out_w_ba, const at::Tensor &out_b_ba, \
      const at::Tensor &k_noise, const at::Tensor &v_noise
#define TITA_IPA_PARAM_NAMES                                                                                  \
  fc1_w, fc1_b, fc2_w, fc2_b, in_w_ab, in_b_ab, out_w_ab, out_b_ab, in_w_ba, in_b_ba, out_w_ba, out_b_ba, \
      k_noise, v_noise
