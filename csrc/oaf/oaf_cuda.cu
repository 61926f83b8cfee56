// OAF mixing on CUDA (the math is in oaf_common.h). One 256-thread block per (image, 32 x 8 pixel tile, channel
// group): a warp per tile row keeps global rows coalesced, and each thread owns one pixel, whose filter state stays
// in registers while it walks the group's channels. There is one group (all channels) unless the images are too
// small to fill the GPU with a block per tile. Each channel's tile + 1-pixel halo is staged in shared memory (the
// source with reflect-resolved indices, grad with zeros outside the image), so the 3x3 taps are shared-memory reads.
// The staging is double-buffered (one barrier per channel) and the next channel's halo is loaded into registers
// while the current one is computed, hiding global latency behind the barrier. Half inputs compute in float,
// float64 in double.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "oaf_common.h"

namespace tita_fast {
namespace oaf {
namespace {

constexpr int kTileW = 32;
constexpr int kTileH = 8;
constexpr int kThreads = kTileW * kTileH;
constexpr int kWarps = kThreads / 32;
constexpr int kHaloW = kTileW + 2;
constexpr int kHalo = kHaloW * (kTileH + 2);
constexpr int kSlots = (kHalo + kThreads - 1) / kThreads;  // halo elements each thread stages

// Shared-memory offset of tap k (offset (ky - 1, kx - 1)) from a pixel of the staged tile + halo.
__device__ __forceinline__ int tap_shift(int k) { return (k / 3 - 1) * kHaloW + (k % 3 - 1); }

template <typename scalar_t>
struct Args {
  const scalar_t* source[2];
  const scalar_t* logits[2];
  const scalar_t* residual[2];
  const scalar_t* multiplier[2];
  const scalar_t* hamming[2];
  const scalar_t* mix_weights;
  int64_t C, group_channels;  // channels, channels per group (the last may have fewer)
  int H, W;
  int tiles_x, tiles, groups;  // tiles per tile row, tiles per image, channel groups
};

template <typename scalar_t, typename acc_t>
struct Grads {
  scalar_t* source[2];
  scalar_t* logits[2];       // with one channel group
  acc_t* logits_partial[2];  // else: (N, groups, 9, H, W), summed afterwards (d logits is linear in G)
  scalar_t* residual[2];
  scalar_t* multiplier[2];
};

// The block's tile and this thread's pixel. Threads of a tile overhanging the image take the nearest in-image
// pixel for their loads, so every load stays in bounds; they write nothing and add nothing to the sums.
struct Pixel {
  int64_t n, c_begin, channels;  // image, the group's channels
  int group;
  int i0, j0;    // tile origin
  int pix;       // in-plane offset of the (clamped) pixel
  int centre;    // its index in the staged tile + halo
  int i, j;      // clamped row and column
  bool valid;
};

template <typename scalar_t>
__device__ Pixel this_pixel(const Args<scalar_t>& a) {
  Pixel p;
  // The groups of a tile are adjacent blocks, so they share its halo and logits in L2.
  p.group = blockIdx.x % a.groups;
  const int image_tile = blockIdx.x / a.groups;
  p.n = image_tile / a.tiles;
  const int tile = image_tile % a.tiles;
  p.c_begin = p.group * a.group_channels;
  p.channels = min(a.C - p.c_begin, a.group_channels);
  p.i0 = tile / a.tiles_x * kTileH;
  p.j0 = tile % a.tiles_x * kTileW;
  const int ty = threadIdx.x / kTileW, tx = threadIdx.x % kTileW;
  p.valid = p.i0 + ty < a.H && p.j0 + tx < a.W;
  p.i = min(p.i0 + ty, a.H - 1);
  p.j = min(p.j0 + tx, a.W - 1);
  p.pix = p.i * a.W + p.j;
  p.centre = (ty + 1) * kHaloW + tx + 1;
  return p;
}

__device__ __forceinline__ int slot(int r) { return threadIdx.x + r * kThreads; }

// Plane offset of halo element e of the source, reflect-resolved. Rows and columns beyond the reflect range (tiles
// overhanging the image, or slots past the halo) only feed outputs nobody writes: clamped to stay in bounds.
__device__ __forceinline__ int reflected_offset(int e, const Pixel& p, int H, int W) {
  const int gi = reflect(min(p.i0 - 1 + e / kHaloW, H), H);
  const int gj = reflect(min(p.j0 - 1 + e % kHaloW, W), W);
  return gi * W + gj;
}

// Plane offset of halo element e of grad at its true position, -1 outside the image: the gather of d source reads
// real neighbours only (their coefficients are zero outside the image, and a zero keeps 0 * value finite).
__device__ __forceinline__ int direct_offset(int e, const Pixel& p, int H, int W) {
  const int gi = p.i0 - 1 + e / kHaloW, gj = p.j0 - 1 + e % kHaloW;
  return gi >= 0 && gi < H && gj >= 0 && gj < W ? gi * W + gj : -1;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void filter_at(const Args<scalar_t>& a, int s, int64_t n, int pix, acc_t (&m)[kTaps]) {
  const int64_t HW = int64_t(a.H) * a.W;
  acc_t logits[kTaps], hamming[kTaps];
#pragma unroll
  for (int k = 0; k < kTaps; ++k) {
    logits[k] = static_cast<acc_t>(a.logits[s][(n * kTaps + k) * HW + pix]);
    hamming[k] = static_cast<acc_t>(a.hamming[s][k]);
  }
  normalised_filter(logits, hamming, m);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(const Args<scalar_t> a, scalar_t* __restrict__ out) {
  __shared__ acc_t stage[2][2][kHalo];  // [buffer][source][tile + halo]
  const Pixel p = this_pixel(a);
  const int64_t HW = int64_t(a.H) * a.W;

  acc_t w[kMixWeights], m[2][kTaps];
#pragma unroll
  for (int k = 0; k < kMixWeights; ++k) w[k] = static_cast<acc_t>(a.mix_weights[p.n * kMixWeights + k]);
#pragma unroll
  for (int s = 0; s < 2; ++s) filter_at(a, s, p.n, p.pix, m[s]);

  int offset[kSlots];
  acc_t next[2][kSlots];  // the next channel's halo share, loaded a channel ahead
#pragma unroll
  for (int r = 0; r < kSlots; ++r) offset[r] = reflected_offset(slot(r), p, a.H, a.W);
  const int64_t first = (p.n * a.C + p.c_begin) * HW;
#pragma unroll
  for (int s = 0; s < 2; ++s)
#pragma unroll
    for (int r = 0; r < kSlots; ++r) next[s][r] = static_cast<acc_t>(a.source[s][first + offset[r]]);

  for (int64_t c = 0; c < p.channels; ++c) {
    const int64_t plane = first + c * HW;
    acc_t(*buf)[kHalo] = stage[c & 1];
#pragma unroll
    for (int s = 0; s < 2; ++s)
#pragma unroll
      for (int r = 0; r < kSlots; ++r)
        if (slot(r) < kHalo) buf[s][slot(r)] = next[s][r];
    acc_t residual[2], multiplier[2];
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      residual[s] = static_cast<acc_t>(a.residual[s][plane + p.pix]);
      multiplier[s] = static_cast<acc_t>(a.multiplier[s][plane + p.pix]);
    }
    if (c + 1 < p.channels) {
#pragma unroll
      for (int s = 0; s < 2; ++s)
#pragma unroll
        for (int r = 0; r < kSlots; ++r) next[s][r] = static_cast<acc_t>(a.source[s][plane + HW + offset[r]]);
    }
    // Also orders this channel's writes to buf after the reads of the channel before last, which used it.
    __syncthreads();

    acc_t result = 0;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const acc_t* tile = buf[s];
      acc_t smooth = 0;
#pragma unroll
      for (int k = 0; k < kTaps; ++k) smooth += m[s][k] * tile[p.centre + tap_shift(k)];
      const acc_t v = tile[p.centre];
      result += w[3 * s] * (v - smooth) + w[3 * s + 1] * (v + residual[s]) + w[3 * s + 2] * v * multiplier[s];
    }
    if (p.valid) out[plane + p.pix] = static_cast<scalar_t>(result);
  }
}

// Sums v over the block (deterministic order: warp shuffles, then warps in order) into out[0..5].
template <typename acc_t>
__device__ void block_sum(acc_t (&v)[kMixWeights], acc_t* out) {
  __shared__ acc_t warp_sums[kWarps][kMixWeights];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kMixWeights; ++k) {
#pragma unroll
    for (int d = 16; d > 0; d /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], d);
    if (lane == 0) warp_sums[warp][k] = v[k];
  }
  __syncthreads();
  if (threadIdx.x < kMixWeights) {
    acc_t total = 0;
    for (int i = 0; i < kWarps; ++i) total += warp_sums[i][threadIdx.x];
    out[threadIdx.x] = total;
  }
}

// Capped at 64 registers (4 blocks per SM) in float and 128 in double: ptxas left alone takes ~90 in float, which
// fits only 2 blocks per SM, and the cap costs it a few bytes of spills outside the channel loop.
template <typename acc_t>
constexpr int kBackwardMinBlocks = sizeof(acc_t) == sizeof(float) ? 4 : 2;

// The sources x and y are done one after the other (each with its own pass over the channels), so a thread holds the
// state of one source at a time: 9 gather coefficients and 9 tap correlations G. Doing both in one pass would save
// re-reading grad (1 of the 7 streams read) but double that state, and with it the registers that bound occupancy.
// m itself is not held: it stays in shared memory for the pass, and the mix-weight gradient of the smoothing,
// sum_c g * sum_k m_k s_k, is sum_k m_k G_k, so it needs no m inside the channel loop.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kBackwardMinBlocks<acc_t>)
    backward_kernel(const scalar_t* __restrict__ grad, const Args<scalar_t> a, const Grads<scalar_t, acc_t> d,
                    acc_t* __restrict__ block_sums) {
  __shared__ acc_t filter[kTaps][kHalo];  // m of the current source over the tile + halo
  __shared__ acc_t stage[2][2][kHalo];    // [buffer][source, grad][tile + halo]
  const Pixel p = this_pixel(a);
  const int64_t HW = int64_t(a.H) * a.W;
  const int64_t first = (p.n * a.C + p.c_begin) * HW;

  int src_offset[kSlots], grad_offset[kSlots];
#pragma unroll
  for (int r = 0; r < kSlots; ++r) {
    src_offset[r] = reflected_offset(slot(r), p, a.H, a.W);
    grad_offset[r] = direct_offset(slot(r), p, a.H, a.W);
  }
  acc_t dw[kMixWeights];

#pragma unroll  // constant s: dw and the per-source pointers stay in registers
  for (int s = 0; s < 2; ++s) {
    const acc_t w_hp = static_cast<acc_t>(a.mix_weights[p.n * kMixWeights + 3 * s]);
    const acc_t w_add = static_cast<acc_t>(a.mix_weights[p.n * kMixWeights + 3 * s + 1]);
    const acc_t w_mul = static_cast<acc_t>(a.mix_weights[p.n * kMixWeights + 3 * s + 2]);

    // m at the in-image pixels of the tile + halo (the others are never read).
#pragma unroll
    for (int r = 0; r < kSlots; ++r) {
      const int e = slot(r);
      const int gi = p.i0 - 1 + e / kHaloW, gj = p.j0 - 1 + e % kHaloW;
      if (e < kHalo && gi >= 0 && gi < a.H && gj >= 0 && gj < a.W) {
        acc_t m[kTaps];
        filter_at(a, s, p.n, gi * a.W + gj, m);
#pragma unroll
        for (int k = 0; k < kTaps; ++k) filter[k][e] = m[k];
      }
    }
    __syncthreads();

    // coef[3 (a + 1) + (b + 1)] = A(q -> p) for the neighbour q = p + (a, b); zero where q is outside the image.
    acc_t coef[kTaps];
#pragma unroll
    for (int ka = 0; ka < 3; ++ka)
#pragma unroll
      for (int kb = 0; kb < 3; ++kb) {
        const int da = ka - 1, db = kb - 1, qi = p.i + da, qj = p.j + db;
        acc_t value = 0;
        if (p.valid && qi >= 0 && qi < a.H && qj >= 0 && qj < a.W) {
          acc_t m_q[kTaps];
#pragma unroll
          for (int k = 0; k < kTaps; ++k) m_q[k] = filter[k][p.centre + da * kHaloW + db];
          value = tap_coefficient(m_q, da, db, p.i, p.j, a.H, a.W);
        }
        coef[3 * ka + kb] = value;
      }

    // G_k = sum_c g(c, p) s(c, R(p + o_k)); G_4 = sum_c g s at p.
    acc_t G[kTaps], g_residual = 0, g_source_multiplier = 0;
#pragma unroll
    for (int k = 0; k < kTaps; ++k) G[k] = 0;
    const scalar_t* source = a.source[s];
    acc_t next_src[kSlots], next_grad[kSlots];
#pragma unroll
    for (int r = 0; r < kSlots; ++r) {
      next_src[r] = static_cast<acc_t>(source[first + src_offset[r]]);
      next_grad[r] = grad_offset[r] >= 0 ? static_cast<acc_t>(grad[first + grad_offset[r]]) : acc_t(0);
    }

    for (int64_t c = 0; c < p.channels; ++c) {
      const int64_t plane = first + c * HW;
      acc_t(*buf)[kHalo] = stage[c & 1];
#pragma unroll
      for (int r = 0; r < kSlots; ++r)
        if (slot(r) < kHalo) {
          buf[0][slot(r)] = next_src[r];
          buf[1][slot(r)] = next_grad[r];
        }
      const acc_t residual = static_cast<acc_t>(a.residual[s][plane + p.pix]);
      const acc_t multiplier = static_cast<acc_t>(a.multiplier[s][plane + p.pix]);
      if (c + 1 < p.channels) {
#pragma unroll
        for (int r = 0; r < kSlots; ++r) {
          next_src[r] = static_cast<acc_t>(source[plane + HW + src_offset[r]]);
          next_grad[r] = grad_offset[r] >= 0 ? static_cast<acc_t>(grad[plane + HW + grad_offset[r]]) : acc_t(0);
        }
      }
      __syncthreads();

      const acc_t* src = buf[0];
      const acc_t* g = buf[1];
      const acc_t gv = g[p.centre], sv = src[p.centre];
      acc_t gather = 0;
#pragma unroll
      for (int k = 0; k < kTaps; ++k) {
        G[k] += gv * src[p.centre + tap_shift(k)];
        gather += coef[k] * g[p.centre + tap_shift(k)];
      }
      if (p.valid) {
        d.source[s][plane + p.pix] = static_cast<scalar_t>((w_hp + w_add + w_mul * multiplier) * gv - w_hp * gather);
        d.residual[s][plane + p.pix] = static_cast<scalar_t>(w_add * gv);
        d.multiplier[s][plane + p.pix] = static_cast<scalar_t>(w_mul * gv * sv);
      }
      g_residual += gv * residual;
      g_source_multiplier += gv * sv * multiplier;
    }

    acc_t m[kTaps], dm[kTaps], dlogits[kTaps], smooth = 0;
#pragma unroll
    for (int k = 0; k < kTaps; ++k) {
      m[k] = filter[k][p.centre];
      dm[k] = -w_hp * G[k];
      smooth += m[k] * G[k];
    }
    filter_logit_grads(m, dm, dlogits);
    if (p.valid) {
      if (a.groups == 1) {
#pragma unroll
        for (int k = 0; k < kTaps; ++k)
          d.logits[s][(p.n * kTaps + k) * HW + p.pix] = static_cast<scalar_t>(dlogits[k]);
      } else {
        acc_t* partial = d.logits_partial[s] + (p.n * a.groups + p.group) * kTaps * HW + p.pix;
#pragma unroll
        for (int k = 0; k < kTaps; ++k) partial[k * HW] = dlogits[k];
      }
    }
    dw[3 * s] = p.valid ? G[4] - smooth : acc_t(0);
    dw[3 * s + 1] = p.valid ? G[4] + g_residual : acc_t(0);
    dw[3 * s + 2] = p.valid ? g_source_multiplier : acc_t(0);
    __syncthreads();  // the next source overwrites filter and stage
  }
  block_sum(dw, block_sums + int64_t(blockIdx.x) * kMixWeights);
}

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "oaf_mix (cuda backend): inputs are on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kBFloat16,
              "oaf_mix (cuda backend): supports float16, bfloat16, float32 and float64, got ", x.scalar_type());
}

