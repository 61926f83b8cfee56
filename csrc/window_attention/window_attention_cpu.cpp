// Window attention forward on CPU (float32, float64): softmax(scale * q k^T + bias [+ mask]) v in each window.
//
// With head dims of ~10 the attention products are too thin for BLAS (bmm / scaled_dot_product_attention reach
// ~20 GFLOPS on them). Here one task is one (window, head): its q (transposed, pre-scaled), k and v are copied
// into a small local buffer, and a block of kLanes queries is processed as vectors over the queries: the scores
// of the block against every key are FMAs with k broadcast (no horizontal sums), the softmax runs down the keys
// for all lanes at once, and so does the weighted sum of v. Everything stays in L1. The vector loops are compiled
// for AVX-512, AVX2 and baseline x86-64 and chosen at load time (target_clones), as the extension is built
// without -march.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace tita_fast {
namespace window_attention {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TITA_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TITA_VECTOR_CLONES
#endif
// Helpers taking or returning vectors are inlined into each clone: called out of line, they would pass vectors
// with the baseline target's calling convention.
#define TITA_INLINE inline __attribute__((always_inline))

template <typename T>
constexpr int kLanes = 64 / sizeof(T);  // one AVX-512 register of queries (two AVX2 ones, four SSE ones)

// A vector of kLanes values (GCC/clang vector extension: the compiler maps it onto the target's registers) and
// its unaligned loads and stores.
template <typename T>
using Vec __attribute__((vector_size(64))) = T;
template <typename T>
using Bits = Vec<std::conditional_t<sizeof(T) == 4, int32_t, int64_t>>;

template <typename T>
TITA_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
TITA_INLINE void store(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) for x <= 0 (scores minus their maximum, -inf included): float32 as 2^n * p(r) with the Cephes expf
// polynomial (~1 ulp); below -87 the result is 0 (the true value is < 2e-38 relative to the softmax's largest
// term). float64 lane by lane with std::exp.
TITA_INLINE Vec<float> exp_nonpositive(Vec<float> x) {
  const Bits<float> zero = !(x >= -87.0f);
  x = zero ? Vec<float>{} - 87.0f : x;
  const Bits<float> n_int = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, Bits<float>);  // round
  const Vec<float> n = __builtin_convertvector(n_int, Vec<float>);
  const Vec<float> r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  Vec<float> p = 1.9875691500e-4f + Vec<float>{};
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Vec<float> scale = reinterpret_cast<Vec<float>>((n_int + 127) << 23);
  return zero ? Vec<float>{} : p * scale;
}

TITA_INLINE Vec<double> exp_nonpositive(Vec<double> x) {
  for (int l = 0; l < kLanes<double>; ++l) x[l] = std::exp(x[l]);
  return x;
}

// Strided view of a (B_, T, heads, d) tensor.
template <typename T>
struct Tokens {
  T* data;
  int64_t s_window, s_token, s_head, s_dim;

  explicit Tokens(const at::Tensor& t)
      : data(static_cast<T*>(t.data_ptr())), s_window(t.stride(0)), s_token(t.stride(1)), s_head(t.stride(2)), s_dim(t.stride(3)) {}

  T* at(int64_t window, int64_t token, int64_t head) const { return data + window * s_window + token * s_token + head * s_head; }
};

// Per-thread buffers of one (window, head) task; query-indexed arrays are padded to whole blocks of lanes.
template <typename T>
struct Workspace {
  int64_t padded;
  std::vector<T> q_t, k, v, scores;  // q_t (d, padded), k and v (T, d), scores (T, kLanes)

  Workspace(int64_t tokens, int64_t d)
      : padded((tokens + kLanes<T> - 1) / kLanes<T> * kLanes<T>),
        q_t(d * padded, T(0)),
        k(tokens * d),
        v(tokens * d),
        scores(tokens * kLanes<T>) {}
};

// One (window, head): out rows of the window's tokens for this head, (d, padded). additive_t and mask_t (T,
// padded): bias and mask transposed, [key][query]; mask_t may be null.
template <typename T>
TITA_VECTOR_CLONES void attend(const T* __restrict q_t, const T* __restrict k, const T* __restrict v,
                               const T* __restrict additive_t, const T* __restrict mask_t, T* __restrict scores,
                               int64_t tokens, int64_t padded, int64_t d, T* __restrict out_block) {
  constexpr int L = kLanes<T>;
  for (int64_t i0 = 0; i0 < padded; i0 += L) {
    Vec<T> peak = Vec<T>{} - std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < tokens; ++j) {
      Vec<T> acc = load(additive_t + j * padded + i0);
      if (mask_t != nullptr) acc += load(mask_t + j * padded + i0);
      for (int64_t c = 0; c < d; ++c) acc += k[j * d + c] * load(q_t + c * padded + i0);
      peak = peak > acc ? peak : acc;
      store<T>(scores + j * L, acc);
    }
    Vec<T> total{};
    for (int64_t j = 0; j < tokens; ++j) {
      const Vec<T> e = exp_nonpositive(load(scores + j * L) - peak);
      store<T>(scores + j * L, e);
      total += e;
    }
    for (int64_t c = 0; c < d; ++c) {
      Vec<T> acc{};
      for (int64_t j = 0; j < tokens; ++j) acc += load(scores + j * L) * v[j * d + c];
      store<T>(out_block + c * padded + i0, acc / total);
    }
  }
}

