"""FAMO against an independent re-derivation of its update (float64, no autograd), on a toy multi-task problem."""

from __future__ import annotations

import math

import pytest
import torch

from tita_fast import FAMO


class HandFAMO:
    """FAMO written out by hand: J_softmax(w)^T d = z * (d - <z, d>), Adam with L2 weight decay, step by step."""

    def __init__(self, n, gamma, lr, floors):
        self.w = torch.zeros(n, dtype=torch.float64)
        self.m = torch.zeros(n, dtype=torch.float64)
        self.v = torch.zeros(n, dtype=torch.float64)
        self.t, self.gamma, self.lr, self.floors = 0, gamma, lr, floors

    def z(self):
        e = torch.exp(self.w - self.w.max())
        return e / e.sum()

    def loss_weights(self, losses):
        """d objective / d loss_k = z_k / (c * D_k)."""
        z, gaps = self.z(), losses - self.floors + 1e-8
        return z / gaps / (z / gaps).sum()

    def update(self, before, after):
        z = self.z()
        delta = torch.log(before - self.floors + 1e-8) - torch.log(after - self.floors + 1e-8)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.w
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        self.w = self.w - self.lr * m_hat / (v_hat.sqrt() + 1e-8)


def toy_losses(theta: torch.Tensor) -> torch.Tensor:
    """Three tasks sharing a parameter vector, losses of very different scales."""
    targets = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=theta.dtype)
    scales = torch.tensor([1.0, 10.0, 0.1], dtype=theta.dtype)
    return scales * ((theta - targets) ** 2).sum(1) + 0.05


@pytest.mark.parametrize("floors", [None, [0.01, 0.02, 0.0]])
def test_famo_matches_hand_derivation_on_toy_problem(floors):
    gamma, w_lr, lr = 1e-3, 0.025, 0.05
    floor_tensor = torch.zeros(3, dtype=torch.float64) if floors is None else torch.tensor(floors, dtype=torch.float64)
    famo = FAMO(3, gamma=gamma, w_lr=w_lr, max_norm=0.0, min_losses=floors)
    hand = HandFAMO(3, gamma, w_lr, floor_tensor)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    theta_hand = torch.zeros(2, dtype=torch.float64)
    for _ in range(8):
        losses = toy_losses(theta)
        famo.backward(losses, [theta])
        # the objective's gradient is sum_k z_k / (c D_k) * grad l_k
        with torch.enable_grad():
            t = theta_hand.clone().requires_grad_(True)
            hand_losses = toy_losses(t)
            (hand_losses * hand.loss_weights(hand_losses.detach())).sum().backward()
        torch.testing.assert_close(theta.grad, t.grad, rtol=1e-6, atol=1e-9)  # FAMO keeps weights in float32
        with torch.no_grad():
            theta -= lr * theta.grad
            theta.grad = None
            theta_hand = theta_hand - lr * t.grad
            famo.update(toy_losses(theta))
            hand.update(hand_losses.detach(), toy_losses(theta_hand))
        torch.testing.assert_close(famo.w.detach().double(), hand.w, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(famo.weights, torch.full((3,), 1 / 3)), "the weights should have moved"
    # every task improved
    assert (toy_losses(theta.detach()) < toy_losses(torch.zeros(2, dtype=torch.float64))).all()


def test_objective_value_and_weights():
    famo = FAMO(2, min_losses=[0.5, 0.0])
    with torch.no_grad():
        famo.w.copy_(torch.tensor([0.3, -0.2]))
    losses = torch.tensor([1.5, 2.0], dtype=torch.float64, requires_grad=True)
    objective = famo.get_weighted_loss(losses)
    z = torch.softmax(torch.tensor([0.3, -0.2], dtype=torch.float64), 0)
    gaps = torch.tensor([1.0 + 1e-8, 2.0 + 1e-8], dtype=torch.float64)
    c = (z / gaps).sum()
    assert objective.item() == pytest.approx(((z * gaps.log()).sum() / c).item(), rel=1e-6)
    objective.backward()
    torch.testing.assert_close(losses.grad, z / gaps / c, rtol=1e-6, atol=0)
    torch.testing.assert_close(famo.weights.double(), z, rtol=1e-6, atol=0)


def test_gamma_decays_logits_without_loss_change():
    """With l' == l the logits' gradient vanishes; only the weight decay gamma acts, pulling w towards 0."""
    decayed, frozen = FAMO(3, gamma=0.5, w_lr=0.1), FAMO(3, gamma=0.0, w_lr=0.1)
    for famo in (decayed, frozen):
        with torch.no_grad():
            famo.w.copy_(torch.tensor([1.0, -1.0, 0.5]))
    losses = torch.tensor([1.0, 2.0, 3.0])
    for _ in range(5):
        for famo in (decayed, frozen):
            famo.get_weighted_loss(losses)
            famo.update(losses)
    torch.testing.assert_close(frozen.w.detach(), torch.tensor([1.0, -1.0, 0.5]))
    assert (decayed.w.detach().abs() < torch.tensor([1.0, 1.0, 0.5])).all()


def test_task_that_improved_less_gains_weight():
    famo = FAMO(2, gamma=0.0)
    famo.get_weighted_loss(torch.tensor([1.0, 1.0]))
    famo.update(torch.tensor([0.5, 0.99]))  # task 0 halved, task 1 barely moved
    assert famo.weights[1] > famo.weights[0]


def test_backward_clips_after_backward():
    famo = FAMO(2, max_norm=1.0)
    p = torch.tensor([3.0, 4.0], requires_grad=True)
    losses = torch.stack([(100 * p**2).sum() + 1, (p**2).sum() + 1])
    famo.backward(losses, [p])
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_bad_losses_and_shapes_raise():
    famo = FAMO(2, min_losses=[0.1, 0.1])
    with pytest.raises(ValueError, match="above min_losses"):
        famo.get_weighted_loss(torch.tensor([0.05, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        famo.get_weighted_loss(torch.tensor([math.nan, 1.0]))
    with pytest.raises(ValueError, match="expects 2 task losses"):
        famo.get_weighted_loss(torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(RuntimeError, match="previous backward"):
        FAMO(2).update(torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="min_losses must hold 2"):
        FAMO(2, min_losses=[0.0])


def test_state_dict_round_trip_continues_identically():
    def run(famo, steps):
        for i in range(steps):
            famo.get_weighted_loss(torch.tensor([1.0 + i, 2.0, 0.5]))
            famo.update(torch.tensor([0.9 + i, 1.7, 0.45]))

    straight = FAMO(3)
    run(straight, 6)
    first = FAMO(3)
    run(first, 3)
    second = FAMO(3, gamma=0.5)  # hyperparameters come from the state
    second.load_state_dict(first.state_dict())
    # continue from step 3 with the same losses as `straight` saw
    for i in range(3, 6):
        second.get_weighted_loss(torch.tensor([1.0 + i, 2.0, 0.5]))
        second.update(torch.tensor([0.9 + i, 1.7, 0.45]))
    assert torch.equal(second.w, straight.w)
    assert second.gamma == straight.gamma
