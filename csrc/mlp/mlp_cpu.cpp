// The MLP half of a Swin block without autograd on CPU (float32, float64):
//   out = x + scale[image] * fc2(GELU(fc1(LayerNorm(x)))).
// As separate torch ops the (tokens, C) and (tokens, hidden) intermediates go through memory once per step
// (LayerNorm, fc1 with its bias copied in first, GELU, fc2, residual add). Here a tile of tokens goes through all
// of them in one thread's buffers (~250 KB at C = 60), so only x and out cross the cache.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>

namespace tita_fast {
namespace mlp {
namespace {

// Tokens per tile. One thread, 16384 tokens of C = 60 (hidden 120): 32 rows 11.7 ms, 64 10.0, 128 9.1, 256 8.8,
// 512 8.6; 256 keeps a thread's buffers (~250 KB) well inside L2.
constexpr int64_t kTileRows = 256;

// C (rows, n) += A (rows, k) B, all row-major and dense. float32 through torch's batch-reduce GEMM (oneDNN's JIT
// micro-kernels where the CPU has them, as in csrc/ipa/ipa_cpu.cpp), float64 through at::addmm_.
template <typename T>
void gemm_accumulate(int64_t rows, int64_t n, int64_t k, const T* A, const T* B, T* C) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  if constexpr (std::is_same<T, float>::value) {
    at::native::cpublas::brgemm(rows, n, k, k, n, n, true, A, B, C);
    return;
  }
#endif
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::from_blob(C, {rows, n}, opts)
      .addmm_(at::from_blob(const_cast<T*>(A), {rows, k}, opts), at::from_blob(const_cast<T*>(B), {k, n}, opts));
}

template <typename T>
void fill_rows(T* dst, const T* row, int64_t rows, int64_t n) {
  for (int64_t i = 0; i < rows; ++i) std::copy_n(row, n, dst + i * n);
}

// LayerNorm of `rows` rows of x (row stride ld) into dst (rows, C): two passes, mean then centred variance
// (biased, as torch's), accumulated in the input's type.
template <typename T>
void layer_norm_rows(T* dst, const T* x, int64_t ld, int64_t rows, int64_t C, const T* w, const T* b, T eps) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* xi = x + i * ld;
    T* di = dst + i * C;
    T mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += xi[c];
    mean /= C;
    for (int64_t c = 0; c < C; ++c) var += (xi[c] - mean) * (xi[c] - mean);
    const T inv = T(1) / std::sqrt(var / C + eps);
    for (int64_t c = 0; c < C; ++c) di[c] = (xi[c] - mean) * inv * w[c] + b[c];
  }
}

void check(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
           const at::Tensor& fc1_weight, const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
           const at::Tensor& fc2_bias, const std::optional<at::Tensor>& scale, const at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "residual_mlp (cpu backend): supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "residual_mlp: x must be (N, L, C) with contiguous channels, got ",
              x.sizes(), " strides ", x.strides());
  TORCH_CHECK(out.sizes() == x.sizes() && out.stride(2) == 1 && out.scalar_type() == x.scalar_type(),
              "residual_mlp: out must be like x ", x.sizes(), " with contiguous channels, got ", out.sizes(), " ",
              out.scalar_type());
  const int64_t C = x.size(2), hidden = fc1_weight.size(0);
  TORCH_CHECK(norm_weight.sizes() == at::IntArrayRef{C} && norm_bias.sizes() == at::IntArrayRef{C} &&
                  fc1_weight.sizes() == at::IntArrayRef({hidden, C}) && fc1_bias.sizes() == at::IntArrayRef{hidden} &&
                  fc2_weight.sizes() == at::IntArrayRef({C, hidden}) && fc2_bias.sizes() == at::IntArrayRef{C},
              "residual_mlp: parameters must be LayerNorm (C), fc1 (hidden, C) + (hidden), fc2 (C, hidden) + (C) for C = ",
              C, "; got ", norm_weight.sizes(), ", ", fc1_weight.sizes(), ", ", fc2_weight.sizes());
  for (const at::Tensor* p : {&norm_weight, &norm_bias, &fc1_weight, &fc1_bias, &fc2_weight, &fc2_bias})
    TORCH_CHECK(p->scalar_type() == x.scalar_type() && p->device().is_cpu(),
                "residual_mlp: parameters must be CPU tensors of the input's dtype ", x.scalar_type(), ", got ",
                p->scalar_type(), " on ", p->device());
  if (scale)
    TORCH_CHECK(scale->numel() == x.size(0) && scale->scalar_type() == x.scalar_type(),
                "residual_mlp: scale must hold one ", x.scalar_type(), " factor per image (", x.size(0), "), got ",
                scale->sizes(), " ", scale->scalar_type());
}

