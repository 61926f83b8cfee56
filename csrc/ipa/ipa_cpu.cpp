// IPA on the CPU: tiles of pixels in parallel (at::parallel_for), each thread running the pipeline of
// ipa_tile.h on its own cache-resident buffers with BLAS for the tile's matrix products. The backward
// accumulates parameter gradients per thread chunk, summed at the end (deterministic for a thread count).
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <unordered_map>

#include "ipa_common.h"

namespace tita_fast {
namespace ipa {
namespace {

// Pixels per tile: enough to amortise the per-product call overhead, few enough for the tile's arrays (~25 C
// values per pixel forward, ~50 backward) to stay near the core (1 MB of L2 here): 256 rows for C = 60, fewer for
// wide C. Measured at 256x256, C = 60 (forward / forward+backward): 128 rows 57 / 261 ms, 256 rows 54 / 226 ms,
// 512 rows 64 / 248 ms.
int64_t tile_rows(int64_t C) { return std::max<int64_t>(16, std::min<int64_t>(256, 32768 / C)); }

// float32 products of the pipeline (K = C) go through torch's batch-reduce GEMM (oneDNN's JIT micro-kernels where
// the CPU has them, BLAS otherwise): 1.1-1.5x faster than at::mm in single-thread tests here (M 64-512, N 60-180,
// K 60). The weight-gradient products (K = tile rows) stay on at::addmm_: brgemm needs G^T copied, no net gain.
#ifdef CPUBLAS_BRGEMM_F32F32F32
constexpr bool kHaveBrgemm = true;
#else
constexpr bool kHaveBrgemm = false;
#endif

template <typename acc_t>
struct CpuPolicy {
  static constexpr int64_t tid = 0, nthreads = 1;
  static constexpr bool use_brgemm = kHaveBrgemm && std::is_same<acc_t, float>::value;
  at::TensorOptions opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  std::unordered_map<const acc_t*, at::Tensor> transposed_;  // W^T of the weights `linear` has seen

  ~CpuPolicy() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
    if (use_brgemm) at::native::cpublas::brgemm_release(false);
#endif
  }

  void sync() {}
  at::Tensor mat(const acc_t* p, int64_t rows, int64_t cols, int64_t ld) const {
    return at::from_blob(const_cast<acc_t*>(p), {rows, cols}, {ld, 1}, opts);
  }
  at::Tensor vec(const acc_t* p, int64_t n) const { return at::from_blob(const_cast<acc_t*>(p), {n}, opts); }
  // Y (rows, n_out) (+)= X (rows, n_in) W^T, W (n_out, n_in)
  void linear(acc_t* Y, int64_t ldy, const acc_t* X, int64_t ldx, const acc_t* W, int64_t ldw, int64_t rows,
              int64_t n_out, int64_t n_in, bool accumulate) {
    if (use_brgemm) {
      auto it = transposed_.find(W);
      if (it == transposed_.end()) it = transposed_.emplace(W, mat(W, n_out, n_in, ldw).t().contiguous()).first;
      linear_t(Y, ldy, X, ldx, it->second.template data_ptr<acc_t>(), n_out, rows, n_out, n_in, accumulate);
    } else {
      product(mat(Y, rows, n_out, ldy), mat(X, rows, n_in, ldx), mat(W, n_out, n_in, ldw).t(), accumulate);
    }
  }
  // Y (rows, n_out) (+)= X (rows, n_in) W, W (n_in, n_out)
  void linear_t(acc_t* Y, int64_t ldy, const acc_t* X, int64_t ldx, const acc_t* W, int64_t ldw, int64_t rows,
                int64_t n_out, int64_t n_in, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
    if constexpr (use_brgemm) {
      at::native::cpublas::brgemm(rows, n_out, n_in, ldx, ldw, ldy, accumulate, X, W, Y);
      return;
    }
#endif
    product(mat(Y, rows, n_out, ldy), mat(X, rows, n_in, ldx), mat(W, n_in, n_out, ldw), accumulate);
  }
  // dW (n_out, n_in) += G^T X over the rows
  void outer(acc_t* dW, int64_t lddw, const acc_t* G, int64_t ldg, const acc_t* X, int64_t ldx, int64_t rows,
             int64_t n_out, int64_t n_in) {
    product(mat(dW, n_out, n_in, lddw), mat(G, rows, n_out, ldg).t(), mat(X, rows, n_in, ldx), true);
  }
  void colsum(acc_t* db, const acc_t* G, int64_t ldg, int64_t rows, int64_t n, acc_t alpha) {
    for (int64_t p = 0; p < rows; ++p)
      for (int64_t c = 0; c < n; ++c) db[c] += alpha * G[p * ldg + c];
  }
  // Transcendental phases through ATen's vectorised CPU kernels (the ones the reference uses too).
  void gelu(acc_t* out, const acc_t* z, int64_t n) {
    at::Tensor y = vec(out, n);
    at::gelu_out(y, vec(z, n));
  }
  void gelu_backward(acc_t* out, const acc_t* grad, const acc_t* z, int64_t n) {
    at::Tensor y = vec(out, n);
    at::gelu_backward_out(y, vec(grad, n), vec(z, n));
  }
  void softmax_rows(acc_t* out, const acc_t* z, int64_t rows, int64_t C) {
    at::Tensor y = mat(out, rows, C, C);
    at::_softmax_out(y, mat(z, rows, C, C), 1, false);
  }

