"""Parity with the published implementation's golden files (../shared/golden), forward and every gradient.

Tolerances, all relative to the largest magnitude of the expected tensor:

* float64: 1e-9 (the issue's bar; observed <= 1e-13, the rounding of a different but equivalent op order).
* float32: inputs and parameters are float32-exact, so the only error is float32 rounding (unit roundoff 6e-8)
  grown through the network. IPA and OAF alone: observed <= 8.1e-7, bound 1e-5. Whole TITA (some 40 layers with
  LayerNorms and softmaxes): outputs and input gradients observed <= 2.1e-6, bound 2e-5; parameter gradients
  (sums over every pixel and both images) observed <= 5.8e-5, bound 5e-4.
* bfloat16 (8-bit mantissa, unit roundoff 4e-3): IPA and OAF observed <= 1.2e-2, bound 4e-2; whole-TITA
  forward observed 2.2e-2, bound 6e-2. Whole-network bf16 gradients differ by up to ~0.4 of the largest magnitude
  in places, so for them we check direction (cosine >= 0.99) rather than values.
"""

from __future__ import annotations

import pytest
import torch

import tita_fast
from tests.conftest import cosine, load_golden, rel_err

FLOAT32 = {"ipa": 1e-5, "oaf": 1e-5, "tita_out": 2e-5, "tita_param_grad": 5e-4}
BF16 = {"ipa": 4e-2, "oaf": 4e-2, "tita_out": 6e-2}


def run_ipa(dtype, device="cpu"):
    g = {k: v.to(device) if torch.is_tensor(v) else v for k, v in load_golden("ipa_case.pt").items()}
    module = tita_fast.IPA(g["dim"], g["heads"]).to(device, dtype)
    module.load_state_dict(g["state_dict"])
    x, y = g["x"].to(dtype).requires_grad_(), g["y"].to(dtype).requires_grad_()
    out_x, out_y = module(x, y)
    ((out_x * g["grad_out_x"].to(dtype)).sum() + (out_y * g["grad_out_y"].to(dtype)).sum()).backward()
    actual = {"out_x": out_x, "out_y": out_y, "grad_x": x.grad, "grad_y": y.grad}
    return g, actual, dict(module.named_parameters())


def run_oaf(dtype, device="cpu"):
    g = {k: v.to(device) if torch.is_tensor(v) else v for k, v in load_golden("oaf_case.pt").items()}
    module = tita_fast.OAF(g["dim"]).to(device, dtype)
    module.load_state_dict(g["state_dict"])
    x, y = g["x"].to(dtype).requires_grad_(), g["y"].to(dtype).requires_grad_()
    out = module(x, y)
    (out * g["grad_out"].to(dtype)).sum().backward()
    return g, {"out": out, "grad_x": x.grad, "grad_y": y.grad}, dict(module.named_parameters())


def run_tita(dtype, device="cpu"):
    g = {k: v.to(device) if torch.is_tensor(v) else v for k, v in load_golden("tita_case.pt").items()}
    model = tita_fast.TITA(**g["config"]).to(device, dtype).eval()
    model.load_state_dict(g["state_dict"])
    a, b = g["A"].to(dtype).requires_grad_(), g["B"].to(dtype).requires_grad_()
    out = model(a, b)
    (out * g["grad_out"].to(dtype)).sum().backward()
    return g, {"out": out, "grad_A": a.grad, "grad_B": b.grad}, dict(model.named_parameters())


def assert_param_grads(golden_grads, params, tol):
    # Every parameter with a golden gradient has one; the others (conv_first*_B, unused by the published
    # network) must have none.
    assert set(golden_grads) == {name for name, p in params.items() if p.grad is not None}
    worst = max(golden_grads, key=lambda k: rel_err(params[k].grad, golden_grads[k]))
    assert rel_err(params[worst].grad, golden_grads[worst]) <= tol, worst


@pytest.mark.parametrize("run", [run_ipa, run_oaf, run_tita], ids=["ipa", "oaf", "tita"])
def test_float64_matches_golden_forward_and_all_gradients(run):
    golden, actual, params = run(torch.float64)
    for name, value in actual.items():
        assert rel_err(value, golden[name]) <= 1e-9, name
    assert_param_grads(golden["grad_params"], params, 1e-9)


@pytest.mark.parametrize("run,key", [(run_ipa, "ipa"), (run_oaf, "oaf")])
def test_float32_ipa_oaf(run, key):
    golden, actual, params = run(torch.float32)
    for name, value in actual.items():
        assert rel_err(value, golden[name]) <= FLOAT32[key], name
    assert_param_grads(golden["grad_params"], params, FLOAT32[key])


def test_float32_tita():
    golden, actual, params = run_tita(torch.float32)
    for name, value in actual.items():
        assert rel_err(value, golden[name]) <= FLOAT32["tita_out"], name
    assert_param_grads(golden["grad_params"], params, FLOAT32["tita_param_grad"])


@pytest.mark.parametrize("run,key", [(run_ipa, "ipa"), (run_oaf, "oaf")])
def test_bfloat16_ipa_oaf(run, key):
    golden, actual, params = run(torch.bfloat16)
    for name, value in actual.items():
        assert value.dtype == torch.bfloat16
        assert rel_err(value, golden[name]) <= BF16[key], name
    assert_param_grads(golden["grad_params"], params, BF16[key])


def test_bfloat16_tita():
    golden, actual, _ = run_tita(torch.bfloat16)
    assert actual["out"].dtype == torch.bfloat16
    assert rel_err(actual["out"], golden["out"]) <= BF16["tita_out"]
    for name in ("grad_A", "grad_B"):
        assert cosine(actual[name], golden[name]) >= 0.99, name