constexpr int kMinGroupChannels = 8;  // keeps the per-block filter setup small against the channel loop

struct Launch {
  int tiles_x, tiles, groups;
  int64_t group_channels;
  int blocks;
};

// Channel groups only when a block per (image, tile) would leave the GPU short of one full wave of blocks at the
// kernel's occupancy; then as many as make up that wave, each of at least kMinGroupChannels channels.
template <typename Kernel>
Launch launch_shape(const at::Tensor& x, Kernel kernel) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H * W <= INT_MAX, "oaf_mix (cuda backend): an H x W plane over 2^31 pixels");
  const int64_t tiles_x = (W + kTileW - 1) / kTileW, tiles = tiles_x * ((H + kTileH - 1) / kTileH);
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  const int64_t wave = int64_t(per_sm) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t for_wave = (wave + N * tiles - 1) / (N * tiles);
  const int64_t wanted = std::max<int64_t>(1, std::min(for_wave, (C + kMinGroupChannels - 1) / kMinGroupChannels));
  const int64_t group_channels = (C + wanted - 1) / wanted;
  const int64_t groups = (C + group_channels - 1) / group_channels;  // none empty
  TORCH_CHECK(N * tiles * groups <= INT_MAX, "oaf_mix (cuda backend): too many pixel tiles for one launch");
  return {int(tiles_x), int(tiles), int(groups), group_channels, int(N * tiles * groups)};
}