 private:
  static void product(at::Tensor y, const at::Tensor& x, const at::Tensor& w, bool accumulate) {  // NOLINT
    if (accumulate)
      y.addmm_(x, w);
    else
      at::mm_out(y, x, w);
  }
};

// A thread's tile buffer: a tensor, so that torch's memory accounting (and the profiler) sees it.
template <typename acc_t>
at::Tensor tile_buffer(int64_t rows, int64_t C, int64_t heads, bool backward) {
  int64_t size = 0;
  carve_tile<acc_t>(nullptr, rows, 0, C, heads, backward, false, &size);
  return at::empty({size}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// A tile's work arrays in `buf` (inputs and outputs are pointed at the caller's tensors).
template <typename acc_t>
Tile<acc_t> tile_in(const at::Tensor& buf, int64_t rows, int64_t C, int64_t heads, bool backward) {
  int64_t size = 0;
  return carve_tile(buf.data_ptr<acc_t>(), rows, 0, C, heads, backward, false, &size);
}

at::ScalarType check_cpu(const at::Tensor& a) {
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
              "ipa (cpu backend): supports float32 and float64, got ", a.scalar_type());
  return a.scalar_type();
}

std::tuple<at::Tensor, at::Tensor> ipa_forward_cpu(const at::Tensor& a_, const at::Tensor& b_, TITA_IPA_PARAM_ARGS,
                                                   int64_t heads) {
  const Params params = params_from(TITA_IPA_PARAM_NAMES);
  check_inputs(a_, b_, params, heads);
  const auto dtype = check_cpu(a_);
  const at::Tensor a = a_.contiguous(), b = b_.contiguous();
  at::Tensor out_a = at::empty_like(a), out_b = at::empty_like(b);
  const int64_t M = a.size(0), C = a.size(1), T = tile_rows(C);
  const PackedWeights packed(params, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "ipa_forward_cpu", [&] {
    const Weights<scalar_t> w = packed.view<scalar_t>(heads);
    at::parallel_for(0, (M + T - 1) / T, 1, [&](int64_t begin, int64_t end) {
      const at::Tensor buf = tile_buffer<scalar_t>(T, C, heads, false);
      CpuPolicy<scalar_t> pol;
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t row0 = tile * T, rows = std::min(T, M - row0);
        Tile<scalar_t> t = tile_in<scalar_t>(buf, rows, C, heads, false);
        t.x[0] = a.data_ptr<scalar_t>() + row0 * C, t.x[1] = b.data_ptr<scalar_t>() + row0 * C;
        t.out[0] = out_a.data_ptr<scalar_t>() + row0 * C, t.out[1] = out_b.data_ptr<scalar_t>() + row0 * C;
        forward_tile(pol, w, t, rows);
      }
    });
  });
  return {out_a, out_b};
}

std::vector<at::Tensor> ipa_backward_cpu(const at::Tensor& grad_a_, const at::Tensor& grad_b_, const at::Tensor& a_,
                                         const at::Tensor& b_, TITA_IPA_PARAM_ARGS, int64_t heads) {
  const Params params = params_from(TITA_IPA_PARAM_NAMES);
  check_inputs(a_, b_, params, heads);
  const auto dtype = check_cpu(a_);
  TORCH_CHECK(grad_a_.sizes() == a_.sizes() && grad_b_.sizes() == b_.sizes(), "ipa backward: gradient shapes ",
              grad_a_.sizes(), " and ", grad_b_.sizes(), " do not match the inputs ", a_.sizes());
  const at::Tensor a = a_.contiguous(), b = b_.contiguous();
  const at::Tensor ga = grad_a_.to(dtype).contiguous(), gb = grad_b_.to(dtype).contiguous();
  at::Tensor grad_a = at::empty_like(a), grad_b = at::empty_like(b);
  const int64_t M = a.size(0), C = a.size(1), T = tile_rows(C);
  const int64_t tiles = (M + T - 1) / T;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
  const PackedWeights packed(params, dtype);
  const GradBuffer grads(params, a.options());
  at::Tensor partial = at::zeros({chunks, grads.size()}, a.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "ipa_backward_cpu", [&] {
    const Weights<scalar_t> w = packed.view<scalar_t>(heads);
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      const at::Tensor buf = tile_buffer<scalar_t>(T, C, heads, true);
      CpuPolicy<scalar_t> pol;
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const Grads<scalar_t> gr = grads.view(partial[chunk].data_ptr<scalar_t>());
        for (int64_t tile = chunk * tiles / chunks; tile < (chunk + 1) * tiles / chunks; ++tile) {
          const int64_t row0 = tile * T, rows = std::min(T, M - row0);
          Tile<scalar_t> t = tile_in<scalar_t>(buf, rows, C, heads, true);
          t.x[0] = a.data_ptr<scalar_t>() + row0 * C, t.x[1] = b.data_ptr<scalar_t>() + row0 * C;
          t.g[0] = ga.data_ptr<scalar_t>() + row0 * C, t.g[1] = gb.data_ptr<scalar_t>() + row0 * C;
          backward_tile(pol, w, t, rows);
          accumulate_weight_grads(pol, t, gr, rows, C);
          std::copy_n(t.dx[0], rows * C, grad_a.data_ptr<scalar_t>() + row0 * C);
          std::copy_n(t.dx[1], rows * C, grad_b.data_ptr<scalar_t>() + row0 * C);
        }
      }
    });
  });
  std::vector<at::Tensor> out = {grad_a, grad_b};
  for (auto& g : grads.unpack(partial.sum(0), params)) out.push_back(g);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CPU, m) {
  m.impl("ipa_forward", &ipa_forward_cpu);
  m.impl("ipa_backward", &ipa_backward_cpu);
}

}  // namespace ipa
}  // namespace tita_fast
