// OAF mixing on CPU (float32, float64), forward and backward; the math is in oaf_common.h.
//
// The kernels work channels-last (N, H, W, C): a pixel's filter is computed once and applied to its C contiguous
// channels, so every inner loop is a unit-stride vector loop over channels. Inputs in another layout are copied
// to it (the TITA model's OAF inputs are channels-last views of its tokens already). Threads split the image
// rows; each row's mix-weight gradient partials go to their own slot, summed afterwards in a fixed order, so
// results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "oaf_common.h"

namespace tita_fast {
namespace oaf {
namespace {

constexpr auto kLayout = at::MemoryFormat::ChannelsLast;

at::ScalarType check_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "oaf_mix (CPU kernel): expected CPU tensors, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "oaf_mix (CPU kernel): supports float32 and float64, got ", x.scalar_type());
  return x.scalar_type();
}

// Raw pointers of one source's maps (channels-last), its hamming window and mix weights of one image.
template <typename T>
struct Source {
  const T *x, *logits, *residual, *multiplier;
  T ham[kTaps];
  T w_hp, w_add, w_mul;

  Source(const Inputs& in, int s, int64_t n, int64_t pixels, int64_t C) {
    x = in.source[s].data_ptr<T>() + n * pixels * C;
    logits = in.logits[s].data_ptr<T>() + n * pixels * kTaps;
    residual = in.residual[s].data_ptr<T>() + n * pixels * C;
    multiplier = in.multiplier[s].data_ptr<T>() + n * pixels * C;
    for (int k = 0; k < kTaps; ++k) ham[k] = in.hamming[s].data_ptr<T>()[k];
    const T* w = in.mix_weights.data_ptr<T>() + n * kMixWeights + 3 * s;
    w_hp = w[0], w_add = w[1], w_mul = w[2];
  }

  void filter(int64_t pixel, T (&m)[kTaps]) const {
    T l[kTaps];
    for (int k = 0; k < kTaps; ++k) l[k] = logits[pixel * kTaps + k];
    normalised_filter(l, ham, m);
  }
};

// Pixel indices of the 9 reflect-padded taps of (i, j).
inline void tap_pixels(int i, int j, int H, int W, int64_t (&taps)[kTaps]) {
  for (int ky = 0; ky < 3; ++ky)
    for (int kx = 0; kx < 3; ++kx) taps[3 * ky + kx] = int64_t(reflect(i + ky - 1, H)) * W + reflect(j + kx - 1, W);
}

// smooth[c] = sum_k m_k x(tap_k, c)
template <typename T>
inline void smooth_channels(const T* x, const int64_t (&taps)[kTaps], const T (&m)[kTaps], int64_t C, T* smooth) {
  for (int64_t c = 0; c < C; ++c) smooth[c] = m[0] * x[taps[0] * C + c];
  for (int k = 1; k < kTaps; ++k) {
    const T* xk = x + taps[k] * C;
    const T mk = m[k];
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) smooth[c] += mk * xk[c];
  }
}

template <typename scalar_t>
void forward_rows(const Inputs& in, const at::Tensor& out, int64_t N, int64_t C, int64_t H, int64_t W) {
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> smooth(C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H;
      const int i = row % H;
      scalar_t* out_row = out.data_ptr<scalar_t>() + row * W * C;
      for (int s = 0; s < 2; ++s) {
        const Source<scalar_t> src(in, s, n, H * W, C);
        for (int j = 0; j < W; ++j) {
          scalar_t* o = out_row + j * C;
          const int64_t p = int64_t(i) * W + j;
          scalar_t m[kTaps];
          int64_t taps[kTaps];
          src.filter(p, m);
          tap_pixels(i, j, H, W, taps);
          smooth_channels(src.x, taps, m, C, smooth.data());
          const scalar_t *xp = src.x + p * C, *rp = src.residual + p * C, *mp = src.multiplier + p * C;
          const scalar_t w_hp = src.w_hp, w_add = src.w_add, w_mul = src.w_mul;
          const scalar_t* sm = smooth.data();
          if (s == 0) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c)
              o[c] = w_hp * (xp[c] - sm[c]) + w_add * (xp[c] + rp[c]) + w_mul * xp[c] * mp[c];
          } else {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c)
              o[c] += w_hp * (xp[c] - sm[c]) + w_add * (xp[c] + rp[c]) + w_mul * xp[c] * mp[c];
          }
        }
      }
    }
  });
}

