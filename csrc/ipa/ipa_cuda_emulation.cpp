// The CUDA kernels' block code (ipa_block.h) run on CPU threads, one std::thread per CUDA thread and a real
// barrier for __syncthreads, so that machines without a GPU test everything of the CUDA backend but the launch
// itself: the strided block loops, the workspace layout, the chunking and the gradient reductions.
// Registered as tita_fast::ipa_{forward,backward}_cuda_emulated for CPU tensors (tests only; slow).
#include <torch/library.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "ipa_block.h"

namespace tita_fast {
namespace ipa {
namespace {

class Barrier {
 public:
  explicit Barrier(int64_t count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      all_arrived_.notify_all();
    } else {
      all_arrived_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable all_arrived_;
  int64_t count_, arrived_ = 0, generation_ = 0;
};

template <typename acc_t>
struct EmulatedPolicy : block::StridedOps<acc_t> {
  Barrier* barrier;
  void sync() { barrier->wait(); }
};

struct ThreadLauncher {
  int64_t threads;

  // Runs body(policy, block) for every block, each block on `threads` concurrent threads.
  template <typename acc_t, typename Body>
  void run(int64_t blocks, Body body) {
    for (int64_t index = 0; index < blocks; ++index) {
      Barrier barrier(threads);
      std::vector<std::thread> block;
      for (int64_t tid = 0; tid < threads; ++tid) {
        block.emplace_back([&, tid] {
          EmulatedPolicy<acc_t> pol;
          pol.tid = tid, pol.nthreads = threads, pol.barrier = &barrier;
          body(pol, index);
        });
      }
      for (auto& thread : block) thread.join();
    }
  }
  template <typename scalar_t, typename acc_t, typename... Args>
  void forward(int64_t blocks, Args... args) {
    run<acc_t>(blocks, [&](EmulatedPolicy<acc_t>& pol, int64_t index) {
      block::forward_block<scalar_t, acc_t>(pol, index, args...);
    });
  }
  template <typename scalar_t, typename acc_t, typename... Args>
  void backward(int64_t blocks, Args... args) {
    run<acc_t>(blocks, [&](EmulatedPolicy<acc_t>& pol, int64_t index) {
      block::backward_block<scalar_t, acc_t>(pol, index, args...);
    });
  }
};

std::tuple<at::Tensor, at::Tensor> ipa_forward_emulated(const at::Tensor& a, const at::Tensor& b, TITA_IPA_PARAM_ARGS,
                                                        int64_t heads, int64_t threads, int64_t chunk_rows) {
  TORCH_CHECK(threads > 0 && chunk_rows > 0, "ipa_forward_cuda_emulated: threads and chunk_rows must be positive");
  ThreadLauncher launcher{threads};
  return block::forward(launcher, a, b, params_from(TITA_IPA_PARAM_NAMES), heads, chunk_rows);
}

std::vector<at::Tensor> ipa_backward_emulated(const at::Tensor& grad_a, const at::Tensor& grad_b,
                                              const at::Tensor& a, const at::Tensor& b, TITA_IPA_PARAM_ARGS,
                                              int64_t heads, int64_t threads, int64_t chunk_rows) {
  TORCH_CHECK(threads > 0 && chunk_rows > 0, "ipa_backward_cuda_emulated: threads and chunk_rows must be positive");
  ThreadLauncher launcher{threads};
  return block::backward(launcher, grad_a, grad_b, a, b, params_from(TITA_IPA_PARAM_NAMES), heads, chunk_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CPU, m) {
  m.impl("ipa_forward_cuda_emulated", &ipa_forward_emulated);
  m.impl("ipa_backward_cuda_emulated", &ipa_backward_emulated);
}

}  // namespace ipa
}  // namespace tita_fast
