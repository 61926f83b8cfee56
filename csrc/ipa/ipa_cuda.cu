// IPA on CUDA: one thread block per tile of pixels runs the pipeline of ipa_tile.h, the same code the CPU
// backend runs and its tests check, with block-parallel matrix helpers. Work arrays live in a global
// workspace (L2-resident for a chunk of pixels) laid out array by array, so that after the backward kernel
// the per-pixel factors of the parameter gradients are contiguous over the chunk and cuBLAS reduces them
// (deterministic, no atomics). Half inputs are computed in float; float64 in double.
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "ipa_common.h"

namespace tita_fast {
namespace ipa {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kTileRows = 32;
// Pixels per launch: bounds the workspace (about 60 arrays of C acc_t values per pixel in the backward).
constexpr int64_t kChunkRows = 32768;

template <typename acc_t>
struct BlockPolicy {
  int64_t tid, nthreads;

  __device__ void sync() { __syncthreads(); }
  // Y (rows, n_out) (+)= X (rows, n_in) W^T, W (n_out, n_in)
  __device__ void linear(acc_t* Y, int64_t ldy, const acc_t* X, int64_t ldx, const acc_t* W, int64_t ldw,
                         int64_t rows, int64_t n_out, int64_t n_in, bool accumulate) {
    for (int64_t i = tid; i < rows * n_out; i += nthreads) {
      const int64_t p = i / n_out, o = i - p * n_out;
      acc_t s = 0;
      for (int64_t k = 0; k < n_in; ++k) s += X[p * ldx + k] * W[o * ldw + k];
      Y[p * ldy + o] = accumulate ? Y[p * ldy + o] + s : s;
    }
  }
  // Y (rows, n_out) (+)= X (rows, n_in) W, W (n_in, n_out)
  __device__ void linear_t(acc_t* Y, int64_t ldy, const acc_t* X, int64_t ldx, const acc_t* W, int64_t ldw,
                           int64_t rows, int64_t n_out, int64_t n_in, bool accumulate) {
    for (int64_t i = tid; i < rows * n_out; i += nthreads) {
      const int64_t p = i / n_out, o = i - p * n_out;
      acc_t s = 0;
      for (int64_t k = 0; k < n_in; ++k) s += X[p * ldx + k] * W[k * ldw + o];
      Y[p * ldy + o] = accumulate ? Y[p * ldy + o] + s : s;
    }
  }
  __device__ void gelu(acc_t* out, const acc_t* z, int64_t n) {
    for (int64_t i = tid; i < n; i += nthreads) out[i] = ipa::gelu(z[i]);
  }
  __device__ void gelu_backward(acc_t* out, const acc_t* grad, const acc_t* z, int64_t n) {
    for (int64_t i = tid; i < n; i += nthreads) out[i] = grad[i] * gelu_grad(z[i]);
  }
  __device__ void softmax_rows(acc_t* out, const acc_t* z, int64_t rows, int64_t C) {
    for (int64_t p = tid; p < rows; p += nthreads) {
      const acc_t* zr = z + p * C;
      acc_t* y = out + p * C;
      acc_t m = zr[0], sum = 0;
      for (int64_t c = 1; c < C; ++c) m = zr[c] > m ? zr[c] : m;
      for (int64_t c = 0; c < C; ++c) sum += (y[c] = exp_(zr[c] - m));
      for (int64_t c = 0; c < C; ++c) y[c] /= sum;
    }
  }
};

// Parameter-gradient reductions over a chunk, on the host, with cuBLAS.
template <typename acc_t>
struct ChunkPolicy {
  at::TensorOptions opts;

