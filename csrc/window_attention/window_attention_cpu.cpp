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
#include <utility>
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

template <typename T>
TITA_INLINE T horizontal_sum(Vec<T> x) {
  T total = T(0);
  for (int l = 0; l < kLanes<T>; ++l) total += x[l];
  return total;
}

template <typename T>
TITA_INLINE T horizontal_max(Vec<T> x) {
  T peak = x[0];
  for (int l = 1; l < kLanes<T>; ++l) peak = std::max(peak, x[l]);
  return peak;
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

// out[g] = factor * sum_j weights[j] v[j][c0 + g] for G channels at once: G independent accumulators (one per
// channel) keep the FMAs from waiting on each other.
template <typename T, int G>
TITA_INLINE void weighted_group(const T* __restrict weights, int64_t ld_w, const T* __restrict v, int64_t ld_v,
                                int64_t tokens, int64_t c0, Vec<T> factor, T* __restrict out, int64_t out_stride) {
  Vec<T> acc[G] = {};
  for (int64_t j = 0; j < tokens; ++j) {
    const Vec<T> w = load(weights + j * ld_w);
    const T* vj = v + j * ld_v + c0;
    for (int g = 0; g < G; ++g) acc[g] += w * vj[g];
  }
  for (int g = 0; g < G; ++g) store<T>(out + g * out_stride, acc[g] * factor);
}

// out[c] = factor * sum_j weights[j] v[j][c] for the d channels (vectors of lanes ld_w apart in weights,
// out_stride apart in out), 8 channels per pass.
template <typename T>
TITA_INLINE void weighted_sums(const T* __restrict weights, int64_t ld_w, const T* __restrict v, int64_t ld_v,
                               int64_t tokens, int64_t d, Vec<T> factor, T* __restrict out, int64_t out_stride) {
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) weighted_group<T, 8>(weights, ld_w, v, ld_v, tokens, c, factor, out + c * out_stride, out_stride);
  T* rest = out + c * out_stride;
  switch (d - c) {  // the last 1-7 channels
    case 7: weighted_group<T, 7>(weights, ld_w, v, ld_v, tokens, c, factor, rest, out_stride); break;
    case 6: weighted_group<T, 6>(weights, ld_w, v, ld_v, tokens, c, factor, rest, out_stride); break;
    case 5: weighted_group<T, 5>(weights, ld_w, v, ld_v, tokens, c, factor, rest, out_stride); break;
    case 4: weighted_group<T, 4>(weights, ld_w, v, ld_v, tokens, c, factor, rest, out_stride); break;
    case 3: weighted_group<T, 3>(weights, ld_w, v, ld_v, tokens, c, factor, rest, out_stride); break;
    case 2: weighted_group<T, 2>(weights, ld_w, v, ld_v, tokens, c, factor, rest, out_stride); break;
    case 1: weighted_group<T, 1>(weights, ld_w, v, ld_v, tokens, c, factor, rest, out_stride); break;
    default: break;
  }
}

// scores[j0 + g] = additive + mask + q . k[j0 + g] for G keys at once (G independent FMA chains over the d
// channels); returns the running maximum over keys, lane by lane.
template <typename T, int G>
TITA_INLINE Vec<T> key_scores(const T* __restrict q_t, int64_t padded, int64_t d, const T* __restrict k, int64_t ld_k,
                              int64_t j0, const T* __restrict additive_t, const T* __restrict mask_t,
                              T* __restrict scores, Vec<T> peak) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[G];
  for (int g = 0; g < G; ++g) acc[g] = load(additive_t + (j0 + g) * padded);
  if (mask_t != nullptr)
    for (int g = 0; g < G; ++g) acc[g] += load(mask_t + (j0 + g) * padded);
  const T* kj = k + j0 * ld_k;
  for (int64_t c = 0; c < d; ++c) {
    const Vec<T> qc = load(q_t + c * padded);
    for (int g = 0; g < G; ++g) acc[g] += kj[g * ld_k + c] * qc;
  }
  for (int g = 0; g < G; ++g) {
    peak = peak > acc[g] ? peak : acc[g];
    store<T>(scores + (j0 + g) * L, acc[g]);
  }
  return peak;
}