template <typename scalar_t>
Args<scalar_t> make_args(const Inputs& in, const Launch& shape) {
  Args<scalar_t> a;
  for (int s = 0; s < 2; ++s) {
    a.source[s] = in.source[s].data_ptr<scalar_t>();
    a.logits[s] = in.logits[s].data_ptr<scalar_t>();
    a.residual[s] = in.residual[s].data_ptr<scalar_t>();
    a.multiplier[s] = in.multiplier[s].data_ptr<scalar_t>();
    a.hamming[s] = in.hamming[s].data_ptr<scalar_t>();
  }
  a.mix_weights = in.mix_weights.data_ptr<scalar_t>();
  a.C = in.source[0].size(1);
  a.group_channels = shape.group_channels;
  a.H = int(in.source[0].size(2));
  a.W = int(in.source[0].size(3));
  a.tiles_x = shape.tiles_x;
  a.tiles = shape.tiles;
  a.groups = shape.groups;
  return a;
}

at::Tensor oaf_mix_forward_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& logits_x,
                                const at::Tensor& logits_y, const at::Tensor& residual_x, const at::Tensor& residual_y,
                                const at::Tensor& multiplier_x, const at::Tensor& multiplier_y,
                                const at::Tensor& hamming_x, const at::Tensor& hamming_y,
                                const at::Tensor& mix_weights) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = check_inputs(x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
                                 hamming_x, hamming_y, mix_weights);
  at::Tensor out = at::empty(in.source[0].sizes(), in.source[0].options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "oaf_mix_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Launch shape = launch_shape(x, forward_kernel<scalar_t, acc_t>);
    forward_kernel<scalar_t, acc_t>
        <<<shape.blocks, kThreads, 0, stream>>>(make_args<scalar_t>(in, shape), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> oaf_mix_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                                              const at::Tensor& logits_x, const at::Tensor& logits_y,
                                              const at::Tensor& residual_x, const at::Tensor& residual_y,
                                              const at::Tensor& multiplier_x, const at::Tensor& multiplier_y,
                                              const at::Tensor& hamming_x, const at::Tensor& hamming_y,
                                              const at::Tensor& mix_weights) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = check_inputs(x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y,
                                 hamming_x, hamming_y, mix_weights);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "oaf_mix_backward: grad is ", grad.sizes(), " ", grad.scalar_type(), " on ", grad.device(),
              ", x is ", x.sizes(), " ", x.scalar_type(), " on ", x.device());
  const at::Tensor g = grad.contiguous();
  const auto options = in.source[0].options();
  const auto acc_options = options.dtype(at::toOpMathType(x.scalar_type()));
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
  // x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y, mix_weights.
  std::vector<at::Tensor> out(kMixWeights + 3);
  for (int s = 0; s < 2; ++s)
    for (int t : {0, 4, 6}) out[t + s] = at::empty(in.source[s].sizes(), options);
  if (in.source[0].numel() == 0) {  // no channels or no images: nothing flows into the filters or the weights
    out[2] = at::zeros({N, kTaps, H, W}, options);
    out[3] = at::zeros({N, kTaps, H, W}, options);
    out[8] = at::zeros({N, kMixWeights}, options);
    return out;
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "oaf_mix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Launch shape = launch_shape(x, backward_kernel<scalar_t, acc_t>);
    // Per-block partial sums of the mix-weight gradients (and of d logits over channel groups), summed by torch
    // afterwards: deterministic, no atomics.
    at::Tensor block_sums = at::empty({N, int64_t(shape.tiles) * shape.groups, kMixWeights}, acc_options);
    at::Tensor logits_partial[2];
    Grads<scalar_t, acc_t> d;
    for (int s = 0; s < 2; ++s) {
      d.source[s] = out[s].data_ptr<scalar_t>();
      d.residual[s] = out[4 + s].data_ptr<scalar_t>();
      d.multiplier[s] = out[6 + s].data_ptr<scalar_t>();
      if (shape.groups == 1) {
        out[2 + s] = at::empty({N, kTaps, H, W}, options);
        d.logits[s] = out[2 + s].data_ptr<scalar_t>();
        d.logits_partial[s] = nullptr;
      } else {
        logits_partial[s] = at::empty({N, shape.groups, kTaps, H, W}, acc_options);
        d.logits[s] = nullptr;
        d.logits_partial[s] = logits_partial[s].data_ptr<acc_t>();
      }
    }
    backward_kernel<scalar_t, acc_t><<<shape.blocks, kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), make_args<scalar_t>(in, shape), d, block_sums.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (shape.groups > 1)
      for (int s = 0; s < 2; ++s) out[2 + s] = logits_partial[s].sum(1).to(x.scalar_type());
    out[8] = block_sums.sum(1).to(x.scalar_type());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CUDA, m) {
  m.impl("oaf_mix_forward", &oaf_mix_forward_cuda);
  m.impl("oaf_mix_backward", &oaf_mix_backward_cuda);
}

}  // namespace oaf
}  // namespace tita_fast
