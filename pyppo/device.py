"""The one place a device name becomes a ``torch.device``."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` is the GPU when there is one, else the CPU; ``"cuda"`` becomes the current
    GPU's index (``cuda:0``), so that devices of tensors made there compare equal.

    Raises ``ValueError`` for a name torch does not know or a GPU that is not there.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:<index>)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but no CUDA GPU is available here")
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
    return device