void residual_mlp_forward_cpu(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                              double eps, const at::Tensor& fc1_weight, const at::Tensor& fc1_bias,
                              const at::Tensor& fc2_weight, const at::Tensor& fc2_bias,
                              const std::optional<at::Tensor>& scale, const at::Tensor& out) {
  check(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, scale, out);
  const int64_t N = x.size(0), L = x.size(1), C = x.size(2), hidden = fc1_weight.size(0);
  const int64_t tiles_per_image = (L + kTileRows - 1) / kTileRows;
  if (N * L == 0) return;
  // Weights as the (in, out) right-hand sides of the tile products; parameters read through contiguous copies.
  const at::Tensor w1 = fc1_weight.t().contiguous(), w2 = fc2_weight.t().contiguous();
  const at::Tensor nw = norm_weight.contiguous(), nb = norm_bias.contiguous();
  const at::Tensor b1 = fc1_bias.contiguous(), b2 = fc2_bias.contiguous();
  const std::optional<at::Tensor> s = scale ? std::optional<at::Tensor>(scale->contiguous()) : std::nullopt;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "residual_mlp_forward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, N * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
      // A thread's buffers as a tensor, so that torch's memory accounting (and the profiler) sees them.
      const at::Tensor buf = at::empty({kTileRows * (2 * C + hidden)}, x.options());
      scalar_t* normed = buf.data_ptr<scalar_t>();
      scalar_t* h = normed + kTileRows * C;
      scalar_t* y = h + kTileRows * hidden;
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t n = tile / tiles_per_image, l0 = tile % tiles_per_image * kTileRows;
        const int64_t rows = std::min(kTileRows, L - l0);
        const scalar_t* xt = xp + n * x.stride(0) + l0 * x.stride(1);
        scalar_t* ot = op + n * out.stride(0) + l0 * out.stride(1);
        layer_norm_rows(normed, xt, x.stride(1), rows, C, nw.data_ptr<scalar_t>(), nb.data_ptr<scalar_t>(),
                        static_cast<scalar_t>(eps));
        fill_rows(h, b1.data_ptr<scalar_t>(), rows, hidden);
        gemm_accumulate(rows, hidden, C, normed, w1.data_ptr<scalar_t>(), h);
        at::Tensor hv = at::from_blob(h, {rows * hidden}, x.options());
        at::gelu_out(hv, hv);  // ATen's vectorised erf GELU, as the reference's nn.GELU
        fill_rows(y, b2.data_ptr<scalar_t>(), rows, C);
        gemm_accumulate(rows, C, hidden, h, w2.data_ptr<scalar_t>(), y);
        const scalar_t factor = s ? s->data_ptr<scalar_t>()[n] : scalar_t(1);
        for (int64_t i = 0; i < rows; ++i) {
          const scalar_t* xi = xt + i * x.stride(1);
          scalar_t* oi = ot + i * out.stride(1);
          const scalar_t* yi = y + i * C;
          for (int64_t c = 0; c < C; ++c) oi[c] = xi[c] + factor * yi[c];
        }
      }
#ifdef CPUBLAS_BRGEMM_F32F32F32
      if (std::is_same<scalar_t, float>::value) at::native::cpublas::brgemm_release(false);
#endif
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CPU, m) { m.impl("residual_mlp_forward", &residual_mlp_forward_cpu); }

}  // namespace mlp
}  // namespace tita_fast
