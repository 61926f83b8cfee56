// IPA as the CUDA kernels run it: one block of threads per tile of pixels, work arrays in a global workspace,
// parameter gradients reduced over each chunk of pixels by matrix products (cuBLAS on the GPU).
//
// Everything here is independent of CUDA so that csrc/ipa/ipa_cuda_emulation.cpp can run the very same block
// code on CPU threads (with a real barrier) in the tests of machines without a GPU; ipa_cuda.cu only adds
// __syncthreads and the kernel launches.
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ipa_common.h"

namespace tita_fast {
namespace ipa {
namespace block {

constexpr int64_t kTileRows = 32;  // pixels per block
// Pixels per launch: at most 32768, and a workspace (about 30 forward, 60 backward arrays of C acc_t values per
// pixel) of at most 256 MB.
constexpr int64_t kMaxChunkRows = 32768;
constexpr int64_t kWorkspaceBytes = int64_t(256) << 20;

// Block-parallel products and element phases: thread `tid` of `nthreads` takes every nthreads-th item.
// Derived policies add sync() (a barrier over the block's threads).
template <typename acc_t>
struct StridedOps {
  int64_t tid, nthreads;

  // Y (rows, n_out) (+)= X (rows, n_in) W^T, W (n_out, n_in)
  TITA_HD void linear(acc_t* Y, int64_t ldy, const acc_t* X, int64_t ldx, const acc_t* W, int64_t ldw, int64_t rows,
                      int64_t n_out, int64_t n_in, bool accumulate) const {
    for (int64_t i = tid; i < rows * n_out; i += nthreads) {
      const int64_t p = i / n_out, o = i - p * n_out;
      acc_t s = 0;
      for (int64_t k = 0; k < n_in; ++k) s += X[p * ldx + k] * W[o * ldw + k];
      Y[p * ldy + o] = accumulate ? Y[p * ldy + o] + s : s;
    }
  }
  // Y (rows, n_out) (+)= X (rows, n_in) W, W (n_in, n_out)
  TITA_HD void linear_t(acc_t* Y, int64_t ldy, const acc_t* X, int64_t ldx, const acc_t* W, int64_t ldw,
                        int64_t rows, int64_t n_out, int64_t n_in, bool accumulate) const {
    for (int64_t i = tid; i < rows * n_out; i += nthreads) {
      const int64_t p = i / n_out, o = i - p * n_out;
      acc_t s = 0;
      for (int64_t k = 0; k < n_in; ++k) s += X[p * ldx + k] * W[k * ldw + o];
      Y[p * ldy + o] = accumulate ? Y[p * ldy + o] + s : s;
    }
  }
  TITA_HD void gelu(acc_t* out, const acc_t* z, int64_t n) const {
    for (int64_t i = tid; i < n; i += nthreads) out[i] = ipa::gelu(z[i]);
  }
  TITA_HD void gelu_backward(acc_t* out, const acc_t* grad, const acc_t* z, int64_t n) const {
    for (int64_t i = tid; i < n; i += nthreads) out[i] = grad[i] * gelu_grad(z[i]);
  }
  TITA_HD void softmax_rows(acc_t* out, const acc_t* z, int64_t rows, int64_t C) const {
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

// The tile of block `index` within a chunk of `chunk_rows` pixels.
template <typename acc_t>
TITA_HD Tile<acc_t> block_tile(acc_t* workspace, int64_t chunk_rows, int64_t index, const Weights<acc_t>& w,
                               bool backward, int64_t* row0, int64_t* rows) {
  *row0 = index * kTileRows;
  *rows = chunk_rows - *row0 < kTileRows ? chunk_rows - *row0 : kTileRows;
  int64_t size;
  return carve_tile(workspace, chunk_rows, *row0, w.C, w.heads, backward, true, &size);
}

template <typename scalar_t, typename acc_t, typename Policy>
TITA_HD void load(acc_t* dst, const scalar_t* src, int64_t n, const Policy& pol) {
  for (int64_t i = pol.tid; i < n; i += pol.nthreads) dst[i] = static_cast<acc_t>(src[i]);
}

template <typename scalar_t, typename acc_t, typename Policy>
TITA_HD void store(scalar_t* dst, const acc_t* src, int64_t n, const Policy& pol) {
  for (int64_t i = pol.tid; i < n; i += pol.nthreads) dst[i] = static_cast<scalar_t>(src[i]);
}

// One block of the forward: pixels of tile `index` of the chunk starting at a, b.
template <typename scalar_t, typename acc_t, typename Policy>
TITA_HD void forward_block(Policy& pol, int64_t index, const scalar_t* a, const scalar_t* b, scalar_t* out_a,
                           scalar_t* out_b, const Weights<acc_t>& w, acc_t* workspace, int64_t chunk_rows) {
  int64_t row0, rows;
  const Tile<acc_t> t = block_tile(workspace, chunk_rows, index, w, false, &row0, &rows);
  const int64_t off = row0 * w.C, n = rows * w.C;
  load(const_cast<acc_t*>(t.x[0]), a + off, n, pol);
  load(const_cast<acc_t*>(t.x[1]), b + off, n, pol);
  pol.sync();
  forward_tile(pol, w, t, rows);
  store(out_a + off, t.out[0], n, pol);
  store(out_b + off, t.out[1], n, pol);
}

// One block of the backward; leaves the tile's weight-gradient factors in the workspace.
template <typename scalar_t, typename acc_t, typename Policy>
TITA_HD void backward_block(Policy& pol, int64_t index, const scalar_t* grad_out_a, const scalar_t* grad_out_b,
                            const scalar_t* a, const scalar_t* b, scalar_t* grad_a, scalar_t* grad_b,
                            const Weights<acc_t>& w, acc_t* workspace, int64_t chunk_rows) {
  int64_t row0, rows;
  const Tile<acc_t> t = block_tile(workspace, chunk_rows, index, w, true, &row0, &rows);
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

// Parameter-gradient reductions over a chunk, with ATen products on the chunk's device.
template <typename acc_t>
struct ChunkReduce {
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

inline at::ScalarType acc_scalar_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline int64_t workspace_size(int64_t rows, int64_t C, int64_t heads, bool backward) {
  int64_t size = 0;
  carve_tile<float>(nullptr, rows, 0, C, heads, backward, true, &size);
  return size;
}

// Pixels per launch for M pixels: whole tiles, within max_rows and kWorkspaceBytes.
inline int64_t chunk_rows(int64_t M, int64_t C, int64_t heads, bool backward, at::ScalarType acc, int64_t max_rows) {
  const int64_t bytes_per_row = workspace_size(1, C, heads, backward) * c10::elementSize(acc);
  const int64_t fit = std::max<int64_t>(kTileRows, kWorkspaceBytes / bytes_per_row / kTileRows * kTileRows);
  return std::max<int64_t>(1, std::min({M, max_rows, fit}));
}

inline int64_t blocks_for(int64_t rows) { return (rows + kTileRows - 1) / kTileRows; }

// Host side of the forward. `launcher.forward<scalar_t, acc_t>(blocks, a, b, out_a, out_b, w, workspace, rows)`
// runs forward_block for blocks [0, blocks) of one chunk of at most max_chunk_rows pixels.
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor> forward(Launcher& launcher, const at::Tensor& a_, const at::Tensor& b_,
                                           const Params& params, int64_t heads,
                                           int64_t max_chunk_rows = kMaxChunkRows) {
  check_inputs(a_, b_, params, heads);
  const auto dtype = a_.scalar_type();
  const at::Tensor a = a_.contiguous(), b = b_.contiguous();
  at::Tensor out_a = at::empty_like(a), out_b = at::empty_like(a);
  const int64_t M = a.size(0), C = a.size(1);
  const auto acc = acc_scalar_type(dtype);
  const PackedWeights packed(params, acc);
  const int64_t chunk = chunk_rows(M, C, heads, false, acc, max_chunk_rows);
  at::Tensor workspace = at::empty({workspace_size(chunk, C, heads, false)}, a.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ipa_forward_blocks", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const Weights<acc_t> w = packed.view<acc_t>(heads);
    for (int64_t start = 0; start < M; start += chunk) {
      const int64_t rows = std::min(chunk, M - start), off = start * C;
      launcher.template forward<scalar_t, acc_t>(blocks_for(rows), a.data_ptr<scalar_t>() + off,
                                                 b.data_ptr<scalar_t>() + off, out_a.data_ptr<scalar_t>() + off,
                                                 out_b.data_ptr<scalar_t>() + off, w, workspace.data_ptr<acc_t>(),
                                                 rows);
    }
  });
  return {out_a, out_b};
}

// Host side of the backward; `launcher.backward<scalar_t, acc_t>(...)` runs backward_block over one chunk.
template <typename Launcher>
std::vector<at::Tensor> backward(Launcher& launcher, const at::Tensor& grad_a_, const at::Tensor& grad_b_,
                                 const at::Tensor& a_, const at::Tensor& b_, const Params& params, int64_t heads,
                                 int64_t max_chunk_rows = kMaxChunkRows) {
  check_inputs(a_, b_, params, heads);
  TORCH_CHECK(grad_a_.sizes() == a_.sizes() && grad_b_.sizes() == b_.sizes(), "ipa backward: gradient shapes ",
              grad_a_.sizes(), " and ", grad_b_.sizes(), " do not match the inputs ", a_.sizes());
  const auto dtype = a_.scalar_type();
  const at::Tensor a = a_.contiguous(), b = b_.contiguous();
  const at::Tensor ga = grad_a_.to(dtype).contiguous(), gb = grad_b_.to(dtype).contiguous();
  at::Tensor grad_a = at::empty_like(a), grad_b = at::empty_like(a);
  const int64_t M = a.size(0), C = a.size(1);
  const auto acc = acc_scalar_type(dtype);
  const PackedWeights packed(params, acc);
  const GradBuffer grads(params, a.options().dtype(acc));
  const int64_t chunk = chunk_rows(M, C, heads, true, acc, max_chunk_rows);
  at::Tensor workspace = at::empty({workspace_size(chunk, C, heads, true)}, a.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ipa_backward_blocks", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const Weights<acc_t> w = packed.view<acc_t>(heads);
    ChunkReduce<acc_t> reduce{a.options().dtype(acc)};
    const Grads<acc_t> gr = grads.view(grads.flat.data_ptr<acc_t>());
    for (int64_t start = 0; start < M; start += chunk) {
      const int64_t rows = std::min(chunk, M - start), off = start * C;
      launcher.template backward<scalar_t, acc_t>(
          blocks_for(rows), ga.data_ptr<scalar_t>() + off, gb.data_ptr<scalar_t>() + off,
          a.data_ptr<scalar_t>() + off, b.data_ptr<scalar_t>() + off, grad_a.data_ptr<scalar_t>() + off,
          grad_b.data_ptr<scalar_t>() + off, w, workspace.data_ptr<acc_t>(), rows);
      int64_t size;
      const Tile<acc_t> chunk_tile = carve_tile(workspace.data_ptr<acc_t>(), rows, 0, C, heads, true, true, &size);
      accumulate_weight_grads(reduce, chunk_tile, gr, rows, C);
    }
  });
  std::vector<at::Tensor> out = {grad_a, grad_b};
  for (auto& g : grads.unpack(grads.flat, params)) out.push_back(g);
  return out;
}

}  // namespace block
}  // namespace ipa
}  // namespace tita_fast