at::Tensor oaf_mix_forward_cpu(const at::Tensor& x_, const at::Tensor& y_, const at::Tensor& logits_x,
                               const at::Tensor& logits_y, const at::Tensor& residual_x, const at::Tensor& residual_y,
                               const at::Tensor& multiplier_x, const at::Tensor& multiplier_y,
                               const at::Tensor& hamming_x, const at::Tensor& hamming_y,
                               const at::Tensor& mix_weights) {
  const auto dtype = check_cpu(x_);
  const Inputs in = check_inputs(x_, y_, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
                                 hamming_x, hamming_y, mix_weights, kLayout);
  const int64_t N = x_.size(0), C = x_.size(1), H = x_.size(2), W = x_.size(3);
  at::Tensor out = at::empty_like(in.source[0], kLayout);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(dtype, "oaf_mix_forward_cpu", [&] { forward_rows<scalar_t>(in, out, N, C, H, W); });
  return out;
}

template <typename T>
void backward_rows(const Inputs& in, const at::Tensor& grad, const at::Tensor (&d_source)[2],
                   const at::Tensor (&d_logits)[2], const at::Tensor (&d_residual)[2],
                   const at::Tensor (&d_multiplier)[2], const at::Tensor& row_sums, int64_t N, int64_t C, int64_t H,
                   int64_t W) {
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> smooth(C), gathered(C);
    std::vector<T> m_rows(3 * W * kTaps);  // filters of rows i - 1, i, i + 1
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H;
      const int i = row % H;
      const T* g_img = grad.data_ptr<T>() + n * H * W * C;
      double* sums = row_sums.data_ptr<double>() + row * kMixWeights;
      for (int s = 0; s < 2; ++s) {
        const Source<T> src(in, s, n, H * W, C);
        for (int a = -1; a <= 1; ++a)
          if (i + a >= 0 && i + a < H)
            for (int j = 0; j < W; ++j)
              src.filter(int64_t(i + a) * W + j,
                         *reinterpret_cast<T(*)[kTaps]>(&m_rows[((a + 1) * W + j) * kTaps]));
        T* ds_row = d_source[s].data_ptr<T>() + (n * H + i) * W * C;
        T* dl_row = d_logits[s].data_ptr<T>() + (n * H + i) * W * kTaps;
        T* dr_row = d_residual[s].data_ptr<T>() + (n * H + i) * W * C;
        T* dmul_row = d_multiplier[s].data_ptr<T>() + (n * H + i) * W * C;
        double sum_hp = 0, sum_add = 0, sum_mul = 0;
        for (int j = 0; j < W; ++j) {
          const int64_t p = int64_t(i) * W + j;
          const T(&m)[kTaps] = *reinterpret_cast<const T(*)[kTaps]>(&m_rows[(W + j) * kTaps]);
          int64_t taps[kTaps];
          tap_pixels(i, j, H, W, taps);
          smooth_channels(src.x, taps, m, C, smooth.data());
          // gathered[c] = sum over in-range neighbours q of A(q -> p) g(q, c)
          std::fill(gathered.begin(), gathered.end(), T(0));
          for (int a = -1; a <= 1; ++a) {
            if (i + a < 0 || i + a >= H) continue;
            for (int b = -1; b <= 1; ++b) {
              if (j + b < 0 || j + b >= W) continue;
              const T(&m_q)[kTaps] = *reinterpret_cast<const T(*)[kTaps]>(&m_rows[((a + 1) * W + j + b) * kTaps]);
              const T coef = tap_coefficient(m_q, a, b, i, j, H, W);
              const T* gq = g_img + (p + int64_t(a) * W + b) * C;
              T* gat = gathered.data();
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) gat[c] += coef * gq[c];
            }
          }
          const T *gp = g_img + p * C, *xp = src.x + p * C, *rp = src.residual + p * C,
                  *mp = src.multiplier + p * C, *sm = smooth.data(), *gat = gathered.data();
          T *ds = ds_row + j * C, *dr = dr_row + j * C, *dmul = dmul_row + j * C;
          const T w_hp = src.w_hp, w_add = src.w_add, w_mul = src.w_mul;
          T f_hp = 0, f_add = 0, f_mul = 0;
#pragma omp simd reduction(+ : f_hp, f_add, f_mul)
          for (int64_t c = 0; c < C; ++c) {
            f_hp += gp[c] * (xp[c] - sm[c]);
            f_add += gp[c] * (xp[c] + rp[c]);
            f_mul += gp[c] * xp[c] * mp[c];
            ds[c] = (w_hp + w_add + w_mul * mp[c]) * gp[c] - w_hp * gat[c];
            dr[c] = w_add * gp[c];
            dmul[c] = w_mul * gp[c] * xp[c];
          }
          sum_hp += f_hp, sum_add += f_add, sum_mul += f_mul;
          T dm[kTaps];
          for (int k = 0; k < kTaps; ++k) {
            const T* xk = src.x + taps[k] * C;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < C; ++c) dot += gp[c] * xk[c];
            dm[k] = -w_hp * dot;
          }
          T(&dl)[kTaps] = *reinterpret_cast<T(*)[kTaps]>(dl_row + j * kTaps);
          filter_logit_grads(m, dm, dl);
        }
        sums[3 * s] = sum_hp, sums[3 * s + 1] = sum_add, sums[3 * s + 2] = sum_mul;
      }
    }
  });
}