// One (window, head): out rows of the window's tokens for this head, (d, padded). q_t (d, padded): q transposed
// and scaled; k, v: rows of d values ld_k, ld_v apart; additive_t and mask_t (T, padded): bias and mask
// transposed, [key][query]; mask_t may be null.
template <typename T>
TITA_VECTOR_CLONES void attend(const T* __restrict q_t, const T* __restrict k, int64_t ld_k, const T* __restrict v,
                               int64_t ld_v, const T* __restrict additive_t, const T* __restrict mask_t,
                               T* __restrict scores, int64_t tokens, int64_t padded, int64_t d,
                               T* __restrict out_block) {
  constexpr int L = kLanes<T>;
  for (int64_t i0 = 0; i0 < padded; i0 += L) {
    Vec<T> peak = Vec<T>{} - std::numeric_limits<T>::infinity();
    const T* add = additive_t + i0;
    const T* mask = mask_t == nullptr ? nullptr : mask_t + i0;
    int64_t j = 0;
    for (; j + 8 <= tokens; j += 8) peak = key_scores<T, 8>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak);
    switch (tokens - j) {  // the last 1-7 keys
      case 7: peak = key_scores<T, 7>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak); break;
      case 6: peak = key_scores<T, 6>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak); break;
      case 5: peak = key_scores<T, 5>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak); break;
      case 4: peak = key_scores<T, 4>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak); break;
      case 3: peak = key_scores<T, 3>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak); break;
      case 2: peak = key_scores<T, 2>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak); break;
      case 1: peak = key_scores<T, 1>(q_t + i0, padded, d, k, ld_k, j, add, mask, scores, peak); break;
      default: break;
    }
    Vec<T> total{};
    for (int64_t j = 0; j < tokens; ++j) {
      const Vec<T> e = exp_nonpositive(load(scores + j * L) - peak);
      store<T>(scores + j * L, e);
      total += e;
    }
    weighted_sums<T>(scores, L, v, ld_v, tokens, d, T(1) / total, out_block + i0, padded);
  }
}

// One (window, head)'s q, transposed and scaled, into q_t (d, padded).
template <typename T>
void stage_query(const Tokens<const T>& qs, int64_t b, int64_t h, int64_t tokens, int64_t padded, int64_t d, T alpha,
                 T* __restrict q_t) {
  for (int64_t i = 0; i < tokens; ++i) {
    const T* __restrict qi = qs.at(b, i, h);
    for (int64_t c = 0; c < d; ++c) q_t[c * padded + i] = alpha * qi[c * qs.s_dim];
  }
}

// Rows of one (window, head)'s k or v: read in place when each token's d values are contiguous (the model's
// layout), else copied into ``copy`` (T, d). Returns the rows and their stride.
template <typename T>
std::pair<const T*, int64_t> key_rows(const Tokens<const T>& ts, int64_t b, int64_t h, int64_t tokens, int64_t d,
                                      T* __restrict copy) {
  if (ts.s_dim == 1) return {ts.at(b, 0, h), ts.s_token};
  for (int64_t i = 0; i < tokens; ++i)
    for (int64_t c = 0; c < d; ++c) copy[i * d + c] = ts.at(b, i, h)[c * ts.s_dim];
  return {copy, d};
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
      stage_query(qs, b, h, tokens, padded, d, alpha, w.q_t.data());
      const auto [k_rows, ld_k] = key_rows(ks, b, h, tokens, d, w.k.data());
      const auto [v_rows, ld_v] = key_rows(vs, b, h, tokens, d, w.v.data());
      const int64_t row = mask_row.empty() ? -1 : mask_row[b % static_cast<int64_t>(mask_row.size())];
      const T* m = row < 0 ? nullptr : mask_t.data() + row * tokens * padded;
      attend<T>(w.q_t.data(), k_rows, ld_k, v_rows, ld_v, bias_t.data() + h * tokens * padded, m, w.scores.data(),
                tokens, padded, d, out_block.data());
      for (int64_t i = 0; i < tokens; ++i) {
        T* __restrict oi = os.at(b, i, h);  // out is contiguous
        const T* __restrict block = out_block.data() + i;
        for (int64_t c = 0; c < d; ++c) oi[c] = block[c * padded];
      }
    }
  });
}


// -- backward: keys as lanes ------------------------------------------------------------------------------------
//
// One (window, head) row of queries at a time, its T keys in vectors: scores, softmax (horizontal max and sum),
// ds = p (dp - g.o), grad_bias[i] += ds, and dq[i,c] = scale * sum_j ds[j] k[j,c] (one horizontal sum per
// channel); p and ds are kept for all rows (in L1), then dv^T = g^T p and dk^T = (scale q)^T ds are sums of
// vector FMAs with the accumulators in registers.

