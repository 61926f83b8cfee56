// IPA on CUDA: the block code of ipa_block.h (which runs the tile pipeline of ipa_tile.h, the code the CPU
// backend runs) with __syncthreads as the barrier, one 256-thread block per 32-pixel tile. Work arrays live in a
// global workspace, L2-resident for a chunk of pixels; the parameter gradients are reduced over each chunk by
// cuBLAS (deterministic, no atomics). Half inputs compute in float, float64 in double.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ipa_block.h"

namespace tita_fast {
namespace ipa {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
struct BlockPolicy : block::StridedOps<acc_t> {
  __device__ void sync() { __syncthreads(); }
};

template <typename acc_t>
__device__ BlockPolicy<acc_t> this_block() {
  BlockPolicy<acc_t> pol;
  pol.tid = threadIdx.x;
  pol.nthreads = blockDim.x;
  return pol;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* a, const scalar_t* b, scalar_t* out_a, scalar_t* out_b, Weights<acc_t> w,
                   acc_t* workspace, int64_t chunk_rows) {
  BlockPolicy<acc_t> pol = this_block<acc_t>();
  block::forward_block(pol, blockIdx.x, a, b, out_a, out_b, w, workspace, chunk_rows);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* grad_out_a, const scalar_t* grad_out_b, const scalar_t* a, const scalar_t* b,
                    scalar_t* grad_a, scalar_t* grad_b, Weights<acc_t> w, acc_t* workspace, int64_t chunk_rows) {
  BlockPolicy<acc_t> pol = this_block<acc_t>();
  block::backward_block(pol, blockIdx.x, grad_out_a, grad_out_b, a, b, grad_a, grad_b, w, workspace, chunk_rows);
}

struct CudaLauncher {
  cudaStream_t stream;

  template <typename scalar_t, typename acc_t, typename... Args>
  void forward(int64_t blocks, Args... args) {
    forward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename scalar_t, typename acc_t, typename... Args>
  void backward(int64_t blocks, Args... args) {
    backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_cuda(const at::Tensor& a) {
  TORCH_CHECK(a.is_cuda(), "ipa (cuda backend): inputs are on ", a.device());
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble || a.scalar_type() == at::kHalf ||
                  a.scalar_type() == at::kBFloat16,
              "ipa (cuda backend): supports float16, bfloat16, float32 and float64, got ", a.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> ipa_forward_cuda(const at::Tensor& a, const at::Tensor& b, TITA_IPA_PARAM_ARGS,
                                                    int64_t heads) {
  check_cuda(a);
  const c10::cuda::CUDAGuard guard(a.device());
  CudaLauncher launcher{at::cuda::getCurrentCUDAStream()};
  return block::forward(launcher, a, b, params_from(TITA_IPA_PARAM_NAMES), heads);
}

std::vector<at::Tensor> ipa_backward_cuda(const at::Tensor& grad_a, const at::Tensor& grad_b, const at::Tensor& a,
                                          const at::Tensor& b, TITA_IPA_PARAM_ARGS, int64_t heads) {
  check_cuda(a);
  const c10::cuda::CUDAGuard guard(a.device());
  CudaLauncher launcher{at::cuda::getCurrentCUDAStream()};
  return block::backward(launcher, grad_a, grad_b, a, b, params_from(TITA_IPA_PARAM_NAMES), heads);
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CUDA, m) {
  m.impl("ipa_forward", &ipa_forward_cuda);
  m.impl("ipa_backward", &ipa_backward_cuda);
}

}  // namespace ipa
}  // namespace tita_fast
