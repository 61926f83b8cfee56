"""FAMO: fast adaptive multitask optimisation (Liu et al., NeurIPS 2023), as TITA trains with it.

K task losses ``l`` (all above ``min_losses``) are combined through logits ``w`` (zeros at the start) that have
their own Adam (lr ``w_lr``, weight decay ``gamma``)::

    z = softmax(w);  D = l - l_min + 1e-8;  c = sum(z / D)   (a constant: no gradient through c)
    objective = sum(z * log D) / c  -> backward, clip the shared parameters' gradient norm to max_norm
    ... model optimiser step ...
    delta = log D(l) - log D(l')     l': the losses after the step
    grad_w = J_softmax(w)^T delta;  Adam step on w

The interface is the FAMO reference's: ``backward(losses, shared_parameters)`` then ``update(new_losses)``.
Unlike the published TITA code, clipping happens after ``backward()`` (before, it clips nothing).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

EPS = 1e-8


class FAMO:
    """Task weighting for ``n_tasks`` losses; ``weights`` are the current softmax weights.

    With ``sync_losses=True`` (data-parallel training) every loss is averaged over the default process group
    before FAMO uses it: the weights, the objective and the logits' updates are then those of the whole batch,
    identical on every rank, while each rank still back-propagates its own losses (whose gradients DDP averages).
    """

    def __init__(
        self,
        n_tasks: int,
        gamma: float = 1e-3,
        w_lr: float = 0.025,
        max_norm: float = 1.0,
        min_losses: torch.Tensor | Iterable[float] | None = None,
        device: torch.device | str | None = None,
        sync_losses: bool = False,
    ):
        if n_tasks < 1:
            raise ValueError(f"FAMO needs at least one task, got n_tasks={n_tasks}")
        self.n_tasks, self.gamma, self.w_lr, self.max_norm = n_tasks, gamma, w_lr, max_norm
        self.sync_losses = sync_losses
        self.w = torch.zeros(n_tasks, device=device, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)
        floors = torch.zeros(n_tasks) if min_losses is None else torch.as_tensor(min_losses, dtype=torch.float32)
        if floors.shape != (n_tasks,):
            raise ValueError(f"min_losses must hold {n_tasks} values, got shape {tuple(floors.shape)}")
        self.min_losses = floors.to(self.w.device)
        self.prev_losses: torch.Tensor | None = None

    @property
    def weights(self) -> torch.Tensor:
        """The current task weights softmax(w), shape (n_tasks,)."""
        return torch.softmax(self.w.detach(), dim=-1)

    def get_weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        """The FAMO objective of ``losses`` (n_tasks,); remembers them for :meth:`update`."""
        values = self._checked(losses)
        self.prev_losses = values
        z = self.weights
        gaps = values - self.min_losses + EPS
        c = (z / gaps).sum()
        if not self.sync_losses:
            return (z * (losses.float() - self.min_losses + EPS).log()).sum() / c
        # The whole batch's objective, differentiated through this rank's losses: d log D = dl / D with D global.
        local = losses.float()
        return (z * (gaps.log() + (local - local.detach()) / gaps)).sum() / c

    def backward(self, losses: torch.Tensor, shared_parameters: Iterable[torch.Tensor]) -> torch.Tensor:
        """Back-propagate the FAMO objective of ``losses``, then clip the shared parameters' gradient norm."""
        loss = self.get_weighted_loss(losses)
        loss.backward()
        self.clip(shared_parameters)
        return loss.detach()

    def clip(self, shared_parameters: Iterable[torch.Tensor]) -> None:
        """Clip the gradient norm of ``shared_parameters`` to ``max_norm`` (no-op when max_norm <= 0)."""
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(shared_parameters), self.max_norm)

    def update(self, new_losses: torch.Tensor) -> None:
        """One Adam step on the logits from the loss decrease between the last objective's losses and these."""
        if self.prev_losses is None:
            raise RuntimeError("FAMO.update() needs the losses of a previous backward() or get_weighted_loss()")
        new = self._checked(new_losses)
        delta = (self.prev_losses - self.min_losses + EPS).log() - (new - self.min_losses + EPS).log()
        with torch.enable_grad():
            (grad_w,) = torch.autograd.grad(torch.softmax(self.w, dim=-1), self.w, grad_outputs=delta)
        self.w_opt.zero_grad(set_to_none=True)
        self.w.grad = grad_w
        self.w_opt.step()

    def _checked(self, losses: torch.Tensor) -> torch.Tensor:
        """Detached float32 copy of ``losses`` (averaged over ranks with ``sync_losses``), validated."""
        if losses.shape != (self.n_tasks,):
            raise ValueError(f"FAMO expects {self.n_tasks} task losses, got shape {tuple(losses.shape)}")
        values = losses.detach().float().to(self.w.device, copy=True)
        if self.sync_losses and dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
            values /= dist.get_world_size()
        if not torch.isfinite(values).all() or (values <= self.min_losses).any():
            raise ValueError(
                f"FAMO needs finite task losses above min_losses {self.min_losses.tolist()}, got {values.tolist()}"
            )
        return values

    def state_dict(self) -> dict:
        return {
            "w": self.w.detach().clone(),
            "w_opt": self.w_opt.state_dict(),
            "min_losses": self.min_losses.clone(),
            "prev_losses": self.prev_losses,
            "hyperparameters": {"n_tasks": self.n_tasks, "gamma": self.gamma, "w_lr": self.w_lr,
                                "max_norm": self.max_norm},
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        hyper = state["hyperparameters"]
        if hyper["n_tasks"] != self.n_tasks:
            raise ValueError(f"FAMO state is for {hyper['n_tasks']} tasks, this FAMO has {self.n_tasks}")
        self.gamma, self.w_lr, self.max_norm = hyper["gamma"], hyper["w_lr"], hyper["max_norm"]
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.min_losses = state["min_losses"].to(self.w.device)
        prev = state["prev_losses"]
        self.prev_losses = None if prev is None else prev.to(self.w.device)