// One (window, head). k_t, v_t (d, kpad): k and v transposed; additive (T, kpad): bias rows, -inf in the padded
// key lanes; mask (T, kpad) or null; q_s: q rows scaled, g and o: rows of grad and out (d values ld_* apart);
// accumulates grad_bias (T, kpad); writes dq rows (ld_dq apart), dk_t and dv_t (d, kpad); row (kpad),
// probabilities and score_grads (T, kpad) are scratch.
template <typename T>
TITA_VECTOR_CLONES void attend_backward(const T* __restrict q_s, int64_t ld_q, const T* __restrict k_t,
                                        const T* __restrict v_t, const T* __restrict g, int64_t ld_g,
                                        const T* __restrict o, int64_t ld_o, const T* __restrict additive,
                                        const T* __restrict mask, int64_t tokens, int64_t kpad, int64_t d, T scale,
                                        T* __restrict grad_bias, T* __restrict dq, int64_t ld_dq,
                                        T* __restrict dk_t, T* __restrict dv_t, T* __restrict row,
                                        T* __restrict probabilities, T* __restrict score_grads) {
  constexpr int L = kLanes<T>;
  for (int64_t i = 0; i < tokens; ++i) {
    const T* qi = q_s + i * ld_q;
    const T* gi = g + i * ld_g;
    const T* oi = o + i * ld_o;
    Vec<T> peak = Vec<T>{} - std::numeric_limits<T>::infinity();
    for (int64_t j0 = 0; j0 < kpad; j0 += L) {
      Vec<T> s = load(additive + i * kpad + j0);
      if (mask != nullptr) s += load(mask + i * kpad + j0);
      for (int64_t c = 0; c < d; ++c) s += qi[c] * load(k_t + c * kpad + j0);
      peak = peak > s ? peak : s;
      store<T>(row + j0, s);
    }
    const T top = horizontal_max<T>(peak);
    Vec<T> total{};
    for (int64_t j0 = 0; j0 < kpad; j0 += L) {
      const Vec<T> e = exp_nonpositive(load(row + j0) - top);
      store<T>(row + j0, e);
      total += e;
    }
    const T inverse = T(1) / horizontal_sum<T>(total);
    T delta = T(0);  // sum_j p_ij dp_ij = g_i . o_i
    for (int64_t c = 0; c < d; ++c) delta += gi[c] * oi[c];
    for (int64_t j0 = 0; j0 < kpad; j0 += L) {
      const Vec<T> p = load(row + j0) * inverse;
      Vec<T> dp{};
      for (int64_t c = 0; c < d; ++c) dp += gi[c] * load(v_t + c * kpad + j0);
      const Vec<T> ds = p * (dp - delta);
      store<T>(probabilities + i * kpad + j0, p);
      store<T>(score_grads + i * kpad + j0, ds);
      store<T>(grad_bias + i * kpad + j0, load(grad_bias + i * kpad + j0) + ds);
    }
    const T* ds_row = score_grads + i * kpad;
    for (int64_t c = 0; c < d; ++c) {
      Vec<T> acc{};
      for (int64_t j0 = 0; j0 < kpad; j0 += L) acc += load(ds_row + j0) * load(k_t + c * kpad + j0);
      dq[i * ld_dq + c] = scale * horizontal_sum<T>(acc);
    }
  }
  // dv^T = (p^T g)^T and dk^T = (ds^T (scale q))^T, a block of keys at a time.
  for (int64_t j0 = 0; j0 < kpad; j0 += L) {
    weighted_sums<T>(probabilities + j0, kpad, g, ld_g, tokens, d, Vec<T>{} + T(1), dv_t + j0, kpad);
    weighted_sums<T>(score_grads + j0, kpad, q_s, ld_q, tokens, d, Vec<T>{} + T(1), dk_t + j0, kpad);
  }
}

// (count, T, T) -> (count, T, kpad), keys padded with ``fill``.
template <typename T>
std::vector<T> key_padded(const at::Tensor& t, int64_t kpad, T fill) {
  const auto c = t.contiguous();
  const int64_t count = c.size(0), tokens = c.size(1);
  std::vector<T> result(count * tokens * kpad, fill);
  const T* src = c.data_ptr<T>();
  for (int64_t r = 0; r < count * tokens; ++r) std::copy(src + r * tokens, src + (r + 1) * tokens, result.begin() + r * kpad);
  return result;
}

constexpr int64_t kBackwardWindows = 16;  // windows per task of the backward: one grad_bias partial each