  at::Tensor mat(const acc_t* p, int64_t rows, int64_t cols, int64_t ld) const {
    return at::from_blob(const_cast<acc_t*>(p), {rows, cols}, {ld, 1}, opts);
  }
  void outer(acc_t* dW, int64_t lddw, const acc_t* G, int64_t ldg, const acc_t* X, int64_t ldx, int64_t rows,
             int64_t n_out, int64_t n_in) {
    mat(dW, n_out, n_in, lddw).addmm_(mat(G, rows, n_out, ldg).t(), mat(X, rows, n_in, ldx));
  }
  void colsum(acc_t* db, const acc_t* G, int64_t ldg, int64_t rows, int64_t n, acc_t alpha) {
    at::from_blob(db, {n}, opts).add_(mat(G, rows, n, ldg).sum(0), alpha);
  }
};

template <typename scalar_t, typename acc_t>
__device__ void load(acc_t* dst, const scalar_t* src, int64_t n, const BlockPolicy<acc_t>& pol) {
  for (int64_t i = pol.tid; i < n; i += pol.nthreads) dst[i] = static_cast<acc_t>(src[i]);
}

template <typename scalar_t, typename acc_t>
__device__ void store(scalar_t* dst, const acc_t* src, int64_t n, const BlockPolicy<acc_t>& pol) {
  for (int64_t i = pol.tid; i < n; i += pol.nthreads) dst[i] = static_cast<scalar_t>(src[i]);
}

// Tile of this block within a chunk of `chunk_rows` pixels starting at pixel `chunk0`.
template <typename acc_t>
__device__ Tile<acc_t> block_tile(acc_t* workspace, int64_t chunk_rows, const Weights<acc_t>& w, bool backward,
                                  int64_t* row0, int64_t* rows) {
  *row0 = blockIdx.x * kTileRows;
  *rows = min(kTileRows, chunk_rows - *row0);
  int64_t size;
  return carve_tile(workspace, chunk_rows, *row0, w.C, w.heads, backward, true, &size);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* a, const scalar_t* b, scalar_t* out_a, scalar_t* out_b, Weights<acc_t> w,
                   acc_t* workspace, int64_t chunk_rows) {
  BlockPolicy<acc_t> pol{threadIdx.x, blockDim.x};
  int64_t row0, rows;
  const Tile<acc_t> t = block_tile(workspace, chunk_rows, w, false, &row0, &rows);
  const int64_t off = row0 * w.C, n = rows * w.C;
  load(const_cast<acc_t*>(t.x[0]), a + off, n, pol);
  load(const_cast<acc_t*>(t.x[1]), b + off, n, pol);
  pol.sync();
  forward_tile(pol, w, t, rows);
  store(out_a + off, t.out[0], n, pol);
  store(out_b + off, t.out[1], n, pol);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* grad_out_a, const scalar_t* grad_out_b, const scalar_t* a, const scalar_t* b,
                    scalar_t* grad_a, scalar_t* grad_b, Weights<acc_t> w, acc_t* workspace, int64_t chunk_rows) {
  BlockPolicy<acc_t> pol{threadIdx.x, blockDim.x};
  int64_t row0, rows;
  const Tile<acc_t> t = block_tile(workspace, chunk_rows, w, true, &row0, &rows);
  const int64_t off = row0 * w.C, n = rows * w.C;
  load(const_cast<acc_t*>(t.x[0]), a + off, n, pol);
  load(const_cast<acc_t*>(t.x[1]), b + off, n, pol);
  load(const_cast<acc_t*>(t.g[0]), grad_out_a + off, n, pol);
  load(const_cast<acc_t*>(t.g[1]), grad_out_b + off, n, pol);
  pol.sync();
  backward_tile(pol, w, t, rows);
  store(grad_a + off, t.dx[0], n, pol);
  store(grad_b + off, t.dx[1], n, pol);
}

at::ScalarType acc_type(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(const at::Tensor& a) {
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble || a.scalar_type() == at::kHalf ||
                  a.scalar_type() == at::kBFloat16,
              "ipa (cuda backend): supports float16, bfloat16, float32 and float64, got ", a.scalar_type());
}

int64_t workspace_size(int64_t rows, const at::Tensor& a, int64_t heads, bool backward) {
  int64_t size = 0;
  carve_tile<float>(nullptr, rows, 0, a.size(1), heads, backward, true, &size);
  return size;
}

std::tuple<at::Tensor, at::Tensor> ipa_forward_cuda(const at::Tensor& a_, const at::Tensor& b_, TITA_IPA_PARAM_ARGS,
                                                    int64_t heads) {
  const Params params = params_from(TITA_IPA_PARAM_NAMES);
  check_inputs(a_, b_, params, heads);
  check_cuda(a_);
  const c10::cuda::CUDAGuard guard(a_.device());
  const at::Tensor a = a_.contiguous(), b = b_.contiguous().to(a.scalar_type());
  at::Tensor out_a = at::empty_like(a), out_b = at::empty_like(a);
  const int64_t M = a.size(0);
  const auto acc = acc_type(a.scalar_type());
  const PackedWeights packed(params, acc);
  const int64_t chunk = std::min(M, kChunkRows);
  at::Tensor workspace = at::empty({workspace_size(chunk, a, heads, false)}, a.options().dtype(acc));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "ipa_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const Weights<acc_t> w = packed.view<acc_t>(heads);
    for (int64_t start = 0; start < M; start += chunk) {
      const int64_t rows = std::min(chunk, M - start), off = start * a.size(1);
      const dim3 grid((rows + kTileRows - 1) / kTileRows);
      forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          a.data_ptr<scalar_t>() + off, b.data_ptr<scalar_t>() + off, out_a.data_ptr<scalar_t>() + off,
          out_b.data_ptr<scalar_t>() + off, w, workspace.data_ptr<acc_t>(), rows);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out_a, out_b};
}

std::vector<at::Tensor> ipa_backward_cuda(const at::Tensor& grad_a_, const at::Tensor& grad_b_, const at::Tensor& a_,
                                          const at::Tensor& b_, TITA_IPA_PARAM_ARGS, int64_t heads) {
  const Params params = params_from(TITA_IPA_PARAM_NAMES);
  check_inputs(a_, b_, params, heads);
  check_cuda(a_);
  TORCH_CHECK(grad_a_.sizes() == a_.sizes() && grad_b_.sizes() == b_.sizes(), "ipa backward: gradient shapes ",
              grad_a_.sizes(), " and ", grad_b_.sizes(), " do not match the inputs ", a_.sizes());
  const c10::cuda::CUDAGuard guard(a_.device());
  const auto dtype = a_.scalar_type();
  const at::Tensor a = a_.contiguous(), b = b_.contiguous().to(dtype);
  const at::Tensor ga = grad_a_.to(dtype).contiguous(), gb = grad_b_.to(dtype).contiguous();
  at::Tensor grad_a = at::empty_like(a), grad_b = at::empty_like(a);
  const int64_t M = a.size(0), C = a.size(1);
  const auto acc = acc_type(dtype);
  const PackedWeights packed(params, acc);
  const GradBuffer grads(params, a.options().dtype(acc));
  const int64_t chunk = std::min(M, kChunkRows);
  at::Tensor workspace = at::empty({workspace_size(chunk, a, heads, true)}, a.options().dtype(acc));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ipa_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const Weights<acc_t> w = packed.view<acc_t>(heads);
    ChunkPolicy<acc_t> reduce{a.options().dtype(acc)};
    const Grads<acc_t> gr = grads.view(grads.flat.data_ptr<acc_t>());
    for (int64_t start = 0; start < M; start += chunk) {
      const int64_t rows = std::min(chunk, M - start), off = start * C;
      const dim3 grid((rows + kTileRows - 1) / kTileRows);
      backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          ga.data_ptr<scalar_t>() + off, gb.data_ptr<scalar_t>() + off, a.data_ptr<scalar_t>() + off,
          b.data_ptr<scalar_t>() + off, grad_a.data_ptr<scalar_t>() + off, grad_b.data_ptr<scalar_t>() + off, w,
          workspace.data_ptr<acc_t>(), rows);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      int64_t size;
      const Tile<acc_t> chunk_tile = carve_tile(workspace.data_ptr<acc_t>(), rows, 0, C, heads, true, true, &size);
      accumulate_weight_grads(reduce, chunk_tile, gr, rows, C);
    }
  });
  std::vector<at::Tensor> out = {grad_a, grad_b};
  for (auto& g : grads.unpack(grads.flat, params)) out.push_back(g);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CUDA, m) {
  m.impl("ipa_forward", &ipa_forward_cuda);
  m.impl("ipa_backward", &ipa_backward_cuda);
}

}  // namespace ipa
}  // namespace tita_fast
