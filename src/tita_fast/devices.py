"""Choosing and checking the torch device a command runs on."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> the first GPU if there is one, else the CPU; a device that is not there raises."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} asked for, but this torch has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(name)!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError(f"device {str(name)!r} is not supported; use cpu, cuda or cuda:K")
    return device
