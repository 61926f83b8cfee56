// Schemas of tita_fast's C++ operators (implementations in csrc/<op>/) and the Python module that loads them.
#include <Python.h>
#include <torch/library.h>

#define TITA_IPA_PARAMS                                                                                    \
  "Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor in_w_ab, Tensor in_b_ab, Tensor out_w_ab, " \
  "Tensor out_b_ab, Tensor in_w_ba, Tensor in_b_ba, Tensor out_w_ba, Tensor out_b_ba, Tensor k_noise, "       \
  "Tensor v_noise, int num_heads"

#define TITA_OAF_INPUTS                                                                                    \
  "Tensor x, Tensor y, Tensor logits_x, Tensor logits_y, Tensor residual_x, Tensor residual_y, "              \
  "Tensor multiplier_x, Tensor multiplier_y, Tensor hamming_x, Tensor hamming_y, Tensor mix_weights"

TORCH_LIBRARY(tita_fast, m) {
  // IPA of flattened tokens a, b (M, C) for both directions: returns (a', b').
  m.def("ipa_forward(Tensor a, Tensor b, " TITA_IPA_PARAMS ") -> (Tensor, Tensor)");
  // Gradients of a, b and the 14 parameters (in argument order) from the gradients of a', b'.
  m.def("ipa_backward(Tensor grad_a, Tensor grad_b, Tensor a, Tensor b, " TITA_IPA_PARAMS ") -> Tensor[]");
  // The CUDA kernels' block code on CPU threads (`threads` per block, launches of at most `chunk_rows` pixels),
  // for tests without a GPU.
  m.def("ipa_forward_cuda_emulated(Tensor a, Tensor b, " TITA_IPA_PARAMS
        ", int threads, int chunk_rows) -> (Tensor, Tensor)");
  m.def("ipa_backward_cuda_emulated(Tensor grad_a, Tensor grad_b, Tensor a, Tensor b, " TITA_IPA_PARAMS
        ", int threads, int chunk_rows) -> Tensor[]");
  // OAF mixing of x, y (N, C, H, W) after the generators (csrc/oaf/oaf_common.h has the math): returns the fusion.
  m.def("oaf_mix_forward(" TITA_OAF_INPUTS ") -> Tensor");
  // Gradients of x, y, logits_x, logits_y, residual_x, residual_y, multiplier_x, multiplier_y, mix_weights.
  m.def("oaf_mix_backward(Tensor grad, " TITA_OAF_INPUTS ") -> Tensor[]");
  // softmax(scale * q k^T + bias [+ mask]) v within windows; q, k, v (windows, T, heads, d) of any strides, bias
  // (heads, T, T), mask (masks, T, T) for window i of each image its row mask_index[i % len] (-1: none). Returns
  // (windows, T, heads, d), contiguous (src/tita_fast/ops/window_attention.py).
  m.def("window_attention_forward(Tensor q, Tensor k, Tensor v, Tensor bias, Tensor? mask, Tensor? mask_index, "
        "float scale) -> Tensor");
  // Gradients [dq, dk, dv, grad_bias] from the gradient of the output `out` (probabilities recomputed).
  m.def("window_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor bias, "
        "Tensor? mask, Tensor? mask_index, float scale) -> Tensor[]");
  // The MLP half of a Swin block without autograd: out = x + scale[n] * fc2(GELU(fc1(LayerNorm(x)))); x and out
  // (N, L, C) of any strides but contiguous channels, scale (N,) or none (src/tita_fast/ops/mlp.py).
  m.def("residual_mlp_forward(Tensor x, Tensor norm_weight, Tensor norm_bias, float eps, Tensor fc1_weight, "
        "Tensor fc1_bias, Tensor fc2_weight, Tensor fc2_bias, Tensor? scale, Tensor(a!) out) -> ()");
}

// `import tita_fast._C` registers the operators above; the module itself has no attributes.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