std::vector<at::Tensor> oaf_mix_backward_cpu(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& y_,
                                             const at::Tensor& logits_x, const at::Tensor& logits_y,
                                             const at::Tensor& residual_x, const at::Tensor& residual_y,
                                             const at::Tensor& multiplier_x, const at::Tensor& multiplier_y,
                                             const at::Tensor& hamming_x, const at::Tensor& hamming_y,
                                             const at::Tensor& mix_weights) {
  const auto dtype = check_cpu(x_);
  const Inputs in = check_inputs(x_, y_, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
                                 hamming_x, hamming_y, mix_weights, kLayout);
  TORCH_CHECK(grad_.sizes() == x_.sizes(), "oaf_mix backward: gradient shape ", grad_.sizes(),
              " does not match the inputs ", x_.sizes());
  const at::Tensor grad = grad_.to(dtype).contiguous(kLayout);
  const int64_t N = x_.size(0), C = x_.size(1), H = x_.size(2), W = x_.size(3);
  at::Tensor d_source[2], d_logits[2], d_residual[2], d_multiplier[2];
  for (int s = 0; s < 2; ++s) {
    d_source[s] = at::empty_like(in.source[s], kLayout);
    d_logits[s] = at::empty_like(in.logits[s], kLayout);
    d_residual[s] = at::empty_like(in.residual[s], kLayout);
    d_multiplier[s] = at::empty_like(in.multiplier[s], kLayout);
  }
  // Per image row: the row's sums of g * feature for the six mix weights, accumulated in float64.
  at::Tensor row_sums = at::zeros({N, H, kMixWeights}, in.source[0].options().dtype(at::kDouble));
  if (C > 0) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "oaf_mix_backward_cpu", [&] {
      backward_rows<scalar_t>(in, grad, d_source, d_logits, d_residual, d_multiplier, row_sums, N, C, H, W);
    });
  } else {
    for (int s = 0; s < 2; ++s) d_logits[s].zero_();
  }
  const at::Tensor d_mix = row_sums.sum(1).to(dtype);
  return {d_source[0], d_source[1], d_logits[0], d_logits[1], d_residual[0],
          d_residual[1], d_multiplier[0], d_multiplier[1], d_mix};
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CPU, m) {
  m.impl("oaf_mix_forward", &oaf_mix_forward_cpu);
  m.impl("oaf_mix_backward", &oaf_mix_backward_cpu);
}

}  // namespace oaf
}  // namespace tita_fast