template <typename T>
void backward(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& out, const at::Tensor& bias, const c10::optional<at::Tensor>& mask,
              const c10::optional<at::Tensor>& mask_index, double scale, const at::Tensor& dq, const at::Tensor& dk,
              const at::Tensor& dv, const at::Tensor& grad_bias) {
  constexpr int L = kLanes<T>;
  const int64_t windows = q.size(0), tokens = q.size(1), heads = q.size(2), d = q.size(3);
  const int64_t kpad = (tokens + L - 1) / L * L;
  const std::vector<T> additive = key_padded<T>(bias, kpad, -std::numeric_limits<T>::infinity());
  std::vector<T> mask_rows;
  std::vector<int64_t> mask_row;
  if (mask.has_value()) {
    mask_rows = key_padded<T>(*mask, kpad, T(0));
    const auto index = mask_index->contiguous();
    mask_row.assign(index.data_ptr<int64_t>(), index.data_ptr<int64_t>() + index.numel());
  }
  const int64_t tasks = (windows + kBackwardWindows - 1) / kBackwardWindows;
  std::vector<T> partials(tasks * heads * tokens * kpad, T(0));
  const Tokens<const T> qs(q), ks(k), vs(v), gs(grad), os(out);
  const Tokens<T> dqs(dq), dks(dk), dvs(dv);
  const T alpha = static_cast<T>(scale);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> q_s(tokens * d), g_rows(tokens * d), o_rows(tokens * d), k_t(d * kpad, T(0)), v_t(d * kpad, T(0));
    std::vector<T> dk_t(d * kpad), dv_t(d * kpad), row(kpad), probabilities(tokens * kpad), score_grads(tokens * kpad);
    for (int64_t task = begin; task < end; ++task) {
      for (int64_t b = task * kBackwardWindows; b < std::min(windows, (task + 1) * kBackwardWindows); ++b) {
        const int64_t m = mask_row.empty() ? -1 : mask_row[b % static_cast<int64_t>(mask_row.size())];
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t i = 0; i < tokens; ++i)
            for (int64_t c = 0; c < d; ++c) {
              q_s[i * d + c] = alpha * qs.at(b, i, h)[c * qs.s_dim];
              g_rows[i * d + c] = gs.at(b, i, h)[c * gs.s_dim];
              o_rows[i * d + c] = os.at(b, i, h)[c * os.s_dim];
              k_t[c * kpad + i] = ks.at(b, i, h)[c * ks.s_dim];
              v_t[c * kpad + i] = vs.at(b, i, h)[c * vs.s_dim];
            }
          attend_backward<T>(q_s.data(), d, k_t.data(), v_t.data(), g_rows.data(), d, o_rows.data(), d,
                             additive.data() + h * tokens * kpad,
                             m < 0 ? nullptr : mask_rows.data() + m * tokens * kpad, tokens, kpad, d, alpha,
                             partials.data() + (task * heads + h) * tokens * kpad, dqs.at(b, 0, h), dqs.s_token,
                             dk_t.data(), dv_t.data(), row.data(), probabilities.data(), score_grads.data());
          for (int64_t j = 0; j < tokens; ++j)
            for (int64_t c = 0; c < d; ++c) {
              dks.at(b, j, h)[c] = dk_t[c * kpad + j];
              dvs.at(b, j, h)[c] = dv_t[c * kpad + j];
            }
        }
      }
    }
  });
  // grad_bias: the partials summed in task order (the same result for any thread count).
  T* gb = grad_bias.data_ptr<T>();
  for (int64_t x = 0; x < heads * tokens * tokens; ++x) gb[x] = T(0);
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < tokens; ++i) {
        const T* part = partials.data() + ((task * heads + h) * tokens + i) * kpad;
        T* dst = gb + (h * tokens + i) * tokens;
        for (int64_t j = 0; j < tokens; ++j) dst[j] += part[j];
      }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                  const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& mask_index) {
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
}

at::Tensor window_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& bias, const c10::optional<at::Tensor>& mask,
                                        const c10::optional<at::Tensor>& mask_index, double scale) {
  check_inputs(q, k, v, bias, mask, mask_index);
  auto out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_forward_cpu",
                             [&] { forward<scalar_t>(q, k, v, bias, mask, mask_index, scale, out); });
  return out;
}

std::vector<at::Tensor> window_attention_backward_cpu(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, const at::Tensor& out,
                                                      const at::Tensor& bias, const c10::optional<at::Tensor>& mask,
                                                      const c10::optional<at::Tensor>& mask_index, double scale) {
  check_inputs(q, k, v, bias, mask, mask_index);
  for (const auto* t : {&grad, &out})
    TORCH_CHECK(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() && t->device() == q.device(),
                "window_attention backward: grad and out must be like q");
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(q.sizes(), q.options());
  auto dv = at::empty(q.sizes(), q.options()), grad_bias = at::zeros(bias.sizes(), bias.options());
  if (q.numel() > 0)
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_backward_cpu", [&] {
      backward<scalar_t>(grad, q, k, v, out, bias, mask, mask_index, scale, dq, dk, dv, grad_bias);
    });
  return {dq, dk, dv, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(tita_fast, CPU, m) {
  m.impl("window_attention_forward", &window_attention_forward_cpu);
  m.impl("window_attention_backward", &window_attention_backward_cpu);
}

}  // namespace window_attention
}  // namespace tita_fast
