"""Small building blocks shared by the TITA modules."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """``fc2(drop(GELU(fc1(x))))`` then dropout, as the published ``Mlp`` (keys ``fc1.*``, ``fc2.*``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's whole residual branch with probability ``p``, else scale it
    by ``1 / (1 - p)``; the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if keep > 0.0:  # p = 1 drops every branch; nothing to rescale
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attach_flat(parent: nn.Module, name: str, child: nn.Module) -> None:
    """Make ``child`` callable as ``parent.<name>`` while registering its submodules directly on ``parent``.

    The published network has no level of its own for IPA and OAF in its state-dict (``blocks.0.k_noise.weight``,
    ``fafb_A.*``), so the modules users import are attached this way: checkpoint keys, ``named_parameters`` and
    ``state_dict`` stay exactly the published ones, and the parameters are the child's own (shared, not copied).
    The child object itself is not registered, so ``.train()``/``.eval()`` do not reach its own ``training`` flag
    (its submodules' flags are set as usual): attach only modules without mode-dependent behaviour of their own.
    """
    if any(True for _ in child.parameters(recurse=False)) or any(True for _ in child.buffers(recurse=False)):
        raise ValueError(f"{type(child).__name__} holds tensors of its own and cannot be attached flat")
    for sub_name, sub in child.named_children():
        parent.add_module(sub_name, sub)
    object.__setattr__(parent, name, child)  # a plain attribute: not a registered submodule