// (heads or masks, T, T) -> (heads or masks, T, padded) transposed to [key][query], zero-padded queries.
template <typename T>
std::vector<T> transposed_padded(const at::Tensor& t, int64_t padded) {
  const auto c = t.contiguous();
  const int64_t count = c.size(0), tokens = c.size(1);
  std::vector<T> result(count * tokens * padded, T(0));
  const T* src = c.data_ptr<T>();
  for (int64_t n = 0; n < count; ++n)
    for (int64_t i = 0; i < tokens; ++i)
      for (int64_t j = 0; j < tokens; ++j) result[(n * tokens + j) * padded + i] = src[(n * tokens + i) * tokens + j];
  return result;
}

template <typename T>
void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
             const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& mask_index, double scale,
             const at::Tensor& out) {
  const int64_t windows = q.size(0), tokens = q.size(1), heads = q.size(2), d = q.size(3);
  const int64_t padded = Workspace<T>(tokens, d).padded;
  const std::vector<T> bias_t = transposed_padded<T>(bias, padded);
  std::vector<T> mask_t;
  std::vector<int64_t> mask_row;  // per window of an image: its row of mask_t, or -1
  if (mask.has_value()) {
    mask_t = transposed_padded<T>(*mask, padded);
    const auto index = mask_index->contiguous();
    mask_row.assign(index.data_ptr<int64_t>(), index.data_ptr<int64_t>() + index.numel());
  }
  const Tokens<const T> qs(q), ks(k), vs(v);
  const Tokens<T> os(out);
  const T alpha = static_cast<T>(scale);
  at::parallel_for(0, windows * heads, 16, [&](int64_t begin, int64_t end) {
    Workspace<T> w(tokens, d);
    std::vector<T> out_block(d * padded);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads;
      for (int64_t i = 0; i < tokens; ++i) {
        const T *qi = qs.at(b, i, h), *ki = ks.at(b, i, h), *vi = vs.at(b, i, h);
        for (int64_t c = 0; c < d; ++c) {
          w.q_t[c * padded + i] = alpha * qi[c * qs.s_dim];
          w.k[i * d + c] = ki[c * ks.s_dim];
          w.v[i * d + c] = vi[c * vs.s_dim];
        }
      }
      const int64_t row = mask_row.empty() ? -1 : mask_row[b % static_cast<int64_t>(mask_row.size())];
      const T* m = row < 0 ? nullptr : mask_t.data() + row * tokens * padded;
      attend<T>(w.q_t.data(), w.k.data(), w.v.data(), bias_t.data() + h * tokens * padded, m, w.scores.data(),
                tokens, padded, d, out_block.data());
      for (int64_t i = 0; i < tokens; ++i) {
        T* oi = os.at(b, i, h);
        for (int64_t c = 0; c < d; ++c) oi[c * os.s_dim] = out_block[c * padded + i];
      }
    }
  });
}

at::Tensor window_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& bias, const c10::optional<at::Tensor>& mask,
                                        const c10::optional<at::Tensor>& mask_index, double scale) {
  TORCH_CHECK(q.device().is_cpu(), "window_attention (CPU kernel): expected CPU tensors, got ", q.device());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "window_attention (CPU kernel): supports float32 and float64, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "window_attention: q, k, v must be (windows, T, heads, d) of one shape");
  for (const auto* t : {&k, &v, &bias})
    TORCH_CHECK(t->device() == q.device() && t->scalar_type() == q.scalar_type(),
                "window_attention: q, k, v, bias must share device and dtype");
  const int64_t tokens = q.size(1), heads = q.size(2);
  TORCH_CHECK(bias.dim() == 3 && bias.size(0) == heads && bias.size(1) == tokens && bias.size(2) == tokens,
              "window_attention: bias must be (heads, T, T)");
  TORCH_CHECK(mask.has_value() == mask_index.has_value(), "window_attention: mask and mask_index go together");
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == q.scalar_type() && mask->dim() == 3 && mask->size(1) == tokens &&
                    mask->size(2) == tokens,
                "window_attention: mask must be (masks, T, T) of q's dtype");
    TORCH_CHECK(mask_index->scalar_type() == at::kLong && mask_index->dim() == 1 && mask_index->numel() > 0 &&
                    q.size(0) % mask_index->numel() == 0,
                "window_attention: mask_index must be int64 (windows per image,) dividing the windows");
    const auto index = mask_index->contiguous();
    const int64_t* rows = index.data_ptr<int64_t>();
    for (int64_t i = 0; i < index.numel(); ++i)
      TORCH_CHECK(rows[i] >= -1 && rows[i] < mask->size(0), "window_attention: mask_index out of range");
  }
  auto out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_forward_cpu",
                             [&] { forward<scalar_t>(q, k, v, bias, mask, mask_index, scale, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CPU, m) { m.impl("window_attention_forward", &window_attention_forward_cpu); }

}  // namespace window_attention
}  // namespace tita_fast
